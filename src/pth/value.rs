//! The objects a PyTorch pickle describes, as plain immutable data.
//!
//! Nothing here runs Python: a class the reader does not know becomes an [`Object`] that records
//! what the pickle said about it (the class path, constructor arguments, `__setstate__` state,
//! dict and list items), so that a file holding optimisers or whole `nn.Module` objects loads, and
//! the tensors inside can still be found by walking the data.

use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

/// Element types of torch storages and tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TorchDType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    /// Complex types are recognised (so a file holding them still loads) but not converted.
    Complex64,
    Complex128,
}

impl TorchDType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            TorchDType::F64 | TorchDType::I64 | TorchDType::Complex64 => 8,
            TorchDType::F32 | TorchDType::I32 => 4,
            TorchDType::F16 | TorchDType::BF16 | TorchDType::I16 => 2,
            TorchDType::I8 | TorchDType::U8 | TorchDType::Bool => 1,
            TorchDType::Complex128 => 16,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(
            self,
            TorchDType::F64 | TorchDType::F32 | TorchDType::F16 | TorchDType::BF16
        )
    }

    /// PyTorch's name (`float32`, `int64`, ...).
    pub fn name(self) -> &'static str {
        match self {
            TorchDType::F64 => "float64",
            TorchDType::F32 => "float32",
            TorchDType::F16 => "float16",
            TorchDType::BF16 => "bfloat16",
            TorchDType::I64 => "int64",
            TorchDType::I32 => "int32",
            TorchDType::I16 => "int16",
            TorchDType::I8 => "int8",
            TorchDType::U8 => "uint8",
            TorchDType::Bool => "bool",
            TorchDType::Complex64 => "complex64",
            TorchDType::Complex128 => "complex128",
        }
    }

    /// The element type of a typed storage class (`FloatStorage`, `torch.cuda.HalfStorage`'s
    /// `HalfStorage`, ...). `None` for names that are not typed storages.
    pub fn from_storage_class(name: &str) -> Option<Self> {
        Some(match name {
            "DoubleStorage" => TorchDType::F64,
            "FloatStorage" => TorchDType::F32,
            "HalfStorage" => TorchDType::F16,
            "BFloat16Storage" => TorchDType::BF16,
            "LongStorage" => TorchDType::I64,
            "IntStorage" => TorchDType::I32,
            "ShortStorage" => TorchDType::I16,
            "CharStorage" => TorchDType::I8,
            "ByteStorage" => TorchDType::U8,
            "BoolStorage" => TorchDType::Bool,
            "ComplexFloatStorage" => TorchDType::Complex64,
            "ComplexDoubleStorage" => TorchDType::Complex128,
            _ => return None,
        })
    }

    /// The element type named by a `torch.<dtype>` global (`float32`, `float`, `half`, ...).
    pub fn from_dtype_name(name: &str) -> Option<Self> {
        Some(match name {
            "float64" | "double" => TorchDType::F64,
            "float32" | "float" => TorchDType::F32,
            "float16" | "half" => TorchDType::F16,
            "bfloat16" => TorchDType::BF16,
            "int64" | "long" => TorchDType::I64,
            "int32" | "int" => TorchDType::I32,
            "int16" | "short" => TorchDType::I16,
            "int8" => TorchDType::I8,
            "uint8" => TorchDType::U8,
            "bool" => TorchDType::Bool,
            "complex64" | "cfloat" => TorchDType::Complex64,
            "complex128" | "cdouble" => TorchDType::Complex128,
            _ => return None,
        })
    }
}

impl fmt::Display for TorchDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A class or function named by the pickle (`GLOBAL` / `STACK_GLOBAL`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Global {
    pub module: String,
    pub name: String,
}

impl Global {
    pub fn new(module: impl Into<String>, name: impl Into<String>) -> Self {
        Global {
            module: module.into(),
            name: name.into(),
        }
    }

    pub fn is(&self, module: &str, name: &str) -> bool {
        self.module == module && self.name == name
    }

    /// `module.name`.
    pub fn path(&self) -> String {
        format!("{}.{}", self.module, self.name)
    }
}

/// A storage as a persistent id names it; its bytes are read only when a tensor needs them.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    /// The storage's key: its file name under `data/` (zip) or its place in the legacy key list.
    pub key: String,
    /// Element type; `None` for an untyped (byte) storage, whose tensors carry their own type.
    pub dtype: Option<TorchDType>,
    /// Elements as the persistent id declares them.
    pub numel: u64,
    /// Where the storage was saved from (`cpu`, `cuda:0`); informative only.
    pub location: String,
    /// A legacy storage view: `(offset, length)` in elements of the root storage.
    pub view: Option<(u64, u64)>,
}

