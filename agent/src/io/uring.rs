//! One dedicated thread that owns an io_uring and carries out datastore I/O for the agent.
//!
//! Tokio tasks send jobs over a channel and await a oneshot reply. The thread blocks in
//! `submit_and_wait`; a read on an eventfd is always armed in the ring, so a job sent while
//! the thread sleeps wakes it (the sender writes the eventfd only when the thread said it is
//! about to sleep, so a busy ring costs no extra system call per job). Buffers travel with
//! their job and come back in the reply, so the kernel never sees freed memory.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use io_uring::{IoUring, opcode, squeue, types};
use tokio::sync::oneshot;

use super::buf::AlignedBuf;

/// What one job asks of the kernel.
#[derive(Debug, Clone, Copy)]
pub(crate) enum JobOp {
    Read { offset: u64 },
    Write { offset: u64, dsync: bool },
    Fdatasync,
    Fallocate { mode: i32, offset: u64, len: u64 },
}

pub(crate) type JobReply = (io::Result<()>, Option<AlignedBuf>);

pub(crate) struct Job {
    pub op: JobOp,
    pub file: Arc<File>,
    pub buf: Option<AlignedBuf>,
    pub reply: oneshot::Sender<JobReply>,
    /// Bytes already transferred (short reads and writes are resubmitted for the rest).
    done_bytes: usize,
}

impl Job {
    pub fn new(op: JobOp, file: Arc<File>, buf: Option<AlignedBuf>, reply: oneshot::Sender<JobReply>) -> Self {
        Self {
            op,
            file,
            buf,
            reply,
            done_bytes: 0,
        }
    }
}

struct Wake {
    eventfd: OwnedFd,
    sleeping: AtomicBool,
}

impl Wake {
    fn ring(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            // A failed wake-up write can only be EAGAIN on a saturated counter, which
            // means a wake-up is already pending.
            let _ = rustix::io::write(&self.eventfd, &1u64.to_ne_bytes());
        }
    }
}

/// Handle to the io_uring thread; dropping it stops the thread once its jobs are done.
pub struct Uring {
    tx: mpsc::Sender<Job>,
    wake: Arc<Wake>,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Uring")
    }
}

const EVENTFD_TOKEN: u64 = u64::MAX;

