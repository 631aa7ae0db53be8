//! USR2 in place (`upgrade_mode: in-place`, or `auto` as PID 1): the master
//! execs the new binary itself and keeps its pid, its pid file and its
//! workers, which the new image rolls over to the new generation.

use crate::fixture::Fixture;
use crate::support::*;
use nix::sys::signal::Signal;
use serde_json::Value;

const IN_PLACE: &str = "upgrade_mode: in-place\n";

/// `forkmaster upgrade -p PIDFILE --wait`: (exit code, stdout + stderr).
fn upgrade_wait(app: &App) -> (i32, String) {
    let pid_file = app.pid_file.to_str().unwrap();
    let (code, out, err) = client(&["upgrade", "-p", pid_file, "--wait"], secs(120));
    (code, format!("{out}{err}"))
}

/// The workers' pids, sorted.
fn pids(status: &Value) -> Vec<i64> {
    let mut pids: Vec<i64> = App::worker_pids(status)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    pids.sort();
    pids
}

fn generations(status: &Value) -> Vec<u64> {
    status["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| w["generation"].as_u64().unwrap())
        .collect()
}

/// Waits until the master serves with `n` ready workers, all of `generation`.
fn wait_serving_generation(app: &App, n: usize, generation: u64) -> Value {
    app.wait_status("every worker ready in one generation", secs(30), |s| {
        s["ready"].as_u64() == Some(n as u64)
            && s["phase"] == "running"
            && generations(s) == vec![generation; n]
    })
}

#[test]
fn usr2_in_place_under_load_keeps_the_pid_and_fails_no_request() {
    let app = App::new(3, IN_PLACE);
    let mut master = app.start();
    let pid = master.pid();
    let before = wait_serving_generation(&app, 3, 1);
    let old_workers = pids(&before);
    let load = Load::start(&app.target, 2);
    load.wait_answers(20);
    app.set_token("in-place-1");

    let (code, out) = upgrade_wait(&app);
    assert_eq!(code, 0, "{out}\n{}", master.log());
    assert!(
        out.starts_with(&format!(
            "upgraded in place: pid {pid} (unchanged), generation 1 -> 2"
        )),
        "{out}"
    );
    load.wait_answers(20);
    let answers = load.finish_without_failures();
    assert!(
        answers.contains_key("2"),
        "no answer from generation 2: {answers:?}"
    );

    assert_eq!(app.master_pid(), pid, "the pid file still names the master");
    assert_no_file(&app.oldbin());
    let after = app.status();
    assert_eq!(after["pid"].as_i64(), Some(pid as i64));
    assert_eq!(after["generation"].as_u64(), Some(2));
    assert_eq!(generations(&after), vec![2; 3]);
    assert_eq!(after["upgrade"]["state"], "done");
    for old in &old_workers {
        assert!(!is_running(*old as i32), "old worker {old} still runs");
    }
    assert_eq!(app.token_served(), "in-place-1");
    assert!(zombie_children_of(pid).is_empty());
    let log = master.log();
    assert!(
        log.contains("event=upgrade mode=in-place reason=configured"),
        "{log}"
    );
    assert_no_event(&log, "upgrade-failed");
    assert_master_running(&mut master);

    // And again: the new image upgrades in place as the old one did, and
    // hands over no more fds than it took.
    let fds = fd_count(pid);
    let (code, out) = upgrade_wait(&app);
    assert_eq!(code, 0, "{out}\n{}", master.log());
    assert!(out.contains("generation 2 -> 3"), "{out}");
    wait_serving_generation(&app, 3, 3);
    assert_eq!(fd_count(pid), fds, "the master's fd count changed");
}

#[test]
fn a_config_the_new_binary_refuses_fails_the_check_and_changes_nothing() {
    let app = App::new(2, IN_PLACE);
    let mut master = app.start();
    let pid = master.pid();
    let before = wait_serving_generation(&app, 2, 1);

    app.write_config(2, &format!("{IN_PLACE}no_such_key: 1\n"));
    let (code, out) = upgrade_wait(&app);
    assert_eq!(code, 1, "{out}\n{}", master.log());
    assert!(
        out.contains("upgrade failed: check of the new binary"),
        "{out}"
    );
    assert!(out.contains("no_such_key"), "{out}");
    let after = wait_serving_generation(&app, 2, 1);
    assert_eq!(pids(&after), pids(&before), "the old workers serve on");
    assert_eq!(after["upgrade"]["state"], "failed");
    assert_no_event(&master.log(), "upgrade-exec");

    // A missing app binary is refused by the same check.
    app.write_config(2, &format!("{IN_PLACE}command: ['/nonexistent/app']\n"));
    let (code, out) = upgrade_wait(&app);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("/nonexistent/app"), "{out}");
    assert_eq!(pids(&wait_serving_generation(&app, 2, 1)), pids(&before));

    // Fixed: the next upgrade goes through.
    app.write_config(2, IN_PLACE);
    let (code, out) = upgrade_wait(&app);
    assert_eq!(code, 0, "{out}\n{}", master.log());
    wait_serving_generation(&app, 2, 2);
    assert_eq!(app.master_pid(), pid);
    assert_master_running(&mut master);
}

