//! An export in memory that guesses along with the server's reader (it hands out a buffer
//! for every guessed WRITE) and counts its buffers: shared by the guessing test and the
//! `nbd_stream` fuzz target.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ferry_nbd::{Catalog, Export, ExportInfo, ExportResult, Extent, ZeroMode};

/// A buffer that counts the live ones, so a leaked or doubly dropped guess shows.
pub struct Buf {
    pub bytes: Vec<u8>,
    pub live: Arc<AtomicI64>,
}

impl Drop for Buf {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AsRef<[u8]> for Buf {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl AsMut<[u8]> for Buf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl ferry_nbd::IoBuffer for Buf {}

pub struct Mem {
    pub info: ExportInfo,
    pub data: Mutex<Vec<u8>>,
    /// Buffers not dropped yet.
    pub live: Arc<AtomicI64>,
    /// Buffers handed out on a guess, and those the server used.
    pub guessed: AtomicUsize,
    pub placed: AtomicUsize,
}

impl Mem {
    fn buf(&self, len: usize) -> Buf {
        self.live.fetch_add(1, Ordering::SeqCst);
        Buf {
            bytes: vec![0; len],
            live: self.live.clone(),
        }
    }
}

impl Export for Mem {
    type Buf = Buf;
    fn info(&self) -> &ExportInfo {
        &self.info
    }
    fn buffer(&self, len: usize) -> Buf {
        self.buf(len)
    }
    fn speculative_buffer(&self, len: usize) -> Option<Buf> {
        self.guessed.fetch_add(1, Ordering::SeqCst);
        Some(self.buf(len))
    }
    fn place_buffer(&self, buf: Buf, _: u64, _: usize) -> Buf {
        self.placed.fetch_add(1, Ordering::SeqCst);
        buf
    }
    fn copy_once(&self) -> bool {
        true
    }
    async fn read(&self, off: u64, mut b: Buf) -> ExportResult<Buf> {
        let n = b.bytes.len();
        b.bytes
            .copy_from_slice(&self.data.lock().unwrap()[off as usize..off as usize + n]);
        Ok(b)
    }
    async fn write(&self, off: u64, b: Buf, _: bool) -> ExportResult<()> {
        self.data.lock().unwrap()[off as usize..off as usize + b.bytes.len()].copy_from_slice(&b.bytes);
        Ok(())
    }
    async fn flush(&self) -> ExportResult<()> {
        Ok(())
    }
    async fn trim(&self, off: u64, len: u64, _: bool) -> ExportResult<()> {
        self.data.lock().unwrap()[off as usize..(off + len) as usize].fill(0);
        Ok(())
    }
    async fn write_zeroes(&self, off: u64, len: u64, _: ZeroMode) -> ExportResult<()> {
        self.data.lock().unwrap()[off as usize..(off + len) as usize].fill(0);
        Ok(())
    }
    async fn cache(&self, _: u64, _: u64) -> ExportResult<()> {
        Ok(())
    }
    async fn block_status(&self, _: u64, len: u64, _: usize) -> ExportResult<Vec<Extent>> {
        Ok(vec![Extent { length: len, flags: 0 }])
    }
}

pub struct One(pub Arc<Mem>);

impl Catalog for One {
    type Export = Mem;
    fn open(&self, name: &str) -> Option<Arc<Mem>> {
        (name == "x").then(|| self.0.clone())
    }
    fn list(&self) -> Vec<(String, String)> {
        vec![("x".into(), String::new())]
    }
}

impl Mem {
    pub fn new(info: ExportInfo, data: Vec<u8>) -> Arc<Mem> {
        Arc::new(Mem {
            info,
            data: Mutex::new(data),
            live: Arc::new(AtomicI64::new(0)),
            guessed: AtomicUsize::new(0),
            placed: AtomicUsize::new(0),
        })
    }
}

/// The client's half of a fixed-newstyle handshake for export "x" by NBD_OPT_EXPORT_NAME
/// (so replies are simple); returns the export's size.
pub async fn handshake(client: &mut tokio::net::UnixStream) -> std::io::Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut greeting = [0u8; 18];
    client.read_exact(&mut greeting).await?;
    client.write_all(&1u32.to_be_bytes()).await?;
    let mut opt = 0x4948_4156_454f_5054u64.to_be_bytes().to_vec();
    opt.extend_from_slice(&1u32.to_be_bytes());
    opt.extend_from_slice(&1u32.to_be_bytes());
    opt.push(b'x');
    client.write_all(&opt).await?;
    let mut export = [0u8; 8 + 2 + 124];
    client.read_exact(&mut export).await?;
    Ok(u64::from_be_bytes(export[..8].try_into().unwrap()))
}
