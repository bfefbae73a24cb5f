//! Parsing the HDF5 metadata that locates the `images` dataset and the `captions_per_image`
//! attribute. Follows the HDF5 file format specification; see the module docs for what is
//! covered. Every length read from the file is bounds-checked before use.

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;

use super::{lookup3, Hdf5Error, CAPTIONS_PER_IMAGE_ATTR, DATASET_NAME};

pub(super) const SIGNATURE: [u8; 8] = [0x89, b'H', b'D', b'F', b'\r', b'\n', 0x1a, b'\n'];

// Object header message types used here.
const MSG_DATASPACE: u16 = 0x01;
const MSG_LINK_INFO: u16 = 0x02;
const MSG_DATATYPE: u16 = 0x03;
const MSG_LINK: u16 = 0x06;
const MSG_EXTERNAL_FILES: u16 = 0x07;
const MSG_LAYOUT: u16 = 0x08;
const MSG_FILTER_PIPELINE: u16 = 0x0B;
const MSG_ATTRIBUTE: u16 = 0x0C;
const MSG_CONTINUATION: u16 = 0x10;
const MSG_SYMBOL_TABLE: u16 = 0x11;
const MSG_ATTRIBUTE_INFO: u16 = 0x15;
/// Message flag: the message is stored elsewhere and shared.
const MSG_FLAG_SHARED: u8 = 0x02;

/// Limits that keep a corrupt file from making the reader allocate or loop without bound.
const MAX_METADATA_BLOCK: u64 = 64 << 20;
const MAX_HEADER_CHUNKS: usize = 4096;
const MAX_BTREE_DEPTH: u32 = 32;

/// What the reader found in a file, before the tutorial's layout is checked.
#[derive(Debug)]
pub(super) struct FileLayout {
    pub file_len: u64,
    pub dataset: Option<DatasetInfo>,
    /// The attribute's integer value, or why it is not one.
    pub captions_per_image: Option<Result<i128, String>>,
}

#[derive(Debug)]
pub(super) struct DatasetInfo {
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub storage: Storage,
}

#[derive(Debug)]
pub(super) enum Storage {
    /// Absolute address of the data (None: never allocated) and its size when the layout
    /// message records it (version 3+).
    Contiguous {
        address: Option<u64>,
        size: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Dtype {
    pub class: u8,
    pub is_integer: bool,
    pub size: u32,
    pub signed: bool,
    pub big_endian: bool,
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The size comes from the file: in u32 its bit count can overflow.
        let bits = u64::from(self.size) * 8;
        match self.class {
            0 => write!(f, "{}int{bits}", if self.signed { "" } else { "u" }),
            1 => write!(f, "float{bits}"),
            3 => write!(f, "a string of {} bytes", self.size),
            c => write!(f, "HDF5 type class {c} of {} bytes", self.size),
        }
    }
}

pub(super) fn shape_string(shape: &[u64]) -> String {
    let parts: Vec<String> = shape.iter().map(u64::to_string).collect();
    if parts.len() == 1 {
        format!("({},)", parts[0])
    } else {
        format!("({})", parts.join(", "))
    }
}

/// Positioned read that does not move a shared file cursor.
pub(super) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let mut done = 0;
        while done < buf.len() {
            let n = std::os::windows::fs::FileExt::seek_read(
                file,
                &mut buf[done..],
                offset + done as u64,
            )?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            done += n;
        }
        Ok(())
    }
}

/// Reads the metadata of `file` (named `path` in errors).
pub(super) fn read_layout(file: &File, path: &Path) -> Result<FileLayout, Hdf5Error> {
    let file_len = file.metadata().map_err(|e| Hdf5Error::io(path, e))?.len();
    if file_len == 0 {
        return Err(Hdf5Error::Truncated {
            path: path.to_path_buf(),
            reason: "the file is empty (0 bytes)".into(),
        });
    }
    let mut reader = Reader {
        file,
        path,
        file_len,
        base: 0,
        sizeof_addr: 8,
        sizeof_len: 8,
    };
    let root = reader.superblock()?;
    let root_messages = reader.object_header(root, "the root group")?;

    let captions_per_image = reader.find_attribute(&root_messages, CAPTIONS_PER_IMAGE_ATTR)?;
    let dataset = match reader.find_link(&root_messages, DATASET_NAME)? {
        Some(address) => Some(reader.dataset(address)?),
        None => None,
    };
    Ok(FileLayout {
        file_len,
        dataset,
        captions_per_image,
    })
}

