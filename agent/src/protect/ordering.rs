//! Write ordering within a VPG: writes in flight in sequence order, for the overlap rule
//! (a write waits for every earlier-sequenced write to an overlapping range to finish
//! before it is issued, so the datastore ends as the journal's order says; writes that do
//! not overlap never wait) and for the sync's wait.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Writes in flight per VPG, in sequence order, for the overlap rule (and the sync's wait).
#[derive(Debug, Default)]
pub struct Inflight {
    state: Mutex<InflightState>,
    changed: tokio::sync::Notify,
    /// Tasks waiting on `changed`: a finishing write wakes them only if there are some.
    waiting: std::sync::atomic::AtomicUsize,
}

#[derive(Debug, Default)]
pub(crate) struct InflightState {
    pub(crate) next: u64,
    live: BTreeMap<u64, (u32, u64, u64)>,
    /// The highest ticket whose write has finished (its client may have been answered).
    done_max: Option<u64>,
}

/// A write's place among the VPG's writes in flight; leaving it (drop) lets later
/// overlapping writes go.
#[derive(Debug)]
pub struct Ticket {
    inflight: Arc<Inflight>,
    id: u64,
    /// In `live` (its range is known); a guessed write's ticket is not until placed.
    placed: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.placed {
            let mut st = self.inflight.lock();
            st.live.remove(&self.id);
            st.done_max = st.done_max.max(Some(self.id));
        }
        if self.inflight.waiting.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            self.inflight.changed.notify_waiters();
        }
    }
}

impl Inflight {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, InflightState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a ticket and, under the same lock, does `f` (which takes the journal's
    /// sequence number): ticket order and sequence order agree.
    pub(crate) fn register<T>(
        self: &Arc<Self>,
        volume: u32,
        offset: u64,
        len: u64,
        f: impl FnOnce() -> T,
    ) -> (Ticket, T) {
        self.take(Some((volume, offset, offset + len.max(1))), f)
    }

    /// Takes a ticket for a write whose range is not known yet (a guess), with `f` as in
    /// [`Inflight::register`]. It joins the writes in flight at [`Inflight::place`].
    pub(crate) fn register_unplaced<T>(self: &Arc<Self>, f: impl FnOnce() -> T) -> (Ticket, T) {
        self.take(None, f)
    }

    fn take<T>(self: &Arc<Self>, range: Option<(u32, u64, u64)>, f: impl FnOnce() -> T) -> (Ticket, T) {
        let mut st = self.lock();
        let id = st.next;
        st.next += 1;
        if let Some(r) = range {
            st.live.insert(id, r);
        }
        let t = f();
        drop(st);
        (
            Ticket {
                inflight: self.clone(),
                id,
                placed: range.is_some(),
            },
            t,
        )
    }

    /// Places a guessed write's ticket at its range, if its early place in the order is
    /// still right: no later write may overlap it while in flight (the datastore would see
    /// them in the other order) nor have finished (its client may have sent this write
    /// because of it, so this one must come after it). `false`: take a new ticket.
    pub(crate) fn place(&self, t: &mut Ticket, volume: u32, offset: u64, len: u64) -> bool {
        let mut st = self.lock();
        let end = offset + len.max(1);
        let later_done = st.done_max.is_some_and(|d| d > t.id);
        let later_overlaps = st
            .live
            .range(t.id + 1..)
            .any(|(_, &(ov, os, oe))| ov == volume && os < end && offset < oe);
        if later_done || later_overlaps {
            return false;
        }
        st.live.insert(t.id, (volume, offset, end));
        t.placed = true;
        true
    }

    /// Waits until `cond` holds over the live writes, re-checking whenever one finishes.
    async fn wait_until(&self, cond: impl Fn(&InflightState) -> bool) {
        use std::sync::atomic::Ordering::SeqCst;
        if cond(&self.lock()) {
            return; // the usual case: nothing to wait for, no waiter registered
        }
        self.waiting.fetch_add(1, SeqCst);
        // Deregisters even when the waiting future is dropped.
        struct Leave<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let _leave = Leave(&self.waiting);
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cond(&self.lock()) {
                return;
            }
            notified.await;
        }
    }

    /// Waits for every earlier write overlapping this one to finish.
    pub(crate) async fn wait_earlier(&self, t: &Ticket) {
        let Some(&(v, start, end)) = self.lock().live.get(&t.id) else {
            return;
        };
        self.wait_until(|st| {
            !st.live
                .range(..t.id)
                .any(|(_, &(ov, os, oe))| ov == v && os < end && start < oe)
        })
        .await
    }

    /// Waits for every write that took a ticket before `before` to finish.
    pub(crate) async fn wait_before(&self, before: u64) {
        self.wait_until(|st| st.live.range(..before).next().is_none()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guessed write keeps the place in the order it took early only if no later write
    /// overlaps it in flight or has finished before the guess was placed.
    #[test]
    fn a_guessed_write_is_placed_only_where_its_early_turn_still_holds() {
        let inflight = Arc::new(Inflight::default());
        let (mut guessed, ()) = inflight.register_unplaced(|| ());
        let (later, ()) = inflight.register(1, 8192, 4096, || ());
        assert!(
            !inflight.place(&mut guessed, 1, 8192, 4096),
            "a later write of the same blocks is in flight"
        );
        assert!(
            inflight.place(&mut guessed, 2, 8192, 4096),
            "the same offset of another volume does not overlap"
        );
        drop(guessed);

        let (mut guessed, ()) = inflight.register_unplaced(|| ());
        assert!(
            inflight.place(&mut guessed, 1, 0, 4096),
            "a later write elsewhere, still running"
        );
        drop(guessed);

        let (mut guessed, ()) = inflight.register_unplaced(|| ());
        let (other, ()) = inflight.register(1, 1 << 20, 4096, || ());
        drop(other);
        assert!(
            !inflight.place(&mut guessed, 1, 0, 4096),
            "a later write has finished: its client may have sent this one because of it"
        );
        drop(later);
        // An unplaced ticket that goes away counts as no write.
        let (first, ()) = inflight.register_unplaced(|| ());
        let (mut second, ()) = inflight.register_unplaced(|| ());
        let done_before = inflight.lock().done_max;
        drop(first);
        assert_eq!(inflight.lock().done_max, done_before);
        assert!(
            inflight.place(&mut second, 1, 0, 4096),
            "every finished write came before it, the dropped guess is no write"
        );
        assert_eq!(inflight.lock().live.len(), 1);
        drop(second);
        assert!(inflight.lock().live.is_empty());
    }
}
