//! Agent configuration: every key has a default, so `ferry agent --state-dir DIR` runs with
//! no file at all. Relative paths are taken from the state directory. Each key is documented
//! in the README's configuration reference.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::AgentError;
use crate::io::EngineChoice;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Where volumes.json, the sockets and the default datastore live.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub nbd: NbdConfig,
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default, rename = "datastore")]
    pub datastores: Vec<DatastoreConfig>,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub io: IoConfig,
    #[serde(default)]
    pub journal: JournalConfig,
    #[serde(default)]
    pub replication: ReplicationConfig,
    #[serde(default)]
    pub api: ApiConfig,
}

/// The control API and the dashboard over TCP (`[api]`); the unix socket is always served.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// A TCP address for the API, the dashboard and `/metrics` (e.g. "127.0.0.1:7080");
    /// none by default. Every request over TCP needs the bearer token.
    #[serde(default)]
    pub listen: Option<String>,
    /// PEM certificate chain and private key: with both, TCP is served over TLS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// The bearer token's file (`ferry api token` writes it, mode 0600); made at start if
    /// missing while `listen` is set.
    #[serde(default = "default_token_file")]
    pub token_file: PathBuf,
    /// Serve plain HTTP on an address other than loopback (behind a TLS proxy, say).
    #[serde(default)]
    pub allow_plain_http: bool,
}

/// Site-to-site replication (`[replication]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Where this agent, as a recovery site, accepts its peers (e.g. "0.0.0.0:10810");
    /// empty: it accepts none. `ferry agent --replication-listen` sets it too.
    #[serde(default)]
    pub listen: String,
    /// Pairing key files (from `ferry pair`) whose holders may replicate to this agent.
    #[serde(default)]
    pub pairing_keys: Vec<PathBuf>,
    /// zstd level for batches, 1 (fast) to 19; 0 sends them uncompressed.
    #[serde(default = "default_compression")]
    pub compression_level: i32,
    /// Bytes of records per batch.
    #[serde(default = "default_batch")]
    pub batch_bytes: String,
    /// Bytes sent and not yet acknowledged, per link.
    #[serde(default = "default_window")]
    pub window_bytes: String,
    /// Cap on everything a link sends, in bytes per second ("100M"); "0": none.
    #[serde(default = "default_bandwidth")]
    pub bandwidth: String,
    /// Bandwidth shares of high, medium and low priority VPGs under congestion.
    #[serde(default = "default_weights")]
    pub priority_weights: [u32; 3],
    /// At a start, a protected VPG's writes wait up to this long (seconds) for its
    /// recovery site to confirm that the VPG was not failed over meanwhile (a site that
    /// was is fenced before it takes a write); past it they are taken. 0: no wait.
    #[serde(default = "default_confirm_epoch")]
    pub confirm_epoch_s: f64,
    /// As a recovery site: a history segment is closed, and its index written, past this
    /// size.
    #[serde(default = "default_history_segment")]
    pub history_segment: String,
    /// As a recovery site: memory for the indexes of closed history segments, shared by
    /// every replica (least recently used out). Lookups past it read indexes from disk.
    #[serde(default = "default_history_index_cache")]
    pub history_index_cache: String,
}

fn default_history_segment() -> String {
    "64M".into()
}
fn default_history_index_cache() -> String {
    "256M".into()
}

fn default_confirm_epoch() -> f64 {
    10.0
}

fn default_compression() -> i32 {
    1
}
fn default_batch() -> String {
    "4M".into()
}
fn default_window() -> String {
    "64M".into()
}
fn default_bandwidth() -> String {
    "0".into()
}
fn default_weights() -> [u32; 3] {
    [4, 2, 1]
}

/// [`ReplicationConfig`] with its sizes parsed.
#[derive(Clone, Debug)]
pub struct Replication {
    pub compression_level: i32,
    pub batch_bytes: usize,
    pub window_bytes: usize,
    pub bandwidth: u64,
    pub weights: [u32; 3],
    pub history_segment: u64,
    pub history_index_cache: u64,
}

