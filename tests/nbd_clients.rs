//! Real NBD clients (qemu-io, qemu-img, nbdinfo, nbdcopy, fio) against a real agent over
//! TCP and unix sockets.

mod common;

use std::process::Command;

use common::{Agent, ok, patterned_file, qemu_io, require, run};

#[test]
fn qemu_io_patterns_over_unix_and_tcp() {
    require("qemu-io");
    let a = Agent::start("qemu-io");
    a.create("disk0", "64M");
    for (uri, pat) in [(a.unix_uri("disk0"), "0xa5"), (a.tcp_uri("disk0"), "0x5a")] {
        qemu_io(
            &uri,
            &[
                &format!("write -P {pat} 0 1M"),
                &format!("write -P {pat} 63M 1M"),
                "write -P 0x11 4096 512",
                "write -z 8M 2M",
                "flush",
            ],
        );
        let out = qemu_io(
            &uri,
            &[
                "read -P 0x11 4096 512",
                &format!("read -P {pat} 4608 1043968"),
                &format!("read -P {pat} 63M 1M"),
                "read -P 0 8M 2M",
            ],
        );
        assert!(!out.contains("Pattern verification failed"), "{out}");
        assert_eq!(out.matches("read ").count(), 4, "{out}");
    }
}

#[test]
fn qemu_img_convert_compare_and_map() {
    require("qemu-img");
    let a = Agent::start("qemu-img");
    a.create("img", "16M");
    let src = a.dir.join("src.raw");
    patterned_file(&src, 16 << 20, 3);
    ok(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&src)
        .arg(a.unix_uri("img")));
    let cmp = ok(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&src)
        .arg(a.tcp_uri("img")));
    assert!(cmp.contains("identical"), "{cmp}");
    let map = ok(Command::new("qemu-img")
        .args(["map", "-f", "raw", "--output=json"])
        .arg(a.unix_uri("img")));
    // The zero blocks of the source were written as zeroes: the map shows both kinds.
    assert!(map.contains("\"data\": true"), "{map}");
    assert!(map.contains("\"zero\": true"), "{map}");
    // A changed byte is seen by compare.
    qemu_io(a.unix_uri("img"), &["write -P 0xff 0 512"]);
    let out = run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&src)
        .arg(a.unix_uri("img")));
    assert_eq!(out.status.code(), Some(1), "compare must see the difference");
}

#[test]
fn nbdinfo_list_map_and_can() {
    require("nbdinfo");
    let a = Agent::start("nbdinfo");
    a.create("alpha", "8M");
    a.create("beta", "4M");
    let list = ok(Command::new("nbdinfo").arg("--list").arg(format!("nbd://{}", a.tcp)));
    assert!(
        list.contains("export=\"alpha\"") && list.contains("export=\"beta\""),
        "{list}"
    );
    assert!(list.contains("ferry volume alpha on datastore default"), "{list}");
    qemu_io(a.unix_uri("alpha"), &["write -P 1 1M 64k"]);
    let map = ok(Command::new("nbdinfo").arg("--map").arg(a.unix_uri("alpha")));
    let rows: Vec<Vec<&str>> = map.lines().map(|l| l.split_whitespace().collect()).collect();
    assert!(rows.iter().any(|r| r[0] == "0" && r[2] == "3"), "hole at start: {map}");
    assert!(
        rows.iter().any(|r| r[0] == "1048576" && r[2] == "0"),
        "data at 1M: {map}"
    );
    for can in ["flush", "fua", "trim", "zero", "fast-zero", "multi-conn", "cache", "df"] {
        let st = run(Command::new("nbdinfo").arg("--can").arg(can).arg(a.tcp_uri("alpha")));
        assert_eq!(st.status.code(), Some(0), "can {can}");
    }
    let ro = run(Command::new("nbdinfo")
        .arg("--is")
        .arg("readonly")
        .arg(a.tcp_uri("alpha")));
    assert_eq!(ro.status.code(), Some(2), "a writable volume is not read-only");
    let size = ok(Command::new("nbdinfo").arg("--size").arg(a.unix_uri("beta")));
    assert_eq!(size.trim(), "4194304");
}

