//! A pickle virtual machine for the protocols PyTorch writes (0 to 5; torch uses 2 by default).
//!
//! It executes the opcodes without Python: classes are never imported. A handful of callables
//! that matter for checkpoints are understood (containers such as `collections.OrderedDict`,
//! torch's tensor rebuild functions, `_codecs.encode` for protocol-2 bytes, numpy scalars);
//! every other call becomes an [`Object`] recording the class, arguments and state. Persistent
//! ids (torch's storages) are handed to a [`PersistentLoad`].
//!
//! Mutable containers are shared while the pickle runs (the memo refers to them, and `SETITEMS`
//! or `BUILD` may fill them after they were memoised), then frozen into immutable [`Value`]s.
//! Every length read from the input is checked against the bytes that remain before anything is
//! allocated, so a corrupt file fails with an error instead of exhausting memory.
//!
//! Hostile files are expected. Nothing recurses on the data's depth except freezing, which stops
//! at [`MAX_DEPTH`] (so no frozen value is deeper); dropping is iterative. Work that a few bytes
//! can trigger over and over (copying a memoised container into call arguments, freezing shared
//! data again) is counted, and a pickle may do at most [`WORK_PER_BYTE`] units per byte read
//! (plus [`WORK_BASE`]), so it fails quickly instead of running for hours or filling memory.
//!
//! Nothing is ever called. Globals outside the set a checkpoint needs ([`is_expected_global`])
//! are reported by [`unpickle_noting`] so that the caller can warn about them.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use super::value::{Global, Object, StorageRef, TensorRef, TorchDType, Value};

/// What went wrong where, inside one pickle.
#[derive(Debug, Clone, PartialEq)]
pub struct PickleError {
    /// Byte offset of the opcode, from the start of the pickle's part (file or zip entry).
    pub position: u64,
    /// The opcode being executed, if one was read.
    pub opcode: Option<u8>,
    pub reason: String,
}

impl PickleError {
    /// `opcode BINPUT (0x71) at byte 12`.
    pub fn location(&self) -> String {
        match self.opcode {
            Some(op) => format!(
                "opcode {} (0x{op:02x}) at byte {}",
                opcode_name(op),
                self.position
            ),
            None => format!("byte {}", self.position),
        }
    }
}

/// Resolves persistent ids (`PERSID` / `BINPERSID`): torch's storages and module sources.
pub trait PersistentLoad {
    fn load(&mut self, pid: Value) -> Result<Value, String>;
}

/// A reader that counts its position and knows how many bytes may still come.
pub struct Input<R> {
    inner: R,
    pos: u64,
    end: u64,
}

impl<R: BufRead> Input<R> {
    /// `start` is the position of `inner` within its part; `end` the part's length.
    pub fn new(inner: R, start: u64, end: u64) -> Self {
        Input {
            inner,
            pos: start,
            end,
        }
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    fn remaining(&self) -> u64 {
        self.end.saturating_sub(self.pos)
    }

    fn bytes(&mut self, n: u64) -> Result<Vec<u8>, String> {
        if n > self.remaining() {
            return Err(format!(
                "needs {n} more bytes but only {} remain (truncated or corrupt)",
                self.remaining()
            ));
        }
        let mut buf = vec![0u8; n as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| format!("read failed: {e}"))?;
        self.pos += n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        if (N as u64) > self.remaining() {
            return Err(format!(
                "needs {N} more bytes but only {} remain (truncated or corrupt)",
                self.remaining()
            ));
        }
        let mut buf = [0u8; N];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| format!("read failed: {e}"))?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    /// A `\n`-terminated line without the newline.
    fn line(&mut self) -> Result<Vec<u8>, String> {
        let mut line = Vec::new();
        loop {
            let b = self
                .u8()
                .map_err(|_| "a text argument has no end of line (truncated)".to_string())?;
            if b == b'\n' {
                break;
            }
            line.push(b);
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Ok(line)
    }
}

mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const FLOAT: u8 = b'F';
    pub const INT: u8 = b'I';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const LONG: u8 = b'L';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const PERSID: u8 = b'P';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const STRING: u8 = b'S';
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const UNICODE: u8 = b'V';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const DICT: u8 = b'd';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const GET: u8 = b'g';
    pub const BINGET: u8 = b'h';
    pub const INST: u8 = b'i';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const EMPTY_LIST: u8 = b']';
    pub const OBJ: u8 = b'o';
    pub const PUT: u8 = b'p';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const BINFLOAT: u8 = b'G';
    pub const PROTO: u8 = 0x80;
    pub const NEWOBJ: u8 = 0x81;
    pub const EXT1: u8 = 0x82;
    pub const EXT2: u8 = 0x83;
    pub const EXT4: u8 = 0x84;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const EMPTY_SET: u8 = 0x8f;
    pub const ADDITEMS: u8 = 0x90;
    pub const FROZENSET: u8 = 0x91;
    pub const NEWOBJ_EX: u8 = 0x92;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
    pub const BYTEARRAY8: u8 = 0x96;
    pub const NEXT_BUFFER: u8 = 0x97;
    pub const READONLY_BUFFER: u8 = 0x98;
}

/// The opcode's name in Python's `pickletools`, or `unknown`.
pub fn opcode_name(code: u8) -> &'static str {
    use op::*;
    match code {
        MARK => "MARK",
        STOP => "STOP",
        POP => "POP",
        POP_MARK => "POP_MARK",
        DUP => "DUP",
        FLOAT => "FLOAT",
        INT => "INT",
        BININT => "BININT",
        BININT1 => "BININT1",
        LONG => "LONG",
        BININT2 => "BININT2",
        NONE => "NONE",
        PERSID => "PERSID",
        BINPERSID => "BINPERSID",
        REDUCE => "REDUCE",
        STRING => "STRING",
        BINSTRING => "BINSTRING",
        SHORT_BINSTRING => "SHORT_BINSTRING",
        UNICODE => "UNICODE",
        BINUNICODE => "BINUNICODE",
        APPEND => "APPEND",
        BUILD => "BUILD",
        GLOBAL => "GLOBAL",
        DICT => "DICT",
        EMPTY_DICT => "EMPTY_DICT",
        APPENDS => "APPENDS",
        GET => "GET",
        BINGET => "BINGET",
        INST => "INST",
        LONG_BINGET => "LONG_BINGET",
        LIST => "LIST",
        EMPTY_LIST => "EMPTY_LIST",
        OBJ => "OBJ",
        PUT => "PUT",
        BINPUT => "BINPUT",
        LONG_BINPUT => "LONG_BINPUT",
        SETITEM => "SETITEM",
        TUPLE => "TUPLE",
        EMPTY_TUPLE => "EMPTY_TUPLE",
        SETITEMS => "SETITEMS",
        BINFLOAT => "BINFLOAT",
        PROTO => "PROTO",
        NEWOBJ => "NEWOBJ",
        EXT1 => "EXT1",
        EXT2 => "EXT2",
        EXT4 => "EXT4",
        TUPLE1 => "TUPLE1",
        TUPLE2 => "TUPLE2",
        TUPLE3 => "TUPLE3",
        NEWTRUE => "NEWTRUE",
        NEWFALSE => "NEWFALSE",
        LONG1 => "LONG1",
        LONG4 => "LONG4",
        BINBYTES => "BINBYTES",
        SHORT_BINBYTES => "SHORT_BINBYTES",
        SHORT_BINUNICODE => "SHORT_BINUNICODE",
        BINUNICODE8 => "BINUNICODE8",
        BINBYTES8 => "BINBYTES8",
        EMPTY_SET => "EMPTY_SET",
        ADDITEMS => "ADDITEMS",
        FROZENSET => "FROZENSET",
        NEWOBJ_EX => "NEWOBJ_EX",
        STACK_GLOBAL => "STACK_GLOBAL",
        MEMOIZE => "MEMOIZE",
        FRAME => "FRAME",
        BYTEARRAY8 => "BYTEARRAY8",
        NEXT_BUFFER => "NEXT_BUFFER",
        READONLY_BUFFER => "READONLY_BUFFER",
        _ => "unknown",
    }
}

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
struct DictItems {
    entries: Vec<(Item, Item)>,
    index: HashMap<ScalarKey, usize>,
}