impl ReplicationConfig {
    pub fn parsed(&self) -> Result<Replication, String> {
        let size = |what: &str, v: &str| crate::size::parse_size(v).map_err(|e| format!("replication.{what}: {e}"));
        let r = Replication {
            compression_level: self.compression_level,
            batch_bytes: size("batch_bytes", &self.batch_bytes)? as usize,
            window_bytes: size("window_bytes", &self.window_bytes)? as usize,
            bandwidth: size("bandwidth", &self.bandwidth)?,
            weights: self.priority_weights,
            history_segment: size("history_segment", &self.history_segment)?,
            history_index_cache: size("history_index_cache", &self.history_index_cache)?,
        };
        if !(1 << 20..=1 << 30).contains(&r.history_segment) {
            return Err("replication.history_segment must be from 1M to 1G".into());
        }
        if !(0..=19).contains(&r.compression_level) {
            return Err("replication.compression_level must be from 0 to 19".into());
        }
        if !(64 << 10..=32 << 20).contains(&r.batch_bytes) {
            return Err("replication.batch_bytes must be from 64K to 32M".into());
        }
        if r.window_bytes < r.batch_bytes {
            return Err("replication.window_bytes must be at least replication.batch_bytes".into());
        }
        if r.weights.contains(&0) {
            return Err("replication.priority_weights must all be at least 1".into());
        }
        Ok(r)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// Journal ring size of a new VPG (`ferry vpg create --journal-size` overrides it).
    #[serde(default = "default_journal_size")]
    pub size: String,
    /// Seconds between automatic checkpoints (none is added while nothing was written).
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval_s: f64,
    /// Seconds between syncs of a VPG's journal, datastores and dirty maps: what a power
    /// loss can leave to resynchronise is the extents written in about two intervals.
    #[serde(default = "default_sync_interval")]
    pub sync_interval_s: f64,
    /// Bytes per dirty-map bit (a power of two, at least 4K).
    #[serde(default = "default_granularity")]
    pub dirty_granularity: String,
}

fn default_journal_size() -> String {
    "1G".into()
}
fn default_checkpoint_interval() -> f64 {
    1.0
}
fn default_sync_interval() -> f64 {
    30.0
}
fn default_granularity() -> String {
    "64K".into()
}

impl JournalConfig {
    /// Checked values for the VPGs.
    pub fn capture(&self) -> Result<CaptureConfig, String> {
        let size = crate::size::parse_size(&self.size).map_err(|e| format!("journal.size: {e}"))?;
        if size < 1 << 20 {
            return Err("journal.size must be at least 1M".into());
        }
        let g =
            crate::size::parse_size(&self.dirty_granularity).map_err(|e| format!("journal.dirty_granularity: {e}"))?;
        if !g.is_power_of_two() || !(4096..=(1 << 30)).contains(&g) {
            return Err("journal.dirty_granularity must be a power of two from 4K to 1G".into());
        }
        for (key, v) in [
            ("checkpoint_interval_s", self.checkpoint_interval_s),
            ("sync_interval_s", self.sync_interval_s),
        ] {
            if !(v.is_finite() && (0.1..=3600.0).contains(&v)) {
                return Err(format!("journal.{key} must be from 0.1 to 3600"));
            }
        }
        Ok(CaptureConfig {
            journal_bytes_default: size,
            checkpoint_interval: Duration::from_secs_f64(self.checkpoint_interval_s),
            sync_interval: Duration::from_secs_f64(self.sync_interval_s),
            dirty_granularity: g as u32,
            confirm_epoch: Duration::from_secs_f64(default_confirm_epoch()),
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NbdConfig {
    /// TCP addresses to serve NBD on. An address off loopback is logged as a warning: NBD
    /// itself is not encrypted.
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Unix socket for NBD; "" turns it off.
    #[serde(default = "default_nbd_socket")]
    pub unix_socket: PathBuf,
    /// Volume served to clients that ask for the empty export name; by default the only
    /// volume, when there is exactly one.
    #[serde(default)]
    pub default_export: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    #[serde(default = "default_control_socket")]
    pub socket: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatastoreConfig {
    pub name: String,
    /// A directory (volumes are sparse files in it) or a block device (holds one volume).
    pub path: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default = "default_payload")]
    pub payload_bytes_max: u32,
    #[serde(default = "default_inflight")]
    pub inflight_bytes_max: u32,
    #[serde(default = "default_connections")]
    pub connections_max: usize,
    #[serde(default = "default_handshake")]
    pub handshake_timeout_ms: u64,
    #[serde(default = "default_grace")]
    pub shutdown_grace_ms: u64,
    #[serde(default = "default_pool")]
    pub buffer_pool_bytes_max: usize,
    /// Payload and reply bytes all NBD connections together may have in flight; a
    /// connection's reader waits above it (each also has `inflight_bytes_max`).
    #[serde(default = "default_inflight_total")]
    pub inflight_total_bytes_max: u64,
    /// NBD clients still negotiating, in all and per source (IP address, or a unix
    /// peer's process): idle connections that never negotiate cannot lock others out.
    #[serde(default = "default_negotiating")]
    pub negotiating_max: usize,
    #[serde(default = "default_negotiating_per_source")]
    pub negotiating_per_source_max: usize,
    /// Replication peers still in their handshake, in all and per source address.
    #[serde(default = "default_peer_handshakes")]
    pub peer_handshakes_max: usize,
    #[serde(default = "default_peer_handshakes_per_source")]
    pub peer_handshakes_per_source_max: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoConfig {
    #[serde(default)]
    pub engine: EngineChoice,
    #[serde(default = "default_entries")]
    pub uring_entries: u32,
    /// Default for new volumes: O_DIRECT (bypass the page cache) instead of buffered I/O.
    #[serde(default)]
    pub direct: bool,
    /// On filesystems where io_uring can only hand a buffered write to a kernel worker thread
    /// (ext2/3/4), writes up to this size are done with `pwritev2` on the connection's own
    /// thread instead; larger ones go to io_uring, where the copy overlaps with reading the
    /// next request. 0 keeps every write on io_uring.
    #[serde(default = "default_inline_write")]
    pub inline_write_bytes_max: u32,
    /// Threads running sockets and request handling; 0 = one fewer than the cores (at least
    /// one), which leaves a core to the kernel's io_uring workers and local clients.
    #[serde(default)]
    pub worker_threads: usize,
}

fn default_inline_write() -> u32 {
    32 * 1024
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/ferry")
}
fn default_listen() -> Vec<String> {
    vec!["127.0.0.1:10809".into()]
}
fn default_nbd_socket() -> PathBuf {
    PathBuf::from("nbd.sock")
}
impl ApiConfig {
    /// The listen address, its TLS and whether plain HTTP is allowed there.
    pub fn check(&self) -> Result<(), String> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("api.tls_cert and api.tls_key go together: set both for TLS, or neither".into());
        }
        let Some(listen) = &self.listen else {
            return Ok(());
        };
        let addr: std::net::SocketAddr = listen
            .parse()
            .map_err(|_| format!("api.listen {listen:?} is not an address and port, e.g. \"127.0.0.1:7080\""))?;
        if self.tls_cert.is_none() && !addr.ip().is_loopback() && !self.allow_plain_http {
            return Err(format!(
                "api.listen {listen} is not loopback, and plain HTTP there would carry the API token in the clear. \
                 Set api.tls_cert and api.tls_key to PEM files (for a self-signed pair: `openssl req -x509 -newkey rsa:2048 -nodes -days 825 \
                 -subj /CN=$(hostname) -keyout key.pem -out cert.pem`), or set api.allow_plain_http = true if a TLS proxy fronts it"
            ));
        }
        Ok(())
    }
}

fn default_token_file() -> PathBuf {
    PathBuf::from("api.token")
}
fn default_control_socket() -> PathBuf {
    PathBuf::from("control.sock")
}
fn default_payload() -> u32 {
    32 << 20
}
fn default_inflight() -> u32 {
    128 << 20
}
fn default_connections() -> usize {
    256
}
fn default_handshake() -> u64 {
    30_000
}
fn default_grace() -> u64 {
    10_000
}
fn default_pool() -> usize {
    256 << 20
}
fn default_inflight_total() -> u64 {
    512 << 20
}
fn default_negotiating() -> usize {
    64
}
fn default_negotiating_per_source() -> usize {
    16
}
fn default_peer_handshakes() -> usize {
    32
}
fn default_peer_handshakes_per_source() -> usize {
    4
}
fn default_entries() -> u32 {
    256
}

macro_rules! defaults {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                toml::from_str("").expect("every field has a default")
            }
        }
    )*};
}
defaults!(
    NbdConfig,
    ControlConfig,
    ApiConfig,
    LimitsConfig,
    IoConfig,
    JournalConfig,
    ReplicationConfig
);

