//! Two sites: two real agents on loopback, a paired link, real NBD clients on both ends.
//! What the recovery site serves at a checkpoint must equal, byte for byte, what the
//! protected volumes held at that moment.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::sites::{checkpoints, compare, export, new_key, recovery_agent, replication_addr, tag_and_wait, wait_for};
use common::{Agent, ok, qemu_io, require, run};

fn fio_verify(dir: &Path, uri: &str, size: &str, seed: &str) {
    require("fio");
    let out = ok(Command::new("fio").current_dir(dir).args([
        "--name=repl",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=randwrite",
        "--bsrange=4k-64k",
        "--iodepth=16",
        &format!("--size={size}"),
        "--verify=crc32c",
        "--verify_fatal=1",
        "--do_verify=1",
        &format!("--randseed={seed}"),
    ]));
    assert!(out.contains("err= 0"), "{out}");
}

struct Sites {
    a: Agent,
    b: Agent,
    key: PathBuf,
    peer: String,
}

/// A protected agent with volumes d0 (64M) and d1 (32M), d0 holding data before the VPG
/// exists, and a recovery agent; the VPG `app` protects both.
fn sites(tag: &str, vpg_args: &str, b_extra: &str) -> Sites {
    let a = Agent::start(&format!("{tag}-a"));
    let key = new_key(&a.dir);
    let (b, peer) = recovery_agent(&format!("{tag}-b"), &key, b_extra);
    a.create("d0", "64M");
    a.create("d1", "32M");
    // Data from before protection: the initial sync must carry it.
    qemu_io(a.tcp_uri("d0"), &["write -P 0x5a 0 3M", "write -P 0xa5 40M 1M"]);
    a.ferry_line(&format!(
        "vpg create app --volume d0 --volume d1 --journal-size 64M --peer {peer} --peer-key {} {vpg_args}",
        key.display()
    ));
    Sites { a, b, key, peer }
}

#[test]
fn two_sites_replicate_and_every_checkpoint_export_equals_its_moment() {
    let s = sites("repl", "", "");
    let (a, b) = (&s.a, &s.b);
    // Writes during and after the initial sync, on both volumes of the VPG.
    fio_verify(&a.dir, &a.unix_uri("d0"), "24M", "1");
    qemu_io(
        a.tcp_uri("d1"),
        &["write -P 0x11 0 1M", "write -P 0x12 8M 64k", "discard 0 64k"],
    );
    let first = tag_and_wait(a, b, "app", "first");
    // The moment of `first`, kept: the source files now (nothing writes between).
    let snap = a.dir.join("snap");
    std::fs::create_dir_all(&snap).unwrap();
    for v in ["d0", "d1"] {
        std::fs::copy(a.volume_path(v), snap.join(v)).unwrap();
    }
    // More writes, then a second point.
    fio_verify(&a.dir, &a.unix_uri("d0"), "16M", "2");
    qemu_io(
        a.tcp_uri("d1"),
        &["write -P 0x21 1M 2M", "write -z 8M 64k", "write -P 0x22 31M 1M"],
    );
    let second = tag_and_wait(a, b, "app", "second");
    assert!(second > first);

    // The newest point equals the volumes now; the older one equals the copies.
    for (vol, uri) in export(b, "app", "second") {
        let out = compare(&uri, a.tcp_uri(&vol));
        assert!(out.contains("Images are identical"), "{vol} at second: {out}");
    }
    for (vol, uri) in export(b, "app", &first.to_string()) {
        let out = compare(&uri, snap.join(&vol));
        assert!(out.contains("Images are identical"), "{vol} at first: {out}");
    }
    // Writes go on while the exports are served: they stay at their points.
    qemu_io(a.tcp_uri("d1"), &["write -P 0x33 0 4M"]);
    tag_and_wait(a, b, "app", "third");
    let older = export(b, "app", "first");
    let out = compare(&older[1].1, snap.join("d1"));
    assert!(out.contains("Images are identical"), "d1 at first, later: {out}");
    // Read-only.
    let out = run(Command::new("qemu-io").args(["-f", "raw", "-c", "write 0 4k", &older[0].1]));
    assert!(!out.status.success(), "a checkpoint export took a write");

    // The event log shows both sides' story.
    let ev = a.ferry(&["events"]);
    assert!(ev.contains("vpg app") && ev.contains("initial sync done"), "{ev}");
    // Status on both sides says what it should.
    let st = a.ferry(&["status"]);
    assert!(st.contains("app: protecting (meeting SLA)"), "{st}");
    assert!(st.contains(&format!("link to {}: connected", s.peer)), "{st}");
    let st = b.ferry(&["status"]);
    assert!(st.contains("replicas held here: 1"), "{st}");
}

