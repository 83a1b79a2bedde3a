//! What the server needs from whoever owns the bytes: a catalogue of exports and, per
//! export, the data operations. The NBD crate knows nothing of datastores or replication;
//! the agent implements these traits.
//!
//! The write path is shaped so the payload is copied once: the server asks the export for a
//! buffer ([`Export::buffer`]), reads the payload from the socket straight into it and hands
//! the same buffer back to [`Export::write`]. An export may return memory that a later step
//! (the journal) reads in place.

use std::future::Future;
use std::sync::Arc;

use crate::wire::Errno;

/// Memory that the server reads a payload into, or that a read fills.
pub trait IoBuffer: AsRef<[u8]> + AsMut<[u8]> + Send + 'static {}
impl IoBuffer for Vec<u8> {}

/// Fixed facts about an export, sent in INFO/GO/EXPORT_NAME replies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    pub size_bytes: u64,
    pub read_only: bool,
    pub description: String,
    /// Trims free space (a hint; reads of trimmed ranges return zeroes either way).
    pub can_trim: bool,
    /// WRITE_ZEROES can be done without writing the zeroes (FAST_ZERO is honoured).
    pub can_fast_zero: bool,
    /// Smallest unit of I/O; requests not aligned to it get EINVAL. A power of two.
    pub block_bytes_min: u32,
    pub block_bytes_preferred: u32,
    pub rotational: bool,
}

impl ExportInfo {
    /// A writable export of `size_bytes` with 512-byte sectors, 4 KiB preferred I/O, trim
    /// and fast zeroing, and no description: the usual shape, to adjust field by field.
    pub fn new(size_bytes: u64) -> Self {
        ExportInfo {
            size_bytes,
            read_only: false,
            description: String::new(),
            can_trim: true,
            can_fast_zero: true,
            block_bytes_min: 512,
            block_bytes_preferred: 4096,
            rotational: false,
        }
    }
}

/// How a WRITE_ZEROES may be carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZeroMode {
    /// The range may be deallocated (no NO_HOLE flag).
    pub may_trim: bool,
    /// FAST_ZERO: fail with ENOTSUP rather than write zeroes slowly.
    pub fast_only: bool,
    pub fua: bool,
}

/// One extent of `base:allocation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub length: u64,
    /// `wire::STATE_HOLE | wire::STATE_ZERO` bits.
    pub flags: u32,
}

/// A failed data operation: the NBD error to send and a message for the client and log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({errno:?})")]
pub struct ExportError {
    pub errno: Errno,
    pub message: String,
}

impl ExportError {
    pub fn new(errno: Errno, message: impl Into<String>) -> Self {
        Self {
            errno,
            message: message.into(),
        }
    }

    /// Maps an OS error to the closest NBD error.
    pub fn from_io(what: &str, err: &std::io::Error) -> Self {
        let errno = match err.raw_os_error() {
            Some(1) | Some(13) | Some(30) => Errno::EPERM,
            Some(12) => Errno::ENOMEM,
            Some(22) => Errno::EINVAL,
            Some(27) | Some(28) | Some(122) => Errno::ENOSPC,
            Some(75) => Errno::EOVERFLOW,
            Some(95) => Errno::ENOTSUP,
            Some(108) => Errno::ESHUTDOWN,
            _ => Errno::EIO,
        };
        Self::new(errno, format!("{what}: {err}"))
    }
}

pub type ExportResult<T> = Result<T, ExportError>;

/// One export's data operations. Offsets and lengths have been checked against
/// [`ExportInfo`] (in range, aligned, within the payload limit) before any call.
pub trait Export: Send + Sync + 'static {
    type Buf: IoBuffer;

    fn info(&self) -> &ExportInfo;

    /// A buffer of exactly `len` bytes for a read.
    fn buffer(&self, len: usize) -> Self::Buf;

    /// The buffer a WRITE's payload of `len` bytes at `offset` is read into, asked for when
    /// the request's header arrives (before its payload): an export may place it where a
    /// later step reads it in place, and take the write's place in an order now.
    fn write_buffer(&self, offset: u64, len: usize) -> Self::Buf {
        let _ = offset;
        self.buffer(len)
    }

    /// A buffer for the payload of a WRITE of `len` bytes that may come next, asked for
    /// before its header is read, so that one read can take several requests with each
    /// payload landing straight in its buffer (see the server's module docs). `None`: the
    /// export does not guess (the default). A buffer the guess does not fit is dropped:
    /// buffers taken together are dropped newest first.
    fn speculative_buffer(&self, len: usize) -> Option<Self::Buf> {
        let _ = len;
        None
    }

    /// The WRITE at `offset` did come next: ties the buffer from
    /// [`Export::speculative_buffer`], already holding the first `filled` bytes of the
    /// payload, to it. Returns the buffer to use (the same one, or another with those
    /// bytes).
    fn place_buffer(&self, buf: Self::Buf, offset: u64, filled: usize) -> Self::Buf {
        let _ = (offset, filled);
        buf
    }

    /// Whether every WRITE payload must be read from the socket straight into its buffer
    /// (the server then reads each request header on its own, one more read per request,
    /// so no payload byte passes through the request buffer).
    fn copy_once(&self) -> bool {
        false
    }

    /// Where the server counts this export's requests, if the export keeps counts.
    fn stats(&self) -> Option<&crate::OpStats> {
        None
    }

    /// Fills `buf` from `offset` and gives it back.
    fn read(&self, offset: u64, buf: Self::Buf) -> impl Future<Output = ExportResult<Self::Buf>> + Send;

    /// Writes `buf` at `offset`; with `fua` the bytes are durable before this returns.
    fn write(&self, offset: u64, buf: Self::Buf, fua: bool) -> impl Future<Output = ExportResult<()>> + Send;

    /// Makes every completed write durable (on every connection to this export).
    fn flush(&self) -> impl Future<Output = ExportResult<()>> + Send;

    fn trim(&self, offset: u64, len: u64, fua: bool) -> impl Future<Output = ExportResult<()>> + Send;

    fn write_zeroes(&self, offset: u64, len: u64, mode: ZeroMode) -> impl Future<Output = ExportResult<()>> + Send;

    /// Prefetch hint.
    fn cache(&self, offset: u64, len: u64) -> impl Future<Output = ExportResult<()>> + Send;

    /// `base:allocation` extents from `offset`, at most `extents_max` of them, covering at
    /// least one byte and at most `len` bytes.
    fn block_status(
        &self,
        offset: u64,
        len: u64,
        extents_max: usize,
    ) -> impl Future<Output = ExportResult<Vec<Extent>>> + Send;
}

/// The exports a server offers.
pub trait Catalog: Send + Sync + 'static {
    type Export: Export;

    /// The export called `name`; `""` asks for the default export, if there is one.
    fn open(&self, name: &str) -> Option<Arc<Self::Export>>;

    /// Names and descriptions of every export, for NBD_OPT_LIST.
    fn list(&self) -> Vec<(String, String)>;
}
