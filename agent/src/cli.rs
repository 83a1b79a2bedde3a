//! The `ferry` command line: argument parsing, logging set-up, and either the agent or a
//! call to a running agent's control API.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use hyper::Method;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientError};
use crate::config::AgentConfig;
use crate::control::{AdoptVolume, AgentStatus, CreateVolume};
use crate::size::{human, parse_size};
use crate::volume::VolumeStatus;

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
    /// Read a journal ring file directly (no agent needed).
    #[command(subcommand)]
    Journal(JournalCmd),
}

#[derive(Subcommand, Debug)]
enum JournalCmd {
    /// Print the superblocks, cursors and every unacknowledged record.
    Dump { path: PathBuf },
    /// Verify every checksum and the cursors; exit 1 on damage.
    Check { path: PathBuf },
}

fn run_journal(cmd: JournalCmd) -> Result<(), String> {
    let (path, records) = match &cmd {
        JournalCmd::Dump { path } => (path, true),
        JournalCmd::Check { path } => (path, false),
    };
    let report = crate::journal_tool::inspect(path, records)?;
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
        crate::daemon::run(cfg, shutdown).await.map_err(|e| e.to_string())
    })
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
        Command::Agent(_) | Command::Journal(_) => unreachable!("handled by main"),
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
            println!("volumes: {}", s.volumes);
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

/// Entry point of the `ferry` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Agent(args) => run_agent(args),
        Command::Journal(cmd) => run_journal(cmd),
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