#[test]
fn a_missing_new_binary_fails_the_check_and_changes_nothing() {
    let app = App::new(2, IN_PLACE);
    let bin = app.dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let link = bin.join("forkmaster");
    std::os::unix::fs::symlink(forkmaster(), &link).unwrap();
    let mut master = app.start_program(&link);
    let before = wait_serving_generation(&app, 2, 1);
    std::fs::remove_file(&link).unwrap();
    let (code, out) = upgrade_wait(&app);
    assert_eq!(code, 1, "{out}\n{}", master.log());
    assert!(
        out.contains(&format!(
            "check {}: no such file or directory",
            link.display()
        )),
        "{out}"
    );
    assert_eq!(pids(&wait_serving_generation(&app, 2, 1)), pids(&before));
    assert_eq!(app.master_pid(), master.pid());
    assert_master_running(&mut master);
}

#[test]
fn a_new_generation_that_fails_rolls_back_to_the_old_workers() {
    let app = App::new(2, &format!("{IN_PLACE}ready_timeout: 1s\n"));
    let mut master = app.start();
    let pid = master.pid();
    let before = wait_serving_generation(&app, 2, 1);

    // Never ready (yet serving: no load here, the requests it took die
    // with it): killed at the ready timeout, after the exec.
    app.write_config(
        2,
        &format!(
            "{IN_PLACE}ready_timeout: 1s\n{}",
            app.env_line(&[("DEMO_NO_READY", "1")])
        ),
    );
    let (code, out) = upgrade_wait(&app);
    assert_eq!(code, 1, "{out}\n{}", master.log());
    assert!(out.contains("upgrade failed"), "{out}");
    assert!(out.contains(&format!("pid {pid} keeps serving")), "{out}");
    let after = wait_serving_generation(&app, 2, 1);
    assert_eq!(pids(&after), pids(&before), "the old workers serve on");
    assert!(master.log().contains("event=upgrade-exec mode=in-place"));

    // Crashing at boot: the same, and not one request fails meanwhile.
    let load = Load::start(&app.target, 2);
    load.wait_answers(10);
    app.write_config(
        2,
        &format!("{IN_PLACE}ready_timeout: 1s\ncommand: ['/bin/false']\n"),
    );
    let (code, out) = upgrade_wait(&app);
    assert_eq!(code, 1, "{out}\n{}", master.log());
    assert_eq!(pids(&wait_serving_generation(&app, 2, 1)), pids(&before));
    load.wait_answers(10);
    load.finish_without_failures();

    // An old worker that dies is respawned with the old configuration (the
    // demo app, ready), not the failed one.
    let victim = pids(&before)[0];
    send_signal(victim as i32, Signal::SIGKILL);
    app.wait_status("the old worker replaced", secs(30), |s| {
        s["ready"].as_u64() == Some(2) && !pids(s).contains(&victim)
    });

    app.write_config(2, &format!("{IN_PLACE}ready_timeout: 1s\n"));
    let (code, out) = upgrade_wait(&app);
    assert_eq!(code, 0, "{out}\n{}", master.log());
    let done = app.status();
    assert_eq!(done["pid"].as_i64(), Some(pid as i64));
    assert_eq!(
        generations(&done),
        vec![done["generation"].as_u64().unwrap(); 2]
    );
    assert_master_running(&mut master);
}

