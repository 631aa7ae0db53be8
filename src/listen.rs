//! Listen addresses as the user writes them: `PORT`, `HOST:PORT`, `[IPV6]:PORT`,
//! `unix:/path/to.sock`, each optionally prefixed `NAME=`; a Unix socket
//! optionally followed by `;mode=OCTAL` (`;` is the one character a socket
//! path may not hold, so the option cannot be read as part of a path).
//!
//! Parsing is pure: a host name is kept as written (`Target::Host`) until
//! `WrittenListen::resolve` looks it up. Binding lives in `sockets`.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

/// Default `listen(2)` backlog, as in Unicorn and nginx on Linux.
pub const DEFAULT_BACKLOG: u32 = 1024;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// One configured listener: where, under which name, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenSpec {
    pub address: Address,
    /// Goes into `LISTEN_FDNAMES`; defaults to the address text.
    pub name: Option<String>,
    pub backlog: u32,
    /// Permission bits for a Unix socket file.
    pub mode: Option<u32>,
}

impl ListenSpec {
    /// The name a worker sees in `LISTEN_FDNAMES`: the configured name, or
    /// `unknown` as systemd writes for unnamed sockets.
    pub fn fd_name(&self) -> &str {
        self.name.as_deref().unwrap_or("unknown")
    }
}

/// Looks a host name up: DNS and /etc/hosts, through getaddrinfo.
pub type Resolve = fn(&str, u16) -> Result<SocketAddr, String>;

/// A listener as written, any host name in it not looked up yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenListen {
    pub target: Target,
    pub name: Option<String>,
    pub backlog: u32,
    pub mode: Option<u32>,
    /// The text the address came from, quoted in a failed lookup's message.
    pub text: String,
}

/// An address as written: complete, or a host name still to look up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Address(Address),
    Host { host: String, port: u16 },
}

impl WrittenListen {
    /// Looks the host name up, if any; fails naming the text as written.
    pub fn resolve(self, resolve: Resolve) -> Result<ListenSpec, String> {
        let address = match self.target {
            Target::Address(address) => address,
            Target::Host { host, port } => {
                Address::Tcp(resolve(&host, port).map_err(|why| format!("{:?}: {why}", self.text))?)
            }
        };
        Ok(ListenSpec {
            address,
            name: self.name,
            backlog: self.backlog,
            mode: self.mode,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Address(address) => write!(f, "{address}"),
            Target::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Parses one `--listen` value. Fails with a message naming the value.
#[cfg(test)]
pub fn parse_listen(text: &str) -> Result<ListenSpec, String> {
    parse_listen_with(text, resolve_host)
}

/// `parse_listen` with host names looked up by `resolve` (tests and fuzzing
/// pass one that does no I/O).
#[cfg(test)]
pub fn parse_listen_with(text: &str, resolve: Resolve) -> Result<ListenSpec, String> {
    write_listen(text)?.resolve(resolve)
}

/// Parses one `--listen` value without looking any host name up.
pub fn write_listen(text: &str) -> Result<WrittenListen, String> {
    let (spec, options) = match text.split_once(';') {
        Some((spec, options)) => (spec, Some(options)),
        None => (text, None),
    };
    let (name, rest) = match spec.split_once('=') {
        Some((name, rest)) => {
            validate_name(name).map_err(|why| format!("{text:?}: {why}"))?;
            (Some(name.to_string()), rest)
        }
        None => (None, spec),
    };
    let target = parse_target(rest).map_err(|why| format!("{text:?}: {why}"))?;
    let mode = options
        .map(|options| parse_options(&target, options))
        .transpose()
        .map_err(|why| format!("{text:?}: {why}"))?;
    Ok(WrittenListen {
        target,
        name,
        backlog: DEFAULT_BACKLOG,
        mode,
        text: text.to_string(),
    })
}

/// The options after `;`: today only `mode=OCTAL`, for a Unix socket.
fn parse_options(target: &Target, options: &str) -> Result<u32, String> {
    let mode = options
        .strip_prefix("mode=")
        .ok_or("expected `;mode=OCTAL` after the address")?;
    if !matches!(target, Target::Address(Address::Unix(_))) {
        return Err("`;mode=` applies to unix sockets only".into());
    }
    parse_mode(mode)
}

/// Parses the address part alone (no `NAME=`).
#[cfg(test)]
pub fn parse_address(text: &str) -> Result<Address, String> {
    parse_address_with(text, resolve_host)
}

pub fn parse_address_with(text: &str, resolve: Resolve) -> Result<Address, String> {
    match parse_target(text)? {
        Target::Address(address) => Ok(address),
        Target::Host { host, port } => resolve(&host, port).map(Address::Tcp),
    }
}

/// Parses the address part alone, leaving a host name to look up later.
pub fn parse_target(text: &str) -> Result<Target, String> {
    if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("empty unix socket path".into());
        }
        // `;` separates listeners where they are handed to a new master.
        if path.contains([';', '\n']) {
            return Err("a unix socket path may not hold `;` or a newline".into());
        }
        // sun_path holds 108 bytes including the terminating NUL.
        if path.len() > 107 {
            return Err("unix socket path longer than 107 bytes".into());
        }
        return Ok(Target::Address(Address::Unix(PathBuf::from(path))));
    }
    if text.is_empty() {
        return Err("empty address".into());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        let port = parse_port(text)?;
        return Ok(Target::Address(Address::Tcp(SocketAddr::from((
            [0, 0, 0, 0],
            port,
        )))));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(Target::Address(Address::Tcp(addr)));
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or("expected PORT, HOST:PORT, [IPV6]:PORT or unix:PATH")?;
    if host.is_empty() || host.contains(':') || host.starts_with('[') {
        return Err("expected PORT, HOST:PORT, [IPV6]:PORT or unix:PATH".into());
    }
    let port = parse_port(port)?;
    Ok(Target::Host {
        host: host.to_string(),
        port,
    })
}

pub fn resolve_host(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve host {host:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("host {host:?} has no address"))
}

fn parse_port(text: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .map_err(|_| format!("bad port {text:?} (0 to 65535)"))
}

fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bad listener name {name:?} (letters, digits, '_', '-', '.'; at most 255)"
        ))
    }
}