#[test]
fn nbdcopy_round_trip_keeps_a_sparse_image_sparse() {
    require("nbdcopy");
    let a = Agent::start("nbdcopy");
    a.create("sparse", "32M");
    let src = a.dir.join("in.raw");
    let back = a.dir.join("out.raw");
    // Sparse source: data at 0 and 20M, the rest holes.
    std::fs::File::create(&src).unwrap().set_len(32 << 20).unwrap();
    qemu_io(&src, &["write -P 0x42 0 256k", "write -P 0x43 20M 1M"]);
    ok(Command::new("nbdcopy").arg(&src).arg(a.unix_uri("sparse")));
    ok(Command::new("nbdcopy").arg(a.tcp_uri("sparse")).arg(&back));
    assert_eq!(
        std::fs::read(&src).unwrap(),
        std::fs::read(&back).unwrap(),
        "round trip is byte-identical"
    );
    let map = ok(Command::new("nbdinfo").arg("--map").arg(a.unix_uri("sparse")));
    let holes: u64 = map
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|r| r[2] == "3")
        .map(|r| r[1].parse::<u64>().unwrap())
        .sum();
    assert!(holes >= 30 << 20, "copy left the zero regions as holes: {map}");
}

#[test]
fn fio_verify_crc32c_qd32_several_connections() {
    require("fio");
    let a = Agent::start("fio");
    a.create("fio", "64M");
    for uri in [a.unix_uri("fio"), a.tcp_uri("fio")] {
        // fio leaves verify state files in its working directory: keep them in the scratch dir.
        let out = ok(Command::new("fio").current_dir(&a.dir).args([
            "--name=ferry-verify",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--bsrange=4k-64k",
            "--iodepth=32",
            "--numjobs=4",
            "--size=16M",
            "--offset_increment=16M",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--do_verify=1",
            "--group_reporting",
        ]));
        assert!(out.contains("err= 0"), "{out}");
        assert!(
            !out.contains("verify failed") && !out.contains("bad magic"),
            "fio reported a verify failure: {out}"
        );
    }
}

#[test]
fn multi_connection_write_flush_read_coherence() {
    let a = Agent::start("multiconn");
    a.create("mc", "8M");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/multiconn.py");
    let out = common::nbdsh(&script, &[&a.unix_uri("mc"), &a.tcp_uri("mc")]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("coherent: 64 rounds"));
}

