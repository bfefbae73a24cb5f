//! Streaming writer for the tutorial's images file, in the layout h5py writes by default.
//!
//! The file is laid out as: superblock (0), root group object header, its B-tree node, local
//! heap and symbol table node, the dataset's object header, then the image data from
//! [`DATA_OFFSET`] on. Images are appended as they arrive; the metadata, which records N, is
//! written into the reserved space by [`ImagesWriter::finish`]. Until then the file has no
//! valid superblock, so a writer that never finishes leaves a file no reader accepts.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::read::SIGNATURE;
use super::{Hdf5Error, CAPTIONS_PER_IMAGE_ATTR, DATASET_NAME, IMAGE_SHAPE};

/// Where image data starts; everything before it is metadata (h5py also starts data at 2048).
pub(super) const DATA_OFFSET: u64 = 2048;

const UNDEFINED: u64 = u64::MAX;
// Addresses of the metadata blocks (see the module docs for the order).
const ROOT_HEADER: u64 = 96;
const ROOT_HEADER_LEN: u64 = 16 + (8 + 16) + (8 + 64);
const BTREE: u64 = ROOT_HEADER + ROOT_HEADER_LEN;
/// A group B-tree node has room for 2K children (K = 16) whatever its use; the library reads
/// the whole node.
const BTREE_LEN: u64 = 24 + 32 * 8 + 33 * 8;
const HEAP: u64 = BTREE + BTREE_LEN;
const HEAP_DATA: u64 = HEAP + 32;
const HEAP_DATA_LEN: u64 = 88;
const DATASET_HEADER: u64 = HEAP_DATA + HEAP_DATA_LEN;
const DATASET_HEADER_LEN: u64 = 16 + (8 + 72) + (8 + 16) + (8 + 8) + (8 + 24);
const SYMBOL_NODE: u64 = DATASET_HEADER + DATASET_HEADER_LEN;
/// A symbol table node has room for 2K entries (K = 4) of 40 bytes.
const SYMBOL_NODE_LEN: u64 = 8 + 8 * 40;
const _: () = assert!(SYMBOL_NODE + SYMBOL_NODE_LEN <= DATA_OFFSET);

/// Offset of "images" in the local heap (offset 0 holds the empty name of the root).
const NAME_OFFSET: u64 = 8;

/// Writes `{SPLIT}_IMAGES_*.hdf5` one image at a time.
pub struct ImagesWriter {
    path: PathBuf,
    file: File,
    item_shape: [u64; 3],
    item_bytes: usize,
    captions_per_image: i64,
    count: u64,
}

impl ImagesWriter {
    /// Creates (or truncates) `path` for images of shape (3, 256, 256).
    pub fn create(path: &Path, captions_per_image: u32) -> Result<Self, Hdf5Error> {
        Self::with_item_shape(path, captions_per_image as i64, IMAGE_SHAPE)
    }