/// Starts the master as `forkmaster` found on PATH, a script that runs
/// `step` when exec'd by an in-place upgrade (not for its `-t`), then execs
/// the real binary: a hook inside the exec, at the master's own pid.
fn start_wrapped(app: &App, step: &str) -> Master {
    let bin = app.dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let wrapper = bin.join("forkmaster");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ -n \"$FORKMASTER_INPLACE_STATE\" ]; then {step}; fi\nexec '{}' \"$@\"\n",
            forkmaster()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    app.fixture()
        .setup(move |cmd| {
            use std::os::unix::process::CommandExt;
            cmd.arg0("forkmaster").env("PATH", path);
        })
        .start()
}

#[test]
fn a_config_broken_after_the_check_leaves_the_old_workers_serving() {
    let app = App::new(2, IN_PLACE);
    // Broken once, between the check and the new image's start.
    let broken = app.dir.join("broken.yml");
    std::fs::write(&broken, format!("{IN_PLACE}no_such_key: 1\n")).unwrap();
    let mut master = start_wrapped(
        &app,
        &format!(
            "[ -f '{0}' ] && mv '{0}' '{1}'",
            broken.display(),
            app.config.display()
        ),
    );
    master.wait_ready();
    let pid = master.pid();
    let before = wait_serving_generation(&app, 2, 1);
    let (code, out) = upgrade_wait(&app);
    assert_eq!(code, 1, "{out}\n{}", master.log());
    assert!(out.contains("the new configuration"), "{out}");
    assert!(out.contains("no_such_key"), "{out}");
    let after = wait_serving_generation(&app, 2, 1);
    assert_eq!(pids(&after), pids(&before), "the old workers serve on");
    assert_eq!(after["pid"].as_i64(), Some(pid as i64));

    // The old workers are supervised with the old configuration.
    let victim = pids(&before)[0];
    send_signal(victim as i32, Signal::SIGKILL);
    app.wait_status("the old worker replaced", secs(30), |s| {
        s["ready"].as_u64() == Some(2) && !pids(s).contains(&victim)
    });
    app.write_config(2, IN_PLACE);
    let (code, out) = upgrade_wait(&app);
    assert_eq!(code, 0, "{out}\n{}", master.log());
    wait_serving_generation(&app, 2, 2);
    assert_master_running(&mut master);
}

#[test]
fn an_upgrade_in_place_keeps_the_pid_file() {
    let app = App::new(2, IN_PLACE);
    let mut master = app.start();
    let before = wait_serving_generation(&app, 2, 1);
    let moved = app.dir.join("moved.pid");
    app.write_config(2, &format!("{IN_PLACE}pid: {}\n", moved.display()));
    let (code, out) = upgrade_wait(&app);
    assert_eq!(code, 1, "{out}\n{}", master.log());
    assert!(out.contains("an upgrade keeps the pid file"), "{out}");
    assert_eq!(pids(&wait_serving_generation(&app, 2, 1)), pids(&before));
    assert_eq!(app.master_pid(), master.pid());
    assert_no_file(&moved);
    assert_master_running(&mut master);
}

