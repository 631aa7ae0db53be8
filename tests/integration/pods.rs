//! The pod lifecycle harness (bench/pods.py) in small: forkmaster as PID 1
//! of a pid namespace per pod, behind readiness probes and an endpoint
//! list with propagation lag, through reloads and a pod replacement under
//! client load. No request may fail, no zombie linger, nothing be left.

use crate::support::*;
use std::path::Path;
use std::process::Command;

#[test]
fn pods_survive_reloads_and_a_replacement_without_a_failed_request() {
    if !is_root() {
        skip_unless_required("the pod harness needs root (pid namespaces)");
        return;
    }
    if Command::new("python3").arg("--version").output().is_err() {
        skip_unless_required("the pod harness needs python3");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/pods.py");
    let bin_dir = Path::new(forkmaster()).parent().expect("binary dir");
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .args(["--reloads", "2", "--replacements", "1", "--clients", "2"])
        .args(["--shutdown-delay", "1", "--lag", "0.3", "--gap", "0.2"])
        .arg("--bin")
        .arg(bin_dir);
    let out = run_command(cmd, secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench/pods.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("failed requests: 0; other failures: 0"),
        "{stdout}\n{stderr}"
    );
    for scenario in ["reloads", "replacements"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(scenario)),
            "no {scenario} row:\n{stdout}"
        );
    }
}
