//! Two sites in two network namespaces of their own, joined by a veth pair: the link can be
//! shaped (`tc` tbf) and cut (`ip link set down`) without touching any other traffic. The
//! agents are driven through their unix sockets, which every namespace reaches.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::sites::wait_for;
use common::{Agent, ok, qemu_io, require, run};

/// Two namespaces and the veth between them; removed (with the veth) on drop.
struct Net {
    a: String,
    b: String,
    dev_a: String,
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
    let out = b.ferry(&["checkpoint", "export", "app", "--checkpoint", "healed"]);
    let name = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("d0: nbd://"))
        .and_then(|u| u.split_once('/').map(|(_, n)| n.to_string()))
        .expect("an export name");
    let view = format!("nbd+unix:///{name}?socket={}", b.socket().display());
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
