//! Out-of-band buffers: large byte blocks that travel beside a job's or an outcome's pickle stream
//! (pickle protocol 5) instead of inside it.
//!
//! A [`Buffer`] is raw memory plus an *owner* that keeps it valid: a `Vec<u8>`, a private mapping
//! of a worker's shared-memory segment, or memory of the caller's interpreter pinned by the front
//! end (a Python object held alive, never touched outside that interpreter). Worker types read a
//! job's buffers in place (a subinterpreter worker exposes them to its job as read-only
//! `memoryview`s; a process worker copies them once into shared memory) and hand outcome buffers
//! back the same way, so a payload is never pickled or copied into a larger stream.
//!
//! A subinterpreter worker also *lends* memory: an immutable result object stays alive in its
//! interpreter until the caller has copied it (see [`Loans`]), so that a returned `bytes` is
//! copied once, from the worker's object straight into the caller's; or, once nothing of the
//! worker reaches the object any more, *gives* it: the caller takes the object itself
//! ([`Loans::mark_given_up`], [`Buffer::take_given_up`]).

#![allow(unsafe_code)]

use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard, OnceLock, PoisonError,
    },
};

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
    /// Set for memory lent by a worker ([`Loans`]): then `ptr` is unused and the bytes are read
    /// through the loan, which the lender may take back (after copying them out).
    loan: Option<Arc<LoanHandle>>,
    /// The receiver rebuilds a `bytes` from it ([`Buffer::rebuilt_as_bytes`]).
    as_bytes: bool,
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
            loan: None,
            as_bytes: false,
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
            loan: None,
            as_bytes: false,
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
            loan: None,
            as_bytes: false,
        }
    }

    /// Marks a job's buffer that its pickle rebuilds as a `bytes` (`bytes(buffer)`, which returns
    /// a `bytes` as it is): a subinterpreter worker then makes that `bytes` itself, with one
    /// copy, instead of exposing a view of it.
    pub fn rebuilt_as_bytes(mut self) -> Self {
        self.as_bytes = true;
        self
    }

    /// Whether [`Buffer::rebuilt_as_bytes`] marked it.
    pub fn is_rebuilt_as_bytes(&self) -> bool {
        self.as_bytes
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first byte (dangling but non-null for an empty buffer). For lent memory, this makes
    /// the buffer's own copy first (see [`Buffer::read`]).
    pub fn as_ptr(&self) -> *const u8 {
        self.as_mut_ptr()
    }

    /// The first byte, for writing; only if [`Buffer::writable`] (never for lent memory).
    pub fn as_mut_ptr(&self) -> *mut u8 {
        if self.len == 0 {
            std::ptr::NonNull::dangling().as_ptr()
        } else if let Some(loan) = &self.loan {
            loan.copy().as_ptr().cast_mut()
        } else {
            self.ptr
        }
    }

    /// Whether the bytes are memory lent by a worker, best read once with [`Buffer::read`].
    pub fn is_lent(&self) -> bool {
        self.loan.is_some()
    }

    /// For lent memory whose lender gave its object up ([`Loans::mark_given_up`]) and that no
    /// other buffer shares: takes the object out of the loan, so that neither the lender nor this
    /// buffer touches it again, and returns its token, which the caller now owns. Otherwise the
    /// buffer, unchanged.
    pub fn take_given_up(self) -> Result<usize, Self> {
        let Some(handle) = &self.loan else {
            return Err(self);
        };
        // Two references per buffer (`_owner` and `loan`): more means a clone shares the loan,
        // which would then find its memory gone. Only the holder of `self` could clone it.
        if Arc::strong_count(handle) != 2 || !handle.loan.given_up.load(Ordering::Acquire) {
            return Err(self);
        }
        let lent = handle.loan.memory().take();
        let Some(lent) = lent else {
            return Err(self); // taken back (copied) by a lender that ended meanwhile
        };
        LENT.fetch_sub(1, Ordering::AcqRel);
        handle.book.forget(&handle.loan);
        Ok(lent.token)
    }

    /// This buffer, or for lent memory a writable copy of it in host memory (the loan is then
    /// handed back).
    pub fn into_owned(self) -> Self {
        match self.loan {
            Some(_) => Self::from_vec(self.read(<[u8]>::to_vec)),
            None => self,
        }
    }

    /// Calls `f` with the bytes. Lent memory is read where it lies, while the lender cannot take
    /// it back: `f` is the one copy of it. (`as_slice` would copy it into the buffer first.)
    pub fn read<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        match &self.loan {
            Some(loan) => loan.read(f),
            None => f(self.as_slice()),
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
            loan: self.loan.clone(),
            as_bytes: self.as_bytes,
        }
    }
}

