//! The values while a pickle runs: immutable leaves and shared, still mutable containers,
//! dropped without recursion.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use crate::pth::value::{Global, Value};

/// Dict keys that Python compares by value, for replacing an existing entry on `SETITEM`.
#[derive(PartialEq, Eq, Hash)]
enum ScalarKey {
    Str(Arc<str>),
    Int(i128),
    Bytes(Arc<[u8]>),
}

impl ScalarKey {
    fn of(item: &Item) -> Option<Self> {
        match item {
            Item::Leaf(Value::Str(s)) => Some(ScalarKey::Str(s.clone())),
            Item::Leaf(Value::Int(i)) => Some(ScalarKey::Int(*i)),
            Item::Leaf(Value::Bool(b)) => Some(ScalarKey::Int(*b as i128)),
            Item::Leaf(Value::Bytes(b)) => Some(ScalarKey::Bytes(b.clone())),
            _ => None,
        }
    }
}

#[derive(Default)]
pub(super) struct DictItems {
    pub(super) entries: Vec<(Item, Item)>,
    index: HashMap<ScalarKey, usize>,
}

impl DictItems {
    pub(super) fn insert(&mut self, key: Item, value: Item) {
        match ScalarKey::of(&key) {
            Some(k) => match self.index.get(&k) {
                Some(&i) => self.entries[i].1 = value,
                None => {
                    self.index.insert(k, self.entries.len());
                    self.entries.push((key, value));
                }
            },
            None => self.entries.push((key, value)),
        }
    }
}

pub(super) struct ObjItem {
    pub(super) class: Global,
    pub(super) args: Vec<Item>,
    pub(super) kwargs: Option<Item>,
    pub(super) state: Option<Item>,
    pub(super) dict_items: DictItems,
    pub(super) list_items: Vec<Item>,
}

/// A value while the pickle runs: immutable leaves, and shared containers that later opcodes
/// may still fill.
#[derive(Clone)]
pub(super) enum Item {
    Leaf(Value),
    Tuple(Rc<Vec<Item>>),
    List(Rc<RefCell<Vec<Item>>>),
    Set(Rc<RefCell<Vec<Item>>>),
    Dict(Rc<RefCell<DictItems>>),
    Object(Rc<RefCell<ObjItem>>),
}

impl Item {
    pub(super) fn describe(&self) -> String {
        match self {
            Item::Leaf(v) => v.describe(),
            Item::Tuple(t) => format!("tuple of {}", t.len()),
            Item::List(l) => format!("list of {}", l.borrow().len()),
            Item::Set(s) => format!("set of {}", s.borrow().len()),
            Item::Dict(d) => format!("dict with {} entries", d.borrow().entries.len()),
            Item::Object(o) => format!("{} object", o.borrow().class.path()),
        }
    }

    pub(super) fn new_dict(entries: Vec<(Item, Item)>) -> Item {
        let mut d = DictItems::default();
        for (k, v) in entries {
            d.insert(k, v);
        }
        Item::Dict(Rc::new(RefCell::new(d)))
    }

    /// Moves the children of a container this item alone owns into `out`. (Mutable containers
    /// are also referred to weakly by the VM, so uniqueness is the strong count, not
    /// `Rc::get_mut`.)
    fn take_children(&mut self, out: &mut Vec<Item>) {
        match self {
            Item::Leaf(_) => {}
            Item::Tuple(rc) => {
                if let Some(items) = Rc::get_mut(rc) {
                    out.append(items);
                }
            }
            Item::List(rc) | Item::Set(rc) if Rc::strong_count(rc) == 1 => {
                if let Ok(mut items) = rc.try_borrow_mut() {
                    out.append(&mut items);
                }
            }
            Item::Dict(rc) if Rc::strong_count(rc) == 1 => {
                if let Ok(mut d) = rc.try_borrow_mut() {
                    d.take_into(out);
                }
            }
            Item::Object(rc) if Rc::strong_count(rc) == 1 => {
                if let Ok(mut o) = rc.try_borrow_mut() {
                    o.take_into(out);
                }
            }
            Item::List(_) | Item::Set(_) | Item::Dict(_) | Item::Object(_) => {}
        }
    }

    /// Elements of a container (0 for leaves).
    pub(super) fn len(&self) -> u64 {
        (match self {
            Item::Leaf(_) => 0,
            Item::Tuple(t) => t.len(),
            Item::List(l) | Item::Set(l) => l.borrow().len(),
            Item::Dict(d) => d.borrow().entries.len(),
            Item::Object(o) => o.borrow().args.len(),
        }) as u64
    }

    /// Work units charged for using this as a dict key (hashing and comparing it).
    pub(super) fn key_cost(&self) -> u64 {
        match self {
            Item::Leaf(Value::Str(s)) => 1 + s.len() as u64 / 16,
            Item::Leaf(Value::Bytes(b)) => 1 + b.len() as u64 / 16,
            _ => 1,
        }
    }
}

impl DictItems {
    pub(super) fn take_into(&mut self, out: &mut Vec<Item>) {
        self.index.clear();
        for (k, v) in self.entries.drain(..) {
            out.push(k);
            out.push(v);
        }
    }
}

impl ObjItem {
    pub(super) fn take_into(&mut self, out: &mut Vec<Item>) {
        out.append(&mut self.args);
        out.extend(self.kwargs.take());
        out.extend(self.state.take());
        self.dict_items.take_into(out);
        out.append(&mut self.list_items);
    }
}

/// Dropping deeply nested items the ordinary way recurses once per level and overflows the
/// stack; the children are moved onto a heap stack instead.
impl Drop for Item {
    fn drop(&mut self) {
        if let Item::Leaf(_) = self {
            return;
        }
        let mut pending = Vec::new();
        self.take_children(&mut pending);
        while let Some(mut item) = pending.pop() {
            item.take_children(&mut pending);
        }
    }
}

pub(super) fn keys_cost(pairs: &[(Item, Item)]) -> u64 {
    pairs.iter().map(|(k, _)| k.key_cost()).sum()
}

pub(super) fn pairs(items: Vec<Item>) -> Result<Vec<(Item, Item)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err(format!("{} items cannot form key/value pairs", items.len()));
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

pub(super) fn pairs_from_seq(items: &[Item]) -> Result<Vec<(Item, Item)>, String> {
    items
        .iter()
        .map(|p| match p {
            Item::Tuple(t) if t.len() == 2 => Ok((t[0].clone(), t[1].clone())),
            Item::List(l) if l.borrow().len() == 2 => {
                let l = l.borrow();
                Ok((l[0].clone(), l[1].clone()))
            }
            other => Err(format!(
                "expected a (key, value) pair, found {}",
                other.describe()
            )),
        })
        .collect()
}
