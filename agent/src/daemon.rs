//! `ferry agent`: sets up the state directory, the I/O engine, the volumes, the NBD
//! listeners (configured, or inherited through socket activation) and the control API, then
//! serves until `shutdown` fires.
//!
//! Shutdown, in order: listeners stop accepting; each connection finishes its in-flight
//! requests (failing those still running after `limits.shutdown_grace_ms` with
//! ESHUTDOWN) and closes; every volume is fdatasync'd; the sockets are removed.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_nbd::ServerConfig;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::activation::{self, Inherited};
use crate::admission::{self, AcceptBackoff, FD_RESERVE, Gate, GateLimits};
use crate::api::{self, AgentStatus};
use crate::catalog::Exports;
use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::io::{BufPool, Engine};
use crate::protect::volumes::{Volumes, VolumesConfig};
use crate::protect::vpg::Vpgs;
use crate::recover::replicas::Replicas;
use crate::replication::receiver;
use crate::replication::shipper::Shipping;

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Holds the state directory's lock for the agent's lifetime.
struct StateLock(#[allow(dead_code)] std::fs::File);

fn lock_state_dir(dir: &Path) -> Result<StateLock, AgentError> {
    std::fs::create_dir_all(dir).map_err(|e| AgentError::io("cannot create state directory", dir, e))?;
    let path = dir.join("agent.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| AgentError::io("cannot open", &path, e))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(|_| AgentError::StateDirBusy(dir.to_path_buf()))?;
    Ok(StateLock(f))
}

/// Binds a unix socket, replacing a stale socket file left by a crashed agent (the state
/// lock proves no live agent owns it).
fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, AgentError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(AgentError::io(
                "refusing to replace non-socket",
                path,
                std::io::Error::other("file exists"),
            ));
        }
        let _ = std::fs::remove_file(path);
    }
    let l = UnixListener::bind(path).map_err(|source| AgentError::Listen {
        addr: path.display().to_string(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| AgentError::io("cannot chmod", path, e))?;
    Ok(l)
}

/// The NBD listeners, their names for logs and status, and whether we bound the unix socket.
fn listeners(cfg: &AgentConfig) -> Result<(Vec<Listener>, Vec<String>, bool), AgentError> {
    let inherited = activation::take_listeners().map_err(|why| AgentError::Config {
        path: "LISTEN_FDS".into(),
        why,
    })?;
    let mut out = Vec::new();
    let mut names = Vec::new();
    if !inherited.is_empty() {
        for l in inherited {
            match l {
                Inherited::Tcp(t) => {
                    t.set_nonblocking(true)
                        .map_err(|e| AgentError::io("cannot set up", "inherited socket", e))?;
                    names.push(format!(
                        "{} (socket activation)",
                        t.local_addr().map(|a| a.to_string()).unwrap_or_default()
                    ));
                    out.push(Listener::Tcp(
                        TcpListener::from_std(t).map_err(|e| AgentError::io("cannot use", "inherited socket", e))?,
                    ));
                }
                Inherited::Unix(u) => {
                    u.set_nonblocking(true)
                        .map_err(|e| AgentError::io("cannot set up", "inherited socket", e))?;
                    names.push("unix socket (socket activation)".into());
                    out.push(Listener::Unix(
                        UnixListener::from_std(u).map_err(|e| AgentError::io("cannot use", "inherited socket", e))?,
                    ));
                }
            }
        }
        return Ok((out, names, false));
    }
    for addr in &cfg.nbd.listen {
        let sa: SocketAddr = addr.parse().map_err(|e| AgentError::Config {
            path: "nbd.listen".into(),
            why: format!("{addr:?} is not an address:port ({e})"),
        })?;
        if !sa.ip().is_loopback() {
            warn!(%addr, "NBD listens off loopback: NBD traffic is not encrypted; restrict access with a firewall");
        }
        let std = std::net::TcpListener::bind(sa).map_err(|source| AgentError::Listen {
            addr: addr.clone(),
            source,
        })?;
        std.set_nonblocking(true).map_err(|source| AgentError::Listen {
            addr: addr.clone(),
            source,
        })?;
        names.push(format!(
            "nbd://{}",
            std.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| addr.clone())
        ));
        out.push(Listener::Tcp(TcpListener::from_std(std).map_err(|source| {
            AgentError::Listen {
                addr: addr.clone(),
                source,
            }
        })?));
    }
    if let Some(path) = cfg.nbd_socket() {
        out.push(Listener::Unix(bind_unix(&path, 0o660)?));
        names.push(format!("nbd+unix:///NAME?socket={}", path.display()));
    }
    let bound_socket = cfg.nbd_socket().is_some();
    Ok((out, names, bound_socket))
}

