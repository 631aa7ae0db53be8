//! HUP rolling restarts: the config file is read again and every worker is
//! replaced, at most `max_surge` booting at once; a reload that cannot work
//! changes nothing, and `forkmaster reload --wait` says which happened.

use crate::support::*;
use serde_json::Value;
use std::collections::BTreeSet;

/// `forkmaster reload -c CFG --wait`, which must succeed; the master's
/// status once only workers of the new generation are left.
fn reload_ok(app: &App, master: &Master, generation: u32, workers: usize) -> Value {
    let (code, out, err) = client(&["reload", "-c", app.cfg(), "--wait"], secs(60));
    assert_eq!(code, 0, "{out}{err}\nlog:\n{}", master.log());
    assert!(err.is_empty(), "{err}");
    let expected = format!(
        "reloaded: pid {} generation {generation}, {workers} workers ready in ",
        master.pid()
    );
    assert!(out.starts_with(&expected), "{out}");
    only_generation(app, master, generation, workers)
}

/// Waits until the master has exactly `workers` workers, all ready and of
/// `generation`, and they are its only children (the replaced ones exited).
fn only_generation(app: &App, master: &Master, generation: u32, workers: usize) -> Value {
    let status = app.wait_status(
        &format!("{workers} ready workers of generation {generation} only"),
        secs(30),
        |s| {
            let list = s["workers"].as_array().unwrap();
            s["ready"] == workers
                && s["target"] == workers
                && list.len() == workers
                && list
                    .iter()
                    .all(|w| w["state"] == "ready" && w["generation"] == generation)
        },
    );
    assert_eq!(status["generation"], generation);
    let pids = worker_pids(&status);
    master.wait_for("the replaced workers to exit", secs(30), |_| {
        (master.children().into_iter().collect::<BTreeSet<_>>() == pids).then_some(())
    });
    status
}

fn worker_pids(status: &Value) -> BTreeSet<i32> {
    App::worker_pids(status)
        .into_iter()
        .map(|(_, pid)| pid as i32)
        .collect()
}

/// `GET path` until every worker in `pids` has answered; every answer must
/// come from one of them and pass `check`.
fn every_worker_answers(app: &App, pids: &BTreeSet<i32>, path: &str, check: impl Fn(&str) -> bool) {
    let mut seen = BTreeSet::new();
    wait_for(
        &format!("each of {pids:?} to answer {path}"),
        secs(30),
        || {
            let r = get(&app.target, path).expect("GET");
            assert_eq!(r.status, 200, "{}", r.body);
            // `/` says `pid=`; `/env` lists `LISTEN_PID=`, the worker's own pid.
            let f = r.fields();
            let pid: i32 = f
                .get("pid")
                .or(f.get("LISTEN_PID"))
                .unwrap()
                .parse()
                .unwrap();
            assert!(
                pids.contains(&pid),
                "answered by {pid}, not one of {pids:?}"
            );
            assert!(check(&r.body), "worker {pid} answered {path}:\n{}", r.body);
            seen.insert(pid);
            (seen == *pids).then_some(())
        },
    );
}

/// Index of the first log line holding all of `needles`.
fn line_of(log: &str, needles: &[&str]) -> usize {
    log.lines()
        .position(|l| needles.iter().all(|n| l.contains(n)))
        .unwrap_or_else(|| panic!("no line with {needles:?} in log:\n{log}"))
}

/// The (slot, pid) of each replacement spawned, in log order.
fn replacements(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter(|l| l.contains("event=spawn") && l.contains("role=replacement"))
        .map(|l| {
            let f = fields(l);
            (f["worker"].clone(), f["pid"].clone())
        })
        .collect()
}

