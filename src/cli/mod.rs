//! The `ferry` command line: argument parsing, logging set-up, and either the agent or a
//! call to a running agent's control API.

mod args;
mod client;
mod failover;
mod journal_tool;
mod local;
mod render;
mod split_brain;

use args::*;
use local::{api_token, man_pages, pair, run_journal};
use render::*;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hyper::Method;
use tokio_util::sync::CancellationToken;

use crate::cli::client::{Client, ClientError};
use ferry_agent::api::{
    AdoptVolume, AgentStatus, CreateVolume, CreateVpg, ExportCheckpoint, ReadJournal, SourcedEvent, TagCheckpoint,
};
use ferry_agent::catalog::CheckpointExport;
use ferry_agent::checkpoint::CheckpointInfo;
use ferry_agent::config::AgentConfig;
use ferry_agent::protect::volumes::VolumeStatus;
use ferry_agent::protect::vpg::{ProtectArgs, TailRecord, VpgStatus};
use ferry_agent::recover::replica::ReplicaStatus;
use ferry_agent::size::utc;
use ferry_agent::size::{human, parse_size};

const DEFAULT_STATE_DIR: &str = "/var/lib/ferry";

// One value per run of the CLI: its size does not matter.

fn init_logging(filter: &str) -> Result<(), String> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| format!("bad --log-level {filter:?}: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    Ok(())
}

fn runtime(worker_threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .enable_all()
        .build()
        .expect("tokio runtime starts")
}

fn run_agent(args: AgentArgs) -> Result<(), String> {
    init_logging(&args.log_level)?;
    let mut cfg = match &args.config {
        Some(p) => AgentConfig::load(p).map_err(|e| e.to_string())?,
        None => AgentConfig::default(),
    };
    match (args.state_dir, &args.config) {
        (Some(d), _) => cfg.state_dir = d,
        (None, None) => cfg.state_dir = PathBuf::from(DEFAULT_STATE_DIR),
        (None, Some(_)) => {}
    }
    if cfg.state_dir.is_relative() {
        cfg.state_dir = std::env::current_dir().map_err(|e| e.to_string())?.join(&cfg.state_dir);
    }
    if let Some(l) = args.replication_listen {
        cfg.replication.listen = l;
    }
    for k in args.pairing_keys {
        let k = std::path::absolute(&k).map_err(|e| format!("{}: {e}", k.display()))?;
        cfg.replication.pairing_keys.push(k);
    }
    if let Some(l) = args.api_listen {
        cfg.api.listen = Some(l);
        cfg.api.check().map_err(|e| format!("--api-listen: {e}"))?;
    }
    runtime(cfg.worker_threads()).block_on(async {
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            tracing::info!("stop signal received");
            s.cancel();
        });
        ferry_agent::daemon::run(cfg, shutdown).await.map_err(|e| e.to_string())
    })
}

