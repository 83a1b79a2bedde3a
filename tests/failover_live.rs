//! Live failover between two real agents: the protected site fenced (and unfenced) at the
//! right moments, the VPG served at the recovery site under its production names, commit
//! (the volumes equal the checkpoint plus what was written meanwhile, after a restart too),
//! rollback (nothing the protected site wrote is lost, replication resumes), the commit
//! policies' timers, the disaster case, and the plan's boot order and scripts.

mod common;

use std::process::Command;

use common::sites::{compare, export, new_key, recovery_agent, tag_and_wait, wait_for};
use common::{Agent, qemu_io, require, run};
use serde_json::Value;

fn json(a: &Agent, args: &[&str]) -> Value {
    serde_json::from_str(&a.ferry(args)).unwrap()
}

fn vpg_state(a: &Agent, vpg: &str) -> String {
    json(a, &["vpg", "show", vpg, "--json"])["state_kind"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The live failover of `vpg` as the recovery agent shows it.
fn live(b: &Agent, vpg: &str) -> Option<Value> {
    json(b, &["failover", "status", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["vpg"] == vpg)
        .cloned()
}

/// A copy of an NBD export in a file.
fn copy(uri: &str, to: &std::path::Path) {
    require("qemu-img");
    let out = run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", uri])
        .arg(to));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A qemu-io write; whether it went through, and what qemu-io said.
fn try_write(uri: &str, cmd: &str) -> (bool, String) {
    require("qemu-io");
    let out = run(Command::new("qemu-io").args(["-f", "raw", uri, "-c", cmd]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success() && !text.contains("failed"), text)
}

/// Two agents protecting VPG `app` (d0 16 MiB, d1 8 MiB) A → B, in sync, with data.
fn protected_pair(tag: &str, plan: &str) -> (Agent, Agent) {
    let a = Agent::start(&format!("{tag}-a"));
    let key = new_key(&a.dir);
    let (b, peer) = recovery_agent(&format!("{tag}-b"), &key, "");
    a.create("d0", "16M");
    a.create("d1", "8M");
    a.ferry_line(&format!(
        "vpg create app --volume d0 --volume d1 --journal-size 16M --peer {peer} --peer-key {} --wait {plan}",
        key.display()
    ));
    qemu_io(a.tcp_uri("d0"), &["write -P 0x11 0 2M"]);
    qemu_io(a.tcp_uri("d1"), &["write -P 0x22 1M 1M"]);
    tag_and_wait(&a, &b, "app", "base");
    (a, b)
}

#[test]
fn a_graceful_live_failover_fences_the_protected_site_and_a_rollback_loses_nothing() {
    let (a, b) = protected_pair("lv-gr", "");
    // Written just before the failover, acknowledged: a graceful shutdown ships it.
    qemu_io(a.tcp_uri("d0"), &["write -P 0x33 4M 1M"]);
    let out = b.ferry(&["failover", "live", "app", "--shutdown", "graceful"]);
    assert!(out.contains("NEEDS COMMIT"), "{out}");
    assert!(out.contains("shut down gracefully and fenced"), "{out}");
    let l = live(&b, "app").expect("shown");
    assert_eq!(l["phase"], "needs-commit");
    assert_eq!(l["epoch"], 2);
    assert_eq!(
        l["checkpoint"]["tag"], "before failover",
        "latest: the final checkpoint"
    );

    // The protected site: fenced at epoch 2, reads go on, writes are refused.
    assert_eq!(vpg_state(&a, "app"), "fenced");
    let shown = json(&a, &["vpg", "show", "app", "--json"]);
    assert_eq!(shown["epoch"], 2);
    assert!(
        shown["state"].as_str().unwrap().contains("runs at its recovery site"),
        "{shown}"
    );
    let (ok, text) = try_write(&a.tcp_uri("d0"), "write -P 0x99 0 4k");
    assert!(!ok && text.contains("Operation not permitted"), "{text}");
    qemu_io(a.tcp_uri("d0"), &["read -P 0x33 4M 1M"]);

    // The recovery site serves the volumes under their production names, equal to the
    // protected volumes as fenced (nothing acknowledged was lost), and takes writes.
    for v in ["d0", "d1"] {
        let r = compare(a.volume_path(v), b.tcp_uri(v));
        assert!(r.contains("Images are identical"), "{v}: {r}");
    }
    qemu_io(b.tcp_uri("d0"), &["write -P 0x44 0 64k"]);
    qemu_io(b.tcp_uri("d0"), &["read -P 0x44 0 64k"]);

    // Refusals, each changing nothing.
    let err = b.ferry_fails(&["failover", "live", "app"]);
    assert!(err.contains("needs commit"), "{err}");
    let err = b.ferry_fails(&["failover", "test", "app"]);
    assert!(err.contains("live failover of \"app\" runs"), "{err}");
    let err = b.ferry_fails(&["failover", "commit", "other"]);
    assert!(err.contains("nothing to commit"), "{err}");
    let err = b.ferry_fails(&["replica", "delete", "app", "--force"]);
    assert!(err.contains("commit or roll it back"), "{err}");

    // Rollback: the exports close, the protected site takes writes again at epoch 2, and
    // its stream goes on.
    let out = b.ferry(&["failover", "rollback", "app"]);
    assert!(out.contains("rolled back"), "{out}");
    assert!(live(&b, "app").is_none());
    let (ok, _) = try_write(&b.tcp_uri("d0"), "write -P 0x45 0 4k");
    assert!(!ok, "the production name is no longer served at the recovery site");
    assert!(
        wait_for(30, || vpg_state(&a, "app") != "fenced"),
        "unfenced: {}",
        a.ferry(&["vpg", "show", "app"])
    );
    assert_eq!(json(&a, &["vpg", "show", "app", "--json"])["epoch"], 2);
    qemu_io(a.tcp_uri("d0"), &["write -P 0x55 8M 1M"]);
    tag_and_wait(&a, &b, "app", "after");
    let ex = export(&b, "app", "after");
    let d0 = &ex.iter().find(|(v, _)| v == "d0").unwrap().1;
    let r = compare(a.volume_path("d0"), d0);
    assert!(r.contains("Images are identical"), "replication resumed: {r}");
    let events = b.ferry(&["replica", "show", "app"]);
    assert!(
        events.contains("LIVE FAILOVER") && events.contains("rolled back"),
        "{events}"
    );
}
