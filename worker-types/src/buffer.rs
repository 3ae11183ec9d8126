//! Out-of-band buffers: large byte blocks that travel beside a job's or an outcome's pickle stream
//! (pickle protocol 5) instead of inside it.
//!
//! A [`Buffer`] is raw memory plus an *owner* that keeps it valid: a `Vec<u8>`, a private mapping
//! of a worker's shared-memory segment, or memory of the caller's interpreter pinned by the front
//! end (a Python object held alive, never touched outside that interpreter). Worker types read a
//! job's buffers in place (a subinterpreter worker exposes them to its job as read-only
//! `memoryview`s; a process worker copies them once into shared memory) and hand outcome buffers
//! back the same way, so a payload is never pickled or copied into a larger stream.

#![allow(unsafe_code)]

use std::{fmt, sync::Arc};

/// Something that keeps a buffer's memory valid while it lives. Dropped on whatever thread drops
/// the last [`Buffer`] using it, possibly a worker thread attached to another interpreter: an
/// owner must not touch Python objects in its `Drop` (PyO3's `Py` defers its decref there).
pub trait Owner: Send + Sync {}

impl<T: Send + Sync> Owner for T {}

/// A block of bytes beside a pickle stream. Cloning shares the memory (and makes the clone
/// read-only).
pub struct Buffer {
    ptr: *mut u8,
    len: usize,
    writable: bool,
    _owner: Arc<dyn Owner>,
}

// SAFETY: the memory is only read through `ptr` (or written by the buffer's unique holder, see
// `writable`), and the owner that keeps it valid is itself Send + Sync.
unsafe impl Send for Buffer {}
// SAFETY: as above; shared access only reads.
unsafe impl Sync for Buffer {}

impl Buffer {
    /// A buffer owning `data`; writable by whoever holds it (nobody else sees the memory).
    pub fn from_vec(data: Vec<u8>) -> Self {
        let len = data.len();
        let raw = Box::into_raw(data.into_boxed_slice());
        Self {
            ptr: raw.cast::<u8>(),
            len,
            writable: true,
            _owner: Arc::new(OwnedBytes(raw)),
        }
    }

    /// A read-only buffer over `len` bytes at `ptr`, kept valid by `owner`.
    ///
    /// # Safety
    /// `ptr..ptr + len` must stay valid for reads for as long as `owner` lives, on any thread.
    /// Writes to it while a worker reads it (a caller mutating its argument during the call) are
    /// the caller's race: the job may see old, new or mixed bytes, never freed memory.
    pub unsafe fn from_raw(ptr: *const u8, len: usize, owner: Arc<dyn Owner>) -> Self {
        Self {
            ptr: ptr.cast_mut(),
            len,
            writable: false,
            _owner: owner,
        }
    }

    /// Like [`Buffer::from_raw`], for memory that only this buffer may write (a fresh private
    /// mapping).
    ///
    /// # Safety
    /// As [`Buffer::from_raw`], and nothing else may read or write the memory meanwhile.
    pub(crate) unsafe fn from_raw_exclusive(
        ptr: *mut u8,
        len: usize,
        owner: Arc<dyn Owner>,
    ) -> Self {
        Self {
            ptr,
            len,
            writable: true,
            _owner: owner,
        }
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first byte (dangling but non-null for an empty buffer).
    pub fn as_ptr(&self) -> *const u8 {
        self.as_mut_ptr()
    }

    /// The first byte, for writing; only if [`Buffer::writable`].
    pub fn as_mut_ptr(&self) -> *mut u8 {
        if self.len == 0 {
            std::ptr::NonNull::dangling().as_ptr()
        } else {
            self.ptr
        }
    }

    /// Whether the holder of this buffer may write its memory (it owns it alone).
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// The bytes. For caller memory, see the race note of [`Buffer::from_raw`].
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the owner keeps `ptr..ptr + len` valid while `self` lives (constructors'
        // contracts); an empty buffer uses a dangling, aligned, non-null pointer.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len) }
    }
}

/// The heap block of [`Buffer::from_vec`], freed with the last buffer using it.
struct OwnedBytes(*mut [u8]);

// SAFETY: the block is plain bytes owned by this value alone; it is only freed in `drop`.
unsafe impl Send for OwnedBytes {}
// SAFETY: as above; `OwnedBytes` itself never reads or writes the bytes.
unsafe impl Sync for OwnedBytes {}

impl Drop for OwnedBytes {
    fn drop(&mut self) {
        // SAFETY: made by `Box::into_raw` in `from_vec` and freed only here.
        drop(unsafe { Box::from_raw(self.0) });
    }
}

impl Clone for Buffer {
    fn clone(&self) -> Self {
        Self {
            ptr: self.ptr,
            len: self.len,
            writable: false,
            _owner: self._owner.clone(),
        }
    }
}

impl PartialEq for Buffer {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Buffer {}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Buffer(<{} bytes>)", self.len)
    }
}

impl From<Vec<u8>> for Buffer {
    fn from(data: Vec<u8>) -> Self {
        Self::from_vec(data)
    }
}
