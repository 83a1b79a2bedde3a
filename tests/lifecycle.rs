//! The agent as an operator runs it: CLI errors that say what to do, state that survives a
//! restart, SIGTERM under load, socket activation (captive launch by nbdinfo), and a volume
//! whose file vanished.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Agent, FERRY, ok, qemu_io, require, run};

#[test]
fn cli_errors_name_the_problem() {
    let a = Agent::start("cli");
    a.create("one", "4M");
    let e = a.ferry_fails(&["volume", "create", "one", "--size", "4M"]);
    assert!(e.contains("already exists"), "{e}");
    let e = a.ferry_fails(&["volume", "create", "two", "--size", "ten"]);
    assert!(e.contains("is not a size"), "{e}");
    let e = a.ferry_fails(&["volume", "create", "two", "--size", "1000"]);
    assert!(e.contains("multiple of 512"), "{e}");
    let e = a.ferry_fails(&["volume", "create", "two"]);
    assert!(e.contains("--size is required"), "{e}");
    let e = a.ferry_fails(&["volume", "create", "../x", "--size", "1M"]);
    assert!(e.contains("must be 1 to 64 letters"), "{e}");
    let e = a.ferry_fails(&["volume", "create", "two", "--size", "1M", "--datastore", "nope"]);
    assert!(e.contains("no datastore named \"nope\""), "{e}");
    let e = a.ferry_fails(&["volume", "delete", "ghost"]);
    assert!(
        e.contains("no volume named \"ghost\"") && e.contains("ferry volume list"),
        "{e}"
    );
    let e = a.ferry_fails(&["volume", "adopt", "x", "/nonexistent/file"]);
    assert!(e.contains("cannot find"), "{e}");
    let path = a.volume_path("one");
    let e = a.ferry_fails(&["volume", "adopt", "again", path.to_str().unwrap()]);
    assert!(e.contains("is already volume \"one\""), "{e}");

    // In use: refused without --force, allowed with it.
    require("nbdsh");
    let mut holder = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import nbd,sys,time; h=nbd.NBD(); h.connect_uri(sys.argv[1]); print('up', flush=True); time.sleep(30)",
        ])
        .arg(a.unix_uri("one"))
        .env("PATH", "/usr/bin:/bin")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = [0u8; 3];
    std::io::Read::read_exact(holder.stdout.as_mut().unwrap(), &mut line).unwrap();
    let list = a.ferry(&["volume", "list"]);
    assert!(
        list.lines().any(|l| l.starts_with("one") && l.contains(" yes ")),
        "{list}"
    );
    let e = a.ferry_fails(&["volume", "delete", "one"]);
    assert!(e.contains("in use by NBD clients") && e.contains("--force"), "{e}");
    a.ferry(&["volume", "delete", "one", "--force"]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(!path.exists(), "deleting a created volume removes its file");

    // No agent at the socket: the message says how to point at one.
    let out = run(Command::new(FERRY).args(["--control", "/nonexistent/control.sock", "volume", "list"]));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("Is `ferry agent` running?") && e.contains("FERRY_CONTROL"),
        "{e}"
    );

    // A second agent on the same state directory is refused.
    let out = run(Command::new(FERRY).args(["agent", "--config"]).arg(a.config_path()));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("already uses state directory"),
        "{e}"
    );

    // A config key that does not exist is named.
    let bad = a.dir.join("bad.toml");
    std::fs::write(&bad, "[nbd]\nlisten_on = []\n").unwrap();
    let out = run(Command::new(FERRY).args(["agent", "--config"]).arg(&bad));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("listen_on"), "{e}");
}

#[test]
fn sigterm_under_load_exits_cleanly_and_restart_serves_the_same_volumes() {
    require("fio");
    let mut a = Agent::start("sigterm");
    a.create("keep", "64M");
    a.create("other", "8M");
    qemu_io(a.unix_uri("keep"), &["write -P 0x6b 0 4M", "flush"]);
    let mut fio = Command::new("fio")
        .args([
            "--name=load",
            "--ioengine=nbd",
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=32",
            "--size=32M",
            "--offset=32M",
        ])
        .args(["--time_based", "--runtime=30"])
        .arg(format!("--uri={}", a.unix_uri("keep")))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let status = a.stop();
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0; log:\n{}", a.log());
    let _ = fio.kill();
    let _ = fio.wait();
    let log = a.log();
    assert!(
        log.contains("stop signal received") && log.contains("agent stopped"),
        "{log}"
    );
    assert!(
        !a.socket().exists() && !a.dir.join("control.sock").exists(),
        "sockets removed"
    );

    a.spawn();
    let list = a.ferry(&["volume", "list"]);
    assert!(list.contains("keep") && list.contains("other"), "{list}");
    let out = qemu_io(a.tcp_uri("keep"), &["read -P 0x6b 0 4M"]);
    assert!(!out.contains("verification failed"), "{out}");
}

