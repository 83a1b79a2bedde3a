//! Faults that must never make the recovery site lie, hang or run out of memory: full
//! datastores at either site (small loop-mounted ext4 filesystems made by each test),
//! replicas deleted under a live link, hostile clients. Real agents, real NBD clients.

mod common;

use std::process::Command;

use common::sites::{compare, export, new_key, recovery_agent, tag_and_wait};
use common::{Agent, SmallFs, qemu_io, run};

fn vpg_json(a: &Agent, vpg: &str) -> serde_json::Value {
    serde_json::from_str(&a.ferry(&["vpg", "show", vpg, "--json"])).unwrap()
}

/// A write that fails at the protected datastore (ENOSPC) reaches the client as an error
/// and never the recovery site: the next checkpoint there holds what the volume holds.
#[test]
fn a_write_the_datastore_refused_is_never_shipped() {
    let mut a = Agent::start("enospc-a");
    let small = SmallFs::new(&a.dir, "small", 48);
    a.stop();
    a.set_extra_config(&format!(
        "[[datastore]]\nname = \"small\"\npath = {:?}\n",
        small.mount.display().to_string()
    ));
    a.spawn();
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
