//! A real ext4 filesystem on a ferry volume: nbdfuse exposes the export as a file, losetup
//! makes it a block device, mkfs.ext4 + mount + files + umount + e2fsck, then the same
//! files are read back after a fresh attach. Needs root, /dev/fuse and loop devices.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Agent, ok, require, run};

/// Everything attached, undone in reverse order on drop, even when the test fails.
struct Attached {
    fuse_dir: PathBuf,
    nbdfuse: Option<Child>,
    loop_dev: Option<String>,
    mount: Option<PathBuf>,
}

impl Attached {
    fn new(uri: &str, fuse_dir: &Path) -> Attached {
        std::fs::create_dir_all(fuse_dir).unwrap();
        let child = Command::new("nbdfuse")
            .arg(fuse_dir)
            .arg("--uri")
            .arg(uri)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nbdfuse starts");
        let mut a = Attached {
            fuse_dir: fuse_dir.to_path_buf(),
            nbdfuse: Some(child),
            loop_dev: None,
            mount: None,
        };
        let file = fuse_dir.join("nbd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) == 0 {
            assert!(Instant::now() < deadline, "nbdfuse did not expose {}", file.display());
            std::thread::sleep(Duration::from_millis(50));
        }
        let dev = ok(Command::new("losetup").args(["--find", "--show"]).arg(&file));
        a.loop_dev = Some(dev.trim().to_string());
        a
    }

    fn dev(&self) -> &str {
        self.loop_dev.as_deref().unwrap()
    }

    fn mount(&mut self, at: &Path) {
        std::fs::create_dir_all(at).unwrap();
        ok(Command::new("mount").arg(self.dev()).arg(at));
        self.mount = Some(at.to_path_buf());
    }

    fn umount(&mut self) {
        if let Some(m) = self.mount.take() {
            ok(Command::new("umount").arg(&m));
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some(m) = self.mount.take() {
            let _ = run(Command::new("umount").arg("-l").arg(&m));
        }
        if let Some(d) = self.loop_dev.take() {
            let _ = run(Command::new("losetup").arg("-d").arg(&d));
        }
        let _ = run(Command::new("fusermount3").arg("-u").arg(&self.fuse_dir));
        if let Some(mut c) = self.nbdfuse.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

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
