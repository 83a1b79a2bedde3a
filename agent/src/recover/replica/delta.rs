//! What a delta sync asks of a replica: the checksums of its regions at a point, and,
//! for a replica made of a demoted site's volumes (reverse protection), which regions that
//! site changed since the failover (the rest is answered unchanged without being read).
//! Also the regions the protected site wrote after a checkpoint (kept for salvage, and
//! known changed, at a commit).

use super::*;

/// `changed.json` of a replica made of a demoted site's volumes: what that site changed
/// since the failover of `epoch` (see [`Replica::changed_since_failover`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChangedSinceFailover {
    pub epoch: u64,
    pub regions: BTreeMap<String, Vec<(u64, u64)>>,
}

pub fn changed_path(dir: &Path) -> PathBuf {
    dir.join("changed.json")
}

impl Replica {
    /// Whether history still holds every record from `seq` on (none was applied to the
    /// images and dropped since).
    pub fn holds_since(&self, seq: u64) -> bool {
        self.pins.lock().unwrap_or_else(|e| e.into_inner()).floor <= seq
    }

    /// Delta sync: SHA-256 (first 16 bytes) of each of `count` regions of `region_bytes`
    /// from `offset` of `volume`, as they were just before `at_seq`; `None` when the
    /// replica no longer holds that point. The last region may be short (volume end).
    pub fn sums(
        &self,
        volume: u32,
        offset: u64,
        region_bytes: u32,
        count: u32,
        at_seq: u64,
        unchanged_ok: bool,
    ) -> Option<Vec<[u8; 16]>> {
        let floor = || self.pins.lock().unwrap_or_else(|e| e.into_inner()).floor;
        let (_, name, size) = self.volumes().into_iter().find(|v| v.0 == volume)?;
        if at_seq < floor() || region_bytes == 0 || count > 4096 {
            return None;
        }
        // Regions this site changed since the failover its images come from (the rest is
        // the failover's checkpoint, as there), when asked and known.
        let changed = unchanged_ok
            .then(|| self.changed_since_failover())
            .flatten()
            .map(|c| c.get(&name).cloned().unwrap_or_default());
        let mut out = Vec::with_capacity(count as usize);
        let mut buf = vec![0u8; region_bytes as usize];
        for i in 0..u64::from(count) {
            let off = offset + i * u64::from(region_bytes);
            if off >= size {
                break;
            }
            let n = (size - off).min(u64::from(region_bytes)) as usize;
            if let Some(c) = &changed
                && !crate::ranges::overlaps(c, off, n as u64)
            {
                out.push(ferry_proto::message::UNCHANGED_SUM);
                continue;
            }
            self.read_at(volume, off, &mut buf[..n], at_seq).ok()?;
            out.push(ferry_proto::message::region_sum(&buf[..n]));
        }
        // The point must still have been held while reading (no apply began past it).
        (floor() <= at_seq).then_some(out)
    }

    /// What this site changed since the failover its images come from, by volume name: set
    /// when a protected site was demoted into this replica (reverse protection), for the
    /// replica's epoch only. `None`: not known.
    pub fn changed_since_failover(&self) -> Option<BTreeMap<String, Vec<(u64, u64)>>> {
        let c: ChangedSinceFailover = crate::meta::fetch(&changed_path(&self.dir), crate::meta::CHANGED)
            .ok()??
            .value;
        (c.epoch == self.spec().epoch).then_some(c.regions)
    }

    /// The regions written by the records of history at or past `from_seq`, by volume
    /// (sorted, merged): what the protected site wrote after a checkpoint.
    pub fn regions_since(&self, from_seq: u64) -> Result<BTreeMap<u32, Vec<(u64, u64)>>, AgentError> {
        let mut out: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
        let (floor, firsts): (u64, Vec<u64>) = {
            let h = self.hist.read().unwrap_or_else(|e| e.into_inner());
            let firsts = h
                .live_segments(u64::MAX)
                .filter(|g| g.next_seq > from_seq)
                .map(|g| g.first_seq)
                .collect();
            (h.floor, firsts)
        };
        for first in firsts {
            let recs = self.segment_records(first)?;
            for r in recs.iter().filter(|r| r.seq >= from_seq.max(floor)) {
                if r.kind != RecordKind::Checkpoint && r.length > 0 {
                    out.entry(r.volume).or_default().push((r.offset, r.length));
                }
            }
        }
        for v in out.values_mut() {
            *v = crate::ranges::merge(std::mem::take(v));
        }
        Ok(out)
    }
}
