//! The `ferry` command line: argument parsing, logging set-up, and either the agent or a
//! call to a running agent's control API.

mod client;
mod journal_tool;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
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

#[derive(Parser, Debug)]
#[command(name = "ferry", version, about = "ferry: disaster-recovery block replication agent")]
struct Cli {
    /// The agent's control socket (default: $FERRY_CONTROL, else /var/lib/ferry/control.sock).
    #[arg(long, global = true, env = "FERRY_CONTROL")]
    control: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent (serves volumes over NBD; controlled through its socket).
    Agent(AgentArgs),
    /// Create, adopt, list and delete volumes on a running agent.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Show the agent's status.
    Status,
    /// Read a journal ring file (dump, check: no agent needed) or a VPG's live journal (tail).
    #[command(subcommand)]
    Journal(JournalCmd),
    /// Create, list, show and delete VPGs (virtual protection groups).
    #[command(subcommand)]
    Vpg(VpgCmd),
    /// Tag, list and export checkpoints.
    #[command(subcommand)]
    Checkpoint(CheckpointCmd),
    /// Replicas held for peers (on the recovery site).
    #[command(subcommand)]
    Replica(ReplicaCmd),
    /// The event log: state changes and alerts of every VPG and replica, oldest first.
    Events {
        /// Keep printing new events (stop with Ctrl-C).
        #[arg(long, short)]
        follow: bool,
    },
    /// Make a pairing key for two agents (copy the file to the peer; no agent needed).
    Pair {
        /// Where to write the key (mode 0600).
        path: PathBuf,
        /// Replace an existing key file (the peer then needs the new key too).
        #[arg(long)]
        force: bool,
    },
}

// One value per run of the CLI: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum VpgCmd {
    /// Group volumes into a VPG: from now on their writes are captured into its journal.
    Create {
        name: String,
        /// A member volume (repeat for more); a volume belongs to at most one VPG.
        #[arg(long = "volume", required = true)]
        volumes: Vec<String>,
        /// Journal ring size, e.g. 1G (default: the agent's journal.size).
        #[arg(long)]
        journal_size: Option<String>,
        /// Replicate to the recovery-site agent at HOST:PORT (its replication address).
        #[arg(long, requires = "peer_key")]
        peer: Option<String>,
        /// The pairing key file shared with that agent (`ferry pair`).
        #[arg(long)]
        peer_key: Option<PathBuf>,
        /// The recovery site's datastore for the replica (default: its first).
        #[arg(long, requires = "peer")]
        recovery_datastore: Option<String>,
        /// Share of the link under congestion: high, medium or low.
        #[arg(long, requires = "peer")]
        priority: Option<String>,
        /// RPO alert threshold, e.g. 30s, 5m (default 5m).
        #[arg(long, requires = "peer")]
        rpo: Option<String>,
        /// History kept at the recovery site, e.g. 1h, 1d (default 1h).
        #[arg(long, requires = "peer")]
        history: Option<String>,
        /// History hard limit at the recovery site, e.g. 100G (default 16G).
        #[arg(long, requires = "peer")]
        history_max_bytes: Option<String>,
        /// The recovery site already holds a copy of the volumes (DATASTORE/replicas/VPG/
        /// VOLUME.img there): compare checksums of regions and send only differences.
        #[arg(long, requires = "peer")]
        preseeded: bool,
        /// Slow writers down (hold their replies) while the actual RPO is above this and
        /// the link is up, e.g. 2s or 1.5s, so the recovery site never falls further behind
        /// (default: never; writes go at full speed and the RPO grows if the link cannot
        /// keep up).
        #[arg(long, requires = "peer")]
        throttle_rpo: Option<String>,
        /// Stay and show the initial (or delta) sync's progress until it is done.
        #[arg(long, requires = "peer")]
        wait: bool,
    },
    /// Show a protected VPG's initial or delta sync as a progress bar until it is done.
    Wait { name: String },
    /// Stop shipping a protected VPG (capture goes on; a full journal turns to dirty tracking).
    Pause { name: String },
    /// Ship a paused VPG again.
    Resume { name: String },
    /// List VPGs.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a VPG: state, journal use, dirty regions, checkpoints and events.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a VPG and its journal (the volumes stay, no longer captured).
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
enum CheckpointCmd {
    /// Add a checkpoint with a name to a VPG's stream, now (on the protected site; the tag
    /// travels to the recovery site in the stream).
    Tag { vpg: String, tag: String },
    /// List a VPG's checkpoints: on the recovery site, those its history holds.
    List {
        vpg: String,
        #[arg(long)]
        json: bool,
    },
    /// Serve every volume of a replica as it was at a checkpoint, read-only over NBD (on
    /// the recovery site); prints the NBD URIs.
    Export {
        vpg: String,
        /// A sequence number, a tag, or latest.
        #[arg(long, default_value = "latest")]
        checkpoint: String,
    },
    /// Stop serving a replica's checkpoint exports (open connections keep theirs).
    Unexport { vpg: String },
}