#[test]
fn a_worker_that_dies_during_the_exec_is_reaped_by_the_new_image() {
    let app = App::new(2, IN_PLACE);
    let victim_file = app.dir.join("victim");
    let mut master = start_wrapped(
        &app,
        &format!("kill -KILL $(cat '{}')", victim_file.display()),
    );
    let before = wait_serving_generation(&app, 2, 1);
    let victim = pids(&before)[0] as i32;
    std::fs::write(&victim_file, victim.to_string()).unwrap();
    let (code, out) = upgrade_wait(&app);
    assert_eq!(code, 0, "{out}\n{}", master.log());
    let log = master.log();
    assert!(
        log.contains(&format!("pid={victim} event=exit signal=SIGKILL")),
        "{log}"
    );
    assert!(!is_running(victim), "{victim} is left a zombie");
    assert!(zombie_children_of(master.pid()).is_empty());
    wait_serving_generation(&app, 2, 2);
    assert_master_running(&mut master);
}

#[test]
fn term_during_the_exec_stops_the_master_cleanly() {
    let app = App::new(2, IN_PLACE);
    // The "new binary" signals itself TERM from within the exec (same pid:
    // the master's), before the real binary's handlers exist; the old image
    // blocked TERM, so it waits for them instead of killing the master.
    let mut master = start_wrapped(&app, "kill -TERM $$");
    let workers = wait_serving_generation(&app, 2, 1);

    master.signal(Signal::SIGUSR2);
    let status = master.wait_exit(secs(30));
    let log = master.log();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(log.contains("event=upgrade-exec mode=in-place"), "{log}");
    assert!(log.contains("event=stop mode=quick signal=TERM"), "{log}");
    for pid in pids(&workers) {
        assert!(!is_running(pid as i32), "worker {pid} outlived the master");
    }
    assert_no_file(&app.pid_file);
}

#[test]
fn auto_upgrades_in_place_as_pid_1() {
    if !is_root() {
        skip_unless_required("auto_upgrades_in_place_as_pid_1 needs root for unshare --pid");
        return;
    }
    let dir = TempDir::new();
    let socket = dir.join("app.sock");
    let mut master = Fixture::new(&dir)
        .workers(2)
        .unix("app.sock")
        .through_shell("exec unshare --pid --fork --mount-proc \"$0\" \"$@\"")
        .start();
    master.wait_log("event=all-ready workers=2 generation=1", secs(30));
    let target = Target::unix(&socket);
    let master_pid = wait_for("the master, PID 1 of its namespace", secs(10), || {
        master.children().first().copied()
    });
    master.guard().watch_pid(master_pid);
    let load = Load::start(&target, 2);
    load.wait_answers(10);

    send_signal(master_pid, Signal::SIGUSR2);
    let log = master.wait_log("event=upgrade-done mode=in-place generation=2", secs(30));
    assert!(
        log.contains("event=upgrade mode=in-place reason=pid1"),
        "{log}"
    );
    load.wait_answers(10);
    let answers = load.finish_without_failures();
    assert!(answers.contains_key("2"), "{answers:?}");
    assert!(is_running(master_pid));
    assert_eq!(master.children(), vec![master_pid], "the same PID 1 serves");
    assert_eq!(get(&target, "/").unwrap().fields()["generation"], "2");
    let nspid = proc_status(master_pid, "NSpid").unwrap_or_default();
    assert!(nspid.ends_with("\t1"), "NSpid: {nspid}");
}