/// Parses a Unix socket file mode written in octal, such as `0660` or `660`.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|mode| *mode <= 0o7777)
        .ok_or_else(|| format!("bad mode {text:?} (octal, e.g. 0660)"))
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(addr) => write!(f, "{addr}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl fmt::Display for ListenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = &self.name {
            write!(f, "{name}=")?;
        }
        write!(f, "{}", self.address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(text: &str) -> Address {
        Address::Tcp(text.parse().unwrap())
    }

    #[test]
    fn every_form() {
        assert_eq!(parse_address("8080").unwrap(), tcp("0.0.0.0:8080"));
        assert_eq!(parse_address("127.0.0.1:80").unwrap(), tcp("127.0.0.1:80"));
        assert_eq!(parse_address("[::1]:9000").unwrap(), tcp("[::1]:9000"));
        assert_eq!(
            parse_address("unix:/tmp/a.sock").unwrap(),
            Address::Unix("/tmp/a.sock".into())
        );
        let localhost = parse_address("localhost:8080").unwrap();
        assert!(matches!(localhost, Address::Tcp(a) if a.ip().is_loopback() && a.port() == 8080));
    }

    #[test]
    fn names() {
        let spec = parse_listen("web=127.0.0.1:8080").unwrap();
        assert_eq!(spec.name.as_deref(), Some("web"));
        assert_eq!(spec.to_string(), "web=127.0.0.1:8080");
        let spec = parse_listen("admin=unix:/run/a.sock").unwrap();
        assert_eq!(spec.fd_name(), "admin");
        assert_eq!(parse_listen("8080").unwrap().fd_name(), "unknown");
    }

    #[test]
    fn rejects_with_the_value() {
        for bad in [
            "",
            "70000",
            "x=",
            "=8080",
            "a:b=80",
            "unix:",
            "::1:80",
            "1.2.3.4:",
            "host:port",
        ] {
            let err = parse_listen(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
        let long = format!("unix:/{}", "x".repeat(200));
        assert!(parse_listen(&long).unwrap_err().contains("107"));
    }

    #[test]
    fn a_unix_socket_takes_its_mode_after_a_semicolon() {
        let spec = parse_listen("unix:/run/app.sock;mode=0660").unwrap();
        assert_eq!(spec.address, Address::Unix("/run/app.sock".into()));
        assert_eq!(spec.mode, Some(0o660));
        let spec = parse_listen("web=unix:/run/a,b=c.sock;mode=600").unwrap();
        assert_eq!(spec.name.as_deref(), Some("web"));
        assert_eq!(spec.address, Address::Unix("/run/a,b=c.sock".into()));
        assert_eq!(spec.mode, Some(0o600));
        assert_eq!(parse_listen("unix:/run/app.sock").unwrap().mode, None);
        for bad in [
            "127.0.0.1:80;mode=0660",
            "unix:/run/app.sock;mode=999",
            "unix:/run/app.sock;mode=",
            "unix:/run/app.sock;backlog=10",
            "unix:/run/app.sock;",
            "unix:/run/app.sock;mode=0660;mode=0600",
        ] {
            let err = parse_listen(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert!(parse_mode("999").is_err());
        assert!(parse_mode("77777").is_err());
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use crate::proptests::{config, mutated};
    use proptest::prelude::*;

    /// Host names resolve to a fixed address: no DNS in tests.
    fn no_dns(_host: &str, port: u16) -> Result<SocketAddr, String> {
        Ok(SocketAddr::from(([10, 0, 0, 1], port)))
    }

    /// Valid listeners with a stretch cut out and random text put in, or
    /// random text alone.
    fn listeners() -> impl Strategy<Value = String> {
        const SAMPLES: &[&str] = &[
            "8080",
            "127.0.0.1:80",
            "[::1]:9000",
            "unix:/tmp/a.sock",
            "web=127.0.0.1:8080",
            "admin=unix:/run/x.sock",
            "host.example:443",
            "[fe80::1%eth0]:80",
        ];
        mutated(SAMPLES, "[0-9.:\\[\\]abcdefx/unix=_@ ;%\n-]")
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn never_panics_and_names_the_value_on_one_line(text in listeners()) {
            // Parsed without lookups, then resolved, as the master does.
            if let Err(err) = write_listen(&text).and_then(|w| w.resolve(no_dns)) {
                prop_assert!(!err.contains('\n'), "multi-line error for {text:?}: {err:?}");
                prop_assert!(err.contains(&format!("{text:?}")), "{text:?}: {err}");
            }
        }

        #[test]
        fn a_failed_lookup_names_the_value(text in listeners()) {
            let failing: Resolve = |host, _| Err(format!("cannot resolve host {host:?}"));
            if let Err(err) = parse_listen_with(&text, failing) {
                prop_assert!(!err.contains('\n'), "multi-line error for {text:?}: {err:?}");
                prop_assert!(err.contains(&format!("{text:?}")), "{text:?}: {err}");
            }
        }
    }
}
