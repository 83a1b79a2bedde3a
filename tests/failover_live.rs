//! Live failover between two real agents: the protected site fenced (and unfenced) at the
//! right moments, the VPG served at the recovery site under its production names, commit
//! (the volumes equal the checkpoint plus what was written meanwhile, after a restart too),
//! rollback (nothing the protected site wrote is lost, replication resumes), the commit
//! policies' timers, the disaster case, and the plan's boot order and scripts.

mod common;

use std::process::Command;

use common::sites::{compare, copy, export, json, new_key, recovery_agent, tag_and_wait, try_write, wait_for};
use common::{Agent, qemu_io, require, run};
use serde_json::Value;

fn vpg_state(a: &Agent, vpg: &str) -> String {
    json(a, &["vpg", "show", vpg, "--json"])["state_kind"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The live failover of `vpg` as the recovery agent shows it.
fn live(b: &Agent, vpg: &str) -> Option<Value> {
    json(b, &["failover", "status", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["vpg"] == vpg)
        .cloned()
}

/// A qemu-io write; whether it went through, and what qemu-io said.
/// Two agents protecting VPG `app` (d0 16 MiB, d1 8 MiB) A → B, in sync, with data.
fn protected_pair(tag: &str, plan: &str) -> (Agent, Agent) {
    let a = Agent::start(&format!("{tag}-a"));
    let key = new_key(&a.dir);
    let (b, peer) = recovery_agent(&format!("{tag}-b"), &key, "");
    a.create("d0", "16M");
    a.create("d1", "8M");
    a.ferry_line(&format!(
        "vpg create app --volume d0 --volume d1 --journal-size 16M --peer {peer} --peer-key {} --wait {plan}",
        key.display()
    ));
    qemu_io(a.tcp_uri("d0"), &["write -P 0x11 0 2M"]);
    qemu_io(a.tcp_uri("d1"), &["write -P 0x22 1M 1M"]);
    tag_and_wait(&a, &b, "app", "base");
    (a, b)
}

#[test]
fn a_graceful_live_failover_fences_the_protected_site_and_a_rollback_loses_nothing() {
    let (a, b) = protected_pair("lv-gr", "");
    // Written just before the failover, acknowledged: a graceful shutdown ships it.
    qemu_io(a.tcp_uri("d0"), &["write -P 0x33 4M 1M"]);
    let out = b.ferry(&["failover", "live", "app", "--shutdown", "graceful"]);
    assert!(out.contains("NEEDS COMMIT"), "{out}");
    assert!(out.contains("shut down gracefully and fenced"), "{out}");
    let l = live(&b, "app").expect("shown");
    assert_eq!(l["phase"], "needs-commit");
    assert_eq!(l["epoch"], 2);
    assert_eq!(
        l["checkpoint"]["tag"], "before failover",
        "latest: the final checkpoint"
    );

    // The protected site: fenced at epoch 2, reads go on, writes are refused.
    assert_eq!(vpg_state(&a, "app"), "fenced");
    let shown = json(&a, &["vpg", "show", "app", "--json"]);
    assert_eq!(shown["epoch"], 2);
    // Where epoch 2 began in this site's stream: after the final checkpoint.
    assert_eq!(shown["epochs"][0][0], 2, "{shown}");
    assert!(shown["epochs"][0][1].as_u64().unwrap() > 0, "{shown}");
    let at_b = json(&b, &["replica", "show", "app", "--json"]);
    assert_eq!(at_b["epochs"][0][0], 2, "{at_b}");
    assert!(
        shown["state"].as_str().unwrap().contains("runs at its recovery site"),
        "{shown}"
    );
    let (ok, text) = try_write(&a.tcp_uri("d0"), "write -P 0x99 0 4k");
    assert!(!ok && text.contains("Operation not permitted"), "{text}");
    qemu_io(a.tcp_uri("d0"), &["read -P 0x33 4M 1M"]);

    // The recovery site serves the volumes under their production names, equal to the
    // protected volumes as fenced (nothing acknowledged was lost), and takes writes.
    for v in ["d0", "d1"] {
        let r = compare(a.volume_path(v), b.tcp_uri(v));
        assert!(r.contains("Images are identical"), "{v}: {r}");
    }
    qemu_io(b.tcp_uri("d0"), &["write -P 0x44 0 64k"]);
    qemu_io(b.tcp_uri("d0"), &["read -P 0x44 0 64k"]);

    // Refusals, each changing nothing.
    let err = b.ferry_fails(&["failover", "live", "app"]);
    assert!(err.contains("needs commit"), "{err}");
    let err = b.ferry_fails(&["failover", "test", "app"]);
    assert!(err.contains("live failover of \"app\" runs"), "{err}");
    let err = b.ferry_fails(&["failover", "commit", "other"]);
    assert!(err.contains("nothing to commit"), "{err}");
    let err = b.ferry_fails(&["replica", "delete", "app", "--force"]);
    assert!(err.contains("commit or roll it back"), "{err}");

    // Rollback: the exports close, the protected site takes writes again at a new epoch
    // (3: the recovery site wrote in epoch 2), and its stream goes on.
    let out = b.ferry(&["failover", "rollback", "app"]);
    assert!(out.contains("rolled back"), "{out}");
    assert!(live(&b, "app").is_none());
    let (ok, _) = try_write(&b.tcp_uri("d0"), "write -P 0x45 0 4k");
    assert!(!ok, "the production name is no longer served at the recovery site");
    assert!(
        wait_for(30, || vpg_state(&a, "app") != "fenced"),
        "unfenced: {}",
        a.ferry(&["vpg", "show", "app"])
    );
    assert_eq!(json(&a, &["vpg", "show", "app", "--json"])["epoch"], 3);
    qemu_io(a.tcp_uri("d0"), &["write -P 0x55 8M 1M"]);
    tag_and_wait(&a, &b, "app", "after");
    let ex = export(&b, "app", "after");
    let d0 = &ex.iter().find(|(v, _)| v == "d0").unwrap().1;
    let r = compare(a.volume_path("d0"), d0);
    assert!(r.contains("Images are identical"), "replication resumed: {r}");
    let events = b.ferry(&["replica", "show", "app"]);
    assert!(
        events.contains("LIVE FAILOVER") && events.contains("rolled back"),
        "{events}"
    );
}

#[test]
fn a_commit_makes_the_checkpoint_plus_what_was_written_the_recovery_sites_volumes_across_a_restart() {
    let (mut a, mut b) = protected_pair("lv-cm", "");
    let pre = tag_and_wait(&a, &b, "app", "pre");
    // What the checkpoint holds.
    let ex = export(&b, "app", "pre");
    let want: Vec<(String, std::path::PathBuf)> = ex
        .iter()
        .map(|(v, uri)| {
            let f = b.dir.join(format!("{v}.want.raw"));
            copy(uri, &f);
            (v.clone(), f)
        })
        .collect();
    b.ferry(&["checkpoint", "unexport", "app"]);
    // Written after the checkpoint at the protected site: not part of this failover.
    qemu_io(a.tcp_uri("d1"), &["write -P 0x77 0 64k"]);
    let out = b.ferry(&[
        "failover",
        "live",
        "app",
        "--checkpoint",
        &pre.to_string(),
        "--shutdown",
        "force",
    ]);
    assert!(out.contains("fenced at once"), "{out}");
    assert_eq!(live(&b, "app").unwrap()["checkpoint"]["seq"], pre);
    assert_eq!(vpg_state(&a, "app"), "fenced");
    // Written during needs-commit, at the recovery site (also into the wanted copy).
    qemu_io(b.tcp_uri("d0"), &["write -P 0x66 1M 1M", "write -z 12M 64k"]);
    qemu_io(b.tcp_uri("d1"), &["write -P 0x67 7M 4k"]);
    for (v, f) in &want {
        let cmds: &[&str] = if v == "d0" {
            &["write -P 0x66 1M 1M", "write -z 12M 64k"]
        } else {
            &["write -P 0x67 7M 4k"]
        };
        qemu_io(f, cmds);
    }
    // A restart of the recovery agent during needs-commit: the overlays are found again.
    b.stop();
    b.spawn();
    assert!(wait_for(30, || live(&b, "app").is_some_and(|l| l["phase"] == "needs-commit")));
    assert!(
        wait_for(30, || compare(&want[0].1, b.tcp_uri(&want[0].0))
            .contains("Images are identical")),
        "{}",
        compare(&want[0].1, b.tcp_uri(&want[0].0))
    );
    // Commit while a client writes on (its writes go to the volume after the switch).
    require("fio");
    let mut fio = Command::new("fio")
        .current_dir(&b.dir)
        .args([
            "--name=during",
            "--ioengine=nbd",
            &format!("--uri={}", b.tcp_uri("d1")),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=2",
            "--offset=4M",
            "--size=2M",
            "--time_based",
            "--runtime=3",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = b.ferry(&["failover", "commit", "app"]);
    assert!(out.contains("COMMITTED"), "{out}");
    assert!(out.contains("longest client pause"), "{out}");
    assert!(
        fio.wait().unwrap().success(),
        "every write of the client during the commit was answered"
    );
    // fio's region is its own; everything else is the checkpoint plus the writes above.
    let l = live(&b, "app").unwrap();
    assert_eq!(l["phase"], "committed");
    let vols = b.ferry(&["volume", "list"]);
    assert!(vols.contains("d0") && vols.contains("d1"), "{vols}");
    let check = |b: &Agent| {
        for (v, f) in &want {
            let got = b.dir.join(format!("{v}.got.raw"));
            copy(&b.tcp_uri(v), &got);
            if v == "d1" {
                // Outside fio's 4M..6M.
                let (g, w) = (std::fs::read(&got).unwrap(), std::fs::read(f).unwrap());
                assert!(
                    g[..4 << 20] == w[..4 << 20] && g[6 << 20..] == w[6 << 20..],
                    "d1 differs"
                );
            } else {
                let r = compare(&got, f);
                assert!(r.contains("Images are identical"), "{v}: {r}");
            }
        }
    };
    check(&b);
    // The protected site's writes after the checkpoint are not there: they were kept for
    // salvage at the commit, served read-only.
    let d1 = std::fs::read(b.dir.join("d1.got.raw")).unwrap();
    assert_ne!(d1[..65536], [0x77u8; 65536][..]);
    let kept = json(&b, &["vpg", "diverged", "app", "--json"]);
    let vols = kept[0]["volumes"].as_array().unwrap();
    assert!(
        vols.iter()
            .any(|v| v["name"] == "d1" && v["regions"] == serde_json::json!([[0, 65536]])),
        "{kept}"
    );
    common::qemu_io_ro(
        format!("nbd+unix:///app@diverged-e2.d1?socket={}", b.socket().display()),
        &["read -P 0x77 0 64k"],
    );
    // After a restart of the recovery agent: the same volumes, still committed.
    b.stop();
    b.spawn();
    check(&b);
    assert!(wait_for(30, || live(&b, "app").is_some_and(|l| l["phase"] == "committed")));
    // The protected site stays fenced across its own restart.
    a.stop();
    a.spawn();
    assert_eq!(vpg_state(&a, "app"), "fenced");
    let (ok, text) = try_write(&a.tcp_uri("d0"), "write -P 0x99 0 4k");
    assert!(!ok && text.contains("Operation not permitted"), "{text}");
}

#[test]
fn commit_policies_act_when_their_timer_runs_out() {
    let (a, b) = protected_pair("lv-tm", "");
    let out = b.ferry(&[
        "failover",
        "live",
        "app",
        "--commit-policy",
        "auto-rollback",
        "--commit-after",
        "2s",
    ]);
    assert!(out.contains("automatic rollback at"), "{out}");
    let events = b.ferry(&["replica", "show", "app"]);
    assert!(events.contains("commit timer started: automatic rollback"), "{events}");
    assert!(wait_for(30, || live(&b, "app").is_none()), "rolled back by its timer");
    assert!(wait_for(30, || vpg_state(&a, "app") != "fenced"), "unfenced");
    qemu_io(a.tcp_uri("d0"), &["write -P 0x12 0 4k"]);
    tag_and_wait(&a, &b, "app", "resumed");

    b.ferry(&[
        "failover",
        "live",
        "app",
        "--commit-policy",
        "auto-commit",
        "--commit-after",
        "2s",
    ]);
    assert!(
        wait_for(60, || live(&b, "app").is_some_and(|l| l["phase"] == "committed")),
        "committed by its timer: {}",
        b.ferry(&["failover", "status"])
    );
    assert_eq!(vpg_state(&a, "app"), "fenced");
    let events = b.ferry(&["replica", "show", "app"]);
    assert!(
        events.contains("the commit timer ran out: automatic commit"),
        "{events}"
    );
    let r = compare(a.volume_path("d0"), b.tcp_uri("d0"));
    assert!(r.contains("Images are identical"), "{r}");
}

#[test]
fn a_protected_site_killed_before_the_failover_fences_itself_when_it_comes_back() {
    let (mut a, b) = protected_pair("lv-ds", "");
    a.kill9();
    let out = b.ferry(&["failover", "live", "app"]);
    assert!(out.contains("not connected"), "{out}");
    assert!(out.contains("WARNING"), "{out}");
    let r = compare(a.volume_path("d0"), b.tcp_uri("d0"));
    assert!(r.contains("Images are identical"), "{r}");
    a.spawn();
    // A write at once: held until the recovery site answered, then refused by the fence
    // it learned (never taken).
    let (ok, text) = try_write(&a.tcp_uri("d0"), "write -P 0x99 0 4k");
    assert!(!ok && text.contains("Operation not permitted"), "{text}");
    assert_eq!(
        vpg_state(&a, "app"),
        "fenced",
        "{}\n{}",
        a.ferry(&["vpg", "show", "app"]),
        a.log()
    );
    let shown = json(&a, &["vpg", "show", "app", "--json"]);
    assert_eq!(shown["epoch"], 2);
    // The recovery site took none of its stream.
    b.ferry(&["failover", "commit", "app"]);
    let r = compare(a.volume_path("d0"), b.tcp_uri("d0"));
    assert!(r.contains("Images are identical"), "{r}");
}

#[test]
fn members_start_in_boot_order_with_their_scripts_and_a_failing_pre_script_stops_the_operation() {
    let dir = common::scratch_dir("lv-sc-scripts");
    let log = dir.join("scripts.log");
    let script = dir.join("note.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$FERRY_PHASE $FERRY_MEMBER $FERRY_OPERATION net=$FERRY_NETWORK vols=$FERRY_MEMBER_VOLUMES uris=$FERRY_EXPORT_URIS t=$(date +%s.%N)\" >> {}\n",
            log.display()
        ),
    )
    .unwrap();
    let failing = dir.join("fail.sh");
    std::fs::write(&failing, "#!/bin/sh\necho no network for $FERRY_MEMBER; exit 3\n").unwrap();
    for s in [&script, &failing] {
        run(Command::new("chmod").arg("+x").arg(s));
    }
    let plan = format!(
        "--member db=d1 --member web=d0 --boot-delay 1s --pre-script {} --post-script {} --test-network testnet --failover-network prodnet",
        script.display(),
        script.display()
    );
    let (a, b) = protected_pair("lv-sc", &plan);
    let shown = a.ferry(&["vpg", "show", "app"]);
    assert!(
        shown.contains("members in boot order db=d1 → web=d0, 1.0 s apart"),
        "{shown}"
    );
    // Bad edits are refused.
    let err = a.ferry_fails(&["vpg", "edit", "app", "--member", "x=nope"]);
    assert!(err.contains("\"nope\" is not a volume of this VPG"), "{err}");
    let err = a.ferry_fails(&["vpg", "edit", "app", "--member", "x=d0", "--member", "y=d0"]);
    assert!(err.contains("in members \"x\" and \"y\""), "{err}");

    // A test: pre and post per member, in order, the delay between members.
    b.ferry(&["failover", "test", "app"]);
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let heads: Vec<String> = lines
        .iter()
        .map(|l| l.split(" net=").next().unwrap().to_string())
        .collect();
    assert_eq!(
        heads,
        ["pre db test", "post db test", "pre web test", "post web test"],
        "{lines:?}"
    );
    assert!(
        lines[0].contains("net=testnet vols=d1 uris= "),
        "pre: nothing of it served yet: {}",
        lines[0]
    );
    assert!(
        lines[1].contains("uris=d1=nbd://") && lines[1].contains("app@test.d1"),
        "{}",
        lines[1]
    );
    let t = |l: &str| l.rsplit("t=").next().unwrap().parse::<f64>().unwrap();
    assert!(t(&lines[2]) - t(&lines[1]) >= 0.9, "the boot delay: {lines:?}");
    b.ferry(&["failover", "stop", "app", "--result", "pass"]);

    // The plan travels with an edit; a failing pre-script stops the operation and is
    // reported in its steps.
    a.ferry(&["vpg", "edit", "app", "--pre-script", &failing.display().to_string()]);
    assert!(
        wait_for(30, || b
            .ferry(&["replica", "show", "app"])
            .contains("failover plan changed")),
        "the plan reached the recovery site"
    );
    let err = b.ferry_fails(&["failover", "test", "app"]);
    assert!(
        err.contains("the pre-script failed") && err.contains("exited 3"),
        "{err}"
    );
    let report = b.ferry(&["failover", "report", "app"]);
    assert!(
        report.contains("FAIL pre-script") && report.contains("no network for db"),
        "{report}"
    );
    let err = b.ferry_fails(&["failover", "live", "app"]);
    assert!(err.contains("the pre-script failed"), "{err}");
    assert!(live(&b, "app").is_none());
    assert!(
        wait_for(30, || vpg_state(&a, "app") != "fenced"),
        "handed back after the stopped failover"
    );
    // A script that does not exist at the recovery site is refused up front.
    a.ferry(&["vpg", "edit", "app", "--pre-script", "/no/such/script.sh"]);
    assert!(wait_for(30, || {
        let out = run(b.cli().args(["failover", "test", "app"]));
        String::from_utf8_lossy(&out.stderr).contains("\"/no/such/script.sh\" does not exist")
    }));
    // A live failover with the scripts, by the failover network.
    a.ferry(&["vpg", "edit", "app", "--pre-script", &script.display().to_string()]);
    assert!(wait_for(30, || {
        std::fs::remove_file(&log).ok();
        run(b.cli().args(["failover", "live", "app"])).status.success()
    }));
    let lines = std::fs::read_to_string(&log).unwrap();
    assert!(
        lines.contains("pre db live net=prodnet") && lines.contains("post web live"),
        "{lines}"
    );
    b.ferry(&["failover", "rollback", "app"]);
}

#[test]
fn at_a_start_without_its_recovery_site_writes_wait_for_the_epoch_then_go_on_with_an_event() {
    let (mut a, mut b) = protected_pair("lv-hold", "");
    b.stop();
    a.stop();
    a.set_extra_config("[replication]\nconfirm_epoch_s = 1.5\n");
    a.spawn();
    let t = std::time::Instant::now();
    let (ok, text) = try_write(&a.tcp_uri("d0"), "write -P 0x21 0 4k");
    assert!(ok, "{text}");
    assert!(
        t.elapsed().as_secs_f64() >= 1.0,
        "held until the wait ended: {:?}",
        t.elapsed()
    );
    let shown = a.ferry(&["vpg", "show", "app"]);
    assert!(shown.contains("did not confirm epoch 1 within 2 s"), "{shown}");
    qemu_io(a.tcp_uri("d0"), &["write -P 0x22 0 4k", "read -P 0x22 0 4k"]);
    b.spawn();
}
