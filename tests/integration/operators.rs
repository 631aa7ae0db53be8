//! What operators see and are told: every slot in `status` (backing off or
//! not), the phase of a reload or upgrade and its progress, the record of
//! the upgrade that made a master, `upgrade --wait` with `retire: manual`,
//! and the start-time checks (`-w 0`, `-t` of paths, duplicate keys).

use crate::support::*;
use serde_json::Value;

/// `forkmaster status -p PIDFILE` as text; `None` unless it exits 0.
fn status_text(app: &App) -> Option<String> {
    let pid_file = app.pid_file.to_str().unwrap();
    let (code, out, _) = client(&["status", "-p", pid_file], secs(10));
    (code == 0).then_some(out)
}

/// The table rows after the header, split into cells.
fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .skip_while(|l| !l.starts_with("SLOT"))
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[test]
fn a_slot_backing_off_shows_with_its_history_and_retry_time() {
    // Slot 0 serves; slot 1's worker exits at every boot and backs off.
    let app = App::new(2, "");
    app.write_config(
        2,
        &app.env_line(&[("DEMO_FAIL_BOOT", "1"), ("DEMO_FAIL_WORKER", "1")]),
    );
    let master = app.fixture().start();
    let status = app.wait_status("slot 1 to back off", secs(30), |s| {
        s["slots"][1]["state"] == "backoff"
    });
    assert_eq!(status["slots"].as_array().unwrap().len(), 2, "{status:#}");
    let slot = &status["slots"][1];
    assert_eq!(slot["pid"], Value::Null, "{status:#}");
    assert!(slot["restarts"].as_u64().unwrap() >= 1, "{status:#}");
    assert!(
        slot["last_exit"]
            .as_str()
            .is_some_and(|e| e.contains("status 1 before ready")),
        "{status:#}"
    );
    assert!(slot["retry_in_secs"].as_f64().is_some(), "{status:#}");
    assert_eq!(status["slots"][0]["state"], "occupied", "{status:#}");
    assert_eq!(
        status["slots"][0]["pid"], status["workers"][0]["pid"],
        "{status:#}"
    );
    // The table has a row for it, worker or not.
    let text = wait_for("a backoff row in the table", secs(30), || {
        status_text(&app).filter(|t| rows(t).iter().any(|r| r[0] == "1" && r[2] == "backoff"))
    });
    let row = rows(&text).into_iter().find(|r| r[0] == "1").unwrap();
    assert_eq!(row[1], "-", "{text}");
    assert!(text.contains("(retry in "), "{text}");
    assert!(master.exited().is_none(), "{}", master.log());
}

#[test]
fn upgrade_wait_with_manual_retirement_succeeds_and_leaves_the_old_master() {
    let app = App::new(2, "retire: manual\n");
    let mut master = app.start();
    let old = master.pid();
    let (code, out, err) = client(
        &["upgrade", "-c", app.cfg(), "--wait", "--timeout", "30s"],
        secs(60),
    );
    assert_eq!(code, 0, "{out}{err}\n{}", master.log());
    let new = app.master_pid();
    assert_ne!(new, old);
    assert_eq!(
        out,
        format!(
            "new master pid {new} serves with 2 workers ready; old master pid {old} left running (retire: manual): send it QUIT\n"
        )
    );
    assert!(err.contains("retire: manual"), "{err}");
    assert!(is_running(old));
    let text = status_text(&app).expect("status");
    assert!(
        text.contains(&format!(
            "old master: pid={old} (still running) retire=manual: send it QUIT\n"
        )),
        "{text}"
    );
    assert!(text.contains("\nupgrade: done took="), "{text}");
    // The operator finishes it.
    master.signal(Signal::SIGQUIT);
    assert!(master.wait_exit(secs(30)).success(), "{}", master.log());
    app.wait_status("the old master gone", secs(10), |s| {
        s["pid"] == new && s["old_master"].is_null() && s["phase"] == "running"
    });
}

#[test]
fn status_shows_a_rolling_restart_and_an_upgrade_in_progress() {
    let app = App::new(2, "");
    let master = app.start();
    let old = master.pid();
    app.write_config(2, &app.env_line(&[("DEMO_BOOT_DELAY", "2s")]));
    master.signal(Signal::SIGHUP);
    let status = app.wait_status("the reload to show", secs(10), |s| {
        s["phase"] == "reloading"
    });
    assert_eq!(status["rollout"]["total"], 2, "{status:#}");
    assert_eq!(status["rollout"]["rollback"], false, "{status:#}");
    let text = wait_for("the text to say reloading", secs(10), || {
        status_text(&app).filter(|t| t.contains(" phase=reloading "))
    });
    assert!(
        text.contains("\nreloading: 0/2 replaced\n")
            || text.contains("\nreloading: 1/2 replaced\n"),
        "{text}"
    );
    app.wait_status("one slot replaced", secs(30), |s| {
        s["phase"] == "reloading" && s["rollout"]["replaced"] == 1
    });
    app.wait_status("the reload done", secs(30), |s| {
        s["phase"] == "running" && s["reload"]["state"] == "done" && s["rollout"].is_null()
    });

    master.signal(Signal::SIGUSR2);
    let status = app.wait_status("the new master to show an upgrade", secs(30), |s| {
        s["pid"] != old && s["phase"] == "upgrading"
    });
    assert_eq!(status["upgrade"]["state"], "in-progress", "{status:#}");
    let new = status["pid"].clone();
    app.wait_status("the upgrade done", secs(30), |s| {
        s["pid"] == new && s["phase"] == "running" && s["old_master"].is_null()
    });
}

