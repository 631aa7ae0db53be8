//! What an old master hands a new one across the USR2 re-exec, in two
//! variables of ours:
//!
//! | variable                  | value                                      |
//! |---------------------------|--------------------------------------------|
//! | `FORKMASTER_INHERIT_FDS`  | `3=127.0.0.1:8080;4=unix:/run/app.sock`    |
//! | `FORKMASTER_UPGRADE_FROM` | `<old master pid>:<highest generation>`    |
//! | `FORKMASTER_UPGRADE_NOTIFY` | the old master's notify socket path      |
//!
//! The fd numbers come from the environment: each is checked to be a
//! listening socket bound to the address it claims before it is adopted,
//! through `sys::fd`, the one place that turns a raw fd number into ours.

use crate::listen::{parse_address_with, Address, ListenSpec};
use crate::sockets::{bound_address, Listener};
use crate::sys::fd::{adopt_inherited, inspect_inherited};
use std::ffi::OsString;
use std::os::fd::{OwnedFd, RawFd};

pub use crate::protocol::{
    INHERIT_FDS as INHERIT_VAR, UPGRADE_FROM as UPGRADE_VAR, UPGRADE_NOTIFY as NOTIFY_VAR,
};

/// The old master, as the new one learns of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Predecessor {
    pub pid: i32,
    pub generation: u32,
}

/// One socket handed to a new master.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handed {
    pub fd: RawFd,
    pub address: Address,
    /// Owned by systemd (socket activation): never unlinked by us.
    pub external: bool,
    /// Its systemd `LISTEN_FDNAMES` name, kept across upgrades.
    pub name: Option<String>,
}

