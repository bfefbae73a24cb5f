//! Reading PyTorch checkpoint files (`torch.save` output: `.pth`, `.pt`, `.pth.tar`) without
//! Python.
//!
//! Users arrive with the tutorial's `BEST_checkpoint_*.pth.tar` (written by PyTorch 0.4 in the
//! legacy format, pickling whole `nn.Module` objects), state dicts, and torchvision's ImageNet
//! ResNet files. One reader handles both on-disk formats:
//! - zip (PyTorch >= 1.6): `<name>/data.pkl` plus one uncompressed entry per storage under
//!   `<name>/data/<key>`, and `<name>/byteorder`;
//! - legacy (PyTorch <= 1.5, or `_use_new_zipfile_serialization=False`): a stream of pickles
//!   (magic number, protocol version, system info, the object, the storage key list) followed by
//!   each storage's element count and raw bytes.
//!
//! The object is rebuilt by a pickle VM ([`pickle`]) into plain [`Value`]s: unknown classes
//! (modules, optimisers) become generic [`Object`]s, so a file loads whatever else it holds and
//! nothing fails until a needed tensor cannot be read. Storage bytes stay on disk until a tensor
//! is read; reading follows the tensor's offset and strides (views, transposes, shared storages)
//! and converts to f32 or keeps the dtype. Errors name the file and what is wrong where.
//!
//! [`extract`] finds the model tensors in whatever layout the file uses and names them as the
//! tutorial does; [`import`] turns them into a caption model ([`crate::model::CaptionModel::from_pytorch`]).
//!
//! Files may be hostile. Nothing in them is ever executed; a pickle naming functions a checkpoint
//! does not need (`os.system`, `builtins.eval`, ...; the rule is [`pickle::is_expected_global`])
//! still loads, with a warning, and [`Checkpoint::unexpected_globals`] lists them. Sizes the file
//! states (zip entries, legacy storage lengths, tensor shapes) are checked against what the file
//! really holds before anything is allocated, and the pickle VM and the tensor walk bound their
//! work, so a crafted file fails with an error in bounded time and memory.

mod error;
pub mod extract;
pub mod import;
pub mod pickle;
pub mod value;

use std::collections::HashMap;
use std::io::{BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};

pub use error::{PthError, Result};
pub use extract::{torchvision_resnet_encoder, tutorial_tensors, TrainingInfo};
pub use value::{Global, Object, StorageRef, TensorRef, TorchDType, Value};

use pickle::{unpickle_noting, Input, PersistentLoad, PickleError};

/// PyTorch's legacy-format magic number, the first pickle of such a file.
const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;
/// The only legacy protocol version PyTorch has written.
const LEGACY_PROTOCOL_VERSION: i128 = 1001;

/// Largest `data.pkl` read from a zip archive. Real ones are kilobytes to a few megabytes (the
/// tensors are stored beside it); the pickle VM may use a few hundred bytes per byte of pickle.
pub const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// Most bytes that tensors whose elements are more than the storage bytes they cover (broadcast
/// views with stride 0, or overlapping strides) may fill, in all, per opened checkpoint: such
/// tensors could otherwise ask for any amount of memory from a few bytes of file.
pub const MAX_EXPANDED_TENSOR_BYTES: u64 = 1 << 30;

/// The on-disk format of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// PyTorch >= 1.6 default: a zip archive.
    Zip,
    /// PyTorch <= 1.5 (and `_use_new_zipfile_serialization=False`): a stream of pickles.
    Legacy,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Zip => "zip",
            Format::Legacy => "legacy",
        }
    }
}

trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

/// Where a storage's bytes lie in the file.
#[derive(Debug, Clone, Copy)]
struct StorageData {
    offset: u64,
    len: u64,
    /// Zip entries written compressed (torch never does this) cannot be read in place.
    compressed: bool,
}

