//! Faults that must never make the recovery site lie, hang or run out of memory: full
//! datastores at either site (small loop-mounted ext4 filesystems made by each test),
//! replicas deleted under a live link, hostile clients. Real agents, real NBD clients.

mod common;

use std::process::Command;

use common::sites::{compare, export, new_key, recovery_agent, tag_and_wait, wait_for};
use common::{Agent, SmallFs, qemu_io, run};

fn vpg_json(a: &Agent, vpg: &str) -> serde_json::Value {
    serde_json::from_str(&a.ferry(&["vpg", "show", vpg, "--json"])).unwrap()
}

/// An agent whose one datastore is a small ext4 of `mib` MiB of its own.
fn agent_on_small_fs(tag: &str, mib: u64) -> (Agent, SmallFs) {
    let mut a = Agent::start(tag);
    let small = SmallFs::new(&a.dir, "small", mib);
    a.stop();
    a.set_extra_config(&format!(
        "[[datastore]]\nname = \"small\"\npath = {:?}\n",
        small.mount.display().to_string()
    ));
    a.spawn();
    (a, small)
}

/// A write that fails at the protected datastore (ENOSPC) reaches the client as an error
/// and never the recovery site: the next checkpoint there holds what the volume holds.
#[test]
fn a_write_the_datastore_refused_is_never_shipped() {
    let (mut a, small) = agent_on_small_fs("enospc-a", 48);
    let key = new_key(&a.dir);
    let (b, peer) = recovery_agent("enospc-b", &key, "");
    a.create("d0", "128M");
    a.ferry_line(&format!(
        "vpg create app --volume d0 --journal-size 64M --peer {peer} --peer-key {}",
        key.display()
    ));
    qemu_io(a.tcp_uri("d0"), &["write -P 0x11 0 4M"]);
    tag_and_wait(&a, &b, "app", "before");
    // Leave 2 MiB free, then write 16 MiB at 8M: most of it cannot be stored.
    small.fill(2 << 20);
    let out = run(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0x22 8M 16M", &a.tcp_uri("d0")]));
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("No space left on device"),
        "the client must see ENOSPC: {text}"
    );
    let v = vpg_json(&a, "app");
    let state = v["state"].as_str().unwrap();
    assert!(
        state.starts_with("error: datastore I/O failed") && state.contains("No space left"),
        "{state}"
    );
    let ev = a.ferry(&["events"]);
    assert!(
        ev.contains("failed at the datastore") && ev.contains("not shipped"),
        "{ev}"
    );
    // The next checkpoint holds exactly what the datastore holds.
    tag_and_wait(&a, &b, "app", "after");
    for (vol, uri) in export(&b, "app", "after") {
        let out = compare(&uri, a.tcp_uri(&vol));
        assert!(out.contains("Images are identical"), "{vol} at after: {out}");
    }
    // Room again: writes succeed and are shipped as before.
    std::fs::remove_file(small.mount.join("ballast")).unwrap();
    qemu_io(a.tcp_uri("d0"), &["write -P 0x33 8M 4M"]);
    tag_and_wait(&a, &b, "app", "freed");
    for (vol, uri) in export(&b, "app", "freed") {
        let out = compare(&uri, a.tcp_uri(&vol));
        assert!(out.contains("Images are identical"), "{vol} at freed: {out}");
    }
    b.ferry(&["checkpoint", "unexport", "app"]);
    a.stop();
}

