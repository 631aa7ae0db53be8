//! Workers' output and signals around it: `reopen-logs` signals no worker
//! unless `reopen_signal` asks for it, every worker's lines reach the files
//! whole (each worker has its own pipes), one event is one log line whatever
//! an argument holds, and a worker that fails before ready has its last
//! stderr lines in the reason `reload --wait` and `upgrade --wait` print.

use crate::support::*;
use std::collections::HashMap;
use std::path::Path;

/// A worker that records the signals it gets, in the order it gets them:
/// it blocks them and takes them one by one with sigwaitinfo, which hands
/// out standard signals before real-time ones. So once a test's real-time
/// marker is recorded, an earlier USR1 would have been recorded before it.
/// It says `armed` once the signals are blocked. Worker 1 never says
/// READY=1 when `PROBE_UNREADY` is set.
const SIGNAL_PROBE: &str = r#"
import os, signal, socket, sys
marker = signal.SIGRTMIN + 2
wanted = {signal.SIGUSR1, signal.SIGHUP, signal.SIGTERM, signal.SIGQUIT, signal.SIGINT, marker}
signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
sys.stderr.write("probe pid=%d armed\n" % os.getpid())
sys.stderr.flush()
unready = os.environ.get("PROBE_UNREADY") and os.environ["FORKMASTER_WORKER"] == "1"
if not unready:
    addr = os.environ["NOTIFY_SOCKET"]
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", addr)
while True:
    got = signal.sigwaitinfo(wanted).si_signo
    name = "MARKER" if got == marker else signal.Signals(got).name
    sys.stderr.write("probe pid=%d got=%s\n" % (os.getpid(), name))
    sys.stderr.flush()
    if got in (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT):
        sys.exit(0)
"#;

/// The real-time signal the probe takes as its marker (`SIGRTMIN + 2`).
fn marker() -> i32 {
    libc::SIGRTMIN() + 2
}

/// Starts two probes; sends `reopen-logs`; once the master has passed it
/// on (or not: its answer to `status` comes after), marks each probe and
/// returns the signals each recorded up to its marker.
fn signals_on_reopen(args: &[&str], unready: bool) -> HashMap<i32, Vec<String>> {
    let dir = TempDir::new();
    let pid_file = dir.join("app.pid");
    let mut fixture = Fixture::new(&dir)
        .workers(2)
        .unix("app.sock")
        .pid_file(&pid_file)
        .args(args)
        .command(&["python3", "-c", SIGNAL_PROBE]);
    if unready {
        fixture = fixture.env("PROBE_UNREADY=1");
    }
    let master = fixture.start();
    if unready {
        master.wait_log("event=ready", secs(20));
    } else {
        master.wait_ready();
    }
    let workers = master.children();
    assert_eq!(workers.len(), 2, "{workers:?}");
    // A probe still booting would die of the marker's default action.
    for &pid in &workers {
        master.wait_log(&format!("probe pid={pid} armed"), secs(20));
    }
    let pid_file = pid_file.to_str().unwrap();
    let (code, out, err) = client(&["reopen-logs", "-p", pid_file], secs(10));
    assert_eq!(code, 0, "{out}{err}");
    master.wait_log("event=reopen-logs", secs(10));
    // The master passes the signal on (or not) in the pass that logged
    // `reopen-logs`; it answers `status` in that pass or a later one.
    let (code, out, err) = client(&["status", "-p", pid_file], secs(10));
    assert_eq!(code, 0, "{out}{err}");
    for &pid in &workers {
        // SAFETY: kill(2) with plain numbers.
        assert_eq!(unsafe { libc::kill(pid, marker()) }, 0, "mark {pid}");
    }
    let mut got = HashMap::new();
    for &pid in &workers {
        let done = format!("probe pid={pid} got=MARKER");
        let log = master.wait_log(&done, secs(10));
        let prefix = format!("probe pid={pid} got=");
        let signals: Vec<String> = log
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(str::to_string)
            .collect();
        got.insert(pid, signals);
    }
    got
}

#[test]
fn reopen_logs_signals_no_worker_by_default() {
    for (pid, signals) in signals_on_reopen(&[], false) {
        assert_eq!(signals, ["MARKER"], "worker {pid}");
    }
}

#[test]
fn reopen_signal_reaches_ready_workers_only() {
    let got = signals_on_reopen(&["--reopen-signal", "USR1", "--ready-timeout", "5m"], true);
    let mut seen: Vec<Vec<String>> = got.into_values().collect();
    seen.sort();
    assert_eq!(
        seen,
        [vec!["MARKER"], vec!["SIGUSR1", "MARKER"]],
        "the booting worker got USR1, or the ready one did not"
    );
}

/// Writes `PROBE_LINES` lines of each length in `PROBE_SIZES` to stdout and
/// stderr, alternating, as `w<slot> <n> <len> <fill>`, the fill one letter
/// per worker; then `w<slot> done` and waits.
const LONG_LINES: &str = r#"
import os, signal, sys
slot = int(os.environ["FORKMASTER_WORKER"])
fill = chr(ord("a") + slot)
sizes = [int(s) for s in os.environ["PROBE_SIZES"].split(",")]
for n in range(int(os.environ["PROBE_LINES"])):
    for size in sizes:
        for stream in (sys.stdout.buffer, sys.stderr.buffer):
            stream.write(b"w%d %d %d %s\n" % (slot, n, size, fill.encode() * size))
            stream.flush()
