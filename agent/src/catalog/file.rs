//! A file served read-only: what a site kept of its diverged writes (see
//! `failover::diverged`), a sparse copy of a volume holding only those regions. Holes read
//! as zeroes and show as holes in block status, so a client finds the kept regions.

use std::fs::File;
use std::sync::Arc;

use ferry_nbd::wire::Errno;
use ferry_nbd::{Export, ExportError, ExportInfo, ExportResult, Extent, ZeroMode};

use crate::io::{BufPool, IoBuf};

#[derive(Debug)]
pub struct FileExport {
    file: Arc<File>,
    info: ExportInfo,
    pool: Arc<BufPool>,
}

impl FileExport {
    pub fn new(file: File, description: String, pool: Arc<BufPool>) -> std::io::Result<FileExport> {
        let mut info = ExportInfo::new(file.metadata()?.len());
        info.read_only = true;
        info.can_trim = false;
        info.can_fast_zero = false;
        info.description = description;
        Ok(FileExport {
            file: Arc::new(file),
            info,
            pool,
        })
    }
}

fn read_only() -> ExportError {
    ExportError::new(Errno::EPERM, "diverged writes kept for salvage are read-only")
}

impl Export for FileExport {
    type Buf = IoBuf;

    fn info(&self) -> &ExportInfo {
        &self.info
    }

    fn buffer(&self, len: usize) -> IoBuf {
        IoBuf::Plain(self.pool.take(len))
    }

    async fn read(&self, offset: u64, buf: IoBuf) -> ExportResult<IoBuf> {
        let f = self.file.clone();
        super::read_off_reactor("salvage read", buf, move |b| crate::io::read_full(&f, b, offset)).await
    }

    async fn write(&self, _offset: u64, _buf: IoBuf, _fua: bool) -> ExportResult<()> {
        Err(read_only())
    }

    async fn flush(&self) -> ExportResult<()> {
        Ok(())
    }

    async fn trim(&self, _offset: u64, _len: u64, _fua: bool) -> ExportResult<()> {
        Err(read_only())
    }

    async fn write_zeroes(&self, _offset: u64, _len: u64, _mode: ZeroMode) -> ExportResult<()> {
        Err(read_only())
    }

    async fn cache(&self, _offset: u64, _len: u64) -> ExportResult<()> {
        Ok(())
    }

    async fn block_status(&self, offset: u64, len: u64, extents_max: usize) -> ExportResult<Vec<Extent>> {
        let len = len.min(self.info.size_bytes.saturating_sub(offset));
        crate::io::file_extents(&self.file, offset, len, extents_max.max(1))
            .map_err(|e| ExportError::from_io("salvage block status", &e))
    }
}
