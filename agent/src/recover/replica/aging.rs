//! Aging: history older than the window (or past the hard limit) is applied to the
//! replica image in sequence order, at checkpoint boundaries, never past a pinned point;
//! a failed apply raises an event and is retried with backoff.

use super::*;

impl Replica {
    /// Applies to the replica images every history record below `until` (raised to an
    /// interrupted apply's end; never past a pin), syncs them, stores the new applied point
    /// and deletes the segments wholly below it. No lock is held across I/O or across
    /// another lock's acquisition: an error leaves the replica consistent (the record that
    /// failed stays in the index, laid over the images by every read) and is retried.
    fn apply_below(&self, until: u64) -> Result<u64, AgentError> {
        let until = {
            let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
            let lowest_pin = pins.held.keys().next().copied().unwrap_or(u64::MAX);
            let until = until.max(pins.floor).min(lowest_pin.max(pins.floor));
            pins.floor = until;
            until
        };
        let (applied, intent) = {
            let mut m = self.meta.lock().unwrap_or_else(|e| e.into_inner());
            let intent = (m.applying_until < until).then(|| {
                m.applying_until = until;
                m.clone()
            });
            (m.applied_seq, intent)
        };
        if let Some(copy) = intent {
            // The intent is durable before the images change: a crash mid-apply is
            // finished after the restart.
            self.save_meta(&copy)?;
        }
        let mut count = 0u64;
        // Segment by segment, in sequence order: each record is written to the images
        // before the floor passes it, so reads lay it over them until it is there.
        while let Some((first, file)) = self.first_live_segment(until) {
            for r in self.segment_records(first)? {
                let floor = self.hist.read().unwrap_or_else(|e| e.into_inner()).floor;
                if r.seq < floor {
                    continue;
                }
                if r.seq >= until {
                    break;
                }
                self.apply_one(&r, &file)
                    .map_err(|e| AgentError::io("cannot apply a history record to the replica", &self.dir, e))?;
                let mut h = self.hist.write().unwrap_or_else(|e| e.into_inner());
                h.floor = r.seq + 1;
                h.live = h.live.saturating_sub(1);
                count += 1;
            }
            let mut h = self.hist.write().unwrap_or_else(|e| e.into_inner());
            let end = h.segments.get(&first).map_or(until, |g| g.next_seq);
            h.floor = h.floor.max(end.min(until));
        }
        let oldest = self.first_live_record()?;
        self.hist.write().unwrap_or_else(|e| e.into_inner()).oldest_ms = oldest.map(|r| r.received_ms);
        for (_, f) in self.images.values() {
            f.sync_data()
                .map_err(|e| AgentError::io("cannot sync replica image", &self.dir, e))?;
        }
        let new_applied = applied.max(until);
        let copy = {
            let mut m = self.meta.lock().unwrap_or_else(|e| e.into_inner());
            m.applied_seq = new_applied;
            m.applying_until = m.applying_until.max(new_applied);
            m.clone()
        };
        self.save_meta(&copy)?;
        // Segments whose records are all applied: every segment before the one holding the
        // oldest record still in history, never the one being written. They leave the
        // index under its lock (the writer's first, the order `append` takes them in, so
        // no segment is begun meanwhile); their files are deleted after both are let go.
        let doomed: Vec<Segment> = {
            let w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            let current = w.current;
            let mut h = self.hist.write().unwrap_or_else(|e| e.into_inner());
            h.checkpoints.retain(|&seq, _| seq >= new_applied);
            let floor = h.floor;
            let ids: Vec<u64> = h
                .segments
                .values()
                .filter(|g| g.next_seq <= floor && Some(g.first_seq) != current)
                .map(|g| g.first_seq)
                .collect();
            let gone: Vec<Segment> = ids.iter().filter_map(|s| h.segments.remove(s)).collect();
            h.bytes -= gone.iter().map(|g| g.bytes).sum::<u64>();
            gone
        };
        for seg in doomed {
            // The segment before its index: a read that finds the index reads the data
            // through the file it holds open.
            for p in [seg.path.clone(), seg.index_path()] {
                if let Err(e) = std::fs::remove_file(&p)
                    && e.kind() != io::ErrorKind::NotFound
                {
                    error!(segment = %p.display(), error = %e, "cannot delete an applied history segment");
                }
            }
            segments::cache_forget((self.cache_id, seg.first_seq));
        }
        Ok(count)
    }

