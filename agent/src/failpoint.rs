//! Crash points for tests of what survives a crash at a given step: with
//! `FERRY_FAILPOINT=NAME` in its environment, the agent kills itself with SIGKILL (as
//! `kill -9` would: no clean-up, nothing flushed) when it reaches the point NAME. Unset, a
//! point costs one environment lookup at a step that is rare (a failover's).

/// Reaching point `name`.
pub fn hit(name: &str) {
    if std::env::var_os("FERRY_FAILPOINT").is_some_and(|v| v == name) {
        tracing::error!(point = name, "FERRY_FAILPOINT reached: killing this agent (SIGKILL)");
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}
