//! A live failover's export: a volume of the failed-over VPG served under its production
//! name, first over its overlay on the checkpoint, then (once committed) by the plain
//! volume the commit made. Connections opened before the commit keep working: each request
//! goes to where the volume is now, and a write that waited on the overlay's last copy
//! pass (it was sealed meanwhile) is done again on the volume.

use std::sync::{Arc, Mutex, RwLock};

use ferry_nbd::{Export, ExportError, ExportInfo, ExportResult, Extent, ZeroMode};

use super::View;
use super::overlay::{Overlay, SEALED};
use crate::io::IoBuf;
use crate::protect::volume::Volume;

#[derive(Debug, Clone)]
enum Target {
    Overlay(Arc<Overlay<View>>),
    Volume(Arc<Volume>),
}

/// One volume of a live failover, as NBD serves it.
#[derive(Debug)]
pub struct Switch {
    info: ExportInfo,
    target: RwLock<Target>,
    /// The ranges written since [`Switch::start_recording`] (a commit's start), until
    /// taken: with the overlay's, what this site changed since the failover. `None`: not
    /// recording, or too many to keep (then unknown).
    recorded: Mutex<Option<Vec<(u64, u64)>>>,
}

/// Ranges kept before merging; past this many after merging, the record is given up.
const RECORDED_MAX: usize = 1 << 16;

fn sealed(r: &ExportResult<()>) -> bool {
    matches!(r, Err(e) if e.message == SEALED)
}

impl Switch {
    pub fn new(overlay: Arc<Overlay<View>>) -> Switch {
        Switch {
            info: overlay.info().clone(),
            target: RwLock::new(Target::Overlay(overlay)),
            recorded: Mutex::new(None),
        }
    }

    /// Records the ranges written from now on (see [`Switch::take_recorded`]).
    pub fn start_recording(&self) {
        *self.recorded.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
    }

    /// The ranges written since [`Switch::start_recording`], merged; recording stops.
    /// `None` if it was not recording or gave up (too many ranges).
    pub fn take_recorded(&self) -> Option<Vec<(u64, u64)>> {
        self.recorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .map(crate::ranges::merge)
    }

    fn record(&self, offset: u64, len: u64) {
        let mut g = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = g.as_mut() {
            v.push((offset, len));
            if v.len() > RECORDED_MAX {
                *v = crate::ranges::merge(std::mem::take(v));
                if v.len() > RECORDED_MAX / 2 {
                    tracing::warn!(
                        "too many regions written since the commit to keep: reverse protection compares every region"
                    );
                    *g = None;
                }
            }
        }
    }

    fn target(&self) -> Target {
        self.target.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// From now on every request goes to `v` (the commit made it).
    pub fn move_to(&self, v: Arc<Volume>) {
        *self.target.write().unwrap_or_else(|e| e.into_inner()) = Target::Volume(v);
    }

    /// The overlay, while the volume is served from it.
    pub fn overlay(&self) -> Option<Arc<Overlay<View>>> {
        match self.target() {
            Target::Overlay(o) => Some(o),
            Target::Volume(_) => None,
        }
    }

    /// A write's bytes in a buffer `v` takes: a captured one if `v` is in a VPG (reverse
    /// protection made one of it after connections were opened through the switch).
    fn for_volume(v: &Volume, offset: u64, buf: IoBuf) -> IoBuf {
        if matches!(buf, IoBuf::Plain(_)) && v.member().is_some() {
            let mut b = v.write_buffer(offset, buf.len());
            b.as_mut().copy_from_slice(buf.as_ref());
            b
        } else {
            buf
        }
    }

    /// The volume, after the commit.
    fn volume(&self) -> ExportResult<Arc<Volume>> {
        match self.target() {
            Target::Volume(v) => Ok(v),
            Target::Overlay(_) => Err(ExportError::new(
                ferry_nbd::wire::Errno::EIO,
                "internal: an overlay sealed before its volume was in place",
            )),
        }
    }
}

impl Export for Switch {
    type Buf = IoBuf;

    fn info(&self) -> &ExportInfo {
        &self.info
    }

    fn buffer(&self, len: usize) -> IoBuf {
        match self.target() {
            Target::Overlay(o) => o.buffer(len),
            Target::Volume(v) => v.buffer(len),
        }
    }

    fn write_buffer(&self, offset: u64, len: usize) -> IoBuf {
        match self.target() {
            Target::Overlay(o) => o.buffer(len),
            Target::Volume(v) => v.write_buffer(offset, len),
        }
    }

    async fn read(&self, offset: u64, buf: IoBuf) -> ExportResult<IoBuf> {
        match self.target() {
            Target::Overlay(o) => o.read(offset, buf).await,
            Target::Volume(v) => v.read(offset, buf).await,
        }
    }

    async fn write(&self, offset: u64, buf: IoBuf, fua: bool) -> ExportResult<()> {
        self.record(offset, buf.len() as u64);
        match self.target() {
            Target::Overlay(o) => {
                // The overlay copies the bytes anyway; a copy kept here is written again
                // to the volume if the overlay was sealed meanwhile.
                let data = buf.as_ref().to_vec();
                let r = o.write(offset, buf, fua).await;
                if !sealed(&r) {
                    return r;
                }
                let v = self.volume()?;
                let mut b = v.write_buffer(offset, data.len());
                b.as_mut().copy_from_slice(&data);
                v.write(offset, b, fua).await
            }
            Target::Volume(v) => {
                let buf = Self::for_volume(&v, offset, buf);
                v.write(offset, buf, fua).await
            }
        }
    }

    async fn flush(&self) -> ExportResult<()> {
        match self.target() {
            Target::Overlay(o) => o.flush().await,
            Target::Volume(v) => v.flush().await,
        }
    }

    async fn trim(&self, offset: u64, len: u64, fua: bool) -> ExportResult<()> {
        self.record(offset, len);
        if let Target::Overlay(o) = self.target() {
            let r = o.trim(offset, len, fua).await;
            if !sealed(&r) {
                return r;
            }
        }
        self.volume()?.trim(offset, len, fua).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, mode: ZeroMode) -> ExportResult<()> {
        self.record(offset, len);
        if let Target::Overlay(o) = self.target() {
            let r = o.write_zeroes(offset, len, mode).await;
            if !sealed(&r) {
                return r;
            }
        }
        self.volume()?.write_zeroes(offset, len, mode).await
    }

    async fn cache(&self, offset: u64, len: u64) -> ExportResult<()> {
        match self.target() {
            Target::Overlay(o) => o.cache(offset, len).await,
            Target::Volume(v) => v.cache(offset, len).await,
        }
    }

    async fn block_status(&self, offset: u64, len: u64, extents_max: usize) -> ExportResult<Vec<Extent>> {
        match self.target() {
            Target::Overlay(o) => o.block_status(offset, len, extents_max).await,
            Target::Volume(v) => v.block_status(offset, len, extents_max).await,
        }
    }
}
