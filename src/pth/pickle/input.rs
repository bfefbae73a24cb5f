//! The bounded reader under the machine: it counts its position and refuses any length
//! longer than what remains, before allocating.

use std::io::BufRead;

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

    pub(super) fn remaining(&self) -> u64 {
        self.end.saturating_sub(self.pos)
    }

    pub(super) fn bytes(&mut self, n: u64) -> Result<Vec<u8>, String> {
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

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
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

    pub(super) fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    /// A `\n`-terminated line without the newline.
    pub(super) fn line(&mut self) -> Result<Vec<u8>, String> {
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
