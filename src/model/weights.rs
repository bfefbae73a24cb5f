//! Named tensors for building modules, with shape checks that collect every problem.
//!
//! A module asks for `prefix.name` with the shape its configuration implies. A missing tensor
//! or a wrong shape is recorded (and a zero placeholder handed out so building can go on), so
//! that one load reports every problem at once, by name, with expected and found shapes.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

use super::error::{ModelError, Result};

/// A set of named f32 tensors on one device.
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    device: Device,
    problems: RefCell<Vec<String>>,
    /// Every name a module asked for, with the shape it expected.
    requested: RefCell<BTreeMap<String, Vec<usize>>>,
}

impl Weights {
    pub fn new(tensors: HashMap<String, Tensor>, device: &Device) -> Self {
        Weights {
            tensors,
            device: device.clone(),
            problems: RefCell::default(),
            requested: RefCell::default(),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    pub fn raw(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    pub fn into_tensors(self) -> HashMap<String, Tensor> {
        self.tensors
    }

    /// A view whose names are relative to `prefix`.
    pub fn pp(&self, prefix: &str) -> WeightsView<'_> {
        WeightsView {
            weights: self,
            prefix: prefix.to_string(),
        }
    }

    /// The tensor `name`, checked against `shape`. Problems are recorded, not returned.
    pub fn get(&self, name: &str, shape: &[usize]) -> Tensor {
        self.requested
            .borrow_mut()
            .insert(name.to_string(), shape.to_vec());
        match self.tensors.get(name) {
            Some(t) if t.dims() == shape => return t.clone(),
            Some(t) => self.problems.borrow_mut().push(format!(
                "{name}: expected shape {shape:?}, found {:?}",
                t.dims()
            )),
            None => self
                .problems
                .borrow_mut()
                .push(format!("{name}: missing (expected shape {shape:?})")),
        }
        Tensor::zeros(shape, DType::F32, &self.device).expect("allocating a placeholder")
    }

    /// Whether a tensor of this name exists (without recording a problem).
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Records a problem found by a module (for example an inconsistent configuration).
    pub fn problem(&self, text: String) {
        self.problems.borrow_mut().push(text);
    }

    /// Ends a build: every recorded problem becomes one error naming `path`.
    pub fn check(&self, path: &Path) -> Result<()> {
        let problems = self.problems.borrow();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ModelError::Tensors {
                path: path.to_path_buf(),
                problems: problems.clone(),
            })
        }
    }

    /// Names that no module asked for (for example a classifier head that captioning drops).
    pub fn unused(&self) -> Vec<String> {
        let requested = self.requested.borrow();
        let mut out: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| !requested.contains_key(*k))
            .cloned()
            .collect();
        out.sort();
        out
    }

    /// Every (name, shape) that modules asked for, sorted by name.
    pub fn requested(&self) -> Vec<(String, Vec<usize>)> {
        self.requested
            .borrow()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Replaces each tensor whose name passes `select` by a trainable `Var` and returns them,
    /// sorted by name. Modules built afterwards hold the `Var`s' tensors, so gradients reach them.
    pub fn make_trainable(&mut self, select: impl Fn(&str) -> bool) -> Result<Vec<(String, Var)>> {
        let mut names: Vec<String> = self.tensors.keys().filter(|k| select(k)).cloned().collect();
        names.sort();
        let mut vars = Vec::with_capacity(names.len());
        for name in names {
            let var = Var::from_tensor(&self.tensors[&name])?;
            self.tensors.insert(name.clone(), var.as_tensor().clone());
            vars.push((name, var));
        }
        Ok(vars)
    }
}

/// Names relative to a prefix, as `VarBuilder::pp` does.
#[derive(Clone)]
pub struct WeightsView<'a> {
    weights: &'a Weights,
    prefix: String,
}

impl<'a> WeightsView<'a> {
    pub fn pp(&self, name: impl std::fmt::Display) -> WeightsView<'a> {
        WeightsView {
            weights: self.weights,
            prefix: self.name(&name.to_string()),
        }
    }

    pub fn name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    pub fn get(&self, name: &str, shape: &[usize]) -> Tensor {
        self.weights.get(&self.name(name), shape)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains(&self.name(name))
    }

    /// The full name of this view (e.g. `encoder.resnet.1`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn weights(&self) -> &'a Weights {
        self.weights
    }

    pub fn device(&self) -> &Device {
        self.weights.device()
    }
}
