//! A real ext4 filesystem on a ferry volume: nbdfuse exposes the export as a file, losetup
//! makes it a block device, mkfs.ext4 + mount + files + umount + e2fsck, then the same
//! files are read back after a fresh attach. Needs root, /dev/fuse and loop devices.

mod common;

use std::path::Path;
use std::process::Command;

use common::fs::Attached;
use common::{Agent, ok, require, run};

fn files() -> Vec<(String, Vec<u8>)> {
    (0..40)
        .map(|i| {
            let len = 1000 + i * 37_000;
            let data: Vec<u8> = (0..len).map(|j| ((j * 13 + i * 101) % 251) as u8).collect();
            (format!("file-{i:02}.bin"), data)
        })
        .collect()
}

#[test]
fn ext4_through_nbdfuse_and_a_loop_device() {
    for t in [
        "nbdfuse",
        "losetup",
        "mkfs.ext4",
        "e2fsck",
        "mount",
        "umount",
        "fusermount3",
    ] {
        require(t);
    }
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: the fuse kernel module is needed"
    );
    let a = Agent::start("ext4");
    a.create("fs", "128M");
    let mnt = a.dir.join("mnt");
    {
        let mut att = Attached::new(&a.unix_uri("fs"), &a.dir.join("fuse"));
        ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(att.dev()));
        att.mount(&mnt);
        for (name, data) in files() {
            std::fs::write(mnt.join(&name), &data).unwrap();
        }
        ok(&mut Command::new("sync"));
        att.umount();
        let fsck = run(Command::new("e2fsck").args(["-f", "-n"]).arg(att.dev()));
        assert_eq!(
            fsck.status.code(),
            Some(0),
            "e2fsck not clean: {}",
            String::from_utf8_lossy(&fsck.stdout)
        );
    }
    // A fresh attach over TCP sees the same files.
    let mut att = Attached::new(&a.tcp_uri("fs"), &a.dir.join("fuse2"));
    att.mount(&mnt);
    for (name, data) in files() {
        assert_eq!(
            std::fs::read(mnt.join(&name)).unwrap(),
            data,
            "{name} differs after re-attach"
        );
    }
    att.umount();
}