#[derive(Subcommand, Debug)]
enum ReplicaCmd {
    /// The replicas this agent holds as a recovery site.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One replica: history, checkpoints, events.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a replica, its history and images (deleting the VPG on the protected site
    /// does this when the sites are connected). The protected site is refused this VPG
    /// from then on: to protect it again, delete and re-create it there.
    Delete {
        name: String,
        /// Delete even while the protected site is replicating to it: its stream ends and
        /// it shows the VPG in error.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum JournalCmd {
    /// Print the superblocks, cursors and every unacknowledged record.
    Dump { path: PathBuf },
    /// Verify every checksum and the cursors; exit 1 on damage.
    Check { path: PathBuf },
    /// Print a VPG's captured records from its running agent, as the shipper will read them.
    Tail {
        vpg: String,
        /// Keep printing records as they are captured (stop with Ctrl-C).
        #[arg(long, short)]
        follow: bool,
        /// Acknowledge what is printed: its journal space is freed (what the shipper does).
        #[arg(long)]
        ack: bool,
        /// Stop after this many records.
        #[arg(long, short = 'n')]
        count: Option<usize>,
        /// Print nothing per record, only the sequence reached when stopped (a stand-in
        /// consumer, e.g. for benchmarks).
        #[arg(long, short)]
        quiet: bool,
    },
}

fn run_journal(cmd: JournalCmd) -> Result<(), String> {
    let (path, records) = match &cmd {
        JournalCmd::Dump { path } => (path, true),
        JournalCmd::Check { path } => (path, false),
        JournalCmd::Tail { .. } => unreachable!("tail asks the agent"),
    };
    let report = crate::cli::journal_tool::inspect(path, records)?;
    print!("{}", report.text);
    if !report.clean {
        return Err(format!("journal {} is damaged (see above)", path.display()));
    }
    if let JournalCmd::Check { .. } = cmd {
        println!("journal {}: ok", path.display());
    }
    Ok(())
}

#[derive(Args, Debug)]
struct AgentArgs {
    /// State directory: volumes.json, sockets, and the default datastore.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Config file (TOML); every key is optional.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive list.
    #[arg(long, env = "FERRY_LOG", default_value = "info")]
    log_level: String,
    /// Accept peers as a recovery site on HOST:PORT (replication.listen).
    #[arg(long)]
    replication_listen: Option<String>,
    /// A pairing key file whose holder may replicate here (repeat for more peers).
    #[arg(long = "pairing-key")]
    pairing_keys: Vec<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum VolumeCmd {
    /// Create a volume on a datastore.
    Create {
        name: String,
        /// Size, e.g. 10G or 512M (binary units). Optional on a block-device datastore.
        #[arg(long)]
        size: Option<String>,
        #[arg(long)]
        datastore: Option<String>,
        /// Use O_DIRECT for this volume's datastore I/O.
        #[arg(long)]
        direct: bool,
    },
    /// Serve an existing file or block device as a volume (delete keeps the data).
    Adopt {
        name: String,
        path: PathBuf,
        #[arg(long)]
        read_only: bool,
        #[arg(long)]
        direct: bool,
    },
    /// List volumes.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a volume and, unless adopted, its data.
    Delete {
        name: String,
        /// Delete even while NBD clients are connected.
        #[arg(long)]
        force: bool,
    },
}

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

/// "30s", "5m", "1h", "2d", or plain seconds.
fn parse_duration_s(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 5m, 1h or 2d"))?;
    let mul = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(mul).ok_or_else(|| format!("{text:?} is too long"))
}

/// "1.5s", "2", "500ms" -> milliseconds.
fn parse_seconds_ms(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, mul) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else {
        (t.strip_suffix('s').unwrap_or(t), 1000.0)
    };
    match num.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 && n * mul < 1e12 => Ok((n * mul).round() as u64),
        _ => Err(format!("{text:?} is not a positive time like 2s, 1.5s or 500ms")),
    }
}

