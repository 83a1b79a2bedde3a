//! A deterministic simulation of one VPG's epochs between two sites, driven by the decisions
//! the agent itself makes: the protected site's fencing machine (`protect::state`: a fence,
//! a fence it missed, split brain, settle, unfence) and the recovery site's answer to an
//! open (`recover::state::answer_open`). Events: writes on either side, shipping,
//! partitions and heals, live failovers (graceful when connected, without the protected
//! site when not), commits, rollbacks, crashes (each site keeps what it persists), and an
//! operator's resolve of a split brain, either way.
//!
//! After every step: at most one site accepted writes in each epoch. After the last heal,
//! with the operator settling what is left (a split brain resolved, a failover committed
//! or rolled back, reverse protection), both sites converge to the kept side's bytes.
//!
//! `FERRY_SIM_SEEDS=N` runs N seeds (default 2000); `FERRY_SIM_SEED=S` replays one.

use std::collections::{BTreeMap, BTreeSet};

use crate::protect::state::{Fencing, Lifecycle, MissedFence, fence_step, on_missed_fence};
use crate::recover::state::{OpenAnswer, answer_open};

use crate::replication::session::sim::Rng;

const BLOCKS: u64 = 8;

/// The protected site: its fencing state (persisted), its volume, and its stream.
#[derive(Debug, Clone)]
struct Protected {
    life: Lifecycle,
    volume: [u64; BLOCKS as usize],
    /// (block, value) in stream order.
    stream: Vec<(u64, u64)>,
}

/// The recovery site: its replica's epoch decisions (persisted), the stream it holds, and
/// the live failover's volume while one runs here.
#[derive(Debug, Clone, Default)]
struct Recovery {
    epoch: u64,
    runs_here: Option<u64>,
    unfence_due: Option<u64>,
    held: usize,
    /// Serving since a failover at this point of the stream: its volume.
    live: Option<[u64; BLOCKS as usize]>,
    committed: bool,
    /// The protected site reported a split brain.
    split_brain: bool,
}

struct World {
    rng: Rng,
    a: Protected,
    b: Recovery,
    connected: bool,
    /// The recovery site takes the protected site's stream in this session.
    admitted: bool,
    next_value: u64,
    /// Who wrote in each epoch.
    writers: BTreeMap<u64, BTreeSet<char>>,
    log: Vec<String>,
}

fn apply(stream: &[(u64, u64)]) -> [u64; BLOCKS as usize] {
    let mut v = [0; BLOCKS as usize];
    for &(b, x) in stream {
        v[b as usize] = x;
    }
    v
}

impl World {
    fn new(seed: u64) -> World {
        let mut life = Lifecycle::new(true, false);
        life.epoch = 1;
        World {
            rng: Rng(seed),
            a: Protected {
                life,
                volume: [0; BLOCKS as usize],
                stream: Vec::new(),
            },
            b: Recovery {
                epoch: 1,
                ..Default::default()
            },
            connected: true,
            admitted: true,
            next_value: 1,
            writers: BTreeMap::new(),
            log: Vec::new(),
        }
    }

    fn note(&mut self, s: String) {
        self.log.push(s);
        if self.log.len() > 40 {
            self.log.remove(0);
        }
    }

    fn fencing(&mut self, f: Fencing) -> Result<(), String> {
        let (next, _) = fence_step(&self.a.life, f.clone()).map_err(|e| format!("{f:?} refused: {e}"))?;
        self.a.life = next;
        Ok(())
    }