#[test]
fn history_ages_into_the_replica_and_exports_stay_exact() {
    // A one-second history window: records move into the replica images within seconds.
    let s = sites("aging", "--history 1s", "");
    let (a, b) = (&s.a, &s.b);
    qemu_io(a.tcp_uri("d1"), &["write -P 0x44 0 2M", "write -P 0x45 30M 2M"]);
    tag_and_wait(a, b, "app", "one");
    let applied = |b: &Agent| {
        let v: serde_json::Value = serde_json::from_str(&b.ferry(&["replica", "show", "app", "--json"])).unwrap();
        (
            v["applied_seq"].as_u64().unwrap(),
            v["history_records"].as_u64().unwrap(),
        )
    };
    assert!(
        wait_for(30, || applied(b).0 > 0),
        "nothing was applied to the replica: {:?}",
        applied(b)
    );
    qemu_io(a.tcp_uri("d1"), &["write -P 0x46 1M 2M"]);
    let two = tag_and_wait(a, b, "app", "two");
    for (vol, uri) in export(b, "app", &two.to_string()) {
        let out = compare(&uri, a.tcp_uri(&vol));
        assert!(out.contains("Images are identical"), "{vol}: {out}");
    }
    // The replica images themselves catch up once the export is gone.
    b.ferry(&["checkpoint", "unexport", "app"]);
    assert!(
        wait_for(30, || applied(b).1 == 0),
        "history did not drain: {:?}",
        applied(b)
    );
    let img = b.dir.join("datastore/replicas/app/d1.img");
    let out = compare(&img, a.tcp_uri("d1"));
    assert!(out.contains("Images are identical"), "replica image: {out}");
}

#[test]
fn a_peer_with_another_key_is_refused_and_nothing_is_replicated() {
    let a = Agent::start("wrongkey-a");
    let good = new_key(&a.dir);
    let other = a.dir.join("other.key");
    ok(Command::new(common::FERRY).arg("pair").arg(&other));
    let (b, peer) = recovery_agent("wrongkey-b", &good, "");
    a.create("d0", "8M");
    a.ferry_line(&format!(
        "vpg create app --volume d0 --journal-size 8M --peer {peer} --peer-key {}",
        other.display()
    ));
    assert!(
        wait_for(20, || a.ferry(&["status"]).contains("another pairing key")),
        "the protected side does not say why: {}",
        a.ferry(&["status"])
    );
    assert!(b.wait_log("replication peer refused"), "{}", b.log());
    assert!(b.ferry(&["replica", "list"]).contains("no replicas"));
}

/// A TCP proxy between the sites that can damage the stream: flip one byte of the Nth
/// frame it forwards, or drop one frame. Frames are cut by their header (48 bytes, the
/// body length at 44..48) after the handshake (two length-prefixed messages).
struct Proxy {
    addr: String,
    flip_frame: Arc<AtomicUsize>,
    drop_frame: Arc<AtomicUsize>,
    replay_frame: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(to: String) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let flip_frame = Arc::new(AtomicUsize::new(usize::MAX));
        let drop_frame = Arc::new(AtomicUsize::new(usize::MAX));
        let replay_frame = Arc::new(AtomicUsize::new(usize::MAX));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, d, r, st) = (
            flip_frame.clone(),
            drop_frame.clone(),
            replay_frame.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            for c in l.incoming() {
                if st.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(c) = c else { continue };
                let Ok(up) = TcpStream::connect(&to) else { continue };
                let (c2, up2) = (c.try_clone().unwrap(), up.try_clone().unwrap());
                let (f, d, r) = (f.clone(), d.clone(), r.clone());
                std::thread::spawn(move || forward_frames(c, up, &f, &d, &r));
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut &up2, &mut &c2);
                    let _ = c2.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Proxy {
            addr,
            flip_frame,
            drop_frame,
            replay_frame,
            stop,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.addr);
    }
}

