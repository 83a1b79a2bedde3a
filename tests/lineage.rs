//! Lineage and epochs between two real agents: both sites store the VPG's lineage and
//! epoch, the recovery site records the protected site it saw (address, key fingerprint);
//! a different lineage under the same VPG, or an older epoch, is refused with a clear
//! error at both sites and an event.

mod common;

use common::sites::{new_key, recovery_agent, tag_and_wait, wait_for};
use common::{Agent, qemu_io};
use serde_json::Value;

fn json(a: &Agent, args: &[&str]) -> Value {
    serde_json::from_str(&a.ferry(args)).unwrap()
}

/// Edits the protected site's registry while it is stopped (what another VPG of the same
/// name, or a site failed over from, would present).
fn edit_record(a: &mut Agent, f: impl FnOnce(&mut Value)) {
    a.stop();
    let path = a.dir.join("vpgs.json");
    // The file is JSON behind the metadata envelope's line; written back as bare JSON,
    // which the agent reads as a file of an older agent.
    let text = std::fs::read_to_string(&path).unwrap();
    let body = text
        .strip_prefix("ferry-meta")
        .map_or(text.as_str(), |_| text.split_once('\n').expect("the envelope line").1);
    let mut reg: Value = serde_json::from_str(body).unwrap();
    f(&mut reg["vpgs"][0]);
    std::fs::write(&path, serde_json::to_string_pretty(&reg).unwrap()).unwrap();
    a.spawn();
}

fn shipping_error(a: &Agent) -> String {
    json(a, &["vpg", "show", "app", "--json"])["protection"]["ship"]["error"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn both_sites_keep_the_lineage_and_refuse_another_or_an_older_epoch() {
    let mut a = Agent::start("lineage-a");
    let key = new_key(&a.dir);
    let (b, peer) = recovery_agent("lineage-b", &key, "");
    a.create("d0", "16M");
    a.ferry_line(&format!(
        "vpg create app --volume d0 --journal-size 8M --peer {peer} --peer-key {} --wait",
        key.display()
    ));
    qemu_io(a.tcp_uri("d0"), &["write -P 0x21 0 1M"]);
    tag_and_wait(&a, &b, "app", "one");

    let v = json(&a, &["vpg", "show", "app", "--json"]);
    let lineage = v["lineage"].as_str().unwrap().to_string();
    assert_eq!(lineage.len(), 32, "{v}");
    assert_ne!(lineage, "0".repeat(32));
    assert_eq!(v["epoch"], 1);
    let r = json(&b, &["replica", "show", "app", "--json"]);
    assert_eq!(r["lineage"].as_str(), Some(lineage.as_str()), "{r}");
    assert_eq!(r["epoch"], 1);
    let fp = r["peer"]["key_fingerprint"].as_str().unwrap();
    assert_eq!(fp.len(), 16, "{r}");
    assert!(r["peer"]["address"].as_str().unwrap().starts_with("127.0.0.1:"), "{r}");
    assert!(
        b.ferry(&["replica", "show", "app"])
            .contains(&format!("pairing key {fp}"))
    );

    // A newer epoch is taken and recorded.
    edit_record(&mut a, |r| r["epoch"] = 2.into());
    tag_and_wait(&a, &b, "app", "two");
    assert_eq!(json(&b, &["replica", "show", "app", "--json"])["epoch"], 2);
    assert!(b.ferry(&["replica", "show", "app"]).contains("epoch 1 → 2"));

    // An older epoch is refused, and both sites say why.
    edit_record(&mut a, |r| r["epoch"] = 1.into());
    assert!(
        wait_for(30, || shipping_error(&a).contains("older than this replica's 2")),
        "{}",
        a.ferry(&["vpg", "show", "app"])
    );
    assert!(a.ferry(&["vpg", "show", "app"]).contains("error"));
    assert!(b.ferry(&["replica", "show", "app"]).contains("refused: VPG \"app\""));

    // Another lineage under the same VPG is refused.
    let other = "ab".repeat(16);
    edit_record(&mut a, |r| {
        r["epoch"] = 2.into();
        r["lineage"] = other.clone().into();
    });
    assert!(
        wait_for(30, || shipping_error(&a).contains("another VPG of the same name")),
        "{}",
        a.ferry(&["vpg", "show", "app"])
    );
    let ev = b.ferry(&["replica", "show", "app"]);
    assert!(ev.contains(&format!("has lineage {other}")), "{ev}");
    assert_eq!(
        json(&b, &["replica", "show", "app", "--json"])["lineage"].as_str(),
        Some(lineage.as_str()),
        "the replica keeps its lineage"
    );

    // The right lineage and epoch: replication goes on.
    edit_record(&mut a, |r| r["lineage"] = lineage.clone().into());
    qemu_io(a.tcp_uri("d0"), &["write -P 0x22 0 1M"]);
    tag_and_wait(&a, &b, "app", "three");
}