/// `3=127.0.0.1:8080;s4:web=unix:/run/app.sock`: `s` marks a socket systemd
/// owns, `:NAME` its systemd name (names hold no `:` or `=`).
pub fn encode_listeners(listeners: &[Handed]) -> String {
    listeners
        .iter()
        .map(|h| {
            let s = if h.external { "s" } else { "" };
            let name = h
                .name
                .as_deref()
                .map(|n| format!(":{n}"))
                .unwrap_or_default();
            format!("{s}{}{name}={}", h.fd, h.address)
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// Parses `FORKMASTER_INHERIT_FDS`.
pub fn decode_listeners(text: &str) -> Result<Vec<Handed>, String> {
    text.split(';')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (head, addr) = part
                .split_once('=')
                .ok_or_else(|| format!("{INHERIT_VAR}: {part:?} is not FD=ADDRESS"))?;
            let (head, external) = match head.strip_prefix('s') {
                Some(head) => (head, true),
                None => (head, false),
            };
            let (fd, name) = match head.split_once(':') {
                Some((fd, name)) if !name.is_empty() => (fd, Some(name.to_string())),
                Some(_) => return Err(format!("{INHERIT_VAR}: empty name in {part:?}")),
                None => (head, None),
            };
            let fd: RawFd = fd
                .parse()
                .ok()
                .filter(|fd| *fd >= 3)
                .ok_or_else(|| format!("{INHERIT_VAR}: bad fd {fd:?}"))?;
            // Bound addresses: IPs or paths, never names to look up.
            let address = parse_address_with(addr, |host, _| Err(format!("{host:?}: not an IP")))
                .map_err(|w| format!("{INHERIT_VAR}: {w}"))?;
            Ok(Handed {
                fd,
                address,
                external,
                name,
            })
        })
        .collect()
}

pub fn encode_predecessor(pid: i32, generation: u32) -> String {
    format!("{pid}:{generation}")
}

pub fn decode_predecessor(text: &str) -> Option<Predecessor> {
    let (pid, generation) = text.split_once(':')?;
    Some(Predecessor {
        pid: pid.parse().ok().filter(|p| *p > 0)?,
        generation: generation.parse().ok()?,
    })
}

/// An adopted socket: where it is bound, its systemd name, and whether it
/// belongs to systemd (socket activation: never unlinked by us).
struct Adopted {
    bound: Address,
    name: Option<String>,
    external: bool,
    fd: OwnedFd,
}

/// Sockets handed to us, verified: by a previous master (upgrade) or by
/// systemd (socket activation).
#[derive(Default)]
pub struct Inherited {
    sockets: Vec<Adopted>,
}

impl Inherited {
    /// Takes the fds named in `FORKMASTER_INHERIT_FDS` that really are
    /// listening sockets bound where they claim; logs and skips the others.
    pub fn from_env(value: Option<&str>) -> Inherited {
        let mut inherited = Inherited::default();
        let entries = match value.map(decode_listeners).transpose() {
            Ok(entries) => entries.unwrap_or_default(),
            Err(why) => {
                log::warn!(
                    "event=inherit-ignored reason=\"{why}\"",
                    why = crate::logging::esc(&why)
                );
                Vec::new()
            }
        };
        for Handed {
            fd,
            address: claimed,
            external,
            name,
        } in entries
        {
            match verify(fd) {
                Ok(bound) if bound == claimed => inherited.adopt(fd, bound, name, external),
                Ok(bound) => log::warn!(
                    "event=inherit-ignored fd={fd} addr={claimed} reason=\"bound to {bound}\""
                ),
                Err(why) => {
                    log::warn!(
                        "event=inherit-ignored fd={fd} addr={claimed} reason=\"{why}\"",
                        claimed = crate::logging::esc(&claimed),
                        why = crate::logging::esc(&why)
                    )
                }
            }
        }
        inherited
    }

    /// Adds the sockets of systemd socket activation (fd, `LISTEN_FDNAMES` name).
    pub fn add_activated(&mut self, fds: &[(RawFd, Option<String>)]) {
        for (fd, name) in fds {
            match verify(*fd) {
                Ok(bound) => self.adopt(*fd, bound, name.clone(), true),
                Err(why) => log::warn!(
                    "event=activation-ignored fd={fd} reason=\"{why}\"",
                    why = crate::logging::esc(&why)
                ),
            }
        }
    }

    fn adopt(&mut self, fd: RawFd, bound: Address, name: Option<String>, external: bool) {
        if self.sockets.iter().any(|a| a.bound == bound) {
            log::warn!("event=inherit-ignored fd={fd} addr={bound} reason=\"given twice\"");
            return;
        }
        // The one place a number from the environment becomes ours: sys
        // checks it again and refuses a number adopted before.
        let fd = match adopt_inherited(fd) {
            Ok(fd) => fd,
            Err(why) => {
                log::warn!(
                    "event=inherit-ignored fd={fd} addr={bound} reason=\"{why}\"",
                    bound = crate::logging::esc(&bound),
                    why = crate::logging::esc(&why)
                );
                return;
            }
        };
        self.sockets.push(Adopted {
            bound,
            name,
            external,
            fd,
        });
    }

    /// Hands over the socket for `spec`, if there is one: by name when both
    /// have one, else by address.
    pub fn take(&mut self, spec: &ListenSpec) -> Option<Listener> {
        let i = self
            .sockets
            .iter()
            .position(|a| match (&spec.name, &a.name) {
                (Some(want), Some(have)) if want == have => true,
                _ => same_address(&spec.address, &a.bound),
            })?;
        let a = self.sockets.remove(i);
        Some(Listener::adopt(spec, a.bound, a.fd, a.external, a.name))
    }

    /// All remaining sockets as listeners (socket activation without `--listen`).
    pub fn take_all(&mut self) -> Vec<Listener> {
        self.sockets
            .drain(..)
            .map(|a| {
                let spec = ListenSpec {
                    address: a.bound.clone(),
                    name: a.name.clone(),
                    backlog: crate::listen::DEFAULT_BACKLOG,
                    mode: None,
                };
                Listener::adopt(&spec, a.bound, a.fd, a.external, a.name)
            })
            .collect()
    }

    /// The same sockets through duplicated fds: what an in-place upgrade
    /// keeps aside to fall back to the old listeners if its new
    /// configuration fails to start (the first try consumes the originals).
    pub fn try_clone(&self) -> std::io::Result<Inherited> {
        let sockets = self
            .sockets
            .iter()
            .map(|a| {
                Ok(Adopted {
                    bound: a.bound.clone(),
                    name: a.name.clone(),
                    external: a.external,
                    fd: a.fd.try_clone()?,
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Inherited { sockets })
    }

    /// The addresses of the sockets still held.
    pub fn addresses(&self) -> Vec<Address> {
        self.sockets.iter().map(|a| a.bound.clone()).collect()
    }

    /// The sockets no longer configured; dropping them closes ours.
    pub fn leftovers(self) -> Vec<Address> {
        self.sockets.into_iter().map(|a| a.bound).collect()
    }
}

/// A configured address matches a bound one; port 0 matches any port.
fn same_address(configured: &Address, bound: &Address) -> bool {
    match (configured, bound) {
        (Address::Tcp(c), Address::Tcp(b)) => {
            c.ip() == b.ip() && (c.port() == b.port() || c.port() == 0)
        }
        (Address::Unix(c), Address::Unix(b)) => c == b,
        _ => false,
    }
}

/// Checks `fd` is an open, inherited listening socket; its bound address.
fn verify(fd: RawFd) -> Result<Address, String> {
    inspect_inherited(fd, |socket| bound_address(&socket))
        .map_err(|why| why.to_string())?
        .ok_or_else(|| "no address".into())
}

/// The environment a new master starts with: ours as we started, less any
/// handoff variables, plus the new ones.
pub fn upgrade_env(
    base: &[(OsString, OsString)],
    listeners: &[Handed],
    pid: i32,
    generation: u32,
    notify: &std::path::Path,
    pid_file: Option<&std::path::Path>,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<_> = base
        .iter()
        // WATCHDOG_PID names the first master systemd started; after
        // MAINPID moves, the watchdog is the new master's whatever it says.
        .filter(|(k, _)| {
            k != INHERIT_VAR
                && k != UPGRADE_VAR
                && k != NOTIFY_VAR
                && k != crate::protocol::UPGRADE_PID_FILE
                && k != crate::protocol::UPGRADE_HEALTH_FD
                && k != crate::protocol::WATCHDOG_PID
        })
        .cloned()
        .collect();
    env.push((NOTIFY_VAR.into(), notify.as_os_str().to_os_string()));
    if let Some(path) = pid_file {
        env.push((
            crate::protocol::UPGRADE_PID_FILE.into(),
            path.as_os_str().to_os_string(),
        ));
    }
    env.push((INHERIT_VAR.into(), encode_listeners(listeners).into()));
    env.push((
        UPGRADE_VAR.into(),
        encode_predecessor(pid, generation).into(),
    ));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_round_trip() {
        let tcp = Address::Tcp("127.0.0.1:8080".parse().unwrap());
        let unix = Address::Unix("/run/app.sock".into());
        let handed = vec![
            Handed {
                fd: 3,
                address: tcp,
                external: false,
                name: None,
            },
            Handed {
                fd: 4,
                address: unix,
                external: true,
                name: Some("web".into()),
            },
        ];
        let text = encode_listeners(&handed);
        assert_eq!(text, "3=127.0.0.1:8080;s4:web=unix:/run/app.sock");
        assert_eq!(decode_listeners(&text).unwrap(), handed);
        assert!(decode_listeners("s4:=unix:/a").is_err());
        assert_eq!(decode_listeners("").unwrap(), vec![]);
        assert!(decode_listeners("x=80").is_err());
        assert!(decode_listeners("1=127.0.0.1:80").is_err());
        assert!(decode_listeners("3").is_err());
    }

    #[test]
    fn predecessor_round_trip() {
        let p = decode_predecessor(&encode_predecessor(42, 7)).unwrap();
        assert_eq!(
            p,
            Predecessor {
                pid: 42,
                generation: 7
            }
        );
        assert_eq!(decode_predecessor("0:1"), None);
        assert_eq!(decode_predecessor("junk"), None);
    }

    #[test]
    fn port_zero_matches_the_bound_port() {
        let any = Address::Tcp("127.0.0.1:0".parse().unwrap());
        let bound = Address::Tcp("127.0.0.1:4000".parse().unwrap());
        assert!(same_address(&any, &bound));
        assert!(!same_address(
            &bound,
            &Address::Tcp("127.0.0.1:4001".parse().unwrap())
        ));
        assert!(!same_address(&Address::Unix("/a".into()), &bound));
    }

    #[test]
    fn rejects_what_is_not_a_listener() {
        let inherited = Inherited::from_env(Some("0=127.0.0.1:80;999=127.0.0.1:81"));
        assert!(inherited.leftovers().is_empty());
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use crate::proptests::{config, explains, mutated};
    use proptest::prelude::*;

    fn values() -> impl Strategy<Value = String> {
        const SAMPLES: &[&str] = &[
            "3=127.0.0.1:8080;s4:web=unix:/run/app.sock",
            "5=[::1]:80",
            "1234:7",
        ];
        mutated(SAMPLES, "[0-9=;:s\\[\\].unix/abweb]")
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn decoding_never_panics_and_explains_on_one_line(text in values()) {
            if let Err(err) = decode_listeners(&text) {
                explains(&text, &err)?;
            }
            let _ = decode_predecessor(&text);
        }
    }
}
