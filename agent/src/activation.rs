//! systemd socket activation (`LISTEN_FDS`, `LISTEN_PID`; fds from 3) and readiness
//! notification (`NOTIFY_SOCKET`). The same protocol serves a `.socket` unit and a captive
//! launch by an NBD client (`nbdinfo -- [ ferry agent … ]`).

use std::os::fd::{FromRawFd, OwnedFd};

use rustix::net::AddressFamily;

/// A listening socket handed to us.
#[derive(Debug)]
pub enum Inherited {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

const SD_LISTEN_FDS_START: i32 = 3;
/// More inherited sockets than this is a misconfiguration, not something to serve.
const LISTEN_FDS_MAX: i32 = 64;

/// Takes the sockets systemd (or a captive launcher) passed, once; empty when none were.
pub fn take_listeners() -> Result<Vec<Inherited>, String> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    // SAFETY (env mutation): called once at start-up, before any thread reads the environment.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(vec![]);
    };
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(vec![]);
    }
    let n: i32 = fds.parse().map_err(|_| format!("LISTEN_FDS={fds:?} is not a number"))?;
    if !(0..=LISTEN_FDS_MAX).contains(&n) {
        return Err(format!("LISTEN_FDS={n} is out of range (0..={LISTEN_FDS_MAX})"));
    }
    let mut out = Vec::new();
    for fd in SD_LISTEN_FDS_START..SD_LISTEN_FDS_START + n {
        // SAFETY: LISTEN_FDS with our pid says these fds are ours and open.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC).map_err(|e| format!("fd {fd}: {e}"))?;
        let family = rustix::net::getsockname(&owned)
            .map_err(|e| format!("inherited fd {fd} is not a socket: {e}"))?
            .address_family();
        out.push(if family == AddressFamily::UNIX {
            Inherited::Unix(std::os::unix::net::UnixListener::from(owned))
        } else {
            Inherited::Tcp(std::net::TcpListener::from(owned))
        });
    }
    Ok(out)
}

/// Tells systemd (Type=notify) the agent is serving. No-op without `NOTIFY_SOCKET`.
pub fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name).and_then(|a| sock.send_to_addr(b"READY=1", &a))
    } else {
        sock.send_to(b"READY=1", &path)
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd of readiness");
    }
}