/// An opened checkpoint: the unpickled object, with storage bytes read on demand.
pub struct Checkpoint {
    path: PathBuf,
    format: Format,
    root: Value,
    storages: HashMap<String, StorageData>,
    big_endian: bool,
    source: Mutex<Box<dyn ReadSeek>>,
    unexpected_globals: Vec<String>,
    /// Bytes filled so far by tensors larger than the storage they cover.
    expanded: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("root", &self.root.describe())
            .field("storages", &self.storages.len())
            .finish()
    }
}

/// Collects the storages that persistent ids name, and returns module classes for the
/// legacy format's `('module', class, source_file, source)` ids.
#[derive(Default)]
struct TorchPersistent {
    dtypes: HashMap<String, Option<TorchDType>>,
}

impl PersistentLoad for TorchPersistent {
    fn load(&mut self, pid: Value) -> std::result::Result<Value, String> {
        let items = match &pid {
            Value::Tuple(t) => t.clone(),
            other => return Err(format!("persistent id {} is not a tuple", other.describe())),
        };
        match items.first().and_then(Value::as_str) {
            Some("storage") => {
                if items.len() < 5 {
                    return Err(format!(
                        "storage persistent id has {} fields, expected 5 or 6",
                        items.len()
                    ));
                }
                let dtype = match &items[1] {
                    Value::Global(g) if g.name == "UntypedStorage" => None,
                    Value::Global(g) => {
                        Some(TorchDType::from_storage_class(&g.name).ok_or_else(|| {
                            format!(
                                "storage type {} is not supported (quantized or unknown)",
                                g.path()
                            )
                        })?)
                    }
                    other => {
                        return Err(format!("storage type is {}, not a class", other.describe()))
                    }
                };
                let key = match &items[2] {
                    Value::Str(s) => s.to_string(),
                    Value::Int(i) => i.to_string(),
                    other => return Err(format!("storage key is {}", other.describe())),
                };
                let location = items[3].as_str().unwrap_or("").to_string();
                let numel = match items[4].as_int() {
                    Some(n) if n >= 0 => n as u64,
                    _ => {
                        return Err(format!(
                            "storage {key}: element count is {}",
                            items[4].describe()
                        ))
                    }
                };
                let view = match items.get(5) {
                    None | Some(Value::None) => None,
                    Some(Value::Tuple(v)) if v.len() == 3 => match (v[1].as_int(), v[2].as_int()) {
                        (Some(off), Some(len)) if off >= 0 && len >= 0 => {
                            Some((off as u64, len as u64))
                        }
                        _ => {
                            return Err(format!("storage {key}: bad view {}", items[5].describe()))
                        }
                    },
                    Some(other) => {
                        return Err(format!("storage {key}: bad view {}", other.describe()))
                    }
                };
                if let Some(previous) = self.dtypes.get(&key) {
                    if *previous != dtype && previous.is_some() && dtype.is_some() {
                        return Err(format!(
                            "storage {key} is referenced with two element types"
                        ));
                    }
                }
                self.dtypes.entry(key.clone()).or_insert(dtype);
                Ok(Value::Storage(Arc::new(StorageRef {
                    key,
                    dtype,
                    numel,
                    location,
                    view,
                })))
            }
            // Legacy files record a module class's source with its first use; the class is what
            // the pickle needs.
            Some("module") if items.len() >= 2 => match &items[1] {
                Value::Global(_) => Ok(items[1].clone()),
                other => Err(format!(
                    "module persistent id holds {}, not a class",
                    other.describe()
                )),
            },
            _ => Err(format!("unsupported persistent id {}", pid.describe())),
        }
    }
}

/// Refuses persistent ids where none may occur (the legacy header pickles).
struct NoPersistent;

impl PersistentLoad for NoPersistent {
    fn load(&mut self, pid: Value) -> std::result::Result<Value, String> {
        Err(format!("unexpected persistent id {}", pid.describe()))
    }
}

