//! `ferry failover`: tests of a checkpoint at the recovery site, and their reports.

use hyper::Method;

use super::args::FailoverCmd;
use super::client::Client;
use super::export_uri;
use ferry_agent::failover::verify::VerifyState;
use ferry_agent::failover::{
    CommitPolicy, LiveFailover, LivePhase, LiveRequest, Outcome, ShutdownPolicy, StopRequest, TestReport, TestRequest,
    TestRunning,
};
use ferry_agent::size::{human, parse_size, utc};

/// Waits for the test's verification and prints its outcome (and, with `stop_after`, waits
/// for the report); an error when it failed, so that a drill's exit status is its result.
async fn wait_verify(c: &Client, vpg: &str, stop_after: bool) -> Result<(), String> {
    let e = |e: super::client::ClientError| e.to_string();
    println!("verifying …");
    let v = loop {
        let running: Vec<TestRunning> = c
            .call(Method::GET, "/v1/failover/tests", None::<&()>)
            .await
            .map_err(e)?
            .unwrap_or_default();
        let v = match running.iter().find(|t| t.vpg == vpg) {
            Some(t) => t.verify.clone().filter(|v| v.state != VerifyState::Running),
            // Stopped after its verification: the report has it.
            None => {
                let rs: Vec<TestReport> = c
                    .call(Method::GET, &format!("/v1/failover/{vpg}/reports"), None::<&()>)
                    .await
                    .map_err(e)?
                    .unwrap_or_default();
                let Some(v) = rs.last().and_then(|r| r.verify.clone()) else {
                    return Err(format!("the failover test of {vpg} ended without its verification"));
                };
                Some(v)
            }
        };
        if let Some(v) = v {
            break v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    // With --stop-after, until the test is stopped and its report recorded.
    if stop_after {
        loop {
            let running: Vec<TestRunning> = c
                .call(Method::GET, "/v1/failover/tests", None::<&()>)
                .await
                .map_err(e)?
                .unwrap_or_default();
            if !running.iter().any(|t| t.vpg == vpg) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    println!("{}", v.output_tail.trim_end());
    let how = match (v.timed_out, v.exit_code) {
        (true, _) => "timed out".to_string(),
        (false, Some(code)) => format!("exited {code}"),
        (false, None) => "was killed".to_string(),
    };
    let next = if stop_after {
        "the test was stopped and its report recorded (`ferry failover report`)".to_string()
    } else {
        format!("the test runs on: ferry failover stop {vpg} --result pass|fail")
    };
    let passed = v.state == VerifyState::Passed;
    println!(
        "verification {how} after {:.1} s: {}; {next}",
        v.seconds,
        if passed { "PASS" } else { "FAIL" }
    );
    if passed {
        Ok(())
    } else {
        Err(format!("the failover test of {vpg} failed its verification"))
    }
}

/// A live failover in a few lines: phase, timer, exports, protected site, warnings, steps.
pub(super) fn print_live(l: &LiveFailover, s: &ferry_agent::api::AgentStatus) {
    let phase = match l.phase {
        LivePhase::NeedsCommit => match l.commit_at_unix_ms {
            Some(at) => format!(
                "NEEDS COMMIT ({} at {}, in {} min)",
                match l.commit_policy {
                    CommitPolicy::AutoRollback => "automatic rollback",
                    _ => "automatic commit",
                },
                utc(at),
                at.saturating_sub(ferry_agent::clock::now_ms()) / 60_000
            ),
            None => "NEEDS COMMIT (`ferry failover commit` or `rollback`)".into(),
        },
        LivePhase::Committing => {
            let p = l.commit.clone().unwrap_or_default();
            format!(
                "COMMITTING: {} of {} copied",
                human(p.copied_bytes),
                human(p.total_bytes)
            )
        }
        LivePhase::Committed => "COMMITTED: its volumes are this agent's".into(),
        LivePhase::RolledBack => "rolled back".into(),
    };
    println!(
        "LIVE FAILOVER of VPG {} at checkpoint {} (epoch {}): {phase}",
        l.vpg,
        super::checkpoint_words(&l.checkpoint),
        l.epoch
    );
    if l.phase != LivePhase::RolledBack {
        println!("  served in {:.0} ms under the production names:", l.ready_after_ms);
        for (vol, name) in &l.exports {
            println!("    {vol}: {}", export_uri(s, name));
        }
    }
    println!("  protected site: {}", l.protected_site);
    if let Some(w) = l.split_brain_words() {
        println!("  SPLIT BRAIN: {w}");
    }
    if let Some(p) = &l.commit
        && p.done_unix_ms.is_some()
    {
        println!(
            "  commit: {} in {} passes at {}/s; longest client pause {:.1} ms",
            human(p.total_bytes),
            p.passes,
            human(p.rate_bytes_per_s as u64),
            p.longest_pause_ms
        );
    }
    for w in &l.warnings {
        println!("  WARNING: {w}");
    }
    for st in &l.steps {
        println!("    {} {}: {}", if st.ok { "ok  " } else { "FAIL" }, st.what, st.detail);
    }
}

/// Shows the commit's copy as a progress bar until it is done; the failover then.
async fn wait_commit(c: &Client, vpg: &str, l: &LiveFailover) -> Result<LiveFailover, String> {
    let bar = indicatif::ProgressBar::new(l.commit.as_ref().map_or(0, |p| p.total_bytes).max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template("committing {bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}")
            .expect("a valid template"),
    );
    let done = loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let Some(l) = lives(c).await?.into_iter().find(|l| l.vpg == vpg) else {
            return Err(format!("the live failover of {vpg} is gone"));
        };
        if let Some(p) = &l.commit {
            bar.set_length(p.total_bytes.max(1));
            bar.set_position(p.copied_bytes);
        }
        match l.phase {
            LivePhase::Committing => continue,
            LivePhase::Committed => break l,
            _ => {
                bar.abandon();
                let why = l.steps.last().map(|s| s.detail.clone()).unwrap_or_default();
                return Err(format!("the commit of {vpg} failed: {why}"));
            }
        }
    };
    bar.finish_and_clear();
    Ok(done)
}

async fn lives(c: &Client) -> Result<Vec<LiveFailover>, String> {
    Ok(c.call(Method::GET, "/v1/failover/live", None::<&()>)
        .await
        .map_err(|e| e.to_string())?
        .unwrap_or_default())
}

pub(super) async fn run(c: &Client, cmd: FailoverCmd) -> Result<(), String> {
    let e = |e: super::client::ClientError| e.to_string();
    match cmd {
        FailoverCmd::Live {
            vpg,
            checkpoint,
            commit_policy,
            commit_after,
            shutdown,
        } => {
            let req = LiveRequest {
                checkpoint,
                commit_policy: CommitPolicy::parse(&commit_policy)?,
                commit_after_s: commit_after.as_deref().map(super::parse_duration_s).transpose()?,
                shutdown: ShutdownPolicy::parse(&shutdown)?,
                ..Default::default()
            };
            println!("failing VPG {vpg} over to this site (shutdown {shutdown}) …");
            let l: LiveFailover = c
                .call(Method::POST, &format!("/v1/failover/{vpg}/live"), Some(&req))
                .await
                .map_err(e)?
                .ok_or("empty answer")?;
            let s = super::agent_status(c).await?;
            print_live(&l, &s);
            println!("Decide with: ferry failover commit {vpg}   or   ferry failover rollback {vpg}");
        }
        FailoverCmd::Move {
            vpg,
            commit_policy,
            commit_after,
            reverse,
        } => {
            let req = ferry_agent::failover::MoveRequest {
                commit_policy: CommitPolicy::parse(&commit_policy)?,
                commit_after_s: commit_after.as_deref().map(super::parse_duration_s).transpose()?,
                reverse: reverse.request()?,
            };
            println!("moving VPG {vpg} to this site: graceful shutdown there, final checkpoint, drain …");
            let l: LiveFailover = c
                .call(Method::POST, &format!("/v1/failover/{vpg}/move"), Some(&req))
                .await
                .map_err(e)?
                .ok_or("empty answer")?;
            let l = if l.phase == LivePhase::Committing {
                wait_commit(c, &vpg, &l).await?
            } else {
                l
            };
            let s = super::agent_status(c).await?;
            print_live(&l, &s);
            if let Some(r) = &req.reverse {
                println!("reverse protection to {} follows (`ferry vpg show {vpg}`)", r.peer);
            }
        }
        FailoverCmd::Commit { vpg, no_wait, reverse } => {
            let body = ferry_agent::api::CommitRequest {
                reverse: reverse.request()?,
            };
            let l: LiveFailover = c
                .call(Method::POST, &format!("/v1/failover/{vpg}/commit"), Some(&body))
                .await
                .map_err(e)?
                .ok_or("empty answer")?;
            if no_wait {
                println!("commit of VPG {vpg} started: the volumes are copied while served (`ferry failover status`)");
                return Ok(());
            }
            let done = wait_commit(c, &vpg, &l).await?;
            let s = super::agent_status(c).await?;
            print_live(&done, &s);
        }
        FailoverCmd::Rollback { vpg } => {
            let l: LiveFailover = c
                .call(Method::POST, &format!("/v1/failover/{vpg}/rollback"), None::<&()>)
                .await
                .map_err(e)?
                .ok_or("empty answer")?;
            println!(
                "live failover of VPG {vpg} rolled back: its exports here are closed and their writes discarded; the protected site takes writes again at epoch {} and replication resumes",
                l.epoch
            );
        }
        FailoverCmd::Status { json } => {
            let ls = lives(c).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&ls).expect("serialises"));
            } else if ls.is_empty() {
                println!("no live failover here");
            } else {
                let s = super::agent_status(c).await?;
                for l in &ls {
                    print_live(l, &s);
                }
            }
        }
        FailoverCmd::Test {
            vpg,
            checkpoint,
            volumes,
            scratch_max,
            verify,
            stop_after,
            verify_timeout,
        } => {
            let req = TestRequest {
                checkpoint,
                volumes,
                scratch_max: scratch_max.as_deref().map(parse_size).transpose()?,
                verify,
                stop_after,
                verify_timeout_s: verify_timeout.as_deref().map(super::parse_duration_s).transpose()?,
            };
            let t: TestRunning = c
                .call(Method::POST, &format!("/v1/failover/{vpg}/test"), Some(&req))
                .await
                .map_err(e)?
                .ok_or("empty answer")?;
            let s = super::agent_status(c).await?;
            println!(
                "FAILOVER TEST of VPG {} at checkpoint {}, ready in {:.0} ms; replication goes on.",
                t.vpg,
                super::checkpoint_words(&t.checkpoint),
                t.ready_after_ms
            );
            println!(
                "Test exports (read-write, scratch up to {}; not production):",
                human(t.scratch_max_bytes)
            );
            for (vol, name) in &t.exports {
                println!("  {vol}: {}", export_uri(&s, name));
            }
            if t.verify.is_some() {
                return wait_verify(c, &t.vpg, stop_after).await;
            }
            println!(
                "End it with: ferry failover stop {} --result pass|fail [--note TEXT]",
                t.vpg
            );
        }
        FailoverCmd::Stop { vpg, result, note } => {
            let req = StopRequest {
                result: if result == "pass" { Outcome::Pass } else { Outcome::Fail },
                note,
            };
            let r: TestReport = c
                .call(Method::POST, &format!("/v1/failover/{vpg}/stop"), Some(&req))
                .await
                .map_err(e)?
                .ok_or("empty answer")?;
            println!(
                "failover test of VPG {} stopped: {:?}; exports closed, {} of scratch deleted",
                r.vpg,
                r.result,
                human(r.scratch_used_bytes)
            );
        }
        FailoverCmd::Report { vpg, json } => {
            let rs: Vec<TestReport> = c
                .call(Method::GET, &format!("/v1/failover/{vpg}/reports"), None::<&()>)
                .await
                .map_err(e)?
                .unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&rs).expect("serialises"));
            } else if rs.is_empty() {
                println!("VPG {vpg} has no failover test reports yet (`ferry failover test {vpg}`)");
            } else {
                for r in &rs {
                    println!(
                        "{}  checkpoint {} ({}), ready in {:.0} ms, {} min, {:?}{}",
                        utc(r.started_unix_ms),
                        r.checkpoint.seq,
                        utc(r.checkpoint.unix_ms),
                        r.ready_after_ms,
                        r.stopped_unix_ms.saturating_sub(r.started_unix_ms) / 60_000,
                        r.result,
                        if r.note.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", r.note)
                        }
                    );
                    for s in &r.steps {
                        println!("    {} {}: {}", if s.ok { "ok  " } else { "FAIL" }, s.what, s.detail);
                    }
                }
            }
        }
    }
    Ok(())
}