#[test]
fn a_reload_replaces_every_worker_one_at_a_time() {
    let app = App::new(3, "");
    let master = app.start();
    let before = worker_pids(&app.status());
    app.set_token("reloaded");
    let status = reload_ok(&app, &master, 2, 3);
    let after = worker_pids(&status);
    assert!(before.is_disjoint(&after), "{before:?} -> {after:?}");
    every_worker_answers(&app, &after, "/", |body| {
        body.contains("token=reloaded") && body.contains("generation=2")
    });
    let log = master.wait_log("event=reload-done generation=2 workers=3", secs(10));
    assert!(log.contains("event=reload-start generation=2 workers=3 max_surge=1"));
    let spawned = replacements(&log);
    assert_eq!(spawned.len(), 3, "{log}");
    for (i, (slot, pid)) in spawned.iter().enumerate() {
        let spawn = line_of(&log, &[&format!("pid={pid} event=spawn")]);
        let ready = line_of(&log, &[&format!("worker={slot} pid={pid} event=ready")]);
        // The old worker of the slot is stopped once its replacement is ready.
        let stop = line_of(
            &log,
            &[&format!("worker={slot} pid="), "event=stop signal=TERM"],
        );
        assert!(spawn < ready && ready < stop, "slot {slot}:\n{log}");
        if i > 0 {
            let (prev_slot, prev_pid) = &spawned[i - 1];
            let prev_ready = line_of(
                &log,
                &[&format!("worker={prev_slot} pid={prev_pid} event=ready")],
            );
            assert!(
                prev_ready < spawn,
                "replacement {slot} started before {prev_slot} was ready:\n{log}"
            );
        }
    }
}

#[test]
fn max_surge_boots_replacements_together() {
    let app = App::new(3, "");
    let master = app.start();
    app.write_config(
        3,
        &format!(
            "max_surge: 3\n{}",
            app.env_line(&[("DEMO_BOOT_DELAY", "300ms")])
        ),
    );
    reload_ok(&app, &master, 2, 3);
    let log = master.log();
    assert!(log.contains("event=reload-start generation=2 workers=3 max_surge=3"));
    let spawned = replacements(&log);
    assert_eq!(spawned.len(), 3, "{log}");
    let last_spawn = spawned
        .iter()
        .map(|(_, pid)| line_of(&log, &[&format!("pid={pid} event=spawn")]))
        .max()
        .unwrap();
    for (slot, pid) in &spawned {
        let ready = line_of(&log, &[&format!("worker={slot} pid={pid} event=ready")]);
        assert!(last_spawn < ready, "not booted together:\n{log}");
    }
}

#[test]
fn a_new_worker_count_applies() {
    let app = App::new(2, "");
    let master = app.start();
    app.write_config(4, "");
    let status = reload_ok(&app, &master, 2, 4);
    let slots: Vec<u64> = App::worker_pids(&status).iter().map(|(s, _)| *s).collect();
    assert_eq!(slots, [0, 1, 2, 3]);
    // And back down: the highest slots leave.
    app.write_config(1, "");
    let status = reload_ok(&app, &master, 3, 1);
    assert_eq!(status["workers"][0]["slot"], 0);
}

#[test]
fn a_new_environment_applies() {
    let app = App::new(2, "");
    let master = app.start();
    app.write_config(2, &app.env_line(&[("RELOADED_VAR", "yes")]));
    let status = reload_ok(&app, &master, 2, 2);
    every_worker_answers(&app, &worker_pids(&status), "/env", |env| {
        env.lines().any(|l| l == "RELOADED_VAR=yes") && env.contains("FORKMASTER_GENERATION=2\n")
    });
}

#[test]
fn a_new_command_applies() {
    let app = App::new(2, "");
    let master = app.start();
    let other = app.dir.join("other-token");
    std::fs::write(&other, "from-command").unwrap();
    app.write_config(
        2,
        &format!(
            "command: ['{}', '--token-file', '{}']\n",
            demo(),
            other.display()
        ),
    );
    let status = reload_ok(&app, &master, 2, 2);
    every_worker_answers(&app, &worker_pids(&status), "/", |body| {
        body.contains("token=from-command")
    });
}