/// A progress bar over a VPG's initial or delta sync, until the VPG protects (or fails).
async fn wait_sync(c: &Client, name: &str) -> Result<(), String> {
    use indicatif::{ProgressBar, ProgressStyle};
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    loop {
        let v: VpgStatus = c
            .call(Method::GET, &format!("/v1/vpgs/{name}"), None::<&()>)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("empty answer")?;
        let Some(p) = &v.protection else {
            return Err(format!("VPG {name} is not replicated"));
        };
        if let Some(d) = &p.delta {
            bar.set_message("delta sync");
            bar.set_length(d.total_bytes);
            bar.set_position(d.compared_bytes);
        } else if let Some(done) = p.initial_done_bytes {
            bar.set_message("initial sync");
            bar.set_length(p.initial_total_bytes);
            bar.set_position(done);
        } else if let Some(e) = &p.ship.error {
            bar.abandon();
            return Err(format!("VPG {name}: {e}"));
        } else {
            bar.finish_and_clear();
            println!("VPG {name}: {}", v.state);
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

async fn pause(c: &Client, name: &str, paused: bool) -> Result<(), String> {
    let verb = if paused { "pause" } else { "resume" };
    let v: VpgStatus = c
        .call(Method::POST, &format!("/v1/vpgs/{name}/{verb}"), None::<&()>)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("empty answer")?;
    println!("VPG {}: {verb}d (state {})", v.name, v.state);
    Ok(())
}

/// The agent's status (its listeners, state directory, what it holds).
async fn agent_status(c: &Client) -> Result<AgentStatus, String> {
    c.call(Method::GET, "/v1/status", None::<&()>)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "empty answer".to_string())
}

/// A checkpoint as a line names it: `SEQ (TIME, tag "TAG")`.
fn checkpoint_words(cp: &CheckpointInfo) -> String {
    let tag = if cp.tag.is_empty() {
        String::new()
    } else {
        format!(", tag {:?}", cp.tag)
    };
    format!("{} ({}{tag})", cp.seq, utc(cp.unix_ms))
}

/// The NBD URI of export `name` on the agent that answered `s`: its first TCP listener,
/// else its unix socket.
fn export_uri(s: &AgentStatus, name: &str) -> String {
    match s.nbd_listen.iter().find(|l| l.starts_with("nbd://")) {
        Some(l) => format!("{l}/{name}"),
        None => format!("nbd+unix:///{name}?socket={}", s.state_dir.join("nbd.sock").display()),
    }
}

async fn run_client(control: PathBuf, cmd: Command) -> Result<(), String> {
    let c = Client::new(&control);
    let e = |e: ClientError| e.to_string();
    match cmd {
        Command::Agent(_)
        | Command::Pair { .. }
        | Command::Api(_)
        | Command::Completions { .. }
        | Command::Man { .. }
        | Command::Journal(JournalCmd::Dump { .. } | JournalCmd::Check { .. }) => {
            unreachable!("handled by main")
        }
        Command::Failover(cmd) => failover::run(&c, cmd).await?,
        Command::Journal(JournalCmd::Tail {
            vpg,
            follow,
            ack,
            count,
            quiet,
            json,
        }) => tail(&c, &vpg, follow, ack, count, quiet, json).await?,
        Command::Vpg(VpgCmd::Create {
            name,
            volumes,
            journal_size,
            peer,
            peer_key,
            recovery_datastore,
            priority,
            rpo,
            history,
            history_max_bytes,
            preseeded,
            throttle_rpo,
            wait,
            plan,
        }) => {
            let protect = match (peer, peer_key) {
                (Some(peer), Some(key)) => Some(ProtectArgs {
                    peer,
                    pairing_key: std::path::absolute(&key).map_err(|err| format!("{}: {err}", key.display()))?,
                    recovery_datastore,
                    priority,
                    rpo_s: rpo.as_deref().map(parse_duration_s).transpose()?,
                    history_s: history.as_deref().map(parse_duration_s).transpose()?,
                    history_bytes_max: history_max_bytes.as_deref().map(parse_size).transpose()?,
                    preseeded,
                    throttle_rpo_ms: throttle_rpo.as_deref().map(parse_seconds_ms).transpose()?,
                }),
                (None, None) => None,
                _ => return Err("--peer and --peer-key go together".into()),
            };
            let body = CreateVpg {
                name,
                volumes,
                journal_bytes: journal_size.as_deref().map(parse_size).transpose()?,
                protect,
                plan: plan.edit()?,
            };
            let v: VpgStatus = c
                .call(Method::POST, "/v1/vpgs", Some(&body))
                .await
                .map_err(e)?
                .ok_or("empty answer")?;
            let names: Vec<&str> = v.volumes.iter().map(|m| m.name.as_str()).collect();
            println!(
                "created VPG {} with {} and a {} journal; capturing writes from now on",
                v.name,
                names.join(", "),
                human(v.journal.size_bytes)
            );
            if let Some(p) = &v.protection {
                println!(
                    "replicating to {} (priority {}); {} of {} under way: `ferry vpg show {}` shows its progress",
                    p.settings.peer,
                    p.settings.priority.name(),
                    if p.settings.preseeded {
                        "delta sync"
                    } else {
                        "initial sync"
                    },
                    human(p.initial_total_bytes),
                    v.name
                );
                if wait {
                    wait_sync(&c, &v.name).await?;
                }
            }
        }
        Command::Vpg(VpgCmd::Wait { name }) => wait_sync(&c, &name).await?,
        Command::Events { follow, json } => {
            let mut seen = 0u64;
            loop {
                let evs: Vec<SourcedEvent> = c
                    .call(Method::GET, "/v1/events", None::<&()>)
                    .await
                    .map_err(e)?
                    .unwrap_or_default();
                for ev in evs.iter().filter(|ev| ev.unix_ms > seen) {
                    if json {
                        println!("{}", serde_json::to_string(ev).expect("serialises"));
                    } else {
                        println!("{}  {:<20} {}", utc(ev.unix_ms), ev.source, ev.message);
                    }
                }
                seen = evs.iter().map(|ev| ev.unix_ms).max().unwrap_or(seen).max(seen);
                if !follow {
                    if evs.is_empty() && !json {
                        println!("no events yet");
                    }
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
        Command::Vpg(VpgCmd::Pause { name }) => pause(&c, &name, true).await?,
        Command::Vpg(VpgCmd::Resume { name }) => pause(&c, &name, false).await?,
        Command::Checkpoint(CheckpointCmd::List { vpg, json }) => {
            let cps: Vec<CheckpointInfo> = c
                .call(Method::GET, &format!("/v1/checkpoints/{vpg}"), None::<&()>)
                .await
                .map_err(e)?
                .unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&cps).expect("serialises"));
            } else if cps.is_empty() {
                println!("VPG {vpg} has no checkpoints yet");
            } else {
                println!("{:>12}  {:<27} TAG", "SEQ", "TIME");
                for cp in &cps {
                    let tested = if cp.tested.is_empty() {
                        String::new()
                    } else {
                        format!("  (tested: {})", cp.tested)
                    };
                    println!("{:>12}  {:<27} {}{tested}", cp.seq, utc(cp.unix_ms), cp.tag);
                }
            }
        }
        Command::Checkpoint(CheckpointCmd::Export { vpg, checkpoint }) => {
            let x: CheckpointExport = c
                .call(
                    Method::POST,
                    &format!("/v1/replicas/{vpg}/exports"),
                    Some(&ExportCheckpoint { checkpoint }),
                )
                .await
                .map_err(e)?
                .ok_or("empty answer")?;
            let s = agent_status(&c).await?;
            println!(
                "VPG {} at checkpoint {}, read-only:",
                x.vpg,
                checkpoint_words(&x.checkpoint)
            );
            for (vol, name) in &x.exports {
                println!("  {vol}: {}", export_uri(&s, name));
            }
        }
        Command::Checkpoint(CheckpointCmd::Unexport { vpg }) => {
            let n: usize = c
                .call(Method::DELETE, &format!("/v1/replicas/{vpg}/exports"), None::<&()>)
                .await
                .map_err(e)?
                .unwrap_or(0);
            println!("{n} checkpoint export(s) of {vpg} ended");
        }
        Command::Replica(ReplicaCmd::List { json }) => {
            let rs: Vec<ReplicaStatus> = c
                .call(Method::GET, "/v1/replicas", None::<&()>)
                .await
                .map_err(e)?
                .unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&rs).expect("serialises"));
            } else if rs.is_empty() {
                println!("no replicas here; a protected site's `ferry vpg create --peer` makes one");
            } else {
                for r in &rs {
                    print_replica_line(r);
                }
            }
        }
        Command::Replica(ReplicaCmd::Show { name, json }) => {
            let r: ReplicaStatus = c
                .call(Method::GET, &format!("/v1/replicas/{name}"), None::<&()>)
                .await
                .map_err(e)?
                .ok_or("empty answer")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).expect("serialises"));
            } else {
                print_replica_line(&r);
                println!("  directory: {}", r.dir.display());
                println!("  lineage {}, epoch {}{}", r.lineage, r.epoch, epochs_words(&r.epochs));
                if let Some(p) = &r.peer {
                    println!(
                        "  protected site: {} (pairing key {}), last opened {}",
                        p.address,
                        p.key_fingerprint,
                        utc(p.unix_ms)
                    );
                }
                println!("  volumes: {}", r.volumes.join(", "));
                println!("  replica holds records below seq {}", r.applied_seq);
                println!("  checkpoints: {}", r.checkpoints.len());
                for cp in r.checkpoints.iter().rev().take(10) {
                    println!("    {:>10}  {}  {}", cp.seq, utc(cp.unix_ms), cp.tag);
                }
                println!("  events:");
                for ev in r.events.iter().rev().take(20) {
                    println!("    {}  {}", utc(ev.unix_ms), ev.message);
                }
            }
        }
        Command::Replica(ReplicaCmd::Delete { name, force }) => {
            let path = format!("/v1/replicas/{name}{}", if force { "?force=true" } else { "" });
            c.call::<serde_json::Value>(Method::DELETE, &path, None::<&()>)
                .await
                .map_err(e)?;
            println!("deleted replica {name}, its history and images");
        }
        Command::Vpg(VpgCmd::List { json }) => {
            let vpgs: Vec<VpgStatus> = c
                .call(Method::GET, "/v1/vpgs", None::<&()>)
                .await
                .map_err(e)?
                .unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&vpgs).expect("serialises"));
            } else {
                print_vpgs(&vpgs);
            }
        }
        Command::Vpg(VpgCmd::Show { name, json }) => {
            let v: VpgStatus = c
                .call(Method::GET, &format!("/v1/vpgs/{name}"), None::<&()>)
                .await
                .map_err(e)?
                .ok_or("empty answer")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v).expect("serialises"));
            } else {
                print_vpg(&v);
            }
        }
        Command::Vpg(VpgCmd::Reverse {
            name,
            peer,
            peer_key,
            priority,
            rpo,
            journal_size,
        }) => {
            let req = ferry_agent::failover::ReverseRequest {
                peer,
                pairing_key: std::path::absolute(&peer_key).map_err(|err| format!("{}: {err}", peer_key.display()))?,
                priority,
                rpo_s: rpo.as_deref().map(parse_duration_s).transpose()?,
                journal_bytes: journal_size.as_deref().map(parse_size).transpose()?,
            };
            let v: VpgStatus = c
                .call(Method::POST, &format!("/v1/failover/{name}/reverse"), Some(&req))
                .await
                .map_err(e)?
                .ok_or("empty answer")?;
            println!(
                "VPG {name} is protected from this site to {} now (epoch {}): a delta sync compares the volumes with theirs there and sends only what differs (`ferry vpg wait {name}`)",
                req.peer, v.epoch
            );
        }
        Command::Vpg(VpgCmd::Resolve {
            name,
            keep,
            salvage_max,
            discard,
        }) => split_brain::resolve(&c, &name, &keep, salvage_max.as_deref(), discard).await?,
        Command::Vpg(VpgCmd::Diverged {
            name,
            delete,
            epoch,
            json,
        }) => split_brain::diverged(&c, &name, delete, epoch, json).await?,
        Command::Vpg(VpgCmd::Edit { name, plan }) => {
            let v: VpgStatus = c
                .call(Method::PATCH, &format!("/v1/vpgs/{name}"), Some(&plan.edit()?))
                .await
                .map_err(e)?
                .ok_or("empty answer")?;
            println!("VPG {name}: failover plan changed");
            print_plan(&v.plan, &v.volumes.iter().map(|m| m.name.clone()).collect::<Vec<_>>());
        }
        Command::Vpg(VpgCmd::Delete { name }) => {
            c.call::<serde_json::Value>(Method::DELETE, &format!("/v1/vpgs/{name}"), None::<&()>)
                .await
                .map_err(e)?;
            println!("deleted VPG {name} and its journal; its volumes are no longer captured");
        }
        Command::Checkpoint(CheckpointCmd::Tag { vpg, tag }) => {
            let cp: CheckpointInfo = c
                .call(
                    Method::POST,
                    &format!("/v1/vpgs/{vpg}/checkpoints"),
                    Some(&TagCheckpoint { tag }),
                )
                .await
                .map_err(e)?
                .ok_or("empty answer")?;
            println!("checkpoint {:?} of VPG {vpg} at sequence {}", cp.tag, cp.seq);
        }
        Command::Tasks { vpg, json } => {
            let path = match &vpg {
                Some(v) => format!("/v1/tasks?vpg={v}"),
                None => "/v1/tasks".into(),
            };
            let ts: Vec<ferry_agent::api::tasks::Task> = c
                .call(Method::GET, &path, None::<&()>)
                .await
                .map_err(e)?
                .unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&ts).expect("serialises"));
            } else {
                print_tasks(&ts);
            }
        }
        Command::Alerts { json } => {
            let al: Vec<ferry_agent::api::Alert> = c
                .call(Method::GET, "/v1/alerts", None::<&()>)
                .await
                .map_err(e)?
                .unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&al).expect("serialises"));
            } else if al.is_empty() {
                println!("no alerts");
            } else {
                for a in &al {
                    println!(
                        "{:<8} {:<20} {}",
                        format!("{:?}", a.severity).to_uppercase(),
                        a.source,
                        a.message
                    );
                }
            }
        }
        Command::Status { json } => {
            let s = agent_status(&c).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s).expect("serialises"));
                return Ok(());
            }
            println!("ferry agent {} (state {})", s.version, s.state_dir.display());
            println!("datastore I/O: {}", s.io_engine);
            for l in &s.nbd_listen {
                println!("NBD: {l}");
            }
            if let Some(l) = &s.replication_listen {
                println!("replication: accepting peers on {l}");
            }
            println!("volumes: {}", s.volumes);
            let m = &s.summary;
            println!(
                "protected: {} VPG(s), {} volume(s), {}{}",
                m.vpgs,
                m.volumes_protected,
                human(m.data_protected_bytes),
                m.average_rpo_s
                    .map(|r| format!(", average RPO {r:.1} s"))
                    .unwrap_or_default()
            );
            print_status_vpgs(&s);
        }
        Command::Volume(VolumeCmd::Create {
            name,
            size,
            datastore,
            direct,
        }) => {
            let size_bytes = size.as_deref().map(parse_size).transpose()?;
            let body = CreateVolume {
                name,
                size_bytes,
                datastore,
                direct: direct.then_some(true),
            };
            let v: VolumeStatus = c
                .call(Method::POST, "/v1/volumes", Some(&body))
                .await
                .map_err(e)?
                .ok_or("empty answer")?;
            println!(
                "created volume {} ({}) at {}",
                v.record.name,
                human(v.record.size_bytes),
                v.record.path.display()
            );
        }
        Command::Volume(VolumeCmd::Adopt {
            name,
            path,
            read_only,
            direct,
        }) => {
            let path = std::path::absolute(&path).map_err(|err| format!("{}: {err}", path.display()))?;
            let body = AdoptVolume {
                name,
                path,
                read_only,
                direct: direct.then_some(true),
            };
            let v: VolumeStatus = c
                .call(Method::POST, "/v1/volumes/adopt", Some(&body))
                .await
                .map_err(e)?
                .ok_or("empty answer")?;
            println!(
                "adopted {} as volume {} ({})",
                v.record.path.display(),
                v.record.name,
                human(v.record.size_bytes)
            );
        }
        Command::Volume(VolumeCmd::List { json }) => {
            let vols: Vec<VolumeStatus> = c
                .call(Method::GET, "/v1/volumes", None::<&()>)
                .await
                .map_err(e)?
                .unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&vols).expect("serialises"));
            } else {
                print_volumes(&vols);
            }
        }
        Command::Volume(VolumeCmd::Delete { name, force }) => {
            let path = format!("/v1/volumes/{name}{}", if force { "?force=true" } else { "" });
            c.call::<serde_json::Value>(Method::DELETE, &path, None::<&()>)
                .await
                .map_err(e)?;
            println!("deleted volume {name}");
        }
    }
    Ok(())
}

