//! Freezing: shared containers into immutable [`Value`]s, within the work allowance and the
//! depth limit.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use super::item::Item;
use crate::pth::value::{Object, Value};

/// Deepest container nesting accepted when freezing (Python's own limit is about 1000). Shared
/// containers count at every place they appear, so no frozen [`Value`] is deeper.
pub const MAX_DEPTH: usize = 1000;

/// Work a pickle may do per byte it has read: one unit is about one item copied or frozen.
/// Real checkpoints need about one per byte.
pub const WORK_PER_BYTE: u64 = 8;
/// Work any pickle may do, however short.
pub const WORK_BASE: u64 = 1 << 20;

pub(super) fn too_much_work(read: u64) -> String {
    format!(
        "the pickle asks for more than {} units of work (copying or walking shared data over \
         and over) for the {read} bytes read so far; refused as hostile or corrupt",
        allowance(read)
    )
}

pub(super) fn allowance(read: u64) -> u64 {
    WORK_BASE.saturating_add(WORK_PER_BYTE.saturating_mul(read))
}

/// Turns shared containers into immutable values, preserving sharing and cutting cycles.
pub(super) struct Freezer<'b> {
    /// Frozen containers by address, with their height (containers nested inside, inclusive).
    done: HashMap<usize, (Value, usize)>,
    active: HashSet<usize>,
    depth: usize,
    /// Work units left; each item visited costs one.
    budget: &'b mut u64,
    /// Bytes of the pickle read so far, for the message when the budget runs out.
    read: u64,
}

impl<'b> Freezer<'b> {
    pub(super) fn new(budget: &'b mut u64, read: u64) -> Self {
        Freezer {
            done: HashMap::new(),
            active: HashSet::new(),
            depth: 0,
            budget,
            read,
        }
    }

    pub(super) fn freeze(&mut self, item: &Item) -> Result<Value, String> {
        self.freeze_h(item).map(|(v, _)| v)
    }

    /// The frozen value and its height (0 for leaves).
    fn freeze_h(&mut self, item: &Item) -> Result<(Value, usize), String> {
        *self.budget = self
            .budget
            .checked_sub(1)
            .ok_or_else(|| too_much_work(self.read))?;
        let addr = match item {
            Item::Leaf(v) => return Ok((v.clone(), 0)),
            Item::Tuple(rc) => Rc::as_ptr(rc) as *const u8 as usize,
            Item::List(rc) | Item::Set(rc) => Rc::as_ptr(rc) as *const u8 as usize,
            Item::Dict(rc) => Rc::as_ptr(rc) as *const u8 as usize,
            Item::Object(rc) => Rc::as_ptr(rc) as *const u8 as usize,
        };
        let nested = || format!("containers nested more than {MAX_DEPTH} deep");
        if let Some((v, h)) = self.done.get(&addr) {
            if self.depth + h > MAX_DEPTH {
                return Err(nested());
            }
            return Ok((v.clone(), *h));
        }
        if self.active.contains(&addr) {
            return Ok((Value::Recursive, 0));
        }
        if self.depth >= MAX_DEPTH {
            return Err(nested());
        }
        self.active.insert(addr);
        self.depth += 1;
        let mut height = 0;
        let value = self.freeze_container(item, &mut height);
        self.depth -= 1;
        self.active.remove(&addr);
        let value = value?;
        self.done.insert(addr, (value.clone(), height + 1));
        Ok((value, height + 1))
    }

    /// Freezes a child, raising `height` to the child's.
    fn child(&mut self, item: &Item, height: &mut usize) -> Result<Value, String> {
        let (v, h) = self.freeze_h(item)?;
        *height = (*height).max(h);
        Ok(v)
    }

    pub(super) fn freeze_all(
        &mut self,
        items: &[Item],
        height: &mut usize,
    ) -> Result<Vec<Value>, String> {
        let mut out = Vec::with_capacity(items.len());
        for i in items {
            out.push(self.child(i, height)?);
        }
        Ok(out)
    }

    fn freeze_pairs(
        &mut self,
        pairs: &[(Item, Item)],
        height: &mut usize,
    ) -> Result<Vec<(Value, Value)>, String> {
        let mut out = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            out.push((self.child(k, height)?, self.child(v, height)?));
        }
        Ok(out)
    }

    fn freeze_container(&mut self, item: &Item, h: &mut usize) -> Result<Value, String> {
        Ok(match item {
            Item::Leaf(v) => v.clone(),
            Item::Tuple(t) => Value::Tuple(self.freeze_all(t, h)?.into()),
            Item::List(l) => Value::List(self.freeze_all(&l.borrow(), h)?.into()),
            Item::Set(s) => Value::Set(self.freeze_all(&s.borrow(), h)?.into()),
            Item::Dict(d) => Value::Dict(self.freeze_pairs(&d.borrow().entries, h)?.into()),
            Item::Object(o) => {
                let o = o.borrow();
                let kwargs = match &o.kwargs {
                    Some(k) => {
                        let k = self.child(k, h)?;
                        match &k {
                            Value::Dict(d) => d.to_vec(),
                            _ => vec![(Value::Str("**".into()), k)],
                        }
                    }
                    None => Vec::new(),
                };
                let state = match &o.state {
                    Some(s) => Some(self.child(s, h)?),
                    None => None,
                };
                Value::Object(Arc::new(Object {
                    class: o.class.clone(),
                    args: self.freeze_all(&o.args, h)?,
                    kwargs,
                    state,
                    dict_items: self.freeze_pairs(&o.dict_items.entries, h)?,
                    list_items: self.freeze_all(&o.list_items, h)?,
                }))
            }
        })
    }
}
