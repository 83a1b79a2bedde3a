//! Page-aligned I/O buffers from a bounded pool. Alignment makes every buffer usable for
//! O_DIRECT; the pool keeps freed buffers (up to `pool_bytes_max`) so the data path does not
//! allocate and zero memory per request.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

/// Alignment of every buffer: a page, which satisfies O_DIRECT on any device.
pub const BUF_ALIGN_BYTES: usize = 4096;
/// Size classes are powers of two from 4 KiB; larger buffers come from the next class up.
const CLASSES: usize = 16; // 4 KiB ..= 128 MiB

#[derive(Debug)]
pub struct BufPool {
    free: Vec<Mutex<Vec<Raw>>>,
    pool_bytes_max: usize,
    pooled_bytes: Mutex<usize>,
    /// Buffers handed out, ever (an idle pool is one where this stands still).
    taken: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct Raw {
    ptr: NonNull<u8>,
    cap: usize,
}

// SAFETY: `Raw` owns its allocation exclusively; it is only a pointer and a size.
unsafe impl Send for Raw {}

impl Raw {
    fn new(cap: usize) -> Raw {
        let layout = Layout::from_size_align(cap, BUF_ALIGN_BYTES).expect("buffer layout");
        // SAFETY: `cap` is non-zero (classes start at 4 KiB) and the layout is valid.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Raw { ptr, cap }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.cap, BUF_ALIGN_BYTES).expect("buffer layout");
        // SAFETY: allocated in `Raw::new` with this same layout.
        unsafe { dealloc(self.ptr.as_ptr(), layout) }
    }
}

fn class_of(len: usize) -> Option<usize> {
    let cap = len.max(BUF_ALIGN_BYTES).next_power_of_two();
    let class = (cap / BUF_ALIGN_BYTES).trailing_zeros() as usize;
    (class < CLASSES).then_some(class)
}

impl BufPool {
    pub fn new(pool_bytes_max: usize) -> Arc<Self> {
        Arc::new(Self {
            free: (0..CLASSES).map(|_| Mutex::new(Vec::new())).collect(),
            pool_bytes_max,
            pooled_bytes: Mutex::new(0),
            taken: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Frees every pooled buffer if none was taken since `seen` (the count this returned
    /// last time); returns (the count now, bytes freed). A burst of clients leaves no
    /// memory held once it is over.
    pub fn trim_if_idle(&self, seen: u64) -> (u64, usize) {
        let now = self.taken.load(std::sync::atomic::Ordering::Relaxed);
        if now != seen {
            return (now, 0);
        }
        let mut freed = 0;
        for class in &self.free {
            let bufs = std::mem::take(&mut *class.lock().expect("pool lock"));
            let bytes: usize = bufs.iter().map(|r| r.cap).sum();
            *self.pooled_bytes.lock().expect("pool lock") -= bytes;
            freed += bytes;
        }
        (now, freed)
    }

    /// A buffer of `len` bytes. Its contents are unspecified (old data or zeroes), never
    /// uninitialised.
    pub fn take(self: &Arc<Self>, len: usize) -> AlignedBuf {
        if len == 0 {
            return AlignedBuf {
                raw: None,
                len: 0,
                pool: None,
            };
        }
        self.taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let raw = match class_of(len) {
            Some(class) => {
                let reused = self.free[class].lock().expect("pool lock").pop();
                match reused {
                    Some(r) => {
                        *self.pooled_bytes.lock().expect("pool lock") -= r.cap;
                        r
                    }
                    None => Raw::new(BUF_ALIGN_BYTES << class),
                }
            }
            None => Raw::new(len.next_multiple_of(BUF_ALIGN_BYTES)),
        };
        AlignedBuf {
            raw: Some(raw),
            len,
            pool: Some(self.clone()),
        }
    }

    fn give_back(&self, raw: Raw) {
        let Some(class) = class_of(raw.cap).filter(|c| BUF_ALIGN_BYTES << c == raw.cap) else {
            return;
        };
        {
            let mut pooled = self.pooled_bytes.lock().expect("pool lock");
            if *pooled + raw.cap > self.pool_bytes_max {
                return;
            }
            *pooled += raw.cap;
        }
        self.free[class].lock().expect("pool lock").push(raw);
    }
}

/// A page-aligned buffer of `len` bytes that returns to its pool when dropped.
#[derive(Debug)]
pub struct AlignedBuf {
    raw: Option<Raw>,
    len: usize,
    pool: Option<Arc<BufPool>>,
}

impl AlignedBuf {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Pointer for the kernel; valid for `len` bytes while `self` lives.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.raw
            .as_ref()
            .map_or(NonNull::<u8>::dangling().as_ptr(), |r| r.ptr.as_ptr())
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        match &self.raw {
            // SAFETY: the allocation holds at least `len` initialised bytes (zeroed at
            // allocation, written since) and is owned by `self`.
            Some(r) => unsafe { std::slice::from_raw_parts(r.ptr.as_ptr(), self.len) },
            None => &[],
        }
    }
}

impl AsMut<[u8]> for AlignedBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        match &mut self.raw {
            // SAFETY: as in `as_ref`, and `&mut self` gives exclusive access.
            Some(r) => unsafe { std::slice::from_raw_parts_mut(r.ptr.as_ptr(), self.len) },
            None => &mut [],
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let (Some(raw), Some(pool)) = (self.raw.take(), &self.pool) {
            pool.give_back(raw);
        }
    }
}

impl ferry_nbd::IoBuffer for AlignedBuf {}

/// Memory owned by something else that a datastore write is issued from: a write being
/// captured into a VPG's journal (its payload is the journal slot's memory in the mapped
/// ring, or a pooled buffer when the write is only tracked). Its owner gets it back with
/// [`Held::into_any`].
pub trait Held: AsRef<[u8]> + AsMut<[u8]> + Send + std::fmt::Debug + 'static {
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send>;
}

/// Memory a datastore I/O is issued from: a pooled buffer, or [`Held`] memory. Held by the
/// engine until the kernel is done with it, so abandoned requests never free memory under
/// an I/O.
#[derive(Debug)]
pub enum IoBuf {
    Plain(AlignedBuf),
    Held(Box<dyn Held>),
}

impl IoBuf {
    pub fn len(&self) -> usize {
        self.as_ref().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Pointer for the kernel; valid for `len` bytes while `self` lives.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        match self {
            IoBuf::Plain(b) => b.as_mut_ptr(),
            IoBuf::Held(c) => AsMut::<[u8]>::as_mut(&mut **c).as_mut_ptr(),
        }
    }
    /// The pooled buffer of a read.
    pub fn into_plain(self) -> Option<AlignedBuf> {
        match self {
            IoBuf::Plain(b) => Some(b),
            IoBuf::Held(_) => None,
        }
    }
}

impl AsRef<[u8]> for IoBuf {
    fn as_ref(&self) -> &[u8] {
        match self {
            IoBuf::Plain(b) => b.as_ref(),
            IoBuf::Held(c) => AsRef::<[u8]>::as_ref(&**c),
        }
    }
}

impl AsMut<[u8]> for IoBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        match self {
            IoBuf::Plain(b) => b.as_mut(),
            IoBuf::Held(c) => AsMut::<[u8]>::as_mut(&mut **c),
        }
    }
}

impl ferry_nbd::IoBuffer for IoBuf {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_sized_and_reused_within_bound() {
        let pool = BufPool::new(8192);
        let mut a = pool.take(5000);
        assert_eq!(a.len(), 5000);
        assert_eq!(a.as_mut_ptr() as usize % BUF_ALIGN_BYTES, 0);
        a.as_mut().fill(7);
        let p = a.as_mut_ptr();
        drop(a);
        let mut b = pool.take(8192);
        assert_eq!(b.as_mut_ptr(), p, "freed buffer of the same class is reused");
        let c = pool.take(4096);
        drop(b);
        drop(c);
        assert!(
            *pool.pooled_bytes.lock().unwrap() <= 8192,
            "pool stays within its bound"
        );
        assert!(pool.take(0).is_empty());
        let huge = pool.take((256 << 20) + 1);
        assert_eq!(huge.len(), (256 << 20) + 1);
    }
}