/// What every NBD accept loop shares: where connections wait to be trusted, and the
/// places of established ones.
#[derive(Clone)]
struct Admission {
    negotiating: Arc<Gate>,
    established: Arc<Semaphore>,
    connections_max: usize,
    refused: Arc<crate::events::RateLimitedLog>,
}

async fn accept_loop(
    listener: Listener,
    volumes: Arc<Exports>,
    server: Arc<ServerConfig>,
    admission: Admission,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = async {
                match &listener {
                    Listener::Tcp(t) => t.accept().await.map(|(s, peer)| {
                        let _ = s.set_nodelay(true);
                        (Conn::Tcp(s), peer.to_string(), peer.ip().to_string())
                    }),
                    Listener::Unix(u) => u.accept().await.map(|(s, _)| {
                        let source = admission::unix_source(&s);
                        (Conn::Unix(s), "unix".to_string(), source)
                    }),
                }
            } => a,
        };
        let (conn, peer, source) = match accepted {
            Ok(c) => {
                backoff.succeeded();
                c
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning, log at a bounded rate.
                let wait = backoff.failed("NBD", &e);
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        // Dropping the connection refuses it; the gate logged why.
        let Some(pass) = admission.negotiating.enter(&source) else {
            continue;
        };
        let (volumes, server, shutdown, admission) =
            (volumes.clone(), server.clone(), shutdown.clone(), admission.clone());
        tracker.spawn(async move {
            let peer2 = peer.clone();
            // Negotiation over: the connection leaves the gate for an established place.
            let admit = move || {
                drop(pass);
                admission.established.clone().try_acquire_owned().map_err(|_| {
                    if let Some(suppressed) = admission.refused.admit() {
                        warn!(peer = %peer2, suppressed, "connection refused: limits.connections_max ({}) reached", admission.connections_max);
                    }
                    format!(
                        "this agent serves its limit of {} connections (limits.connections_max); try again later",
                        admission.connections_max
                    )
                })
            };
            let r = match conn {
                Conn::Tcp(s) => ferry_nbd::serve_admitted(s, &peer, volumes, server, shutdown, admit).await,
                Conn::Unix(s) => ferry_nbd::serve_admitted(s, &peer, volumes, server, shutdown, admit).await,
            };
            if let Err(e) = r {
                warn!(%peer, error = %e, "connection dropped");
            }
        });
    }
}

