//! The master as PID 1 of its own pid namespace, as a container's main
//! process runs (`unshare --pid --fork --mount-proc`, root only). The
//! kernel drops a signal to a namespace's init that has no handler, so each
//! documented signal is sent both from outside (the master's host pid) and
//! from inside (`nsenter ... kill -SIG 1`) and its effect checked; orphans
//! that land on the master are reaped; a stop leaves nothing in the
//! namespace; a client outside, reading the pid file written inside (pid
//! 1), refuses instead of signalling another process.

use crate::support::*;
use std::path::PathBuf;
use std::process::Command;

/// Where a signal comes from.
#[derive(Clone, Copy, Debug)]
enum From {
    /// The parent pid namespace, to the master's host pid.
    Outside,
    /// Inside the namespace, to pid 1.
    Inside,
}

const FROM: [From; 2] = [From::Outside, From::Inside];

/// A master running as PID 1 of a new pid namespace.
struct Pod {
    master: Master,
    /// The master's pid outside the namespace.
    host_pid: i32,
    pid_file: PathBuf,
    /// `/proc/<pid>/ns/pid` of the namespace, to find what runs in it.
    namespace: String,
}

/// Root is needed for a pid namespace; without it the test says so and
/// passes (CI runs as root).
fn can_unshare() -> bool {
    if !is_root() {
        skip_unless_required("a pid namespace needs root");
        return false;
    }
    true
}

fn start_pod(dir: &TempDir, workers: usize, extra: &[&str]) -> Pod {
    let pid_file = dir.join("app.pid");
    let pid_arg = pid_file.display().to_string();
    let mut args = vec!["-p", pid_arg.as_str(), "--log-level", "debug"];
    args.extend_from_slice(extra);
    let master = Fixture::new(dir)
        .workers(workers)
        .tcp()
        .args(&args)
        .through_shell(r#"exec unshare --pid --fork --mount-proc --kill-child "$0" "$@""#)
        .start();
    master.wait_ready();
    // `unshare` forks the master and waits for it: its one child.
    let unshare = master.pid();
    let host_pid = wait_for("the master under unshare", secs(10), || {
        children_of(unshare).first().copied()
    });
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).unwrap_or_default();
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .unwrap_or_default()
        .to_string();
    assert!(
        nspid.ends_with("\t1"),
        "the master is not PID 1 of its namespace: {nspid:?}"
    );
    let namespace = std::fs::read_link(format!("/proc/{host_pid}/ns/pid"))
        .expect("read the master's pid namespace")
        .display()
        .to_string();
    Pod {
        master,
        host_pid,
        pid_file,
        namespace,
    }
}

impl Pod {
    fn send(&self, signal: Signal, from: From) {
        match from {
            From::Outside => send_signal(self.host_pid, signal),
            From::Inside => {
                let name = signal.as_str().trim_start_matches("SIG");
                let out = run_command(self.inside(&["kill", &format!("-{name}"), "1"]), secs(10));
                // When the signal stops the master, the kernel may kill
                // `kill` (inside the namespace) as its PID 1 exits.
                use std::os::unix::process::ExitStatusExt;
                let ended_with_pid1 = out.status.signal() == Some(libc::SIGKILL);
                assert!(
                    out.status.success() || ended_with_pid1,
                    "kill -{name} 1 inside the namespace: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }

    /// A command run inside the namespace (its pids, its /proc).
    fn inside(&self, command: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.host_pid.to_string(), "-p", "-m", "--"])
            .args(command);
        cmd
    }

    /// Sends `signal` and waits until the log holds `effect` once more.
    fn expect(&self, signal: Signal, from: From, effect: &str) {
        let effect = in_source(effect);
        let before = self.master.log().matches(effect).count();
        self.send(signal, from);
        self.master.wait_log_count(effect, before + 1, secs(20));
    }

    /// Processes of the namespace, as (host pid, state).
    fn processes(&self) -> Vec<(i32, char)> {
        processes_in_namespace(&self.namespace)
    }
}

/// Every process whose pid namespace is `namespace`, as (host pid, state).
fn processes_in_namespace(namespace: &str) -> Vec<(i32, char)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/pid"))
                .is_ok_and(|ns| ns.display().to_string() == namespace)
        })
        .filter_map(|pid| Some((pid, proc_stat(pid)?.0)))
        .collect()
}

#[test]
fn every_documented_signal_reaches_the_master_as_pid1_from_outside_and_inside() {
    if !can_unshare() {
        return;
    }
    let dir = TempDir::new();
    let out = dir.join("out.log");
    let out_arg = out.display().to_string();
    let pod = start_pod(&dir, 1, &["--stdout-path", &out_arg]);
    for from in FROM {
        pod.expect(Signal::SIGTTIN, from, "event=scale signal=TTIN");
        pod.expect(Signal::SIGTTOU, from, "event=scale signal=TTOU");
        pod.expect(Signal::SIGHUP, from, "event=reload-done");
        pod.expect(Signal::SIGUSR1, from, "event=reopen-logs");
        pod.expect(Signal::SIGCHLD, from, "event=signal signal=CHLD");
        pod.expect(Signal::SIGWINCH, from, "event=scale signal=WINCH");
        pod.expect(Signal::SIGTTIN, from, "event=scale signal=TTIN workers=1");
    }
    assert!(pod.master.exited().is_none(), "the master exited");
}

