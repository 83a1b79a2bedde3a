//! Capture into VPG journals, end to end: a real agent, real NBD clients, and the ring and
//! dirty-map files read back with the journal crate. A replica built by replaying the
//! journal from the VPG's creation must equal the volume, except inside dirty regions.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, nbdsh, ok, qemu_io, require, run};
use ferry_journal::{DirtyMap, Kind, MemStorage, Ring};

/// Records of a ring file, oldest first: (kind, volume id, offset, length, payload).
fn records(ring: &Path) -> Vec<(Kind, u32, u64, u64, Vec<u8>)> {
    let bytes = std::fs::read(ring).unwrap();
    let (r, rec) = Ring::open_with(MemStorage(bytes), false).unwrap();
    assert!(rec.stopped_by.is_clean(), "journal damaged: {rec:?}");
    let (start, end) = r.bounds();
    (start..end)
        .map(|pos| {
            let x = r.read(pos).expect("a recovered record reads back");
            let e = x.entry;
            (e.kind, e.volume, e.offset, e.length, x.payload.to_vec())
        })
        .collect()
}

/// Replays every record onto zero-filled images of `sizes` (by volume id).
fn replay(ring: &Path, sizes: &BTreeMap<u32, usize>) -> BTreeMap<u32, Vec<u8>> {
    let mut img: BTreeMap<u32, Vec<u8>> = sizes.iter().map(|(&v, &n)| (v, vec![0u8; n])).collect();
    for (kind, vol, off, len, payload) in records(ring) {
        let r = off as usize..(off + len) as usize;
        match kind {
            Kind::Write => img.get_mut(&vol).unwrap()[r].copy_from_slice(&payload),
            Kind::Trim | Kind::WriteZeroes => img.get_mut(&vol).unwrap()[r].fill(0),
            Kind::Checkpoint | Kind::Void => {}
        }
    }
    img
}

/// The dirty ranges of a map file (read from a copy: the file is not changed).
fn dirty(map: &Path) -> Vec<(u64, u64)> {
    let id = ferry_agent::clock::boot_id();
    let (m, _) = DirtyMap::open(MemStorage(std::fs::read(map).unwrap()), id).unwrap();
    m.dirty_ranges()
}

/// Offsets where `a` and `b` differ outside `dirty`: must be none.
fn uncovered(a: &[u8], b: &[u8], dirty: &[(u64, u64)]) -> Vec<usize> {
    a.iter()
        .zip(b)
        .enumerate()
        .filter(|(i, (x, y))| x != y && !dirty.iter().any(|&(o, l)| o as usize <= *i && *i < (o + l) as usize))
        .map(|(i, _)| i)
        .take(5)
        .collect()
}

