//! Finding the model tensors in a checkpoint, whatever its layout, and naming them.
//!
//! Layouts seen in practice, all handled by one walk:
//! - a state dict at the top (`{"encoder.resnet.0.weight": tensor, ...}`);
//! - state dicts under keys (`{"state_dict": {...}}`, `{"encoder": {...}, "decoder": {...}}`),
//!   possibly with `module.` prefixes from `nn.DataParallel`;
//! - whole pickled `nn.Module` objects, as in the tutorial's checkpoint (`{"encoder": <Encoder>,
//!   "decoder": <DecoderWithAttention>, ...}`): their `_parameters`, persistent `_buffers` and
//!   `_modules` are walked recursively, giving the names `state_dict()` would.
//!
//! Optimisers (objects from `torch.optim` or dicts with `state` and `param_groups`, and keys
//! naming optimisers or schedulers) are skipped: they hold tensors that are not the model.

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::value::{Object, TensorRef, Value};
use super::{Checkpoint, PthError, Result};
use crate::model::encoder::resnet::torchvision_to_tutorial;
use crate::model::file::canonical_name;

/// Keys that wrap a state dict without naming a part of the model.
const WRAPPER_KEYS: &[&str] = &["state_dict", "model_state_dict", "model", "net", "network"];

/// Deeper than any real model; stops runaway walks of odd data.
const MAX_DEPTH: usize = 64;

fn skipped_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("optim") || key.contains("sched") || key.contains("scaler")
}

