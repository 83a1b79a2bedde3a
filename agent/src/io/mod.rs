//! Datastore I/O: io_uring on a dedicated thread, or plain pread/pwrite on tokio's blocking
//! pool where io_uring is unavailable (old kernels, container seccomp profiles).

pub mod buf;
pub mod uring;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::{info, warn};

pub use buf::{AlignedBuf, BufPool};
use uring::{Job, JobOp, Uring};

/// Which I/O engine the operator asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum EngineChoice {
    /// io_uring when it works, else pread/pwrite.
    #[default]
    Auto,
    IoUring,
    Pread,
}

#[derive(Debug)]
pub enum Engine {
    Uring(Uring),
    Blocking,
}

impl Engine {
    pub fn start(choice: EngineChoice, entries: u32) -> io::Result<Engine> {
        match choice {
            EngineChoice::Pread => {
                info!("datastore I/O: pread/pwrite (configured)");
                Ok(Engine::Blocking)
            }
            EngineChoice::IoUring => Uring::start(entries).map(Engine::Uring).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("io_uring is unavailable ({e}); set io.engine = \"pread\" or \"auto\""),
                )
            }),
            EngineChoice::Auto => match Uring::start(entries) {
                Ok(u) => {
                    info!(entries, "datastore I/O: io_uring");
                    Ok(Engine::Uring(u))
                }
                Err(e) => {
                    warn!(error = %e, "io_uring is unavailable; datastore I/O falls back to pread/pwrite");
                    Ok(Engine::Blocking)
                }
            },
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Engine::Uring(_) => "io-uring",
            Engine::Blocking => "pread",
        }
    }

    async fn uring_job(
        u: &Uring,
        op: JobOp,
        file: &Arc<File>,
        buf: Option<AlignedBuf>,
    ) -> (io::Result<()>, Option<AlignedBuf>) {
        let (tx, rx) = oneshot::channel();
        u.submit(Job::new(op, file.clone(), buf, tx));
        rx.await
            .unwrap_or_else(|_| (Err(io::Error::other("io_uring thread dropped a job")), None))
    }

    async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| io::Error::other(format!("I/O task failed: {e}")))?
    }

    /// Fills `buf` from `offset`; bytes past the end of the file read as zeroes.
    pub async fn read(&self, file: &Arc<File>, offset: u64, buf: AlignedBuf) -> io::Result<AlignedBuf> {
        match self {
            Engine::Uring(u) => {
                let (r, buf) = Self::uring_job(u, JobOp::Read { offset }, file, Some(buf)).await;
                r.map(|_| buf.expect("read returns its buffer"))
            }
            Engine::Blocking => {
                let file = file.clone();
                Self::blocking(move || {
                    let mut buf = buf;
                    let mut done = 0;
                    let b = buf.as_mut();
                    while done < b.len() {
                        match file.read_at(&mut b[done..], offset + done as u64) {
                            Ok(0) => {
                                b[done..].fill(0);
                                break;
                            }
                            Ok(n) => done += n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(buf)
                })
                .await
            }
        }
    }

    /// Writes all of `buf` at `offset`; with `dsync` it is durable on return. The buffer is
    /// handed back so its memory returns to the pool.
    pub async fn write(&self, file: &Arc<File>, offset: u64, buf: AlignedBuf, dsync: bool) -> io::Result<()> {
        match self {
            Engine::Uring(u) => {
                Self::uring_job(u, JobOp::Write { offset, dsync }, file, Some(buf))
                    .await
                    .0
            }
            Engine::Blocking => {
                let file = file.clone();
                Self::blocking(move || {
                    file.write_all_at(buf.as_ref(), offset)?;
                    if dsync {
                        file.sync_data()?;
                    }
                    Ok(())
                })
                .await
            }
        }
    }

    pub async fn fdatasync(&self, file: &Arc<File>) -> io::Result<()> {
        match self {
            Engine::Uring(u) => Self::uring_job(u, JobOp::Fdatasync, file, None).await.0,
            Engine::Blocking => {
                let file = file.clone();
                Self::blocking(move || file.sync_data()).await
            }
        }
    }

    /// `fallocate(2)` with raw `FALLOC_FL_*` mode bits.
    pub async fn fallocate(&self, file: &Arc<File>, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        match self {
            Engine::Uring(u) => {
                Self::uring_job(u, JobOp::Fallocate { mode, offset, len }, file, None)
                    .await
                    .0
            }
            Engine::Blocking => {
                let file = file.clone();
                Self::blocking(move || {
                    let flags = rustix::fs::FallocateFlags::from_bits_retain(mode as u32);
                    rustix::fs::fallocate(&*file, flags, offset, len).map_err(io::Error::from)
                })
                .await
            }
        }
    }
}
