//! `forkmaster-demo`: the demo worker that forkmaster runs in the README, and the probe the
//! integration tests use.
//!
//! A small HTTP/1.1 server (see `http` for the framing and `routes` for what each path
//! answers): `GET /` says `pid=.. worker=.. generation=.. token=..`, other paths sleep,
//! crash, exit, or show what the process inherited.
//!
//! Listeners: the inherited fds `3..3+LISTEN_FDS` (TCP or Unix, when `LISTEN_PID` is unset or
//! ours), else `--listen ADDR` (repeatable; `HOST:PORT` or `unix:/path`; default `127.0.0.1:8080`).
//!
//! Boot: the token comes from `--token-file`/`DEMO_TOKEN_FILE` (read once), else `DEMO_TOKEN`,
//! else `none`. After `--boot-delay`/`DEMO_BOOT_DELAY` it exits with `DEMO_FAIL_BOOT` if that is
//! set (only in slot `DEMO_FAIL_WORKER` if that is set too), else starts serving and sends
//! `READY=1` to `NOTIFY_SOCKET` (unless `DEMO_NO_READY=1`).
//! With `DEMO_ALLOC_MB=N` it first holds N MiB of private memory (see `ballast`).
//! With `WATCHDOG_USEC` it sends `WATCHDOG=1` every third of that interval.
//!
//! Signals: TERM/QUIT stop gracefully (no new connections, in-flight requests finish, keep-alive
//! connections are closed, exit 0); INT exits 0 at once; HUP and USR1 are only logged.
//! Logging is one `demo pid=.. worker=.. event=..` line per event on stderr.

#[macro_use]
mod logging;

mod accept;
mod app;
mod args;
mod ballast;
mod config;
mod conn;
mod drain;
mod http;
mod listen_fds;
mod listener;
mod notify;
mod routes;
mod serve;
mod signals;
mod snapshot;
mod watchdog;

use app::App;
use config::env_nonempty;
use drain::Drain;
use listener::{bind, Listener};
use notify::Notifier;
use std::process;
use std::sync::atomic::AtomicBool;
use std::thread;

fn main() {
    let fds = snapshot::snapshot_fds(); // first, before anything else opens a descriptor
    let pdeathsig = snapshot::read_pdeathsig();
    signals::prepare_signals();
    let signals =
        signals::install().unwrap_or_else(|e| fatal!("cannot install signal handlers: {e}"));
    let args = args::parse_args();
    let pid = process::id();
    let worker = env_nonempty("FORKMASTER_WORKER").unwrap_or_else(|| "-".into());
    let generation = env_nonempty("FORKMASTER_GENERATION").unwrap_or_else(|| "-".into());
    logging::set_prefix(pid, &worker);
    let boot = config::load_boot(args.token_file, args.boot_delay, &worker);
    let listeners = open_listeners(&args.listen);
    let drain = Drain::new().unwrap_or_else(|e| fatal!("cannot create stop pipe: {e}"));

    let token = boot.token;
    let app: &'static App = Box::leak(Box::new(App {
        body: format!("pid={pid} worker={worker} generation={generation} token={token}\n"),
        fds,
        pdeathsig,
        notifier: Notifier::new(env_nonempty("NOTIFY_SOCKET")),
        hang_watchdog: AtomicBool::new(false),
        drain,
    }));
    spawn("signals", "signal", move || {
        signals::signal_loop(app, signals)
    });
    if let Some(interval) = watchdog::ping_interval(pid, app.notifier.is_connected()) {
        spawn("watchdog", "watchdog", move || {
            watchdog::ping_loop(app, interval)
        });
    }
    for l in &listeners {
        log!("event=listen fd={} addr={}", l.fd(), l.describe());
    }

    if !boot.delay.is_zero() {
        log!("event=booting delay_ms={}", boot.delay.as_millis());
        app.drain.wait_unless_stopped(boot.delay);
    }
    if app.drain.is_stopping() {
        app.drain.exit_when_stopped();
    }
    if let Some(mb) = env_nonempty("DEMO_ALLOC_MB") {
        let mb = mb
            .trim()
            .parse()
            .unwrap_or_else(|_| fatal!("invalid DEMO_ALLOC_MB={mb:?}"));
        match ballast::grow(mb) {
            Ok(total) => log!("event=alloc mb={total}"),
            Err(e) => fatal!("DEMO_ALLOC_MB: {e}"),
        }
    }
    if let Some(status) = boot.fail_status {
        log!("event=boot-failed status={status} error=DEMO_FAIL_BOOT");
        process::exit(status);
    }
    for l in listeners {
        spawn("accept", "accept", move || accept::accept_loop(app, l));
    }
    if !boot.no_ready {
        if let Err(e) = app.notifier.send("READY=1\nSTATUS=serving\n") {
            log!("event=notify-error error={e:?}");
        }
    }
    log!(
        "event=ready token={token} notified={}",
        !boot.no_ready && app.notifier.is_connected()
    );
    app.drain.exit_when_stopped();
}

/// The inherited listeners, else the `--listen` addresses, else `127.0.0.1:8080`;
/// exits 1 with a message if one cannot be used.
fn open_listeners(addrs: &[String]) -> Vec<Listener> {
    match listen_fds::inherited_listeners() {
        Ok(Some(listeners)) => listeners,
        Ok(None) if addrs.is_empty() => {
            vec![bind("127.0.0.1:8080").unwrap_or_else(|e| fatal!("{e}"))]
        }
        Ok(None) => addrs
            .iter()
            .map(|a| bind(a).unwrap_or_else(|e| fatal!("{e}")))
            .collect(),
        Err(e) => fatal!("{e}"),
    }
}

/// Starts the thread named `name`; exits 1 with "cannot spawn `what` thread" if it cannot.
fn spawn(name: &str, what: &str, f: impl FnOnce() + Send + 'static) {
    thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .unwrap_or_else(|e| fatal!("cannot spawn {what} thread: {e}"));
}
