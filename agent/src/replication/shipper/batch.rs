//! Building a batch: the next records of a VPG's journal, encoded, compressed when it
//! pays, and sealed for the link.

use super::*;

pub(super) fn cons_ack(cons: &mut Consumer<MmapStorage>, next_seq: u64) -> Result<(), String> {
    let acked = cons.journal().stats().acked_seq;
    if next_seq <= acked {
        return Ok(());
    }
    cons.ack(next_seq).map_err(|e| e.to_string())
}

pub(super) struct Built {
    pub(super) first_seq: u64,
    pub(super) end_seq: u64,
    pub(super) body: Vec<u8>,
    pub(super) plain_bytes: usize,
    pub(super) compressed: bool,
    /// Events: tagged checkpoints left out.
    pub(super) skipped: Vec<String>,
}

/// Reads settled records from `from` on into one batch of about `max_bytes`.
pub(super) fn build_batch(
    cons: &mut Consumer<MmapStorage>,
    from: u64,
    max_bytes: usize,
    level: i32,
    skip_checkpoints_below: u64,
) -> Option<Built> {
    let mut plain = Vec::with_capacity(max_bytes + (1 << 20));
    let mut end = from;
    let mut skipped = Vec::new();
    while plain.len() < max_bytes {
        let Some(r) = cons.next_record() else { break };
        let e = r.entry;
        if e.seq < from {
            continue;
        }
        end = e.seq + 1;
        fn rec<'a>(e: &ferry_journal::format::Entry, kind: RecordKind, data: &'a [u8]) -> RecordRef<'a> {
            RecordRef {
                seq: e.seq,
                kind,
                volume: e.volume,
                offset: e.offset,
                length: e.length,
                data,
            }
        }
        match e.kind {
            Kind::Write => {
                let data = &r.payload[..e.length as usize];
                // Zeroes are not sent: a write of zeroes travels as write-zeroes.
                if data.iter().all(|&b| b == 0) {
                    records::push(&mut plain, &rec(&e, RecordKind::WriteZeroes, &[]));
                } else {
                    records::push(&mut plain, &rec(&e, RecordKind::Write, data));
                }
            }
            Kind::Trim => records::push(&mut plain, &rec(&e, RecordKind::Trim, &[])),
            Kind::WriteZeroes => records::push(&mut plain, &rec(&e, RecordKind::WriteZeroes, &[])),
            Kind::Checkpoint if e.seq < skip_checkpoints_below => {
                if !r.payload.is_empty() {
                    skipped.push(format!(
                        "checkpoint {:?} (seq {}) was taken before the resync and is not kept at the recovery site",
                        String::from_utf8_lossy(r.payload),
                        e.seq
                    ));
                }
            }
            Kind::Checkpoint => records::push(
                &mut plain,
                &RecordRef {
                    seq: e.seq,
                    kind: RecordKind::Checkpoint,
                    volume: 0,
                    offset: e.offset,
                    length: 0,
                    data: r.payload,
                },
            ),
            Kind::Void => {}
        }
    }
    if end == from {
        return None;
    }
    // The batch covers from..end, voids included (they carry no record).
    let first_seq = from;
    let plain_bytes = plain.len();
    if level > 0 && plain_bytes > 0 {
        let c = records::compress(&plain, level);
        if c.len() < plain_bytes {
            return Some(Built {
                first_seq,
                end_seq: end,
                body: c,
                plain_bytes,
                compressed: true,
                skipped,
            });
        }
    }
    Some(Built {
        first_seq,
        end_seq: end,
        body: plain,
        plain_bytes,
        compressed: false,
        skipped,
    })
}