impl PartialEq for Buffer {
    fn eq(&self, other: &Self) -> bool {
        if let (Some(mine), Some(theirs)) = (&self.loan, &other.loan) {
            if Arc::ptr_eq(&mine.loan, &theirs.loan) {
                return true; // one loan: reading both would take its lock twice
            }
        }
        self.read(|mine| other.read(|theirs| mine == theirs))
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

/// How many lent blocks their lenders have not taken back yet, in this process.
static LENT: AtomicUsize = AtomicUsize::new(0);

/// How many blocks workers have lent and not yet released in their own interpreters (their
/// objects still alive there): a job's result until its caller has copied it and the worker has
/// run its next job, idled out or ended.
pub fn lent_blocks() -> usize {
    LENT.load(Ordering::Acquire)
}

/// The memory a worker lends out: immutable bytes that stay valid until the worker releases
/// `token` (in its own interpreter, on its own thread).
struct Lent {
    ptr: *const u8,
    token: usize,
}

/// One lent block, shared by its [`Loans`] book and the buffers over it.
struct Loan {
    len: usize,
    /// `Some` while the lender's memory is there: readers hold this lock while they read it.
    memory: Mutex<Option<Lent>>,
    /// The bytes, copied out of the lender's memory if someone needed them after it was taken
    /// back, or needed a stable pointer ([`Buffer::as_slice`]).
    copy: OnceLock<Box<[u8]>>,
    /// Set by the lender once the token is the only thing left in its interpreter that reaches
    /// the memory's object ([`Loans::mark_given_up`]): the object may then be given to the
    /// reader outright instead of copied ([`Buffer::take_given_up`]).
    given_up: AtomicBool,
}

// SAFETY: `ptr` is read only under `memory`'s lock, while the lender keeps it valid (the `Lent`
// contract of `Loans::lend`); `token` is opaque here and handed back to the lender only.
unsafe impl Send for Loan {}
// SAFETY: as above.
unsafe impl Sync for Loan {}

impl Loan {
    fn memory(&self) -> MutexGuard<'_, Option<Lent>> {
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lent bytes while `memory` is held as `Some(lent)`.
    ///
    /// # Safety
    /// `lent` must be the guarded content of `self.memory`.
    unsafe fn bytes<'a>(&self, lent: &'a Lent) -> &'a [u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: the lender keeps `len` bytes at `ptr` valid and unchanged until it releases
        // `token`, which happens only after `memory` is emptied under its lock (held by the
        // caller, per this function's contract).
        unsafe { std::slice::from_raw_parts(lent.ptr, self.len) }
    }

    /// Copies the bytes into `copy` if it is not set yet (`lent` as in [`Loan::bytes`]).
    ///
    /// # Safety
    /// As [`Loan::bytes`].
    unsafe fn copy_from(&self, lent: &Lent) -> &[u8] {
        // SAFETY: per the caller.
        self.copy.get_or_init(|| unsafe { self.bytes(lent) }.into())
    }
}

/// What buffers over a [`Loan`] hold: when the last of them goes, the memory is returned to its
/// lender's book (not released: that happens in the lender's interpreter, see [`Loans`]).
struct LoanHandle {
    loan: Arc<Loan>,
    book: Arc<Loans>,
}