impl StorageRef {
    /// Bytes per element of the storage (1 when untyped).
    pub fn element_size(&self) -> usize {
        self.dtype.map_or(1, TorchDType::size)
    }
}

/// A tensor: a strided window onto a storage.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub dtype: TorchDType,
    /// Offset of the first element, in elements of `dtype`.
    pub offset: u64,
    pub shape: Vec<usize>,
    /// Strides in elements of `dtype`.
    pub stride: Vec<usize>,
    pub requires_grad: bool,
    /// Rebuilt as an `nn.Parameter`.
    pub parameter: bool,
}

impl TensorRef {
    /// Elements; `usize::MAX` if the count overflows (the reader refuses such tensors).
    pub fn numel(&self) -> usize {
        self.shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .unwrap_or(usize::MAX)
    }

    /// Whether the elements are laid out row-major without gaps.
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1usize;
        for (&dim, &stride) in self.shape.iter().zip(&self.stride).rev() {
            if dim != 1 && stride != expected {
                return false;
            }
            expected = expected.saturating_mul(dim);
        }
        true
    }
}

/// An instance of a class the reader does not model, as the pickle built it.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// The class (or factory function) the pickle called.
    pub class: Global,
    /// Positional constructor arguments.
    pub args: Vec<Value>,
    /// Keyword arguments (`NEWOBJ_EX`).
    pub kwargs: Vec<(Value, Value)>,
    /// The `BUILD` state: usually the instance `__dict__` (a dict), sometimes `(dict, slots)`.
    pub state: Option<Value>,
    /// Items added with `SETITEM(S)` (subclasses of dict).
    pub dict_items: Vec<(Value, Value)>,
    /// Items added with `APPEND(S)` (subclasses of list).
    pub list_items: Vec<Value>,
}

impl Object {
    /// An attribute from the `BUILD` state (`__dict__`), if the state is a dict.
    pub fn attr(&self, name: &str) -> Option<&Value> {
        match self.state.as_ref()? {
            Value::Dict(_) => self.state.as_ref()?.get(name),
            // (dict, slots) state: both parts are plain dicts. Looking only there (not into
            // objects the parts might be) keeps a lookup from walking shared data.
            Value::Tuple(parts) => parts.iter().find_map(|p| match p {
                Value::Dict(d) => lookup(d, name),
                _ => None,
            }),
            _ => None,
        }
    }

    /// Whether this looks like a pickled `torch.nn.Module` (it has `_parameters` or `_modules`).
    pub fn is_module(&self) -> bool {
        self.attr("_parameters").is_some() || self.attr("_modules").is_some()
    }

    /// Entries of the `BUILD` state that an attribute lookup may scan.
    pub fn state_len(&self) -> usize {
        match &self.state {
            Some(Value::Dict(d)) => d.len(),
            Some(Value::Tuple(parts)) => parts
                .iter()
                .map(|p| match p {
                    Value::Dict(d) => d.len(),
                    _ => 0,
                })
                .sum(),
            _ => 0,
        }
    }
}

