//! Two sites in two network namespaces of their own, joined by a veth pair: the link can be
//! shaped (`tc` tbf) and cut (`ip link set down`) without touching any other traffic. The
//! agents are driven through their unix sockets, which every namespace reaches.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::sites::{try_write, wait_for};
use common::{Agent, ok, qemu_io, qemu_io_ro, require, run};

/// Two namespaces and the veth between them; removed (with the veth) on drop.
struct Net {
    a: String,
    b: String,
    dev_a: String,
    addr_a: String,
    addr_b: String,
}

impl Net {
    fn new(tag: &str) -> Net {
        require("ip");
        let id = std::process::id() % 100_000;
        let n = Net {
            a: format!("fy-{tag}-{id}-a"),
            b: format!("fy-{tag}-{id}-b"),
            dev_a: format!("fya{id}"),
            addr_a: format!("10.78.{}.1", id % 250),
            addr_b: format!("10.78.{}.2", id % 250),
        };
        let sub = id % 250;
        for ns in [&n.a, &n.b] {
            let _ = run(Command::new("ip").args(["netns", "del", ns]));
            ok(Command::new("ip").args(["netns", "add", ns]));
            ok(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
        }
        let dev_b = format!("fyb{id}");
        ok(Command::new("ip").args([
            "link", "add", &n.dev_a, "netns", &n.a, "type", "veth", "peer", "name", &dev_b, "netns", &n.b,
        ]));
        ok(Command::new("ip").args(["-n", &n.a, "addr", "add", &format!("10.78.{sub}.1/24"), "dev", &n.dev_a]));
        ok(Command::new("ip").args(["-n", &n.b, "addr", "add", &format!("10.78.{sub}.2/24"), "dev", &dev_b]));
        ok(Command::new("ip").args(["-n", &n.a, "link", "set", &n.dev_a, "up"]));
        ok(Command::new("ip").args(["-n", &n.b, "link", "set", &dev_b, "up"]));
        n
    }

    /// Shapes what site A sends to `rate` (tbf).
    fn shape(&self, rate: &str) {
        ok(Command::new("ip").args([
            "netns",
            "exec",
            &self.a,
            "tc",
            "qdisc",
            "replace",
            "dev",
            &self.dev_a,
            "root",
            "tbf",
            "rate",
            rate,
            "burst",
            "32kb",
            "latency",
            "200ms",
        ]));
    }

    fn link(&self, up: bool) {
        ok(Command::new("ip").args([
            "-n",
            &self.a,
            "link",
            "set",
            &self.dev_a,
            if up { "up" } else { "down" },
        ]));
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = run(Command::new("ip").args(["netns", "del", ns]));
        }
    }
}

fn key(dir: &Path) -> std::path::PathBuf {
    let k = dir.join("pairing.key");
    ok(Command::new(common::FERRY).arg("pair").arg(&k));
    k
}