/// Counts a frame down; true for the one that reaches zero (once: then it is off).
fn countdown(n: &AtomicUsize) -> bool {
    match n.load(Ordering::Relaxed) {
        usize::MAX => false,
        0 => {
            n.store(usize::MAX, Ordering::Relaxed);
            true
        }
        k => {
            n.store(k - 1, Ordering::Relaxed);
            false
        }
    }
}

/// Protected → recovery: the handshake message as is, then frame by frame.
fn forward_frames(
    mut from: TcpStream,
    mut to: TcpStream,
    flip: &AtomicUsize,
    drop_n: &AtomicUsize,
    replay: &AtomicUsize,
) {
    let mut go = || -> std::io::Result<()> {
        let mut len = [0u8; 2];
        from.read_exact(&mut len)?;
        let mut hello = vec![0u8; u16::from_be_bytes(len) as usize];
        from.read_exact(&mut hello)?;
        to.write_all(&len)?;
        to.write_all(&hello)?;
        loop {
            let mut head = [0u8; 48];
            from.read_exact(&mut head)?;
            let body = u32::from_le_bytes(head[44..48].try_into().unwrap()) as usize;
            let mut frame = head.to_vec();
            frame.resize(48 + body, 0);
            from.read_exact(&mut frame[48..])?;
            // Only batch frames (kind 1) count.
            if head[5] == 1 {
                if countdown(flip) {
                    frame[48 + body / 2] ^= 0x40;
                }
                if countdown(drop_n) {
                    continue;
                }
                if countdown(replay) {
                    to.write_all(&frame)?;
                }
            }
            to.write_all(&frame)?;
        }
    };
    let _ = go();
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}

#[test]
fn altered_replayed_or_dropped_batches_are_rejected_and_the_stream_resumes_exact() {
    let a = Agent::start("tamper-a");
    let key = new_key(&a.dir);
    let (b, peer) = recovery_agent("tamper-b", &key, "");
    let proxy = Proxy::start(peer);
    a.create("d0", "16M");
    a.ferry_line(&format!(
        "vpg create app --volume d0 --journal-size 16M --peer {} --peer-key {}",
        proxy.addr,
        key.display()
    ));
    let first = tag_and_wait(&a, &b, "app", "clean");
    assert!(first > 0);

    // One flipped byte: the frame fails authentication, the session ends, nothing of it
    // is applied; the protected site reconnects and resends.
    proxy.flip_frame.store(0, Ordering::Relaxed);
    qemu_io(a.tcp_uri("d0"), &["write -P 0x61 0 1M"]);
    tag_and_wait(&a, &b, "app", "after-flip");
    assert!(b.wait_log("failed authentication"), "{}", b.log());
    // A dropped frame: the next one opens under the wrong nonce: rejected the same way.
    proxy.drop_frame.store(0, Ordering::Relaxed);
    qemu_io(a.tcp_uri("d0"), &["write -P 0x62 2M 1M"]);
    qemu_io(a.tcp_uri("d0"), &["write -P 0x63 4M 1M"]);
    tag_and_wait(&a, &b, "app", "after-drop");
    // A replayed frame: sent twice, the second copy fails (its nonce is spent).
    proxy.replay_frame.store(0, Ordering::Relaxed);
    qemu_io(a.tcp_uri("d0"), &["write -P 0x64 6M 1M"]);
    tag_and_wait(&a, &b, "app", "after-replay");
    let rejected = b.log().matches("failed authentication").count();
    assert!(rejected >= 3, "{rejected} rejections logged:\n{}", b.log());
    for (vol, uri) in export(&b, "app", "after-replay") {
        let out = compare(&uri, a.tcp_uri(&vol));
        assert!(out.contains("Images are identical"), "{vol}: {out}");
    }
    b.ferry(&["checkpoint", "unexport", "app"]);

    // Deleting the VPG deletes its replica too.
    a.ferry(&["vpg", "delete", "app"]);
    assert!(
        b.ferry(&["replica", "list"]).contains("no replicas"),
        "{}",
        b.ferry(&["replica", "list"])
    );
}