/// Every few seconds, frees the pooled buffers if none was taken meanwhile, and hands the
/// allocator's free memory back to the system: memory returns near its baseline after a
/// burst of clients.
async fn trim_idle_memory(pool: Arc<BufPool>, shutdown: CancellationToken) {
    let mut seen = u64::MAX;
    let mut trimmed = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let (now, freed) = pool.trim_if_idle(seen);
        let idle = now == seen;
        seen = now;
        if idle && (freed > 0 || !trimmed) {
            // SAFETY: malloc_trim only returns free heap memory to the kernel.
            unsafe { libc::malloc_trim(0) };
            trimmed = true;
        } else if !idle {
            trimmed = false;
        }
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// Raises the descriptor limit, and lowers the connection limits where they would not
/// leave [`FD_RESERVE`] descriptors for the agent's own files, the control socket and its
/// paired peers (with a warning that says what to change).
fn fit_fd_budget(cfg: &mut AgentConfig) {
    let nofile = admission::raise_fd_limit();
    let l = &mut cfg.limits;
    let wanted = (l.connections_max + l.negotiating_max + l.peer_handshakes_max) as u64 + FD_RESERVE;
    if wanted <= nofile {
        return;
    }
    let room = nofile.saturating_sub(FD_RESERVE) as usize;
    let before = (l.connections_max, l.negotiating_max, l.peer_handshakes_max);
    // Waiting connections get an eighth each of what is left, established ones the rest.
    l.negotiating_max = l.negotiating_max.min(room / 8).max(1);
    l.peer_handshakes_max = l.peer_handshakes_max.min(room / 8).max(1);
    l.connections_max = l
        .connections_max
        .min(room.saturating_sub(l.negotiating_max + l.peer_handshakes_max))
        .max(1);
    l.negotiating_per_source_max = l.negotiating_per_source_max.min(l.negotiating_max);
    l.peer_handshakes_per_source_max = l.peer_handshakes_per_source_max.min(l.peer_handshakes_max);
    warn!(
        nofile,
        reserve = FD_RESERVE,
        "the descriptor limit (ulimit -n, LimitNOFILE=) cannot hold limits.connections_max + negotiating_max + peer_handshakes_max ({} + {} + {}) and a reserve: lowered to {} + {} + {}; raise the limit to serve more",
        before.0,
        before.1,
        before.2,
        l.connections_max,
        l.negotiating_max,
        l.peer_handshakes_max
    );
}

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    let _lock = lock_state_dir(&cfg.state_dir)?;
    let mut cfg = cfg;
    fit_fd_budget(&mut cfg);
    let engine = Arc::new(Engine::start(cfg.io.engine, cfg.io.uring_entries).map_err(AgentError::Engine)?);
    let pool = BufPool::new(cfg.limits.buffer_pool_bytes_max);
    let volumes = Arc::new(Volumes::load(
        VolumesConfig {
            state_dir: cfg.state_dir.clone(),
            datastores: cfg.datastores(),
            direct_default: cfg.io.direct,
            default_export: cfg.nbd.default_export.clone(),
            inline_write_bytes_max: cfg.io.inline_write_bytes_max,
        },
        engine.clone(),
        pool.clone(),
    )?);
    let capture_cfg = cfg.journal.capture().map_err(|why| AgentError::Config {
        path: "[journal]".into(),
        why,
    })?;
    let replication = cfg.replication.parsed().map_err(|why| AgentError::Config {
        path: "[replication]".into(),
        why,
    })?;
    crate::recover::replica::set_history_tuning(replication.history_segment, replication.history_index_cache);
    let mut capture_cfg = capture_cfg;
    if !(0.0..=600.0).contains(&cfg.replication.confirm_epoch_s) {
        return Err(AgentError::Config {
            path: "[replication]".into(),
            why: "replication.confirm_epoch_s must be from 0 to 600".into(),
        });
    }
    capture_cfg.confirm_epoch = std::time::Duration::from_secs_f64(cfg.replication.confirm_epoch_s);
    let vpgs = Vpgs::load(
        &cfg.state_dir,
        volumes.clone(),
        engine.clone(),
        pool.clone(),
        capture_cfg,
    )?;
    let replicas = Replicas::new(cfg.datastores());
    let exports = Exports::new(
        volumes.clone(),
        replicas.clone(),
        pool.clone(),
        crate::diverged::Diverged::at(&cfg.state_dir),
    );
    let receiver = match cfg.replication.listen.as_str() {
        "" => None,
        addr => {
            let mut keys = Vec::new();
            for p in &cfg.replication.pairing_keys {
                let p = cfg.resolve(p);
                keys.push(ferry_proto::pairing::read_key(&p).map_err(|e| AgentError::Config {
                    path: p.clone(),
                    why: e.to_string(),
                })?);
            }
            if keys.is_empty() {
                return Err(AgentError::Config {
                    path: "[replication]".into(),
                    why: "replication.listen is set but no replication.pairing_keys (or --pairing-key) name the keys of the peers it accepts".into(),
                });
            }
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::Listen {
                    addr: addr.into(),
                    source,
                })?;
            let bound = l.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| addr.into());
            Some((l, bound, keys))
        }
    };
    // Replicas are loaded (their history indexed) off the start-up path; peers are
    // accepted and history aged once they are. Until then connections wait in the backlog.
    let handshakes = (
        cfg.limits.peer_handshakes_max,
        cfg.limits.peer_handshakes_per_source_max,
    );
    let bound = receiver.as_ref().map(|(_, bound, _)| bound.clone());
    {
        let (replicas, shutdown, vpgs) = (replicas.clone(), shutdown.clone(), vpgs.clone());
        tokio::spawn(async move {
            let r = replicas.clone();
            if tokio::task::spawn_blocking(move || r.load_all()).await.is_err() {
                error!("loading the replicas failed");
            }
            tokio::spawn(replicas.clone().run_aging(shutdown.clone()));
            if let Some((l, bound, keys)) = receiver {
                info!(listen = %bound, peers = keys.len(), "replication receiver ready");
                let gate = Gate::new(
                    "replication handshakes",
                    GateLimits {
                        total_max: handshakes.0,
                        per_source_max: handshakes.1,
                    },
                );
                receiver::run(l, Arc::new(keys), replicas, vpgs, gate, shutdown).await;
            }
        });
    }
    let shipping = Shipping::new(vpgs.clone(), replication, shutdown.clone());
    // Shipping (building, sealing and sending batches) runs on a thread of its own, so the
    // connection threads serving NBD requests never wait behind a batch being sealed.
    let ship = shipping.clone();
    let ship_thread = std::thread::Builder::new()
        .name("ferry-ship".into())
        .spawn(
            move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(ship.run()),
                Err(e) => error!(error = %e, "cannot start the shipping thread: nothing will be replicated"),
            },
        )
        .map_err(|e| AgentError::io("cannot start the shipping thread for", &cfg.state_dir, e))?;
    let (nbd, names, bound_socket) = listeners(&cfg)?;
    let control_path = cfg.control_socket();
    let control = bind_unix(&control_path, 0o600)?;
    let api_bound = api::serve::bind_tcp(&cfg).await?;
    let status = AgentStatus {
        api_listen: api_bound.as_ref().map(|b| b.url.clone()),
        version: env!("CARGO_PKG_VERSION").into(),
        state_dir: cfg.state_dir.clone(),
        io_engine: engine.name().into(),
        nbd_listen: names.clone(),
        replication_listen: bound,
        volumes: 0,
        vpgs: vec![],
        links: vec![],
        replicas: vec![],
        replicas_loading: true,
        metadata_problems: vec![],
        failover_tests: vec![],
        live_failovers: vec![],
        summary: Default::default(),
    };
    let failover = crate::failover::Failover::new(exports.clone(), vpgs.clone(), {
        let base = names.iter().find(|l| l.starts_with("nbd://")).cloned();
        let sock = cfg.state_dir.join("nbd.sock");
        Box::new(move |name: &str| match &base {
            Some(l) => format!("{l}/{name}"),
            None => format!("nbd+unix:///{name}?socket={}", sock.display()),
        })
    });
    // Live failovers the last run left: their names are held back before NBD serves
    // anything, and served again once the replicas are loaded.
    failover.hold_names_on_start();
    tokio::spawn(failover.clone().resume_live());
    let router = api::router(
        volumes.clone(),
        vpgs.clone(),
        exports.clone(),
        shipping,
        failover.clone(),
        status,
        shutdown.clone(),
    );
    let api_tcp = api_bound.map(|b| b.serve(router.clone(), shutdown.clone()));
    let api = tokio::spawn(
        axum::serve(control, router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );

    let server = Arc::new(cfg.server_config());
    let admission = Admission {
        negotiating: Gate::new(
            "NBD negotiations",
            GateLimits {
                total_max: cfg.limits.negotiating_max,
                per_source_max: cfg.limits.negotiating_per_source_max,
            },
        ),
        established: Arc::new(Semaphore::new(cfg.limits.connections_max)),
        connections_max: cfg.limits.connections_max,
        refused: Arc::new(crate::events::RateLimitedLog::new(Duration::from_secs(10))),
    };
    tokio::spawn(trim_idle_memory(pool.clone(), shutdown.clone()));
    let tracker = TaskTracker::new();
    let loops: Vec<_> = nbd
        .into_iter()
        .map(|l| {
            tokio::spawn(accept_loop(
                l,
                exports.clone(),
                server.clone(),
                admission.clone(),
                tracker.clone(),
                shutdown.clone(),
            ))
        })
        .collect();
    info!(nbd = ?names, control = %control_path.display(), engine = engine.name(), "agent ready");
    activation::notify_ready();

    shutdown.cancelled().await;
    info!("shutting down: finishing in-flight requests");
    for l in loops {
        let _ = l.await;
    }
    tracker.close();
    // Connections bound themselves by the grace period; the extra is for the replies.
    let bound = server.shutdown_grace + Duration::from_secs(5);
    if tokio::time::timeout(bound, tracker.wait()).await.is_err() {
        warn!("connections still open after the shutdown bound; closing them");
    }
    // Shipping ends before the journals close, so no acknowledgement lands after.
    let joined = tokio::task::spawn_blocking(move || ship_thread.join());
    if tokio::time::timeout(Duration::from_secs(10), joined).await.is_err() {
        warn!("the shipping thread did not end within 10 s; closing the journals anyway");
    }
    volumes.flush_all().await;
    vpgs.close_all().await;
    let _ = api.await;
    if let Some(t) = api_tcp {
        let _ = t.await;
    }
    if let Some(p) = cfg.nbd_socket().filter(|_| bound_socket) {
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_file(&control_path);
    info!("agent stopped");
    Ok(())
}