/// A value from a pickle.
///
/// Containers are shared (`Arc`): an object the pickle refers to twice (its memo) appears twice
/// without being copied. Dicts keep their insertion order and may have any keys (optimiser
/// state is keyed by tensors).
///
/// A hostile file can make values nested very deeply or shared very often, so nothing here
/// recurses over them: dropping, comparing and `Debug` work with explicit stacks or bounds.
/// Equality treats two references to one shared container as equal.
#[derive(Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i128),
    /// An integer wider than 128 bits: little-endian two's complement bytes.
    BigInt(Arc<[u8]>),
    Float(f64),
    Str(Arc<str>),
    Bytes(Arc<[u8]>),
    Tuple(Arc<[Value]>),
    List(Arc<[Value]>),
    Set(Arc<[Value]>),
    Dict(Arc<[(Value, Value)]>),
    Global(Arc<Global>),
    Object(Arc<Object>),
    Storage(Arc<StorageRef>),
    Tensor(Arc<TensorRef>),
    /// A reference back to a container that encloses it (a cycle in the pickled data).
    Recursive,
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i128> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i128),
            _ => None,
        }
    }

    /// Ints and floats as `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            Value::Int(i) => Some(*i != 0),
            _ => None,
        }
    }

    pub fn as_tensor(&self) -> Option<&Arc<TensorRef>> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    /// Elements of a tuple, list or set.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(v) | Value::List(v) | Value::Set(v) => Some(v),
            _ => None,
        }
    }

    /// Entries of a dict, or of a dict subclass object.
    pub fn dict_entries(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Dict(d) => Some(d),
            Value::Object(o) if !o.dict_items.is_empty() => Some(&o.dict_items),
            _ => None,
        }
    }

    /// The value under string key `key` of a dict, or an object's attribute.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(o) => o.attr(key).or_else(|| lookup(&o.dict_items, key)),
            _ => lookup(self.dict_entries()?, key),
        }
    }

    /// A short description for messages: `dict with 7 entries`, `models.Encoder object`, ...
    pub fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => format!("bool {}", if *b { "True" } else { "False" }),
            Value::Int(i) => format!("int {i}"),
            Value::BigInt(b) => format!("{}-byte integer", b.len()),
            Value::Float(f) => format!("float {f}"),
            Value::Str(s) if s.chars().count() > 40 => {
                format!("str {:?}...", s.chars().take(40).collect::<String>())
            }
            Value::Str(s) => format!("str {s:?}"),
            Value::Bytes(b) => format!("{} bytes", b.len()),
            Value::Tuple(v) => format!("tuple of {}", v.len()),
            Value::List(v) => format!("list of {}", v.len()),
            Value::Set(v) => format!("set of {}", v.len()),
            Value::Dict(d) => {
                let keys: Vec<String> = d.iter().take(6).map(|(k, _)| k.key_text()).collect();
                let more = if d.len() > 6 { ", ..." } else { "" };
                format!("dict with {} entries ({}{more})", d.len(), keys.join(", "))
            }
            Value::Global(g) => format!("class/function {}", g.path()),
            Value::Object(o) => format!("{} object", o.class.path()),
            Value::Storage(s) => format!(
                "storage {} ({})",
                s.key,
                s.dtype.map_or("untyped", TorchDType::name)
            ),
            Value::Tensor(t) => format!("tensor {} {:?}", t.dtype, t.shape),
            Value::Recursive => "a reference to an enclosing container".into(),
        }
    }

    /// A dict key as text (strings without quotes). A dict used as a key is not described
    /// through its own keys, so that a description never recurses.
    pub fn key_text(&self) -> String {
        match self {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Dict(d) => format!("dict with {} entries", d.len()),
            other => other.describe(),
        }
    }

    /// Moves the children of a container this value alone owns into `out`, leaving it empty.
    fn take_children(&mut self, out: &mut Vec<Value>) {
        // Leaves drop without recursing, so only containers need to move (in a slice they
        // are replaced by `None`).
        let take = |v: &mut Value| std::mem::replace(v, Value::None);
        match self {
            Value::Tuple(a) | Value::List(a) | Value::Set(a) => {
                if let Some(items) = Arc::get_mut(a) {
                    out.extend(items.iter_mut().filter(|v| v.is_container()).map(take));
                }
            }
            Value::Dict(a) => {
                if let Some(entries) = Arc::get_mut(a) {
                    for (k, v) in entries.iter_mut() {
                        out.extend([k, v].into_iter().filter(|v| v.is_container()).map(take));
                    }
                }
            }
            Value::Object(o) => {
                if let Some(o) = Arc::get_mut(o) {
                    out.append(&mut o.args);
                    out.extend(o.state.take());
                    for (k, v) in o.kwargs.drain(..).chain(o.dict_items.drain(..)) {
                        out.push(k);
                        out.push(v);
                    }
                    out.append(&mut o.list_items);
                }
            }
            _ => {}
        }
    }

    fn is_container(&self) -> bool {
        matches!(
            self,
            Value::Tuple(_) | Value::List(_) | Value::Set(_) | Value::Dict(_) | Value::Object(_)
        )
    }
}

