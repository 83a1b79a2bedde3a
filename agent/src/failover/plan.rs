//! Bringing a VPG up member by member, as its failover plan says (set at the protected
//! site, carried in the stream): members in boot order with the delay between them, a
//! pre-script before each member starts and a post-script after. A pre-script that fails
//! or times out stops the operation; a post-script's failure is reported in the steps and
//! the operation goes on. Scripts run at this (the recovery) site, through
//! [`verify::run`](super::verify::run), with the operation in their environment.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_proto::message::{Member, Plan};

use super::verify::{self, VerifyState};
use super::{Step, step};
use crate::checkpoint::CheckpointInfo;
use crate::error::AgentError;

/// A script's time limit when the plan gives none.
pub const SCRIPT_TIMEOUT_DEFAULT_S: u64 = 300;

/// Where a script's command is found, if it names one that does not exist here.
fn missing(command: &str) -> Option<String> {
    let first = command.split_whitespace().next()?;
    if first.contains('/') {
        return (!Path::new(first).is_file()).then(|| first.to_string());
    }
    // A shell builtin or a program on PATH.
    const BUILTINS: [&str; 8] = ["true", "false", "echo", "exit", "test", "[", ":", "printf"];
    if BUILTINS.contains(&first) || first.contains('=') {
        return None;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|d| d.join(first).is_file());
    (!found).then(|| first.to_string())
}

/// Refuses a plan whose scripts name a program that does not exist at this site.
pub fn check_scripts(plan: &Plan) -> Result<(), AgentError> {
    for (what, cmd) in [("pre-script", &plan.pre_script), ("post-script", &plan.post_script)] {
        if let Some(p) = missing(cmd) {
            return Err(AgentError::Refused(format!(
                "the VPG's {what} {p:?} does not exist at this (the recovery) site; install it here, or change it at the protected site (`ferry vpg edit VPG --{what} CMD`)"
            )));
        }
    }
    Ok(())
}

/// The members to bring up, in boot order, keeping only the volumes in `chosen`.
pub fn members(plan: &Plan, volumes: &[String], chosen: &[String]) -> Vec<Member> {
    crate::protect::vpg::boot_order(plan, volumes)
        .into_iter()
        .filter_map(|mut m| {
            m.volumes.retain(|v| chosen.contains(v));
            (!m.volumes.is_empty()).then_some(m)
        })
        .collect()
}

/// One operation's bring-up: what its scripts are told.
pub struct BringUp<'a> {
    pub vpg: &'a str,
    /// test, live or move.
    pub operation: &'a str,
    pub checkpoint: &'a CheckpointInfo,
    pub plan: &'a Plan,
    /// Where the scripts' output goes (one file per script run).
    pub log_dir: PathBuf,
    /// A volume's export name → its NBD URI.
    pub uri: &'a (dyn Fn(&str) -> String + Sync),
}

impl std::fmt::Debug for BringUp<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BringUp")
            .field("vpg", &self.vpg)
            .field("operation", &self.operation)
            .finish_non_exhaustive()
    }
}