struct Message {
    kind: u16,
    flags: u8,
    data: Vec<u8>,
}

struct Reader<'a> {
    file: &'a File,
    path: &'a Path,
    file_len: u64,
    /// Absolute offset that file addresses are relative to.
    base: u64,
    sizeof_addr: usize,
    sizeof_len: usize,
}

/// A cursor over a metadata block; running past its end is corruption.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    what: &'a str,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8], what: &'a str, path: &'a Path) -> Self {
        Cursor {
            data,
            pos: 0,
            what,
            path,
        }
    }

    fn corrupt(&self, reason: impl std::fmt::Display) -> Hdf5Error {
        Hdf5Error::Corrupt {
            path: self.path.to_path_buf(),
            reason: format!("{}: {reason}", self.what),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Hdf5Error> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                self.corrupt(format!(
                    "needs {n} bytes at offset {} but only {} remain",
                    self.pos,
                    self.data.len() - self.pos
                ))
            })?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn skip(&mut self, n: usize) -> Result<(), Hdf5Error> {
        self.take(n).map(|_| ())
    }

    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn u8(&mut self) -> Result<u8, Hdf5Error> {
        Ok(self.take(1)?[0])
    }

    fn uint(&mut self, n: usize) -> Result<u64, Hdf5Error> {
        let bytes = self.take(n)?;
        Ok(bytes
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | b as u64))
    }

    fn u16(&mut self) -> Result<u16, Hdf5Error> {
        Ok(self.uint(2)? as u16)
    }

    fn u32(&mut self) -> Result<u32, Hdf5Error> {
        Ok(self.uint(4)? as u32)
    }

    /// An address of `size` bytes; all ones is HDF5's "undefined address".
    fn addr(&mut self, size: usize) -> Result<Option<u64>, Hdf5Error> {
        let bytes = self.take(size)?;
        if bytes.iter().all(|&b| b == 0xff) {
            return Ok(None);
        }
        Ok(Some(
            bytes
                .iter()
                .rev()
                .fold(0u64, |acc, &b| (acc << 8) | b as u64),
        ))
    }

    fn signature(&mut self, expected: &[u8; 4]) -> Result<(), Hdf5Error> {
        let got = self.take(4)?;
        if got != expected {
            return Err(self.corrupt(format!(
                "expected signature {:?}, found {:?}",
                String::from_utf8_lossy(expected),
                String::from_utf8_lossy(got)
            )));
        }
        Ok(())
    }
}

fn pad8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