#[test]
fn captive_launch_through_socket_activation() {
    require("nbdinfo");
    let mut a = Agent::start("captive");
    a.create("only", "8M");
    qemu_io(a.unix_uri("only"), &["write -P 0x21 0 64k"]);
    assert_eq!(a.stop().code(), Some(0));
    // nbdinfo starts the agent with LISTEN_FDS on a socket of its own and asks for the
    // default export, which is the only volume.
    let out = ok(Command::new("nbdinfo")
        .args(["--size", "--", "["])
        .arg(FERRY)
        .args(["agent", "--config"])
        .arg(a.config_path())
        .arg("]"));
    assert_eq!(out.trim(), "8388608");
    let out = run(Command::new("nbdinfo")
        .args(["--map", "--", "["])
        .arg(FERRY)
        .args(["agent", "--config"])
        .arg(a.config_path())
        .arg("]"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.lines().next().unwrap().split_whitespace().nth(2) == Some("0"),
        "data first: {stdout}"
    );
    assert!(
        stderr.contains("socket activation"),
        "the agent says it was socket-activated: {stderr}"
    );
}

#[test]
fn a_volume_whose_file_vanished_is_offline_and_the_rest_are_served() {
    let mut a = Agent::start("offline");
    a.create("lost", "4M");
    a.create("fine", "4M");
    assert_eq!(a.stop().code(), Some(0));
    std::fs::remove_file(a.volume_path("lost")).unwrap();
    a.spawn();
    let list = a.ferry(&["volume", "list"]);
    let lost = list.lines().find(|l| l.starts_with("lost")).unwrap();
    assert!(lost.contains("offline"), "{list}");
    qemu_io(a.unix_uri("fine"), &["read -P 0 0 4M"]);
    let json = a.ferry(&["volume", "list", "--json"]);
    assert!(json.contains("cannot open volume file"), "{json}");
    a.ferry(&["volume", "delete", "lost"]);
}

#[test]
fn systemd_socket_units_hand_over_tcp_and_unix_sockets() {
    require("systemd-socket-activate");
    let mut a = Agent::start("sd-socket");
    a.create("vol", "8M");
    assert_eq!(a.stop().code(), Some(0));
    // A free port: bind, note it, release.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sock = a.dir.join("activated.sock");
    let mut child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-l")
        .arg(&sock)
        .arg(FERRY)
        .args(["agent", "--config"])
        .arg(a.config_path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "systemd-socket-activate did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let tcp = format!("nbd://127.0.0.1:{port}/vol");
    let unix = format!("nbd+unix:///vol?socket={}", sock.display());
    // The first connection starts the agent; both sockets then serve the same volume.
    qemu_io(&tcp, &["write -P 0x44 0 64k"]);
    let out = qemu_io(&unix, &["read -P 0x44 0 64k"]);
    assert!(!out.contains("verification failed"), "{out}");
    let _ = child.kill();
    let _ = child.wait();
    // The agent was started as systemd-socket-activate's child and exec'd in its place.
}

#[test]
fn listening_off_loopback_is_logged_as_a_warning() {
    // 0.0.0.0 only binds; no traffic leaves the machine.
    let dir = common::scratch_dir("wildcard2");
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = {:?}\n[nbd]\nlisten = [\"0.0.0.0:0\"]\n",
            dir.display().to_string()
        ),
    )
    .unwrap();
    let child = Command::new(FERRY)
        .args(["agent", "--config"])
        .arg(&cfg)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let control = dir.join("control.sock");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !control.exists() {
        assert!(std::time::Instant::now() < deadline, "agent did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    common::rustix_kill(child.id(), libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("NBD listens off loopback") && log.contains("not encrypted"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// scripts/install.sh, staged under a DESTDIR: the binary, a man page per command, the
/// completions (bash loads them), and the units with ExecStart at the installed binary,
/// which `systemd-analyze verify` passes (install.sh fails otherwise).
#[test]
fn install_script_puts_binary_man_pages_completions_and_verified_units_in_place() {
    require("systemd-analyze");
    let dest = common::scratch_dir("install");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = ok(Command::new(root.join("scripts/install.sh"))
        .env("DESTDIR", &dest)
        .env("PREFIX", "/opt/ferry")
        .env("FERRY_BIN", FERRY));
    assert!(out.contains("units verify cleanly"), "{out}");
    let p = dest.join("opt/ferry");
    assert!(p.join("bin/ferry").is_file());
    let man = p.join("share/man/man1");
    let pages: Vec<String> = std::fs::read_dir(&man)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for page in [
        "ferry.1.gz",
        "ferry-vpg-create.1.gz",
        "ferry-failover-live.1.gz",
        "ferry-api-token.1.gz",
    ] {
        assert!(pages.iter().any(|x| x == page), "{page} missing from {pages:?}");
    }
    let roff = ok(Command::new("zcat").arg(man.join("ferry-vpg-create.1.gz")));
    assert!(
        roff.contains(".TH ferry-vpg-create") && roff.contains("\\-\\-peer\\-key"),
        "{roff}"
    );
    let bash = p.join("share/bash-completion/completions/ferry");
    let loaded = ok(Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p ferry", bash.display())));
    assert!(loaded.contains("-F _ferry ferry"), "{loaded}");
    let zsh = std::fs::read_to_string(p.join("share/zsh/site-functions/_ferry")).unwrap();
    assert!(zsh.starts_with("#compdef ferry"));
    let fish = std::fs::read_to_string(p.join("share/fish/vendor_completions.d/ferry.fish")).unwrap();
    assert!(fish.contains("complete -c ferry"));
    let unit = std::fs::read_to_string(dest.join("etc/systemd/system/ferry-agent.service")).unwrap();
    assert!(unit.contains("ExecStart=/opt/ferry/bin/ferry agent"), "{unit}");
    assert!(dest.join("etc/systemd/system/ferry-agent.socket").is_file());
    let _ = std::fs::remove_dir_all(&dest);
}

#[test]
fn journal_dump_and_check_from_the_command_line() {
    let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/journal_recovery/small-ring.bin");
    let out = ok(Command::new(FERRY).args(["journal", "check"]).arg(&seed));
    assert!(
        out.contains(": ok") && out.contains("unacknowledged records: 3"),
        "{out}"
    );
    let out = ok(Command::new(FERRY).args(["journal", "dump"]).arg(&seed));
    assert!(
        out.contains("checkpoint    tag \"tag\"") && out.contains("volume 2  offset 512  length 512"),
        "{out}"
    );
    // The same as JSON.
    let out = ok(Command::new(FERRY).args(["journal", "dump", "--json"]).arg(&seed));
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["clean"], true);
    assert_eq!(j["unacknowledged_records"], 3);
    let recs = j["records"].as_array().unwrap();
    assert!(
        recs.iter().any(|r| r["kind"] == "checkpoint" && r["tag"] == "tag"),
        "{j}"
    );
    assert!(
        recs.iter()
            .any(|r| r["volume"] == 2 && r["offset"] == 512 && r["length"] == 512),
        "{j}"
    );
    // One flipped payload byte: check fails and says where.
    let dir = common::scratch_dir("jcheck");
    let bad = dir.join("bad.ring");
    let mut bytes = std::fs::read(&seed).unwrap();
    let last = bytes.len() - 16384 + 8192 + 100; // inside the last write's payload (3rd block of the data ring)
    bytes[last] ^= 0xff;
    std::fs::write(&bad, &bytes).unwrap();
    let out = run(Command::new(FERRY).args(["journal", "check"]).arg(&bad));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("DAMAGED") && text.contains("is damaged"), "{text}");
    let out = run(Command::new(FERRY).args(["journal", "check", "--json"]).arg(&bad));
    assert_eq!(out.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["clean"], false);
    let out = run(Command::new(FERRY)
        .args(["journal", "check"])
        .arg(dir.join("missing.ring")));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pair_writes_a_private_key_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = common::scratch_dir("pair");
    let key = dir.join("site.key");
    let out = ok(Command::new(FERRY).arg("pair").arg(&key));
    assert!(
        out.contains("mode 0600") && out.contains("copy it to the peer"),
        "{out}"
    );
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&key).unwrap();
    assert!(
        text.len() == 65 && text.trim().bytes().all(|c| c.is_ascii_hexdigit()),
        "{text:?}"
    );
    assert_eq!(ferry_proto::pairing::read_key(&key).unwrap().len(), 32);
    // Not replaced by accident.
    let again = run(Command::new(FERRY).arg("pair").arg(&key));
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), text);
    ok(Command::new(FERRY).args(["pair", "--force"]).arg(&key));
    assert_ne!(std::fs::read_to_string(&key).unwrap(), text);
    std::fs::remove_dir_all(&dir).unwrap();
}