/// A VPG's state and RPO from `ferry status` on the protected agent.
fn vpg_line(a: &Agent, vpg: &str) -> (String, f64) {
    let st = a.ferry(&["status"]);
    let line = st
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{vpg}: ")))
        .unwrap_or_else(|| panic!("no VPG {vpg} in status:\n{st}"))
        .to_string();
    let rpo = line
        .split("RPO ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or(0.0);
    (line, rpo)
}

fn sites(net: &Net, tag: &str, b_extra: &str) -> (Agent, Agent, String, std::path::PathBuf) {
    let b_cfg = format!(
        "[replication]\nlisten = \"{}:10810\"\npairing_keys = [\"pairing.key\"]\n{b_extra}",
        net.addr_b
    );
    let a = Agent::start_in_netns(&format!("{tag}-a"), &net.a, "[journal]\ncheckpoint_interval_s = 1\n");
    let k = key(&a.dir);
    // The recovery agent's key: a copy, as an operator would make it (in A's directory,
    // which goes with A).
    let bdir_key = {
        let p = a.dir.join("recovery-site.key");
        std::fs::copy(&k, &p).unwrap();
        p
    };
    let b_cfg = b_cfg.replace("\"pairing.key\"", &format!("{:?}", bdir_key.display().to_string()));
    let b = Agent::start_in_netns(&format!("{tag}-b"), &net.b, &b_cfg);
    let peer = format!("{}:10810", net.addr_b);
    (a, b, peer, k)
}

fn fio_load(a: &Agent, vol: &str, rate: &str, secs: u64) -> std::process::Child {
    require("fio");
    Command::new("fio")
        .current_dir(&a.dir)
        .args([
            &format!("--name=load-{vol}"),
            "--ioengine=nbd",
            &format!("--uri={}", a.unix_uri(vol)),
            "--rw=randwrite",
            "--bs=64k",
            "--iodepth=4",
            "--size=64M",
            &format!("--rate={rate}"),
            "--refill_buffers",
            "--time_based",
            &format!("--runtime={secs}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn on_a_saturated_link_the_high_priority_vpg_keeps_the_lower_rpo() {
    let net = Net::new("prio");
    let (a, b, peer, k) = sites(&net, "prio", "");
    net.shape("24mbit"); // 3 MB/s
    for (vpg, vol, prio) in [("hi", "h", "high"), ("lo", "l", "low")] {
        a.create(vol, "64M");
        a.ferry_line(&format!(
            "vpg create {vpg} --volume {vol} --journal-size 256M --peer {peer} --peer-key {} --priority {prio} --rpo 10s",
            k.display()
        ));
    }
    assert!(
        wait_for(120, || vpg_line(&a, "hi").0.contains("protecting")
            && vpg_line(&a, "lo").0.contains("protecting")),
        "initial syncs did not finish:\n{}",
        a.ferry(&["status"])
    );
    // Each VPG writes 2 MB/s of incompressible data: 4 MB/s into a 3 MB/s link.
    let mut loads = vec![fio_load(&a, "h", "2m", 25), fio_load(&a, "l", "2m", 25)];
    let mut samples = Vec::new();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_secs(2));
        samples.push((vpg_line(&a, "hi"), vpg_line(&a, "lo")));
    }
    for l in &mut loads {
        let _ = l.wait();
    }
    let last = samples.last().unwrap();
    let report: Vec<String> = samples
        .iter()
        .map(|(h, l)| format!("hi {:.1} s, lo {:.1} s", h.1, l.1))
        .collect();
    eprintln!("RPO samples (2 s apart): {report:?}");
    assert!(
        last.1.1 > last.0.1,
        "the low-priority VPG should trail: {report:?}\n{}\n{}",
        last.0.0,
        last.1.0
    );
    assert!(
        last.1.0.contains("not meeting SLA"),
        "the low-priority VPG falls behind its 10 s target: {}",
        last.1.0
    );
    // Once the load stops, both catch up.
    assert!(
        wait_for(120, || vpg_line(&a, "lo").1 == 0.0 && vpg_line(&a, "hi").1 == 0.0),
        "{}",
        a.ferry(&["status"])
    );
    drop(b);
}

#[test]
fn a_cut_link_fills_the_journal_then_bitmap_sync_converges() {
    let net = Net::new("cut");
    let (a, b, peer, k) = sites(&net, "cut", "");
    a.create("d0", "64M");
    a.ferry_line(&format!(
        "vpg create app --volume d0 --journal-size 8M --peer {peer} --peer-key {}",
        k.display()
    ));
    assert!(
        wait_for(60, || vpg_line(&a, "app").0.contains("protecting")),
        "{}",
        a.ferry(&["status"])
    );
    net.link(false);
    // 32 MiB of writes into an 8 MiB journal with no link: it fills, the VPG tracks dirty
    // regions; the client's writes never fail.
    qemu_io(
        a.unix_uri("d0"),
        &["write -P 0x31 0 16M", "write -P 0x32 20M 16M", "write -P 0x33 60M 1M"],
    );
    let show = a.ferry(&["vpg", "show", "app"]);
    assert!(show.contains("bitmap-sync"), "{show}");
    std::thread::sleep(Duration::from_secs(3));
    net.link(true);
    // Back: the link reconnects, the journal drains, the dirty regions are read back and
    // shipped, and the VPG protects again.
    let mut tagged = false;
    assert!(
        wait_for(180, || {
            tagged = tagged
                || run(a.cli().args(["checkpoint", "tag", "app", "healed"]))
                    .status
                    .success();
            tagged
                && run(b.cli().args(["checkpoint", "list", "app"]))
                    .stdout
                    .windows(6)
                    .any(|w| w == b"healed")
        }),
        "did not converge:\n{}\n{}",
        a.ferry(&["vpg", "show", "app"]),
        b.ferry(&["status"])
    );
    let view = view_d0(&b, "healed");
    let cmp = run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw", &view])
        .arg(a.unix_uri("d0")));
    let text = String::from_utf8_lossy(&cmp.stdout);
    assert!(
        text.contains("Images are identical"),
        "{text}{}",
        String::from_utf8_lossy(&cmp.stderr)
    );
    let events = a.ferry(&["vpg", "show", "app"]);
    assert!(events.contains("dirty regions drained"), "{events}");
}

/// The unix-socket URI of volume d0 of VPG `app` at `checkpoint`, exported at the recovery
/// agent `b` (its TCP address is inside a namespace).
fn view_d0(b: &Agent, checkpoint: &str) -> String {
    let out = b.ferry(&["checkpoint", "export", "app", "--checkpoint", checkpoint]);
    let name = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("d0: nbd://"))
        .and_then(|u| u.split_once('/').map(|(_, n)| n.to_string()))
        .expect("an export name");
    format!("nbd+unix:///{name}?socket={}", b.socket().display())
}

