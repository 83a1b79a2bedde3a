//! `ferry failover`: tests of a checkpoint at the recovery site, and their reports.

use hyper::Method;

use super::args::FailoverCmd;
use super::client::Client;
use super::export_uri;
use ferry_agent::failover::verify::VerifyState;
use ferry_agent::failover::{Outcome, StopRequest, TestReport, TestRequest, TestRunning};
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

pub(super) async fn run(c: &Client, cmd: FailoverCmd) -> Result<(), String> {
    let e = |e: super::client::ClientError| e.to_string();
    match cmd {
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