/// A new configuration that passes `-t` but cannot start after the exec
/// (a port taken, a directory missing): the new image starts with the old
/// configuration instead, keeps the old workers and records why.
#[test]
fn a_new_config_that_cannot_start_after_the_exec_falls_back_to_the_old_one() {
    let app = App::new(2, IN_PLACE);
    let mut master = app.start();
    let pid = master.pid();
    let before = wait_serving_generation(&app, 2, 1);
    let load = Load::start(&app.target, 2);
    load.wait_answers(10);

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let missing = app.dir.join("no-such-dir");
    let listen = format!(
        "listen: ['unix:{}', '127.0.0.1:{port}']\n",
        app.dir.join("app.sock").display()
    );
    let cases = [
        (
            listen,
            format!("listen 127.0.0.1:{port}: address already in use"),
        ),
        (
            format!("stdout_path: {}\n", missing.join("out.log").display()),
            "stdout_path".to_string(),
        ),
        (
            format!(
                "listen: ['unix:{}', 'unix:{}']\n",
                app.dir.join("app.sock").display(),
                missing.join("new.sock").display()
            ),
            "new.sock".to_string(),
        ),
        (
            format!("stderr_path: {}\n", missing.join("err.log").display()),
            "stderr_path".to_string(),
        ),
        (
            format!("runtime_dir: {}\n", missing.display()),
            "runtime_dir".to_string(),
        ),
    ];
    for (extra, said) in &cases {
        app.write_config(2, &format!("{IN_PLACE}{extra}"));
        let (code, out) = upgrade_wait(&app);
        assert_eq!(code, 1, "{extra}: {out}\n{}", master.log());
        assert!(
            out.contains("upgrade failed: the new configuration: "),
            "{out}"
        );
        assert!(out.contains(said.as_str()), "{said}: {out}");
        assert!(out.contains(&format!("pid {pid} keeps serving")), "{out}");
        let after = wait_serving_generation(&app, 2, 1);
        assert_eq!(
            pids(&after),
            pids(&before),
            "{extra}: the old workers serve on"
        );
        assert_eq!(after["pid"].as_i64(), Some(pid as i64));
        assert_eq!(after["upgrade"]["state"], "failed");
        load.wait_answers(10);
    }
    drop(busy);
    load.finish_without_failures();

    // The old workers are supervised, and a good upgrade goes through.
    let victim = pids(&before)[0];
    send_signal(victim as i32, Signal::SIGKILL);
    app.wait_status("the old worker replaced", secs(30), |s| {
        s["ready"].as_u64() == Some(2) && !pids(s).contains(&victim)
    });
    app.write_config(2, IN_PLACE);
    let (code, out) = upgrade_wait(&app);
    assert_eq!(code, 0, "{out}\n{}", master.log());
    wait_serving_generation(&app, 2, 2);
    assert_eq!(app.master_pid(), pid);
    assert_master_running(&mut master);
}

/// The master started as `bin/forkmaster` in the app's directory (a
/// symlink to the real binary), which a test may then replace.
fn start_from_link(app: &App) -> (Master, std::path::PathBuf) {
    let bin = app.dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let link = bin.join("forkmaster");
    std::os::unix::fs::symlink(forkmaster(), &link).unwrap();
    (app.start_program(&link), link)
}