/// `ferry status --json`-like facts of a VPG at the site that protects it.
fn vpg_json(a: &Agent, vpg: &str) -> serde_json::Value {
    serde_json::from_str(&a.ferry(&["vpg", "show", vpg, "--json"])).unwrap()
}

/// The live failover of `vpg` at `b`, as `ferry failover status --json` shows it.
fn live_json(b: &Agent, vpg: &str) -> serde_json::Value {
    let all: serde_json::Value = serde_json::from_str(&b.ferry(&["failover", "status", "--json"])).unwrap();
    all.as_array()
        .and_then(|l| l.iter().find(|x| x["vpg"] == vpg).cloned())
        .unwrap_or(serde_json::Value::Null)
}

/// Cuts the link, restarts B (so no session of A's survives the cut), fails the VPG over
/// to B with A unreachable, and writes 1 MiB on each side: `a_pat` at 12M on A, `b_pat`
/// at 8M on B. Heals the link and waits until both sites report the split brain.
fn split_brain(net: &Net, a: &Agent, b: &mut Agent, epoch: u64, a_pat: u8, b_pat: u8) {
    net.link(false);
    b.stop();
    b.spawn();
    let out = b.ferry(&["failover", "live", "app", "--shutdown", "force"]);
    assert!(out.contains("not connected"), "{out}");
    qemu_io(b.unix_uri("d0"), &[&format!("write -P {b_pat:#x} 8M 1M")]);
    // A, cut off, never heard of it and takes writes.
    qemu_io(a.unix_uri("d0"), &[&format!("write -P {a_pat:#x} 12M 1M")]);
    net.link(true);
    assert!(
        wait_for(120, || vpg_json(a, "app")["state_kind"] == "split-brain"
            && live_json(b, "app")["split_brain"]["epoch"] == epoch),
        "no split brain reported:\n{}\n{}",
        a.ferry(&["vpg", "show", "app"]),
        b.ferry(&["failover", "status"])
    );
    let shown = vpg_json(a, "app");
    let state = shown["state"].as_str().unwrap();
    assert!(
        state.starts_with(&format!(
            "split brain since epoch {epoch}: 1.0 MiB written here, 1.0 MiB there"
        )),
        "{state}"
    );
    let words = b.ferry(&["failover", "status"]);
    assert!(
        words.contains(&format!("split brain since epoch {epoch}: 1.0 MiB written here, ")),
        "{words}"
    );
    // Nothing was overwritten on either side, and A takes no more writes.
    qemu_io(a.unix_uri("d0"), &[&format!("read -P {a_pat:#x} 12M 1M")]);
    qemu_io(
        b.unix_uri("d0"),
        &[&format!("read -P {b_pat:#x} 8M 1M"), "read -P 0x11 0 4M"],
    );
    let (wrote, text) = try_write(&a.unix_uri("d0"), "write -P 0x99 0 4k");
    assert!(!wrote && text.contains("Operation not permitted"), "{text}");
}