impl Checkpoint {
    /// Opens a checkpoint file (either format) and unpickles its object.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |error| PthError::Io {
            path: path.to_path_buf(),
            error,
        };
        let file = crate::files::open_file(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        Self::from_source(Box::new(file), len, path)
    }

    /// Reads a checkpoint held in memory; `origin` names it in errors. Any bytes are safe to
    /// give (this is what a fuzz target calls): the worst a file can do is fail with an error.
    pub fn from_bytes(bytes: Vec<u8>, origin: &Path) -> Result<Self> {
        let len = bytes.len() as u64;
        Self::from_source(Box::new(Cursor::new(bytes)), len, origin)
    }

    fn from_source(mut source: Box<dyn ReadSeek>, len: u64, path: &Path) -> Result<Self> {
        let io = |error| PthError::Io {
            path: path.to_path_buf(),
            error,
        };
        let not = |reason: String| PthError::NotACheckpoint {
            path: path.to_path_buf(),
            reason,
        };
        let mut head = vec![0u8; len.min(512) as usize];
        source.read_exact(&mut head).map_err(io)?;
        source.seek(SeekFrom::Start(0)).map_err(io)?;
        let format = if head.is_empty() {
            return Err(not("the file is empty".into()));
        } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
            Format::Zip
        } else if head[0] == 0x80 && head.get(1).is_some_and(|&v| v <= 5) {
            Format::Legacy
        } else if head.get(257..262) == Some(b"ustar") {
            return Err(PthError::Unsupported {
                path: path.to_path_buf(),
                reason: "a tar archive: the tar checkpoint format of PyTorch before 0.1.10 is not supported; \
                         load and re-save it with a newer PyTorch"
                    .into(),
            });
        } else if head.len() > 8 && head[8] == b'{' {
            return Err(not(
                "this looks like a safetensors file (use it with --weights / --model)".into(),
            ));
        } else {
            let shown: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
            return Err(not(format!(
                "unrecognised start bytes {} (neither a zip archive nor a pickle)",
                shown.join(" ")
            )));
        };
        let mut unexpected = Vec::new();
        let (root, storages, big_endian) = match format {
            Format::Zip => read_zip(&mut source, len, path, &mut unexpected)?,
            Format::Legacy => read_legacy(&mut source, len, path, &mut unexpected)?,
        };
        // The legacy format's pickles each report theirs.
        let mut seen = std::collections::HashSet::new();
        unexpected.retain(|g| seen.insert(g.clone()));
        if !unexpected.is_empty() {
            let mut shown = unexpected
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            if unexpected.len() > 10 {
                shown += &format!(" and {} more", unexpected.len() - 10);
            }
            tracing::warn!(
                "{}: the pickle names functions or classes a checkpoint does not need: {shown}. \
                 Nothing was called (they load as inert objects), but Python's torch.load \
                 (weights_only=False) would import and may call them: do not load this file in \
                 Python unless you trust it",
                path.display()
            );
        }
        Ok(Checkpoint {
            path: path.to_path_buf(),
            format,
            root,
            storages,
            big_endian,
            source: Mutex::new(source),
            unexpected_globals: unexpected,
            expanded: Default::default(),
        })
    }

    /// Globals (`module.name`) the file's pickles name that a checkpoint does not need, in the
    /// order they first appear: `os.system`, `builtins.eval`, a user's own class, ... (see
    /// [`pickle::is_expected_global`] for the rule). None of them was called.
    pub fn unexpected_globals(&self) -> &[String] {
        &self.unexpected_globals
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The object that was saved (`torch.save(obj, ...)`'s `obj`).
    pub fn root(&self) -> &Value {
        &self.root
    }

    /// The model tensors with dotted names, wherever the file keeps them (see
    /// [`extract::model_tensors`]).
    pub fn named_tensors(&self) -> Result<Vec<(String, Arc<TensorRef>)>> {
        extract::model_tensors(&self.root).map_err(|reason| PthError::Content {
            path: self.path.clone(),
            reason,
        })
    }

    /// What a training checkpoint says about itself (epoch, BLEU-4, grid size, ...).
    pub fn training_info(&self) -> TrainingInfo {
        TrainingInfo::from_root(&self.root)
    }

    fn tensor_err(&self, name: &str, reason: String) -> PthError {
        PthError::Tensor {
            path: self.path.clone(),
            name: name.to_string(),
            reason,
        }
    }

    fn read_at(&self, offset: u64, len: u64, key: &str) -> Result<Vec<u8>> {
        let storage_err = |reason: String| PthError::Storage {
            path: self.path.clone(),
            key: key.to_string(),
            reason,
        };
        let len = usize::try_from(len)
            .map_err(|_| storage_err(format!("{len} bytes do not fit in memory")))?;
        let mut buf = vec![0u8; len];
        let mut source = self.source.lock().unwrap_or_else(|e| e.into_inner());
        source
            .seek(SeekFrom::Start(offset))
            .and_then(|_| source.read_exact(&mut buf))
            .map_err(|e| storage_err(format!("cannot read {len} bytes at offset {offset}: {e}")))?;
        Ok(buf)
    }

    /// The tensor's elements, row-major, as little-endian bytes of its dtype. `name` is used in
    /// errors.
    pub fn tensor_bytes(&self, t: &TensorRef, name: &str) -> Result<Vec<u8>> {
        let key = &t.storage.key;
        let data = *self.storages.get(key).ok_or_else(|| {
            self.tensor_err(name, format!("its storage {key} is not in the file"))
        })?;
        if data.compressed {
            return Err(self.tensor_err(name, format!("its storage {key} is compressed in the zip archive (torch stores storages uncompressed)")));
        }
        let storage_es = t.storage.element_size() as u64;
        let (base, avail) = match t.storage.view {
            Some((off, len)) => {
                let (start, size) = (
                    off.saturating_mul(storage_es),
                    len.saturating_mul(storage_es),
                );
                if start.checked_add(size).is_none_or(|end| end > data.len) {
                    return Err(self.tensor_err(
                        name,
                        format!("storage view {off}+{len} lies outside storage {key}"),
                    ));
                }
                (start, size)
            }
            None => (0, data.len),
        };
        let es = t.dtype.size() as u64;
        if t.shape.len() != t.stride.len() {
            return Err(self.tensor_err(
                name,
                format!(
                    "shape {:?} and strides {:?} differ in rank",
                    t.shape, t.stride
                ),
            ));
        }
        let numel = t
            .shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .ok_or_else(|| {
                self.tensor_err(name, format!("shape {:?} has too many elements", t.shape))
            })?;
        if numel == 0 {
            return Ok(Vec::new());
        }
        let out_bytes = numel
            .checked_mul(es)
            .filter(|&b| usize::try_from(b).is_ok())
            .ok_or_else(|| {
                self.tensor_err(
                    name,
                    format!(
                        "shape {:?} has {numel} elements, too many to hold in memory",
                        t.shape
                    ),
                )
            })?;
        let numel = numel as usize;
        let overflow = || self.tensor_err(name, "offset and strides overflow".into());
        let mut last = t.offset;
        for (&d, &s) in t.shape.iter().zip(&t.stride) {
            last = (d as u64 - 1)
                .checked_mul(s as u64)
                .and_then(|x| x.checked_add(last))
                .ok_or_else(overflow)?;
        }
        let start = t.offset.checked_mul(es).ok_or_else(overflow)?;
        let end = last
            .checked_add(1)
            .and_then(|x| x.checked_mul(es))
            .ok_or_else(overflow)?;
        if end > avail {
            return Err(self.tensor_err(
                name,
                format!(
                    "shape {:?}, strides {:?} and offset {} need {} bytes of storage {key}, which has {avail} (truncated or corrupt)",
                    t.shape, t.stride, t.offset, end
                ),
            ));
        }
        // Elements beyond the bytes read come from stride 0 or overlapping strides; a little of
        // that is legitimate (`expand`), terabytes from a few bytes are not, nor many such
        // tensors together.
        if out_bytes > end - start {
            use std::sync::atomic::Ordering;
            let before = self.expanded.fetch_add(out_bytes, Ordering::Relaxed);
            if before.saturating_add(out_bytes) > MAX_EXPANDED_TENSOR_BYTES {
                self.expanded.fetch_sub(out_bytes, Ordering::Relaxed);
                return Err(self.tensor_err(
                    name,
                    format!(
                        "shape {:?} with strides {:?} has {numel} elements ({out_bytes} bytes) \
                         but covers only {} bytes of storage {key}; broadcast or overlapping \
                         views filling over {MAX_EXPANDED_TENSOR_BYTES} bytes (this one and \
                         {before} bytes before it) are refused (hostile or corrupt)",
                        t.shape,
                        t.stride,
                        end - start
                    ),
                ));
            }
        }
        let region = self.read_at(data.offset + base + start, end - start, key)?;
        let es = es as usize;
        let mut out = if t.is_contiguous() {
            region
        } else {
            let mut out = Vec::with_capacity(numel * es);
            let rank = t.shape.len();
            let mut index = vec![0usize; rank];
            for _ in 0..numel {
                let at: usize = index
                    .iter()
                    .zip(&t.stride)
                    .map(|(i, s)| i * s)
                    .sum::<usize>()
                    * es;
                out.extend_from_slice(&region[at..at + es]);
                for d in (0..rank).rev() {
                    index[d] += 1;
                    if index[d] < t.shape[d] {
                        break;
                    }
                    index[d] = 0;
                }
            }
            out
        };
        if self.big_endian && es > 1 {
            let part = if matches!(t.dtype, TorchDType::Complex64 | TorchDType::Complex128) {
                es / 2
            } else {
                es
            };
            out.chunks_exact_mut(part).for_each(<[u8]>::reverse);
        }
        Ok(out)
    }

    /// The tensor as an f32 candle tensor (any real dtype; bools become 0 and 1).
    pub fn tensor_f32(&self, t: &TensorRef, name: &str, device: &Device) -> Result<Tensor> {
        let bytes = self.tensor_bytes(t, name)?;
        let values = to_f32(&bytes, t.dtype).ok_or_else(|| {
            self.tensor_err(name, format!("{} cannot be converted to f32", t.dtype))
        })?;
        Ok(Tensor::from_vec(values, t.shape.as_slice(), device)?)
    }

    /// The tensor in its own dtype where candle has it (int8 widens to int16, bool becomes u8).
    pub fn tensor_native(&self, t: &TensorRef, name: &str, device: &Device) -> Result<Tensor> {
        let b = self.tensor_bytes(t, name)?;
        let shape = t.shape.as_slice();
        fn le<const N: usize, T>(b: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
            b.chunks_exact(N)
                .map(|c| f(c.try_into().expect("chunk of N bytes")))
                .collect()
        }
        let tensor = match t.dtype {
            TorchDType::F32 => Tensor::from_vec(le(&b, f32::from_le_bytes), shape, device)?,
            TorchDType::F64 => Tensor::from_vec(le(&b, f64::from_le_bytes), shape, device)?,
            TorchDType::F16 => Tensor::from_vec(le(&b, half::f16::from_le_bytes), shape, device)?,
            TorchDType::BF16 => Tensor::from_vec(le(&b, half::bf16::from_le_bytes), shape, device)?,
            TorchDType::I64 => Tensor::from_vec(le(&b, i64::from_le_bytes), shape, device)?,
            TorchDType::I32 => Tensor::from_vec(le(&b, i32::from_le_bytes), shape, device)?,
            TorchDType::I16 => Tensor::from_vec(le(&b, i16::from_le_bytes), shape, device)?,
            TorchDType::I8 => Tensor::from_vec(
                b.iter().map(|&x| x as i8 as i16).collect::<Vec<_>>(),
                shape,
                device,
            )?,
            TorchDType::U8 => Tensor::from_vec(b, shape, device)?,
            TorchDType::Bool => Tensor::from_vec(
                b.iter().map(|&x| (x != 0) as u8).collect::<Vec<_>>(),
                shape,
                device,
            )?,
            TorchDType::Complex64 | TorchDType::Complex128 => {
                return Err(self.tensor_err(name, format!("{} tensors are not supported", t.dtype)))
            }
        };
        Ok(tensor)
    }

    /// Reads named tensors: floating-point ones as f32; integer and bool ones (BatchNorm's
    /// `num_batches_tracked`) only with `include_integer`, in their own dtype.
    pub fn load_tensors(
        &self,
        named: &[(String, Arc<TensorRef>)],
        include_integer: bool,
        device: &Device,
    ) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::with_capacity(named.len());
        for (name, t) in named {
            let tensor = if t.dtype.is_float() {
                self.tensor_f32(t, name, device)?
            } else if include_integer {
                self.tensor_native(t, name, device)?
            } else {
                continue;
            };
            out.insert(name.clone(), tensor);
        }
        Ok(out)
    }
}