impl Uring {
    /// Sets up a ring of `entries` slots and its thread. Fails where io_uring is not
    /// available (old kernel, seccomp), so the caller can fall back.
    pub fn start(entries: u32) -> io::Result<Uring> {
        let ring = IoUring::new(entries)?;
        // Probe: a ring can be created yet its operations refused (some sandboxes); a NOP
        // round trip proves submission works.
        let mut ring = ring;
        // SAFETY: a NOP references no memory.
        unsafe { ring.submission().push(&opcode::Nop::new().build().user_data(0)) }
            .map_err(|_| io::Error::other("io_uring submission queue full at start"))?;
        ring.submit_and_wait(1)?;
        ring.completion().for_each(drop);

        let eventfd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)?;
        let wake = Arc::new(Wake {
            eventfd,
            sleeping: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel();
        let w = wake.clone();
        std::thread::Builder::new()
            .name("ferry-uring".into())
            .spawn(move || worker(ring, rx, w))?;
        Ok(Uring { tx, wake })
    }

    pub(crate) fn submit(&self, job: Job) {
        if let Err(mpsc::SendError(job)) = self.tx.send(job) {
            let _ = job
                .reply
                .send((Err(io::Error::other("io_uring thread has stopped")), None));
            return;
        }
        self.wake.ring();
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        self.wake.sleeping.store(true, Ordering::SeqCst);
        self.wake.ring();
    }
}

fn sqe_for(job: &mut Job, slot: u64) -> squeue::Entry {
    let fd = types::Fd(job.file.as_raw_fd());
    let done = job.done_bytes;
    match job.op {
        JobOp::Read { offset } => {
            let buf = job.buf.as_mut().expect("read has a buffer");
            let len = (buf.len() - done) as u32;
            // SAFETY (for the pointer arithmetic): done < len of the buffer.
            let ptr = unsafe { buf.as_mut_ptr().add(done) };
            opcode::Read::new(fd, ptr, len).offset(offset + done as u64).build()
        }
        JobOp::Write { offset, dsync } => {
            let buf = job.buf.as_mut().expect("write has a buffer");
            let len = (buf.len() - done) as u32;
            // SAFETY (for the pointer arithmetic): done < len of the buffer.
            let ptr = unsafe { buf.as_mut_ptr().add(done) };
            let flags = if dsync { libc::RWF_DSYNC } else { 0 };
            opcode::Write::new(fd, ptr, len)
                .offset(offset + done as u64)
                .rw_flags(flags)
                .build()
        }
        JobOp::Fdatasync => opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build(),
        JobOp::Fallocate { mode, offset, len } => opcode::Fallocate::new(fd, len).offset(offset).mode(mode).build(),
    }
    .user_data(slot)
}

/// Applies one completion to its job: `Some(job)` when it needs another submission.
fn complete(mut job: Job, res: i32) -> Option<Job> {
    if res == -libc::EINTR || res == -libc::EAGAIN {
        return Some(job);
    }
    if res < 0 {
        let _ = job.reply.send((Err(io::Error::from_raw_os_error(-res)), job.buf));
        return None;
    }
    let transfers = matches!(job.op, JobOp::Read { .. } | JobOp::Write { .. });
    if transfers {
        let total = job.buf.as_ref().map_or(0, |b| b.len());
        if res == 0 && job.done_bytes < total {
            if let JobOp::Read { .. } = job.op {
                // Past the end of the file: the rest reads as zeroes.
                let done = job.done_bytes;
                job.buf.as_mut().expect("read has a buffer").as_mut()[done..].fill(0);
            } else {
                let _ = job.reply.send((
                    Err(io::Error::new(io::ErrorKind::WriteZero, "write made no progress")),
                    job.buf,
                ));
                return None;
            }
        } else {
            job.done_bytes += res as usize;
            if job.done_bytes < total {
                return Some(job);
            }
        }
    }
    let _ = job.reply.send((Ok(()), job.buf));
    None
}

fn worker(mut ring: IoUring, rx: mpsc::Receiver<Job>, wake: Arc<Wake>) {
    let capacity = ring.params().sq_entries() as usize - 1; // one slot for the eventfd read
    let mut slots: Vec<Option<Job>> = (0..capacity).map(|_| None).collect();
    let mut free: Vec<usize> = (0..capacity).rev().collect();
    let mut retry: Vec<Job> = Vec::new();
    let mut counter = [0u8; 8];
    let arm = |ring: &mut IoUring, counter: &mut [u8; 8]| {
        let e = opcode::Read::new(types::Fd(wake.eventfd.as_raw_fd()), counter.as_mut_ptr(), 8)
            .build()
            .user_data(EVENTFD_TOKEN);
        // SAFETY: `counter` lives on this thread's stack for as long as the ring does.
        unsafe { ring.submission().push(&e) }.expect("slot reserved for the eventfd read");
    };
    arm(&mut ring, &mut counter);
    let mut open = true;
    loop {
        wake.sleeping.store(true, Ordering::SeqCst);
        // Jobs first resubmitted, then new ones, while there are free slots.
        while let Some(slot) = free.pop() {
            let job = match retry.pop() {
                Some(j) => j,
                None => match rx.try_recv() {
                    Ok(j) => j,
                    Err(mpsc::TryRecvError::Empty) => {
                        free.push(slot);
                        break;
                    }
                    Err(mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        free.push(slot);
                        break;
                    }
                },
            };
            let mut job = job;
            let sqe = sqe_for(&mut job, slot as u64);
            slots[slot] = Some(job);
            // SAFETY: the job (and its buffer and file) stays in `slots` until its completion.
            unsafe { ring.submission().push(&sqe) }.expect("free slot implies free SQ entry");
        }
        if !open && free.len() == capacity {
            return;
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => panic!("io_uring_enter failed: {e}"),
        }
        wake.sleeping.store(false, Ordering::SeqCst);
        let done: Vec<(u64, i32)> = ring.completion().map(|c| (c.user_data(), c.result())).collect();
        for (token, res) in done {
            if token == EVENTFD_TOKEN {
                arm(&mut ring, &mut counter);
                continue;
            }
            let slot = token as usize;
            let job = slots[slot].take().expect("completion for a live slot");
            free.push(slot);
            if let Some(again) = complete(job, res) {
                retry.push(again);
            }
        }
    }
}