/// A partition, a failover while the sites cannot talk, writes on both sides, a heal:
/// split brain is reported on both sides, nothing is overwritten, and only an operator's
/// resolve settles it, keeping the losing side's writes for salvage. Twice: first keeping
/// the old protected site (the failover is rolled back), then keeping the failover site
/// (the old site is resynced from it by reverse protection).
#[test]
fn a_partition_with_writes_on_both_sides_is_a_split_brain_settled_only_by_resolve() {
    let net = Net::new("split");
    // Both sites accept the holder of one pairing key (each protects to the other in turn).
    let k = key(&common::scratch_dir("split-key"));
    let cfg = |addr: &str| {
        format!(
            "[replication]\nlisten = \"{addr}:10810\"\npairing_keys = [{:?}]\n",
            k.display().to_string()
        )
    };
    let a = Agent::start_in_netns("split-a", &net.a, &cfg(&net.addr_a));
    let mut b = Agent::start_in_netns("split-b", &net.b, &cfg(&net.addr_b));
    let (a_addr, b_addr) = (format!("{}:10810", net.addr_a), format!("{}:10810", net.addr_b));
    a.create("d0", "16M");
    a.ferry_line(&format!(
        "vpg create app --volume d0 --journal-size 16M --peer {b_addr} --peer-key {} --wait",
        k.display()
    ));
    qemu_io(a.unix_uri("d0"), &["write -P 0x11 0 4M"]);
    common::sites::tag_and_wait(&a, &b, "app", "before");

    // Round 1: keep the old protected site. Resolving at A with `--keep here` says where to
    // run it; at B, `--keep peer` keeps B's writes for salvage and rolls the failover back.
    split_brain(&net, &a, &mut b, 2, 0x77, 0x66);
    let err = a.ferry_fails(&["vpg", "resolve", "app", "--keep", "here"]);
    assert!(err.contains("run `ferry vpg resolve app --keep peer` there"), "{err}");
    let reverse: Vec<String> = ["vpg", "reverse", "app", "--peer", &a_addr, "--peer-key"]
        .iter()
        .map(|s| s.to_string())
        .chain([k.display().to_string()])
        .collect();
    let reverse: Vec<&str> = reverse.iter().map(String::as_str).collect();
    let err = b.ferry_fails(&reverse);
    assert!(err.contains("not committed"), "{err}");
    let out = b.ferry(&["vpg", "resolve", "app", "--keep", "peer"]);
    assert!(
        out.contains("rolled back") && out.contains("1.0 MiB of this site's diverged writes kept"),
        "{out}"
    );
    let kept: serde_json::Value = serde_json::from_str(&b.ferry(&["vpg", "diverged", "app", "--json"])).unwrap();
    assert_eq!(
        kept[0]["volumes"][0]["regions"],
        serde_json::json!([[8 << 20, 1 << 20]]),
        "{kept}"
    );
    let salvage =
        |at: &Agent, epoch: u64| format!("nbd+unix:///app@diverged-e{epoch}.d0?socket={}", at.socket().display());
    qemu_io_ro(salvage(&b, 2), &["read -P 0x66 8M 1M", "read -P 0 0 8M"]);
    // A is unfenced at epoch 2 and its writes reach B; B's were undone.
    assert!(
        wait_for(90, || vpg_json(&a, "app")["state_kind"] == "protecting"),
        "{}",
        a.ferry(&["vpg", "show", "app"])
    );
    common::sites::tag_and_wait(&a, &b, "app", "kept-a");
    let view = view_d0(&b, "kept-a");
    qemu_io_ro(&view, &["read -P 0x77 12M 1M", "read -P 0x11 0 4M", "read -P 0 8M 1M"]);
    b.ferry(&["checkpoint", "unexport", "app"]);

    // Round 2: keep the site failed over to. At A, `--keep peer` keeps A's writes for
    // salvage; B learns it is settled, commits and protects back, and A converges to B.
    split_brain(&net, &a, &mut b, 4, 0x55, 0x44);
    let err = b.ferry_fails(&["vpg", "resolve", "app", "--keep", "here"]);
    assert!(err.contains("run `ferry vpg resolve app --keep peer` there"), "{err}");
    let out = a.ferry(&["vpg", "resolve", "app", "--keep", "peer"]);
    assert!(out.contains("settled for the other site"), "{out}");
    qemu_io_ro(salvage(&a, 4), &["read -P 0x55 12M 1M", "read -P 0 0 12M"]);
    assert!(
        wait_for(60, || live_json(&b, "app")["split_brain"].is_null()),
        "{}",
        b.ferry(&["failover", "status"])
    );
    let out = b.ferry(&["failover", "commit", "app"]);
    assert!(out.contains("COMMITTED"), "{out}");
    b.ferry(&reverse);
    assert!(
        wait_for(120, || vpg_json(&b, "app")["state_kind"] == "protecting"),
        "{}\n{}",
        b.ferry(&["vpg", "show", "app"]),
        a.ferry(&["status"])
    );
    common::sites::tag_and_wait(&b, &a, "app", "converged");
    let view = view_d0(&a, "converged");
    let same = common::sites::compare(&view, b.unix_uri("d0"));
    assert!(same.contains("Images are identical"), "{same}");
    // B's round-2 write, and at 12M what round 1 kept of A's (A's round-2 write is gone).
    qemu_io_ro(&view, &["read -P 0x44 8M 1M", "read -P 0x77 12M 1M"]);
    // A's diverged writes outlive the resync, until deleted.
    qemu_io_ro(salvage(&a, 4), &["read -P 0x55 12M 1M"]);
    let out = a.ferry(&["vpg", "diverged", "app", "--delete"]);
    assert!(out.contains("deleted"), "{out}");
    let (read, _) = try_write(&salvage(&a, 4), "read 12M 4k");
    assert!(!read, "the salvage export is gone");
}