impl Reader<'_> {
    fn corrupt(&self, reason: impl Into<String>) -> Hdf5Error {
        Hdf5Error::Corrupt {
            path: self.path.to_path_buf(),
            reason: reason.into(),
        }
    }

    fn unsupported(&self, reason: impl Into<String>) -> Hdf5Error {
        Hdf5Error::Unsupported {
            path: self.path.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// Reads `len` bytes at absolute offset `abs`, checking they lie inside the file.
    fn read_abs(&self, abs: u64, len: u64, what: &str) -> Result<Vec<u8>, Hdf5Error> {
        if len > MAX_METADATA_BLOCK {
            return Err(self.corrupt(format!("{what} claims a size of {len} bytes")));
        }
        let end = abs
            .checked_add(len)
            .ok_or_else(|| self.corrupt(format!("{what} has address {abs} past any file")))?;
        if end > self.file_len {
            return Err(Hdf5Error::Truncated {
                path: self.path.to_path_buf(),
                reason: format!(
                    "{what} at bytes {abs}..{end} lies past the end of the file ({} bytes)",
                    self.file_len
                ),
            });
        }
        let mut buf = vec![0u8; len as usize];
        read_exact_at(self.file, &mut buf, abs).map_err(|e| Hdf5Error::io(self.path, e))?;
        Ok(buf)
    }

    /// Reads `len` bytes at file address `addr` (relative to the base address).
    fn read(&self, addr: u64, len: u64, what: &str) -> Result<Vec<u8>, Hdf5Error> {
        let abs = self
            .base
            .checked_add(addr)
            .ok_or_else(|| self.corrupt(format!("{what} has address {addr} past any file")))?;
        self.read_abs(abs, len, what)
    }

    /// Finds and parses the superblock; returns the root group's object header address.
    fn superblock(&mut self) -> Result<u64, Hdf5Error> {
        // The superblock sits at 0 or, after a user block, at 512, 1024, 2048, ...
        let mut at = 0u64;
        let sb_start = loop {
            if at + 8 > self.file_len {
                return Err(Hdf5Error::NotHdf5 {
                    path: self.path.to_path_buf(),
                });
            }
            if self.read_abs(at, 8, "the superblock signature")? == SIGNATURE {
                break at;
            }
            at = if at == 0 { 512 } else { at * 2 };
        };
        let available = (self.file_len - sb_start).min(256);
        let block = self.read_abs(sb_start, available, "the superblock")?;
        let path = self.path;
        let truncated = || Hdf5Error::Truncated {
            path: path.to_path_buf(),
            reason: format!(
                "the file ends inside its superblock ({} bytes)",
                self.file_len
            ),
        };
        if block.len() < 12 {
            return Err(truncated());
        }
        let version = block[8];
        let mut c = Cursor::new(&block, "superblock", self.path);
        c.skip(9)?;
        let root;
        let eof;
        match version {
            0 | 1 => {
                if block.len() < 24 {
                    return Err(truncated());
                }
                c.skip(4)?; // free-space, root symbol table entry, reserved, shared header versions
                self.sizeof_addr = c.u8()? as usize;
                self.sizeof_len = c.u8()? as usize;
                self.check_sizes()?;
                c.skip(1 + 2 + 2 + 4)?; // reserved, leaf K, internal K, consistency flags
                if version == 1 {
                    c.skip(4)?; // indexed storage K, reserved
                }
                let needed = c.pos + 4 * self.sizeof_addr + 2 * self.sizeof_addr + 8 + 16;
                if block.len() < needed {
                    return Err(truncated());
                }
                let base = c.addr(self.sizeof_addr)?.unwrap_or(0);
                c.addr(self.sizeof_addr)?; // free-space info
                eof = c.addr(self.sizeof_addr)?;
                c.addr(self.sizeof_addr)?; // driver info
                                           // Root group symbol table entry: link name offset, object header address, ...
                c.addr(self.sizeof_addr)?;
                root = c.addr(self.sizeof_addr)?;
                self.base = base;
            }
            2 | 3 => {
                self.sizeof_addr = c.u8()? as usize;
                self.sizeof_len = c.u8()? as usize;
                self.check_sizes()?;
                c.skip(1)?; // file consistency flags
                let needed = c.pos + 4 * self.sizeof_addr + 4;
                if block.len() < needed {
                    return Err(truncated());
                }
                let base = c.addr(self.sizeof_addr)?.unwrap_or(0);
                c.addr(self.sizeof_addr)?; // superblock extension
                eof = c.addr(self.sizeof_addr)?;
                root = c.addr(self.sizeof_addr)?;
                let stored = c.u32()?;
                let computed = lookup3::checksum(&block[..c.pos - 4]);
                if stored != computed {
                    return Err(self.corrupt(format!(
                        "superblock checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
                    )));
                }
                self.base = base;
            }
            v => return Err(self.unsupported(format!("superblock version {v}"))),
        }
        // The base address is absolute; a user block makes it equal the superblock's offset.
        if self.base != sb_start && self.base != 0 {
            return Err(self.corrupt(format!(
                "superblock at byte {sb_start} gives base address {}",
                self.base
            )));
        }
        self.base = sb_start;
        if let Some(eof) = eof {
            let end = self.base.saturating_add(eof);
            if end > self.file_len {
                return Err(Hdf5Error::Truncated {
                    path: self.path.to_path_buf(),
                    reason: format!(
                        "the superblock says the file has {end} bytes, but it has {}",
                        self.file_len
                    ),
                });
            }
        }
        root.ok_or_else(|| self.corrupt("the superblock has no root group address"))
    }

    fn check_sizes(&self) -> Result<(), Hdf5Error> {
        for (what, size) in [("offsets", self.sizeof_addr), ("lengths", self.sizeof_len)] {
            if ![2, 4, 8].contains(&size) {
                return Err(
                    self.corrupt(format!("superblock gives a size of {what} of {size} bytes"))
                );
            }
        }
        Ok(())
    }

    /// All messages of the object header at `addr`, following continuation blocks.
    fn object_header(&self, addr: u64, what: &str) -> Result<Vec<Message>, Hdf5Error> {
        let prefix = self.read(addr, 4, &format!("object header of {what}"))?;
        if prefix == b"OHDR" {
            self.object_header_v2(addr, what)
        } else {
            self.object_header_v1(addr, what)
        }
    }

    fn object_header_v1(&self, addr: u64, what: &str) -> Result<Vec<Message>, Hdf5Error> {
        let label = format!("object header of {what}");
        let prefix = self.read(addr, 16, &label)?;
        let mut c = Cursor::new(&prefix, &label, self.path);
        let version = c.u8()?;
        if version != 1 {
            return Err(self.corrupt(format!(
                "{label} at address {addr}: version {version}, expected 1 or an OHDR signature"
            )));
        }
        c.skip(1)?;
        let _message_count = c.u16()?;
        c.skip(4)?; // reference count
        let size = c.u32()? as u64;
        let mut messages = Vec::new();
        let mut chunks = vec![(addr + 16, size)];
        let mut seen = HashSet::new();
        while let Some((chunk_addr, chunk_len)) = chunks.pop() {
            if !seen.insert(chunk_addr) || seen.len() > MAX_HEADER_CHUNKS {
                return Err(self.corrupt(format!("{label}: continuation blocks form a loop")));
            }
            let block = self.read(chunk_addr, chunk_len, &label)?;
            let mut c = Cursor::new(&block, &label, self.path);
            while c.remaining() >= 8 {
                let kind = c.u16()?;
                let size = c.u16()? as usize;
                let flags = c.u8()?;
                c.skip(3)?;
                let data = c.take(size)?.to_vec();
                if kind == MSG_CONTINUATION {
                    chunks.push(self.continuation(&data, &label)?);
                }
                messages.push(Message { kind, flags, data });
            }
        }
        Ok(messages)
    }

    fn continuation(&self, data: &[u8], label: &str) -> Result<(u64, u64), Hdf5Error> {
        let mut c = Cursor::new(data, label, self.path);
        let addr = c.addr(self.sizeof_addr)?.ok_or_else(|| {
            self.corrupt(format!("{label}: continuation to an undefined address"))
        })?;
        let len = c.uint(self.sizeof_len)?;
        Ok((addr, len))
    }

    fn object_header_v2(&self, addr: u64, what: &str) -> Result<Vec<Message>, Hdf5Error> {
        let label = format!("object header of {what}");
        let head = self.read(addr, 6, &label)?;
        let version = head[4];
        if version != 2 {
            return Err(self.unsupported(format!("{label}: version {version} object header")));
        }
        let flags = head[5];
        let mut prefix_len = 6u64;
        if flags & 0x20 != 0 {
            prefix_len += 16; // access, modification, change, birth times
        }
        if flags & 0x10 != 0 {
            prefix_len += 4; // attribute storage phase change values
        }
        let size_bytes = 1u64 << (flags & 0x03);
        let size_field = self.read(addr + prefix_len, size_bytes, &label)?;
        let chunk0 = Cursor::new(&size_field, &label, self.path).uint(size_bytes as usize)?;
        let data_start = prefix_len + size_bytes;
        let whole = self.read(addr, data_start + chunk0 + 4, &label)?;
        self.verify_checksum(&whole, &label)?;
        let tracks_order = flags & 0x04 != 0;
        let mut messages = Vec::new();
        let mut pending = Vec::new();
        self.messages_v2(
            &whole[data_start as usize..whole.len() - 4],
            tracks_order,
            &label,
            &mut messages,
            &mut pending,
        )?;
        let mut seen = HashSet::new();
        while let Some((chunk_addr, chunk_len)) = pending.pop() {
            if !seen.insert(chunk_addr) || seen.len() > MAX_HEADER_CHUNKS {
                return Err(self.corrupt(format!("{label}: continuation blocks form a loop")));
            }
            let block = self.read(chunk_addr, chunk_len, &label)?;
            if block.len() < 8 || &block[..4] != b"OCHK" {
                return Err(self.corrupt(format!(
                    "{label}: continuation block at {chunk_addr} lacks its OCHK signature"
                )));
            }
            self.verify_checksum(&block, &label)?;
            self.messages_v2(
                &block[4..block.len() - 4],
                tracks_order,
                &label,
                &mut messages,
                &mut pending,
            )?;
        }
        Ok(messages)
    }

    fn messages_v2(
        &self,
        block: &[u8],
        tracks_order: bool,
        label: &str,
        messages: &mut Vec<Message>,
        pending: &mut Vec<(u64, u64)>,
    ) -> Result<(), Hdf5Error> {
        let header_len = if tracks_order { 6 } else { 4 };
        let mut c = Cursor::new(block, label, self.path);
        // Fewer bytes than a message header at the end of a chunk are a gap, not a message.
        while c.remaining() >= header_len {
            let kind = c.u8()? as u16;
            let size = c.u16()? as usize;
            let flags = c.u8()?;
            if tracks_order {
                c.skip(2)?;
            }
            let data = c.take(size)?.to_vec();
            if kind == MSG_CONTINUATION {
                pending.push(self.continuation(&data, label)?);
            }
            messages.push(Message { kind, flags, data });
        }
        Ok(())
    }

    fn verify_checksum(&self, block: &[u8], label: &str) -> Result<(), Hdf5Error> {
        let (body, tail) = block.split_at(block.len() - 4);
        let stored = u32::from_le_bytes(tail.try_into().expect("4 bytes"));
        let computed = lookup3::checksum(body);
        if stored != computed {
            return Err(self.corrupt(format!(
                "{label}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            )));
        }
        Ok(())
    }

    /// The object header address of the root group's member `name`, if it exists.
    fn find_link(&self, root: &[Message], name: &str) -> Result<Option<u64>, Hdf5Error> {
        let label = "root group";
        if let Some(m) = root.iter().find(|m| m.kind == MSG_SYMBOL_TABLE) {
            let mut c = Cursor::new(&m.data, "root group symbol table message", self.path);
            let btree = c.addr(self.sizeof_addr)?;
            let heap = c.addr(self.sizeof_addr)?;
            let (Some(btree), Some(heap)) = (btree, heap) else {
                return Err(self.corrupt("root group symbol table has an undefined address"));
            };
            let heap = self.local_heap(heap)?;
            return self.search_group_btree(btree, &heap, name, 0);
        }
        for m in root.iter().filter(|m| m.kind == MSG_LINK) {
            let (link_name, target) = self.parse_link(&m.data)?;
            if link_name == name {
                return match target {
                    Some(addr) => Ok(Some(addr)),
                    None => Err(self.unsupported(format!("{name:?} is a soft or external link"))),
                };
            }
        }
        for m in root.iter().filter(|m| m.kind == MSG_LINK_INFO) {
            let mut c = Cursor::new(&m.data, "link info message", self.path);
            c.skip(1)?;
            let flags = c.u8()?;
            if flags & 0x01 != 0 {
                c.skip(8)?;
            }
            if c.addr(self.sizeof_addr)?.is_some() {
                return Err(self.unsupported(format!(
                    "the {label} stores its links densely (a fractal heap)"
                )));
            }
        }
        Ok(None)
    }

    /// A link message's name and hard-link target (None for soft/external links).
    fn parse_link(&self, data: &[u8]) -> Result<(String, Option<u64>), Hdf5Error> {
        let mut c = Cursor::new(data, "link message", self.path);
        let version = c.u8()?;
        if version != 1 {
            return Err(self.unsupported(format!("link message version {version}")));
        }
        let flags = c.u8()?;
        let link_type = if flags & 0x08 != 0 { c.u8()? } else { 0 };
        if flags & 0x04 != 0 {
            c.skip(8)?; // creation order
        }
        if flags & 0x10 != 0 {
            c.skip(1)?; // character set
        }
        let name_len = c.uint(1 << (flags & 0x03))? as usize;
        let name = String::from_utf8_lossy(c.take(name_len)?).into_owned();
        let target = if link_type == 0 {
            let addr = c.addr(self.sizeof_addr)?;
            Some(addr.ok_or_else(|| {
                self.corrupt(format!("link {name:?} points to an undefined address"))
            })?)
        } else {
            None
        };
        Ok((name, target))
    }

    /// The data segment of a local heap.
    fn local_heap(&self, addr: u64) -> Result<Vec<u8>, Hdf5Error> {
        let label = "root group local heap";
        let head = self.read(
            addr,
            8 + 2 * self.sizeof_len as u64 + self.sizeof_addr as u64,
            label,
        )?;
        let mut c = Cursor::new(&head, label, self.path);
        c.signature(b"HEAP")?;
        c.skip(4)?; // version, reserved
        let size = c.uint(self.sizeof_len)?;
        c.skip(self.sizeof_len)?; // free list head
        let data = c
            .addr(self.sizeof_addr)?
            .ok_or_else(|| self.corrupt(format!("{label}: undefined data address")))?;
        self.read(data, size, label)
    }

    fn search_group_btree(
        &self,
        addr: u64,
        heap: &[u8],
        name: &str,
        depth: u32,
    ) -> Result<Option<u64>, Hdf5Error> {
        if depth > MAX_BTREE_DEPTH {
            return Err(self.corrupt("root group B-tree is deeper than any real file's"));
        }
        let label = "root group B-tree node";
        let (sa, sl) = (self.sizeof_addr as u64, self.sizeof_len as u64);
        let head = self.read(addr, 8 + 2 * sa, label)?;
        let mut c = Cursor::new(&head, label, self.path);
        c.signature(b"TREE")?;
        let node_type = c.u8()?;
        if node_type != 0 {
            return Err(self.corrupt(format!(
                "{label}: node type {node_type}, expected 0 (group)"
            )));
        }
        let level = c.u8()?;
        let entries = c.u16()? as u64;
        let body = self.read(addr + 8 + 2 * sa, entries * (sl + sa) + sl, label)?;
        let mut c = Cursor::new(&body, label, self.path);
        for _ in 0..entries {
            c.skip(self.sizeof_len)?;
            let child = c
                .addr(self.sizeof_addr)?
                .ok_or_else(|| self.corrupt(format!("{label}: undefined child address")))?;
            let found = if level > 0 {
                self.search_group_btree(child, heap, name, depth + 1)?
            } else {
                self.search_symbol_node(child, heap, name)?
            };
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    fn search_symbol_node(
        &self,
        addr: u64,
        heap: &[u8],
        name: &str,
    ) -> Result<Option<u64>, Hdf5Error> {
        let label = "root group symbol table node";
        let head = self.read(addr, 8, label)?;
        let mut c = Cursor::new(&head, label, self.path);
        c.signature(b"SNOD")?;
        c.skip(2)?; // version, reserved
        let count = c.u16()? as u64;
        let entry_len = 2 * self.sizeof_addr as u64 + 24;
        let body = self.read(addr + 8, count * entry_len, label)?;
        let mut c = Cursor::new(&body, label, self.path);
        for _ in 0..count {
            let name_offset = c.uint(self.sizeof_addr)? as usize;
            let header = c.addr(self.sizeof_addr)?;
            let cache_type = c.u32()?;
            c.skip(4 + 16)?;
            let entry_name = heap
                .get(name_offset..)
                .and_then(|rest| rest.split(|&b| b == 0).next())
                .ok_or_else(|| {
                    self.corrupt(format!(
                        "{label}: name offset {name_offset} is outside the local heap"
                    ))
                })?;
            if entry_name == name.as_bytes() {
                if cache_type == 2 {
                    return Err(self.unsupported(format!("{name:?} is a soft link")));
                }
                return header.map(Some).ok_or_else(|| {
                    self.corrupt(format!("{name:?} has an undefined object header address"))
                });
            }
        }
        Ok(None)
    }

    /// The integer value of the root attribute `name`, if it exists.
    fn find_attribute(
        &self,
        root: &[Message],
        name: &str,
    ) -> Result<Option<Result<i128, String>>, Hdf5Error> {
        for m in root.iter().filter(|m| m.kind == MSG_ATTRIBUTE) {
            let mut c = Cursor::new(&m.data, "attribute message", self.path);
            let version = c.u8()?;
            let flags = c.u8()?;
            let name_len = c.u16()? as usize;
            let dtype_len = c.u16()? as usize;
            let space_len = c.u16()? as usize;
            let padded = |n: usize| if version == 1 { pad8(n) } else { n };
            match version {
                1 | 2 => {}
                3 => c.skip(1)?, // name character set
                v => return Err(self.unsupported(format!("attribute message version {v}"))),
            }
            let raw_name = c.take(padded(name_len))?;
            let attr_name = raw_name[..name_len.min(raw_name.len())]
                .split(|&b| b == 0)
                .next()
                .unwrap_or(&[]);
            if attr_name != name.as_bytes() {
                continue;
            }
            if version > 1 && flags & 0x03 != 0 {
                return Err(self.unsupported(format!(
                    "attribute {name:?} uses a shared datatype or dataspace"
                )));
            }
            let dtype = self.parse_datatype(c.take(padded(dtype_len))?, "attribute datatype")?;
            let shape = self.parse_dataspace(c.take(padded(space_len))?, "attribute dataspace")?;
            let elements: u64 = shape.iter().product();
            if elements != 1 {
                return Ok(Some(Err(format!(
                    "attribute {name:?} has shape {}, expected a single integer",
                    shape_string(&shape)
                ))));
            }
            if !dtype.is_integer || ![1, 2, 4, 8].contains(&dtype.size) {
                return Ok(Some(Err(format!(
                    "attribute {name:?} has type {dtype}, expected an integer"
                ))));
            }
            let raw = c.take(dtype.size as usize)?;
            let mut bytes = raw.to_vec();
            if dtype.big_endian {
                bytes.reverse();
            }
            let unsigned = bytes
                .iter()
                .rev()
                .fold(0u128, |acc, &b| (acc << 8) | b as u128);
            let bits = dtype.size * 8;
            let value = if dtype.signed && unsigned >> (bits - 1) & 1 == 1 {
                unsigned as i128 - (1i128 << bits)
            } else {
                unsigned as i128
            };
            return Ok(Some(Ok(value)));
        }
        for m in root.iter().filter(|m| m.kind == MSG_ATTRIBUTE_INFO) {
            let mut c = Cursor::new(&m.data, "attribute info message", self.path);
            c.skip(1)?;
            let flags = c.u8()?;
            if flags & 0x01 != 0 {
                c.skip(2)?;
            }
            if c.addr(self.sizeof_addr)?.is_some() {
                return Err(self
                    .unsupported("the root group stores its attributes densely (a fractal heap)"));
            }
        }
        Ok(None)
    }

    fn parse_datatype(&self, data: &[u8], what: &str) -> Result<Dtype, Hdf5Error> {
        let mut c = Cursor::new(data, what, self.path);
        let class_version = c.u8()?;
        let bits0 = c.u8()?;
        c.skip(2)?;
        let size = c.u32()?;
        let class = class_version & 0x0f;
        Ok(Dtype {
            class,
            is_integer: class == 0,
            size,
            signed: class == 0 && bits0 & 0x08 != 0,
            big_endian: (class == 0 || class == 1) && bits0 & 0x01 != 0,
        })
    }

    /// Dimensions of a dataspace message (empty for a scalar).
    fn parse_dataspace(&self, data: &[u8], what: &str) -> Result<Vec<u64>, Hdf5Error> {
        let mut c = Cursor::new(data, what, self.path);
        let version = c.u8()?;
        let rank = c.u8()? as usize;
        let _flags = c.u8()?;
        match version {
            1 => c.skip(5)?,
            2 => {
                if c.u8()? == 2 {
                    return Err(self.corrupt(format!("{what}: a null dataspace holds no value")));
                }
            }
            v => return Err(self.unsupported(format!("{what}: dataspace version {v}"))),
        }
        (0..rank).map(|_| c.uint(self.sizeof_len)).collect()
    }

    fn dataset(&self, addr: u64) -> Result<DatasetInfo, Hdf5Error> {
        let what = format!("dataset {DATASET_NAME:?}");
        let messages = self.object_header(addr, &what)?;
        let find = |kind: u16, label: &str| {
            messages
                .iter()
                .find(|m| m.kind == kind)
                .ok_or_else(|| self.corrupt(format!("{what} has no {label} message")))
        };
        if messages.iter().any(|m| m.kind == MSG_EXTERNAL_FILES) {
            return Err(self.unsupported(format!("{what} keeps its data in external files")));
        }
        if let Some(m) = messages.iter().find(|m| m.kind == MSG_FILTER_PIPELINE) {
            if m.data.len() >= 2 && m.data[1] > 0 {
                return Err(self.unsupported(format!(
                    "{what} is compressed or filtered; write it without compression"
                )));
            }
        }
        let dtype_msg = find(MSG_DATATYPE, "datatype")?;
        if dtype_msg.flags & MSG_FLAG_SHARED != 0 {
            return Err(self.unsupported(format!("{what} uses a committed (shared) datatype")));
        }
        let dtype = self.parse_datatype(&dtype_msg.data, &format!("{what} datatype"))?;
        let shape = self.parse_dataspace(
            &find(MSG_DATASPACE, "dataspace")?.data,
            &format!("{what} dataspace"),
        )?;
        let layout = &find(MSG_LAYOUT, "layout")?.data;
        let mut c = Cursor::new(layout, "dataset layout message", self.path);
        let version = c.u8()?;
        let storage = match version {
            1 | 2 => {
                let rank = c.u8()? as usize;
                let class = c.u8()?;
                c.skip(5)?;
                match class {
                    1 => {
                        let address = c.addr(self.sizeof_addr)?;
                        // These versions store 32-bit dimension sizes that may be truncated;
                        // the size comes from the dataspace instead.
                        c.skip(4 * rank)?;
                        Storage::Contiguous {
                            address,
                            size: None,
                        }
                    }
                    other => return Err(self.layout_unsupported(&what, other)),
                }
            }
            3 | 4 => match c.u8()? {
                1 => Storage::Contiguous {
                    address: c.addr(self.sizeof_addr)?,
                    size: Some(c.uint(self.sizeof_len)?),
                },
                other => return Err(self.layout_unsupported(&what, other)),
            },
            v => return Err(self.unsupported(format!("{what}: layout message version {v}"))),
        };
        let Storage::Contiguous { address, size } = storage;
        let address =
            match address {
                Some(a) => Some(self.base.checked_add(a).ok_or_else(|| {
                    self.corrupt(format!("{what}: data address {a} past any file"))
                })?),
                None => None,
            };
        Ok(DatasetInfo {
            dtype,
            shape,
            storage: Storage::Contiguous { address, size },
        })
    }

    fn layout_unsupported(&self, what: &str, class: u8) -> Hdf5Error {
        let name = match class {
            0 => "compact",
            2 => "chunked",
            3 => "virtual",
            _ => "unknown",
        };
        self.unsupported(format!(
            "{what} has {name} layout; only contiguous datasets (h5py's default, as the tutorial writes) are read"
        ))
    }
}
