//! Configuration errors and `--check`: every bad flag, key or file stops
//! forkmaster before it binds anything, with exit code 1 and one line on
//! stderr (`forkmaster: ...`) naming the flag, key or file and the value;
//! unknown flags are clap's usage errors (exit code 2). Never a panic.

use crate::support::*;
use std::net::TcpListener;
use std::path::Path;
use std::process::Output;

/// Asserts that `out` is a clean failure with exit code `code`: nothing on
/// stdout, exactly one stderr line starting `forkmaster: ` and holding every
/// needle, and no panic. Returns that line.
pub(crate) fn assert_one_line_error(out: &Output, code: i32, needles: &[&str]) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!(
        "status: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert_eq!(out.status.code(), Some(code), "{context}");
    assert!(stdout.is_empty(), "nothing belongs on stdout; {context}");
    assert!(!stderr.contains("panicked"), "{context}");
    assert!(
        stderr.ends_with('\n') && stderr.lines().count() == 1,
        "expected exactly one stderr line; {context}"
    );
    let line = stderr.trim_end().to_string();
    assert!(line.starts_with("forkmaster: "), "{context}");
    for needle in needles {
        assert!(line.contains(needle), "missing {needle:?}; {context}");
    }
    line
}

/// Runs forkmaster with `args`, which must be rejected before anything starts.
fn reject(args: &[&str]) -> Output {
    run(args, secs(10))
}

fn write_config(path: &Path, text: &str) -> String {
    std::fs::write(path, text).expect("write config");
    path.display().to_string()
}

#[test]
fn unknown_config_key_names_the_file_the_key_and_the_line() {
    let dir = TempDir::new();
    let cfg = write_config(
        &dir.join("app.yml"),
        "workers: 2\nlisten: ['127.0.0.1:0']\nbogus_key: 1\n",
    );
    let out = reject(&["-c", &cfg, "--", demo()]);
    assert_one_line_error(
        &out,
        1,
        &[&format!("config {cfg}: "), "line 3", "`bogus_key`"],
    );
}

#[test]
fn bad_duration_flag_names_the_flag_and_the_value() {
    let out = reject(&["-l", "127.0.0.1:0", "--ready-timeout", "soon", "--", demo()]);
    assert_one_line_error(&out, 1, &["forkmaster: --ready-timeout \"soon\""]);
    let out = reject(&[
        "-l",
        "127.0.0.1:0",
        "--graceful-timeout",
        "30",
        "--",
        demo(),
    ]);
    assert_one_line_error(
        &out,
        1,
        &["forkmaster: --graceful-timeout \"30\"", "missing unit"],
    );
}

#[test]
fn bad_duration_in_config_file_names_the_file_the_key_and_the_value() {
    let dir = TempDir::new();
    let cfg = write_config(
        &dir.join("app.yml"),
        "listen: ['127.0.0.1:0']\nready_timeout: 30x\n",
    );
    let out = reject(&["-c", &cfg, "--", demo()]);
    assert_one_line_error(
        &out,
        1,
        &[&format!("forkmaster: config {cfg}: ready_timeout: \"30x\"")],
    );
}

#[test]
fn bad_listen_address_names_the_value_in_flag_and_file() {
    let out = reject(&["-l", "nope", "--", demo()]);
    assert_one_line_error(&out, 1, &["forkmaster: --listen \"nope\""]);
    let out = reject(&["-l", "127.0.0.1:70000", "--", demo()]);
    assert_one_line_error(&out, 1, &["--listen \"127.0.0.1:70000\"", "70000"]);

    let dir = TempDir::new();
    let cfg = write_config(&dir.join("app.yml"), "listen: ['host:port']\n");
    let out = reject(&["-c", &cfg, "--", demo()]);
    assert_one_line_error(
        &out,
        1,
        &[&format!("forkmaster: config {cfg}: listen: \"host:port\"")],
    );
}

#[test]
fn bad_workers_count_names_the_flag_and_the_value() {
    let out = reject(&["-l", "127.0.0.1:0", "-w", "many", "--", demo()]);
    assert_one_line_error(&out, 1, &["forkmaster: --workers \"many\""]);
    let out = reject(&["-l", "127.0.0.1:0", "--workers", "99999", "--", demo()]);
    assert_one_line_error(&out, 1, &["forkmaster: --workers \"99999\""]);
}

#[test]
fn bad_stop_signal_names_the_flag_and_the_value() {
    let out = reject(&["-l", "127.0.0.1:0", "--stop-signal", "NOPE", "--", demo()]);
    assert_one_line_error(&out, 1, &["forkmaster: --stop-signal \"NOPE\""]);
    // SIGKILL cannot be caught, so it can never be a graceful stop.
    let out = reject(&["-l", "127.0.0.1:0", "--stop-signal", "KILL", "--", demo()]);
    assert_one_line_error(
        &out,
        1,
        &["forkmaster: --stop-signal \"KILL\"", "cannot be caught"],
    );
}

