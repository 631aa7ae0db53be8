//! USR2 upgrades and HUP rolling restarts under load: not one failed request.

use crate::support::*;
use std::sync::atomic::Ordering;

#[test]
fn five_upgrades_and_five_reloads_under_load_fail_no_request() {
    let app = App::new(2, "");
    let mut master = app.start();
    // Measured on the first re-exec'd master: the first one may hold fds
    // it inherited from the test runner (close-on-exec, but open).
    let mut fds_before = 0;
    let load = Load::start(&app.target, 2);
    wait_for("load to get answers", secs(10), || {
        (load.ok.load(Ordering::Relaxed) > 10).then_some(())
    });
    for i in 1..=5 {
        let token = format!("upgrade-{i}");
        app.set_token(&token);
        let old = app.master_pid();
        let (code, out, err) = client(&["upgrade", "-c", app.cfg(), "--wait"], secs(120));
        assert_eq!(code, 0, "upgrade {i}: {out}{err}\n{}", master.log());
        assert!(
            out.starts_with(&format!("upgraded: pid {old} -> ")),
            "{out}"
        );
        assert!(out.contains("2 workers ready in"), "{out}");
        // The old master is gone: every answer comes from the new generation.
        assert_eq!(app.token_served(), token);
        assert_no_file(&app.oldbin());
        if i == 1 {
            assert!(master.wait_exit(secs(10)).success());
            fds_before = fd_count(app.master_pid());
        }

        let token = format!("reload-{i}");
        app.set_token(&token);
        let (code, out, err) = client(&["reload", "-c", app.cfg(), "--wait"], secs(120));
        assert_eq!(code, 0, "reload {i}: {out}{err}\n{}", master.log());
        assert!(out.starts_with("reloaded: pid "), "{out}");
        // Old workers may finish a request they had accepted; then only new ones answer.
        wait_for("only reloaded workers to answer", secs(10), || {
            (0..5).all(|_| app.token_served() == token).then_some(())
        });
    }
    let (ok, errors) = load.finish();
    assert!(
        errors.is_empty(),
        "{} failed of {}: {:?}",
        errors.len(),
        ok,
        &errors[..errors.len().min(5)]
    );
    assert!(ok > 100, "only {ok} requests answered");
    let current = app.master_pid();
    assert!(
        zombie_children_of(current).is_empty(),
        "zombies: {:?}",
        zombie_children_of(current)
    );
    assert_eq!(
        fd_count(current),
        fds_before,
        "the master's fd count changed"
    );
    assert_no_file(&app.oldbin());
    eprintln!("{ok} requests answered, none failed");
}

#[test]
fn retire_all_waits_for_every_new_worker_then_quits_the_old_master() {
    let app = App::new(3, "retire: all\n");
    let mut master = app.start();
    let old = master.pid();
    app.set_token("new");
    let (code, out, err) = client(
        &["upgrade", "-p", app.pid_file.to_str().unwrap(), "--wait"],
        secs(60),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(master.wait_exit(secs(10)).success());
    let log = master.log();
    assert!(
        log.contains(&format!("event=retire-old-master pid={old} signal=QUIT")),
        "{log}"
    );
    // With `all`, the old master keeps every worker until the QUIT.
    assert_not_logged(&log, "reason=retire");
    assert_eq!(app.token_served(), "new");
    let status = client(&["status", "-c", app.cfg(), "--json"], secs(10));
    assert_eq!(status.0, 0);
    let json: serde_json::Value = serde_json::from_str(&status.1).unwrap();
    assert_eq!(json["generation"], 2);
    assert_eq!(json["ready"], 3);
    assert_eq!(json["workers"].as_array().unwrap().len(), 3);
}

#[test]
fn retire_gradual_tells_the_old_master_each_new_ready_count() {
    let app = App::new(2, "log_level: debug\n");
    let mut master = app.start();
    let (code, out, err) = client(&["upgrade", "-c", app.cfg(), "--wait"], secs(60));
    assert_eq!(code, 0, "{out}{err}");
    assert!(master.wait_exit(secs(10)).success());
    let old = master.pid();
    let log = master.log();
    // The new master reports each ready count; the old master may already
    // be quitting when the last ones arrive (all ready in one pass), so its
    // side is checked in upgrade_failures (gradual retirement, then failure).
    for ready in 1..=2 {
        assert!(
            log.contains(&format!("event=retire-step old_master={old} ready={ready}")),
            "{log}"
        );
    }
}

#[test]
fn manual_retire_leaves_the_old_master_and_hup_rolls_back() {
    let app = App::new(2, "retire: manual\n");
    let master = app.start();
    let old = master.pid();
    app.set_token("new");
    master.signal(Signal::SIGUSR2);
    master.wait_log("retire=manual action=", secs(30));
    let new = app.master_pid();
    assert_ne!(new, old);
    assert_eq!(read_pid(&app.oldbin()), Some(old));
    // Operator: stop the old workers; the new ones serve alone.
    master.signal(Signal::SIGWINCH);
    master.wait_log(
        &format!("INFO forkmaster[{old}] event=scale signal=WINCH workers=0"),
        secs(10),
    );
    master.wait_for("the old workers to be gone", secs(20), |_| {
        master.children().iter().all(|p| *p == new).then_some(())
    });
    assert_eq!(app.token_served(), "new");
    // Rollback: HUP brings the old workers back from memory, QUIT the new master.
    master.signal(Signal::SIGHUP);
    master.wait_log(
        &format!("INFO forkmaster[{old}] event=restore-workers"),
        secs(10),
    );
    master.wait_for("the old master to have 2 workers again", secs(20), |_| {
        (master.children().iter().filter(|p| **p != new).count() == 2).then_some(())
    });
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(new), Signal::SIGQUIT).unwrap();
    master.wait_for(
        "the pid file to name the old master again",
        secs(20),
        |_| (read_pid(&app.pid_file) == Some(old)).then_some(()),
    );
    assert_no_file(&app.oldbin());
    // The restored workers read the token file anew; their generation tells them apart.
    wait_for("only the old generation to answer", secs(20), || {
        (0..5)
            .all(|_| get(&app.target, "/").is_ok_and(|r| r.fields()["generation"] == "1"))
            .then_some(())
    });
    let (code, out, _) = client(&["status", "-c", app.cfg()], secs(10));
    assert_eq!(code, 0);
    assert!(out.contains("upgrade: failed"), "{out}");
}
