//! The machine's state: the stack with its marks, the memo, the work spent, and every
//! container made (so that cycles can be broken when it is dropped).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::{Rc, Weak};

use super::freeze::{allowance, too_much_work, Freezer};
use super::globals::is_expected_global;
use super::item::{keys_cost, DictItems, Item, ObjItem};
use super::PersistentLoad;
use crate::pth::value::{Global, Value};

pub(super) struct Vm<'p> {
    pub(super) stack: Vec<Item>,
    pub(super) marks: Vec<usize>,
    pub(super) memo: HashMap<u64, Item>,
    pub(super) persistent: &'p mut dyn PersistentLoad,
    /// Where the pickle started in its input, and how many bytes of it were read before the
    /// current opcode.
    pub(super) start: u64,
    pub(super) read: u64,
    /// Work units spent (see [`WORK_PER_BYTE`](super::WORK_PER_BYTE)).
    pub(super) work: u64,
    /// Every mutable container created, so that cycles among them can be broken at the end.
    tracked: Vec<Tracked>,
    noted: HashSet<String>,
    pub(super) unexpected: &'p mut Vec<String>,
}

enum Tracked {
    Seq(Weak<RefCell<Vec<Item>>>),
    Dict(Weak<RefCell<DictItems>>),
    Object(Weak<RefCell<ObjItem>>),
}

/// Containers that hold themselves (`l.append(l)`) would never be freed; emptying every
/// container the pickle made breaks all such cycles.
impl Drop for Vm<'_> {
    fn drop(&mut self) {
        let mut orphans: Vec<Item> = Vec::new();
        for t in self.tracked.drain(..) {
            match t {
                Tracked::Seq(w) => {
                    if let Some(Ok(mut items)) = w.upgrade().as_ref().map(|rc| rc.try_borrow_mut())
                    {
                        orphans.append(&mut items);
                    }
                }
                Tracked::Dict(w) => {
                    if let Some(Ok(mut c)) = w.upgrade().as_ref().map(|rc| rc.try_borrow_mut()) {
                        c.take_into(&mut orphans);
                    }
                }
                Tracked::Object(w) => {
                    if let Some(Ok(mut c)) = w.upgrade().as_ref().map(|rc| rc.try_borrow_mut()) {
                        c.take_into(&mut orphans);
                    }
                }
            }
        }
    }
}

impl<'p> Vm<'p> {
    pub(super) fn new(
        persistent: &'p mut dyn PersistentLoad,
        start: u64,
        unexpected: &'p mut Vec<String>,
    ) -> Self {
        Vm {
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            persistent,
            start,
            read: 0,
            work: 0,
            tracked: Vec::new(),
            noted: unexpected.iter().cloned().collect(),
            unexpected,
        }
    }

    /// Counts `units` of work against the allowance for the bytes read so far.
    pub(super) fn charge(&mut self, units: u64) -> Result<(), String> {
        self.work = self.work.saturating_add(units);
        if self.work > allowance(self.read) {
            return Err(too_much_work(self.read));
        }
        Ok(())
    }

    /// Runs `f` on a freezer given what is left of the work allowance, and counts what it
    /// spent.
    fn within_allowance<T>(
        &mut self,
        f: impl FnOnce(&mut Freezer<'_>) -> Result<T, String>,
    ) -> Result<T, String> {
        let mut left = allowance(self.read).saturating_sub(self.work);
        let before = left;
        let result = f(&mut Freezer::new(&mut left, self.read));
        self.work = self.work.saturating_add(before - left);
        result
    }

    /// Freezes `item` within the work allowance.
    pub(super) fn freeze(&mut self, item: &Item) -> Result<Value, String> {
        self.within_allowance(|f| f.freeze(item))
    }

    pub(super) fn freeze_all(&mut self, items: &[Item]) -> Result<Vec<Value>, String> {
        self.within_allowance(|f| f.freeze_all(items, &mut 0))
    }

    pub(super) fn note_global(&mut self, g: &Global) {
        if !is_expected_global(g) {
            let path = g.path();
            if self.noted.insert(path.clone()) {
                self.unexpected.push(path);
            }
        }
    }

    pub(super) fn pop(&mut self) -> Result<Item, String> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("the stack is empty above the last MARK".into());
        }
        self.stack
            .pop()
            .ok_or_else(|| "the stack is empty".to_string())
    }

    pub(super) fn top(&self) -> Result<&Item, String> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("the stack is empty above the last MARK".into());
        }
        self.stack
            .last()
            .ok_or_else(|| "the stack is empty".to_string())
    }

    pub(super) fn pop_mark(&mut self) -> Result<Vec<Item>, String> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| "no MARK on the stack".to_string())?;
        Ok(self.stack.split_off(mark))
    }

    pub(super) fn push(&mut self, item: Item) {
        // A container is tracked when first pushed (every new one is); a weak count of zero
        // means it has not been yet.
        match &item {
            Item::List(rc) | Item::Set(rc) if Rc::weak_count(rc) == 0 => {
                self.tracked.push(Tracked::Seq(Rc::downgrade(rc)))
            }
            Item::Dict(rc) if Rc::weak_count(rc) == 0 => {
                self.tracked.push(Tracked::Dict(Rc::downgrade(rc)))
            }
            Item::Object(rc) if Rc::weak_count(rc) == 0 => {
                self.tracked.push(Tracked::Object(Rc::downgrade(rc)))
            }
            _ => {}
        }
        self.stack.push(item);
    }

    pub(super) fn leaf(&mut self, v: Value) {
        if let Value::Global(g) = &v {
            self.note_global(g);
        }
        self.stack.push(Item::Leaf(v));
    }

    pub(super) fn memo_get(&self, index: u64) -> Result<Item, String> {
        self.memo
            .get(&index)
            .cloned()
            .ok_or_else(|| format!("memo entry {index} was never stored"))
    }

    pub(super) fn memo_put(&mut self, index: u64) -> Result<(), String> {
        let top = self.top()?.clone();
        self.memo.insert(index, top);
        Ok(())
    }

    pub(super) fn pop_str(&mut self, what: &str) -> Result<String, String> {
        match &self.pop()? {
            Item::Leaf(Value::Str(s)) => Ok(s.to_string()),
            other => Err(format!(
                "expected a string for {what}, found {}",
                other.describe()
            )),
        }
    }

    pub(super) fn append(&mut self, values: Vec<Item>) -> Result<(), String> {
        match self.top()? {
            Item::List(l) => l.borrow_mut().extend(values),
            Item::Set(s) => s.borrow_mut().extend(values),
            Item::Object(o) => o.borrow_mut().list_items.extend(values),
            other => {
                return Err(format!(
                    "APPEND to {}, which is not a list",
                    other.describe()
                ))
            }
        }
        Ok(())
    }

    pub(super) fn set_items(&mut self, items: Vec<(Item, Item)>) -> Result<(), String> {
        self.charge(keys_cost(&items))?;
        match self.top()? {
            Item::Dict(d) => {
                let mut d = d.borrow_mut();
                for (k, v) in items {
                    d.insert(k, v);
                }
            }
            Item::Object(o) => {
                let mut o = o.borrow_mut();
                for (k, v) in items {
                    o.dict_items.insert(k, v);
                }
            }
            other => {
                return Err(format!(
                    "SETITEM on {}, which is not a dict",
                    other.describe()
                ))
            }
        }
        Ok(())
    }
}
