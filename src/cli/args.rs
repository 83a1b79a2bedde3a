//! The command line's arguments: every command and its options (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "ferry", version, about = "ferry: disaster-recovery block replication agent")]
pub(super) struct Cli {
    /// The agent's control socket (default: $FERRY_CONTROL, else /var/lib/ferry/control.sock).
    #[arg(long, global = true, env = "FERRY_CONTROL")]
    pub(super) control: Option<PathBuf>,
    #[command(subcommand)]
    pub(super) command: Command,
}

// Parsed once per run.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub(super) enum Command {
    /// Run the agent (serves volumes over NBD; controlled through its socket).
    Agent(AgentArgs),
    /// Create, adopt, list and delete volumes on a running agent.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Show the agent's status.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Long operations (initial, delta and reverse syncs, commits, moves) and their
    /// progress, running and lately finished.
    Tasks {
        /// Only this VPG's.
        #[arg(long)]
        vpg: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Conditions to act on now (RPO above target, split brain, a live failover that needs
    /// commit, links down, failing datastores), worst first.
    Alerts {
        #[arg(long)]
        json: bool,
    },
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
    /// Failover tests of a checkpoint (on the recovery site), and their reports.
    #[command(subcommand)]
    Failover(FailoverCmd),
    /// The event log: state changes and alerts of every VPG and replica, oldest first.
    Events {
        /// Keep printing new events (stop with Ctrl-C).
        #[arg(long, short)]
        follow: bool,
        /// One JSON object per event and line.
        #[arg(long)]
        json: bool,
    },
    /// Print shell completions for bash, zsh, fish, elvish or powershell (no agent needed):
    /// e.g. `ferry completions bash > /usr/share/bash-completion/completions/ferry`.
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (ferry.1 and one per command) to a directory (no agent needed).
    Man {
        /// Where to write them, e.g. /usr/local/share/man/man1.
        dir: PathBuf,
    },
    /// The control API over TCP: its bearer token (no agent needed).
    #[command(subcommand)]
    Api(ApiCmd),
    /// Make a pairing key for two agents (copy the file to the peer; no agent needed).
    Pair {
        /// Where to write the key (mode 0600).
        path: PathBuf,
        /// Replace an existing key file (the peer then needs the new key too).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub(super) enum ApiCmd {
    /// Write a new bearer token for the API over TCP (mode 0600). A running agent uses it
    /// at once, and the old token stops working.
    Token {
        /// The token file (default: api.token next to the control socket, which is the
        /// agent's default api.token_file).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Also print the token (for a script that hands it to a client).
        #[arg(long)]
        print: bool,
    },
}

#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub(super) enum VpgCmd {
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
        #[command(flatten)]
        plan: PlanArgs,
    },
    /// Protect a VPG failed over to this site (and committed) back to the site it failed
    /// over from: that site becomes its recovery site, its volumes the replica's images, and
    /// only the regions that differ are sent.
    Reverse {
        name: String,
        /// That site's replication address (it must accept this agent's pairing key).
        #[arg(long)]
        peer: String,
        /// The pairing key file shared with that site.
        #[arg(long)]
        peer_key: PathBuf,
        #[arg(long)]
        priority: Option<String>,
        /// RPO alert threshold, e.g. 5m.
        #[arg(long)]
        rpo: Option<String>,
        /// Journal ring size, e.g. 1G.
        #[arg(long)]
        journal_size: Option<String>,
    },
    /// Settle a split brain (both sites took writes after a failover one was not there
    /// for). Run it at the site whose writes are given up, with `--keep peer`: they are kept
    /// for salvage first (`ferry vpg diverged`).
    Resolve {
        name: String,
        /// The side whose writes win: `peer` (the other site) or `here`.
        #[arg(long, value_parser = ["here", "peer"])]
        keep: String,
        /// The most to keep for salvage, e.g. 64G (default 16G).
        #[arg(long)]
        salvage_max: Option<String>,
        /// Give up this site's diverged writes without keeping them.
        #[arg(long)]
        discard: bool,
    },
    /// Diverged writes kept for salvage here: their regions, files and read-only exports.
    Diverged {
        name: String,
        /// Delete them (those of one epoch with --epoch).
        #[arg(long)]
        delete: bool,
        #[arg(long, requires = "delete")]
        epoch: Option<u64>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a VPG's failover plan: members and boot order, scripts, networks (it travels
    /// to the recovery site, which acts on it even when this site is gone).
    Edit {
        name: String,
        #[command(flatten)]
        plan: PlanArgs,
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

/// Reverse protection after a commit: `--reverse-protection --peer HOST:PORT --peer-key FILE`.
#[derive(clap::Args, Debug, Default)]
pub(super) struct ReverseArgs {
    /// Once committed, protect the VPG back to the site it failed over from.
    #[arg(long, requires_all = ["peer", "peer_key"])]
    pub reverse_protection: bool,
    /// That site's replication address.
    #[arg(long)]
    pub peer: Option<String>,
    /// The pairing key file shared with it.
    #[arg(long)]
    pub peer_key: Option<PathBuf>,
}

impl ReverseArgs {
    pub(super) fn request(self) -> Result<Option<ferry_agent::failover::ReverseRequest>, String> {
        if !self.reverse_protection {
            return Ok(None);
        }
        let key = self.peer_key.expect("required by clap");
        Ok(Some(ferry_agent::failover::ReverseRequest {
            peer: self.peer.expect("required by clap"),
            pairing_key: std::path::absolute(&key).map_err(|err| format!("{}: {err}", key.display()))?,
            ..Default::default()
        }))
    }
}

/// A VPG's failover plan, as `vpg create` and `vpg edit` take it.
#[derive(clap::Args, Debug, Default)]
pub(super) struct PlanArgs {
    /// Volumes that start together, in boot order: NAME=VOLUME[,VOLUME…] (repeat; replaces
    /// the members given before). A volume in none starts on its own, after them.
    #[arg(long = "member")]
    pub members: Vec<String>,
    /// Between one member's start and the next, e.g. 10s (default 0).
    #[arg(long)]
    pub boot_delay: Option<String>,
    /// Run at the recovery site before each member starts (`sh -c`); its failure stops the
    /// operation. Environment: FERRY_VPG, FERRY_OPERATION (test, live, move),
    /// FERRY_CHECKPOINT, FERRY_MEMBER, FERRY_EXPORT_URIS, FERRY_NETWORK. "" clears it.
    #[arg(long)]
    pub pre_script: Option<String>,
    /// Run at the recovery site after each member started (`sh -c`); "" clears it.
    #[arg(long)]
    pub post_script: Option<String>,
    /// A script's time limit, e.g. 2m (default 5m).
    #[arg(long)]
    pub script_timeout: Option<String>,
    /// The network name passed to the scripts of a failover test.
    #[arg(long)]
    pub test_network: Option<String>,
    /// The network name passed to the scripts of a live failover or move.
    #[arg(long)]
    pub failover_network: Option<String>,
}

impl PlanArgs {
    pub(super) fn edit(self) -> Result<ferry_agent::protect::vpg::PlanEdit, String> {
        let members = if self.members.is_empty() {
            None
        } else {
            Some(
                self.members
                    .iter()
                    .map(|m| {
                        let (name, vols) = m
                            .split_once('=')
                            .ok_or_else(|| format!("--member {m:?}: give it as NAME=VOLUME[,VOLUME…]"))?;
                        Ok(ferry_agent::protect::vpg::Member {
                            name: name.trim().into(),
                            volumes: vols
                                .split(',')
                                .map(|v| v.trim().to_string())
                                .filter(|v| !v.is_empty())
                                .collect(),
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()?,
            )
        };
        Ok(ferry_agent::protect::vpg::PlanEdit {
            members,
            boot_delay_ms: self.boot_delay.as_deref().map(parse_seconds_ms).transpose()?,
            pre_script: self.pre_script,
            post_script: self.post_script,
            script_timeout_s: self.script_timeout.as_deref().map(parse_duration_s).transpose()?,
            test_network: self.test_network,
            failover_network: self.failover_network,
        })
    }
}

#[derive(Subcommand, Debug)]
pub(super) enum CheckpointCmd {
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
pub(super) enum FailoverCmd {
    /// Bring up a checkpoint of a VPG as read-write test exports over scratch (nothing is
    /// copied; the replica, its history and the protected site are not touched, and
    /// replication goes on); prints their NBD URIs.
    Test {
        vpg: String,
        /// A sequence number, a tag, or latest.
        #[arg(long, default_value = "latest")]
        checkpoint: String,
        /// A volume to bring up (repeat for more; default: all of the VPG's).
        #[arg(long = "volume")]
        volumes: Vec<String>,
        /// Scratch space for the test's writes (past it they get ENOSPC), e.g. 2G.
        #[arg(long)]
        scratch_max: Option<String>,
        /// A check run at the recovery site once the exports are up (`sh -c`; the exports
        /// in $FERRY_EXPORT_URIS as VOLUME=URI): its exit code is the result. The command
        /// waits for it. E.g. scripts/drill-fsck.sh
        #[arg(long)]
        verify: Option<String>,
        /// End the test after the check, with its result: one command is a whole drill.
        #[arg(long, requires = "verify")]
        stop_after: bool,
        /// The check's time limit, e.g. 5m (default 5m).
        #[arg(long)]
        verify_timeout: Option<String>,
    },
    /// End the failover test of a VPG: its exports close, its scratch is deleted, and a
    /// report is recorded.
    Stop {
        vpg: String,
        /// How the test went.
        #[arg(long, value_parser = ["pass", "fail"])]
        result: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// The reports of a VPG's failover tests, oldest first.
    Report {
        vpg: String,
        #[arg(long)]
        json: bool,
    },
    /// Fail a VPG over for real, at the recovery site: the protected site is shut down
    /// and fenced (if reachable), the epoch raised, and each volume served read-write
    /// under its production name from the checkpoint, member by member. It then needs
    /// commit (or rollback).
    Live {
        vpg: String,
        /// A sequence number, a tag, a time (UTC), or latest (after a graceful shutdown:
        /// the final checkpoint it took).
        #[arg(long, default_value = "latest")]
        checkpoint: String,
        /// What happens when --commit-after has passed: none, auto-commit, auto-rollback.
        #[arg(long, default_value = "none")]
        commit_policy: String,
        /// When the commit policy acts, e.g. 60m (default 60m).
        #[arg(long)]
        commit_after: Option<String>,
        /// At the protected site: graceful (writes in flight finish and are shipped, a
        /// final checkpoint), force (writes stop at once), none (production goes on).
        #[arg(long, default_value = "graceful")]
        shutdown: String,
    },
    /// Make a live failover final: its volumes become this agent's volumes, copied in the
    /// background while served (the command shows the progress).
    Commit {
        vpg: String,
        /// Return at once (`ferry failover status` shows the progress).
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        reverse: ReverseArgs,
    },
    /// A planned failover with no data loss, at the recovery site: the protected site
    /// shuts down gracefully and is fenced, its final checkpoint drains here, the VPG is
    /// served here from it and committed (at once by default), and optionally protected
    /// back. Rolled back, saying why, if the protected site cannot be fenced or drained.
    /// Failback is a move back.
    Move {
        vpg: String,
        #[arg(long, default_value = "auto-commit")]
        commit_policy: String,
        /// When the commit policy acts (default: auto-commit at once).
        #[arg(long)]
        commit_after: Option<String>,
        #[command(flatten)]
        reverse: ReverseArgs,
    },
    /// Undo a live failover: its exports close, what was written to them is discarded,
    /// and the protected site takes writes again; replication resumes where it stopped.
    Rollback { vpg: String },
    /// Live failovers at this site: needing commit (with the timer), committing, committed.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub(super) enum ReplicaCmd {
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
pub(super) enum JournalCmd {
    /// Print the superblocks, cursors and every unacknowledged record.
    Dump {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Verify every checksum and the cursors; exit 1 on damage.
    Check {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
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
        /// One JSON object per record and line.
        #[arg(long, conflicts_with = "quiet")]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub(super) struct AgentArgs {
    /// State directory: volumes.json, sockets, and the default datastore.
    #[arg(long)]
    pub(super) state_dir: Option<PathBuf>,
    /// Config file (TOML); every key is optional.
    #[arg(long)]
    pub(super) config: Option<PathBuf>,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive list.
    #[arg(long, env = "FERRY_LOG", default_value = "info")]
    pub(super) log_level: String,
    /// Accept peers as a recovery site on HOST:PORT (replication.listen).
    #[arg(long)]
    pub(super) replication_listen: Option<String>,
    /// A pairing key file whose holder may replicate here (repeat for more peers).
    #[arg(long = "pairing-key")]
    pub(super) pairing_keys: Vec<PathBuf>,
    /// Serve the API, the dashboard (/ui/) and /metrics on HOST:PORT (api.listen), with the
    /// bearer token in STATE_DIR/api.token.
    #[arg(long)]
    pub(super) api_listen: Option<String>,
}

#[derive(Subcommand, Debug)]
pub(super) enum VolumeCmd {
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

/// "30s", "5m", "1h", "2d", or plain seconds.
pub(super) fn parse_duration_s(text: &str) -> Result<u64, String> {
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
pub(super) fn parse_seconds_ms(text: &str) -> Result<u64, String> {
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