fn rate(bps: f64) -> String {
    format!("{}/s", human(bps as u64))
}

fn print_status_vpgs(s: &AgentStatus) {
    if s.vpgs.is_empty() {
        println!("VPGs: none");
    } else {
        println!("VPGs: {}", s.vpgs.len());
        for v in &s.vpgs {
            let mut line = format!("  {}: {}", v.name, v.state);
            if let Some((done, total)) = v.initial {
                line += &format!(
                    ", initial sync {} of {} ({:.0}%)",
                    human(done),
                    human(total),
                    done as f64 * 100.0 / total.max(1) as f64
                );
            }
            if let (Some(rpo), Some(target)) = (v.rpo_s, v.rpo_target_s) {
                line += &format!(", RPO {rpo:.1} s (target {target} s)");
            }
            line += &format!(", journal {:.1}% full", v.journal_fill_percent);
            if v.dirty_bytes > 0 {
                line += &format!(", {} dirty", human(v.dirty_bytes));
            }
            if let Some(t) = v.throughput_bytes_per_s {
                line += &format!(", {}", rate(t));
            }
            println!("{line}");
            if let (Some(peer), Some(link)) = (&v.peer, &v.link) {
                println!(
                    "      to {peer} (priority {}): {link}",
                    v.priority.as_deref().unwrap_or("?")
                );
            }
        }
    }
    for l in &s.links {
        println!(
            "link to {}: {} ({} sent, {} received, {} connection(s); VPGs {})",
            l.peer,
            l.state,
            human(l.sent_bytes),
            human(l.received_bytes),
            l.connects,
            l.vpgs.join(", ")
        );
    }
    if s.replicas_loading {
        println!("replicas: loading their history after the start (exports and peers wait)");
    }
    if !s.replicas.is_empty() {
        println!("replicas held here: {}", s.replicas.len());
        for r in &s.replicas {
            print_replica_line(r);
        }
    }
}

fn print_replica_line(r: &ReplicaStatus) {
    let now = ferry_agent::clock::now_ms();
    let span = r.oldest_point_ms.map_or(0, |o| now.saturating_sub(o) / 1000);
    let last = match r.last_received_ms {
        0 => "nothing received yet".to_string(),
        t => format!("last batch {:.1} s ago", now.saturating_sub(t) as f64 / 1000.0),
    };
    println!(
        "  {}: durable to seq {}, history {} of {} ({} s, window {} s), {} checkpoint(s), {last}",
        r.name,
        r.durable_seq,
        human(r.history_bytes),
        human(r.history_bytes_max),
        span,
        r.history_secs,
        r.checkpoints.len()
    );
}

fn print_volumes(vols: &[VolumeStatus]) {
    if vols.is_empty() {
        println!("no volumes; create one with `ferry volume create NAME --size 10G`");
        return;
    }
    println!(
        "{:<24} {:>10} {:<12} {:<8} {:<6} PATH",
        "NAME", "SIZE", "DATASTORE", "STATE", "IN USE"
    );
    for v in vols {
        let r = &v.record;
        let mut state = v.state.clone();
        if r.read_only {
            state.push_str(" (ro)");
        }
        println!(
            "{:<24} {:>10} {:<12} {:<8} {:<6} {}",
            r.name,
            human(r.size_bytes),
            r.datastore,
            state,
            if v.in_use { "yes" } else { "no" },
            r.path.display()
        );
    }
}