#[test]
fn vpg_commands_explain_what_they_refuse_and_survive_a_restart() {
    let mut a = Agent::start("vpg-cli");
    for v in ["a", "b", "c"] {
        a.create(v, "4M");
    }
    let out = a.ferry_line("vpg create g --volume a --volume b --journal-size 8M");
    assert!(out.contains("created VPG g with a, b and a 8.0 MiB journal"), "{out}");
    let e = a.ferry_fails(&["vpg", "create", "h", "--volume", "b"]);
    assert!(
        e.contains("volume \"b\" is already in VPG \"g\"; a volume belongs to at most one VPG"),
        "{e}"
    );
    let e = a.ferry_fails(&["vpg", "create", "h", "--volume", "ghost"]);
    assert!(e.contains("no volume named \"ghost\""), "{e}");
    let e = a.ferry_fails(&["vpg", "create", "g", "--volume", "c"]);
    assert!(e.contains("a VPG named \"g\" already exists"), "{e}");
    let e = a.ferry_fails(&["vpg", "create", "h", "--volume", "c", "--journal-size", "100K"]);
    assert!(e.contains("too small"), "{e}");
    let e = a.ferry_fails(&["vpg", "create", "h", "--volume", "c", "--volume", "c"]);
    assert!(e.contains("named twice"), "{e}");
    let e = a.ferry_fails(&["vpg", "create", "h"]);
    assert!(e.contains("--volume"), "{e}");
    let e = a.ferry_fails(&["volume", "delete", "a"]);
    assert!(e.contains("is in VPG \"g\"; delete the VPG first"), "{e}");
    let e = a.ferry_fails(&["vpg", "show", "nope"]);
    assert!(
        e.contains("no VPG named \"nope\"") && e.contains("ferry vpg list"),
        "{e}"
    );
    let e = a.ferry_fails(&["checkpoint", "tag", "nope", "x"]);
    assert!(e.contains("no VPG named \"nope\""), "{e}");

    let show = a.ferry(&["vpg", "show", "g"]);
    assert!(show.contains("VPG g: journaling"), "{show}");
    assert!(
        show.contains("1 a") && show.contains("2 b") && show.contains("captured"),
        "{show}"
    );
    assert!(a.ferry(&["vpg", "list"]).contains("a,b"));
    let json: serde_json::Value = serde_json::from_str(&a.ferry(&["vpg", "show", "g", "--json"])).unwrap();
    assert_eq!(json["journal"]["size_bytes"], 8 << 20);

    // A clean stop and a start: the VPG, its tagged checkpoint and its capture are back.
    a.ferry(&["checkpoint", "tag", "g", "first"]);
    assert_eq!(a.stop().code(), Some(0));
    a.spawn();
    assert!(a.wait_log("journal opened after a clean stop"), "{}", a.log());
    let show = a.ferry(&["vpg", "show", "g"]);
    assert!(show.contains("tagged \"first\" at sequence"), "{show}");
    qemu_io(a.unix_uri("a"), &["write -P 0x11 0 64k"]);
    let tail = a.ferry(&["journal", "tail", "g"]);
    assert!(
        tail.contains("write         a"),
        "capture goes on after the restart: {tail}"
    );

    a.ferry(&["vpg", "delete", "g"]);
    assert!(!a.vpg_dir("g").exists(), "the journal and maps are removed");
    a.ferry(&["volume", "delete", "a"]);
    assert!(a.ferry(&["vpg", "list"]).contains("no VPGs"));
}

#[test]
fn every_write_is_captured_in_order_and_the_journal_replays_to_the_volumes() {
    require("qemu-io");
    let mut a = Agent::start("capture");
    a.create("a", "8M");
    a.create("b", "8M");
    // An O_DIRECT volume: its datastore writes go from the ring's 4 KiB-aligned slots.
    a.ferry(&["volume", "create", "d", "--size", "8M", "--direct"]);
    a.ferry_line("vpg create g --volume a --volume b --volume d --journal-size 64M");
    qemu_io(a.tcp_uri("a"), &["write -P 0x61 0 1M", "write -P 0x62 4096 8192"]);
    qemu_io(
        a.unix_uri("d"),
        &["write -P 0x64 0 256k", "write -P 0x65 1M 4k", "read -P 0x65 1M 4k"],
    );
    qemu_io(
        a.unix_uri("b"),
        &["write -P 0x71 1M 512k", "write -z 1M 64k", "discard 1280k 64k"],
    );
    a.ferry(&["checkpoint", "tag", "g", "t1"]);
    // Overlapping writes in flight together: whichever the datastore gets last, the
    // journal must say the same.
    qemu_io(
        a.unix_uri("a"),
        &[
            "aio_write -P 1 0 64k",
            "aio_write -P 2 4k 64k",
            "aio_write -P 3 8k 4k",
            "aio_write -P 4 0 128k",
            "aio_write -P 5 60k 8k",
            "aio_flush",
        ],
    );
    // fio with verification, several connections at once, mixed sizes.
    require("fio");
    ok(Command::new("fio").current_dir(&a.dir).args([
        "--name=capture",
        "--ioengine=nbd",
        &format!("--uri={}", a.tcp_uri("b")),
        "--rw=randwrite",
        "--bssplit=4k/50:16k/30:64k/20",
        "--iodepth=16",
        "--numjobs=2",
        "--size=8M",
        "--verify=crc32c",
        "--verify_state_save=0",
    ]));

    let tail = a.ferry(&["journal", "tail", "g"]);
    let seqs: Vec<u64> = tail
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1) && seqs[0] == 0,
        "one gap-free sequence across both volumes"
    );
    assert!(tail.contains("checkpoint    tag \"t1\""), "{tail}");
    assert!(
        tail.contains("write-zeroes  b") && tail.contains("trim          b"),
        "{tail}"
    );

    assert_eq!(a.stop().code(), Some(0));
    let dir = a.vpg_dir("g");
    let check = ok(a.cli().args(["journal", "check"]).arg(dir.join("journal.ring")));
    assert!(check.contains(": ok"), "{check}");
    let sizes = BTreeMap::from([(1, 8 << 20), (2, 8 << 20), (3, 8 << 20)]);
    let img = replay(&dir.join("journal.ring"), &sizes);
    for (id, name) in [(1, "a"), (2, "b"), (3, "d")] {
        let disk = std::fs::read(a.volume_path(name)).unwrap();
        assert!(dirty(&dir.join(format!("{name}.dirty"))).is_empty());
        let first = disk.iter().zip(&img[&id]).position(|(x, y)| x != y);
        assert_eq!(first, None, "volume {name}: the journal replays to the volume's bytes");
    }
}

