//! The whole cycle between two real agents, bytes compared at every step: protect A → B,
//! live failover to B and commit, reverse protection B → A (A's volumes become the
//! replica's images, and only the regions that differ travel), failback (a live failover
//! back to A and commit) and protection A → B again.

mod common;

use std::process::Command;

use common::sites::{compare, export, replication_addr, tag_and_wait, wait_for};
use common::{Agent, ok, qemu_io};
use serde_json::Value;

fn json(a: &Agent, args: &[&str]) -> Value {
    serde_json::from_str(&a.ferry(args)).unwrap()
}

/// An agent that accepts holders of `key` as a recovery site, and can protect to them.
fn site(tag: &str, key: &std::path::Path) -> Agent {
    let cfg = format!(
        "[replication]\nlisten = \"127.0.0.1:0\"\npairing_keys = [{:?}]\n",
        key.display().to_string()
    );
    Agent::start_with(tag, &cfg)
}

fn state(a: &Agent, vpg: &str) -> String {
    json(a, &["vpg", "show", vpg, "--json"])["state_kind"]
        .as_str()
        .unwrap_or_default()
        .to_string()
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
    let keydir = common::scratch_dir("cycle-key");
    let key = keydir.join("pairing.key");
    ok(Command::new(common::FERRY).arg("pair").arg(&key));
    let a = site("cycle-a", &key);
    let b = site("cycle-b", &key);
    let (a_addr, b_addr) = (replication_addr(&a), replication_addr(&b));
    let k = key.display().to_string();
    a.create("d0", "16M");
    a.create("d1", "8M");
    a.ferry_line(&format!(
        "vpg create app --volume d0 --volume d1 --journal-size 16M --peer {b_addr} --peer-key {k} --wait"
    ));
    qemu_io(a.tcp_uri("d0"), &["write -P 0x11 0 4M"]);
    qemu_io(a.tcp_uri("d1"), &["write -P 0x22 2M 2M"]);
    same_at_both(&a, &b, "app", "protected");

    // Fail over to B and commit; B writes 1 MiB.
    b.ferry(&["failover", "live", "app", "--shutdown", "graceful"]);
    assert_eq!(state(&a, "app"), "fenced");
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
    assert!(
        wait_for(60, || state(&b, "app") == "protecting"),
        "{}\n{}",
        b.ferry(&["vpg", "show", "app"]),
        a.ferry(&["status"])
    );
    let shown = json(&b, &["vpg", "show", "app", "--json"]);
    assert_eq!(shown["epoch"], 2);
    // The bytes resynced: B's 1 MiB write, at most a region's granularity more.
    let sent = shown["protection"]["ship"]["acked_bytes"].as_u64().unwrap();
    eprintln!("reverse protection: {sent} bytes of records sent for 24 MiB of volumes");
    assert!(sent <= (2 << 20) + 4096, "{sent}");
    assert!(
        shown
            .to_string()
            .contains("delta sync compared 24.0 MiB: 1.0 MiB differ"),
        "{shown}"
    );
    let vols = a.ferry(&["volume", "list"]);
    assert!(!vols.contains("d0"), "A's volumes are the replica's images now: {vols}");
    same_at_both(&b, &a, "app", "reversed");

    // Fail back: a live failover to A, commit, and protect A → B again.
    qemu_io(b.tcp_uri("d1"), &["write -P 0x77 0 1M"]);
    a.ferry(&["failover", "live", "app", "--shutdown", "graceful"]);
    assert_eq!(state(&b, "app"), "fenced");
    a.ferry(&["failover", "commit", "app"]);
    a.ferry(&["vpg", "reverse", "app", "--peer", &b_addr, "--peer-key", &k]);
    assert!(
        wait_for(60, || state(&a, "app") == "protecting"),
        "{}\n{}",
        a.ferry(&["vpg", "show", "app"]),
        b.ferry(&["status"])
    );
    let shown = json(&a, &["vpg", "show", "app", "--json"]);
    assert_eq!(shown["epoch"], 3);
    let sent = shown["protection"]["ship"]["acked_bytes"].as_u64().unwrap();
    eprintln!("failback: {sent} bytes of records sent for 24 MiB of volumes");
    assert!(sent <= (2 << 20) + 4096, "only B's 1 MiB write since: {sent}");
    qemu_io(a.tcp_uri("d0"), &["write -P 0x88 8M 1M"]);
    same_at_both(&a, &b, "app", "failed-back");
    qemu_io(a.tcp_uri("d1"), &["read -P 0x77 0 1M"]);
    qemu_io(a.tcp_uri("d0"), &["read -P 0x66 5M 1M"]);
}

#[test]
fn a_move_and_a_move_back_lose_nothing_and_protect_in_reverse_each_time() {
    let keydir = common::scratch_dir("move-key");
    let key = keydir.join("pairing.key");
    ok(Command::new(common::FERRY).arg("pair").arg(&key));
    let mut a = site("move-a", &key);
    let b = site("move-b", &key);
    let (a_addr, b_addr) = (replication_addr(&a), replication_addr(&b));
    let k = key.display().to_string();
    a.create("d0", "16M");
    a.ferry_line(&format!(
        "vpg create app --volume d0 --journal-size 16M --peer {b_addr} --peer-key {k} --wait"
    ));
    same_at_both(&a, &b, "app", "start");
    // Written just before the move: a move loses nothing.
    qemu_io(a.tcp_uri("d0"), &["write -P 0x31 1M 1M"]);
    let out = b.ferry(&[
        "failover",
        "move",
        "app",
        "--reverse-protection",
        "--peer",
        &a_addr,
        "--peer-key",
        &k,
    ]);
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
    let out = a.ferry(&[
        "failover",
        "move",
        "app",
        "--reverse-protection",
        "--peer",
        &b_addr,
        "--peer-key",
        &k,
    ]);
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

fn run_ok(a: &Agent, args: &[&str]) -> bool {
    common::run(a.cli().args(args)).status.success()
}