impl LoanHandle {
    fn read<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        if let Some(copy) = self.loan.copy.get() {
            return f(copy);
        }
        let memory = self.loan.memory();
        match &*memory {
            // SAFETY: `lent` is the guarded content of the loan's memory.
            Some(lent) => f(unsafe { self.loan.bytes(lent) }),
            None => f(self.loan.copy.get().expect("taken back only after copying")),
        }
    }

    /// The buffer's own copy of the bytes, made now if need be (the memory is then returned).
    fn copy(&self) -> &[u8] {
        if let Some(copy) = self.loan.copy.get() {
            return copy;
        }
        let mut memory = self.loan.memory();
        if let Some(lent) = memory.take() {
            // SAFETY: `lent` was the guarded content of the loan's memory, still locked.
            unsafe { self.loan.copy_from(&lent) };
            self.book.returned(lent.token);
        }
        drop(memory);
        self.loan
            .copy
            .get()
            .expect("copied above or when taken back")
    }
}

impl Drop for LoanHandle {
    fn drop(&mut self) {
        // Under the memory lock: a lender taking its memory back either finds it here or finds
        // the token in its returned list (see `Loans::take_back`).
        let mut memory = self.loan.memory();
        if let Some(lent) = memory.take() {
            self.book.returned(lent.token);
        }
    }
}

/// A worker's book of the memory it lent out. The worker lends an immutable object's bytes
/// ([`Loans::lend`]); buffers over them read it in place from any thread; when the last buffer is
/// gone, its token waits in the book until the worker, attached to its own interpreter, releases
/// it ([`Loans::release_returned`]: before each job and when it ends). A worker that ends while a
/// buffer still lives copies the bytes into the loan first ([`Loans::take_back`]): a lent buffer
/// never depends on its worker's interpreter outliving it.
pub struct Loans {
    outstanding: Mutex<Vec<Arc<Loan>>>,
    returned: Mutex<Vec<usize>>,
}

impl fmt::Debug for Loans {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loans").finish_non_exhaustive()
    }
}

impl Default for Loans {
    fn default() -> Self {
        Self::new()
    }
}

impl Loans {
    /// An empty book.
    pub fn new() -> Self {
        Self {
            outstanding: Mutex::new(Vec::new()),
            returned: Mutex::new(Vec::new()),
        }
    }