#[test]
fn an_invalid_config_changes_nothing() {
    let app = App::new(2, "");
    let master = app.start();
    let before = app.status();
    std::fs::write(&app.config, "workers: [\n").unwrap();
    // `-c` cannot find the master through a broken file: usage error, no signal.
    let (code, _, err) = client(&["reload", "-c", app.cfg(), "--wait"], secs(30));
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("forkmaster: config "), "{err}");
    assert_eq!(app.status()["reload"]["attempts"], 0);
    let pid_file = app.pid_file.to_str().unwrap();
    let (code, out, err) = client(&["reload", "-p", pid_file, "--wait"], secs(30));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.starts_with(&format!(
            "forkmaster: reload failed: config {}: ",
            app.config.display()
        )) && err
            .ends_with("; the rollout stopped and the previous configuration stays in force\n"),
        "{err}"
    );
    let log = master.wait_log("event=reload-failed", secs(10));
    assert!(log.contains("action=\"nothing changed\""), "{log}");
    assert_no_event(&log, "reload-start");
    let after = app.status();
    assert_eq!(worker_pids(&after), worker_pids(&before));
    assert_eq!(after["generation"], 1);
    assert_eq!(after["reload"]["state"], "failed");
    assert_eq!(wait_serving(&app.target)["generation"], "1");
}

#[test]
fn a_replacement_that_cannot_boot_stops_the_rollout_and_keeps_the_old_config() {
    let app = App::new(2, "");
    let master = app.start();
    let before = worker_pids(&app.status());
    app.write_config(
        2,
        &app.env_line(&[("DEMO_FAIL_BOOT", "3"), ("RELOADED_VAR", "yes")]),
    );
    let load = Load::start(&app.target, 2);
    load.wait_answers(5);
    let (code, out, err) = client(&["reload", "-c", app.cfg(), "--wait"], secs(60));
    assert_eq!(code, 1, "{out}{err}\nlog:\n{}", master.log());
    assert!(
        err.starts_with(
            "forkmaster: reload failed: worker=0 exited with status 3 before ready; last stderr: "
        ) && err.ends_with(
            "event=boot-failed status=3 error=DEMO_FAIL_BOOT\"; \
             the rollout stopped and the previous configuration stays in force\n"
        ),
        "{err}"
    );
    load.wait_answers(5);
    let generations = load.finish_without_failures();
    assert_eq!(generations.keys().collect::<Vec<_>>(), ["1"]);
    let log = master.log();
    assert!(
        log.contains("event=reload-failed") && log.contains("action=\"back to generation 1\""),
        "{log}"
    );
    // Only slot 0 was tried.
    assert_eq!(replacements(&log).len(), 1, "{log}");
    let status = only_generation(&app, &master, 1, 2);
    assert_eq!(worker_pids(&status), before);
    assert_eq!(status["reload"]["state"], "failed");
    // A worker that dies now comes back with the configuration in force.
    let _ = get(&app.target, "/crash");
    let status = app.wait_status("a crashed worker to be back", secs(30), |s| {
        s["ready"] == 2
            && s["workers"].as_array().unwrap().len() == 2
            && s["workers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["restarts"] == 1)
    });
    let respawned: Vec<_> = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["restarts"] == 1)
        .collect();
    assert_eq!(respawned.len(), 1, "{status:#}");
    assert_eq!(respawned[0]["generation"], 1, "{status:#}");
    let pid = respawned[0]["pid"].as_i64().unwrap();
    assert!(!before.contains(&(pid as i32)));
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains("DEMO_FAIL_BOOT"), "{environ}");
    assert!(!environ.contains("RELOADED_VAR"), "{environ}");
    assert!(environ.contains("FORKMASTER_GENERATION=1\0"), "{environ}");
}

