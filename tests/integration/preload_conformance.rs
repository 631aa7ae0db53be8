//! The preload helpers against the protocol: contrib/preload/conformance.py
//! plays the master of docs/PRELOAD.md and checks each helper through its
//! conformance app, and is itself checked to fail a helper that breaks the
//! protocol.
//!
//! Ruby is not a build dependency: when it is missing the Ruby case says so
//! loudly and passes, unless `FORKMASTER_REQUIRE_REAL_SERVERS=1` (CI, which
//! installs it) makes it fail. The Python case runs once the Python helper
//! is in the tree.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Whether `program --version` runs.
fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

/// conformance.py against `command`; its whole output on stdout.
fn conformance(command: &[&str]) -> Output {
    let mut cmd = Command::new("python3");
    cmd.arg(repo_path("contrib/preload/conformance.py"))
        .arg("--hello-timeout")
        .arg(secs(30).as_secs().to_string())
        .arg("--timeout")
        .arg(secs(10).as_secs().to_string())
        .arg("--")
        .args(command)
        .current_dir(repo_path(""));
    run_command(cmd, secs(120))
}

fn assert_conforms(command: &[&str]) {
    let out = conformance(command);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{command:?} fails the conformance test ({}):\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(
        !stdout.contains("\nFAIL ") && stdout.contains(" passed, 0 failed"),
        "unexpected report:\n{stdout}"
    );
}

/// python3 runs conformance.py; without it nothing here can run.
fn python_present(test: &str) -> bool {
    if installed("python3") {
        return true;
    }
    skip_unless_required(&format!("{test}: python3 is not installed"));
    false
}

#[test]
fn ruby_helper_conforms() {
    if !python_present("ruby_helper_conforms") {
        return;
    }
    if !installed("ruby") {
        skip_unless_required("ruby_helper_conforms: ruby is not installed (apt-get install ruby)");
        return;
    }
    let app = repo_path("contrib/preload/conformance/app.rb");
    assert_conforms(&["ruby", app.to_str().expect("utf-8 path")]);
}

#[test]
fn python_helper_conforms() {
    if !repo_path("contrib/preload/python/forkmaster_preload.py").is_file() {
        // Not a missing peer: the helper is not in this tree (yet).
        return;
    }
    if !python_present("python_helper_conforms") {
        return;
    }
    let app = repo_path("contrib/preload/conformance/app.py");
    assert_conforms(&["python3", app.to_str().expect("utf-8 path")]);
}

/// A "helper" that says hello with the wrong version and the wrong pid must
/// fail, with both checks named: the conformance test is not blind.
#[test]
fn conformance_fails_a_broken_helper() {
    if !python_present("conformance_fails_a_broken_helper") {
        return;
    }
    let broken = "import json, os, socket\n\
                  s = socket.socket(fileno=int(os.environ['FORKMASTER_PRELOAD_FD']))\n\
                  s.send(json.dumps({'type': 'hello', 'version': 2, 'pid': 1}).encode())\n\
                  while s.recv(65536):\n    pass\n";
    let out = conformance(&["python3", "-c", broken]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "expected exit 1:\n{stdout}");
    for check in ["FAIL hello.version", "FAIL hello.pid"] {
        assert!(stdout.contains(check), "no {check:?} in:\n{stdout}");
    }
}