    /// The first segment that holds records at or past the floor and below `until`, and
    /// its file.
    fn first_live_segment(&self, until: u64) -> Option<(u64, Arc<File>)> {
        let h = self.hist.read().unwrap_or_else(|e| e.into_inner());
        if h.floor >= until {
            return None;
        }
        h.live_segments(until).next().map(|g| (g.first_seq, g.file.clone()))
    }

    /// A segment's records in sequence order: from memory, or read from its index (no
    /// lock held across the read).
    pub(super) fn segment_records(&self, first: u64) -> Result<Vec<Rec>, AgentError> {
        let path = {
            let h = self.hist.read().unwrap_or_else(|e| e.into_inner());
            let Some(g) = h.segments.get(&first) else {
                return Ok(Vec::new());
            };
            if let Some(m) = &g.mem {
                return Ok(m.by_seq.clone());
            }
            g.path.clone()
        };
        segments::read_records(&path, self.spec().id, first)
            .map_err(|e| AgentError::io("cannot read history index", &path, e))
    }

    /// The oldest record not yet applied.
    fn first_live_record(&self) -> Result<Option<Rec>, AgentError> {
        let firsts: Vec<u64> = {
            let h = self.hist.read().unwrap_or_else(|e| e.into_inner());
            h.live_segments(u64::MAX)
                .filter(|g| g.records > 0)
                .map(|g| g.first_seq)
                .collect()
        };
        for first in firsts {
            let floor = self.hist.read().unwrap_or_else(|e| e.into_inner()).floor;
            if let Some(r) = self.segment_records(first)?.into_iter().find(|r| r.seq >= floor) {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    fn apply_one(&self, r: &Rec, seg: &File) -> io::Result<()> {
        let Some((_, img)) = self.images.get(&r.volume) else {
            return Ok(());
        };
        match r.kind {
            RecordKind::Write => {
                let mut buf = vec![0u8; r.length as usize];
                seg.read_exact_at(&mut buf, r.data_pos)?;
                img.write_all_at(&buf, r.offset)
            }
            RecordKind::Trim | RecordKind::WriteZeroes => rustix::fs::fallocate(
                &**img,
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                r.offset,
                r.length,
            )
            .map_err(io::Error::from)
            .or_else(|_| {
                let zeros = vec![0u8; r.length.min(1 << 20) as usize];
                let mut pos = r.offset;
                while pos < r.offset + r.length {
                    let n = (r.offset + r.length - pos).min(zeros.len() as u64) as usize;
                    img.write_all_at(&zeros[..n], pos)?;
                    pos += n as u64;
                }
                Ok(())
            }),
            RecordKind::Checkpoint => Ok(()),
        }
    }

    /// One aging pass (see the module docs); returns the records applied. The replica is
    /// moved from checkpoint to checkpoint, so it is itself always a consistent point
    /// (exportable once its history has all aged), except when over the hard limit with no
    /// checkpoint to stop at.
    fn age(&self, now: u64) -> Result<u64, AgentError> {
        let spec = self.spec();
        let window_ms = spec.history_secs.saturating_mul(1000);
        let (pin, floor) = {
            let p = self.pins.lock().unwrap_or_else(|e| e.into_inner());
            (p.held.keys().next().copied(), p.floor)
        };
        // Too old: below the first record young enough to stay, back to the newest
        // checkpoint at or below that. Segments wholly too old are passed by their summary;
        // the records of the one the window's edge falls in are read.
        let edge = {
            let h = self.hist.read().unwrap_or_else(|e| e.into_inner());
            let mut edge = Err(h.next_seq);
            for g in h.live_segments(u64::MAX).filter(|g| g.records > 0) {
                if g.newest_ms + window_ms <= now {
                    continue;
                }
                edge = if g.oldest_ms + window_ms > now {
                    Err(g.first_seq.max(h.floor))
                } else {
                    Ok(g.first_seq)
                };
                break;
            }
            edge
        };
        let young = match edge {
            Err(seq) => seq,
            Ok(first) => {
                let recs = self.segment_records(first)?;
                let floor = self.hist.read().unwrap_or_else(|e| e.into_inner()).floor;
                recs.iter()
                    .find(|r| r.seq >= floor && r.received_ms + window_ms > now)
                    .map_or(self.next_seq(), |r| r.seq)
            }
        };
        let (target, over) = {
            let h = self.hist.read().unwrap_or_else(|e| e.into_inner());
            let over = spec.history_bytes_max > 0 && h.bytes > spec.history_bytes_max;
            let mut target = h.checkpoints.range(..=young).next_back().map_or(0, |(&seq, _)| seq);
            if over {
                // Over the hard limit: free at least the oldest segment.
                let second = h.segments.keys().nth(1).copied();
                if let Some(s) = second {
                    target = target.max(s);
                }
            }
            (target, over)
        };
        let target = match pin {
            Some(p) if p < target => {
                if over {
                    self.push_event(format!(
                        "history is over its hard limit ({} bytes) but a checkpoint export holds seq {p}: stop the export to let the replica catch up",
                        spec.history_bytes_max
                    ));
                }
                p
            }
            _ => target,
        }
        .max(floor);
        let applied = self.meta.lock().unwrap_or_else(|e| e.into_inner()).applied_seq;
        if target <= applied {
            return Ok(0);
        }
        let n = self.apply_below(target)?;
        if over && n > 0 {
            let oldest = self.hist.read().unwrap_or_else(|e| e.into_inner()).oldest_ms;
            let span = oldest.map_or(0, |ms| now.saturating_sub(ms) / 1000);
            self.push_event(format!(
                "history reached its hard limit ({} bytes): the oldest records were applied to the replica; {span} s of history remain",
                spec.history_bytes_max
            ));
        }
        Ok(n)
    }

    /// One aging pass unless a failed one waits for its retry (the state machine keeps the
    /// backoff and says what to tell).
    pub(crate) fn age_or_wait(&self, now: u64) {
        if !state::apply_due(&self.life(), now) {
            return;
        }
        match self.age(now) {
            Ok(_) => self.change(state::Input::Applied),
            Err(e) => {
                error!(replica = %self.dir.display(), error = %e, "history apply failed");
                self.change(state::Input::ApplyFailed {
                    why: e.to_string(),
                    now_ms: now,
                });
            }
        }
    }

    /// The state machine's facts as they are now.
    pub(crate) fn life(&self) -> Life {
        self.life.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Feeds the state machine; its events go to the replica's log. A refused input is a
    /// no-op (logged): the callers' own checks come first.
    pub(crate) fn change(&self, input: state::Input) {
        if let Err(why) = self.try_change(input.clone()) {
            tracing::debug!(replica = %self.dir.display(), ?input, %why, "replica state input refused");
        }
    }

    /// Feeds the state machine, or says why the input is refused (nothing changes then).
    pub fn try_change(&self, input: state::Input) -> Result<(), String> {
        let actions = {
            let mut g = self.life.lock().unwrap_or_else(|e| e.into_inner());
            let (next, actions) = state::step(&g, input)?;
            *g = next;
            actions
        };
        for state::Action::Event(e) in actions {
            self.push_event(format!("{e} (replica at {})", self.dir.display()));
        }
        Ok(())
    }
}
