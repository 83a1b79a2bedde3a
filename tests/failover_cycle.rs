//! The whole cycle between two real agents, bytes compared at every step: protect A → B,
//! live failover to B and commit, reverse protection B → A (A's volumes become the
//! replica's images, and only the regions that differ travel), failback (a live failover
//! back to A and commit) and protection A → B again.

mod common;

use std::process::Command;

use common::sites::{checkpoints, compare, export, json, replication_addr, tag_and_wait, wait_for};
use common::{Agent, ok, qemu_io};
use serde_json::Value;

/// An agent that accepts holders of `key` as a recovery site, and can protect to them.
fn site(tag: &str, key: &std::path::Path) -> Agent {
    let cfg = format!(
        "[replication]\nlisten = \"127.0.0.1:0\"\npairing_keys = [{:?}]\n",
        key.display().to_string()
    );
    Agent::start_with(tag, &cfg)
}

/// Two sites that accept each other (one pairing key), with their replication addresses
/// and the key's path.
fn two_sites(tag: &str) -> (Agent, Agent, String, String, String) {
    let keydir = common::scratch_dir(&format!("{tag}-key"));
    let key = keydir.join("pairing.key");
    ok(Command::new(common::FERRY).arg("pair").arg(&key));
    let a = site(&format!("{tag}-a"), &key);
    let b = site(&format!("{tag}-b"), &key);
    let (a_addr, b_addr) = (replication_addr(&a), replication_addr(&b));
    (a, b, a_addr, b_addr, key.display().to_string())
}