fn write_script(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A program that exits 0 for `-t` is not a forkmaster that can read the
/// state: the master refuses to exec it and serves on.
#[test]
fn a_program_that_is_not_a_forkmaster_is_refused_before_the_exec() {
    let app = App::new(2, IN_PLACE);
    let (mut master, link) = start_from_link(&app);
    let pid = master.pid();
    let before = wait_serving_generation(&app, 2, 1);
    let load = Load::start(&app.target, 2);
    load.wait_answers(10);

    let not_ours = format!(
        "upgrade failed: {} is not a forkmaster that reads in-place state version 1",
        link.display()
    );
    // `/bin/true` itself, in place of the binary.
    std::fs::remove_file(&link).unwrap();
    std::fs::copy("/bin/true", &link).unwrap();
    let (code, out) = upgrade_wait(&app);
    assert_eq!(code, 1, "{out}\n{}", master.log());
    assert!(out.contains(&not_ours), "{out}");
    assert_eq!(pids(&wait_serving_generation(&app, 2, 1)), pids(&before));

    // A program that prints junk, or another state version, and exits 0.
    write_script(
        &link,
        "#!/bin/sh\necho configuration ok\necho FORKMASTER_INPLACE_STATE_VERSION=999\nexit 0\n",
    );
    let (code, out) = upgrade_wait(&app);
    assert_eq!(code, 1, "{out}\n{}", master.log());
    assert!(out.contains(&not_ours), "{out}");
    let after = wait_serving_generation(&app, 2, 1);
    assert_eq!(pids(&after), pids(&before));
    assert_eq!(after["pid"].as_i64(), Some(pid as i64));
    assert_no_event(&master.log(), "upgrade-exec");
    load.wait_answers(10);
    load.finish_without_failures();

    // The real binary back: the upgrade goes through.
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(forkmaster(), &link).unwrap();
    let (code, out) = upgrade_wait(&app);
    assert_eq!(code, 0, "{out}\n{}", master.log());
    wait_serving_generation(&app, 2, 2);
    assert_master_running(&mut master);
}

/// The file checked is the file exec'd: one swapped in at the path during
/// the check is never run.
#[test]
fn a_binary_swapped_in_after_the_check_is_not_the_one_execd() {
    let app = App::new(2, IN_PLACE);
    let (mut master, link) = start_from_link(&app);
    let pid = master.pid();
    wait_serving_generation(&app, 2, 1);
    let marker = app.dir.join("swapped-in-ran");
    let swapped = app.dir.join("swapped");
    write_script(
        &swapped,
        &format!("#!/bin/sh\ntouch '{}'\nexit 1\n", marker.display()),
    );
    // The checked program replaces its own path during its check.
    write_script(
        &link,
        &format!(
            "#!/bin/sh\nif [ \"$1\" = -t ]; then mv '{}' '{}'; fi\nexec '{}' \"$@\"\n",
            swapped.display(),
            link.display(),
            forkmaster()
        ),
    );
    let (code, out) = upgrade_wait(&app);
    assert_eq!(code, 0, "{out}\n{}", master.log());
    wait_serving_generation(&app, 2, 2);
    assert_eq!(app.master_pid(), pid);
    assert_no_file(&marker);
    assert_master_running(&mut master);
}

/// The recorded duration of an in-place upgrade covers what `upgrade
/// --wait` waits for: from the USR2 to the new generation all ready.
#[test]
fn an_in_place_upgrade_records_how_long_it_took() {
    // The old workers ignore their stop signal: killed at the graceful
    // timeout, well after the new ones are ready.
    let slow_stop = format!("{IN_PLACE}stop_signal: WINCH\ngraceful_timeout: 1s\n");
    let app = App::new(2, &slow_stop);
    let mut master = app.start();
    wait_serving_generation(&app, 2, 1);
    let (code, out) = upgrade_wait(&app);
    assert_eq!(code, 0, "{out}\n{}", master.log());
    let status = app.status();
    let took = status["upgrade"]["secs"].as_f64().expect("upgrade secs");
    assert!(took >= 1.0, "took={took}: {out}");
    assert_master_running(&mut master);
}

/// A HUP during an in-place upgrade's rollover waits for it to end, then
/// reloads: it never turns a good upgrade into a failed one.
#[test]
fn a_hup_during_the_rollover_waits_for_the_upgrade() {
    let slow_stop = format!("{IN_PLACE}stop_signal: WINCH\ngraceful_timeout: 3s\n");
    let app = App::new(2, &slow_stop);
    let mut master = app.start();
    wait_serving_generation(&app, 2, 1);
    let pid_file = app.pid_file.to_str().unwrap();
    let (code, out, err) = client(&["upgrade", "-p", pid_file], secs(30));
    assert_eq!(code, 0, "{out}{err}");
    app.wait_status("the rollover under way", secs(30), |s| {
        s["generation"].as_u64() == Some(2) && s["upgrade"]["state"] == "in-progress"
    });
    master.signal(Signal::SIGHUP);
    let done = app.wait_status("the upgrade ended", secs(30), |s| {
        s["upgrade"]["state"] != "in-progress"
    });
    assert_eq!(done["upgrade"]["state"], "done", "{done}\n{}", master.log());
    app.wait_status("the reload done after it", secs(30), |s| {
        s["reload"]["state"] == "done" && s["generation"].as_u64() == Some(3)
    });
    assert!(master.log().contains("signal=HUP action=deferred"));
    assert_not_logged(&master.log(), "superseded");
    assert_master_running(&mut master);
}

/// A client asking during the exec window (the control socket not bound
/// again yet) waits for the same master, not "not a forkmaster master".
#[test]
fn a_client_during_the_exec_window_waits_for_the_same_master() {
    let app = App::new(2, IN_PLACE);
    let fifo = app.dir.join("release");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let inside = app.dir.join("inside-exec");
    // The new image is held inside the exec until the test releases it.
    let mut master = start_wrapped(
        &app,
        &format!(
            "touch '{}'; read line < '{}'",
            inside.display(),
            fifo.display()
        ),
    );
    master.wait_ready();
    let pid = master.pid();
    wait_serving_generation(&app, 2, 1);
    let pid_file = app.pid_file.to_str().unwrap();
    let (code, out, err) = client(&["upgrade", "-p", pid_file], secs(30));
    assert_eq!(code, 0, "{out}{err}");
    wait_for("the new image inside the exec", secs(30), || {
        inside.exists().then_some(())
    });
    let mut status = std::process::Command::new(forkmaster())
        .args(["status", "-p", pid_file])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Before the fix it concluded at once; now it waits for the master.
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_millis(500) {
        if status.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::yield_now();
    }
    std::fs::write(&fifo, "go\n").unwrap();
    let out = status.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{said}\n{}", master.log());
    assert!(said.contains(&pid.to_string()), "{said}");
    wait_serving_generation(&app, 2, 2);
    assert_master_running(&mut master);
}

/// `runtime_dir` is kept for the life of the process (as the pid file is):
/// a new one in the configuration fails the upgrade, which `upgrade --wait`
/// reports, and the control socket stays where the clients find it.
#[test]
fn an_upgrade_in_place_keeps_the_runtime_dir() {
    let app = App::new(2, IN_PLACE);
    let mut master = app.start();
    let pid = master.pid();
    let before = wait_serving_generation(&app, 2, 1);
    let elsewhere = app.dir.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    app.write_config(
        2,
        &format!("{IN_PLACE}runtime_dir: {}\n", elsewhere.display()),
    );
    let (code, out) = upgrade_wait(&app);
    assert_eq!(code, 1, "{out}\n{}", master.log());
    assert!(
        out.contains("an in-place upgrade keeps the runtime directory"),
        "{out}"
    );
    assert!(out.contains(&format!("pid {pid} keeps serving")), "{out}");
    assert_eq!(pids(&wait_serving_generation(&app, 2, 1)), pids(&before));
    assert_master_running(&mut master);
}

/// A look for strays while the new binary's `-t` runs (a worker died: its
/// exit hands its children to us) does not take the check for a stray, and
/// nothing the master reaped is listed or signalled as one.
#[test]
fn a_stray_scan_during_the_check_leaves_the_check_alone() {
    let app = App::new(2, IN_PLACE);
    let (mut master, link) = start_from_link(&app);
    let pid = master.pid();
    let before = wait_serving_generation(&app, 2, 1);
    let victim = pids(&before)[0];
    // The check kills a worker, then waits until the master has reaped it
    // (and so looked for strays in that pass) before it checks.
    write_script(
        &link,
        &format!(
            "#!/bin/sh\nif [ \"$1\" = -t ]; then\n kill -KILL {victim}\n while '{fm}' status -p '{pf}' --json | grep -q '\"pid\":{victim}[,}}]'; do :; done\nfi\nexec '{fm}' \"$@\"\n",
            fm = forkmaster(),
            pf = app.pid_file.display(),
        ),
    );
    let (code, out) = upgrade_wait(&app);
    assert_eq!(code, 0, "{out}\n{}", master.log());
    let after = wait_serving_generation(&app, 2, 2);
    assert_eq!(after["pid"].as_i64(), Some(pid as i64));
    assert_eq!(after["strays"].as_array().map(Vec::len), Some(0), "{after}");
    assert_no_event(&master.log(), "stray-stop");
    assert_master_running(&mut master);
}

/// The inodes of the TCP sockets listening on `port` (from `/proc/net/tcp`).
fn listening_inodes(port: u16) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local_port = cols.get(1)?.rsplit(':').next()?;
            (u16::from_str_radix(local_port, 16).ok()? == port && cols.get(3)? == &"0A")
                .then(|| cols.get(9).map(|s| s.to_string()))?
        })
        .collect()
}