impl BringUp<'_> {
    fn network(&self) -> &str {
        if self.operation == "test" {
            &self.plan.test_network
        } else {
            &self.plan.failover_network
        }
    }

    /// Runs one script for `m`; its step, and whether it passed.
    fn script(&self, phase: &str, cmd: &str, m: &Member, exports: &[(String, String)]) -> (Step, bool) {
        let uris: Vec<String> = exports
            .iter()
            .filter(|(v, _)| m.volumes.contains(v))
            .map(|(v, e)| format!("{v}={}", (self.uri)(e)))
            .collect();
        let env = vec![
            ("FERRY_VPG".to_string(), self.vpg.to_string()),
            ("FERRY_OPERATION".to_string(), self.operation.to_string()),
            ("FERRY_PHASE".to_string(), phase.to_string()),
            ("FERRY_CHECKPOINT".to_string(), self.checkpoint.seq.to_string()),
            ("FERRY_CHECKPOINT_TAG".to_string(), self.checkpoint.tag.clone()),
            ("FERRY_MEMBER".to_string(), m.name.clone()),
            ("FERRY_MEMBER_VOLUMES".to_string(), m.volumes.join(" ")),
            ("FERRY_EXPORT_URIS".to_string(), uris.join(" ")),
            ("FERRY_NETWORK".to_string(), self.network().to_string()),
        ];
        let timeout = match self.plan.script_timeout_s {
            0 => SCRIPT_TIMEOUT_DEFAULT_S,
            t => t,
        };
        let log = self.log_dir.join(format!("{phase}-script-{}.log", m.name));
        let v = verify::run(cmd, &env, &log, Duration::from_secs(timeout));
        let ok = v.state == VerifyState::Passed;
        let detail = format!(
            "member {}: `{cmd}` {} in {:.1} s{}",
            m.name,
            match (v.timed_out, v.exit_code) {
                (true, _) => format!("timed out (limit {timeout} s)"),
                (false, Some(c)) => format!("exited {c}"),
                (false, None) => "was killed".to_string(),
            },
            v.seconds,
            v.output_tail.lines().last().map_or(String::new(), |l| format!(": {l}"))
        );
        (step(&format!("{phase}-script"), ok, detail), ok)
    }

    /// Brings `members` up in order: pre-script, `up` (which serves the member's volumes
    /// and gives their (volume, export) names), post-script, then the boot delay before
    /// the next. Steps go to `steps`; a pre-script's failure stops it with the reason.
    /// Blocking (scripts and delays): run it off the reactor.
    pub fn run(
        &self,
        members: &[Member],
        mut up: impl FnMut(&Member) -> Vec<(String, String)>,
        steps: &mut Vec<Step>,
    ) -> Result<(), String> {
        let _ = std::fs::create_dir_all(&self.log_dir);
        let mut served: Vec<(String, String)> = Vec::new();
        for (i, m) in members.iter().enumerate() {
            if i > 0 && self.plan.boot_delay_ms > 0 {
                std::thread::sleep(Duration::from_millis(self.plan.boot_delay_ms));
            }
            if !self.plan.pre_script.is_empty() {
                let (s, ok) = self.script("pre", &self.plan.pre_script, m, &served);
                let why = s.detail.clone();
                steps.push(s);
                if !ok {
                    return Err(format!("the pre-script failed, so the operation stopped: {why}"));
                }
            }
            let exports = up(m);
            steps.push(step(
                "member up",
                true,
                format!("member {} ({}) served", m.name, m.volumes.join(", ")),
            ));
            served.extend(exports);
            if !self.plan.post_script.is_empty() {
                let (s, _) = self.script("post", &self.plan.post_script, m, &served);
                steps.push(s);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_keep_boot_order_and_a_volume_in_none_starts_on_its_own() {
        let plan = Plan {
            members: vec![
                Member {
                    name: "db".into(),
                    volumes: vec!["d1".into()],
                },
                Member {
                    name: "web".into(),
                    volumes: vec!["d2".into(), "d0".into()],
                },
            ],
            ..Default::default()
        };
        let vols: Vec<String> = ["d0", "d1", "d2", "d3"].map(String::from).to_vec();
        let all = members(&plan, &vols, &vols);
        let names: Vec<&str> = all.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["db", "web", "d3"]);
        // A test of some volumes: members left empty are dropped.
        let some = members(&plan, &vols, &["d0".to_string()]);
        assert_eq!(
            (some.len(), some[0].name.as_str(), some[0].volumes.clone()),
            (1, "web", vec!["d0".to_string()])
        );
    }

    #[test]
    fn scripts_that_name_no_program_here_are_refused() {
        let mut plan = Plan {
            pre_script: "/no/such/script --x".into(),
            ..Default::default()
        };
        assert!(
            check_scripts(&plan)
                .unwrap_err()
                .to_string()
                .contains("\"/no/such/script\"")
        );
        plan.pre_script = "no-such-program-of-ferry arg".into();
        assert!(check_scripts(&plan).is_err());
        plan.pre_script = "sh -c true".into();
        plan.post_script = "echo up".into();
        check_scripts(&plan).unwrap();
    }
}