async fn tail(
    c: &Client,
    vpg: &str,
    follow: bool,
    ack: bool,
    count: Option<usize>,
    quiet: bool,
    json: bool,
) -> Result<(), String> {
    let mut printed = 0usize;
    let mut first = true;
    let batch = if quiet { 100_000 } else { 1000 };
    let mut last_seq = None;
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let want = count.map_or(batch, |n| (n - printed).min(batch));
        if want == 0 {
            break;
        }
        let path = format!("/v1/vpgs/{vpg}/journal/read");
        let body = ReadJournal {
            max: want,
            ack,
            rewind: first,
            last_only: quiet,
        };
        let call = c.call::<Vec<TailRecord>>(Method::POST, &path, Some(&body));
        let recs = tokio::select! {
            r = call => r.map_err(|e| e.to_string())?.unwrap_or_default(),
            _ = &mut stop => break,
        };
        first = false;
        let got = recs.len();
        for r in &recs {
            last_seq = Some(r.seq);
            if quiet {
                continue;
            }
            if json {
                println!("{}", serde_json::to_string(r).expect("serialises"));
                continue;
            }
            match &r.tag {
                Some(tag) => println!("{:>10}  checkpoint    tag {tag:?}  time_ns {}", r.seq, r.offset),
                None => println!(
                    "{:>10}  {:<12}  {:<16} offset {:>12}  length {:>9}  crc {:08x}",
                    r.seq, r.kind, r.volume, r.offset, r.length, r.crc
                ),
            }
        }
        printed += got;
        if got == 0 || quiet {
            if got == 0 && !follow {
                break;
            }
            // A quiet consumer reads (and acknowledges) in batches of at most 50 ms, as a
            // shipper acknowledges what its peer made durable.
            let pause = std::time::Duration::from_millis(if quiet { 50 } else { 200 });
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = &mut stop => break,
            }
        }
    }
    if quiet {
        match last_seq {
            Some(s) => println!("read{} up to sequence {s}", if ack { " and acknowledged" } else { "" }),
            None => println!("no records"),
        }
    }
    Ok(())
}

/// Entry point of the `ferry` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Agent(_)) {
        // A command whose output is cut short (`ferry journal dump F | head`) ends quietly,
        // as other command-line tools do, instead of failing on the closed pipe. (The agent
        // keeps SIGPIPE ignored: its sockets report EPIPE as an error.)
        // SAFETY: restoring a signal's default action before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        Command::Agent(args) => run_agent(args),
        Command::Journal(cmd @ (JournalCmd::Dump { .. } | JournalCmd::Check { .. })) => run_journal(cmd),
        Command::Pair { path, force } => pair(&path, force),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "ferry",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man { dir } => man_pages(&dir),
        Command::Api(ApiCmd::Token { file, print }) => {
            let control = cli.control.clone();
            api_token(
                file.unwrap_or_else(|| {
                    control
                        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR).join("control.sock"))
                        .with_file_name("api.token")
                }),
                print,
            )
        }
        cmd => {
            let control = cli
                .control
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR).join("control.sock"));
            runtime(1).block_on(run_client(control, cmd))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("ferry: {msg}");
            ExitCode::FAILURE
        }
    }
}