/// Dropping a deeply nested value the ordinary way recurses once per level and overflows the
/// stack; children of containers dropped here are moved onto a heap stack first.
impl Drop for Value {
    fn drop(&mut self) {
        if !self.is_container() {
            return;
        }
        let mut pending = Vec::new();
        self.take_children(&mut pending);
        while let Some(mut v) = pending.pop() {
            v.take_children(&mut pending);
            // `v` is now childless (or shared, then only its count drops).
        }
    }
}

fn addr<T: ?Sized>(a: &Arc<T>) -> usize {
    Arc::as_ptr(a) as *const u8 as usize
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        let mut pending: Vec<(&Value, &Value)> = vec![(self, other)];
        // Pairs of containers already compared (or being compared): shared data is compared
        // once, not once per path.
        let mut seen: HashSet<(usize, usize)> = HashSet::new();
        while let Some((a, b)) = pending.pop() {
            use Value::*;
            match (a, b) {
                (None, None) | (Recursive, Recursive) => {}
                (Bool(x), Bool(y)) if x == y => {}
                (Int(x), Int(y)) if x == y => {}
                (BigInt(x), BigInt(y)) if x == y => {}
                (Float(x), Float(y)) if x == y => {}
                (Str(x), Str(y)) if x == y => {}
                (Bytes(x), Bytes(y)) if x == y => {}
                (Global(x), Global(y)) if x == y => {}
                (Storage(x), Storage(y)) if x == y => {}
                (Tensor(x), Tensor(y)) if x == y => {}
                (Tuple(x), Tuple(y)) | (List(x), List(y)) | (Set(x), Set(y)) => {
                    if Arc::ptr_eq(x, y) || !seen.insert((addr(x), addr(y))) {
                        continue;
                    }
                    if x.len() != y.len() {
                        return false;
                    }
                    pending.extend(x.iter().zip(y.iter()));
                }
                (Dict(x), Dict(y)) => {
                    if Arc::ptr_eq(x, y) || !seen.insert((addr(x), addr(y))) {
                        continue;
                    }
                    if x.len() != y.len() {
                        return false;
                    }
                    for ((k1, v1), (k2, v2)) in x.iter().zip(y.iter()) {
                        pending.push((k1, k2));
                        pending.push((v1, v2));
                    }
                }
                (Object(x), Object(y)) => {
                    if Arc::ptr_eq(x, y) || !seen.insert((addr(x), addr(y))) {
                        continue;
                    }
                    if x.class != y.class
                        || x.args.len() != y.args.len()
                        || x.kwargs.len() != y.kwargs.len()
                        || x.state.is_some() != y.state.is_some()
                        || x.dict_items.len() != y.dict_items.len()
                        || x.list_items.len() != y.list_items.len()
                    {
                        return false;
                    }
                    pending.extend(x.args.iter().zip(&y.args));
                    pending.extend(x.state.iter().zip(&y.state));
                    for ((k1, v1), (k2, v2)) in x
                        .kwargs
                        .iter()
                        .zip(&y.kwargs)
                        .chain(x.dict_items.iter().zip(&y.dict_items))
                    {
                        pending.push((k1, k2));
                        pending.push((v1, v2));
                    }
                    pending.extend(x.list_items.iter().zip(&y.list_items));
                }
                _ => return false,
            }
        }
        true
    }
}

/// Most nodes one `Debug` rendering shows before it abbreviates (shared data would otherwise
/// print once per path).
const DEBUG_NODES: usize = 10_000;
/// Deepest nesting `Debug` shows.
const DEBUG_DEPTH: usize = 64;

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let left = Cell::new(DEBUG_NODES);
        Shown {
            v: self,
            left: &left,
            depth: 0,
        }
        .fmt(f)
    }
}