    /// The protected site opens the VPG (a heal, a restart): the recovery site's answer,
    /// as the agent gives it, and what the protected site makes of it.
    fn open(&mut self) -> Result<(), String> {
        let answer = answer_open(self.b.epoch, self.b.runs_here, self.b.unfence_due, self.a.life.epoch);
        self.note(format!("open at epoch {}: {answer:?}", self.a.life.epoch));
        self.admitted = false;
        match answer {
            OpenAnswer::Fence(e) => {
                let unshipped = (self.a.stream.len() - self.b.held) as u64;
                match on_missed_fence(&self.a.life, e, unshipped) {
                    MissedFence::Stands => {}
                    MissedFence::Fence => self.fencing(Fencing::Fence {
                        epoch: e,
                        why: "b".into(),
                    })?,
                    MissedFence::SplitBrain(bytes) => {
                        self.fencing(Fencing::SplitBrain {
                            epoch: e,
                            bytes,
                            from_seq: self.b.held as u64,
                            there_bytes: 0,
                            why: "b".into(),
                        })?;
                        self.b.split_brain = true;
                    }
                    MissedFence::Report(bytes) => self.b.split_brain = bytes > 0,
                }
            }
            OpenAnswer::Unfence(e) => {
                self.fencing(Fencing::Unfence { epoch: e })?;
                if self.a.life.epoch > e {
                    return Err("unfenced below its epoch".into());
                }
                self.admitted = true;
            }
            OpenAnswer::Refuse => {}
            OpenAnswer::Admit => self.admitted = true,
        }
        if self.admitted {
            self.b.epoch = self.b.epoch.max(self.a.life.epoch);
            if self.b.unfence_due.is_some_and(|e| self.a.life.epoch > e) {
                self.b.unfence_due = None;
            }
        }
        Ok(())
    }

    fn write_a(&mut self) {
        if self.a.life.fenced.is_some() {
            return;
        }
        let (b, v) = (self.rng.below(BLOCKS), self.next_value);
        self.next_value += 1;
        self.a.volume[b as usize] = v;
        self.a.stream.push((b, v));
        self.writers.entry(self.a.life.epoch).or_default().insert('A');
    }

    fn write_b(&mut self) {
        let (Some(e), Some(vol)) = (self.b.runs_here, self.b.live.as_mut()) else {
            return;
        };
        let (b, v) = (self.rng.below(BLOCKS), self.next_value);
        self.next_value += 1;
        vol[b as usize] = v;
        self.writers.entry(e).or_default().insert('B');
    }

    /// A live failover at the recovery site: graceful (fence, drain) when connected,
    /// without the protected site otherwise.
    fn failover(&mut self) -> Result<(), String> {
        if self.b.runs_here.is_some() {
            return Ok(());
        }
        self.b.epoch += 1;
        let e = self.b.epoch;
        self.b.runs_here = Some(e);
        self.b.unfence_due = None;
        if self.connected && self.admitted {
            self.fencing(Fencing::Fence {
                epoch: e,
                why: "b".into(),
            })?;
            self.b.held = self.a.stream.len();
        }
        self.b.live = Some(apply(&self.a.stream[..self.b.held]));
        self.b.committed = false;
        self.admitted = false;
        self.note(format!("failover to epoch {e} (connected: {})", self.connected));
        Ok(())
    }

    /// A rollback at the recovery site (the agent's `hand_back`): a new epoch for the
    /// protected site, told now if connected, else when it opens.
    fn rollback(&mut self) -> Result<(), String> {
        if self.b.runs_here.is_none() || self.b.committed {
            return Ok(());
        }
        self.b.epoch += 1;
        self.b.runs_here = None;
        self.b.unfence_due = Some(self.b.epoch);
        self.b.live = None;
        self.b.split_brain = false;
        self.note(format!("rollback: unfence due at epoch {}", self.b.epoch));
        if self.connected {
            self.open()?;
        }
        Ok(())
    }

    /// Reverse protection after a commit, the protected site settled: it is resynced from
    /// the recovery site, which becomes the protected one (the run ends there).
    fn reverse(&mut self) -> Result<[u64; BLOCKS as usize], String> {
        if self.a.life.split_brain.is_some() {
            return Err("reverse protection over a split brain".into());
        }
        Ok(self.b.live.expect("committed"))
    }

    fn check(&self) -> Result<(), String> {
        for (e, w) in &self.writers {
            if w.len() > 1 {
                return Err(format!("both sites took writes in epoch {e}"));
            }
        }
        if self.b.held > self.a.stream.len() {
            return Err("the recovery site holds records never written".into());
        }
        Ok(())
    }