#[test]
fn the_new_master_shows_the_upgrade_that_made_it() {
    let app = App::new(2, "");
    let master = app.start();
    let (code, out, err) = client(&["upgrade", "-c", app.cfg(), "--wait"], secs(60));
    assert_eq!(code, 0, "{out}{err}\n{}", master.log());
    let status = app.status();
    assert_ne!(status["pid"], master.pid());
    assert_eq!(status["upgrade"]["state"], "done", "{status:#}");
    assert!(status["upgrade"]["secs"].as_f64().is_some(), "{status:#}");
    // Not an attempt of its own: a client counts those to see its USR2 taken.
    assert_eq!(status["upgrade"]["attempts"], 0, "{status:#}");
    let text = status_text(&app).expect("status");
    assert!(text.contains("\nupgrade: done took="), "{text}");
}

#[test]
fn a_replacement_worker_shows_its_slot_history_as_the_slots() {
    let app = App::new(1, "");
    let master = app.start();
    let crashed = get(&app.target, "/crash");
    assert!(crashed.is_err(), "{crashed:?}");
    let status = app.wait_status("the crashed slot filled again", secs(30), |s| {
        s["ready"] == 1 && s["slots"][0]["restarts"] == 1
    });
    let respawned = status["workers"][0]["pid"].clone();
    let (code, out, err) = client(&["reload", "-c", app.cfg(), "--wait"], secs(60));
    assert_eq!(code, 0, "{out}{err}\n{}", master.log());
    let status = app.wait_status("one worker of generation 2", secs(30), |s| {
        s["workers"].as_array().is_some_and(|w| w.len() == 1) && s["workers"][0]["generation"] == 2
    });
    assert_ne!(status["workers"][0]["pid"], respawned, "{status:#}");
    // The new worker never crashed: the count is the slot's, and says so.
    let slot = &status["slots"][0];
    assert_eq!(slot["restarts"], 1, "{status:#}");
    assert!(
        slot["last_exit"]
            .as_str()
            .is_some_and(|e| e.contains("SIGABRT")),
        "{status:#}"
    );
    let text = status_text(&app).expect("status");
    assert!(text.contains("SLOT-RESTARTS  SLOT-LAST-EXIT\n"), "{text}");
}

#[test]
fn zero_workers_is_refused_at_start() {
    let dir = TempDir::new();
    for extra in [&[][..], &["-D"][..]] {
        let out = Fixture::new(&dir)
            .workers(0)
            .tcp()
            .args(extra)
            .run(secs(10));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {err}");
        assert!(
            err.starts_with("forkmaster: --workers \"0\": at least 1"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn check_refuses_a_missing_working_directory_or_program() {
    let dir = TempDir::new();
    let check = |args: &[&str]| {
        let mut all = vec!["-t", "-l", "127.0.0.1:0"];
        all.extend(args);
        let out = run(&all, secs(10));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), err)
    };
    let missing = dir.join("no-such-dir");
    let missing = missing.to_str().unwrap();
    let (code, err) = check(&["--working-directory", missing, "--", demo()]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err,
        format!("forkmaster: working_directory: {missing}: no such file or directory\n")
    );
    let file = dir.join("plain");
    std::fs::write(&file, "not a directory").unwrap();
    let (code, err) = check(&["--working-directory", file.to_str().unwrap(), "--", demo()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.ends_with(": not a directory\n"), "{err}");

    let (code, err) = check(&["--", "no-such-app-xyz"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.starts_with("forkmaster: command: no-such-app-xyz: not found on PATH ("),
        "{err}"
    );
    // A relative program is looked up from the working directory.
    let app_dir = dir.join("release");
    std::fs::create_dir(&app_dir).unwrap();
    std::fs::write(app_dir.join("app"), "#!/bin/sh\n").unwrap();
    let app_dir = app_dir.to_str().unwrap();
    let (code, err) = check(&["--working-directory", app_dir, "--", "./app"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err,
        format!("forkmaster: command: {app_dir}/./app: not executable\n")
    );
    let (code, err) = check(&["--working-directory", app_dir, "--", "bin/app"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("{app_dir}/bin/app: ")), "{err}");
    std::fs::set_permissions(
        format!("{app_dir}/app"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (code, err) = check(&["--working-directory", app_dir, "--", "./app"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = check(&["--", "sh"]);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_duplicate_key_is_reported_at_its_line() {
    let dir = TempDir::new();
    let cfg = dir.join("app.yml");
    let cfg_text = cfg.to_str().unwrap();
    for (text, line, key) in [
        (
            "listen: ['127.0.0.1:0']\nworkers: 2\nworkers: 3\n",
            3,
            "workers",
        ),
        (
            "listen: ['127.0.0.1:0']\nenv:\n  A: x\n  B: y\n  A: z\n",
            5,
            "A",
        ),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let out = run(&["-t", "-c", cfg_text, "--", demo()], secs(10));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(
            err,
            format!("forkmaster: config {cfg_text}: line {line}: duplicate key `{key}`\n")
        );
    }
}

#[test]
fn hup_says_it_drops_a_worker_count_set_by_signals() {
    let app = App::new(2, "");
    let master = app.start();
    master.signal(Signal::SIGTTIN);
    app.wait_status("a third worker", secs(30), |s| {
        s["target"] == 3 && s["ready"] == 3
    });
    master.signal(Signal::SIGHUP);
    master.wait_log(
        "event=reload workers=2 previous=3 reason=\"config sets the worker count; TTIN/TTOU changes are not kept\"",
        secs(10),
    );
    app.wait_status("back to the config's count", secs(30), |s| {
        s["target"] == 2 && s["ready"] == 2 && s["reload"]["state"] == "done"
    });
}
