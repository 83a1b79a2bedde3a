//! A block device of an NBD export for a real filesystem: nbdfuse exposes the export as a
//! file, losetup makes it a loop device (this kernel has no nbd module). Needs root,
//! /dev/fuse and loop devices.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{ok, run};

/// Everything attached, undone in reverse order on drop, even when the test fails.
pub struct Attached {
    fuse_dir: PathBuf,
    nbdfuse: Option<Child>,
    loop_dev: Option<String>,
    mount: Option<PathBuf>,
}

impl Attached {
    pub fn new(uri: &str, fuse_dir: &Path) -> Attached {
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

    pub fn dev(&self) -> &str {
        self.loop_dev.as_deref().unwrap()
    }

    pub fn mount(&mut self, at: &Path) {
        std::fs::create_dir_all(at).unwrap();
        ok(Command::new("mount").arg(self.dev()).arg(at));
        self.mount = Some(at.to_path_buf());
    }

    pub fn umount(&mut self) {
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