impl DictItems {
    fn insert(&mut self, key: Item, value: Item) {
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

struct ObjItem {
    class: Global,
    args: Vec<Item>,
    kwargs: Option<Item>,
    state: Option<Item>,
    dict_items: DictItems,
    list_items: Vec<Item>,
}

/// A value while the pickle runs: immutable leaves, and shared containers that later opcodes
/// may still fill.
#[derive(Clone)]
enum Item {
    Leaf(Value),
    Tuple(Rc<Vec<Item>>),
    List(Rc<RefCell<Vec<Item>>>),
    Set(Rc<RefCell<Vec<Item>>>),
    Dict(Rc<RefCell<DictItems>>),
    Object(Rc<RefCell<ObjItem>>),
}

impl Item {
    fn describe(&self) -> String {
        match self {
            Item::Leaf(v) => v.describe(),
            Item::Tuple(t) => format!("tuple of {}", t.len()),
            Item::List(l) => format!("list of {}", l.borrow().len()),
            Item::Set(s) => format!("set of {}", s.borrow().len()),
            Item::Dict(d) => format!("dict with {} entries", d.borrow().entries.len()),
            Item::Object(o) => format!("{} object", o.borrow().class.path()),
        }
    }

    fn new_dict(entries: Vec<(Item, Item)>) -> Item {
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
    fn len(&self) -> u64 {
        (match self {
            Item::Leaf(_) => 0,
            Item::Tuple(t) => t.len(),
            Item::List(l) | Item::Set(l) => l.borrow().len(),
            Item::Dict(d) => d.borrow().entries.len(),
            Item::Object(o) => o.borrow().args.len(),
        }) as u64
    }

    /// Work units charged for using this as a dict key (hashing and comparing it).
    fn key_cost(&self) -> u64 {
        match self {
            Item::Leaf(Value::Str(s)) => 1 + s.len() as u64 / 16,
            Item::Leaf(Value::Bytes(b)) => 1 + b.len() as u64 / 16,
            _ => 1,
        }
    }
}

impl DictItems {
    fn take_into(&mut self, out: &mut Vec<Item>) {
        self.index.clear();
        for (k, v) in self.entries.drain(..) {
            out.push(k);
            out.push(v);
        }
    }
}

impl ObjItem {
    fn take_into(&mut self, out: &mut Vec<Item>) {
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

/// Deepest container nesting accepted when freezing (Python's own limit is about 1000). Shared
/// containers count at every place they appear, so no frozen [`Value`] is deeper.
pub const MAX_DEPTH: usize = 1000;

/// Work a pickle may do per byte it has read: one unit is about one item copied or frozen.
/// Real checkpoints need about one per byte.
pub const WORK_PER_BYTE: u64 = 8;
/// Work any pickle may do, however short.
pub const WORK_BASE: u64 = 1 << 20;

fn too_much_work(read: u64) -> String {
    format!(
        "the pickle asks for more than {} units of work (copying or walking shared data over \
         and over) for the {read} bytes read so far; refused as hostile or corrupt",
        allowance(read)
    )
}

fn allowance(read: u64) -> u64 {
    WORK_BASE.saturating_add(WORK_PER_BYTE.saturating_mul(read))
}

/// Turns shared containers into immutable values, preserving sharing and cutting cycles.
struct Freezer<'b> {
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
    fn new(budget: &'b mut u64, read: u64) -> Self {
        Freezer {
            done: HashMap::new(),
            active: HashSet::new(),
            depth: 0,
            budget,
            read,
        }
    }

    fn freeze(&mut self, item: &Item) -> Result<Value, String> {
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

    fn freeze_all(&mut self, items: &[Item], height: &mut usize) -> Result<Vec<Value>, String> {
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

/// Runs one pickle (up to its `STOP`) and returns the object it describes.
pub fn unpickle<R: BufRead>(
    input: &mut Input<R>,
    persistent: &mut dyn PersistentLoad,
) -> Result<Value, PickleError> {
    unpickle_noting(input, persistent, &mut Vec::new())
}

/// [`unpickle`], adding to `unexpected` (`module.name`, each once) the globals the pickle names
/// that [`is_expected_global`] does not know. They are not called either way.
pub fn unpickle_noting<R: BufRead>(
    input: &mut Input<R>,
    persistent: &mut dyn PersistentLoad,
    unexpected: &mut Vec<String>,
) -> Result<Value, PickleError> {
    let mut vm = Vm {
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        persistent,
        start: input.position(),
        read: 0,
        work: 0,
        tracked: Vec::new(),
        noted: unexpected.iter().cloned().collect(),
        unexpected,
    };
    loop {
        let position = input.position();
        vm.read = position.saturating_sub(vm.start);
        let code = match input.u8() {
            Ok(c) => c,
            Err(_) => {
                return Err(PickleError {
                    position,
                    opcode: None,
                    reason: "the pickle ends without a STOP opcode (truncated)".into(),
                })
            }
        };
        match vm.step(code, input) {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(reason) => {
                return Err(PickleError {
                    position,
                    opcode: Some(code),
                    reason,
                })
            }
        }
    }
}

struct Vm<'p> {
    stack: Vec<Item>,
    marks: Vec<usize>,
    memo: HashMap<u64, Item>,
    persistent: &'p mut dyn PersistentLoad,
    /// Where the pickle started in its input, and how many bytes of it were read before the
    /// current opcode.
    start: u64,
    read: u64,
    /// Work units spent (see [`WORK_PER_BYTE`]).
    work: u64,
    /// Every mutable container created, so that cycles among them can be broken at the end.
    tracked: Vec<Tracked>,
    noted: HashSet<String>,
    unexpected: &'p mut Vec<String>,
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

impl Vm<'_> {
    /// Counts `units` of work against the allowance for the bytes read so far.
    fn charge(&mut self, units: u64) -> Result<(), String> {
        self.work = self.work.saturating_add(units);
        if self.work > allowance(self.read) {
            return Err(too_much_work(self.read));
        }
        Ok(())
    }

    /// Freezes `item` within the work allowance.
    fn freeze(&mut self, item: &Item) -> Result<Value, String> {
        let mut left = allowance(self.read).saturating_sub(self.work);
        let before = left;
        let result = Freezer::new(&mut left, self.read).freeze(item);
        self.work = self.work.saturating_add(before - left);
        result
    }

    fn freeze_all(&mut self, items: &[Item]) -> Result<Vec<Value>, String> {
        let mut left = allowance(self.read).saturating_sub(self.work);
        let before = left;
        let result = {
            let mut f = Freezer::new(&mut left, self.read);
            let mut height = 0;
            f.freeze_all(items, &mut height)
        };
        self.work = self.work.saturating_add(before - left);
        result
    }

    fn note_global(&mut self, g: &Global) {
        if !is_expected_global(g) {
            let path = g.path();
            if self.noted.insert(path.clone()) {
                self.unexpected.push(path);
            }
        }
    }

    fn pop(&mut self) -> Result<Item, String> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("the stack is empty above the last MARK".into());
        }
        self.stack
            .pop()
            .ok_or_else(|| "the stack is empty".to_string())
    }

    fn top(&self) -> Result<&Item, String> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("the stack is empty above the last MARK".into());
        }
        self.stack
            .last()
            .ok_or_else(|| "the stack is empty".to_string())
    }

    fn pop_mark(&mut self) -> Result<Vec<Item>, String> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| "no MARK on the stack".to_string())?;
        Ok(self.stack.split_off(mark))
    }