async fn run_client(control: PathBuf, cmd: Command) -> Result<(), String> {
    let c = Client::new(&control);
    let e = |e: ClientError| e.to_string();
    match cmd {
        Command::Agent(_)
        | Command::Pair { .. }
        | Command::Journal(JournalCmd::Dump { .. } | JournalCmd::Check { .. }) => {
            unreachable!("handled by main")
        }
        Command::Journal(JournalCmd::Tail {
            vpg,
            follow,
            ack,
            count,
            quiet,
        }) => tail(&c, &vpg, follow, ack, count, quiet).await?,
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
        Command::Events { follow } => {
            let mut seen = 0u64;
            loop {
                let evs: Vec<SourcedEvent> = c
                    .call(Method::GET, "/v1/events", None::<&()>)
                    .await
                    .map_err(e)?
                    .unwrap_or_default();
                for ev in evs.iter().filter(|ev| ev.unix_ms > seen) {
                    println!("{}  {:<20} {}", utc(ev.unix_ms), ev.source, ev.message);
                }
                seen = evs.iter().map(|ev| ev.unix_ms).max().unwrap_or(seen).max(seen);
                if !follow {
                    if evs.is_empty() {
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
                    println!("{:>12}  {:<27} {}", cp.seq, utc(cp.unix_ms), cp.tag);
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
            let s: AgentStatus = c
                .call(Method::GET, "/v1/status", None::<&()>)
                .await
                .map_err(e)?
                .ok_or("empty answer")?;
            let cp = &x.checkpoint;
            println!(
                "VPG {} at checkpoint {} ({}{}), read-only:",
                x.vpg,
                cp.seq,
                utc(cp.unix_ms),
                if cp.tag.is_empty() {
                    String::new()
                } else {
                    format!(", tag {:?}", cp.tag)
                }
            );
            for (vol, name) in &x.exports {
                let uri = match s.nbd_listen.iter().find(|l| l.starts_with("nbd://")) {
                    Some(l) => format!("{l}/{name}"),
                    None => format!("nbd+unix:///{name}?socket={}", s.state_dir.join("nbd.sock").display()),
                };
                println!("  {vol}: {uri}");
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
        Command::Status => {
            let s: AgentStatus = c
                .call(Method::GET, "/v1/status", None::<&()>)
                .await
                .map_err(e)?
                .ok_or("empty answer")?;
            println!("ferry agent {} (state {})", s.version, s.state_dir.display());
            println!("datastore I/O: {}", s.io_engine);
            for l in &s.nbd_listen {
                println!("NBD: {l}");
            }
            if let Some(l) = &s.replication_listen {
                println!("replication: accepting peers on {l}");
            }
            println!("volumes: {}", s.volumes);
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

fn print_vpgs(vpgs: &[VpgStatus]) {
    if vpgs.is_empty() {
        println!("no VPGs; create one with `ferry vpg create NAME --volume VOLUME`");
        return;
    }
    println!(
        "{:<20} {:<26} {:>8} {:>12} {:>10} VOLUMES",
        "NAME", "STATE", "JOURNAL", "RECORDS", "DIRTY"
    );
    for v in vpgs {
        let names: Vec<&str> = v.volumes.iter().map(|m| m.name.as_str()).collect();
        let dirty: u64 = v.volumes.iter().map(|m| m.dirty_bytes).sum();
        println!(
            "{:<20} {:<26} {:>7.1}% {:>12} {:>10} {}",
            v.name,
            v.state,
            v.journal.fill_percent,
            v.journal.records,
            human(dirty),
            names.join(",")
        );
    }
}

fn print_vpg(v: &VpgStatus) {
    let j = &v.journal;
    println!("VPG {}: {}", v.name, v.state);
    println!(
        "journal {}: {} of {} used ({:.1}%), {} unacknowledged records (sequence {}..{}, settled to {})",
        j.path.display(),
        human(j.used_bytes),
        human(j.size_bytes),
        j.fill_percent,
        j.records,
        j.acked_seq,
        j.next_seq,
        j.settled_seq
    );
    if let Some(p) = &v.protection {
        let st = &p.settings;
        println!(
            "replicated to {} (priority {}{}): {}",
            st.peer,
            st.priority.name(),
            if st.paused { ", paused" } else { "" },
            p.ship.error.as_deref().unwrap_or(&p.ship.link)
        );
        println!(
            "RPO {:.1} s (target {} s, {}); recovery site durable below sequence {}; {} acknowledged, {}",
            p.rpo_s,
            st.rpo_s,
            if p.meeting_sla { "met" } else { "NOT met" },
            p.ship.acked_seq,
            human(p.ship.acked_bytes),
            rate(p.ship.rate_bytes_per_s)
        );
        if st.throttle_rpo_ms > 0 {
            println!(
                "writes throttled while the RPO is above {:.1} s: held {:.1} s in all (summed over writes) since the agent started",
                st.throttle_rpo_ms as f64 / 1000.0,
                p.throttle_held_ms as f64 / 1000.0
            );
        }
        println!(
            "history at the recovery site: {} s window, {} hard limit{}",
            st.history_s,
            human(st.history_bytes_max),
            if st.recovery_datastore.is_empty() {
                String::new()
            } else {
                format!(", datastore {}", st.recovery_datastore)
            }
        );
        if let Some(d) = &p.delta {
            println!(
                "delta sync: {} of {} compared with the pre-seeded replica, {} differ",
                human(d.compared_bytes),
                human(d.total_bytes),
                human(d.differing_bytes)
            );
        }
        if let Some(done) = p.initial_done_bytes {
            println!(
                "initial sync: {} of {} read ({:.0}%){}",
                human(done),
                human(p.initial_total_bytes),
                done as f64 * 100.0 / p.initial_total_bytes.max(1) as f64,
                match (p.initial_rate_bytes_per_s, p.initial_eta_s) {
                    (Some(r), Some(eta)) => format!(", {}, about {eta:.0} s left", rate(r)),
                    _ => String::new(),
                }
            );
        }
    }
    println!("volumes:");
    for m in &v.volumes {
        println!(
            "  {:>3} {:<24} {:<10} dirty {}",
            m.id,
            m.name,
            if m.attached { "captured" } else { "OFFLINE" },
            human(m.dirty_bytes)
        );
    }
    match &v.last_checkpoint {
        Some(c) => println!(
            "last checkpoint: sequence {} at {}{}",
            c.seq,
            utc(c.unix_ms),
            if c.tag.is_empty() {
                String::new()
            } else {
                format!(", tag {:?}", c.tag)
            }
        ),
        None => println!("no checkpoint yet"),
    }
    let tagged: Vec<&CheckpointInfo> = v.checkpoints.iter().filter(|c| !c.tag.is_empty()).collect();
    for c in tagged {
        println!("  tagged {:?} at sequence {} ({})", c.tag, c.seq, utc(c.unix_ms));
    }
    if !v.events.is_empty() {
        println!("events:");
        for e in v.events.iter().rev().take(20).rev() {
            println!("  {}  {}", utc(e.unix_ms), e.message);
        }
    }
}

async fn tail(c: &Client, vpg: &str, follow: bool, ack: bool, count: Option<usize>, quiet: bool) -> Result<(), String> {
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
/// `ferry pair`: a new pairing key in a 0600 file, and what to do with it.
fn pair(path: &std::path::Path, force: bool) -> Result<(), String> {
    use ferry_proto::pairing;
    let key = pairing::new_key().map_err(|e| e.to_string())?;
    pairing::write_key(path, &key, force).map_err(|e| e.to_string())?;
    println!(
        "wrote a new pairing key to {} (mode 0600)\n\
         copy it to the peer host (e.g. scp {} PEER:/etc/ferry/): both agents need the same key;\n\
         whoever holds it can replicate to or from this agent: keep it private",
        path.display(),
        path.display()
    );
    Ok(())
}

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
