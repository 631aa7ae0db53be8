//! The pod lifecycle harness (bench/pods.py) in small: forkmaster as PID 1
//! of a pid namespace per pod, behind readiness probes and an endpoint
//! list with propagation lag, through reloads, a pod replacement and (once
//! upgrades happen in place) an upgrade under client load. No request may
//! fail, no zombie linger, nothing be left.

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
    // An upgrade as PID 1 keeps the pod only when it happens in place:
    // once the binary knows `--upgrade-mode`, one runs too.
    let help = run_command(
        {
            let mut help = Command::new(forkmaster());
            help.arg("--help");
            help
        },
        secs(10),
    );
    let in_place = String::from_utf8_lossy(&help.stdout).contains("--upgrade-mode");
    let upgrades = if in_place { "1" } else { "0" };
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .args(["--reloads", "2", "--replacements", "1", "--clients", "2"])
        .args(["--upgrades", upgrades])
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
    let scenarios: &[&str] = if in_place {
        &["reloads", "replacements", "upgrades"]
    } else {
        &["reloads", "replacements"]
    };
    for scenario in scenarios {
        assert!(
            stdout.lines().any(|l| l.starts_with(scenario)),
            "no {scenario} row:\n{stdout}"
        );
    }
}