    fn step(&mut self) -> Result<(), String> {
        if self.rng.chance(300) {
            self.write_a();
        }
        if self.rng.chance(200) {
            self.write_b();
        }
        if self.connected && self.admitted && self.rng.chance(400) {
            self.b.held = self.a.stream.len();
        }
        if self.rng.chance(30) {
            self.connected = !self.connected;
            self.admitted = false;
            self.note(format!("link {}", if self.connected { "up" } else { "down" }));
        }
        if self.connected && !self.admitted && self.rng.chance(200) {
            self.open()?;
        }
        if self.rng.chance(15) {
            self.failover()?;
        }
        if self.rng.chance(10) {
            self.rollback()?;
        }
        if self.b.runs_here.is_some() && !self.b.committed && self.rng.chance(5) {
            self.b.committed = true;
            self.note("commit".into());
        }
        if self.rng.chance(5) {
            // A crash of either site: its session goes; what it persisted stays.
            self.admitted = false;
            self.note("crash".into());
        }
        // An operator resolves a split brain now and then, either way.
        if self.a.life.split_brain.is_some() && self.rng.chance(50) {
            self.resolve()?;
        }
        self.check()
    }

    /// `ferry vpg resolve`: keep the protected site (the failover is rolled back; refused
    /// once committed) or the recovery site (the protected site's writes are salvaged and
    /// it is settled for it).
    fn resolve(&mut self) -> Result<(), String> {
        let Some(sb) = self.a.life.split_brain.clone() else {
            return Ok(());
        };
        if !self.b.committed && self.rng.chance(500) {
            self.note("resolve: keep the protected site".into());
            self.rollback()
        } else {
            self.note("resolve: keep the recovery site".into());
            self.fencing(Fencing::Settle { epoch: sb.epoch })?;
            if self.connected {
                self.open()?;
            }
            Ok(())
        }
    }
}

fn run(seed: u64) -> Result<&'static str, String> {
    let mut w = World::new(seed);
    let fail = |w: &World, why: String| {
        Err(format!(
            "seed {seed}: {why}\nreplay: FERRY_SIM_SEED={seed} cargo test -p ferry-agent --lib failover::sim\n{}",
            w.log.join("\n")
        ))
    };
    for _ in 0..600 {
        if let Err(e) = w.step() {
            return fail(&w, e);
        }
    }
    // The last heal: connected for good, the operator settles what is left.
    w.connected = true;
    for _ in 0..50 {
        let r = (|| -> Result<Option<&'static str>, String> {
            w.open()?;
            if w.a.life.split_brain.is_some() {
                w.resolve()?;
                return Ok(None);
            }
            if w.b.runs_here.is_some() && !w.b.committed {
                if w.rng.chance(500) {
                    w.rollback()?;
                } else {
                    w.b.committed = true;
                }
                return Ok(None);
            }
            if w.b.committed {
                let kept = w.reverse()?;
                w.a.volume = kept;
                return Ok(Some("the recovery site's side kept (committed, protected back)"));
            }
            if w.admitted && w.a.life.fenced.is_none() {
                w.b.held = w.a.stream.len();
                if apply(&w.a.stream[..w.b.held]) != w.a.volume {
                    return Err("the replica does not converge to the protected site's bytes".into());
                }
                return Ok(Some("the protected site's side kept"));
            }
            Ok(None)
        })();
        match r {
            Ok(Some(end)) => {
                if let Err(e) = w.check() {
                    return fail(&w, e);
                }
                return Ok(end);
            }
            Ok(None) => {}
            Err(e) => return fail(&w, e),
        }
    }
    let state = format!(
        "did not converge: protected {:?} fenced {:?} split {:?}; recovery epoch {} runs_here {:?} unfence_due {:?} committed {}",
        w.a.life.epoch, w.a.life.fenced, w.a.life.split_brain, w.b.epoch, w.b.runs_here, w.b.unfence_due, w.b.committed
    );
    fail(&w, state)
}

#[test]
fn one_writer_per_epoch_and_both_sites_converge_after_resolve() {
    if let Ok(seed) = std::env::var("FERRY_SIM_SEED") {
        if let Err(e) = run(seed.parse().expect("FERRY_SIM_SEED is a number")) {
            panic!("{e}");
        }
        return;
    }
    let seeds: u64 = std::env::var("FERRY_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let mut ends: BTreeMap<&str, u64> = BTreeMap::new();
    for seed in 0..seeds {
        match run(seed) {
            Ok(end) => *ends.entry(end).or_default() += 1,
            Err(e) => panic!("{e}"),
        }
    }
    eprintln!("{seeds} seeds: {ends:?}");
    // Both ends must have been reached, or the run proved little.
    assert!(seeds < 100 || ends.len() == 2, "{ends:?}");
}
