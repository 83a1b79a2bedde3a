//! Rendering what the agent reports for a terminal: status, VPGs, replicas, volumes.

use ferry_agent::api::AgentStatus;
use ferry_agent::checkpoint::CheckpointInfo;
use ferry_agent::protect::volumes::VolumeStatus;
use ferry_agent::protect::vpg::VpgStatus;
use ferry_agent::recover::replica::ReplicaStatus;
use ferry_agent::size::human;
use ferry_agent::size::utc;

pub(super) fn rate(bps: f64) -> String {
    format!("{}/s", human(bps as u64))
}

pub(super) fn print_status_vpgs(s: &AgentStatus) {
    if s.vpgs.is_empty() {
        println!("VPGs: none");
    } else {
        println!("VPGs: {}", s.vpgs.len());
        for v in &s.vpgs {
            let mut line = format!("  {}: {}", v.name, v.state);
            if let Some((done, total)) = v.initial {
                line += &format!(
                    ", initial sync {} of {} ({:.0}%)",
                    human(done),
                    human(total),
                    done as f64 * 100.0 / total.max(1) as f64
                );
            }
            if let (Some(rpo), Some(target)) = (v.rpo_s, v.rpo_target_s) {
                line += &format!(", RPO {rpo:.1} s (target {target} s)");
            }
            line += &format!(", journal {:.1}% full", v.journal_fill_percent);
            if v.dirty_bytes > 0 {
                line += &format!(", {} dirty", human(v.dirty_bytes));
            }
            if let Some(t) = v.throughput_bytes_per_s {
                line += &format!(", {}", rate(t));
            }
            println!("{line}");
            if let (Some(peer), Some(link)) = (&v.peer, &v.link) {
                println!(
                    "      to {peer} (priority {}): {link}",
                    v.priority.as_deref().unwrap_or("?")
                );
            }
        }
    }
    for l in &s.links {
        println!(
            "link to {}: {} ({} sent, {} received, {} connection(s); VPGs {})",
            l.peer,
            l.state,
            human(l.sent_bytes),
            human(l.received_bytes),
            l.connects,
            l.vpgs.join(", ")
        );
    }
    for p in &s.metadata_problems {
        println!("METADATA PROBLEM: {p}");
    }
    if s.replicas_loading {
        println!("replicas: loading their history after the start (exports and peers wait)");
    }
    if !s.replicas.is_empty() {
        println!("replicas held here: {}", s.replicas.len());
        for r in &s.replicas {
            print_replica_line(r);
        }
    }
    for t in &s.failover_tests {
        println!(
            "FAILOVER TEST of {} at checkpoint {} since {}: {} export(s), scratch {} of {}",
            t.vpg,
            t.checkpoint.seq,
            ferry_agent::size::utc(t.started_unix_ms),
            t.exports.len(),
            human(t.scratch_used_bytes),
            human(t.scratch_max_bytes)
        );
    }
    for l in &s.live_failovers {
        super::failover::print_live(l, s);
    }
}

pub(super) fn print_replica_line(r: &ReplicaStatus) {
    let now = ferry_agent::clock::now_ms();
    let span = r.oldest_point_ms.map_or(0, |o| now.saturating_sub(o) / 1000);
    let last = match r.last_received_ms {
        0 => "nothing received yet".to_string(),
        t => format!("last batch {:.1} s ago", now.saturating_sub(t) as f64 / 1000.0),
    };
    println!(
        "  {}: {}, durable to seq {}, history {} of {} ({} s, window {} s), {} checkpoint(s), {last}",
        r.name,
        r.state,
        r.durable_seq,
        human(r.history_bytes),
        human(r.history_bytes_max),
        span,
        r.history_secs,
        r.checkpoints.len()
    );
    if let Some(b) = &r.split_brain {
        println!(
            "    SPLIT BRAIN since epoch {}: the old protected site wrote {} that never reached here; replication stops (`ferry vpg resolve {} --keep here|peer`)",
            b.epoch,
            human(b.there_bytes),
            r.name
        );
    }
}

