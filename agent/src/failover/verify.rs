//! A failover test's verification: a command run at the recovery site once the test's
//! exports are up (a drill), with the test described in its environment; its exit code and
//! the tail of its output become the result, and with `stop_after` they end the test.
//!
//! The command runs in a process group of its own under `sh -c`, with its output in a
//! file in the test's scratch folder; past its time limit the whole group is killed.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How long a verification may run when no limit is given.
pub const VERIFY_TIMEOUT_DEFAULT_S: u64 = 300;
/// Bytes of a verification's output kept in the report.
const TAIL_BYTES: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum VerifyState {
    Running,
    Passed,
    Failed,
}

/// A verification as the test shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Verify {
    pub command: String,
    pub state: VerifyState,
    pub exit_code: Option<i32>,
    /// The end of what it printed (stdout and stderr).
    pub output_tail: String,
    pub seconds: f64,
    pub timed_out: bool,
}

impl Verify {
    pub fn running(command: &str) -> Verify {
        Verify {
            command: command.into(),
            state: VerifyState::Running,
            exit_code: None,
            output_tail: String::new(),
            seconds: 0.0,
            timed_out: false,
        }
    }
}

/// Runs `command` with `env`, its output to `log`, for at most `timeout`; the outcome.
pub fn run(command: &str, env: &[(String, String)], log: &Path, timeout: Duration) -> Verify {
    let t0 = Instant::now();
    let mut v = Verify::running(command);
    let finish = |mut v: Verify, tail: String| {
        v.seconds = t0.elapsed().as_secs_f64();
        v.output_tail = tail;
        v.state = if v.exit_code == Some(0) && !v.timed_out {
            VerifyState::Passed
        } else {
            VerifyState::Failed
        };
        v
    };
    let out = match std::fs::File::create(log).and_then(|f| Ok((f.try_clone()?, f))) {
        Ok(x) => x,
        Err(e) => return finish(v, format!("cannot create {}: {e}", log.display())),
    };
    let mut child = match Command::new("sh")
        .arg("-c")
        .arg(command)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out.0)
        .stderr(out.1)
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return finish(v, format!("cannot run sh: {e}")),
    };
    let deadline = t0 + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                v.timed_out = true;
                // The whole group: a script's own children (nbdfuse, fsck) go too.
                let _ = rustix::process::kill_process_group(
                    rustix::process::Pid::from_raw(child.id() as i32).expect("a child's pid"),
                    rustix::process::Signal::KILL,
                );
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => break None,
        }
    };
    v.exit_code = status.and_then(|s| s.code());
    let text = std::fs::read(log).unwrap_or_default();
    let from = text.len().saturating_sub(TAIL_BYTES);
    let mut tail = String::from_utf8_lossy(&text[from..]).into_owned();
    if v.timed_out {
        tail.push_str(&format!("\n(killed after {} s)", timeout.as_secs()));
    }
    finish(v, tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> std::path::PathBuf {
        std::env::temp_dir().join(format!(
            "ferry-verify-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ))
    }

    #[test]
    fn exit_code_environment_and_output_make_the_result() {
        let env = vec![("FERRY_VPG".to_string(), "app".to_string())];
        let v = run(
            "echo checking $FERRY_VPG; exit 0",
            &env,
            &log(),
            Duration::from_secs(10),
        );
        assert_eq!((v.state, v.exit_code), (VerifyState::Passed, Some(0)));
        assert_eq!(v.output_tail.trim(), "checking app");
        let v = run("echo bad superblock >&2; exit 8", &env, &log(), Duration::from_secs(10));
        assert_eq!((v.state, v.exit_code), (VerifyState::Failed, Some(8)));
        assert!(v.output_tail.contains("bad superblock"));
        std::fs::remove_file(log()).unwrap();
    }

    #[test]
    fn a_command_past_its_time_is_killed_with_its_children() {
        let v = run("sleep 30 & sleep 30", &[], &log(), Duration::from_millis(300));
        assert!(v.timed_out && v.state == VerifyState::Failed, "{v:?}");
        assert!(v.seconds < 5.0);
        assert!(v.output_tail.contains("killed after"));
        std::fs::remove_file(log()).unwrap();
    }
}