/// Little-endian elements of `dtype` as f32; `None` for complex types.
fn to_f32(b: &[u8], dtype: TorchDType) -> Option<Vec<f32>> {
    fn conv<const N: usize>(b: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
        b.chunks_exact(N)
            .map(|c| f(c.try_into().expect("chunk of N bytes")))
            .collect()
    }
    Some(match dtype {
        TorchDType::F32 => conv(b, f32::from_le_bytes),
        TorchDType::F64 => conv(b, |x| f64::from_le_bytes(x) as f32),
        TorchDType::F16 => conv(b, |x| half::f16::from_le_bytes(x).to_f32()),
        TorchDType::BF16 => conv(b, |x| half::bf16::from_le_bytes(x).to_f32()),
        TorchDType::I64 => conv(b, |x| i64::from_le_bytes(x) as f32),
        TorchDType::I32 => conv(b, |x| i32::from_le_bytes(x) as f32),
        TorchDType::I16 => conv(b, |x| i16::from_le_bytes(x) as f32),
        TorchDType::I8 => b.iter().map(|&x| x as i8 as f32).collect(),
        TorchDType::U8 => b.iter().map(|&x| x as f32).collect(),
        TorchDType::Bool => b.iter().map(|&x| (x != 0) as u8 as f32).collect(),
        TorchDType::Complex64 | TorchDType::Complex128 => return None,
    })
}