fn is_optimizer(v: &Value) -> bool {
    match v {
        Value::Object(o) => o.class.module.starts_with("torch.optim"),
        Value::Dict(_) => v.get("state").is_some() && v.get("param_groups").is_some(),
        _ => false,
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Most steps (dict entries and attributes looked at) one walk may take: data shared along many
/// paths (a few bytes of pickle can make a DAG with 2^60 paths) is refused, not walked for ever.
const MAX_STEPS: u64 = 10_000_000;

/// Longest tensor name accepted; containers deeper in the names are not walked.
const MAX_NAME: usize = 4096;

/// How a child's name follows from its parent's.
enum Key<'a> {
    /// A wrapper key (`state_dict`): the parent's name.
    Same,
    Str(&'a str),
    Int(i128),
}

enum Node<'a> {
    Value(&'a Value),
    Module(&'a Object),
}

/// Work still to do: a node and how to name it. Names are built only when a task runs, so
/// pending tasks hold no long strings.
struct Task<'a> {
    node: Node<'a>,
    parent: Rc<str>,
    key: Key<'a>,
    depth: usize,
}

#[derive(Default)]
struct Collector {
    out: Vec<(String, Arc<TensorRef>)>,
    index: HashMap<String, usize>,
    conflicts: Vec<String>,
    steps: u64,
}

impl Collector {
    fn push(&mut self, name: String, t: &Arc<TensorRef>) {
        match self.index.get(&name) {
            // The same tensor reached twice (a module referenced from two places) is one tensor.
            Some(&i) if self.out[i].1 == *t => {}
            Some(_) => self.conflicts.push(name),
            None => {
                self.index.insert(name.clone(), self.out.len());
                self.out.push((name, t.clone()));
            }
        }
    }

    fn step(&mut self, n: usize) -> std::result::Result<(), String> {
        self.steps = self.steps.saturating_add(1 + n as u64);
        if self.steps > MAX_STEPS {
            return Err(format!(
                "the data is shared along so many paths that naming its tensors would take more \
                 than {MAX_STEPS} steps (hostile or corrupt)"
            ));
        }
        Ok(())
    }

    /// Walks depth-first with an explicit stack (children pushed in reverse), so tensors come
    /// out in the order the file holds them and no recursion follows the data.
    fn walk(&mut self, root: &Value) -> std::result::Result<(), String> {
        let mut tasks = vec![Task {
            node: Node::Value(root),
            parent: Rc::from(""),
            key: Key::Same,
            depth: 0,
        }];
        while let Some(task) = tasks.pop() {
            let name: Rc<str> = match task.key {
                Key::Same => task.parent.clone(),
                Key::Str(k) => join(&task.parent, k).into(),
                Key::Int(i) => join(&task.parent, &i.to_string()).into(),
            };
            let is_tensor = matches!(task.node, Node::Value(Value::Tensor(_)));
            if name.len() > MAX_NAME {
                if is_tensor {
                    return Err(format!(
                        "a tensor name is longer than {MAX_NAME} bytes ({}...)",
                        name.chars().take(80).collect::<String>()
                    ));
                }
                continue;
            }
            let start = tasks.len();
            match task.node {
                Node::Value(v) => {
                    if task.depth > MAX_DEPTH {
                        continue;
                    }
                    match v {
                        Value::Tensor(t) => self.push(name.to_string(), t),
                        Value::Dict(entries) => {
                            self.step(entries.len())?;
                            if !is_optimizer(v) {
                                self.entries(entries, &name, task.depth, &mut tasks);
                            }
                        }
                        Value::Object(o) => {
                            self.step(o.dict_items.len() + o.state_len())?;
                            if is_optimizer(v) {
                            } else if o.is_module() {
                                self.module(o, &name, task.depth, &mut tasks)?;
                            } else {
                                self.entries(&o.dict_items, &name, task.depth, &mut tasks);
                            }
                        }
                        _ => {}
                    }
                }
                Node::Module(o) => {
                    self.step(o.dict_items.len() + o.state_len())?;
                    self.module(o, &name, task.depth, &mut tasks)?;
                }
            }
            tasks[start..].reverse();
        }
        Ok(())
    }

    /// Queues the entries that can hold tensors.
    fn entries<'a>(
        &mut self,
        entries: &'a [(Value, Value)],
        name: &Rc<str>,
        depth: usize,
        tasks: &mut Vec<Task<'a>>,
    ) {
        for (k, v) in entries {
            if !matches!(v, Value::Tensor(_) | Value::Dict(_) | Value::Object(_)) {
                continue;
            }
            let is_tensor = matches!(v, Value::Tensor(_));
            let key = match k {
                Value::Str(s) => {
                    if !is_tensor && skipped_key(s) {
                        continue;
                    }
                    if !is_tensor && WRAPPER_KEYS.contains(&&**s) {
                        Key::Same
                    } else {
                        Key::Str(s)
                    }
                }
                Value::Int(i) => Key::Int(*i),
                _ => continue,
            };
            tasks.push(Task {
                node: Node::Value(v),
                parent: name.clone(),
                key,
                depth: depth + 1,
            });
        }
    }

    /// Takes a module's parameters and persistent buffers, and queues its child modules.
    fn module<'a>(
        &mut self,
        module: &'a Object,
        prefix: &Rc<str>,
        depth: usize,
        tasks: &mut Vec<Task<'a>>,
    ) -> std::result::Result<(), String> {
        if let Some(params) = module.attr("_parameters").and_then(Value::dict_entries) {
            self.step(params.len())?;
            for (k, v) in params {
                if let (Some(name), Value::Tensor(t)) = (k.as_str(), v) {
                    self.push(join(prefix, name), t);
                }
            }
        }
        let non_persistent: Vec<&str> = module
            .attr("_non_persistent_buffers_set")
            .and_then(Value::as_seq)
            .map(|s| s.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(buffers) = module.attr("_buffers").and_then(Value::dict_entries) {
            self.step(buffers.len().saturating_mul(1 + non_persistent.len()))?;
            for (k, v) in buffers {
                if let (Some(name), Value::Tensor(t)) = (k.as_str(), v) {
                    if !non_persistent.contains(&name) {
                        self.push(join(prefix, name), t);
                    }
                }
            }
        }
        if let Some(children) = module.attr("_modules").and_then(Value::dict_entries) {
            self.step(children.len())?;
            for (k, v) in children {
                if let (Some(name), Value::Object(child)) = (k.as_str(), v) {
                    if depth < MAX_DEPTH {
                        tasks.push(Task {
                            node: Node::Module(child),
                            parent: prefix.clone(),
                            key: Key::Str(name),
                            depth: depth + 1,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Every model tensor under `root`, with dotted names, in the order the file holds them.
///
/// Fails when two different tensors would get the same name, or when the data is shared so
/// often that the walk would not end in reasonable time.
pub fn model_tensors(root: &Value) -> std::result::Result<Vec<(String, Arc<TensorRef>)>, String> {
    let mut c = Collector::default();
    c.walk(root)?;
    if !c.conflicts.is_empty() {
        c.conflicts.sort();
        c.conflicts.dedup();
        return Err(format!(
            "different tensors share the name(s) {}",
            c.conflicts.join(", ")
        ));
    }
    Ok(c.out)
}

/// What a training checkpoint records besides weights (all optional).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainingInfo {
    pub epoch: Option<i64>,
    pub epochs_since_improvement: Option<i64>,
    /// The tutorial's key is `bleu-4`.
    pub bleu4: Option<f64>,
    /// From a pickled `Encoder` (`enc_image_size`, or its `adaptive_pool.output_size`).
    pub encoded_image_size: Option<usize>,
    /// From a pickled decoder's `dropout` module (`p`).
    pub dropout: Option<f64>,
    /// A word map stored in the checkpoint (`word_map`: word -> id); the tutorial's has none.
    pub word_map: Option<Vec<(String, u32)>>,
    /// Classes of pickled encoder and decoder modules (`models.Encoder`, ...).
    pub encoder_class: Option<String>,
    pub decoder_class: Option<String>,
}

fn grid_size(v: &Value) -> Option<usize> {
    let n = match v {
        Value::Int(i) => *i,
        other => other.as_seq()?.first()?.as_int()?,
    };
    usize::try_from(n).ok().filter(|&n| n > 0)
}

impl TrainingInfo {
    pub fn from_root(root: &Value) -> Self {
        let int = |key: &str| {
            root.get(key)
                .and_then(Value::as_int)
                .and_then(|i| i64::try_from(i).ok())
        };
        let encoder = root.get("encoder").and_then(Value::as_object);
        let decoder = root.get("decoder").and_then(Value::as_object);
        let encoded_image_size = encoder.and_then(|e| {
            e.attr("enc_image_size").and_then(grid_size).or_else(|| {
                e.attr("_modules")?
                    .get("adaptive_pool")?
                    .get("output_size")
                    .and_then(grid_size)
            })
        });
        let dropout = decoder.and_then(|d| {
            d.attr("_modules")
                .and_then(|m| m.get("dropout"))
                .and_then(|m| m.get("p"))
                .and_then(Value::as_f64)
                .or_else(|| {
                    d.attr("dropout").and_then(|v| {
                        if let Value::Float(f) = v {
                            Some(*f)
                        } else {
                            None
                        }
                    })
                })
        });
        let word_map = root
            .get("word_map")
            .and_then(Value::dict_entries)
            .and_then(|entries| {
                entries
                    .iter()
                    .map(|(k, v)| Some((k.as_str()?.to_string(), u32::try_from(v.as_int()?).ok()?)))
                    .collect::<Option<Vec<_>>>()
            });
        TrainingInfo {
            epoch: int("epoch"),
            epochs_since_improvement: int("epochs_since_improvement"),
            bleu4: root
                .get("bleu-4")
                .or_else(|| root.get("bleu4"))
                .and_then(Value::as_f64),
            encoded_image_size,
            dropout,
            word_map,
            encoder_class: encoder.map(|o| o.class.path()),
            decoder_class: decoder.map(|o| o.class.path()),
        }
    }
}

/// The model's tensors from a checkpoint, as f32 under the tutorial's names with `encoder.` /
/// `decoder.` prefixes (`module.` dropped, torchvision ResNet names mapped). Integer buffers
/// (`num_batches_tracked`) and the ResNet classifier are left out.
pub fn tutorial_tensors(ckpt: &Checkpoint, device: &Device) -> Result<HashMap<String, Tensor>> {
    let named = ckpt.named_tensors()?;
    if named.is_empty() {
        return Err(PthError::Content {
            path: ckpt.path().to_path_buf(),
            reason: format!(
                "no tensors found; the file holds a {}",
                ckpt.root().describe()
            ),
        });
    }
    let mut canonical: Vec<(String, Arc<TensorRef>)> = Vec::with_capacity(named.len());
    let mut seen: HashMap<String, String> = HashMap::new();
    for (name, t) in named {
        let Some(canon) = canonical_name(&name) else {
            continue;
        };
        if let Some(first) = seen.insert(canon.clone(), name.clone()) {
            return Err(PthError::Content {
                path: ckpt.path().to_path_buf(),
                reason: format!("{first} and {name} are both {canon}"),
            });
        }
        canonical.push((canon, t));
    }
    ckpt.load_tensors(&canonical, false, device)
}

/// Encoder tensors from a torchvision ResNet file (`resnet101-*.pth`: a state dict named
/// `conv1.weight`, `layer1.0.conv1.weight`, ...), as f32 under the tutorial's names with the
/// `encoder.` prefix (`encoder.resnet.0.weight`, `encoder.resnet.4.0.conv1.weight`, ...). Files
/// that already use the tutorial's names are accepted too. The classifier (`fc.*`) is dropped.
pub fn torchvision_resnet_encoder(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let ckpt = Checkpoint::open(path)?;
    let named = ckpt.named_tensors()?;
    let mut mapped = Vec::with_capacity(named.len());
    for (name, t) in &named {
        let name = name.replace("module.", "");
        let target = if name.starts_with("encoder.") {
            canonical_name(&name)
        } else if name.starts_with("resnet.") {
            Some(format!("encoder.{name}"))
        } else {
            torchvision_to_tutorial(&name).map(|m| format!("encoder.{m}"))
        };
        if let Some(target) = target.filter(|t| t.starts_with("encoder.resnet.")) {
            mapped.push((target, t.clone()));
        }
    }
    if !mapped.iter().any(|(n, _)| n == "encoder.resnet.0.weight") {
        let found: Vec<&str> = named.iter().take(8).map(|(n, _)| n.as_str()).collect();
        return Err(PthError::Content {
            path: path.to_path_buf(),
            reason: format!(
                "no ResNet stem (conv1.weight) found, so not a torchvision ResNet; tensors found: {}",
                if found.is_empty() { "none".to_string() } else { found.join(", ") }
            ),
        });
    }
    ckpt.load_tensors(&mapped, false, device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pth::value::{Global, StorageRef, TorchDType};

    fn tensor(key: &str) -> Value {
        Value::Tensor(Arc::new(TensorRef {
            storage: StorageRef {
                key: key.into(),
                dtype: Some(TorchDType::F32),
                numel: 1,
                location: "cpu".into(),
                view: None,
            },
            dtype: TorchDType::F32,
            offset: 0,
            shape: vec![1],
            stride: vec![1],
            requires_grad: false,
            parameter: true,
        }))
    }

    fn s(x: &str) -> Value {
        Value::Str(x.into())
    }

    fn dict(entries: Vec<(&str, Value)>) -> Value {
        Value::Dict(
            entries
                .into_iter()
                .map(|(k, v)| (s(k), v))
                .collect::<Vec<_>>()
                .into(),
        )
    }

    fn module(class: &str, params: Vec<(&str, Value)>, children: Vec<(&str, Value)>) -> Value {
        let (m, n) = class.rsplit_once('.').unwrap();
        Value::Object(Arc::new(Object {
            class: Global::new(m, n),
            args: vec![],
            kwargs: vec![],
            state: Some(dict(vec![
                ("_parameters", dict(params)),
                ("_buffers", dict(vec![])),
                ("_modules", dict(children)),
                ("training", Value::Bool(false)),
            ])),
            dict_items: vec![],
            list_items: vec![],
        }))
    }

    fn names(v: &Value) -> Vec<String> {
        model_tensors(v)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }

    #[test]
    fn state_dict_under_wrapper_keys_and_optimisers_skipped() {
        let root = dict(vec![
            ("epoch", Value::Int(3)),
            (
                "state_dict",
                dict(vec![("fc.weight", tensor("0")), ("fc.bias", tensor("1"))]),
            ),
            (
                "optimizer",
                dict(vec![
                    ("state", dict(vec![("x", tensor("2"))])),
                    ("param_groups", Value::List(vec![].into())),
                ]),
            ),
        ]);
        assert_eq!(names(&root), vec!["fc.weight", "fc.bias"]);
    }

    #[test]
    fn modules_are_walked_with_prefixes() {
        let linear = module(
            "torch.nn.modules.linear.Linear",
            vec![("weight", tensor("0")), ("bias", Value::None)],
            vec![],
        );
        let att = module("models.Attention", vec![], vec![("full_att", linear)]);
        let dec = module(
            "models.DecoderWithAttention",
            vec![],
            vec![("attention", att)],
        );
        let adam = Value::Object(Arc::new(Object {
            class: Global::new("torch.optim.adam", "Adam"),
            args: vec![],
            kwargs: vec![],
            state: Some(dict(vec![("state", dict(vec![("p", tensor("9"))]))])),
            dict_items: vec![],
            list_items: vec![],
        }));
        let root = dict(vec![
            ("decoder", dec),
            ("decoder_optimizer", adam.clone()),
            ("other", adam),
        ]);
        assert_eq!(names(&root), vec!["decoder.attention.full_att.weight"]);
    }

    #[test]
    fn conflicting_names_are_reported() {
        let root = dict(vec![
            ("a.w", tensor("0")),
            ("a", dict(vec![("w", tensor("1"))])),
        ]);
        let e = model_tensors(&root).unwrap_err();
        assert!(e.contains("a.w"), "{e}");
    }

    #[test]
    fn training_info_reads_the_tutorial_keys() {
        let pool = Value::Object(Arc::new(Object {
            class: Global::new("torch.nn.modules.pooling", "AdaptiveAvgPool2d"),
            args: vec![],
            kwargs: vec![],
            state: Some(dict(vec![(
                "output_size",
                Value::Tuple(vec![Value::Int(6), Value::Int(6)].into()),
            )])),
            dict_items: vec![],
            list_items: vec![],
        }));
        let enc = module("models.Encoder", vec![], vec![("adaptive_pool", pool)]);
        let root = dict(vec![
            ("epoch", Value::Int(12)),
            ("bleu-4", Value::Float(0.25)),
            ("encoder", enc),
            (
                "word_map",
                dict(vec![("<pad>", Value::Int(0)), ("a", Value::Int(1))]),
            ),
        ]);
        let info = TrainingInfo::from_root(&root);
        assert_eq!(info.epoch, Some(12));
        assert_eq!(info.bleu4, Some(0.25));
        assert_eq!(info.epochs_since_improvement, None);
        assert_eq!(info.encoded_image_size, Some(6));
        assert_eq!(info.encoder_class.as_deref(), Some("models.Encoder"));
        assert_eq!(
            info.word_map,
            Some(vec![("<pad>".into(), 0), ("a".into(), 1)])
        );
    }
}