pub(super) fn print_volumes(vols: &[VolumeStatus]) {
    if vols.is_empty() {
        println!("no volumes; create one with `ferry volume create NAME --size 10G`");
        return;
    }
    println!(
        "{:<24} {:>10} {:<12} {:<8} {:<6} PATH",
        "NAME", "SIZE", "DATASTORE", "STATE", "IN USE"
    );
    for v in vols {
        let r = &v.record;
        let mut state = v.state.clone();
        if r.read_only {
            state.push_str(" (ro)");
        }
        println!(
            "{:<24} {:>10} {:<12} {:<8} {:<6} {}",
            r.name,
            human(r.size_bytes),
            r.datastore,
            state,
            if v.in_use { "yes" } else { "no" },
            r.path.display()
        );
    }
}

pub(super) fn print_vpgs(vpgs: &[VpgStatus]) {
    if vpgs.is_empty() {
        println!("no VPGs; create one with `ferry vpg create NAME --volume VOLUME`");
        return;
    }
    println!(
        "{:<20} {:<26} {:>8} {:>12} {:>10} VOLUMES",
        "NAME", "STATE", "JOURNAL", "RECORDS", "DIRTY"
    );
    for v in vpgs {
        let names: Vec<&str> = v.volumes.iter().map(|m| m.name.as_str()).collect();
        let dirty: u64 = v.volumes.iter().map(|m| m.dirty_bytes).sum();
        println!(
            "{:<20} {:<26} {:>7.1}% {:>12} {:>10} {}",
            v.name,
            v.state,
            v.journal.fill_percent,
            v.journal.records,
            human(dirty),
            names.join(",")
        );
    }
}

/// A failover plan: members in boot order, then scripts and networks if set.
pub(super) fn print_plan(p: &ferry_agent::protect::vpg::Plan, volumes: &[String]) {
    let order = ferry_agent::protect::vpg::boot_order(p, volumes);
    let members: Vec<String> = order
        .iter()
        .map(|m| format!("{}={}", m.name, m.volumes.join(",")))
        .collect();
    println!(
        "failover: members in boot order {}{}",
        members.join(" → "),
        if p.boot_delay_ms > 0 {
            format!(", {:.1} s apart", p.boot_delay_ms as f64 / 1000.0)
        } else {
            String::new()
        }
    );
    for (what, v) in [
        ("pre-script", &p.pre_script),
        ("post-script", &p.post_script),
        ("test network", &p.test_network),
        ("failover network", &p.failover_network),
    ] {
        if !v.is_empty() {
            println!("  {what}: {v}");
        }
    }
    if !p.pre_script.is_empty() || !p.post_script.is_empty() {
        println!(
            "  script timeout: {} s",
            if p.script_timeout_s == 0 {
                300
            } else {
                p.script_timeout_s
            }
        );
    }
}

