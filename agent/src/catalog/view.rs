//! A checkpoint view: one volume of a replica as it was at a checkpoint, read from the
//! replica with the history before the checkpoint laid over it; read-only, its point
//! pinned (aging never passes it) while the view lives.

use std::sync::Arc;

use ferry_nbd::wire::Errno;
use ferry_nbd::{Export, ExportError, ExportInfo, ExportResult, Extent, ZeroMode};

use crate::io::{BufPool, IoBuf};
use crate::recover::replica::{Pin, Replica};

/// One volume of a replica as it was at a checkpoint.
#[derive(Debug)]
pub struct View {
    pub(super) replica: Arc<Replica>,
    pub(super) volume: u32,
    pub(super) info: ExportInfo,
    pub(super) pool: Arc<BufPool>,
    pub(super) _pin: Arc<Pin>,
}

fn read_only() -> ExportError {
    ExportError::new(Errno::EPERM, "a checkpoint export is read-only")
}

impl Export for View {
    type Buf = IoBuf;

    fn info(&self) -> &ExportInfo {
        &self.info
    }

    fn buffer(&self, len: usize) -> IoBuf {
        IoBuf::Plain(self.pool.take(len))
    }

    async fn read(&self, offset: u64, buf: IoBuf) -> ExportResult<IoBuf> {
        let (r, vol, below) = (self.replica.clone(), self.volume, self._pin.seq);
        super::read_off_reactor("checkpoint read", buf, move |b| r.read_at(vol, offset, b, below)).await
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

    async fn block_status(&self, offset: u64, len: u64, _extents_max: usize) -> ExportResult<Vec<Extent>> {
        let end = (offset + len).min(self.info.size_bytes);
        Ok(vec![Extent {
            length: end - offset,
            flags: 0,
        }])
    }
}

impl super::overlay::Base for View {
    fn read_base(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.replica.read_at(self.volume, offset, buf, self._pin.seq)
    }
}