    /// Like [`ImagesWriter::create`] with another per-image shape (for tests of the reader's
    /// shape checks).
    pub(crate) fn with_item_shape(
        path: &Path,
        captions_per_image: i64,
        item_shape: [u64; 3],
    ) -> Result<Self, Hdf5Error> {
        let mut file = File::create(path).map_err(|e| Hdf5Error::io(path, e))?;
        // Reserve the metadata space; it stays zero (no signature) until `finish`.
        file.write_all(&[0u8; DATA_OFFSET as usize])
            .map_err(|e| Hdf5Error::io(path, e))?;
        let item_bytes = item_shape.iter().product::<u64>() as usize;
        Ok(ImagesWriter {
            path: path.to_path_buf(),
            file,
            item_shape,
            item_bytes,
            captions_per_image,
            count: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Images written so far.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends one image (CHW bytes, [`super::IMAGE_BYTES`] long).
    pub fn push(&mut self, chw: &[u8]) -> Result<(), Hdf5Error> {
        assert_eq!(
            chw.len(),
            self.item_bytes,
            "an image must have exactly one image's bytes"
        );
        self.file
            .write_all(chw)
            .map_err(|e| Hdf5Error::io(&self.path, e))?;
        self.count += 1;
        Ok(())
    }

    /// Writes the metadata and flushes the file to disk. Returns the number of images.
    pub fn finish(mut self) -> Result<u64, Hdf5Error> {
        let data_len = self.count * self.item_bytes as u64;
        let metadata = self.metadata(data_len);
        let io = |e| Hdf5Error::io(&self.path, e);
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        self.file.write_all(&metadata).map_err(io)?;
        self.file.sync_all().map_err(io)?;
        Ok(self.count)
    }

    fn metadata(&self, data_len: u64) -> Vec<u8> {
        let mut m = Meta(Vec::with_capacity(DATA_OFFSET as usize));
        let eof = DATA_OFFSET + data_len;

        // Superblock version 0.
        m.bytes(&SIGNATURE);
        m.bytes(&[0, 0, 0, 0, 0, 8, 8, 0]); // versions, sizes of offsets and lengths
        m.u16(4); // group leaf node K
        m.u16(16); // group internal node K
        m.u32(0); // consistency flags
        m.u64(0); // base address
        m.u64(UNDEFINED); // free-space info
        m.u64(eof);
        m.u64(UNDEFINED); // driver info
                          // Root group symbol table entry, caching the B-tree and heap addresses.
        m.u64(0);
        m.u64(ROOT_HEADER);
        m.u32(1);
        m.u32(0);
        m.u64(BTREE);
        m.u64(HEAP);
        m.at(ROOT_HEADER);

        // Root group object header: symbol table message and the attribute.
        m.object_header_prefix(2, ROOT_HEADER_LEN - 16);
        m.message(0x11, 16, 0);
        m.u64(BTREE);
        m.u64(HEAP);
        m.message(0x0C, 64, 0);
        let name = CAPTIONS_PER_IMAGE_ATTR.as_bytes();
        m.u8(1); // attribute message version
        m.u8(0);
        m.u16(name.len() as u16 + 1);
        m.u16(12); // datatype size
        m.u16(8); // dataspace size
        m.padded(name, 24);
        m.bytes(&[0x10, 0x08, 0, 0]); // fixed-point, version 1, little-endian, signed
        m.u32(8);
        m.u16(0); // bit offset
        m.u16(64); // precision
        m.bytes(&[0; 4]);
        m.bytes(&[1, 0, 0, 0, 0, 0, 0, 0]); // scalar dataspace, version 1
        m.bytes(&self.captions_per_image.to_le_bytes());
        m.at(BTREE);

        // Group B-tree: one leaf pointing at one symbol table node.
        m.bytes(b"TREE");
        m.u8(0); // group node
        m.u8(0); // leaf level
        m.u16(1);
        m.u64(UNDEFINED);
        m.u64(UNDEFINED);
        m.u64(0); // key 0: the empty name
        m.u64(SYMBOL_NODE);
        m.u64(NAME_OFFSET); // key 1: the last name in the child
        m.at(HEAP);

        // Local heap holding the link names, with its free block as the library leaves it.
        m.bytes(b"HEAP");
        m.bytes(&[0, 0, 0, 0]);
        m.u64(HEAP_DATA_LEN);
        m.u64(16); // head of the free list
        m.u64(HEAP_DATA);
        m.u64(0); // ""
        m.padded(DATASET_NAME.as_bytes(), 8);
        m.u64(1); // free block: no next block ...
        m.u64(HEAP_DATA_LEN - 16); // ... and its size
        m.at(DATASET_HEADER);

        // Dataset object header: dataspace, datatype, fill value, layout.
        m.object_header_prefix(4, DATASET_HEADER_LEN - 16);
        m.message(0x01, 72, 0);
        m.bytes(&[1, 4, 1, 0, 0, 0, 0, 0]); // version 1, rank 4, max dims present
        let shape = [
            self.count,
            self.item_shape[0],
            self.item_shape[1],
            self.item_shape[2],
        ];
        for _ in 0..2 {
            for d in shape {
                m.u64(d);
            }
        }
        m.message(0x03, 16, 1);
        m.bytes(&[0x10, 0, 0, 0]); // fixed-point, version 1, little-endian, unsigned
        m.u32(1);
        m.u16(0);
        m.u16(8);
        m.bytes(&[0; 4]);
        m.message(0x05, 8, 1);
        m.bytes(&[2, 2, 2, 1, 0, 0, 0, 0]); // version 2, late allocation, library default fill
        m.message(0x08, 24, 0);
        m.u8(3); // layout version 3
        m.u8(1); // contiguous
        m.u64(if data_len == 0 {
            UNDEFINED
        } else {
            DATA_OFFSET
        });
        m.u64(data_len);
        m.bytes(&[0; 6]);
        m.at(SYMBOL_NODE);

        // Symbol table node with the one entry "images".
        m.bytes(b"SNOD");
        m.u8(1);
        m.u8(0);
        m.u16(1);
        m.u64(NAME_OFFSET);
        m.u64(DATASET_HEADER);
        m.u32(0); // no cached data
        m.u32(0);
        m.bytes(&[0; 16]);
        m.at(DATA_OFFSET);
        m.0
    }
}

/// Little-endian metadata assembly.
struct Meta(Vec<u8>);

impl Meta {
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    /// `b` NUL-terminated and zero-padded to `len` bytes.
    fn padded(&mut self, b: &[u8], len: usize) {
        assert!(b.len() < len);
        self.bytes(b);
        self.0.resize(self.0.len() + len - b.len(), 0);
    }
    /// Zero-fills up to absolute offset `addr`, which must not be behind the current end.
    fn at(&mut self, addr: u64) {
        assert!(
            self.0.len() as u64 <= addr,
            "metadata block overlaps the next one"
        );
        self.0.resize(addr as usize, 0);
    }
    /// Version 1 object header prefix (16 bytes including its alignment padding).
    fn object_header_prefix(&mut self, messages: u16, size: u64) {
        self.u8(1);
        self.u8(0);
        self.u16(messages);
        self.u32(1); // reference count
        self.u32(size as u32);
        self.u32(0);
    }
    /// Version 1 message header; `size` is a multiple of 8.
    fn message(&mut self, kind: u16, size: u16, flags: u8) {
        debug_assert_eq!(size % 8, 0);
        self.u16(kind);
        self.u16(size);
        self.u8(flags);
        self.bytes(&[0; 3]);
    }
}