fn pickle_error(path: &Path, part: &str, e: PickleError) -> PthError {
    PthError::Pickle {
        path: path.to_path_buf(),
        part: part.to_string(),
        location: e.location(),
        reason: e.reason,
    }
}

type Parsed = (Value, HashMap<String, StorageData>, bool);

fn read_zip(
    source: &mut Box<dyn ReadSeek>,
    file_len: u64,
    path: &Path,
    unexpected: &mut Vec<String>,
) -> Result<Parsed> {
    let zip_err = |reason: String| PthError::Zip {
        path: path.to_path_buf(),
        reason,
    };
    let mut archive = zip::ZipArchive::new(&mut *source).map_err(|e| zip_err(e.to_string()))?;
    let names: Vec<String> = archive
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .collect();
    let pkl = names
        .iter()
        .filter(|n| n.as_str() == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| n.matches('/').count())
        .cloned()
        .ok_or_else(|| {
            zip_err(format!(
                "no data.pkl entry, so not written by torch.save (entries: {})",
                names.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
    let prefix = pkl
        .strip_suffix("data.pkl")
        .expect("ends with data.pkl")
        .to_string();

    // Sizes in the archive are claims: checked against the file before allocating, and reads
    // stop at `max` whatever the entry says (a compressed entry may expand far beyond it).
    let read_entry = |archive: &mut zip::ZipArchive<&mut Box<dyn ReadSeek>>,
                      name: &str,
                      max: u64|
     -> Result<Vec<u8>> {
        let entry = archive
            .by_name(name)
            .map_err(|e| zip_err(format!("{name}: {e}")))?;
        let size = entry.size();
        let stored = entry.compression() == zip::CompressionMethod::Stored;
        if stored && size > file_len {
            return Err(zip_err(format!(
                "{name} claims {size} bytes but the whole file has {file_len} (truncated or corrupt)"
            )));
        }
        if size > max {
            return Err(zip_err(format!(
                "{name} claims {size} bytes, more than the {max} it may have (corrupt or hostile)"
            )));
        }
        let mut buf = Vec::with_capacity(size.min(file_len) as usize);
        entry
            .take(max + 1)
            .read_to_end(&mut buf)
            .map_err(|e| zip_err(format!("{name}: {e}")))?;
        if buf.len() as u64 > max {
            return Err(zip_err(format!(
                "{name} expands to more than {max} bytes (corrupt or hostile)"
            )));
        }
        Ok(buf)
    };
    let pkl_bytes = read_entry(&mut archive, &pkl, MAX_PICKLE_BYTES)?;
    let big_endian = match names.iter().any(|n| *n == format!("{prefix}byteorder")) {
        true => {
            let order = read_entry(&mut archive, &format!("{prefix}byteorder"), 64)?;
            match order.trim_ascii() {
                b"little" => false,
                b"big" => true,
                other => {
                    return Err(zip_err(format!(
                        "byteorder says {:?}",
                        String::from_utf8_lossy(other)
                    )))
                }
            }
        }
        false => false,
    };
    let data_prefix = format!("{prefix}data/");
    let mut storages = HashMap::new();
    for i in 0..archive.len() {
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| zip_err(format!("entry {i}: {e}")))?;
        let name = entry.name().map(|n| n.into_owned()).unwrap_or_default();
        let Some(key) = name.strip_prefix(&data_prefix) else {
            continue;
        };
        if key.is_empty() || key.contains('/') {
            continue;
        }
        let offset = entry
            .data_start()
            .ok_or_else(|| zip_err(format!("{name}: no data offset")))?;
        let compressed = entry.compression() != zip::CompressionMethod::Stored;
        // A stored entry's bytes must lie in the file: tensors are read from there by size.
        if !compressed
            && (entry.compressed_size() != entry.size()
                || offset
                    .checked_add(entry.size())
                    .is_none_or(|end| end > file_len))
        {
            return Err(PthError::Storage {
                path: path.to_path_buf(),
                key: key.to_string(),
                reason: format!(
                    "zip entry {name} claims {} bytes from byte {offset}, but the file ends at \
                     {file_len} (truncated or corrupt)",
                    entry.size()
                ),
            });
        }
        storages.insert(
            key.to_string(),
            StorageData {
                offset,
                len: entry.size(),
                compressed,
            },
        );
    }
    drop(archive);

    let len = pkl_bytes.len() as u64;
    let mut input = Input::new(pkl_bytes.as_slice(), 0, len);
    let mut persistent = TorchPersistent::default();
    let root = unpickle_noting(&mut input, &mut persistent, unexpected)
        .map_err(|e| pickle_error(path, &pkl, e))?;
    for key in persistent.dtypes.keys() {
        if !storages.contains_key(key) {
            return Err(PthError::Storage {
                path: path.to_path_buf(),
                key: key.clone(),
                reason: format!("{pkl} refers to it but the archive has no {data_prefix}{key}"),
            });
        }
    }
    Ok((root, storages, big_endian))
}

fn read_legacy(
    source: &mut Box<dyn ReadSeek>,
    len: u64,
    path: &Path,
    unexpected: &mut Vec<String>,
) -> Result<Parsed> {
    let not = |reason: String| PthError::NotACheckpoint {
        path: path.to_path_buf(),
        reason,
    };
    let mut persistent = TorchPersistent::default();
    let (root, keys, data_start, little_endian) = {
        let mut input = Input::new(BufReader::new(&mut *source), 0, len);
        let magic = unpickle_noting(&mut input, &mut NoPersistent, unexpected)
            .map_err(|e| pickle_error(path, "magic number", e))?;
        if magic != Value::Int(LEGACY_MAGIC) {
            return Err(not(format!(
                "a pickle of {}, not PyTorch's legacy format (no magic number)",
                magic.describe()
            )));
        }
        let version = unpickle_noting(&mut input, &mut NoPersistent, unexpected)
            .map_err(|e| pickle_error(path, "protocol version", e))?;
        if version != Value::Int(LEGACY_PROTOCOL_VERSION) {
            return Err(PthError::Unsupported {
                path: path.to_path_buf(),
                reason: format!(
                    "legacy protocol version {} (only {LEGACY_PROTOCOL_VERSION} exists)",
                    version.describe()
                ),
            });
        }
        let sys_info = unpickle_noting(&mut input, &mut NoPersistent, unexpected)
            .map_err(|e| pickle_error(path, "system info", e))?;
        let little_endian = sys_info
            .get("little_endian")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let root = unpickle_noting(&mut input, &mut persistent, unexpected)
            .map_err(|e| pickle_error(path, "saved object", e))?;
        let keys = unpickle_noting(&mut input, &mut NoPersistent, unexpected)
            .map_err(|e| pickle_error(path, "storage key list", e))?;
        (root, keys, input.position(), little_endian)
    };
    let content = |reason: String| PthError::Content {
        path: path.to_path_buf(),
        reason,
    };
    let keys = keys
        .as_seq()
        .ok_or_else(|| content(format!("the storage key list is {}", keys.describe())))?;
    let mut storages = HashMap::with_capacity(keys.len());
    let mut pos = data_start;
    for key in keys {
        let key = match key {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            other => {
                return Err(content(format!(
                    "storage key {} in the key list",
                    other.describe()
                )))
            }
        };
        let storage_err = |reason: String| PthError::Storage {
            path: path.to_path_buf(),
            key: key.clone(),
            reason,
        };
        let es = match persistent.dtypes.get(&key) {
            Some(dtype) => dtype.map_or(1, TorchDType::size) as u64,
            None => {
                return Err(storage_err(
                    "listed in the key list but no tensor refers to it".into(),
                ))
            }
        };
        if pos.checked_add(8).is_none_or(|end| end > len) {
            return Err(storage_err(format!(
                "the file ends at byte {len}, before the storage's size (truncated)"
            )));
        }
        let mut count = [0u8; 8];
        source
            .seek(SeekFrom::Start(pos))
            .and_then(|_| source.read_exact(&mut count))
            .map_err(|error| PthError::Io {
                path: path.to_path_buf(),
                error,
            })?;
        let count = if little_endian {
            u64::from_le_bytes(count)
        } else {
            u64::from_be_bytes(count)
        };
        let bytes = count
            .checked_mul(es)
            .filter(|&b| b <= len - (pos + 8))
            .ok_or_else(|| {
            storage_err(format!(
                "{count} elements of {es} bytes at byte {} run past the end of the file at {len} (truncated)",
                pos + 8
            ))
        })?;
        storages.insert(
            key,
            StorageData {
                offset: pos + 8,
                len: bytes,
                compressed: false,
            },
        );
        pos += 8 + bytes;
    }
    Ok((root, storages, !little_endian))
}