fn state(a: &Agent, vpg: &str) -> String {
    json(a, &["vpg", "show", vpg, "--json"])["state_kind"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits until `to` protects `app` to `peer` at `epoch`, having resent at most 1 MiB
/// plus a region's granularity; its `vpg show --json`.
fn protecting_again(to: &Agent, peer: &Agent, epoch: u64, what: &str) -> Value {
    assert!(
        wait_for(60, || state(to, "app") == "protecting"),
        "{}\n{}",
        to.ferry(&["vpg", "show", "app"]),
        peer.ferry(&["status"])
    );
    let shown = json(to, &["vpg", "show", "app", "--json"]);
    assert_eq!(shown["epoch"], epoch);
    let sent = shown["protection"]["ship"]["acked_bytes"].as_u64().unwrap();
    eprintln!("{what}: {sent} bytes of records sent for 24 MiB of volumes");
    assert!(sent <= (2 << 20) + 4096, "{what}: {sent}");
    shown
}

/// Every volume of `vpg` at `from` (its volumes) equals the newest checkpoint at `to`
/// (tagged `tag` at `from` now).
fn same_at_both(from: &Agent, to: &Agent, vpg: &str, tag: &str) {
    tag_and_wait(from, to, vpg, tag);
    for (v, uri) in export(to, vpg, tag) {
        let r = compare(from.tcp_uri(&v), &uri);
        assert!(r.contains("Images are identical"), "{v} at {tag}: {r}");
    }
    to.ferry(&["checkpoint", "unexport", vpg]);
}

#[test]
fn protect_fail_over_reverse_fail_back_and_protect_again_with_only_differences_resent() {
    let (a, b, a_addr, b_addr, k) = two_sites("cycle");
    a.create("d0", "16M");
    a.create("d1", "8M");
    a.ferry_line(&format!(
        "vpg create app --volume d0 --volume d1 --journal-size 16M --peer {b_addr} --peer-key {k} --wait"
    ));
    qemu_io(a.tcp_uri("d0"), &["write -P 0x11 0 4M"]);
    qemu_io(a.tcp_uri("d1"), &["write -P 0x22 2M 2M"]);
    same_at_both(&a, &b, "app", "protected");

    // Fail over to B and commit; B writes 1 MiB. A client connected during needs-commit
    // stays connected through the commit and the reverse protection.
    b.ferry(&["failover", "live", "app", "--shutdown", "graceful"]);
    assert_eq!(state(&a, "app"), "fenced");
    let mut held = HeldClient::connect(&b.tcp_uri("d0"));
    qemu_io(b.tcp_uri("d0"), &["write -P 0x66 5M 1M"]);
    let out = b.ferry(&["failover", "commit", "app"]);
    assert!(out.contains("COMMITTED"), "{out}");

    // Refused before the commit's VPG exists there / twice.
    let err = a.ferry_fails(&["vpg", "reverse", "app", "--peer", &b_addr, "--peer-key", &k]);
    assert!(err.contains("no live failover of \"app\" was committed here"), "{err}");

    // Reverse protection B → A: A's volumes become the replica; only what differs travels.
    let out = b.ferry(&["vpg", "reverse", "app", "--peer", &a_addr, "--peer-key", &k]);
    assert!(out.contains("protected from this site"), "{out}");
    let err = b.ferry_fails(&["vpg", "reverse", "app", "--peer", &a_addr, "--peer-key", &k]);
    assert!(err.contains("protected from this site already"), "{err}");
    // The bytes resynced: B's 1 MiB write, at most a region's granularity more.
    let shown = protecting_again(&b, &a, 2, "reverse protection");
    assert!(
        shown
            .to_string()
            .contains("delta sync compared 24.0 MiB: 1.0 MiB differ"),
        "{shown}"
    );
    // Without reading the volumes: each site knew what it changed since the failover.
    let status = b.ferry(&["failover", "status"]);
    assert!(
        status.contains("compares only the regions either site changed since the failover (1.0 MiB changed here)"),
        "{status}"
    );
    let vols = a.ferry(&["volume", "list"]);
    assert!(!vols.contains("d0"), "A's volumes are the replica's images now: {vols}");
    // The client connected before the commit writes now: its write is captured and
    // shipped like any other.
    held.write_64k_at(10 << 20, 0x5a);
    qemu_io(b.tcp_uri("d0"), &["read -P 0x5a 10M 64k"]);
    same_at_both(&b, &a, "app", "reversed");
    drop(held);

    // Fail back: a live failover to A, commit, and protect A → B again.
    qemu_io(b.tcp_uri("d1"), &["write -P 0x77 0 1M"]);
    a.ferry(&["failover", "live", "app", "--shutdown", "graceful"]);
    assert_eq!(state(&b, "app"), "fenced");
    a.ferry(&["failover", "commit", "app"]);
    a.ferry(&["vpg", "reverse", "app", "--peer", &b_addr, "--peer-key", &k]);
    // Only B's 1 MiB write since.
    protecting_again(&a, &b, 3, "failback");
    qemu_io(a.tcp_uri("d0"), &["write -P 0x88 8M 1M"]);
    same_at_both(&a, &b, "app", "failed-back");
    qemu_io(a.tcp_uri("d1"), &["read -P 0x77 0 1M"]);
    qemu_io(a.tcp_uri("d0"), &["read -P 0x66 5M 1M"]);
}

#[test]
fn a_move_and_a_move_back_lose_nothing_and_protect_in_reverse_each_time() {
    let (mut a, b, a_addr, b_addr, k) = two_sites("move");
    a.create("d0", "16M");
    a.ferry_line(&format!(
        "vpg create app --volume d0 --journal-size 16M --peer {b_addr} --peer-key {k} --wait"
    ));
    same_at_both(&a, &b, "app", "start");
    // Written just before the move: a move loses nothing.
    qemu_io(a.tcp_uri("d0"), &["write -P 0x31 1M 1M"]);
    let out = b.ferry(&move_back_to(&a_addr, &k));
    assert!(out.contains("COMMITTED"), "{out}");
    qemu_io(b.tcp_uri("d0"), &["read -P 0x31 1M 1M"]);
    assert!(
        wait_for(60, || run_ok(&b, &["vpg", "show", "app", "--json"])
            && state(&b, "app") == "protecting"),
        "{}",
        b.ferry(&["status"])
    );
    qemu_io(b.tcp_uri("d0"), &["write -P 0x32 3M 1M"]);
    same_at_both(&b, &a, "app", "moved");
    // And back.
    let out = a.ferry(&move_back_to(&b_addr, &k));
    assert!(out.contains("COMMITTED"), "{out}");
    qemu_io(a.tcp_uri("d0"), &["read -P 0x31 1M 1M", "read -P 0x32 3M 1M"]);
    assert!(wait_for(60, || run_ok(&a, &["vpg", "show", "app", "--json"])
        && state(&a, "app") == "protecting"));
    assert_eq!(json(&a, &["vpg", "show", "app", "--json"])["epoch"], 3);
    same_at_both(&a, &b, "app", "moved-back");
    // A move needs the protected site: refused, nothing changed, when it is gone.
    a.kill9();
    assert!(wait_for(30, || !b.ferry(&["replica", "list"]).contains("receiving")));
    let err = b.ferry_fails(&["failover", "move", "app"]);
    assert!(err.contains("a move needs the protected site"), "{err}");
    a.spawn();
}

/// An NBD client (python3-libnbd) that stays connected and writes when told.
struct HeldClient(std::process::Child, std::io::BufReader<std::process::ChildStdout>);

impl HeldClient {
    fn connect(uri: &str) -> HeldClient {
        let script = "import nbd, sys\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\nprint('ready', flush=True)\nfor line in sys.stdin:\n    off, byte = (int(x) for x in line.split())\n    h.pwrite(bytes([byte]) * 65536, off)\n    h.flush()\n    print('done', flush=True)\n";
        let (child, out) = common::python_client(&["-c", script, uri]);
        HeldClient(child, out)
    }

    fn write_64k_at(&mut self, off: u64, byte: u8) {
        use std::io::{BufRead, Write};
        writeln!(self.0.stdin.as_mut().unwrap(), "{off} {byte}").unwrap();
        let mut line = String::new();
        self.1.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "done", "the held client's write failed");
    }
}

impl Drop for HeldClient {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ferry failover move app` with reverse protection back to `peer`.
fn move_back_to<'a>(peer: &'a str, key: &'a str) -> [&'a str; 8] {
    [
        "failover",
        "move",
        "app",
        "--reverse-protection",
        "--peer",
        peer,
        "--peer-key",
        key,
    ]
}

fn run_ok(a: &Agent, args: &[&str]) -> bool {
    common::run(a.cli().args(args)).status.success()
}

#[test]
fn a_site_holding_writes_its_peer_never_received_is_not_resynced_over() {
    let (mut a, mut b, a_addr, b_addr, k) = two_sites("sb");
    a.create("d0", "16M");
    a.ferry_line(&format!(
        "vpg create app --volume d0 --journal-size 16M --peer {b_addr} --peer-key {k} --wait"
    ));
    same_at_both(&a, &b, "app", "start");
    // Restarts keep each site's replication address.
    let keep = |x: &mut Agent, addr: &str| {
        x.set_extra_config(&format!("[replication]\nlisten = {addr:?}\npairing_keys = [{k:?}]\n"));
    };
    keep(&mut a, &a_addr);
    keep(&mut b, &b_addr);
    // The recovery site goes away; the protected site writes on, then dies too.
    b.stop();
    qemu_io(a.tcp_uri("d0"), &["write -P 0x71 2M 1M"]);
    a.kill9();
    // A disaster failover at B, committed and protected back.
    b.spawn();
    let out = b.ferry(&["failover", "live", "app"]);
    assert!(out.contains("not connected"), "{out}");
    b.ferry(&["failover", "commit", "app"]);
    b.ferry(&["vpg", "reverse", "app", "--peer", &a_addr, "--peer-key", &k]);
    // A comes back: B's reverse protection opens the VPG there, and A refuses to be
    // resynced over the write B never received.
    a.spawn();
    assert!(
        wait_for(30, || b.ferry(&["vpg", "show", "app"]).contains("never received")),
        "{}",
        b.ferry(&["vpg", "show", "app"])
    );
    let shown = b.ferry(&["vpg", "show", "app"]);
    assert!(shown.contains("nothing was overwritten"), "{shown}");
    // A's write is still there.
    qemu_io(a.tcp_uri("d0"), &["read -P 0x71 2M 1M"]);
}

/// A writer at the protected site: 4 KiB writes, each to a block of its own (write `i` to
/// block `i`, filled with `i % 251 + 1`), QD1; the blocks it saw acknowledged.
struct NumberedWriter(std::process::Child, std::io::BufReader<std::process::ChildStdout>);

impl NumberedWriter {
    fn start(uri: &str, blocks: u64) -> NumberedWriter {
        // It stops at the first refusal (the fence: EPERM) or a dead connection.
        let script = "import nbd, sys\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\nprint('ready', flush=True)\nfor i in range(int(sys.argv[2])):\n    try:\n        h.pwrite(bytes([i % 251 + 1]) * 4096, i * 4096)\n    except Exception:\n        break\n    print(i, flush=True)\n";
        let (child, out) = common::python_client(&["-c", script, uri, &blocks.to_string()]);
        NumberedWriter(child, out)
    }

    /// Waits for the writer's end; the blocks acknowledged.
    fn acknowledged(mut self) -> Vec<u64> {
        use std::io::BufRead;
        let _ = self.0.wait();
        self.1
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

/// The blocks of `acked` that `image` does not hold as the writer wrote them.
fn lost(image: &std::path::Path, acked: &[u64]) -> Vec<u64> {
    let bytes = std::fs::read(image).unwrap();
    acked
        .iter()
        .copied()
        .filter(|&i| {
            let b = &bytes[(i * 4096) as usize..((i + 1) * 4096) as usize];
            b.iter().any(|&x| x != (i % 251 + 1) as u8)
        })
        .collect()
}

/// kill -9 of either agent at each step of a move under a writer: graceful fence at the
/// source, the failover at the target before and after it serves, the commit before the
/// reverse protection. Each ends done (the target protects back to the source) or rolled
/// back (the source writes and protects again), and every acknowledged write is there.
#[test]
fn a_move_killed_at_any_step_ends_done_or_rolled_back_with_nothing_acknowledged_lost() {
    for (victim, point, done) in [
        ('a', "fence:fenced", false),
        ('b', "live:fenced", false),
        ('b', "live:served", true),
        ('b', "commit:committed", true),
    ] {
        let tag = format!("kill-{}", point.replace(':', "-"));
        // Fixed replication ports: a site killed and started again is found where it was.
        let keydir = common::scratch_dir(&format!("{tag}-key"));
        let key = keydir.join("pairing.key");
        ok(Command::new(common::FERRY).arg("pair").arg(&key));
        let k = key.display().to_string();
        let site = |s: char| {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let cfg = format!("[replication]\nlisten = \"127.0.0.1:{port}\"\npairing_keys = [{k:?}]\n");
            let point = if s == victim { point } else { "" };
            (
                Agent::start_failing_at(&format!("{tag}-{s}"), &cfg, point),
                format!("127.0.0.1:{port}"),
            )
        };
        let ((mut a, a_addr), (mut b, b_addr)) = (site('a'), site('b'));
        a.create("d0", "16M");
        a.ferry_line(&format!(
            "vpg create app --volume d0 --journal-size 16M --peer {b_addr} --peer-key {k} --wait"
        ));
        assert!(
            wait_for(30, || json(&a, &["vpg", "show", "app", "--json"])["state_kind"]
                == "protecting"
                && b.ferry(&["replica", "list"]).contains("receiving")),
            "{point}: {}",
            a.ferry(&["vpg", "show", "app"])
        );
        // A move needs a checkpoint at the recovery site to start from; the first comes a
        // moment after the initial sync (later on a loaded machine).
        assert!(
            wait_for(30, || !checkpoints(&b, "app").is_empty()),
            "{point}: no checkpoint reached the recovery site"
        );
        let writer = NumberedWriter::start(&a.tcp_uri("d0"), 3000);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let out = common::run(b.cli().args(move_back_to(&a_addr, &k)));
        let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        let acked = writer.acknowledged();
        assert!(acked.len() > 10, "{point}: the writer wrote: {}", acked.len());
        // The agent killed itself at the point; it comes back without the failpoint.
        let crashed = if victim == 'a' { &mut a } else { &mut b };
        assert!(
            wait_for(30, || crashed.child.as_mut().unwrap().try_wait().unwrap().is_some()),
            "{point}: the agent did not stop there ({said})"
        );
        crashed.set_failpoint("");
        crashed.spawn();
        let image = a.dir.join("final.raw");
        if done {
            // Done: B committed and protects back to A.
            assert!(
                wait_for(60, || run_ok(&b, &["vpg", "show", "app", "--json"])
                    && json(&b, &["vpg", "show", "app", "--json"])["state_kind"] == "protecting"),
                "{point}: not done ({said}):\n{}\n{}",
                b.ferry(&["failover", "status"]),
                a.ferry(&["status"])
            );
            common::sites::copy(&b.tcp_uri("d0"), &image);
        } else {
            // Rolled back: A takes writes and protects again.
            assert!(
                wait_for(60, || json(&a, &["vpg", "show", "app", "--json"])["state_kind"]
                    == "protecting"),
                "{point}: not rolled back ({said}):\n{}\n{}",
                a.ferry(&["vpg", "show", "app"]),
                b.ferry(&["status"])
            );
            qemu_io(a.tcp_uri("d0"), &["write -P 0xee 15M 4k"]);
            common::sites::copy(&a.tcp_uri("d0"), &image);
        }
        let missing = lost(&image, &acked);
        eprintln!(
            "{point}: {} writes acknowledged, {} missing, {}",
            acked.len(),
            missing.len(),
            if done { "done" } else { "rolled back" }
        );
        assert!(missing.is_empty(), "{point}: acknowledged writes lost: {missing:?}");
    }
}

/// fio's verify job `name` in `dir`: writes its files and verifies them (`verify_only`:
/// verifies what an earlier run wrote).
fn fio_files(dir: &std::path::Path, name: &str, verify_only: bool) {
    common::require("fio");
    let mut c = Command::new("fio");
    c.args([
        &format!("--name={name}"),
        &format!("--directory={}", dir.display()),
        "--size=4M",
        "--nrfiles=4",
        "--rw=randwrite",
        "--bs=16k",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--randseed=7",
        "--fsync_on_close=1",
    ]);
    if verify_only {
        c.arg("--verify_only");
    }
    let out = common::run(&mut c);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !text.contains("verify:"),
        "fio {name} (verify only: {verify_only}): {text}"
    );
}

/// Mounts `app`'s d0 at `site` (ext4 through nbdfuse and a loop device), verifies fio's
/// earlier jobs, runs job `write` if given; unmounts and checks the filesystem clean.
fn on_ext4(site: &Agent, tag: &str, mkfs: bool, verify: &[&str], write: Option<&str>) {
    let mut att = common::fs::Attached::new(&site.unix_uri("d0"), &site.dir.join(format!("fuse-{tag}")));
    if mkfs {
        ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(att.dev()));
    }
    let mnt = site.dir.join(format!("mnt-{tag}"));
    att.mount(&mnt);
    for job in verify {
        fio_files(&mnt, job, true);
    }
    if let Some(job) = write {
        fio_files(&mnt, job, false);
    }
    ok(&mut Command::new("sync"));
    att.umount();
    let fsck = common::run(Command::new("e2fsck").args(["-f", "-n"]).arg(att.dev()));
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "{tag}: e2fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

/// The seed's cycle on a real filesystem: ext4 written with fio's verify at A, protected
/// to B, moved to B (files verified, more written), protected back with only what changed
/// resent, moved back to A (all verified), protected A → B again. Bytes compared at every
/// step.
#[test]
fn an_ext4_filesystem_written_by_fio_verifies_at_every_step_of_the_cycle() {
    for t in ["nbdfuse", "losetup", "mkfs.ext4", "e2fsck", "fio"] {
        common::require(t);
    }
    let (a, b, a_addr, b_addr, k) = two_sites("fs-cycle");
    a.create("d0", "64M");
    on_ext4(&a, "a1", true, &[], Some("first"));
    a.ferry_line(&format!(
        "vpg create app --volume d0 --journal-size 16M --peer {b_addr} --peer-key {k} --wait"
    ));
    same_at_both(&a, &b, "app", "protected");
    let out = b.ferry(&move_back_to(&a_addr, &k));
    assert!(out.contains("COMMITTED"), "{out}");
    on_ext4(&b, "b1", false, &["first"], Some("second"));
    assert!(
        wait_for(60, || run_ok(&b, &["vpg", "show", "app", "--json"])
            && state(&b, "app") == "protecting"),
        "{}",
        b.ferry(&["status"])
    );
    // Only what changed since the move went back: at most B's job and ext4's metadata.
    let sent = json(&b, &["vpg", "show", "app", "--json"])["protection"]["ship"]["acked_bytes"]
        .as_u64()
        .unwrap();
    eprintln!("reverse protection after the move: {sent} bytes of records for a 64 MiB volume");
    assert!(sent < 24 << 20, "{sent}");
    same_at_both(&b, &a, "app", "moved");
    let out = a.ferry(&move_back_to(&b_addr, &k));
    assert!(out.contains("COMMITTED"), "{out}");
    on_ext4(&a, "a2", false, &["first", "second"], None);
    assert!(wait_for(60, || run_ok(&a, &["vpg", "show", "app", "--json"])
        && state(&a, "app") == "protecting"));
    same_at_both(&a, &b, "app", "back");
}

/// A failover with shutdown none: the protected site writes on during needs-commit (its
/// writes reach the recovery site's history, past the checkpoint) while the recovery site
/// writes too. The commit fences it; reverse protection, knowing both sides' changes,
/// resends just those regions, and the two converge to the recovery site's bytes.
#[test]
fn writes_on_both_sides_after_a_shutdown_none_failover_are_resynced_from_what_each_knows() {
    let (a, b, a_addr, b_addr, k) = two_sites("none");
    a.create("d0", "16M");
    a.ferry_line(&format!(
        "vpg create app --volume d0 --journal-size 16M --peer {b_addr} --peer-key {k} --wait"
    ));
    qemu_io(a.tcp_uri("d0"), &["write -P 0x11 0 4M"]);
    same_at_both(&a, &b, "app", "start");
    b.ferry(&["failover", "live", "app", "--shutdown", "none"]);
    qemu_io(a.tcp_uri("d0"), &["write -P 0x21 6M 1M"]);
    qemu_io(b.tcp_uri("d0"), &["write -P 0x31 9M 1M"]);
    qemu_io(a.tcp_uri("d0"), &["write -P 0x22 12M 1M"]);
    // Both of the protected site's writes have reached the recovery site's history (the
    // commit keeps what arrived; a write still on its way would not be among it).
    tag_and_wait(&a, &b, "app", "after-failover");
    let out = b.ferry(&[
        "failover",
        "commit",
        "app",
        "--reverse-protection",
        "--peer",
        &a_addr,
        "--peer-key",
        &k,
    ]);
    assert!(out.contains("COMMITTED"), "{out}");
    assert!(
        wait_for(60, || run_ok(&b, &["vpg", "show", "app", "--json"])
            && state(&b, "app") == "protecting"),
        "{}",
        b.ferry(&["status"])
    );
    let status = b.ferry(&["failover", "status"]);
    assert!(
        status.contains("compares only the regions either site changed"),
        "{status}"
    );
    // The demoted site knew what it changed too (nothing unshipped): it answers unchanged
    // regions without reading them.
    let changed = ok(Command::new("find").arg(&a.dir).args(["-name", "changed.json"]));
    assert!(changed.contains("replicas/app/changed.json"), "{changed}");
    // A's writes after the checkpoint were never part of the recovery point: B's volume
    // does not hold them, and neither does A's replica after the resync.
    qemu_io(b.tcp_uri("d0"), &["read -P 0x31 9M 1M", "read -P 0x11 0 4M"]);
    same_at_both(&b, &a, "app", "converged");
    // They were kept for salvage at the commit.
    let kept = json(&b, &["vpg", "diverged", "app", "--json"]);
    assert_eq!(kept[0]["volumes"][0]["bytes"], 2 << 20, "{kept}");
}