#[test]
fn nbdsh_edge_cases() {
    let a = Agent::start("edge");
    a.create("edge", "4M");
    let ro = a.dir.join("ro.img");
    std::fs::File::create(&ro).unwrap().set_len(1 << 20).unwrap();
    a.ferry(&["volume", "adopt", "ro", ro.to_str().unwrap(), "--read-only"]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/edge_cases.py");
    let out = common::nbdsh(&script, &[&a.unix_uri("edge"), &a.unix_uri("ro"), &a.tcp_uri("edge")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        a.log()
    );
    assert!(stdout.contains("edge cases: all passed"), "{stdout}");
}

#[test]
fn pread_fallback_engine_serves_the_same() {
    let a = Agent::start_with("pread", "[io]\nengine = \"pread\"\n");
    assert!(a.wait_log("datastore I/O: pread/pwrite"), "the engine is logged");
    small_and_large_patterns(&a);
    assert!(a.ferry(&["status"]).contains("datastore I/O: pread"));
}

#[test]
fn every_write_through_io_uring_serves_the_same() {
    let a = Agent::start_with("uring-all", "[io]\nengine = \"io-uring\"\ninline_write_bytes_max = 0\n");
    small_and_large_patterns(&a);
    assert!(a.ferry(&["status"]).contains("datastore I/O: io-uring"));
}

/// Writes of several sizes (inline and io_uring paths alike), FUA, zeroes and trim, read back.
fn small_and_large_patterns(a: &Agent) {
    require("qemu-io");
    a.create("pr", "16M");
    let uri = a.unix_uri("pr");
    qemu_io(
        &uri,
        &[
            "write -P 0x3c 0 1M",
            "write -P 0x3d -f 4M 64k",
            "write -z 8M 1M",
            "discard 0 64k",
            "flush",
        ],
    );
    let out = qemu_io(
        &uri,
        &[
            "read -P 0 0 64k",
            "read -P 0x3c 64k 960k",
            "read -P 0x3d 4M 64k",
            "read -P 0 8M 1M",
        ],
    );
    assert!(!out.contains("verification failed"), "{out}");
    qemu_io(&uri, &["write -P 0x3e 12M 4k", "write -P 0x3f 12M 512"]);
    let out = qemu_io(&uri, &["read -P 0x3f 12M 512", "read -P 0x3e 12583424 3584"]);
    assert!(!out.contains("verification failed"), "{out}");
}

#[test]
fn direct_io_volume_serves_aligned_io() {
    require("nbdinfo");
    let a = Agent::start("direct");
    a.ferry(&["volume", "create", "d", "--size", "16M", "--direct"]);
    let uri = a.unix_uri("d");
    let info = ok(Command::new("nbdinfo").arg(&uri));
    assert!(info.contains("block_size_minimum: 4096"), "{info}");
    qemu_io(
        &uri,
        &[
            "write -P 0x71 0 1M",
            "write -P 0x72 -f 8M 4k",
            "write -z 4M 64k",
            "flush",
        ],
    );
    let out = qemu_io(
        &uri,
        &[
            "read -P 0x71 0 1M",
            "read -P 0x72 8M 4k",
            "read -P 0 4M 64k",
            // qemu's block layer turns this 512-byte read into an aligned 4k one.
            "read -P 0x71 512 512",
        ],
    );
    assert!(!out.contains("verification failed"), "{out}");
}

#[test]
fn block_device_datastore_holds_one_volume() {
    require("losetup");
    let dir = common::scratch_dir("blockdev");
    let backing = dir.join("lun.img");
    std::fs::File::create(&backing).unwrap().set_len(32 << 20).unwrap();
    let dev = ok(Command::new("losetup").args(["--find", "--show"]).arg(&backing))
        .trim()
        .to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = run(Command::new("losetup").arg("-d").arg(&self.0));
        }
    }
    let _detach = Detach(dev.clone());
    let a = Agent::start_with(
        "blockdev-agent",
        &format!("[[datastore]]\nname = \"lun\"\npath = {dev:?}\n"),
    );
    a.ferry(&["volume", "create", "onlun"]);
    let list = a.ferry(&["volume", "list"]);
    assert!(
        list.contains("onlun") && list.contains("32.0 MiB") && list.contains(&dev),
        "{list}"
    );
    let e = a.ferry_fails(&["volume", "create", "second"]);
    assert!(e.contains("already holds volume \"onlun\""), "{e}");
    let uri = a.unix_uri("onlun");
    qemu_io(&uri, &["write -P 0x19 1M 1M", "write -z 4M 1M", "flush"]);
    let out = qemu_io(&uri, &["read -P 0x19 1M 1M", "read -P 0 4M 1M"]);
    assert!(!out.contains("verification failed"), "{out}");
    let map = ok(Command::new("nbdinfo").arg("--map").arg(&uri));
    assert!(map.lines().count() >= 1, "{map}");
    // The bytes are on the device itself.
    let data = std::fs::read(&backing).unwrap();
    assert!(data[1 << 20..2 << 20].iter().all(|b| *b == 0x19));
    // Deleting the volume leaves the device in place.
    a.ferry(&["volume", "delete", "onlun"]);
    assert!(std::path::Path::new(&dev).exists());
    drop(a);
    let _ = std::fs::remove_dir_all(&dir);
}
