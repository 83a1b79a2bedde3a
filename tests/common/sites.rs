//! Two sites on this machine: a recovery agent, a pairing key, and what a test asks of
//! the recovery site (its checkpoints, exports, comparisons with qemu-img).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{Agent, ok, require, run};

/// Polls `cond` every 100 ms for up to `secs`; true once it holds.
pub fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A recovery-site agent accepting holders of `key`; returns it with its replication
/// address.
pub fn recovery_agent(tag: &str, key: &Path, extra: &str) -> (Agent, String) {
    let cfg = format!(
        "[replication]\nlisten = \"127.0.0.1:0\"\npairing_keys = [{:?}]\n{extra}",
        key.display().to_string()
    );
    let b = Agent::start_with(tag, &cfg);
    let addr = replication_addr(&b);
    (b, addr)
}

pub fn replication_addr(b: &Agent) -> String {
    let st = b.ferry(&["status"]);
    st.lines()
        .find_map(|l| l.strip_prefix("replication: accepting peers on "))
        .expect("status names the replication address")
        .trim()
        .to_string()
}

pub fn new_key(dir: &Path) -> PathBuf {
    let k = dir.join("pairing.key");
    ok(Command::new(super::FERRY).arg("pair").arg(&k));
    k
}

/// The checkpoints the recovery agent holds for `vpg`: (seq, tag).
pub fn checkpoints(b: &Agent, vpg: &str) -> Vec<(u64, String)> {
    let out = run(b.cli().args(["checkpoint", "list", vpg, "--json"]));
    if !out.status.success() {
        return vec![];
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| (c["seq"].as_u64().unwrap(), c["tag"].as_str().unwrap().to_string()))
        .collect()
}

/// Tags a checkpoint on the protected agent and waits (up to 60 s) until the recovery
/// agent holds it; returns its sequence number.
pub fn tag_and_wait(a: &Agent, b: &Agent, vpg: &str, tag: &str) -> u64 {
    // A tag is refused while the VPG drains dirty regions (the initial sync): retry.
    let mut tagged = false;
    assert!(
        wait_for(120, || {
            tagged = tagged || run(a.cli().args(["checkpoint", "tag", vpg, tag])).status.success();
            tagged && checkpoints(b, vpg).iter().any(|(_, t)| t == tag)
        }),
        "checkpoint {tag} never reached the recovery site (tagged: {tagged});\nprotected:\n{}\nrecovery:\n{}\nprotected log:\n{}",
        a.ferry(&["status"]),
        b.ferry(&["status"]),
        a.log()
    );
    checkpoints(b, vpg).iter().find(|(_, t)| t == tag).unwrap().0
}

/// Exports a checkpoint on the recovery agent; returns (volume, NBD URI) pairs.
pub fn export(b: &Agent, vpg: &str, checkpoint: &str) -> Vec<(String, String)> {
    let out = b.ferry(&["checkpoint", "export", vpg, "--checkpoint", checkpoint]);
    out.lines()
        .filter_map(|l| {
            let (vol, uri) = l.trim().split_once(": nbd://")?;
            Some((vol.to_string(), format!("nbd://{uri}")))
        })
        .collect()
}

pub fn compare(a: impl AsRef<std::ffi::OsStr>, b: impl AsRef<std::ffi::OsStr>) -> String {
    require("qemu-img");
    let out = run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(a)
        .arg(b));
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// A command's `--json` output.
pub fn json(a: &Agent, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&a.ferry(args)).unwrap()
}

/// A copy of an NBD export in a file.
pub fn copy(uri: &str, to: &Path) {
    require("qemu-img");
    let out = run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", uri])
        .arg(to));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A qemu-io command that may fail: whether it did its work, and what it said.
pub fn try_write(uri: &str, cmd: &str) -> (bool, String) {
    require("qemu-io");
    let out = run(Command::new("qemu-io").args(["-f", "raw", uri, "-c", cmd]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success() && !text.contains("failed"), text)
}

/// The address of `a`'s API over TCP (`api.listen`), as its status names it.
pub fn api_url(a: &Agent) -> String {
    json(a, &["status", "--json"])["api_listen"]
        .as_str()
        .expect("status names the API's address")
        .to_string()
}

/// `a`'s API bearer token.
pub fn api_token(a: &Agent) -> String {
    std::fs::read_to_string(a.dir.join("api.token"))
        .unwrap()
        .trim()
        .to_string()
}