for stream in (sys.stdout.buffer, sys.stderr.buffer):
    stream.write(b"w%d done\n" % slot)
    stream.flush()
signal.sigwait({signal.SIGTERM})
"#;

/// Every `w...` line of `path` is whole and from one worker; returns how
/// many lines each worker wrote.
fn check_lines(path: &Path, workers: usize) -> HashMap<String, usize> {
    let text = std::fs::read(path).unwrap();
    let mut counts = HashMap::new();
    for line in text.split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(line);
        if !line.starts_with('w') {
            continue;
        }
        let short: String = line.chars().take(80).collect();
        let parts: Vec<&str> = line.split(' ').collect();
        if parts.len() == 2 && parts[1] == "done" {
            continue;
        }
        assert_eq!(
            parts.len(),
            4,
            "spliced line ({} bytes): {short}",
            line.len()
        );
        let slot: usize = parts[0][1..].parse().unwrap_or_else(|_| panic!("{short}"));
        assert!(slot < workers, "{short}");
        let fill = char::from(b'a' + slot as u8);
        let size: usize = parts[2].parse().unwrap_or_else(|_| panic!("{short}"));
        assert_eq!(parts[3].len(), size, "cut line: {short}");
        assert!(
            parts[3].chars().all(|c| c == fill),
            "another worker's bytes in a line of worker {slot}: {short}"
        );
        *counts.entry(parts[0].to_string()).or_insert(0) += 1;
    }
    counts
}

#[test]
fn long_lines_from_many_workers_are_never_spliced() {
    let dir = TempDir::new();
    let (out, err) = (dir.join("out.log"), dir.join("err.log"));
    let workers = 4;
    let lines = 40;
    let mut master = Fixture::new(&dir)
        .workers(workers)
        .unix("app.sock")
        .ready("delay:1ms")
        .log_files(&out, &err)
        .env("PROBE_SIZES=20480,102400,100,5000")
        .env(&format!("PROBE_LINES={lines}"))
        .command(&["python3", "-c", LONG_LINES])
        .start();
    master.log_path = err.clone();
    for slot in 0..workers {
        wait_file(&out, &format!("w{slot} done"), secs(60));
        wait_file(&err, &format!("w{slot} done"), secs(60));
    }
    for path in [&out, &err] {
        let counts = check_lines(path, workers);
        for slot in 0..workers {
            assert_eq!(
                counts.get(&format!("w{slot}")),
                Some(&(lines * 4)),
                "{}: {counts:?}",
                path.display()
            );
        }
    }
}

#[test]
fn an_argument_with_a_newline_never_starts_a_log_line() {
    let dir = TempDir::new();
    let forged = "x\nevent=forged pid=1\r\nevent=forged2 \"q\"";
    let master = Fixture::new(&dir)
        .unix("app.sock")
        .command(&["/bin/sh", "-c", r#"exec "$0""#, demo(), forged])
        .start();
    let log = master.wait_ready();
    let start = log
        .lines()
        .find(|l| l.contains("event=start "))
        .unwrap_or_else(|| panic!("no start line:\n{log}"));
    assert!(
        start.contains("x\\nevent=forged pid=1\\r\\nevent=forged2"),
        "{start}"
    );
    for line in log.lines() {
        assert!(
            !line.starts_with("event=forged") && !line.trim_start().starts_with("event=forged"),
            "a forged line: {line:?}\nlog:\n{log}"
        );
        if line.contains("forged") {
            assert!(line.contains(" INFO forkmaster["), "{line:?}");
        }
    }
}

/// A command that prints an error to stderr and exits before ready.
const FAILS_AT_BOOT: &str = "command: ['/bin/sh', '-c', 'echo \"Traceback (most recent call last):\" >&2; echo \"ImportError: No module named app\" >&2; exit 1']\n";

#[test]
fn a_failed_reload_says_what_the_worker_wrote_to_stderr() {
    let app = App::new(1, "");
    let master = app.start();
    app.write_config(1, FAILS_AT_BOOT);
    let (code, out, err) = client(&["reload", "-c", app.cfg(), "--wait"], secs(60));
    assert_eq!(code, 1, "{out}{err}\nlog:\n{}", master.log());
    assert!(
        err.contains(
            "exited with status 1 before ready; last stderr: \"Traceback (most recent call last):\\nImportError: No module named app\""
        ),
        "{err}"
    );
    let log = master.wait_log("event=reload-failed", secs(10));
    assert!(log.contains("ImportError: No module named app"), "{log}");
}

#[test]
fn a_failed_upgrade_says_what_the_worker_wrote_to_stderr() {
    let app = App::new(1, "");
    let master = app.start();
    app.write_config(1, FAILS_AT_BOOT);
    let (code, out, err) = client(&["upgrade", "-c", app.cfg(), "--wait"], secs(60));
    assert_eq!(code, 1, "{out}{err}\nlog:\n{}", master.log());
    assert!(
        err.contains("before ready; last stderr: \"Traceback (most recent call last):\\nImportError: No module named app\""),
        "{err}"
    );
}
