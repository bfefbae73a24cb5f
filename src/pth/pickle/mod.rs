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
//!
//! Files by job: `input` the bounded reader, `opcodes` the opcode table, `item` the values
//! while the pickle runs, `freeze` turning them into [`Value`]s, `machine` the stack and memo,
//! `ops` one function per opcode family, `call` the calls (`REDUCE`, `NEWOBJ`, `INST`, `OBJ`),
//! `globals` the allow-list, `rebuild` the value functions (tensor rebuilds, numpy scalars),
//! `text` the decoding of text arguments.

mod call;
mod freeze;
mod globals;
mod input;
mod item;
mod machine;
mod opcodes;
mod ops;
mod rebuild;
mod text;

#[cfg(test)]
mod tests;

use std::io::BufRead;

pub use freeze::{MAX_DEPTH, WORK_BASE, WORK_PER_BYTE};
pub use globals::is_expected_global;
pub use input::Input;
pub use opcodes::opcode_name;

use super::value::Value;
use machine::Vm;

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
    let mut vm = Vm::new(persistent, input.position(), unexpected);
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