/// `ferry ARGS` with a bound on how long it may take: a hung agent fails the test instead
/// of hanging it. Returns (success, stdout + stderr).
fn ferry_within(a: &Agent, secs: u64, args: &[&str]) -> (bool, String) {
    let out = run(Command::new("timeout")
        .arg(secs.to_string())
        .arg(common::FERRY)
        .args(args)
        .env("FERRY_CONTROL", a.dir.join("control.sock")));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn replica_json(b: &Agent, vpg: &str) -> serde_json::Value {
    let (ok, out) = ferry_within(b, 20, &["replica", "show", vpg, "--json"]);
    assert!(ok, "replica show must answer: {out}");
    serde_json::from_str(&out).unwrap()
}

/// The recovery datastore runs full while history is applied to the replica: the agent
/// stays responsive, raises an event, retries; a kill -9 and restart come up; once space
/// is freed the replica converges to the protected volume.
#[test]
fn a_full_recovery_datastore_during_apply_is_retried_and_never_hangs() {
    let a = Agent::start("applyfull-a");
    let key = new_key(&a.dir);
    let bdir = common::scratch_dir("applyfull-fs");
    let small = SmallFs::new(&bdir, "small", 64);
    let (mut b, peer) = recovery_agent(
        "applyfull-b",
        &key,
        &format!(
            "[[datastore]]\nname = \"small\"\npath = {:?}\n[[datastore]]\nname = \"local\"\npath = {:?}\n",
            small.mount.display().to_string(),
            bdir.join("local").display().to_string()
        ),
    );
    a.create("d0", "32M");
    a.ferry_line(&format!(
        "vpg create app --volume d0 --journal-size 64M --history 1s --peer {peer} --peer-key {}",
        key.display()
    ));
    tag_and_wait(&a, &b, "app", "start");
    // Hold history with an export while 12 MiB are written, then fill the datastore and let go.
    export(&b, "app", "start");
    qemu_io(a.tcp_uri("d0"), &["write -P 0x41 0 12M"]);
    tag_and_wait(&a, &b, "app", "written");
    small.fill(256 << 10);
    b.ferry(&["checkpoint", "unexport", "app"]);
    assert!(
        wait_for(30, || replica_json(&b, "app")["events"]
            .to_string()
            .contains("applying history to the replica failed")),
        "no apply-failure event: {}",
        replica_json(&b, "app")
    );
    // Responsive throughout: status, the replica, and NBD on the recovery agent.
    for _ in 0..3 {
        let (ok, out) = ferry_within(&b, 10, &["status"]);
        assert!(ok, "status must answer while the apply fails: {out}");
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    b.ferry(&["volume", "create", "probe", "--size", "1M", "--datastore", "local"]);
    qemu_io(b.tcp_uri("probe"), &["write -P 0x7 0 4k", "read -P 0x7 0 4k"]);
    // A crash mid-failure: the restart comes up and answers.
    b.kill9();
    b.spawn();
    let (ok, out) = ferry_within(&b, 10, &["status"]);
    assert!(ok, "status after the restart: {out}");
    assert!(
        wait_for(20, || ferry_within(&b, 10, &["replica", "show", "app"]).0),
        "replica show after the restart: {}",
        ferry_within(&b, 10, &["replica", "show", "app"]).1
    );
    assert!(
        wait_for(30, || replica_json(&b, "app")["events"]
            .to_string()
            .contains("applying history to the replica failed")),
        "the restart must go on trying: {}",
        replica_json(&b, "app")
    );
    // Space again: it converges, and the replica image equals the volume.
    std::fs::remove_file(small.mount.join("ballast")).unwrap();
    assert!(
        wait_for(90, || replica_json(&b, "app")["history_records"].as_u64() == Some(0)),
        "history did not drain into the replica: {}",
        replica_json(&b, "app")
    );
    let img = small.mount.join("replicas/app/d0.img");
    let out = compare(&img, a.tcp_uri("d0"));
    assert!(out.contains("Images are identical"), "replica image: {out}");
    // The event comes with the first pass that succeeds, which may follow the drain: a
    // pass can apply every record and then fail (syncing, storing its progress), and its
    // retry waits out the backoff.
    assert!(
        wait_for(90, || replica_json(&b, "app")["events"]
            .to_string()
            .contains("history applies to the replica again")),
        "{}",
        replica_json(&b, "app")
    );
    b.stop();
    drop(b);
    drop(small);
    let _ = std::fs::remove_dir_all(&bdir);
}

/// `ferry replica delete` while the protected site replicates: refused without --force;
/// with it, the stream ends, the files are let go, the protected site shows an error
/// that says what to do, and a reconnect does not make the replica anew.
#[test]
fn a_replica_deleted_under_a_live_link_ends_its_stream() {
    let mut a = Agent::start("repldel-a");
    let key = new_key(&a.dir);
    let (b, peer) = recovery_agent("repldel-b", &key, "");
    a.create("d0", "16M");
    a.ferry_line(&format!(
        "vpg create app --volume d0 --journal-size 32M --peer {peer} --peer-key {}",
        key.display()
    ));
    tag_and_wait(&a, &b, "app", "one");
    let err = b.ferry_fails(&["replica", "delete", "app"]);
    assert!(err.contains("--force") && err.contains("ferry vpg delete app"), "{err}");
    b.ferry(&["replica", "delete", "app", "--force"]);
    let state = || vpg_json(&a, "app")["state"].as_str().unwrap_or("").to_string();
    assert!(wait_for(20, || state() == "error"), "protected state: {}", state());
    let shown = vpg_json(&a, "app")["protection"]["ship"]["error"].to_string();
    assert!(
        shown.contains("deleted at the recovery site") && shown.contains("ferry vpg delete app"),
        "{shown}"
    );
    // No file of the deleted replica is held open.
    let pid = b.child.as_ref().unwrap().id();
    let held: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .filter(|p| p.contains("replicas/app"))
        .collect();
    assert!(held.is_empty(), "files of the deleted replica still open: {held:?}");
    // Writes go on at the protected site; a reconnect is refused too.
    qemu_io(a.tcp_uri("d0"), &["write -P 0x9 0 1M"]);
    a.stop();
    a.spawn();
    assert!(
        wait_for(20, || vpg_json(&a, "app")["protection"]["ship"]["error"]
            .to_string()
            .contains("deleted at the recovery site")),
        "after a reconnect: {}",
        vpg_json(&a, "app")
    );
    let list = b.ferry(&["replica", "list"]);
    assert!(list.contains("no replicas here"), "{list}");
}

/// `curl` on the control socket: (HTTP status, body).
fn api(a: &Agent, method: &str, path: &str, body: &str) -> (u16, String) {
    let out = common::ok(
        Command::new("curl")
            .args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method])
            .arg("--unix-socket")
            .arg(a.dir.join("control.sock"))
            .args(["-H", "content-type: application/json", "-d", body])
            .arg(format!("http://agent{path}")),
    );
    let (body, code) = out.trim_end().rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

/// Sizes no datastore can hold get a 4xx that names the largest size, and leave nothing
/// behind: the name stays free.
#[test]
fn oversized_volumes_are_refused_and_leave_nothing_behind() {
    let (a, small) = agent_on_small_fs("oversize", 16);
    for size in [1u64 << 62, 1 << 63, 16 << 40] {
        let (code, body) = api(
            &a,
            "POST",
            "/v1/volumes",
            &format!("{{\"name\":\"big\",\"size_bytes\":{size}}}"),
        );
        assert!((400..500).contains(&code), "{size}: HTTP {code} {body}");
        assert!(body.contains("largest"), "{size}: {body}");
        assert!(!small.mount.join("big.img").exists(), "{size} left a file behind");
    }
    let err = a.ferry_fails(&["volume", "create", "big", "--size", "16T"]);
    assert!(err.contains("the largest is"), "{err}");
    a.create("big", "8M");
    qemu_io(a.tcp_uri("big"), &["write -P 0x3 0 64k", "read -P 0x3 0 64k"]);
}

/// The agent's own files (a VPG's journal and dirty map, a replica's image and history,
/// the registries) cannot be adopted as volumes.
#[test]
fn the_agents_own_files_cannot_be_adopted() {
    let mut a = Agent::start("adoptown-a");
    let key = new_key(&a.dir);
    let (b, peer) = recovery_agent("adoptown-b", &key, "");
    a.create("d0", "8M");
    a.ferry_line(&format!(
        "vpg create app --volume d0 --journal-size 16M --peer {peer} --peer-key {}",
        key.display()
    ));
    tag_and_wait(&a, &b, "app", "one");
    let ring = a.vpg_dir("app").join("journal.ring");
    let map = a.vpg_dir("app").join("d0.dirty");
    for (agent, path) in [
        (&a, ring.clone()),
        (&a, map),
        (&a, a.dir.join("volumes.json")),
        (&b, b.dir.join("datastore/replicas/app/d0.img")),
    ] {
        assert!(path.exists(), "{}", path.display());
        let (code, body) = api(
            agent,
            "POST",
            "/v1/volumes/adopt",
            &format!("{{\"name\":\"x\",\"path\":{:?}}}", path.display().to_string()),
        );
        assert!(
            (400..500).contains(&code) && body.contains("the agent itself owns"),
            "{}: HTTP {code} {body}",
            path.display()
        );
    }
    // The journal is intact: the VPG goes on replicating.
    qemu_io(a.tcp_uri("d0"), &["write -P 0x4 0 64k"]);
    tag_and_wait(&a, &b, "app", "two");
    // A file the operator put in a datastore can still be adopted.
    let mine = a.dir.join("datastore/mine.img");
    std::fs::write(&mine, vec![0u8; 1 << 20]).unwrap();
    a.ferry(&["volume", "adopt", "mine", &mine.display().to_string()]);
    // Checked once the agent stopped: a live journal's next record may be mid-write (a
    // checkpoint every second), which the offline check reports as torn.
    a.stop();
    let out = a.ferry(&["journal", "check", &ring.display().to_string()]);
    assert!(!out.contains("damage") && out.contains(": ok"), "{out}");
}

/// `volume delete --force` under a connected writer: its later writes and flushes fail.
#[test]
fn a_volume_deleted_under_a_writer_fails_its_writes() {
    let a = Agent::start("delwriter");
    a.create("d0", "8M");
    let (mut child, mut out) = common::python_client(&[
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scripts/writer_after_delete.py"),
        &a.unix_uri("d0"),
    ]);
    let err = a.ferry_fails(&["volume", "delete", "d0"]);
    assert!(err.contains("--force"), "{err}");
    a.ferry(&["volume", "delete", "d0", "--force"]);
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"go\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let _ = child.wait();
    assert!(
        rest.contains("write: ") && !rest.contains("write: ok") && !rest.contains("flush: ok"),
        "{rest}"
    );
    assert!(!a.volume_path("d0").exists());
}

/// Checkpoint tags that read as selectors, or hold control characters, are refused.
#[test]
fn checkpoint_tags_that_clash_with_selectors_are_refused() {
    let a = Agent::start("tags");
    a.create("d0", "8M");
    a.ferry(&["vpg", "create", "app", "--volume", "d0", "--journal-size", "8M"]);
    for bad in ["latest", "5", "a\nb", "\u{1b}[31mred"] {
        let err = a.ferry_fails(&["checkpoint", "tag", "app", bad]);
        assert!(
            err.contains("selector") || err.contains("control characters"),
            "{bad:?}: {err}"
        );
    }
    a.ferry(&["checkpoint", "tag", "app", "before-upgrade"]);
}

/// A protected agent's restart raises no false "not meeting SLA" (its RPO was never
/// known to be past the target); an idle VPG whose history all aged into the replica
/// still has a checkpoint to export: the replica itself.
#[test]
fn a_restart_raises_no_false_sla_alert_and_an_aged_replica_stays_exportable() {
    let mut a = Agent::start("sla-a");
    let key = new_key(&a.dir);
    let (b, peer) = recovery_agent("sla-b", &key, "");
    a.create("d0", "8M");
    a.ferry_line(&format!(
        "vpg create app --volume d0 --journal-size 16M --rpo 5s --history 1s --peer {peer} --peer-key {}",
        key.display()
    ));
    qemu_io(a.tcp_uri("d0"), &["write -P 0x61 0 1M"]);
    tag_and_wait(&a, &b, "app", "one");
    // Everything ages into the replica.
    assert!(
        wait_for(30, || replica_json(&b, "app")["history_records"].as_u64() == Some(0)),
        "{}",
        replica_json(&b, "app")
    );
    std::thread::sleep(std::time::Duration::from_secs(7));
    for (vol, uri) in export(&b, "app", "latest") {
        let out = compare(&uri, a.tcp_uri(&vol));
        assert!(out.contains("Images are identical"), "{vol}: {out}");
    }
    b.ferry(&["checkpoint", "unexport", "app"]);
    a.stop();
    a.spawn();
    std::thread::sleep(std::time::Duration::from_secs(4));
    let ev = a.ferry(&["events"]);
    assert!(!ev.contains("not meeting SLA"), "{ev}");
    let state = vpg_json(&a, "app")["state"].as_str().unwrap().to_string();
    assert_eq!(state, "protecting (meeting SLA)");
}

/// Runs tests/scripts/hostile.py with these arguments, its stdin a pipe (closing it ends
/// an `idle` run).
fn hostile(args: &[&str]) -> std::process::Child {
    Command::new("/usr/bin/python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scripts/hostile.py"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn first_line(child: &mut std::process::Child) -> String {
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut line).unwrap();
    line.trim().to_string()
}

/// qemu-io, bounded: a client locked out fails the test instead of hanging it.
fn qemu_io_within(secs: u64, uri: &str, cmds: &[&str]) -> (bool, String) {
    let mut c = Command::new("timeout");
    c.arg(secs.to_string()).args(["qemu-io", "-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let out = run(c.arg(uri));
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success() && !text.contains("failed"), text)
}

fn log_lines(a: &Agent, needle: &str) -> usize {
    a.log().lines().filter(|l| l.contains(needle)).count()
}

/// 300 TCP connections from one address and 64 on the unix socket that never negotiate:
/// a client from elsewhere, on TCP and on the unix socket, is still served at once, and
/// the refusals are a few log lines, not one per attempt.
#[test]
fn idle_connections_that_never_negotiate_lock_nobody_out() {
    let a = Agent::start("idleconns");
    a.create("d0", "8M");
    let sock = a.socket().display().to_string();
    let mut h = hostile(&["idle", &a.tcp, "127.0.0.2", "300", &sock, "64"]);
    let held = first_line(&mut h);
    assert!(held.starts_with("holding"), "{held}");
    for uri in [a.tcp_uri("d0"), a.unix_uri("d0")] {
        let (ok, out) = qemu_io_within(20, &uri, &["write -P 0x5 0 64k", "read -P 0x5 0 64k"]);
        assert!(ok, "{uri} while idle connections wait: {out}");
    }
    let refusals = log_lines(&a, "connection refused");
    assert!(
        (1..=4).contains(&refusals),
        "refusals must be logged, at a bounded rate: {refusals} lines"
    );
    drop(h.stdin.take());
    let _ = h.wait();
}

fn rss_bytes(pid: u32) -> u64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    st.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// 16 clients that each pipeline up to 2000 writes of 64 KiB without reading a reply, then
/// reset: the agent's memory stays within its in-flight bound (and its buffer pool), and
/// returns near its baseline once they are gone. Not a timing test: it measures memory.
#[test]
fn pipelining_clients_that_reset_cannot_grow_memory_without_bound() {
    const MIB: u64 = 1 << 20;
    let a = Agent::start_with(
        "memflood",
        "inflight_total_bytes_max = 134217728\nbuffer_pool_bytes_max = 67108864\n",
    );
    a.create("d0", "64M");
    qemu_io(a.tcp_uri("d0"), &["write -P 0x1 0 1M"]);
    let pid = a.child.as_ref().unwrap().id();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let baseline = rss_bytes(pid);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_bytes(pid));
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            peak
        })
    };
    let mut f = hostile(&["flood", &a.tcp, "d0", "16", "2000", "8"]);
    let sent = first_line(&mut f);
    let _ = f.wait();
    std::thread::sleep(std::time::Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let mut after = rss_bytes(pid);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while after > baseline + 48 * MIB && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(500));
        after = rss_bytes(pid);
    }
    eprintln!(
        "memory: baseline {} MiB, peak {} MiB, after {} MiB ({sent})",
        baseline / MIB,
        peak / MIB,
        after / MIB
    );
    // In flight at most 128 MiB, pooled at most 64 MiB, and the connections' own buffers.
    assert!(
        peak <= baseline + 320 * MIB,
        "peak {} MiB over a baseline of {} MiB",
        peak / MIB,
        baseline / MIB
    );
    assert!(
        after <= baseline + 48 * MIB,
        "after the clients left: {} MiB, baseline {} MiB",
        after / MIB,
        baseline / MIB
    );
    qemu_io(a.tcp_uri("d0"), &["write -P 0x9 8M 64k", "read -P 0x9 8M 64k"]);
}