#[test]
fn watchdog_timeout_without_ready_notify_is_rejected() {
    let out = reject(&["-l", "127.0.0.1:0", "--timeout", "5s", "--", demo()]);
    // A whole-config check: it names the key and what it needs, not the flag.
    assert_one_line_error(&out, 1, &["forkmaster: timeout: ", "ready: notify"]);
}

#[test]
fn missing_command_is_rejected_with_or_without_the_separator() {
    for args in [&["-l", "127.0.0.1:0"][..], &["-l", "127.0.0.1:0", "--"][..]] {
        let out = reject(args);
        assert_one_line_error(&out, 1, &["forkmaster: missing command", "--"]);
    }
}

#[test]
fn no_listener_is_rejected() {
    let out = reject(&["--ready", "notify", "--", demo()]);
    assert_one_line_error(&out, 1, &["forkmaster: no listener", "--listen"]);
}

#[test]
fn nonexistent_config_file_is_named() {
    let dir = TempDir::new();
    let missing = dir.join("missing.yml").display().to_string();
    let out = reject(&["-c", &missing, "-l", "127.0.0.1:0", "--", demo()]);
    assert_one_line_error(
        &out,
        1,
        &[&format!(
            "forkmaster: config {missing}: no such file or directory"
        )],
    );
}

#[test]
fn unknown_flag_is_a_usage_error_with_exit_code_2() {
    let out = reject(&["--bogus-flag", "-l", "127.0.0.1:0", "--", demo()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(out.stdout.is_empty());
    assert!(stderr.contains("--bogus-flag"), "{stderr}");
    assert_no_panic(&stderr);
}

#[test]
fn check_prints_what_would_run_and_binds_nothing() {
    let dir = TempDir::new();
    // Held open for the whole run: a --check that bound the port would fail
    // with "address already in use" instead of exiting 0.
    let held = TcpListener::bind("127.0.0.1:0").expect("bind a port to hold");
    let addr = held.local_addr().expect("local_addr");
    let sock = dir.join("api.sock");
    let pid = dir.join("app.pid");
    let out = run(
        &[
            "-t",
            "-l",
            &addr.to_string(),
            "-l",
            &format!("api=unix:{}", sock.display()),
            "-w",
            "3",
            "-p",
            &pid.display().to_string(),
            "--ready",
            "notify",
            "--",
            demo(),
            "--boot-delay",
            "1s",
        ],
        secs(10),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!(
        "status: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert_eq!(out.status.code(), Some(0), "{context}");
    assert!(stderr.is_empty(), "{context}");
    let lines: Vec<&str> = stdout.lines().collect();
    for expected in [
        format!("listen: fd=3 {addr} name=unknown backlog=1024"),
        format!("listen: fd=4 unix:{} name=api backlog=1024", sock.display()),
        "workers: 3".to_string(),
        format!("command: {} --boot-delay 1s", demo()),
        "ready: notify".to_string(),
        format!("pid: {}", pid.display()),
    ] {
        assert!(
            lines.contains(&expected.as_str()),
            "no {expected:?}; {context}"
        );
    }
    assert_eq!(lines.last(), Some(&"configuration ok"), "{context}");
    assert!(!sock.exists(), "--check created the unix socket");
    assert!(!pid.exists(), "--check wrote the pid file");
    drop(held);
}

#[test]
fn check_of_a_config_file_names_it_and_applies_the_flags() {
    let dir = TempDir::new();
    let cfg = write_config(
        &dir.join("app.yml"),
        &format!(
            "listen: ['127.0.0.1:0']\nworkers: 4\nenv: {{A: file}}\ncommand: ['{}']\n",
            demo()
        ),
    );
    let out = run(&["--check", "-c", &cfg, "-w", "2"], secs(10));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let context = format!(
        "status: {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{context}");
    let lines: Vec<&str> = stdout.lines().collect();
    for expected in [
        format!("config: {cfg}"),
        "listen: fd=3 127.0.0.1:0 name=unknown backlog=1024".to_string(),
        "workers: 2".to_string(),
        "env: A=file".to_string(),
        format!("command: {}", demo()),
        "configuration ok".to_string(),
    ] {
        assert!(
            lines.contains(&expected.as_str()),
            "no {expected:?}; {context}"
        );
    }
}

#[test]
fn check_of_an_invalid_config_exits_1_with_one_line() {
    let out = run(&["-t", "-l", "nope", "--", demo()], secs(10));
    assert_one_line_error(&out, 1, &["forkmaster: --listen \"nope\""]);
    let dir = TempDir::new();
    let cfg = write_config(&dir.join("app.yml"), "listen: [8080]\nworkres: 2\n");
    let out = run(&["-t", "-c", &cfg, "--", demo()], secs(10));
    assert_one_line_error(&out, 1, &[&format!("config {cfg}: "), "`workres`"]);
}
