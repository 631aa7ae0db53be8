//! `forkmaster ready -p PIDFILE` during a fork-mode upgrade: the pid file
//! names the new master while its workers boot and the old master still
//! serves; an exec probe must not call that service down. Ready if either
//! master is, not ready once neither is.

use crate::support::*;
use nix::sys::signal::Signal;
use std::path::Path;

fn ready(pid_file: &Path) -> (i32, String) {
    let (code, out, err) = client(&["ready", "-p", pid_file.to_str().unwrap()], secs(10));
    (code, format!("{out}{err}"))
}

fn fork_upgrade_config(app: &App, env: &[(&str, &str)]) {
    let env = app.env_line(env);
    app.write_config(1, &format!("{env}upgrade_mode: fork\n"));
}

#[test]
fn ready_holds_through_a_fork_upgrade_while_the_new_workers_boot() {
    let app = App::new(1, "upgrade_mode: fork\n");
    let master = app.start();
    let old = master.pid();
    fork_upgrade_config(&app, &[("DEMO_BOOT_DELAY", "3s")]);
    master.signal(Signal::SIGUSR2);

    // Poll until the old master is gone; `ready` never says no meanwhile.
    let mut saw_new_booting = false;
    wait_for("the old master to retire", secs(60), || {
        let alive = master.exited().is_none();
        let named = read_pid(&app.pid_file);
        let (code, text) = ready(&app.pid_file);
        assert_eq!(code, 0, "ready said no during the upgrade: {text}");
        if alive && named.is_some_and(|pid| pid != old) && text.contains("old master") {
            saw_new_booting = true;
        }
        (!alive).then_some(())
    });
    assert!(saw_new_booting, "never saw the new master booting");
    let (code, text) = ready(&app.pid_file);
    assert_eq!(code, 0, "{text}");
}

#[test]
fn ready_fails_during_a_fork_upgrade_when_neither_master_is_ready() {
    let app = App::new(1, "");
    // The old master's workers boot only while no flag is there.
    let flag = app.dir.join("fail-boot");
    let script = format!("test -e '{}' && exit 3; exec '{}'", flag.display(), demo());
    app.write_config(
        1,
        &format!("upgrade_mode: fork\ncommand: ['/bin/sh', '-c', \"{script}\"]\n"),
    );
    let master = app.start();
    let old = master.pid();
    let worker: i32 = wait_serving(&app.target)["pid"].parse().unwrap();
    // The new master's workers never become ready.
    fork_upgrade_config(&app, &[("DEMO_NO_READY", "1")]);
    master.signal(Signal::SIGUSR2);
    wait_for("the new master's pid file", secs(20), || {
        read_pid(&app.pid_file).filter(|pid| *pid != old)
    });
    let (code, text) = ready(&app.pid_file);
    assert_eq!(code, 0, "the old master serves: {text}");

    // The old master's worker dies and cannot boot again. (Killed by pid:
    // a request could reach a worker of the new master.)
    std::fs::write(&flag, "").unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker), Signal::SIGKILL).unwrap();
    let text = wait_for("ready to say no", secs(20), || {
        let (code, text) = ready(&app.pid_file);
        assert_ne!(code, 3, "{text}");
        (code == 1).then_some(text)
    });
    assert!(text.contains(&format!("old master pid {old}")), "{text}");
}