#[test]
fn a_full_journal_tracks_dirty_regions_without_failing_writes_then_drains() {
    require("fio");
    let mut a = Agent::start_with("full", "[journal]\ncheckpoint_interval_s = 0.5\n");
    a.create("a", "32M");
    a.ferry(&["vpg", "create", "g", "--volume", "a", "--journal-size", "1M"]);
    // 16 MiB of random writes into a 1 MiB journal: no error, no stall.
    let out = ok(Command::new("fio").current_dir(&a.dir).args([
        "--name=fill",
        "--ioengine=nbd",
        &format!("--uri={}", a.unix_uri("a")),
        "--rw=randwrite",
        "--bs=16k",
        "--iodepth=16",
        "--size=32M",
        "--io_size=16M",
        "--verify=crc32c",
        "--verify_state_save=0",
    ]));
    assert!(out.contains("err= 0"), "{out}");
    let show = a.ferry(&["vpg", "show", "g"]);
    assert!(show.contains("VPG g: bitmap-sync (tracking)"), "{show}");
    assert!(show.contains("journal full"), "an event says why: {show}");

    // Journal + dirty regions cover every difference between the volume and a replica.
    assert_eq!(a.stop().code(), Some(0));
    let dir = a.vpg_dir("g");
    let img = replay(&dir.join("journal.ring"), &BTreeMap::from([(1, 32 << 20)]));
    let disk = std::fs::read(a.volume_path("a")).unwrap();
    let d = dirty(&dir.join("a.dirty"));
    assert!(!d.is_empty());
    assert_eq!(uncovered(&disk, &img[&1], &d), Vec::<usize>::new());
    let first_drained = {
        let (r, rec) = Ring::open_with(MemStorage(std::fs::read(dir.join("journal.ring")).unwrap()), false).unwrap();
        r.acked_seq() + rec.records
    };

    // A consumer acknowledges; the drain reads the dirty regions into the journal and the
    // VPG goes back to journaling. Each drained record holds the volume's bytes.
    a.spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut drained: Vec<(u64, u64, u32)> = Vec::new();
    let mut collect = |tail: &str| {
        for l in tail.lines().filter(|l| l.contains(" write ")) {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f[0].parse::<u64>().unwrap() < first_drained {
                continue; // captured before the stop
            }
            // seq kind volume "offset" N "length" N "crc" X
            drained.push((
                f[4].parse().unwrap(),
                f[6].parse().unwrap(),
                u32::from_str_radix(f[8], 16).unwrap(),
            ));
        }
    };
    loop {
        collect(&a.ferry(&["journal", "tail", "g", "--ack"]));
        let list = a.ferry(&["vpg", "list"]);
        if list.contains(" journaling ") && list.contains(" 0 B ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "drain did not finish: {}",
            a.ferry(&["vpg", "show", "g"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The last drained records, committed after the last read.
    std::thread::sleep(Duration::from_millis(300));
    collect(&a.ferry(&["journal", "tail", "g", "--ack"]));
    let show = a.ferry(&["vpg", "show", "g"]);
    assert!(
        show.contains("dirty regions drained: every write is journaled again"),
        "{show}"
    );
    let covered: u64 = drained.iter().map(|d| d.1).sum();
    assert!(
        covered >= d.iter().map(|r| r.1).sum::<u64>(),
        "every dirty byte was drained"
    );
    for (off, len, crc) in drained {
        let want = crc32c::crc32c(&disk[off as usize..(off + len) as usize]);
        assert_eq!(crc, want, "drained record at {off}+{len} holds the volume's bytes");
    }
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_write() {
    require("nbdsh");
    let mut a = Agent::start("kill9");
    a.create("a", "32M");
    a.ferry(&["vpg", "create", "g", "--volume", "a", "--journal-size", "256M"]);
    // A client that knows which writes were acknowledged: fio's verify state cannot tell
    // the writes in flight at the crash (failed, never acknowledged) from finished ones.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/acked_writes.py");
    let record = a.dir.join("acked.json");
    let uri = a.unix_uri("a");
    let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
    let writer = Command::new("/usr/bin/python3")
        .arg(&script)
        .args(["write", &uri, &(32u64 << 20).to_string()])
        .arg(&record)
        .env("PATH", &path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    a.kill9();
    let out = writer.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("blocks acknowledged"), "{said}");

    // Restart: recovery runs; `journal check` is clean; every acknowledged write is there.
    a.spawn();
    assert!(a.wait_log("recovered after an unclean stop"), "{}", a.log());
    let dir = a.vpg_dir("g");
    let check = ok(a.cli().args(["journal", "check"]).arg(dir.join("journal.ring")));
    assert!(check.contains(": ok"), "{check}");
    let out = nbdsh(&script, &["verify", &a.unix_uri("a"), record.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("acknowledged blocks hold"),
        "{said}\n{text}"
    );

    // Every byte of the volume is the journal's replay, or in a dirty region.
    assert_eq!(a.stop().code(), Some(0));
    let img = replay(&dir.join("journal.ring"), &BTreeMap::from([(1, 32 << 20)]));
    let disk = std::fs::read(a.volume_path("a")).unwrap();
    let d = dirty(&dir.join("a.dirty"));
    assert_eq!(uncovered(&disk, &img[&1], &d), Vec::<usize>::new(), "dirty: {d:?}");
}

#[test]
fn an_unreadable_map_or_journal_is_set_aside_and_its_volumes_resynced() {
    require("qemu-io");
    let mut a = Agent::start("damaged");
    a.create("a", "4M");
    a.create("b", "4M");
    a.ferry_line("vpg create g --volume a --volume b --journal-size 16M");
    qemu_io(a.unix_uri("a"), &["write -P 0x5a 0 256k"]);
    assert_eq!(a.stop().code(), Some(0));
    let dir = a.vpg_dir("g");

    // Rule 7: a's dirty map is garbage. It is moved aside, a new one marks all of a dirty.
    let map = dir.join("a.dirty");
    let mut bytes = std::fs::read(&map).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&map, &bytes).unwrap();
    a.spawn();
    let show = a.ferry(&["vpg", "show", "g"]);
    assert!(
        show.contains("dirty map of volume \"a\" unreadable") && show.contains("the whole volume is marked dirty"),
        "{show}"
    );
    let aside = |prefix: &str| {
        std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
    };
    assert!(aside("a.damaged-"), "the damaged map is kept for inspection");
    assert_eq!(a.stop().code(), Some(0));

    // Rule 8: both journal superblocks destroyed. A new journal; every volume wholly dirty.
    let ring = dir.join("journal.ring");
    let mut bytes = std::fs::read(&ring).unwrap();
    bytes[..8192].fill(0x77);
    std::fs::write(&ring, &bytes).unwrap();
    let e = run(a.cli().args(["journal", "check"]).arg(&ring));
    assert!(!e.status.success());
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("no valid superblock"),
        "{e:?}"
    );
    a.spawn();
    let show = a.ferry(&["vpg", "show", "g"]);
    assert!(
        show.contains("unreadable") && show.contains("a new one was made and every volume is marked wholly dirty"),
        "{show}"
    );
    assert!(aside("journal.damaged-"));
    let check = ok(a.cli().args(["journal", "check"]).arg(&ring));
    assert!(check.contains(": ok"), "{check}");
    // Both volumes drain into the new journal (16 MiB holds both 4 MiB volumes).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !a.ferry(&["vpg", "list"]).contains(" journaling ") {
        assert!(Instant::now() < deadline, "{}", a.ferry(&["vpg", "show", "g"]));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(a.stop().code(), Some(0));
    let img = replay(&ring, &BTreeMap::from([(1, 4 << 20), (2, 4 << 20)]));
    for (id, name) in [(1, "a"), (2, "b")] {
        let disk = std::fs::read(a.volume_path(name)).unwrap();
        assert!(
            disk == img[&id],
            "volume {name}: the resync put all of it in the new journal"
        );
    }
}

/// The NBD server reads pipelined small writes several at a time, each payload straight into
/// a journal slot reserved on a guess before its header was read. Wrong guesses (reads,
/// other lengths, trims, zeroes, flushes in the stream), slots guessed but not used, and two
/// connections writing the same blocks at once must leave the journal exactly the stream
/// the datastore saw.
#[test]
fn guessed_journal_slots_leave_the_journal_exact() {
    let mut a = Agent::start_with("guess", "[journal]\ncheckpoint_interval_s = 3600\n");
    a.create("v", "16M");
    a.ferry_line("vpg create g --volume v --journal-size 64M");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/guessing.py");
    let run_phase = |args: &[&str]| {
        let out = common::nbdsh(&script, args);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    assert!(run_phase(&["one", &a.unix_uri("v")]).contains("ok one 600"));
    // One connection and nothing else reserving (no automatic checkpoints): every guessed
    // slot it did not use was still the newest reservation and was taken back whole.
    let tail = a.ferry(&["journal", "tail", "g"]);
    let seqs: Vec<u64> = tail
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "gap-free");
    assert!(!tail.contains("void"), "unused guesses leave no void records:\n{tail}");
    assert!(tail.lines().filter(|l| l.contains(" write ")).count() >= 500, "{tail}");
    assert!(run_phase(&["two", &a.unix_uri("v"), &a.tcp_uri("v")]).contains("ok two 512"));

    assert_eq!(a.stop().code(), Some(0));
    let dir = a.vpg_dir("g");
    let check = ok(a.cli().args(["journal", "check"]).arg(dir.join("journal.ring")));
    assert!(check.contains(": ok"), "{check}");
    let img = replay(&dir.join("journal.ring"), &BTreeMap::from([(1, 16 << 20)]));
    let disk = std::fs::read(a.volume_path("v")).unwrap();
    assert!(dirty(&dir.join("v.dirty")).is_empty());
    let first = disk.iter().zip(&img[&1]).position(|(x, y)| x != y);
    assert_eq!(first, None, "the journal replays to the volume's bytes");
}
