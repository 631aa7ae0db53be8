//! Talking to systemd (or any supervisor that speaks sd_notify) about the
//! master itself: `READY=1` once all workers are ready, `STATUS=` lines,
//! `RELOADING=1` while a HUP reload or USR2 upgrade runs, `MAINPID=` when a
//! new master takes over, `STOPPING=1`, and watchdog pings.
//!
//! Also socket activation: adopting the sockets systemd passes with
//! `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES`.

use crate::protocol;
use std::ffi::OsString;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The supervisor's notify socket, from `NOTIFY_SOCKET` as the master started.
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// How often to send `WATCHDOG=1`, when the supervisor asked for pings.
    pub watchdog_interval: Option<Duration>,
}

fn var<'a>(env: &'a [(OsString, OsString)], key: &str) -> Option<&'a str> {
    env.iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.to_str())
        .filter(|v| !v.is_empty())
}

impl Notifier {
    /// `None` when no supervisor listens. `pids` are the pids a
    /// `WATCHDOG_PID` may name for us: ours, or the old master's after an
    /// upgrade (systemd moves the watchdog along with `MAINPID`).
    pub fn from_env(env: &[(OsString, OsString)], pids: &[i32]) -> Option<Notifier> {
        let path = var(env, protocol::NOTIFY_SOCKET)?;
        let addr = match path.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).ok()?,
            None => SocketAddr::from_pathname(path).ok()?,
        };
        let socket = UnixDatagram::unbound().ok()?;
        socket.set_nonblocking(true).ok()?;
        let for_us = var(env, protocol::WATCHDOG_PID)
            .and_then(|p| p.parse::<i32>().ok())
            .is_none_or(|p| pids.contains(&p));
        let watchdog_interval = var(env, protocol::WATCHDOG_USEC)
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && for_us)
            .map(|u| Duration::from_micros(u / 2));
        Some(Notifier {
            socket,
            addr,
            watchdog_interval,
        })
    }

    /// Sends one notification; a supervisor that is gone is not our problem.
    pub fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.addr) {
            log::debug!("event=sd-notify-failed error=\"{e}\"");
        }
    }
}

/// `RELOADING=1` with the `MONOTONIC_USEC` systemd wants alongside it.
pub fn reloading_message(status: &str) -> String {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
        .unwrap_or(0);
    format!("RELOADING=1\nMONOTONIC_USEC={now}\nSTATUS={status}\n")
}

/// Sockets passed by systemd socket activation: fds 3.. when `LISTEN_PID`
/// is our pid, with their `LISTEN_FDNAMES`.
pub fn activated_fds(env: &[(OsString, OsString)], pid: i32) -> Vec<(i32, Option<String>)> {
    if var(env, protocol::LISTEN_PID).and_then(|p| p.parse::<i32>().ok()) != Some(pid) {
        return Vec::new();
    }
    let count = var(env, protocol::LISTEN_FDS)
        .and_then(|n| n.parse::<i32>().ok())
        .filter(|n| (1..=1024).contains(n))
        .unwrap_or(0);
    let names: Vec<&str> = var(env, protocol::LISTEN_FDNAMES)
        .map(|n| n.split(':').collect())
        .unwrap_or_default();
    (0..count)
        .map(|i| {
            let name = names
                .get(i as usize)
                .filter(|n| !n.is_empty() && **n != "unknown")
                .map(|n| n.to_string());
            (3 + i, name)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn activation_needs_our_pid() {
        let e = env(&[
            ("LISTEN_FDS", "2"),
            ("LISTEN_PID", "42"),
            ("LISTEN_FDNAMES", "web:unknown"),
        ]);
        assert_eq!(
            activated_fds(&e, 42),
            vec![(3, Some("web".into())), (4, None)]
        );
        assert!(activated_fds(&e, 43).is_empty());
        assert!(activated_fds(&env(&[("LISTEN_FDS", "x"), ("LISTEN_PID", "42")]), 42).is_empty());
    }

    #[test]
    fn watchdog_only_when_meant_for_us() {
        let e = env(&[
            ("NOTIFY_SOCKET", "@x"),
            ("WATCHDOG_USEC", "2000000"),
            ("WATCHDOG_PID", "7"),
        ]);
        assert_eq!(
            Notifier::from_env(&e, &[7]).unwrap().watchdog_interval,
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            Notifier::from_env(&e, &[8]).unwrap().watchdog_interval,
            None
        );
        assert!(Notifier::from_env(&env(&[]), &[7]).is_none());
    }

    #[test]
    fn reloading_carries_a_timestamp() {
        let m = reloading_message("reloading");
        assert!(m.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{m}");
        assert!(!m.contains("MONOTONIC_USEC=0\n"));
    }
}
