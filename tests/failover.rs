//! Failover tests between two real agents: a checkpoint brought up read-write over scratch
//! at the recovery site while the protected site keeps writing, compared with the
//! checkpoint, written to, bounded, stopped with a report; the checkpoint and the replica
//! are as before, and replication went on.

mod common;

use std::process::Command;

use common::sites::{checkpoints, compare, copy, export, json, new_key, recovery_agent, tag_and_wait, wait_for};
use common::{Agent, qemu_io, require, run};

/// The (volume, URI) pairs `ferry failover test` printed.
fn test_exports(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| {
            let (vol, uri) = l.trim().split_once(": nbd://")?;
            Some((vol.to_string(), format!("nbd://{uri}")))
        })
        .collect()
}

fn sha_of_images(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "img") {
            out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn a_test_brings_up_a_checkpoint_read_write_while_replication_goes_on_and_leaves_it_as_it_was() {
    let a = Agent::start("fo-a");
    let key = new_key(&a.dir);
    let (b, peer) = recovery_agent("fo-b", &key, "");
    a.create("d0", "16M");
    a.create("d1", "8M");
    a.ferry_line(&format!(
        "vpg create app --volume d0 --volume d1 --journal-size 16M --peer {peer} --peer-key {} --wait",
        key.display()
    ));
    qemu_io(a.tcp_uri("d0"), &["write -P 0x11 0 2M"]);
    qemu_io(a.tcp_uri("d1"), &["write -P 0x22 1M 1M"]);
    let before = tag_and_wait(&a, &b, "app", "before");

    // What the checkpoint holds, and the replica's images, before the test.
    let exported = export(&b, "app", "before");
    let copies: Vec<_> = exported
        .iter()
        .map(|(vol, uri)| {
            let f = b.dir.join(format!("{vol}.before.raw"));
            copy(uri, &f);
            (vol.clone(), f)
        })
        .collect();
    b.ferry(&["checkpoint", "unexport", "app"]);
    let replica_dir = json(&b, &["replica", "show", "app", "--json"])["dir"]
        .as_str()
        .unwrap()
        .to_string();
    let images = sha_of_images(std::path::Path::new(&replica_dir));
    assert_eq!(images.len(), 2, "{replica_dir}");

    // Refusals change nothing.
    let err = b.ferry_fails(&["failover", "test", "app", "--checkpoint", "999999"]);
    assert!(err.contains("has no checkpoint \"999999\""), "{err}");
    let err = b.ferry_fails(&["failover", "test", "app", "--volume", "nope"]);
    assert!(err.contains("has no volume \"nope\"") && err.contains("d0"), "{err}");
    let err = b.ferry_fails(&["failover", "test", "other"]);
    assert!(err.contains("no replica"), "{err}");
    let err = b.ferry_fails(&["failover", "stop", "app", "--result", "pass"]);
    assert!(err.contains("no failover test of \"app\" runs"), "{err}");
    let err = b.ferry_fails(&["failover", "test", "app", "--checkpoint", "2000-01-01 00:00:00"]);
    assert!(
        err.contains("holds nothing as old as") && err.contains("oldest checkpoint is"),
        "{err}"
    );
    // A time picks the newest checkpoint at or before it.
    let cps = json(&b, &["checkpoint", "list", "app", "--json"]);
    let at = cps.as_array().unwrap().iter().find(|c| c["seq"] == before).unwrap()["unix_ms"]
        .as_u64()
        .unwrap();
    let when_text = ferry_agent::size::utc(at);

    // The protected site writes on while the test runs.
    require("fio");
    let mut fio = Command::new("fio")
        .current_dir(&a.dir)
        .args([
            "--name=prod",
            "--ioengine=nbd",
            &format!("--uri={}", a.unix_uri("d0")),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=4",
            "--size=16M",
            "--time_based",
            "--runtime=8",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();

    let out = b.ferry(&[
        "failover",
        "test",
        "app",
        "--checkpoint",
        &when_text,
        "--scratch-max",
        "1M",
    ]);
    assert!(
        out.contains("FAILOVER TEST of VPG app") && out.contains("ready in"),
        "{out}"
    );
    let exports = test_exports(&out);
    assert_eq!(exports.len(), 2, "{out}");
    assert!(
        exports.iter().all(|(v, u)| u.contains(&format!("app@test.{v}"))),
        "{out}"
    );
    let err = b.ferry_fails(&["failover", "test", "app"]);
    assert!(err.contains("runs already"), "{err}");
    assert!(b.ferry(&["status"]).contains("FAILOVER TEST of app at checkpoint"));
    assert_eq!(json(&b, &["replica", "show", "app", "--json"])["state"], "testing");
    let err = b.ferry_fails(&["replica", "delete", "app", "--force"]);
    assert!(err.contains("a failover test of replica \"app\" runs"), "{err}");

    // The test exports hold the checkpoint.
    for ((vol, uri), (_, file)) in exports.iter().zip(&copies) {
        let c = compare(uri, file);
        assert!(c.contains("Images are identical"), "{vol}: {c}");
    }
    // They take writes, which read back; past the scratch bound a write gets ENOSPC.
    let d0 = &exports.iter().find(|(v, _)| v == "d0").unwrap().1;
    qemu_io(
        d0,
        &["write -P 0x33 4096 64k", "read -P 0x33 4096 64k", "read -P 0x11 0 4k"],
    );
    let full = run(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0x44 4M 2M", d0]));
    let said = String::from_utf8_lossy(&full.stdout).into_owned() + &String::from_utf8_lossy(&full.stderr);
    assert!(said.contains("No space left on device"), "{said}");
    qemu_io(d0, &["read -P 0x33 4096 64k"]);
    let events = b.ferry(&["events"]);
    assert!(events.contains("scratch space is full"), "{events}");

    // Replication went on: a newer checkpoint arrives during the test.
    assert!(fio.wait().unwrap().success());
    let during = tag_and_wait(&a, &b, "app", "during");
    assert!(during > before);

    let stopped = b.ferry(&["failover", "stop", "app", "--result", "pass", "--note", "booted fine"]);
    assert!(stopped.contains("stopped: Pass"), "{stopped}");
    // The exports are gone and their scratch deleted.
    let gone = run(Command::new("qemu-io").args(["-f", "raw", "-c", "read 0 4k", d0]));
    assert!(!gone.status.success() || String::from_utf8_lossy(&gone.stdout).contains("error"));
    assert!(!std::path::Path::new(&replica_dir).join("scratch").exists());
    assert_ne!(json(&b, &["replica", "show", "app", "--json"])["state"], "testing");

    // The report.
    let reports = json(&b, &["failover", "report", "app", "--json"]);
    let r = &reports[0];
    assert_eq!(r["checkpoint"]["seq"], before, "{reports}");
    assert_eq!(r["result"], "pass");
    assert_eq!(r["note"], "booted fine");
    assert!(r["ready_after_ms"].as_f64().unwrap() < 1000.0, "{r}");
    assert!(r["scratch_used_bytes"].as_u64().unwrap() >= 64 << 10, "{r}");
    assert!(b.ferry(&["failover", "report", "app"]).contains("booted fine"));
    let listed = b.ferry(&["checkpoint", "list", "app"]);
    assert!(
        listed
            .lines()
            .any(|l| l.contains("before") && l.contains("(tested: pass at")),
        "{listed}"
    );

    // The checkpoint and the replica are as they were.
    assert!(checkpoints(&b, "app").iter().any(|(s, _)| *s == before));
    for ((vol, uri), (_, file)) in export(&b, "app", "before").iter().zip(&copies) {
        let c = compare(uri, file);
        assert!(c.contains("Images are identical"), "{vol} after the test: {c}");
    }
    assert!(sha_of_images(std::path::Path::new(&replica_dir)) == images);
    // And a new test may start.
    assert!(wait_for(5, || run(b.cli().args(["failover", "test", "app"]))
        .status
        .success()));
    b.ferry(&["failover", "stop", "app", "--result", "fail"]);
    assert_eq!(
        json(&b, &["failover", "report", "app", "--json"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

/// The drill: `--verify scripts/drill-fsck.sh --stop-after` is one command that brings up a
/// checkpoint, checks its ext4 through nbdfuse and a loop device, and records the result;
/// it passes on a clean filesystem and fails on one whose superblock was damaged after.
#[test]
fn a_drill_checks_the_filesystems_of_a_checkpoint_and_records_the_result() {
    for t in ["mkfs.ext4", "nbdfuse", "losetup", "e2fsck", "fusermount3"] {
        require(t);
    }
    let a = Agent::start("drill-a");
    let key = new_key(&a.dir);
    let (b, peer) = recovery_agent("drill-b", &key, "");
    a.create("fs", "32M");
    a.ferry_line(&format!(
        "vpg create app --volume fs --journal-size 16M --peer {peer} --peer-key {} --wait",
        key.display()
    ));
    // An ext4 made in a file, copied onto the protected volume through NBD.
    let image = a.dir.join("fs.img");
    std::fs::File::create(&image).unwrap().set_len(32 << 20).unwrap();
    common::ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
    common::ok(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&image)
            .arg(a.tcp_uri("fs")),
    );
    tag_and_wait(&a, &b, "app", "clean");
    // The primary superblock (at 1024) wiped on the protected side, later.
    qemu_io(a.tcp_uri("fs"), &["write -z 1024 1024"]);
    tag_and_wait(&a, &b, "app", "damaged");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/drill-fsck.sh");
    let drill = |cp: &str| {
        run(b.cli().args([
            "failover",
            "test",
            "app",
            "--checkpoint",
            cp,
            "--verify",
            script,
            "--stop-after",
            "--verify-timeout",
            "60s",
        ]))
    };
    let clean = drill("clean");
    let said = String::from_utf8_lossy(&clean.stdout);
    assert!(
        clean.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    assert!(said.contains("fs: clean") && said.contains("PASS"), "{said}");

    let damaged = drill("damaged");
    let said = String::from_utf8_lossy(&damaged.stdout).into_owned() + &String::from_utf8_lossy(&damaged.stderr);
    assert!(!damaged.status.success(), "{said}");
    assert!(
        said.contains("fs: FAIL: e2fsck exit") && said.contains("failed its verification"),
        "{said}"
    );

    let reports = json(&b, &["failover", "report", "app", "--json"]);
    let results: Vec<&str> = reports
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["pass", "fail"], "{reports}");
    assert_eq!(reports[1]["verify"]["state"], "failed");
    assert!(reports[1]["note"].as_str().unwrap().contains("exited"), "{reports}");
    assert!(b.ferry(&["status"]).lines().all(|l| !l.contains("FAILOVER TEST")));
}