impl Default for AgentConfig {
    fn default() -> Self {
        toml::from_str("").expect("every field has a default")
    }
}

impl AgentConfig {
    /// Reads a config file.
    pub fn load(path: &Path) -> Result<AgentConfig, AgentError> {
        let text = std::fs::read_to_string(path).map_err(|e| AgentError::Config {
            path: path.into(),
            why: e.to_string(),
        })?;
        Self::parse(&text).map_err(|why| AgentError::Config { path: path.into(), why })
    }

    pub fn parse(text: &str) -> Result<AgentConfig, String> {
        let cfg: AgentConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), String> {
        let l = &self.limits;
        if !(4096..=(1 << 30)).contains(&l.payload_bytes_max) || !l.payload_bytes_max.is_power_of_two() {
            return Err("limits.payload_bytes_max must be a power of two from 4096 to 1 GiB".into());
        }
        if l.inflight_bytes_max < l.payload_bytes_max {
            return Err("limits.inflight_bytes_max must be at least limits.payload_bytes_max".into());
        }
        if l.connections_max == 0 {
            return Err("limits.connections_max must be at least 1".into());
        }
        if l.inflight_total_bytes_max < u64::from(l.inflight_bytes_max) {
            return Err("limits.inflight_total_bytes_max must be at least limits.inflight_bytes_max".into());
        }
        if l.negotiating_max == 0
            || l.negotiating_per_source_max == 0
            || l.peer_handshakes_max == 0
            || l.peer_handshakes_per_source_max == 0
        {
            return Err("limits.negotiating_max, negotiating_per_source_max, peer_handshakes_max and peer_handshakes_per_source_max must each be at least 1".into());
        }
        if !(4..=4096).contains(&self.io.uring_entries) {
            return Err("io.uring_entries must be from 4 to 4096".into());
        }
        self.journal.capture()?;
        self.replication.parsed()?;
        self.api.check()?;
        let mut names: Vec<&str> = self.datastores.iter().map(|d| d.name.as_str()).collect();
        names.sort();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("datastore {:?} is defined twice", w[0]));
        }
        Ok(())
    }

    /// A path from the config, relative ones under the state directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.state_dir.join(p)
        }
    }

    /// Configured datastores, or the default one under the state directory.
    pub fn datastores(&self) -> Vec<DatastoreConfig> {
        if self.datastores.is_empty() {
            vec![DatastoreConfig {
                name: "default".into(),
                path: self.state_dir.join("datastore"),
            }]
        } else {
            self.datastores
                .iter()
                .map(|d| DatastoreConfig {
                    name: d.name.clone(),
                    path: self.resolve(&d.path),
                })
                .collect()
        }
    }

    pub fn nbd_socket(&self) -> Option<PathBuf> {
        (!self.nbd.unix_socket.as_os_str().is_empty()).then(|| self.resolve(&self.nbd.unix_socket))
    }

    pub fn token_file(&self) -> PathBuf {
        self.resolve(&self.api.token_file)
    }

    pub fn control_socket(&self) -> PathBuf {
        self.resolve(&self.control.socket)
    }

    pub fn worker_threads(&self) -> usize {
        match self.io.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1)),
            n => n,
        }
    }

    pub fn server_config(&self) -> ferry_nbd::ServerConfig {
        ferry_nbd::ServerConfig {
            payload_bytes_max: self.limits.payload_bytes_max,
            inflight_bytes_max: self.limits.inflight_bytes_max,
            handshake_timeout: Duration::from_millis(self.limits.handshake_timeout_ms),
            shutdown_grace: Duration::from_millis(self.limits.shutdown_grace_ms),
            inflight_total: Some(std::sync::Arc::new(tokio::sync::Semaphore::new(
                self.limits
                    .inflight_total_bytes_max
                    .min(tokio::sync::Semaphore::MAX_PERMITS as u64) as usize,
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_off_loopback_is_refused_with_the_way_to_tls() {
        assert!(AgentConfig::parse("[api]\nlisten = \"127.0.0.1:7080\"").is_ok());
        assert!(AgentConfig::parse("[api]\nlisten = \"[::1]:7080\"").is_ok());
        let e = AgentConfig::parse("[api]\nlisten = \"0.0.0.0:7080\"").unwrap_err();
        assert!(
            e.contains("api.tls_cert") && e.contains("openssl req") && e.contains("allow_plain_http"),
            "{e}"
        );
        assert!(AgentConfig::parse("[api]\nlisten = \"0.0.0.0:7080\"\nallow_plain_http = true").is_ok());
        let tls = "[api]\nlisten = \"10.1.2.3:7080\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"";
        assert!(AgentConfig::parse(tls).is_ok());
        let e = AgentConfig::parse("[api]\ntls_cert = \"c.pem\"").unwrap_err();
        assert!(e.contains("go together"), "{e}");
        let e = AgentConfig::parse("[api]\nlisten = \"localhost\"").unwrap_err();
        assert!(e.contains("not an address and port"), "{e}");
    }

    #[test]
    fn empty_config_has_defaults() {
        let c = AgentConfig::parse("").unwrap();
        assert_eq!(c.nbd.listen, vec!["127.0.0.1:10809"]);
        assert_eq!(c.limits.payload_bytes_max, 32 << 20);
        assert_eq!(c.datastores()[0].path, PathBuf::from("/var/lib/ferry/datastore"));
    }

    #[test]
    fn full_config_parses_and_bad_keys_are_named() {
        let c = AgentConfig::parse(
            r#"
            state_dir = "/srv/ferry"
            [nbd]
            listen = ["127.0.0.1:10810"]
            unix_socket = ""
            [[datastore]]
            name = "fast"
            path = "ds"
            [limits]
            payload_bytes_max = 65536
            [io]
            engine = "pread"
            "#,
        )
        .unwrap();
        assert_eq!(c.nbd_socket(), None);
        assert_eq!(c.datastores()[0].path, PathBuf::from("/srv/ferry/ds"));
        assert_eq!(c.io.engine, EngineChoice::Pread);
        let err = AgentConfig::parse("[nbd]\nlisten_on = []").unwrap_err();
        assert!(err.contains("listen_on"), "{err}");
        assert!(AgentConfig::parse("[limits]\npayload_bytes_max = 1000").is_err());
    }
}

/// How VPGs capture, from the agent's config (`[journal]`).
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    pub journal_bytes_default: u64,
    pub checkpoint_interval: Duration,
    pub sync_interval: Duration,
    pub dirty_granularity: u32,
    /// See [`ReplicationConfig::confirm_epoch_s`].
    pub confirm_epoch: Duration,
}