/// How many fds of `pid` are a TCP socket listening on `port`.
fn fds_listening_on(pid: i32, port: u16) -> usize {
    let inodes = listening_inodes(port);
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| {
            let target = target.to_string_lossy();
            inodes.iter().any(|i| target == format!("socket:[{i}]"))
        })
        .count()
}

/// A listener an in-place upgrade removes is closed (connections to it are
/// refused), and one it keeps is held once, whatever the order.
#[test]
fn an_in_place_upgrade_closes_a_removed_listener_and_holds_no_duplicate() {
    let app = App::new(2, IN_PLACE);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unix = format!("unix:{}", app.socket().display());
    let tcp = format!("127.0.0.1:{port}");
    app.write_config(2, &format!("{IN_PLACE}listen: ['{unix}', '{tcp}']\n"));
    let mut master = app.start();
    let pid = master.pid();
    wait_serving_generation(&app, 2, 1);
    assert_eq!(fds_listening_on(pid, port), 1);

    // Reordered: the same socket, held once.
    app.write_config(2, &format!("{IN_PLACE}listen: ['{tcp}', '{unix}']\n"));
    let (code, out) = upgrade_wait(&app);
    assert_eq!(code, 0, "{out}\n{}", master.log());
    wait_serving_generation(&app, 2, 2);
    assert_eq!(fds_listening_on(pid, port), 1, "{}", master.log());

    // Removed: closed, connections refused.
    app.write_config(2, &format!("{IN_PLACE}listen: ['{unix}']\n"));
    let (code, out) = upgrade_wait(&app);
    assert_eq!(code, 0, "{out}\n{}", master.log());
    wait_serving_generation(&app, 2, 3);
    assert_eq!(fds_listening_on(pid, port), 0, "{}", master.log());
    let err = std::net::TcpStream::connect(("127.0.0.1", port)).expect_err("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_master_running(&mut master);
}

/// `health_listen` through an in-place upgrade: the same address is served
/// on; a new one that cannot be bound fails the upgrade, and the old
/// endpoint answers on.
#[test]
fn an_in_place_upgrade_to_a_busy_health_port_fails_and_keeps_the_old_endpoint() {
    let app = App::new(2, IN_PLACE);
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let health = free.local_addr().unwrap();
    drop(free);
    let with_health = |addr: std::net::SocketAddr| format!("{IN_PLACE}health_listen: '{addr}'\n");
    app.write_config(2, &with_health(health));
    let mut master = app.start();
    let pid = master.pid();
    wait_serving_generation(&app, 2, 1);
    let target = Target::Tcp(health);
    let livez = |target: &Target| get(target, "/livez").map(|r| r.status);
    assert_eq!(livez(&target).unwrap(), 200);

    // The same address: the same socket, kept open across the exec.
    let (code, out) = upgrade_wait(&app);
    assert_eq!(code, 0, "{out}\n{}", master.log());
    wait_serving_generation(&app, 2, 2);
    assert_eq!(livez(&target).unwrap(), 200, "{}", master.log());
    assert!(
        master
            .log()
            .contains(&format!("event=health-listen addr={health} how=inherited")),
        "{}",
        master.log()
    );

    // A busy one: the upgrade fails, the old endpoint answers.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    app.write_config(2, &with_health(busy.local_addr().unwrap()));
    let (code, out) = upgrade_wait(&app);
    assert_eq!(code, 1, "{out}\n{}", master.log());
    assert!(out.contains("health"), "{out}");
    let after = wait_serving_generation(&app, 2, 2);
    assert_eq!(after["pid"].as_i64(), Some(pid as i64));
    assert_eq!(after["upgrade"]["state"], "failed");
    assert_eq!(livez(&target).unwrap(), 200, "{}", master.log());
    assert_master_running(&mut master);
}