pub(super) fn print_vpg(v: &VpgStatus) {
    let j = &v.journal;
    println!("VPG {}: {}", v.name, v.state);
    println!("lineage {}, epoch {}{}", v.lineage, v.epoch, epochs_words(&v.epochs));
    println!(
        "journal {}: {} of {} used ({:.1}%), {} unacknowledged records (sequence {}..{}, settled to {})",
        j.path.display(),
        human(j.used_bytes),
        human(j.size_bytes),
        j.fill_percent,
        j.records,
        j.acked_seq,
        j.next_seq,
        j.settled_seq
    );
    if let Some(p) = &v.protection {
        let st = &p.settings;
        println!(
            "replicated to {} (priority {}{}): {}",
            st.peer,
            st.priority.name(),
            if st.paused { ", paused" } else { "" },
            p.ship.error.as_deref().unwrap_or(&p.ship.link)
        );
        println!(
            "RPO {:.1} s (target {} s, {}); recovery site durable below sequence {}; {} acknowledged, {}",
            p.rpo_s,
            st.rpo_s,
            if p.meeting_sla { "met" } else { "NOT met" },
            p.ship.acked_seq,
            human(p.ship.acked_bytes),
            rate(p.ship.rate_bytes_per_s)
        );
        if st.throttle_rpo_ms > 0 {
            println!(
                "writes throttled while the RPO is above {:.1} s: held {:.1} s in all (summed over writes) since the agent started",
                st.throttle_rpo_ms as f64 / 1000.0,
                p.throttle_held_ms as f64 / 1000.0
            );
        }
        println!(
            "history at the recovery site: {} s window, {} hard limit{}",
            st.history_s,
            human(st.history_bytes_max),
            if st.recovery_datastore.is_empty() {
                String::new()
            } else {
                format!(", datastore {}", st.recovery_datastore)
            }
        );
        if let Some(d) = &p.delta {
            println!(
                "delta sync: {} of {} compared with the pre-seeded replica, {} differ",
                human(d.compared_bytes),
                human(d.total_bytes),
                human(d.differing_bytes)
            );
        }
        if let Some(done) = p.initial_done_bytes {
            println!(
                "initial sync: {} of {} read ({:.0}%){}",
                human(done),
                human(p.initial_total_bytes),
                done as f64 * 100.0 / p.initial_total_bytes.max(1) as f64,
                match (p.initial_rate_bytes_per_s, p.initial_eta_s) {
                    (Some(r), Some(eta)) => format!(", {}, about {eta:.0} s left", rate(r)),
                    _ => String::new(),
                }
            );
        }
    }
    print_plan(&v.plan, &v.volumes.iter().map(|m| m.name.clone()).collect::<Vec<_>>());
    println!("volumes:");
    for m in &v.volumes {
        println!(
            "  {:>3} {:<24} {:<10} dirty {}",
            m.id,
            m.name,
            if m.attached { "captured" } else { "OFFLINE" },
            human(m.dirty_bytes)
        );
    }
    match &v.last_checkpoint {
        Some(c) => println!(
            "last checkpoint: sequence {} at {}{}",
            c.seq,
            utc(c.unix_ms),
            if c.tag.is_empty() {
                String::new()
            } else {
                format!(", tag {:?}", c.tag)
            }
        ),
        None => println!("no checkpoint yet"),
    }
    let tagged: Vec<&CheckpointInfo> = v.checkpoints.iter().filter(|c| !c.tag.is_empty()).collect();
    for c in tagged {
        println!("  tagged {:?} at sequence {} ({})", c.tag, c.seq, utc(c.unix_ms));
    }
    if !v.events.is_empty() {
        println!("events:");
        for e in v.events.iter().rev().take(20).rev() {
            println!("  {}  {}", utc(e.unix_ms), e.message);
        }
    }
}

/// ", epochs began at: 2 from seq 118, 3 from seq 204" (empty without any).
pub(super) fn epochs_words(epochs: &[(u64, u64)]) -> String {
    if epochs.is_empty() {
        return String::new();
    }
    let e: Vec<String> = epochs.iter().map(|(e, s)| format!("{e} from seq {s}")).collect();
    format!(" (epochs began here: {})", e.join(", "))
}

/// `ferry tasks`: one line per task, newest first.
pub(super) fn print_tasks(ts: &[ferry_agent::api::tasks::Task]) {
    use ferry_agent::api::tasks::TaskState;
    if ts.is_empty() {
        println!("no tasks");
    }
    for t in ts {
        let state = match t.state {
            TaskState::Running => format!(
                "running {:.0}%{}",
                t.percent,
                t.eta_s.map(|e| format!(", about {e:.0} s left")).unwrap_or_default()
            ),
            TaskState::Done => "done".into(),
            TaskState::Failed => "FAILED".into(),
        };
        let kind = serde_json::to_value(t.kind)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        println!(
            "{:>4}  {:<13} {:<12} {:<28} started {}  {}",
            t.id,
            kind,
            t.vpg,
            state,
            utc(t.started_unix_ms),
            t.detail
        );
    }
}