/// A recovery agent under a low descriptor limit, 250 stalled replication handshakes from
/// one address: the control socket answers, its paired peer's checkpoints still arrive,
/// and accept failures are not logged in a flood.
#[test]
fn stalled_replication_handshakes_cannot_use_up_descriptors() {
    let a = Agent::start("fds-a");
    let key = new_key(&a.dir);
    let cfg = format!(
        "[replication]\nlisten = \"127.0.0.1:0\"\npairing_keys = [{:?}]\n",
        key.display().to_string()
    );
    let mut b = Agent::start_with("fds-b", &cfg);
    b.stop();
    b.set_nofile(256);
    b.spawn();
    let peer = common::sites::replication_addr(&b);
    a.create("d0", "16M");
    a.ferry_line(&format!(
        "vpg create app --volume d0 --journal-size 32M --peer {peer} --peer-key {}",
        key.display()
    ));
    tag_and_wait(&a, &b, "app", "one");
    let mut h = hostile(&["idle", &peer, "127.0.0.2", "250"]);
    let held = first_line(&mut h);
    assert!(held.starts_with("holding"), "{held}");
    let (ok, out) = ferry_within(&b, 10, &["status"]);
    assert!(ok, "control socket under stalled handshakes: {out}");
    qemu_io(a.tcp_uri("d0"), &["write -P 0x2 0 1M"]);
    let t0 = std::time::Instant::now();
    tag_and_wait(&a, &b, "app", "two");
    eprintln!(
        "checkpoint two reached the recovery site {} ms after tagging",
        t0.elapsed().as_millis()
    );
    assert!(
        b.log().contains("lowered to"),
        "limits that do not fit the descriptor limit must be lowered, with a warning"
    );
    let accept_errors = log_lines(&b, "accept failed");
    assert!(accept_errors <= 3, "{accept_errors} accept-failure lines");
    b.create("probe", "1M");
    qemu_io(b.tcp_uri("probe"), &["write -P 0x8 0 4k", "read -P 0x8 0 4k"]);
    drop(h.stdin.take());
    let _ = h.wait();
}
