//! Test harness: a real `ferry agent` process in a scratch state directory, the `ferry` CLI
//! against it, and helpers to run the real NBD clients from Debian packages.

#![allow(dead_code)]

pub mod fs;
pub mod sites;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// Fails loudly when a client tool is missing: these tests never skip.
pub fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed; run scripts/test.sh, which installs the test dependencies"
    );
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ferry-test-{}-{}-{}",
        tag,
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub struct Agent {
    pub dir: PathBuf,
    pub child: Option<Child>,
    pub tcp: String,
    extra_config: String,
    /// A network namespace to run in (`ip netns exec`); its sockets on loopback are its
    /// own, the unix sockets are reachable from everywhere.
    netns: Option<String>,
    /// A descriptor limit (soft and hard) to run under (`prlimit`).
    nofile: Option<u64>,
    /// `FERRY_FAILPOINT` of the agent (empty: none).
    failpoint: String,
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Agent {
    pub fn start(tag: &str) -> Agent {
        Self::start_with(tag, "")
    }

    /// Starts an agent; `extra_config` is appended to the generated TOML.
    pub fn start_with(tag: &str, extra_config: &str) -> Agent {
        Self::start_failing_at(tag, extra_config, "")
    }

    /// [`Agent::start_with`], the agent killing itself at `failpoint` (see
    /// [`Agent::set_failpoint`]).
    pub fn start_failing_at(tag: &str, extra_config: &str, failpoint: &str) -> Agent {
        let dir = scratch_dir(tag);
        let mut a = Agent {
            dir,
            child: None,
            tcp: String::new(),
            extra_config: extra_config.to_string(),
            netns: None,
            nofile: None,
            failpoint: failpoint.to_string(),
        };
        a.spawn();
        a
    }

    /// Starts an agent inside network namespace `ns`.
    pub fn start_in_netns(tag: &str, ns: &str, extra_config: &str) -> Agent {
        let mut a = Agent {
            dir: scratch_dir(tag),
            child: None,
            tcp: String::new(),
            extra_config: extra_config.to_string(),
            netns: Some(ns.to_string()),
            nofile: None,
            failpoint: String::new(),
        };
        a.spawn();
        a
    }

    /// Runs the agent under a descriptor limit of `n` (from the next `spawn` on).
    pub fn set_nofile(&mut self, n: u64) {
        self.nofile = Some(n);
    }

    /// Runs the agent with `FERRY_FAILPOINT=point` (from the next `spawn` on; empty: none):
    /// it kills itself with SIGKILL on reaching that point.
    pub fn set_failpoint(&mut self, point: &str) {
        self.failpoint = point.to_string();
    }

    /// Replaces what is appended to the generated config (from the next `spawn` on).
    pub fn set_extra_config(&mut self, extra: &str) {
        self.extra_config = extra.to_string();
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("agent.toml")
    }

    pub fn spawn(&mut self) {
        let cfg = format!(
            "state_dir = {:?}\n[nbd]\nlisten = [\"127.0.0.1:0\"]\n[limits]\nshutdown_grace_ms = 3000\n{}",
            self.dir.display().to_string(),
            self.extra_config
        );
        std::fs::write(self.config_path(), cfg).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .unwrap();
        let mut cmd = match (&self.netns, self.nofile) {
            // `ip netns exec` enters the namespace and execs: the child is the agent.
            (Some(ns), _) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, FERRY]);
                c
            }
            // `prlimit` sets the limit and execs too.
            (None, Some(n)) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(FERRY);
                c
            }
            (None, None) => Command::new(FERRY),
        };
        let child = cmd
            .args(["agent", "--config"])
            .arg(self.config_path())
            .args(["--log-level", "debug"])
            .env("NO_COLOR", "1")
            .env("FERRY_FAILPOINT", &self.failpoint)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("ferry agent starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = run(self.cli().arg("status"));
            if out.status.success() {
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let line = text
                    .lines()
                    .find(|l| l.starts_with("NBD: nbd://"))
                    .expect("status names the TCP listener");
                self.tcp = line.trim_start_matches("NBD: nbd://").to_string();
                if text.contains("replicas: loading") {
                    // Up, and still indexing the history of the replicas it holds.
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("agent exited early ({st}); log:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "agent did not come up; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Waits (up to 10 s) for `needle` to appear in the agent's log.
    pub fn wait_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn cli(&self) -> Command {
        let mut c = Command::new(FERRY);
        c.env("FERRY_CONTROL", self.dir.join("control.sock"));
        c
    }

    /// `ferry ARGS` that must succeed.
    pub fn ferry(&self, args: &[&str]) -> String {
        ok(self.cli().args(args))
    }

    /// `ferry` with the words of `line` (no quoting), which must succeed.
    pub fn ferry_line(&self, line: &str) -> String {
        self.ferry(&line.split_whitespace().collect::<Vec<_>>())
    }

    /// `ferry ARGS` that must fail; returns its stderr.
    pub fn ferry_fails(&self, args: &[&str]) -> String {
        let out = run(self.cli().args(args));
        assert!(!out.status.success(), "ferry {args:?} should have failed");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn create(&self, name: &str, size: &str) {
        self.ferry(&["volume", "create", name, "--size", size]);
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("nbd.sock")
    }

    pub fn unix_uri(&self, name: &str) -> String {
        format!("nbd+unix:///{name}?socket={}", self.socket().display())
    }

    pub fn tcp_uri(&self, name: &str) -> String {
        format!("nbd://{}/{name}", self.tcp)
    }

    /// SIGTERM, then waits for the exit; returns its status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent running");
        rustix_kill(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("agent did not stop within 30 s of SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash: no shutdown work at all.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("agent running");
        rustix_kill(child.id(), libc::SIGKILL);
        let _ = child.wait();
    }

    /// Sends `sig` to the running agent (SIGSTOP freezes it with its connections up).
    pub fn signal(&self, sig: i32) {
        rustix_kill(self.child.as_ref().expect("agent running").id(), sig);
    }

    pub fn vpg_dir(&self, vpg: &str) -> PathBuf {
        self.dir.join("vpgs").join(vpg)
    }

    pub fn volume_path(&self, name: &str) -> PathBuf {
        self.dir.join("datastore").join(format!("{name}.img"))
    }
}

pub fn rustix_kill(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child we spawned.
    unsafe { libc::kill(pid as i32, sig) };
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A file of `len` bytes where 64 KiB blocks alternate between a pattern and zeroes.
pub fn patterned_file(path: &Path, len: usize, seed: u8) {
    let mut data = vec![0u8; len];
    for (i, chunk) in data.chunks_mut(65536).enumerate() {
        if i % 3 != 1 {
            for (j, b) in chunk.iter_mut().enumerate() {
                *b = seed.wrapping_add((i * 31 + j * 7) as u8) | 1;
            }
        }
    }
    std::fs::write(path, data).unwrap();
}

/// Starts a python3-libnbd client (with /usr/bin first on PATH) that talks on stdin and
/// stdout, and waits for its "ready" line.
pub fn python_client(args: &[&str]) -> (std::process::Child, std::io::BufReader<std::process::ChildStdout>) {
    use std::io::BufRead;
    require("nbdsh");
    let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
    let mut child = Command::new("/usr/bin/python3")
        .args(args)
        .env("PATH", path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    (child, out)
}

/// Runs nbdsh (python3-libnbd) with /usr/bin first on PATH, as the module lives there.
pub fn nbdsh(script: &Path, args: &[&str]) -> Output {
    require("nbdsh");
    let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
    run(Command::new("/usr/bin/python3")
        .arg(script)
        .args(args)
        .env("PATH", path))
}

/// Runs qemu-io on a raw image (an NBD URI or a file) with these commands, each a `-c`;
/// fails the test on an error or a pattern mismatch. Returns qemu-io's output.
pub fn qemu_io(target: impl AsRef<std::ffi::OsStr>, cmds: &[&str]) -> String {
    qemu_io_with(&["-f", "raw"], target, cmds)
}

/// [`qemu_io`] on a read-only export (a checkpoint view, diverged writes kept for salvage).
pub fn qemu_io_ro(target: impl AsRef<std::ffi::OsStr>, cmds: &[&str]) -> String {
    qemu_io_with(&["-r", "-f", "raw"], target, cmds)
}

fn qemu_io_with(opts: &[&str], target: impl AsRef<std::ffi::OsStr>, cmds: &[&str]) -> String {
    require("qemu-io");
    let mut c = Command::new("qemu-io");
    c.args(opts);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(target);
    let out = ok(&mut c);
    assert!(!out.contains("verification failed"), "qemu-io {cmds:?}: {out}");
    out
}

/// A small ext4 filesystem of its own, loop-mounted for one test (to fill a datastore);
/// unmounted, its loop device freed and its image removed when dropped.
pub struct SmallFs {
    pub mount: PathBuf,
    image: PathBuf,
}

impl SmallFs {
    pub fn new(dir: &Path, name: &str, mib: u64) -> SmallFs {
        require("mkfs.ext4");
        let image = dir.join(format!("{name}.ext4"));
        let mount = dir.join(name);
        std::fs::create_dir_all(&mount).unwrap();
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(mib << 20).unwrap();
        drop(f);
        ok(Command::new("mkfs.ext4").args(["-q", "-F", "-m", "0"]).arg(&image));
        // `-o loop` takes a free loop device and frees it again at unmount (autoclear).
        ok(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&mount));
        SmallFs { mount, image }
    }

    /// Bytes free on it.
    pub fn free_bytes(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.mount).unwrap();
        st.f_bavail * st.f_frsize
    }

    /// Fills it with a ballast file until at most `leave` bytes are free; returns its path.
    pub fn fill(&self, leave: u64) -> PathBuf {
        let p = self.mount.join("ballast");
        let n = self.free_bytes().saturating_sub(leave);
        let f = std::fs::OpenOptions::new().create(true).append(true).open(&p).unwrap();
        let chunk = vec![0x5au8; 1 << 20];
        let mut left = n;
        while left > 0 {
            let k = left.min(chunk.len() as u64) as usize;
            if std::io::Write::write_all(&mut &f, &chunk[..k]).is_err() {
                break;
            }
            left -= k as u64;
        }
        f.sync_all().unwrap();
        p
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let out = run(Command::new("umount").arg(&self.mount));
        if !out.status.success() {
            // Something still holds it (a failed test's agent): detach it now, freed when let go.
            let _ = run(Command::new("umount").arg("-l").arg(&self.mount));
        }
        let _ = std::fs::remove_file(&self.image);
        let _ = std::fs::remove_dir(&self.mount);
    }
}