#[test]
fn a_change_of_listeners_waits_for_an_upgrade() {
    let app = App::new(2, "");
    let master = app.start();
    app.write_config(
        2,
        &format!(
            "listen: ['unix:{}', '127.0.0.1:0']\n",
            app.socket().display()
        ),
    );
    let status = reload_ok(&app, &master, 2, 2);
    let log = master.log();
    assert!(
        log.contains(
            "event=reload listeners=unchanged reason=\"a change of listeners needs USR2 (upgrade)\""
        ),
        "{log}"
    );
    assert_eq!(log.matches("event=listen addr=").count(), 1, "{log}");
    every_worker_answers(&app, &worker_pids(&status), "/env", |env| {
        env.contains("\nLISTEN_FDS=1\n")
    });
}

#[test]
fn a_second_hup_supersedes_a_rollout_in_progress() {
    let app = App::new(3, "");
    let master = app.start();
    let first = app.dir.join("token-first");
    let last = app.dir.join("token-last");
    std::fs::write(&first, "first").unwrap();
    std::fs::write(&last, "last").unwrap();
    let token_env = |file: &std::path::Path, delay: &str| {
        format!(
            "env: {{DEMO_TOKEN_FILE: '{}', DEMO_BOOT_DELAY: '{delay}'}}\n",
            file.display()
        )
    };
    // The first reload's replacements boot for 2s: the second HUP comes first.
    app.write_config(3, &token_env(&first, "2s"));
    master.signal(Signal::SIGHUP);
    master.wait_log("event=reload-start generation=2", secs(10));
    master.wait_log("role=replacement", secs(10));
    app.write_config(3, &token_env(&last, "10ms"));
    let status = reload_ok(&app, &master, 3, 3);
    let log = master.log();
    assert!(
        log.contains("event=reload-abandoned reason=\"superseded by a new HUP\""),
        "{log}"
    );
    assert_not_logged(&log, "event=reload-done generation=2");
    every_worker_answers(&app, &worker_pids(&status), "/", |body| {
        body.contains("token=last") && body.contains("generation=3")
    });
    assert_eq!(status["reload"]["state"], "done");
    assert_eq!(status["reload"]["attempts"], 2);
}

#[test]
fn an_invalid_config_does_not_stop_a_rollout_in_progress() {
    let app = App::new(3, "");
    let master = app.start();
    // The first reload's replacements boot for 1s each.
    app.set_token("first");
    app.write_config(3, &app.env_line(&[("DEMO_BOOT_DELAY", "1s")]));
    master.signal(Signal::SIGHUP);
    master.wait_log("role=replacement", secs(10));
    std::fs::write(&app.config, "workers: [\n").unwrap();
    master.signal(Signal::SIGHUP);
    master.wait_log("action=\"nothing changed\"", secs(10));
    // Nothing changed: the first rollout goes on to the end.
    let status = only_generation(&app, &master, 2, 3);
    every_worker_answers(&app, &worker_pids(&status), "/", |body| {
        body.contains("token=first")
    });
}

#[test]
fn a_failed_rollout_leaves_no_worker_of_the_abandoned_generation() {
    let app = App::new(2, "");
    let master = app.start();
    // Slot 0's replacement boots; slot 1's exits at boot.
    app.write_config(
        2,
        &app.env_line(&[("DEMO_FAIL_WORKER", "1"), ("DEMO_FAIL_BOOT", "3")]),
    );
    let (code, out, err) = client(&["reload", "-c", app.cfg(), "--wait"], secs(60));
    assert_eq!(code, 1, "{out}{err}\nlog:\n{}", master.log());
    assert!(
        err.contains("worker=1 exited with status 3 before ready"),
        "{err}"
    );
    // The master is back at generation 1 with the previous configuration;
    // so must its workers be.
    let status = app.status();
    assert_eq!(status["generation"], 1);
    only_generation(&app, &master, 1, 2);
}
