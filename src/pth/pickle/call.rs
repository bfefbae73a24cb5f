//! Calls: `REDUCE`, `NEWOBJ`, `NEWOBJ_EX`, `INST` and `OBJ`. The builtin containers and the
//! value functions are applied; every other call becomes an object that records its class and
//! arguments. Nothing is ever run.

use std::cell::RefCell;
use std::rc::Rc;

use super::globals::is_value_function;
use super::item::{keys_cost, pairs_from_seq, DictItems, Item, ObjItem};
use super::machine::Vm;
use super::rebuild::call_value;
use crate::pth::value::{Global, Value};

impl Vm<'_> {
    pub(super) fn call_with_tuple(
        &mut self,
        opcode: &str,
        func: Item,
        args: Item,
        kwargs: Option<Item>,
    ) -> Result<(), String> {
        let args = match &args {
            Item::Tuple(t) => {
                // The tuple may be memoised and passed again and again: copying is work.
                self.charge(t.len() as u64)?;
                t.as_ref().clone()
            }
            other => {
                return Err(format!(
                    "{opcode} arguments are {}, not a tuple",
                    other.describe()
                ))
            }
        };
        let result = self.call(func, args, kwargs)?;
        self.push(result);
        Ok(())
    }

    /// Calls a class or function (`REDUCE`, `NEWOBJ`, `INST`, `OBJ`).
    pub(super) fn call(
        &mut self,
        func: Item,
        args: Vec<Item>,
        kwargs: Option<Item>,
    ) -> Result<Item, String> {
        let func = match &func {
            Item::Leaf(Value::Global(g)) => g.clone(),
            other => {
                return Err(format!(
                    "cannot call {}: only classes and functions named by GLOBAL are callable",
                    other.describe()
                ))
            }
        };
        let (module, name) = (func.module.as_str(), func.name.as_str());
        // The builtin containers below copy their argument.
        if matches!(
            (module, name),
            ("collections", "OrderedDict")
                | ("builtins", "dict" | "set" | "frozenset" | "list" | "tuple")
                | ("torch", "Size")
        ) {
            self.charge(args.first().map_or(0, Item::len))?;
        }
        match (module, name) {
            ("collections", "OrderedDict") | ("builtins", "dict") => {
                let entries = match args.first() {
                    Some(Item::Dict(d)) => d.borrow().entries.clone(),
                    other => pairs_from_seq(&container_argument(&func, other, false)?)?,
                };
                self.charge(keys_cost(&entries))?;
                return Ok(Item::new_dict(entries));
            }
            // defaultdict(factory): the factory does not matter once the items are stored.
            ("collections", "defaultdict") => return Ok(Item::new_dict(Vec::new())),
            ("builtins", "set") | ("builtins", "frozenset") | ("builtins", "list") => {
                let items = container_argument(&func, args.first(), true)?;
                return Ok(if name == "list" {
                    Item::List(Rc::new(RefCell::new(items)))
                } else {
                    Item::Set(Rc::new(RefCell::new(items)))
                });
            }
            ("builtins", "tuple") | ("torch", "Size") => {
                let items = container_argument(&func, args.first(), false)?;
                return Ok(Item::Tuple(Rc::new(items)));
            }
            // copyreg._reconstructor(cls, base, state): an instance of cls built without __init__.
            ("copyreg", "_reconstructor") => {
                if let Some(Item::Leaf(Value::Global(cls))) = args.first() {
                    return Ok(object_item(cls.as_ref().clone(), args[1..].to_vec(), None));
                }
            }
            _ => {}
        }
        if is_value_function(&func) {
            let values = self.freeze_all(&args)?;
            if let Some(v) = call_value(&func, &values)? {
                return Ok(Item::Leaf(v));
            }
        }
        Ok(object_item(func.as_ref().clone(), args, kwargs))
    }
}

pub(super) fn object_item(class: Global, args: Vec<Item>, kwargs: Option<Item>) -> Item {
    Item::Object(Rc::new(RefCell::new(ObjItem {
        class,
        args,
        kwargs,
        state: None,
        dict_items: DictItems::default(),
        list_items: Vec::new(),
    })))
}

/// The items of a builtin container's one argument (`list(x)`, `tuple(x)`, `dict(pairs)`),
/// copied: none without an argument; a list or tuple, or a set where `sets` allows one.
fn container_argument(func: &Global, arg: Option<&Item>, sets: bool) -> Result<Vec<Item>, String> {
    match arg {
        None => Ok(Vec::new()),
        Some(Item::List(l)) => Ok(l.borrow().clone()),
        Some(Item::Set(s)) if sets => Ok(s.borrow().clone()),
        Some(Item::Tuple(t)) => Ok(t.as_ref().clone()),
        Some(other) => Err(format!("{} of {}", func.path(), other.describe())),
    }
}