#[test]
fn kill_9_of_either_agent_mid_stream_converges_with_nothing_lost() {
    let mut s = sites("kill", "", "");
    // Recovery site killed while batches arrive.
    let uri = s.a.unix_uri("d0");
    let dir = s.a.dir.clone();
    let fio = std::thread::spawn(move || fio_verify(&dir, &uri, "32M", "7"));
    std::thread::sleep(Duration::from_millis(1500));
    s.b.kill9();
    fio.join().unwrap();
    s.b.spawn();
    let peer_now = replication_addr(&s.b);
    if peer_now != s.peer {
        // Port 0 gave another port: restart on the one the VPG names.
        s.b.kill9();
        let cfg = std::fs::read_to_string(s.b.config_path()).unwrap();
        let port = s.peer.rsplit_once(':').unwrap().1;
        let cfg = cfg.replace("127.0.0.1:0\"\npairing", &format!("127.0.0.1:{port}\"\npairing"));
        std::fs::write(s.b.config_path(), &cfg).unwrap();
        respawn_with_config(&mut s.b);
    }
    tag_and_wait(&s.a, &s.b, "app", "after-b-crash");
    for (vol, uri) in export(&s.b, "app", "after-b-crash") {
        let out = compare(&uri, s.a.tcp_uri(&vol));
        assert!(
            out.contains("Images are identical"),
            "{vol} after the recovery site's crash: {out}"
        );
    }
    s.b.ferry(&["checkpoint", "unexport", "app"]);

    // Protected site killed under load: on restart its journal recovers and the stream
    // goes on from the last acknowledged record.
    let uri = s.a.unix_uri("d1");
    let dir = s.a.dir.clone();
    let mut fio = Command::new("fio")
        .current_dir(&dir)
        .args([
            "--name=crash",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--size=16M",
            "--time_based",
            "--runtime=30",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    s.a.kill9();
    let _ = fio.wait();
    s.a.spawn();
    tag_and_wait(&s.a, &s.b, "app", "after-a-crash");
    for (vol, uri) in export(&s.b, "app", "after-a-crash") {
        let out = compare(&uri, s.a.tcp_uri(&vol));
        assert!(
            out.contains("Images are identical"),
            "{vol} after the protected site's crash: {out}"
        );
    }
    let _ = &s.key;
}

/// Restarts an agent on its (edited) config file.
fn respawn_with_config(b: &mut Agent) {
    let cfg = std::fs::read_to_string(b.config_path()).unwrap();
    // `spawn` rewrites the config from its parts: keep the edited replication section.
    let extra = cfg
        .split_once("[replication]")
        .map(|(_, r)| format!("[replication]{r}"))
        .unwrap();
    b.set_extra_config(&extra);
    b.spawn();
}

/// Stops the recovery agent, lets `damage` change its newest history segment, and
/// starts it again on the same replication port.
fn damage_newest_segment(s: &mut Sites, damage: impl FnOnce(&mut Vec<u8>)) {
    let port = s.peer.rsplit_once(':').unwrap().1.to_string();
    s.b.stop();
    let hist = s.b.dir.join("datastore/replicas/app/history");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&hist).unwrap().map(|e| e.unwrap().path()).collect();
    segs.sort();
    let last = segs.last().unwrap();
    let mut bytes = std::fs::read(last).unwrap();
    damage(&mut bytes);
    std::fs::write(last, &bytes).unwrap();
    let cfg = std::fs::read_to_string(s.b.config_path()).unwrap();
    std::fs::write(
        s.b.config_path(),
        cfg.replace("127.0.0.1:0\"\npairing", &format!("127.0.0.1:{port}\"\npairing")),
    )
    .unwrap();
    respawn_with_config(&mut s.b);
}

fn assert_identical_at(s: &Sites, tag: &str) {
    for (vol, uri) in export(&s.b, "app", tag) {
        let out = compare(&uri, s.a.tcp_uri(&vol));
        assert!(out.contains("Images are identical"), "{vol} at {tag}: {out}");
    }
    s.b.ferry(&["checkpoint", "unexport", "app"]);
}

#[test]
fn a_damaged_history_tail_is_cut_and_the_replica_converges() {
    let mut s = sites("torn", "", "");
    qemu_io(s.a.tcp_uri("d1"), &["write -P 0x71 0 2M"]);
    tag_and_wait(&s.a, &s.b, "app", "before");

    // A batch torn by a crash (bytes after the last end mark): cut; it was never
    // acknowledged, so the stream simply goes on.
    damage_newest_segment(&mut s, |b| b.extend_from_slice(&[0xee; 300]));
    let ev = s.b.ferry(&["replica", "show", "app"]);
    assert!(ev.contains("cut at byte"), "{ev}");
    qemu_io(s.a.tcp_uri("d1"), &["write -P 0x72 4M 1M"]);
    tag_and_wait(&s.a, &s.b, "app", "after-torn");
    assert_identical_at(&s, "after-torn");
    assert!(!s.a.ferry(&["vpg", "show", "app"]).contains("lost acknowledged"));

    // Damage inside acknowledged history: those records cannot be sent again, so the
    // protected site re-sends every block (a full sync); the replica converges.
    damage_newest_segment(&mut s, |b| {
        let n = b.len();
        b[n - 60] ^= 0xff;
    });
    assert!(
        wait_for(60, || s
            .a
            .ferry(&["vpg", "show", "app", "--json"])
            .contains("lost acknowledged history")),
        "{}",
        s.a.ferry(&["vpg", "show", "app"])
    );
    qemu_io(s.a.tcp_uri("d0"), &["write -P 0x73 8M 1M"]);
    tag_and_wait(&s.a, &s.b, "app", "after-damage");
    assert_identical_at(&s, "after-damage");
    let ev = s.b.ferry(&["replica", "show", "app"]);
    assert!(ev.contains("were lost here after they were acknowledged"), "{ev}");
}

#[test]
fn a_preseeded_replica_is_delta_synced_and_only_differences_travel() {
    let a = Agent::start("delta-a");
    let key = new_key(&a.dir);
    let (b, peer) = recovery_agent("delta-b", &key, "");
    a.create("d0", "64M");
    qemu_io(
        a.tcp_uri("d0"),
        &["write -P 0x41 0 16M", "write -P 0x42 30M 8M", "write -P 0x43 63M 1M"],
    );
    // The seed: a copy of the volume taken to the recovery site, which then went stale:
    // one region damaged there, two changed here since.
    let seed_dir = b.dir.join("datastore/replicas/app");
    std::fs::create_dir_all(&seed_dir).unwrap();
    std::fs::copy(a.volume_path("d0"), seed_dir.join("d0.img")).unwrap();
    qemu_io(seed_dir.join("d0.img"), &["write -P 0x66 20M 4k"]);
    qemu_io(a.tcp_uri("d0"), &["write -P 0x44 5M 64k", "write -P 0x45 40M 1M"]);

    a.ferry_line(&format!(
        "vpg create app --volume d0 --journal-size 16M --peer {peer} --peer-key {} --preseeded",
        key.display()
    ));
    assert!(
        wait_for(60, || a.ferry(&["vpg", "show", "app"]).contains("delta sync compared")),
        "{}",
        a.ferry(&["vpg", "show", "app"])
    );
    let show = a.ferry(&["vpg", "show", "app"]);
    // 64 KiB regions: one at 5M, one at 20M (4k damaged there), sixteen at 40M.
    assert!(
        show.contains("delta sync compared 64.0 MiB: 1.1 MiB differ"),
        "the regions at 5M, 20M and 40M..41M differ, nothing else: {show}"
    );
    tag_and_wait(&a, &b, "app", "synced");
    for (vol, uri) in export(&b, "app", "synced") {
        let out = compare(&uri, a.tcp_uri(&vol));
        assert!(out.contains("Images are identical"), "{vol}: {out}");
    }
    // What the recovery site received: the differing regions, not the volume (its history
    // holds the records uncompressed).
    let v: serde_json::Value = serde_json::from_str(&b.ferry(&["replica", "show", "app", "--json"])).unwrap();
    let history = v["history_bytes"].as_u64().unwrap();
    assert!(
        history < 2 << 20,
        "{history} bytes of history for 1.1 MiB of differences"
    );
}

#[test]
fn create_waits_for_the_initial_sync_and_pause_holds_shipping_until_resume() {
    let mut a = Agent::start("pause-a");
    let key = new_key(&a.dir);
    let (b, peer) = recovery_agent("pause-b", &key, "");
    a.create("d0", "256M");
    qemu_io(a.tcp_uri("d0"), &["write -P 0x51 0 64M"]);
    // --wait shows the initial sync's progress and returns once the VPG protects.
    let out = a.ferry_line(&format!(
        "vpg create app --volume d0 --journal-size 32M --peer {peer} --peer-key {} --wait",
        key.display()
    ));
    assert!(out.contains("VPG app: protecting"), "{out}");
    let first = tag_and_wait(&a, &b, "app", "before-pause");

    let out = a.ferry(&["vpg", "pause", "app"]);
    assert!(out.contains("paused"), "{out}");
    qemu_io(a.tcp_uri("d0"), &["write -P 0x52 100M 4M"]);
    a.ferry(&["checkpoint", "tag", "app", "while-paused"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(a.ferry(&["status"]).contains("app: paused"));
    assert!(
        !checkpoints(&b, "app").iter().any(|(_, t)| t == "while-paused"),
        "a paused VPG shipped"
    );
    // The state is the machine's and survives a crash; pausing twice is refused.
    a.kill9();
    a.spawn();
    let v: serde_json::Value = serde_json::from_str(&a.ferry(&["vpg", "show", "app", "--json"])).unwrap();
    assert_eq!(
        (v["format"].as_u64(), v["state_kind"].as_str()),
        (Some(2), Some("paused")),
        "{v}"
    );
    let again = a.ferry_fails(&["vpg", "pause", "app"]);
    assert!(again.contains("already paused"), "{again}");
    a.ferry(&["vpg", "resume", "app"]);
    let later = tag_and_wait(&a, &b, "app", "after-resume");
    assert!(later > first);
    assert!(checkpoints(&b, "app").iter().any(|(_, t)| t == "while-paused"));
    for (vol, uri) in export(&b, "app", "after-resume") {
        let out = compare(&uri, a.tcp_uri(&vol));
        assert!(out.contains("Images are identical"), "{vol}: {out}");
    }
}

#[test]
fn history_over_its_hard_limit_is_applied_to_the_replica_and_says_what_remains() {
    let s = sites("limit", "--history-max-bytes 64M", "");
    let (a, b) = (&s.a, &s.b);
    qemu_io(a.tcp_uri("d0"), &["write -P 0x81 0 48M"]);
    qemu_io(a.tcp_uri("d1"), &["write -P 0x82 0 32M"]);
    let tag = tag_and_wait(a, b, "app", "full");
    assert!(
        wait_for(30, || b.ferry(&["replica", "show", "app"]).contains("hard limit")),
        "{}",
        b.ferry(&["replica", "show", "app"])
    );
    let v: serde_json::Value = serde_json::from_str(&b.ferry(&["replica", "show", "app", "--json"])).unwrap();
    assert!(v["applied_seq"].as_u64().unwrap() > 0, "{v}");
    assert!(v["history_bytes"].as_u64().unwrap() <= 128 << 20, "{v}");
    let ev = b.ferry(&["replica", "show", "app"]);
    assert!(ev.contains("s of history remain"), "{ev}");
    // The newest point is still in history, and exact.
    assert!(checkpoints(b, "app").iter().any(|(seq, _)| *seq == tag));
    for (vol, uri) in export(b, "app", "full") {
        let out = compare(&uri, a.tcp_uri(&vol));
        assert!(out.contains("Images are identical"), "{vol}: {out}");
    }
}

/// fio writing `size` of incompressible random data at QD8, at most `rate` bytes/s (no
/// verify: the compare after checks the bytes).
fn fio_fill(dir: &Path, uri: &str, size: &str, rate: &str) {
    require("fio");
    let out = ok(Command::new("fio").current_dir(dir).args([
        "--name=fill",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=randwrite",
        "--bs=64k",
        "--iodepth=8",
        &format!("--size={size}"),
        "--refill_buffers",
        &format!("--rate={rate}"),
    ]));
    assert!(out.contains("err= 0"), "{out}");
}

/// A protected agent whose link is capped at 2 MB/s, with volume d0 (64M) in VPG `app`,
/// whose writes wait while its RPO is above 1 s; and its recovery agent.
fn throttled_sites(tag: &str) -> (Agent, Agent) {
    let a = Agent::start_with(&format!("{tag}-a"), "[replication]\nbandwidth = \"2M\"\n");
    let key = new_key(&a.dir);
    let (b, peer) = recovery_agent(&format!("{tag}-b"), &key, "");
    a.create("d0", "64M");
    a.ferry_line(&format!(
        "vpg create app --volume d0 --journal-size 64M --peer {peer} --peer-key {} --throttle-rpo 1s --wait",
        key.display()
    ));
    (a, b)
}

fn held_ms(a: &Agent) -> u64 {
    let v: serde_json::Value = serde_json::from_str(&a.ferry(&["vpg", "show", "app", "--json"])).unwrap();
    v["protection"]["throttle_held_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("{v}"))
}

#[test]
fn the_throttle_holds_writes_while_the_link_falls_behind_and_never_while_paused() {
    let (a, b) = throttled_sites("throttle");
    assert_eq!(held_ms(&a), 0);
    // 16 MiB of incompressible writes at twice what the link carries: unthrottled, the
    // recovery site would end about 4 s behind. (A burst shorter than the throttle is the
    // journal's to absorb: the throttle acts on the RPO, which takes that long to grow.)
    fio_fill(&a.dir, &a.unix_uri("d0"), "16M", "4m");
    let held = held_ms(&a);
    assert!(held > 0, "writes outran the link and none was held");
    assert!(
        a.ferry(&["events"]).contains("writes throttled"),
        "{}",
        a.ferry(&["events"])
    );
    assert!(
        a.ferry(&["vpg", "show", "app"])
            .contains("writes throttled while the RPO is above 1.0 s")
    );

    // Paused, the VPG ships nothing: its writes must not wait for a recovery site that
    // will not catch up.
    a.ferry(&["vpg", "pause", "app"]);
    fio_fill(&a.dir, &a.unix_uri("d0"), "8M", "4m");
    assert_eq!(held_ms(&a), held, "writes were held while the VPG was paused");
    a.ferry(&["vpg", "resume", "app"]);
    tag_and_wait(&a, &b, "app", "after");
    for (vol, uri) in export(&b, "app", "after") {
        let out = compare(&uri, a.tcp_uri(&vol));
        assert!(out.contains("Images are identical"), "{vol}: {out}");
    }
}

#[test]
fn a_recovery_site_that_stops_answering_does_not_stall_throttled_writes() {
    let (a, b) = throttled_sites("stall");
    // Frozen: its connection stays up, and nothing is acknowledged any more.
    b.signal(libc::SIGSTOP);
    fio_fill(&a.dir, &a.unix_uri("d0"), "8M", "4m");
    let ev = a.ferry(&["events"]);
    b.signal(libc::SIGCONT);
    assert!(ev.contains("writes throttled"), "{ev}");
    assert!(ev.contains("throttle let go"), "{ev}");
    tag_and_wait(&a, &b, "app", "thawed");
    for (vol, uri) in export(&b, "app", "thawed") {
        let out = compare(&uri, a.tcp_uri(&vol));
        assert!(out.contains("Images are identical"), "{vol}: {out}");
    }
}

/// The history segments in a replica's directory: (segments, their indexes).
fn history_files(b: &Agent) -> (Vec<String>, Vec<String>) {
    let hist = b.dir.join("datastore/replicas/app/history");
    let mut names: Vec<String> = std::fs::read_dir(&hist)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let of = |ext: &str| {
        names
            .iter()
            .filter_map(|n| n.strip_suffix(ext).map(str::to_string))
            .collect()
    };
    (of(".seg"), of(".idx"))
}

#[test]
fn closed_segments_are_indexed_and_a_restart_reads_the_indexes_not_the_records() {
    // 1 MiB segments and a 1 MiB index cache: many closed segments, looked up through the
    // cache and from disk; a hard limit ages the oldest ones away.
    let mut s = sites(
        "segidx",
        "--history 1h --history-max-bytes 64M",
        "history_segment = \"1M\"\nhistory_index_cache = \"1M\"",
    );
    for (i, vol) in ["d0", "d1", "d0", "d1"].iter().enumerate() {
        let p = 0x61 + i;
        qemu_io(
            s.a.tcp_uri(vol),
            &[
                &format!("write -P {p} {}M 20M", i / 2 * 10),
                &format!("write -P {} 30M 64k", p + 8),
            ],
        );
    }
    let tag = tag_and_wait(&s.a, &s.b, "app", "indexed");
    // Over its hard limit, history is applied to the replica and whole segments go.
    let applied = || {
        let v: serde_json::Value = serde_json::from_str(&s.b.ferry(&["replica", "show", "app", "--json"])).unwrap();
        v["applied_seq"].as_u64().unwrap()
    };
    assert!(
        wait_for(30, || applied() > 0),
        "{}",
        s.b.ferry(&["replica", "show", "app"])
    );
    let (segs, idxs) = history_files(&s.b);
    assert!(segs.len() >= 4, "segments: {segs:?}");
    assert!(
        segs[0].parse::<u64>().unwrap() > 0,
        "the first segment is still there: {segs:?}"
    );
    // Every segment but the one being written has its index; no index outlives its segment.
    assert!(
        segs[..segs.len() - 1].iter().all(|n| idxs.contains(n)),
        "{segs:?} {idxs:?}"
    );
    assert!(idxs.iter().all(|n| segs.contains(n)), "{segs:?} {idxs:?}");
    assert_identical_at(&s, "indexed");

    // A restart reads the indexes: only the segment being written at the stop is scanned.
    damage_newest_segment(&mut s, |_| {});
    assert!(s.b.wait_log("history loaded"), "{}", s.b.log());
    let log = s.b.log();
    let line = log.lines().rfind(|l| l.contains("history loaded")).unwrap();
    assert!(line.contains("scanned=1"), "{line}");
    assert!(checkpoints(&s.b, "app").iter().any(|(seq, _)| *seq == tag));
    assert_identical_at(&s, "indexed");
    // And replication goes on past the restart.
    qemu_io(s.a.tcp_uri("d1"), &["write -P 0x7e 5M 2M"]);
    tag_and_wait(&s.a, &s.b, "app", "after-restart");
    assert_identical_at(&s, "after-restart");
}