    fn push(&mut self, item: Item) {
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

    fn leaf(&mut self, v: Value) {
        if let Value::Global(g) = &v {
            self.note_global(g);
        }
        self.stack.push(Item::Leaf(v));
    }

    fn memo_get(&self, index: u64) -> Result<Item, String> {
        self.memo
            .get(&index)
            .cloned()
            .ok_or_else(|| format!("memo entry {index} was never stored"))
    }

    fn memo_put(&mut self, index: u64) -> Result<(), String> {
        let top = self.top()?.clone();
        self.memo.insert(index, top);
        Ok(())
    }

    fn pop_str(&mut self, what: &str) -> Result<String, String> {
        match &self.pop()? {
            Item::Leaf(Value::Str(s)) => Ok(s.to_string()),
            other => Err(format!(
                "expected a string for {what}, found {}",
                other.describe()
            )),
        }
    }

    fn step<R: BufRead>(
        &mut self,
        code: u8,
        input: &mut Input<R>,
    ) -> Result<Option<Value>, String> {
        use op::*;
        match code {
            PROTO => {
                let version = input.u8()?;
                if version > 5 {
                    return Err(format!("pickle protocol {version} is newer than 5"));
                }
            }
            FRAME => {
                input.array::<8>()?;
            }
            STOP => {
                let top = self.pop()?;
                return self.freeze(&top).map(Some);
            }
            MARK => self.marks.push(self.stack.len()),
            POP => {
                if self.marks.last().is_some_and(|&m| m == self.stack.len()) {
                    self.marks.pop();
                } else {
                    self.pop()?;
                }
            }
            POP_MARK => {
                self.pop_mark()?;
            }
            DUP => {
                let top = self.top()?.clone();
                self.push(top);
            }
            NONE => self.leaf(Value::None),
            NEWTRUE => self.leaf(Value::Bool(true)),
            NEWFALSE => self.leaf(Value::Bool(false)),
            INT => {
                let line = text(input.line()?)?;
                let v = match line.as_str() {
                    "01" => Value::Bool(true),
                    "00" => Value::Bool(false),
                    s => Value::Int(parse_int(s)?),
                };
                self.leaf(v);
            }
            BININT => self.leaf(Value::Int(i32::from_le_bytes(input.array()?) as i128)),
            BININT1 => self.leaf(Value::Int(input.u8()? as i128)),
            BININT2 => self.leaf(Value::Int(u16::from_le_bytes(input.array()?) as i128)),
            LONG => {
                let line = text(input.line()?)?;
                let v = parse_int(line.trim_end_matches('L'))?;
                self.leaf(Value::Int(v));
            }
            LONG1 => {
                let n = input.u8()? as u64;
                let bytes = input.bytes(n)?;
                self.leaf(long_from_le(bytes));
            }
            LONG4 => {
                let n = i32::from_le_bytes(input.array()?);
                if n < 0 {
                    return Err(format!("negative length {n}"));
                }
                let bytes = input.bytes(n as u64)?;
                self.leaf(long_from_le(bytes));
            }
            FLOAT => {
                let line = text(input.line()?)?;
                let v = line
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| format!("bad float {line:?}"))?;
                self.leaf(Value::Float(v));
            }
            BINFLOAT => self.leaf(Value::Float(f64::from_be_bytes(input.array()?))),
            STRING => {
                let line = input.line()?;
                let bytes = unquote_python_string(&line)?;
                self.leaf(str_or_bytes(bytes));
            }
            BINSTRING => {
                let n = i32::from_le_bytes(input.array()?);
                if n < 0 {
                    return Err(format!("negative length {n}"));
                }
                let bytes = input.bytes(n as u64)?;
                self.leaf(str_or_bytes(bytes));
            }
            SHORT_BINSTRING => {
                let n = input.u8()? as u64;
                let bytes = input.bytes(n)?;
                self.leaf(str_or_bytes(bytes));
            }
            UNICODE => {
                let line = input.line()?;
                self.leaf(Value::Str(raw_unicode_escape(&line)?.into()));
            }
            BINUNICODE => {
                let n = u32::from_le_bytes(input.array()?) as u64;
                let s = utf8(input.bytes(n)?)?;
                self.leaf(Value::Str(s.into()));
            }
            SHORT_BINUNICODE => {
                let n = input.u8()? as u64;
                let s = utf8(input.bytes(n)?)?;
                self.leaf(Value::Str(s.into()));
            }
            BINUNICODE8 => {
                let n = u64::from_le_bytes(input.array()?);
                let s = utf8(input.bytes(n)?)?;
                self.leaf(Value::Str(s.into()));
            }
            BINBYTES => {
                let n = u32::from_le_bytes(input.array()?) as u64;
                let b = input.bytes(n)?;
                self.leaf(Value::Bytes(b.into()));
            }
            SHORT_BINBYTES => {
                let n = input.u8()? as u64;
                let b = input.bytes(n)?;
                self.leaf(Value::Bytes(b.into()));
            }
            BINBYTES8 | BYTEARRAY8 => {
                let n = u64::from_le_bytes(input.array()?);
                let b = input.bytes(n)?;
                self.leaf(Value::Bytes(b.into()));
            }
            NEXT_BUFFER | READONLY_BUFFER => {
                return Err(
                    "out-of-band buffers (pickle protocol 5 buffer_callback) are not supported"
                        .into(),
                )
            }
            EMPTY_TUPLE => self.push(Item::Tuple(Rc::new(Vec::new()))),
            TUPLE => {
                let items = self.pop_mark()?;
                self.push(Item::Tuple(Rc::new(items)));
            }
            TUPLE1 | TUPLE2 | TUPLE3 => {
                let n = (code - TUPLE1 + 1) as usize;
                if self.stack.len() < n
                    || self.marks.last().is_some_and(|&m| m > self.stack.len() - n)
                {
                    return Err(format!("needs {n} items on the stack"));
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push(Item::Tuple(Rc::new(items)));
            }
            EMPTY_LIST => self.push(Item::List(Rc::new(RefCell::new(Vec::new())))),
            LIST => {
                let items = self.pop_mark()?;
                self.push(Item::List(Rc::new(RefCell::new(items))));
            }
            APPEND => {
                let value = self.pop()?;
                self.append(vec![value])?;
            }
            APPENDS => {
                let values = self.pop_mark()?;
                self.append(values)?;
            }
            EMPTY_DICT => self.push(Item::new_dict(Vec::new())),
            DICT => {
                let items = pairs(self.pop_mark()?)?;
                self.charge(keys_cost(&items))?;
                self.push(Item::new_dict(items));
            }
            SETITEM => {
                let value = self.pop()?;
                let key = self.pop()?;
                self.set_items(vec![(key, value)])?;
            }
            SETITEMS => {
                let items = self.pop_mark()?;
                self.set_items(pairs(items)?)?;
            }
            EMPTY_SET => self.push(Item::Set(Rc::new(RefCell::new(Vec::new())))),
            ADDITEMS => {
                let items = self.pop_mark()?;
                match self.top()? {
                    Item::Set(s) => s.borrow_mut().extend(items),
                    other => {
                        return Err(format!(
                            "ADDITEMS on {}, which is not a set",
                            other.describe()
                        ))
                    }
                }
            }
            FROZENSET => {
                let items = self.pop_mark()?;
                self.push(Item::Set(Rc::new(RefCell::new(items))));
            }
            GLOBAL => {
                let module = text(input.line()?)?;
                let name = text(input.line()?)?;
                let g = global(module, name);
                self.leaf(g);
            }
            STACK_GLOBAL => {
                let name = self.pop_str("STACK_GLOBAL's name")?;
                let module = self.pop_str("STACK_GLOBAL's module")?;
                let g = global(module, name);
                self.leaf(g);
            }
            REDUCE => {
                let args = self.pop()?;
                let func = self.pop()?;
                self.call_with_tuple("REDUCE", func, args, None)?;
            }
            NEWOBJ => {
                let args = self.pop()?;
                let class = self.pop()?;
                self.call_with_tuple("NEWOBJ", class, args, None)?;
            }
            NEWOBJ_EX => {
                let kwargs = self.pop()?;
                let args = self.pop()?;
                let class = self.pop()?;
                self.call_with_tuple("NEWOBJ_EX", class, args, Some(kwargs))?;
            }
            INST => {
                let module = text(input.line()?)?;
                let name = text(input.line()?)?;
                let args = self.pop_mark()?;
                let g = global(module, name);
                if let Value::Global(g) = &g {
                    self.note_global(g);
                }
                let result = self.call(Item::Leaf(g), args, None)?;
                self.push(result);
            }
            OBJ => {
                let mut items = self.pop_mark()?;
                if items.is_empty() {
                    return Err("OBJ without a class".into());
                }
                let class = items.remove(0);
                let result = self.call(class, items, None)?;
                self.push(result);
            }
            BUILD => {
                let state = self.pop()?;
                match self.top()? {
                    Item::Object(o) => o.borrow_mut().state = Some(state),
                    // OrderedDict's `_metadata`, a Parameter's Python attributes, ...: not needed.
                    Item::Dict(_) | Item::Leaf(_) | Item::List(_) | Item::Set(_) => {}
                    Item::Tuple(_) => return Err("BUILD on a tuple".into()),
                }
            }
            PUT => {
                let index = parse_int(&text(input.line()?)?)?;
                self.memo_put(
                    u64::try_from(index).map_err(|_| format!("bad memo index {index}"))?,
                )?;
            }
            BINPUT => {
                let i = input.u8()? as u64;
                self.memo_put(i)?;
            }
            LONG_BINPUT => {
                let i = u32::from_le_bytes(input.array()?) as u64;
                self.memo_put(i)?;
            }
            MEMOIZE => {
                let i = self.memo.len() as u64;
                self.memo_put(i)?;
            }
            GET => {
                let index = parse_int(&text(input.line()?)?)?;
                let item = self.memo_get(
                    u64::try_from(index).map_err(|_| format!("bad memo index {index}"))?,
                )?;
                self.push(item);
            }
            BINGET => {
                let i = input.u8()? as u64;
                let item = self.memo_get(i)?;
                self.push(item);
            }
            LONG_BINGET => {
                let i = u32::from_le_bytes(input.array()?) as u64;
                let item = self.memo_get(i)?;
                self.push(item);
            }
            PERSID => {
                let id = text(input.line()?)?;
                let v = self.persistent.load(Value::Str(id.into()))?;
                self.leaf(v);
            }
            BINPERSID => {
                let pid = self.pop()?;
                let pid = self.freeze(&pid)?;
                let v = self.persistent.load(pid)?;
                self.leaf(v);
            }
            EXT1 | EXT2 | EXT4 => {
                return Err(
                    "extension registry codes (copyreg extensions) are not supported".into(),
                )
            }
            other => {
                return Err(format!(
                    "unknown opcode 0x{other:02x}: not a pickle, or corrupt"
                ))
            }
        }
        Ok(None)
    }

    fn append(&mut self, values: Vec<Item>) -> Result<(), String> {
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

    fn set_items(&mut self, items: Vec<(Item, Item)>) -> Result<(), String> {
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

    /// `REDUCE`, `NEWOBJ` and `NEWOBJ_EX`: calls `func` with the items of the tuple `args`.
    fn call_with_tuple(
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
    fn call(&mut self, func: Item, args: Vec<Item>, kwargs: Option<Item>) -> Result<Item, String> {
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
                    None => Vec::new(),
                    Some(Item::Dict(d)) => d.borrow().entries.clone(),
                    Some(Item::List(l)) => pairs_from_seq(&l.borrow())?,
                    Some(Item::Tuple(t)) => pairs_from_seq(t)?,
                    Some(other) => return Err(format!("{} of {}", func.path(), other.describe())),
                };
                self.charge(keys_cost(&entries))?;
                return Ok(Item::new_dict(entries));
            }
            // defaultdict(factory): the factory does not matter once the items are stored.
            ("collections", "defaultdict") => return Ok(Item::new_dict(Vec::new())),
            ("builtins", "set") | ("builtins", "frozenset") | ("builtins", "list") => {
                let items = match args.first() {
                    None => Vec::new(),
                    Some(Item::List(l)) | Some(Item::Set(l)) => l.borrow().clone(),
                    Some(Item::Tuple(t)) => t.as_ref().clone(),
                    Some(other) => return Err(format!("{} of {}", func.path(), other.describe())),
                };
                return Ok(if name == "list" {
                    Item::List(Rc::new(RefCell::new(items)))
                } else {
                    Item::Set(Rc::new(RefCell::new(items)))
                });
            }
            ("builtins", "tuple") | ("torch", "Size") => {
                let items = match args.first() {
                    None => Vec::new(),
                    Some(Item::List(l)) => l.borrow().clone(),
                    Some(Item::Tuple(t)) => t.as_ref().clone(),
                    Some(other) => return Err(format!("{} of {}", func.path(), other.describe())),
                };
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

fn keys_cost(pairs: &[(Item, Item)]) -> u64 {
    pairs.iter().map(|(k, _)| k.key_cost()).sum()
}

fn object_item(class: Global, args: Vec<Item>, kwargs: Option<Item>) -> Item {
    Item::Object(Rc::new(RefCell::new(ObjItem {
        class,
        args,
        kwargs,
        state: None,
        dict_items: DictItems::default(),
        list_items: Vec::new(),
    })))
}

/// Python 2 names that Python 3's unpickler maps (`fix_imports`).
fn global(module: String, name: String) -> Value {
    let module = match module.as_str() {
        "__builtin__" => "builtins".to_string(),
        "copy_reg" => "copyreg".to_string(),
        _ => module,
    };
    Value::Global(Arc::new(Global { module, name }))
}

fn pairs(items: Vec<Item>) -> Result<Vec<(Item, Item)>, String> {
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

fn pairs_from_seq(items: &[Item]) -> Result<Vec<(Item, Item)>, String> {
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

/// Whether a global is one a PyTorch checkpoint legitimately names. The rule is an allow-list:
/// - what this reader interprets: `collections.OrderedDict`/`defaultdict`, the builtin
///   containers, `copyreg._reconstructor`, `_codecs.encode`, torch's `_rebuild_*` functions
///   (`torch._utils`, `torch._tensor`), `torch.nn.parameter.Parameter`, numpy scalars;
/// - data types: torch storage classes (`torch.FloatStorage`, `torch.cuda.HalfStorage`,
///   `torch.storage.UntypedStorage`, ...), torch dtypes (`torch.float32`), `torch.Size`,
///   `torch.device`, `numpy.dtype`/`ndarray`/`_reconstruct`, `argparse.Namespace` (training
///   scripts save their arguments), and the builtin scalar types used as `copyreg` bases;
/// - classes of whole pickled models and optimisers: anything under `torch.nn.`,
///   `torch.optim.`, `torchvision.` and the tutorial's `models` module.
///
/// Everything else is unexpected: `os.system`, `posix.*`, `subprocess.*`, `builtins.eval`,
/// `exec`, `getattr`, `__import__`, `open`, `sys.*`, `shutil.*`, `importlib.*`, `pickle.*`,
/// `runpy.*`, other torch functions (`torch.load`, `torch.hub.load`), and classes of the user's
/// own modules (`__main__.Net`), which a file may hold legitimately but which would run code
/// if Python loaded the file. Nothing is called either way.
pub fn is_expected_global(g: &Global) -> bool {
    let (module, name) = (g.module.as_str(), g.name.as_str());
    let under = |prefix: &str| {
        module == prefix
            || module
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('.'))
    };
    if under("torch.nn") || under("torch.optim") || under("torchvision") || under("models") {
        return true;
    }
    match module {
        "collections" => matches!(name, "OrderedDict" | "defaultdict"),
        "builtins" => matches!(
            name,
            "dict"
                | "set"
                | "frozenset"
                | "list"
                | "tuple"
                | "object"
                | "int"
                | "float"
                | "bool"
                | "str"
                | "bytes"
                | "bytearray"
                | "complex"
        ),
        "copyreg" => name == "_reconstructor",
        "_codecs" => name == "encode",
        "argparse" => name == "Namespace",
        "numpy" => matches!(name, "dtype" | "ndarray"),
        "numpy.core.multiarray" | "numpy._core.multiarray" => {
            matches!(name, "scalar" | "_reconstruct")
        }
        "torch._utils" => name.starts_with("_rebuild_"),
        "torch._tensor" | "torch.tensor" => name.starts_with("_rebuild_from_type"),
        "torch" | "torch.cuda" | "torch.storage" => {
            name.ends_with("Storage")
                || (module == "torch"
                    && (matches!(name, "Size" | "device")
                        || TorchDType::from_dtype_name(name).is_some()))
        }
        _ => false,
    }
}

/// Functions whose result is an immutable value computed from their arguments.
fn is_value_function(g: &Global) -> bool {
    matches!(
        (g.module.as_str(), g.name.as_str()),
        ("torch._utils", "_rebuild_tensor")
            | ("torch._utils", "_rebuild_tensor_v2")
            | ("torch._utils", "_rebuild_tensor_v3")
            | ("torch._utils", "_rebuild_parameter")
            | ("torch._utils", "_rebuild_parameter_with_state")
            | ("torch.nn.parameter", "Parameter")
            | ("torch._tensor", "_rebuild_from_type_v2")
            | ("torch._tensor", "_rebuild_from_type")
            | ("torch.tensor", "_rebuild_from_type")
            | ("_codecs", "encode")
            | ("numpy.core.multiarray", "scalar")
            | ("numpy._core.multiarray", "scalar")
    )
}

/// Applies a value function; `Ok(None)` where the arguments are not of a form it understands
/// (the call then becomes a generic object).
fn call_value(func: &Global, args: &[Value]) -> Result<Option<Value>, String> {
    static NONE: Value = Value::None;
    let arg = |i: usize| args.get(i).unwrap_or(&NONE);
    let need = |n: usize| {
        if args.len() < n {
            Err(format!(
                "{} needs {n} arguments, got {}",
                func.path(),
                args.len()
            ))
        } else {
            Ok(())
        }
    };
    let name = func.name.as_str();
    match name {
        "_rebuild_tensor" => {
            need(4)?;
            Ok(Some(rebuild_tensor(
                func,
                arg(0),
                arg(1),
                arg(2),
                arg(3),
                None,
                false,
            )?))
        }
        "_rebuild_tensor_v2" => {
            need(4)?;
            let requires_grad = arg(4).as_bool().unwrap_or(false);
            Ok(Some(rebuild_tensor(
                func,
                arg(0),
                arg(1),
                arg(2),
                arg(3),
                None,
                requires_grad,
            )?))
        }
        "_rebuild_tensor_v3" => {
            need(7)?;
            let dtype = match arg(6) {
                Value::Global(g) => TorchDType::from_dtype_name(&g.name)
                    .ok_or_else(|| format!("{}: unsupported dtype {}", func.path(), g.path()))?,
                other => return Err(format!("{}: dtype is {}", func.path(), other.describe())),
            };
            let requires_grad = arg(4).as_bool().unwrap_or(false);
            Ok(Some(rebuild_tensor(
                func,
                arg(0),
                arg(1),
                arg(2),
                arg(3),
                Some(dtype),
                requires_grad,
            )?))
        }
        "_rebuild_parameter" | "_rebuild_parameter_with_state" | "Parameter" => {
            need(1)?;
            match arg(0) {
                Value::Tensor(t) => {
                    let mut t = t.as_ref().clone();
                    t.parameter = true;
                    if let Some(rg) = arg(1).as_bool() {
                        t.requires_grad = rg;
                    }
                    Ok(Some(Value::Tensor(Arc::new(t))))
                }
                other => Err(format!(
                    "{}: expected a tensor, found {}",
                    func.path(),
                    other.describe()
                )),
            }
        }
        "_rebuild_from_type_v2" | "_rebuild_from_type" => {
            need(3)?;
            let inner = match arg(0) {
                // Not itself again: that would recurse once per level of the arguments.
                Value::Global(g)
                    if is_value_function(g) && !g.name.starts_with("_rebuild_from_type") =>
                {
                    g.clone()
                }
                other => {
                    return Err(format!(
                        "{}: cannot rebuild with {}",
                        func.path(),
                        other.describe()
                    ))
                }
            };
            let inner_args = arg(2)
                .as_seq()
                .ok_or_else(|| format!("{}: arguments are {}", func.path(), arg(2).describe()))?;
            call_value(&inner, inner_args)
        }
        "encode" => match (arg(0), arg(1).as_str()) {
            // Protocol 2 writes Python 3 `bytes` as `_codecs.encode(text, "latin1")`.
            (Value::Str(s), Some("latin1" | "latin-1" | "iso-8859-1")) => {
                let mut out = Vec::with_capacity(s.len());
                for c in s.chars() {
                    let c = u32::from(c);
                    if c > 255 {
                        return Err(format!(
                            "_codecs.encode: character U+{c:04X} is not latin-1"
                        ));
                    }
                    out.push(c as u8);
                }
                Ok(Some(Value::Bytes(out.into())))
            }
            (Value::Str(s), Some("utf-8" | "utf8")) => {
                Ok(Some(Value::Bytes(s.as_bytes().to_vec().into())))
            }
            _ => Ok(None),
        },
        "scalar" => Ok(numpy_scalar(arg(0), arg(1))),
        _ => Ok(None),
    }
}

fn to_usize(v: &Value, what: &str) -> Result<usize, String> {
    match v.as_int() {
        Some(i) if i >= 0 && i <= usize::MAX as i128 => Ok(i as usize),
        _ => Err(format!(
            "{what} is {}, not a non-negative integer",
            v.describe()
        )),
    }
}

fn usize_list(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    let items = match v {
        Value::Object(o) if o.class.is("torch", "Size") => {
            o.args.first().and_then(Value::as_seq).unwrap_or(&[])
        }
        other => other
            .as_seq()
            .ok_or_else(|| format!("{what} is {}, not a tuple", other.describe()))?,
    };
    items.iter().map(|i| to_usize(i, what)).collect()
}

fn rebuild_tensor(
    func: &Global,
    storage: &Value,
    offset: &Value,
    size: &Value,
    stride: &Value,
    dtype: Option<TorchDType>,
    requires_grad: bool,
) -> Result<Value, String> {
    let storage: &StorageRef = match storage {
        Value::Storage(s) => s,
        other => {
            return Err(format!(
                "{}: expected a storage, found {}",
                func.path(),
                other.describe()
            ))
        }
    };
    let dtype = match (dtype, storage.dtype) {
        (Some(d), _) | (None, Some(d)) => d,
        (None, None) => {
            return Err(format!(
                "{}: untyped storage {} and no dtype",
                func.path(),
                storage.key
            ))
        }
    };
    let offset = to_usize(offset, "storage offset")? as u64;
    let shape = usize_list(size, "size")?;
    let stride = usize_list(stride, "stride")?;
    if shape.len() != stride.len() {
        return Err(format!(
            "{}: size {shape:?} and stride {stride:?} differ in rank",
            func.path()
        ));
    }
    if shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .is_none()
    {
        return Err(format!("{}: size {shape:?} overflows", func.path()));
    }
    Ok(Value::Tensor(Arc::new(TensorRef {
        storage: storage.clone(),
        dtype,
        offset,
        shape,
        stride,
        requires_grad,
        parameter: false,
    })))
}

/// `numpy.core.multiarray.scalar(dtype, bytes)`: numpy floats and ints stored in checkpoints
/// (metrics computed with numpy). `None` for dtypes it does not know.
fn numpy_scalar(dtype: &Value, data: &Value) -> Option<Value> {
    let dtype = dtype.as_object()?;
    let code = dtype.args.first()?.as_str()?;
    let bytes: &[u8] = match data {
        Value::Bytes(b) => b,
        _ => return None,
    };
    let big = match dtype.state.as_ref().and_then(Value::as_seq) {
        Some(state) => state.get(1).and_then(Value::as_str) == Some(">"),
        None => false,
    };
    let mut b = bytes.to_vec();
    if big {
        b.reverse();
    }
    Some(match (code, b.len()) {
        ("f8", 8) => Value::Float(f64::from_le_bytes(b.try_into().ok()?)),
        ("f4", 4) => Value::Float(f32::from_le_bytes(b.try_into().ok()?) as f64),
        ("f2", 2) => Value::Float(half::f16::from_le_bytes(b.try_into().ok()?).to_f64()),
        ("i8", 8) => Value::Int(i64::from_le_bytes(b.try_into().ok()?) as i128),
        ("i4", 4) => Value::Int(i32::from_le_bytes(b.try_into().ok()?) as i128),
        ("i2", 2) => Value::Int(i16::from_le_bytes(b.try_into().ok()?) as i128),
        ("i1", 1) => Value::Int(b[0] as i8 as i128),
        ("u8", 8) => Value::Int(u64::from_le_bytes(b.try_into().ok()?) as i128),
        ("u4", 4) => Value::Int(u32::from_le_bytes(b.try_into().ok()?) as i128),
        ("u2", 2) => Value::Int(u16::from_le_bytes(b.try_into().ok()?) as i128),
        ("u1", 1) => Value::Int(b[0] as i128),
        ("b1", 1) => Value::Bool(b[0] != 0),
        _ => return None,
    })
}

fn text(bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|e| format!("text argument is not UTF-8: {e}"))
}

fn utf8(bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|e| format!("string is not valid UTF-8: {e}"))
}

/// Python 2 `str` (bytes) as text where it is UTF-8, as torch loads them (`encoding="utf-8"`).
fn str_or_bytes(bytes: Vec<u8>) -> Value {
    match String::from_utf8(bytes) {
        Ok(s) => Value::Str(s.into()),
        Err(e) => Value::Bytes(e.into_bytes().into()),
    }
}

fn parse_int(s: &str) -> Result<i128, String> {
    s.trim()
        .parse::<i128>()
        .map_err(|_| format!("bad integer {s:?}"))
}

/// A little-endian two's complement integer (`LONG1`, `LONG4`).
fn long_from_le(bytes: Vec<u8>) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    if bytes.len() > 16 {
        return Value::BigInt(bytes.into());
    }
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    let mut buf = if negative { [0xffu8; 16] } else { [0u8; 16] };
    buf[..bytes.len()].copy_from_slice(&bytes);
    Value::Int(i128::from_le_bytes(buf))
}

/// The body of a protocol-0 `STRING`: a quoted Python 2 string literal with escapes.
fn unquote_python_string(line: &[u8]) -> Result<Vec<u8>, String> {
    let n = line.len();
    if n < 2 || line[0] != line[n - 1] || !matches!(line[0], b'\'' | b'"') {
        return Err("STRING argument is not quoted".into());
    }
    let body = &line[1..n - 1];
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let e = *body.get(i).ok_or("STRING ends with a backslash")?;
        i += 1;
        match e {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'0'..=b'7' => {
                let mut v = (e - b'0') as u32;
                for _ in 0..2 {
                    match body.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + (d - b'0') as u32;
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' => {
                let hex = body.get(i..i + 2).ok_or("bad \\x escape")?;
                let v =
                    u8::from_str_radix(std::str::from_utf8(hex).map_err(|_| "bad \\x escape")?, 16)
                        .map_err(|_| "bad \\x escape")?;
                out.push(v);
                i += 2;
            }
            b'\\' | b'\'' | b'"' => out.push(e),
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'v' => out.push(11),
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    Ok(out)
}

/// Python's `raw-unicode-escape` decoding (protocol-0 `UNICODE`): `\uXXXX` and `\UXXXXXXXX`
/// escapes, every other byte is a Latin-1 character.
fn raw_unicode_escape(line: &[u8]) -> Result<String, String> {
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        let c = line[i];
        if c == b'\\' && matches!(line.get(i + 1), Some(b'u') | Some(b'U')) {
            let width = if line[i + 1] == b'u' { 4 } else { 8 };
            let hex = line
                .get(i + 2..i + 2 + width)
                .ok_or("bad \\u escape in UNICODE")?;
            let code =
                u32::from_str_radix(std::str::from_utf8(hex).map_err(|_| "bad \\u escape")?, 16)
                    .map_err(|_| "bad \\u escape in UNICODE")?;
            out.push(char::from_u32(code).ok_or_else(|| format!("invalid character U+{code:X}"))?);
            i += 2 + width;
        } else {
            out.push(c as char);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoPersistent;

    impl PersistentLoad for NoPersistent {
        fn load(&mut self, pid: Value) -> Result<Value, String> {
            Err(format!("unexpected persistent id {}", pid.describe()))
        }
    }

    fn run(bytes: &[u8]) -> Result<Value, PickleError> {
        let mut input = Input::new(bytes, 0, bytes.len() as u64);
        unpickle(&mut input, &mut NoPersistent)
    }

    #[test]
    fn protocol_2_dict_with_memo_and_long() {
        // pickle.dumps({'a': [1, 2**70, -1.5], 'b': (True, None)}, protocol=2)
        let bytes = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01\x8a\t\x00\x00\x00\x00\x00\x00\x00\x00@G\xbf\xf8\x00\x00\x00\x00\x00\x00eX\x01\x00\x00\x00bq\x03\x88N\x86q\x04u.";
        let v = run(bytes).unwrap();
        let a = v.get("a").unwrap().as_seq().unwrap();
        assert_eq!(a[0], Value::Int(1));
        assert_eq!(a[1], Value::Int(1i128 << 70));
        assert_eq!(a[2], Value::Float(-1.5));
        let b = v.get("b").unwrap().as_seq().unwrap();
        assert_eq!(b, &[Value::Bool(true), Value::None]);
    }

    #[test]
    fn protocol_0_text_opcodes() {
        // pickle.dumps({'k': ('s\n', 3, 2.5, u'\u00e9')}, protocol=0)
        let bytes = b"(dp0\nVk\np1\n(Vs\\u000a\np2\nI3\nF2.5\nV\xe9\np3\ntp4\ns.";
        let v = run(bytes).unwrap();
        let t = v.get("k").unwrap().as_seq().unwrap();
        assert_eq!(t[0], Value::Str("s\n".into()));
        assert_eq!(t[1], Value::Int(3));
        assert_eq!(t[2], Value::Float(2.5));
        assert_eq!(t[3], Value::Str("\u{e9}".into()));
        // STRING with escapes (Python 2 str)
        let v = run(b"S'a\\'b\\x41\\n'\np0\n.").unwrap();
        assert_eq!(v, Value::Str("a'bA\n".into()));
    }

    #[test]
    fn unknown_class_becomes_object_with_state() {
        // class C: pass; c = C(); c.x = 5; pickle.dumps(c, protocol=2) (module __main__)
        let bytes = b"\x80\x02c__main__\nC\nq\x00)\x81q\x01}q\x02X\x01\x00\x00\x00xq\x03K\x05sb.";
        let v = run(bytes).unwrap();
        let o = v.as_object().unwrap();
        assert_eq!(o.class.path(), "__main__.C");
        assert_eq!(o.attr("x"), Some(&Value::Int(5)));
        assert_eq!(v.get("x"), Some(&Value::Int(5)));
    }

    #[test]
    fn ordered_dict_and_set_and_bytes() {
        // protocol 2: OrderedDict([('a', 1)]), {3}, b'\x00\xff' via _codecs.encode
        let bytes = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00aq\x02K\x01s\
c__builtin__\nset\nq\x03]q\x04K\x03a\x85q\x05Rq\x06c_codecs\nencode\nq\x07X\x03\x00\x00\x00\x00\xc3\xbfq\x08X\x06\x00\x00\x00latin1q\x09\x86q\x0aRq\x0b\x87q\x0c.";
        let v = run(bytes).unwrap();
        let t = v.as_seq().unwrap();
        assert_eq!(t[0].get("a"), Some(&Value::Int(1)));
        assert_eq!(t[1], Value::Set(vec![Value::Int(3)].into()));
        assert_eq!(t[2], Value::Bytes(vec![0u8, 0xff].into()));
    }

    #[test]
    fn shared_and_recursive_containers() {
        // l = []; l.append(l); pickle.dumps([l, l], protocol=2)
        let bytes = b"\x80\x02]q\x00(]q\x01h\x01ah\x01e.";
        let v = run(bytes).unwrap();
        let outer = v.as_seq().unwrap();
        assert_eq!(outer.len(), 2);
        assert_eq!(outer[0], outer[1]);
        assert_eq!(outer[0].as_seq().unwrap()[0], Value::Recursive);
    }

    #[test]
    fn errors_name_opcode_and_position() {
        let e = run(b"\x80\x02]q\x00").unwrap_err();
        assert!(e.reason.contains("without a STOP"), "{e:?}");
        assert_eq!(e.position, 5);
        let e = run(b"\x80\x02h\x07.").unwrap_err();
        assert_eq!(e.opcode, Some(b'h'));
        assert!(
            e.location().contains("BINGET") && e.location().contains("byte 2"),
            "{}",
            e.location()
        );
        assert!(e.reason.contains("memo entry 7"), "{e:?}");
        let e = run(b"\x80\x02X\xff\xff\xff\x7fabc.").unwrap_err();
        assert!(e.reason.contains("only 4 remain"), "{e:?}");
        let e = run(b"\x80\x02\xfe.").unwrap_err();
        assert!(e.reason.contains("unknown opcode 0xfe"), "{e:?}");
        let e = run(b"\x80\x02u.").unwrap_err();
        assert!(e.reason.contains("MARK"), "{e:?}");
        let e = run(b"\x80\x02NK\x01R.").unwrap_err();
        assert!(e.reason.contains("not a tuple"), "{e:?}");
    }

    #[test]
    fn expected_globals_follow_the_documented_rule() {
        let g = |path: &str| {
            let (m, n) = path.rsplit_once('.').unwrap();
            is_expected_global(&Global::new(m, n))
        };
        for ok in [
            "collections.OrderedDict",
            "torch._utils._rebuild_tensor_v2",
            "torch._utils._rebuild_parameter",
            "torch.FloatStorage",
            "torch.cuda.HalfStorage",
            "torch.storage.UntypedStorage",
            "torch.float32",
            "torch.Size",
            "torch.nn.modules.linear.Linear",
            "torch.nn.parameter.Parameter",
            "torch.optim.adam.Adam",
            "torchvision.models.resnet.Bottleneck",
            "models.Encoder",
            "builtins.set",
            "numpy._core.multiarray.scalar",
            "numpy.dtype",
            "_codecs.encode",
        ] {
            assert!(g(ok), "{ok}");
        }
        for bad in [
            "os.system",
            "posix.system",
            "nt.system",
            "subprocess.Popen",
            "builtins.eval",
            "builtins.exec",
            "builtins.getattr",
            "builtins.__import__",
            "builtins.open",
            "sys.exit",
            "shutil.rmtree",
            "socket.socket",
            "importlib.import_module",
            "pickle.loads",
            "marshal.loads",
            "types.FunctionType",
            "runpy.run_path",
            "webbrowser.open",
            "pty.spawn",
            "code.interact",
            "torch.load",
            "torch.hub.load",
            "torch.nnx.Evil",
            "modelsx.Encoder",
            "__main__.Net",
        ] {
            assert!(!g(bad), "{bad}");
        }
    }

    #[test]
    fn a_self_referencing_list_is_freed() {
        // l = []; l.append(l); with the list also memoised and popped: the VM must empty it at
        // the end, or the cycle (and everything in it) would leak.
        let bytes = b"\x80\x02]q\x002aK\x07a0N.";
        let mut input = Input::new(&bytes[..], 0, bytes.len() as u64);
        let mut weak = None;
        {
            let mut persistent = NoPersistent;
            let mut vm = Vm {
                stack: Vec::new(),
                marks: Vec::new(),
                memo: HashMap::new(),
                persistent: &mut persistent,
                start: 0,
                read: 0,
                work: 0,
                tracked: Vec::new(),
                noted: HashSet::new(),
                unexpected: &mut Vec::new(),
            };
            loop {
                let code = input.u8().unwrap();
                if vm.stack.len() == 1 && weak.is_none() {
                    if let Item::List(rc) = &vm.stack[0] {
                        weak = Some(Rc::downgrade(rc));
                    }
                }
                if vm.step(code, &mut input).unwrap().is_some() {
                    break;
                }
            }
            assert!(
                weak.as_ref().unwrap().upgrade().is_some(),
                "still alive in the VM"
            );
        }
        assert!(weak.unwrap().upgrade().is_none(), "the cycle leaked");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut bytes = b"\x80\x02".to_vec();
        bytes.extend(std::iter::repeat_n(b']', 2000));
        bytes.extend(std::iter::repeat_n(b'a', 1999));
        bytes.push(b'.');
        let e = run(&bytes).unwrap_err();
        assert!(e.reason.contains("nested"), "{e:?}");
    }
}
