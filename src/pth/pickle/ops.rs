//! The opcodes, one function per family: each answers whether the opcode was one of its own.

use std::cell::RefCell;
use std::io::BufRead;
use std::rc::Rc;

use super::globals::global;
use super::input::Input;
use super::item::{keys_cost, pairs, Item};
use super::machine::Vm;
use super::opcodes::op::*;
use super::text::{
    long_from_le, parse_int, raw_unicode_escape, str_or_bytes, text, unquote_python_string, utf8,
};
use crate::pth::value::Value;

impl Vm<'_> {
    /// Executes one opcode; the pickle's value once `STOP` is reached.
    pub(super) fn step<R: BufRead>(
        &mut self,
        code: u8,
        input: &mut Input<R>,
    ) -> Result<Option<Value>, String> {
        if code == STOP {
            let top = self.pop()?;
            return self.freeze(&top).map(Some);
        }
        let known = self.stack_op(code, input)?
            || self.number_op(code, input)?
            || self.string_op(code, input)?
            || self.container_op(code)?
            || self.call_op(code, input)?
            || self.memo_op(code, input)?;
        if known {
            Ok(None)
        } else {
            Err(format!(
                "unknown opcode 0x{code:02x}: not a pickle, or corrupt"
            ))
        }
    }

    /// Framing, marks and the stack: `PROTO`, `FRAME`, `MARK`, `POP`, `POP_MARK`, `DUP`.
    fn stack_op<R: BufRead>(&mut self, code: u8, input: &mut Input<R>) -> Result<bool, String> {
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
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// `None`, booleans, integers and floats.
    fn number_op<R: BufRead>(&mut self, code: u8, input: &mut Input<R>) -> Result<bool, String> {
        match code {
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
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Text and bytes; out-of-band buffers are refused.
    fn string_op<R: BufRead>(&mut self, code: u8, input: &mut Input<R>) -> Result<bool, String> {
        match code {
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
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Tuples, lists, dicts and sets, built or filled.
    fn container_op(&mut self, code: u8) -> Result<bool, String> {
        match code {
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
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Globals, calls, `BUILD`, persistent ids and extension codes.
    fn call_op<R: BufRead>(&mut self, code: u8, input: &mut Input<R>) -> Result<bool, String> {
        match code {
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
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The memo: `PUT`, `GET` and their binary forms, `MEMOIZE`.
    fn memo_op<R: BufRead>(&mut self, code: u8, input: &mut Input<R>) -> Result<bool, String> {
        match code {
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
            _ => return Ok(false),
        }
        Ok(true)
    }
}
