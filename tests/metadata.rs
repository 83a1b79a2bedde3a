//! Damaged metadata files on real agents: the agent starts, serves what it can, names the
//! file and says what to do; it never drops a volume or a VPG, never lets a write go
//! uncaptured, and never makes a damaged replica anew.

mod common;

use std::path::Path;
use std::process::Command;

use common::sites::{new_key, tag_and_wait, wait_for};
use common::{Agent, qemu_io, run};

fn damage(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    let n = b.len();
    b[n - 2] ^= 0x20;
    std::fs::write(path, b).unwrap();
}

fn write_fails(uri: &str) -> String {
    let out = run(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0x77 0 4k", uri]));
    assert!(!out.status.success(), "a write was taken");
    String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
}

#[test]
fn a_damaged_registry_falls_back_to_its_previous_copy() {
    let mut a = Agent::start("meta-prev");
    a.create("d0", "4M");
    a.create("d1", "4M"); // the previous copy of volumes.json names d0 only
    a.stop();
    damage(&a.dir.join("volumes.json"));
    a.spawn();
    let st = a.ferry(&["status"]);
    assert!(
        st.contains("METADATA PROBLEM") && st.contains("volumes.json is checksum mismatch"),
        "{st}"
    );
    assert!(st.contains("volumes.json.prev was read instead"), "{st}");
    let list = a.ferry(&["volume", "list"]);
    assert!(list.contains("d0"), "{list}");
    qemu_io(a.tcp_uri("d0"), &["write -P 0x11 0 4k"]);
    // The next change writes a whole file again.
    a.create("d2", "4M");
    a.stop();
    a.spawn();
    assert!(!a.ferry(&["status"]).contains("METADATA PROBLEM"));
}

#[test]
fn an_unreadable_vpg_registry_makes_every_volume_read_only_and_is_left_as_it_was() {
    let mut a = Agent::start("meta-vpgs");
    a.create("d0", "4M");
    a.create("d1", "4M");
    a.ferry(&["vpg", "create", "app", "--volume", "d0"]);
    a.ferry(&["vpg", "create", "other", "--volume", "d1"]);
    a.stop();
    // vpgs.json and its previous copy: which volumes are protected is not known, so no
    // volume may take a write that no journal captures, and VPG changes are refused.
    let vpgs = vpgs_path(&a);
    damage(&vpgs);
    damage(&a.dir.join("vpgs.json.prev"));
    let saved = std::fs::read(&vpgs).unwrap();
    a.spawn();
    let st = a.ferry(&["status"]);
    assert!(st.contains("vpgs.json is unreadable"), "{st}");
    assert!(st.contains("Every volume is served read-only"), "{st}");
    let why = write_fails(&a.tcp_uri("d1"));
    assert!(why.contains("Operation not permitted"), "{why}");
    qemu_io(a.tcp_uri("d1"), &["read 0 4k"]);
    let refused = a.ferry_fails(&["vpg", "create", "new", "--volume", "d1"]);
    assert!(refused.contains("vpgs.json is unreadable"), "{refused}");
    assert_eq!(
        std::fs::read(&vpgs).unwrap(),
        saved,
        "the damaged file is left as it was"
    );
}

#[test]
fn a_vpg_whose_state_is_unreadable_is_kept_and_its_volumes_are_read_only() {
    let mut a = Agent::start("meta-state");
    a.create("d0", "4M");
    a.create("d1", "4M");
    a.ferry(&["vpg", "create", "app", "--volume", "d0"]);
    a.ferry(&["vpg", "create", "other", "--volume", "d1"]);
    a.stop();
    let state = a.dir.join("vpgs/app/state.json");
    std::fs::write(&state, b"ferry-meta vpg-state 1 crc32c=00000000 bytes=2\n{}").unwrap();
    std::fs::write(a.dir.join("vpgs/app/state.json.prev"), b"{not json").unwrap();
    a.spawn();
    let st = a.ferry(&["status"]);
    assert!(
        st.contains("VPG \"app\" cannot be opened") && st.contains("state.json"),
        "{st}"
    );
    let why = write_fails(&a.tcp_uri("d0"));
    assert!(why.contains("Operation not permitted"), "{why}");
    // The other VPG goes on; a change to the registry keeps the VPG that is not open.
    qemu_io(a.tcp_uri("d1"), &["write -P 0x22 0 4k"]);
    let taken = a.ferry_fails(&["vpg", "create", "third", "--volume", "d0"]);
    assert!(taken.contains("app"), "d0 is still app's: {taken}");
    a.create("d2", "4M");
    a.ferry(&["vpg", "create", "third", "--volume", "d2"]);
    let reg = std::fs::read_to_string(vpgs_path(&a)).unwrap();
    for name in ["\"app\"", "\"other\"", "\"third\""] {
        assert!(reg.contains(name), "{name} dropped from the registry: {reg}");
    }
    // Deleting the VPG that cannot be opened gives its volume writes back.
    a.ferry(&["vpg", "delete", "app"]);
    qemu_io(a.tcp_uri("d0"), &["write -P 0x33 0 4k"]);
}

fn vpgs_path(a: &Agent) -> std::path::PathBuf {
    a.dir.join("vpgs.json")
}

#[test]
fn a_damaged_replica_is_not_served_and_never_made_anew() {
    let mut a = Agent::start("meta-rep-a");
    let key = new_key(&a.dir);
    // A fixed port, so that the protected site finds the recovery agent after its restart.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let peer = format!("127.0.0.1:{port}");
    let mut b = Agent::start_with(
        "meta-rep-b",
        &format!(
            "[replication]\nlisten = {peer:?}\npairing_keys = [{:?}]\n",
            key.display().to_string()
        ),
    );
    a.create("d0", "8M");
    a.ferry_line(&format!(
        "vpg create app --volume d0 --journal-size 4M --peer {peer} --peer-key {} --wait",
        key.display()
    ));
    qemu_io(a.tcp_uri("d0"), &["write -P 0x44 0 1M"]);
    tag_and_wait(&a, &b, "app", "one");
    b.stop();
    let dir = b.dir.join("datastore/replicas/app");
    let meta = dir.join("replica.json");
    damage(&meta);
    if dir.join("replica.json.prev").exists() {
        damage(&dir.join("replica.json.prev"));
    }
    let history_before: Vec<_> = std::fs::read_dir(dir.join("history"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    b.spawn();
    assert!(wait_for(30, || b.ferry(&["status"]).contains("cannot be opened")));
    let st = b.ferry(&["status"]);
    assert!(
        st.contains("replica.json") && st.contains("its protected site is refused"),
        "{st}"
    );
    // The protected site is refused with that reason; nothing of the replica is touched.
    assert!(
        wait_for(30, || a.ferry(&["vpg", "show", "app"]).contains("cannot be opened")),
        "{}",
        a.ferry(&["vpg", "show", "app"])
    );
    for p in history_before {
        assert!(p.exists(), "{} was removed", p.display());
    }
    let _ = a.stop();
}