/// A value rendered for `Debug` within a shared node budget and a depth bound.
struct Shown<'a> {
    v: &'a Value,
    left: &'a Cell<usize>,
    depth: usize,
}

struct ShownSeq<'a>(&'a [Value], &'a Cell<usize>, usize);
struct ShownPairs<'a>(&'a [(Value, Value)], &'a Cell<usize>, usize);

impl fmt::Debug for ShownSeq<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (left, depth) = (self.1, self.2);
        f.debug_list()
            .entries(self.0.iter().map(|v| Shown { v, left, depth }))
            .finish()
    }
}

impl fmt::Debug for ShownPairs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (left, depth) = (self.1, self.2);
        let shown = |v| Shown { v, left, depth };
        f.debug_list()
            .entries(self.0.iter().map(|(k, v)| (shown(k), shown(v))))
            .finish()
    }
}

impl fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.left.get() == 0 || self.depth >= DEBUG_DEPTH {
            return f.write_str("...");
        }
        self.left.set(self.left.get() - 1);
        let (left, depth) = (self.left, self.depth + 1);
        match self.v {
            Value::None => f.write_str("None"),
            Value::Recursive => f.write_str("Recursive"),
            Value::Bool(b) => f.debug_tuple("Bool").field(b).finish(),
            Value::Int(i) => f.debug_tuple("Int").field(i).finish(),
            Value::BigInt(b) => f.debug_tuple("BigInt").field(b).finish(),
            Value::Float(x) => f.debug_tuple("Float").field(x).finish(),
            Value::Str(s) => f.debug_tuple("Str").field(s).finish(),
            Value::Bytes(b) => f.debug_tuple("Bytes").field(b).finish(),
            Value::Global(g) => f.debug_tuple("Global").field(g).finish(),
            Value::Storage(s) => f.debug_tuple("Storage").field(s).finish(),
            Value::Tensor(t) => f.debug_tuple("Tensor").field(t).finish(),
            Value::Tuple(v) => f
                .debug_tuple("Tuple")
                .field(&ShownSeq(v, left, depth))
                .finish(),
            Value::List(v) => f
                .debug_tuple("List")
                .field(&ShownSeq(v, left, depth))
                .finish(),
            Value::Set(v) => f
                .debug_tuple("Set")
                .field(&ShownSeq(v, left, depth))
                .finish(),
            Value::Dict(d) => f
                .debug_tuple("Dict")
                .field(&ShownPairs(d, left, depth))
                .finish(),
            Value::Object(o) => f
                .debug_struct("Object")
                .field("class", &o.class)
                .field("args", &ShownSeq(&o.args, left, depth))
                .field("kwargs", &ShownPairs(&o.kwargs, left, depth))
                .field("state", &o.state.as_ref().map(|v| Shown { v, left, depth }))
                .field("dict_items", &ShownPairs(&o.dict_items, left, depth))
                .field("list_items", &ShownSeq(&o.list_items, left, depth))
                .finish(),
        }
    }
}

fn lookup<'a>(entries: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    entries
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(shape: Vec<usize>, stride: Vec<usize>) -> TensorRef {
        TensorRef {
            storage: StorageRef {
                key: "0".into(),
                dtype: Some(TorchDType::F32),
                numel: 100,
                location: "cpu".into(),
                view: None,
            },
            dtype: TorchDType::F32,
            offset: 0,
            shape,
            stride,
            requires_grad: false,
            parameter: false,
        }
    }

    #[test]
    fn contiguity() {
        assert!(tensor(vec![2, 3], vec![3, 1]).is_contiguous());
        assert!(!tensor(vec![3, 2], vec![1, 3]).is_contiguous());
        assert!(tensor(vec![1, 3], vec![7, 1]).is_contiguous());
        assert!(tensor(vec![], vec![]).is_contiguous());
    }

    #[test]
    fn dict_lookup_and_description() {
        let d = Value::Dict(Arc::from(vec![(Value::Str("epoch".into()), Value::Int(3))]));
        assert_eq!(d.get("epoch"), Some(&Value::Int(3)));
        assert_eq!(d.get("other"), None);
        assert!(d.describe().contains("epoch"), "{}", d.describe());
    }
}