#[test]
fn signals_without_meaning_are_logged_as_pid1_not_dropped() {
    if !can_unshare() {
        return;
    }
    let dir = TempDir::new();
    let pod = start_pod(&dir, 1, &[]);
    for from in FROM {
        for (signal, name) in [
            (Signal::SIGALRM, "ALRM"),
            (Signal::SIGPWR, "PWR"),
            (Signal::SIGTSTP, "TSTP"),
            (Signal::SIGVTALRM, "VTALRM"),
        ] {
            pod.expect(
                signal,
                from,
                &format!("event=signal signal={name} action=ignored"),
            );
        }
    }
    // Still serving, neither ended nor stopped by them.
    pod.expect(Signal::SIGTTIN, From::Inside, "event=scale signal=TTIN");
    let state = proc_stat(pod.host_pid).map(|s| s.0);
    assert!(
        matches!(state, Some('S' | 'R')),
        "TSTP must not stop the master: state {state:?}"
    );
}

#[test]
fn usr2_reaches_the_master_as_pid1_from_outside_and_inside() {
    if !can_unshare() {
        return;
    }
    for from in FROM {
        let dir = TempDir::new();
        let pod = start_pod(&dir, 1, &[]);
        // What the upgrade then does as PID 1 is the upgrade's business
        // (`upgrade_mode`); here: the signal is not dropped.
        pod.expect(Signal::SIGUSR2, from, "event=signal signal=USR2");
    }
}

#[test]
fn stop_signals_as_pid1_stop_and_leave_nothing_in_the_namespace() {
    if !can_unshare() {
        return;
    }
    let cases = [
        (Signal::SIGQUIT, "event=stop mode=graceful signal=QUIT"),
        (Signal::SIGTERM, "event=stop mode=quick signal=TERM"),
        (Signal::SIGINT, "event=stop mode=quick signal=INT"),
    ];
    for from in FROM {
        for (signal, effect) in cases {
            let dir = TempDir::new();
            let mut pod = start_pod(&dir, 2, &[]);
            assert!(pod.processes().len() >= 3, "master and 2 workers expected");
            pod.expect(signal, from, effect);
            let status = pod.master.wait_exit(secs(20));
            assert!(status.success(), "{signal} from {from:?}: {status}");
            assert!(
                pod.master.log().contains("event=exit status=0"),
                "{signal} from {from:?}: the master did not exit by itself:\n{}",
                pod.master.log_tail()
            );
            let left = pod.processes();
            assert!(left.is_empty(), "left in the namespace: {left:?}");
        }
    }
}

#[test]
fn orphans_of_a_double_forking_app_are_reaped_by_pid1() {
    if !can_unshare() {
        return;
    }
    let dir = TempDir::new();
    let marker = dir.join("grandchildren");
    // Each worker double-forks short-lived grandchildren before it execs
    // the app: their parent (the subshell) exits at once, so they are
    // re-parented to PID 1, the master, which must reap them.
    let script = format!(
        "for i in 1 2 3; do ( sleep 0.2 & echo $! >> {} ); done; exec \"$0\" \"$@\"",
        marker.display()
    );
    let pid_file = dir.join("app.pid");
    let pid_arg = pid_file.display().to_string();
    let master = Fixture::new(&dir)
        .workers(2)
        .tcp()
        .args(&["-p", &pid_arg])
        .command(&["/bin/sh", "-c", &script, demo()])
        .through_shell(r#"exec unshare --pid --fork --mount-proc --kill-child "$0" "$@""#)
        .start();
    master.wait_ready();
    let unshare = master.pid();
    let host_pid = wait_for("the master under unshare", secs(10), || {
        children_of(unshare).first().copied()
    });
    let namespace = std::fs::read_link(format!("/proc/{host_pid}/ns/pid"))
        .expect("namespace")
        .display()
        .to_string();
    wait_for("six grandchildren started", secs(10), || {
        (file_text(&marker).lines().count() >= 6).then_some(())
    });
    // Once the sleeps are over, nothing but the master and its workers is
    // left: no zombie, no sleep.
    let left = wait_for("the grandchildren reaped", secs(10), || {
        let procs = processes_in_namespace(&namespace);
        let zombies = procs.iter().filter(|(_, s)| *s == 'Z').count();
        (zombies == 0 && procs.len() == 3).then_some(procs)
    });
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(master.exited().is_none());
}

#[test]
fn a_client_outside_the_namespace_refuses_the_pid_written_inside() {
    if !can_unshare() {
        return;
    }
    let dir = TempDir::new();
    let pod = start_pod(&dir, 1, &[]);
    let pid_arg = pod.pid_file.display().to_string();
    assert_eq!(read_pid(&pod.pid_file), Some(1));
    for command in ["status", "stop", "reload", "reopen-logs"] {
        let (code, _, stderr) = client(&[command, "-p", &pid_arg], secs(10));
        assert_eq!(code, 3, "{command} outside: {stderr}");
        assert!(
            stderr.contains("refusing pid 1") && stderr.contains("nothing was signalled"),
            "{command}: {stderr}"
        );
        assert!(
            stderr.contains("another pid namespace"),
            "{command}: {stderr}"
        );
    }
    assert_no_event(&pod.master.log(), "stop");
    assert_no_event(&pod.master.log(), "reload");
    // Inside the namespace the same client finds it.
    let out = run_command(
        pod.inside(&[forkmaster(), "status", "-p", &pid_arg]),
        secs(10),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("pid=1 "), "{stdout}");
    // And stops it. A process inside the namespace is killed by the kernel
    // when its PID 1 exits: a client still there at that moment too (so
    // not `stop --wait`).
    use std::os::unix::process::ExitStatusExt;
    let mut pod = pod;
    let out = run_command(
        pod.inside(&[forkmaster(), "stop", "-p", &pid_arg]),
        secs(10),
    );
    let ended_with_pid1 = out.status.signal() == Some(libc::SIGKILL);
    assert!(out.status.success() || ended_with_pid1, "{out:?}");
    let status = pod.master.wait_exit(secs(30));
    assert!(status.success(), "{status}");
    assert!(!pod.pid_file.exists(), "the pid file was left");
}