    /// Drops `loan` from the outstanding ones: its memory was given to its reader.
    fn forget(&self, loan: &Arc<Loan>) {
        self.outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|other| !Arc::ptr_eq(other, loan));
    }

    fn returned(&self, token: usize) {
        self.returned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(token);
    }

    /// A read-only buffer over `len` bytes at `ptr`, lent until the book gives `token` back to
    /// the lender's `release` ([`Loans::release_returned`], [`Loans::take_back`]).
    ///
    /// # Safety
    /// The bytes must stay valid and unchanged, for reads from any thread, until `token` is
    /// passed to a `release` of this book.
    pub unsafe fn lend(self: &Arc<Self>, ptr: *const u8, len: usize, token: usize) -> Buffer {
        let loan = Arc::new(Loan {
            len,
            memory: Mutex::new(Some(Lent { ptr, token })),
            copy: OnceLock::new(),
            given_up: AtomicBool::new(false),
        });
        LENT.fetch_add(1, Ordering::AcqRel);
        self.outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(loan.clone());
        let handle = Arc::new(LoanHandle {
            loan,
            book: self.clone(),
        });
        Buffer {
            ptr: std::ptr::NonNull::dangling().as_ptr(),
            len,
            writable: false,
            _owner: handle.clone(),
            loan: Some(handle),
            as_bytes: false,
        }
    }

    /// Marks every outstanding block whose token `sole` says is the last reference to its object
    /// as given up: a reader holding the only buffer over it may then take the token itself
    /// ([`Buffer::take_given_up`]) and never give it back.
    ///
    /// # Safety
    /// A token `sole` accepts must be the lender's last reference to its object, so that nothing
    /// of the lender can reach it again, and an object that its taker may own and free in its own
    /// interpreter: for a subinterpreter worker, a large exact `bytes` (`ffi.rs`, rule 12).
    pub unsafe fn mark_given_up(&self, mut sole: impl FnMut(usize) -> bool) {
        let outstanding = self
            .outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for loan in outstanding.iter() {
            if loan.given_up.load(Ordering::Relaxed) {
                continue;
            }
            if let Some(lent) = &*loan.memory() {
                if sole(lent.token) {
                    loan.given_up.store(true, Ordering::Release);
                }
            }
        }
    }

    /// Passes the tokens of memory nobody reads any more to `release`, on the lender's thread.
    pub fn release_returned(&self, mut release: impl FnMut(usize)) {
        let tokens =
            std::mem::take(&mut *self.returned.lock().unwrap_or_else(PoisonError::into_inner));
        if tokens.is_empty() {
            return;
        }
        self.outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|loan| loan.memory().is_some());
        for token in tokens {
            release(token);
            LENT.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Takes every block back, for a lender that ends: the bytes of those still read are copied
    /// into their loans first; every token goes to `release`.
    pub fn take_back(&self, mut release: impl FnMut(usize)) {
        let outstanding = std::mem::take(
            &mut *self
                .outstanding
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for loan in outstanding {
            let mut memory = loan.memory();
            if let Some(lent) = memory.take() {
                // SAFETY: `lent` was the guarded content of the loan's memory, still locked.
                unsafe { loan.copy_from(&lent) };
                release(lent.token);
                LENT.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.release_returned(release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lends `data` (kept alive by the test) under `token`.
    fn lend(book: &Arc<Loans>, data: &[u8], token: usize) -> Buffer {
        // SAFETY: `data` outlives every buffer and book of the test and is never written.
        unsafe { book.lend(data.as_ptr(), data.len(), token) }
    }

    fn released(book: &Loans) -> Vec<usize> {
        let mut tokens = Vec::new();
        book.release_returned(|token| tokens.push(token));
        tokens
    }

    #[test]
    fn a_given_up_block_is_taken_once_by_its_only_reader_and_never_returned() {
        let data = vec![7u8; 100];
        let book = Arc::new(Loans::new());
        let (mine, shared, kept) = (
            lend(&book, &data, 1),
            lend(&book, &data, 2),
            lend(&book, &data, 3),
        );
        // Not given up yet: the buffer comes back as it was.
        let mine = mine.take_given_up().unwrap_err();
        // SAFETY: the test's tokens are no objects; nobody else reaches them.
        unsafe { book.mark_given_up(|token| token != 3) };
        assert_eq!(mine.take_given_up().ok(), Some(1));
        // A clone shares the loan: neither may take it (the other would lose its memory).
        let clone = shared.clone();
        let shared = shared.take_given_up().unwrap_err();
        assert!(shared.read(|bytes| bytes == &data[..]) && clone == shared);
        // A block the lender still reaches is only ever copied.
        let kept = kept.take_given_up().unwrap_err();
        assert!(kept.read(|bytes| bytes == &data[..]));
        drop((kept, clone, shared));
        // Token 1 went to its reader: the lender never releases it, and forgets it.
        let mut tokens = released(&book);
        tokens.sort_unstable();
        assert_eq!(tokens, [2, 3]);
        let mut ended = Vec::new();
        book.take_back(|token| ended.push(token));
        assert!(ended.is_empty());
    }

    #[test]
    fn a_block_taken_back_by_an_ending_lender_is_copied_not_given() {
        let data: Vec<u8> = (0..=255).collect();
        let book = Arc::new(Loans::new());
        let buffer = lend(&book, &data, 9);
        // SAFETY: as above.
        unsafe { book.mark_given_up(|_| true) };
        let mut ended = Vec::new();
        book.take_back(|token| ended.push(token));
        assert_eq!(ended, [9]);
        let buffer = buffer.take_given_up().unwrap_err();
        assert!(buffer.read(|bytes| bytes == &data[..]));
    }
}
