//! Recycling (`max_worker_memory`, `max_worker_age`): a worker over a limit
//! is replaced surge-first, its replacement ready before it is signalled,
//! with no failed request; recycles wait for a HUP in progress; a failed
//! replacement leaves the old worker serving. And the counters `metrics`
//! shows survive a USR2 upgrade.

use crate::fixture::Fixture;
use crate::support::*;
use std::collections::HashMap;
use std::time::Duration;

/// `forkmaster metrics -p PIDFILE`: each sample line as `name{labels}` to
/// its value.
fn metrics(pid_file: &std::path::Path) -> HashMap<String, f64> {
    let pid_file = pid_file.to_str().unwrap();
    let (code, out, err) = client(&["metrics", "-p", pid_file], secs(10));
    assert_eq!(code, 0, "metrics: {out}{err}");
    out.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(name, value)| Some((name.to_string(), value.parse().ok()?)))
        .collect()
}

fn counter(samples: &HashMap<String, f64>, name: &str) -> f64 {
    samples
        .get(name)
        .copied()
        .unwrap_or_else(|| panic!("no {name} in {samples:?}"))
}

/// The index of the first master log line holding every one of `needles`.
fn line_of(log: &str, needles: &[&str]) -> usize {
    log.lines()
        .position(|l| l.contains(" forkmaster[") && needles.iter().all(|n| l.contains(n)))
        .unwrap_or_else(|| panic!("no line with {needles:?} in:\n{log}"))
}

#[test]
fn a_worker_over_its_memory_limit_is_replaced_surge_first_under_load() {
    let app = App::new(2, "");
    // Replacements boot for a while: long enough to be seen in `status`.
    let env = app.env_line(&[("DEMO_BOOT_DELAY", "2s")]);
    app.write_config(
        2,
        &format!("{env}max_worker_memory: 48M\nmemory_check_interval: 200ms\n"),
    );
    let master = app.start();
    let load = Load::start(&app.target, 2);
    load.wait_answers(20);

    // One worker (whichever answers) grows past the limit.
    let grown = get(&app.target, "/alloc?mb=80").expect("GET /alloc");
    assert_eq!(grown.status, 200, "{}", grown.body);
    let status = app.wait_status("a recycle in status", secs(30), |s| {
        s["workers"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w["recycle"] == "memory"))
    });
    let mut marked: Vec<(&str, &str)> = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["recycle"] == "memory")
        .map(|w| (w["rollout"].as_str().unwrap(), w["state"].as_str().unwrap()))
        .collect();
    marked.sort();
    assert_eq!(
        marked,
        [("incoming", "booting"), ("replaced", "ready")],
        "{status:#}"
    );
    let (code, table, err) = client(&["status", "-c", app.cfg()], secs(10));
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("recycling:memory"), "{table}");
    let log = master.wait_log("event=recycle-ready", secs(30));
    let recycle = &master_events(&log, "recycle")[0];
    let old = event_pid(recycle);
    let replacement = recycle["replacement"].clone();
    assert_eq!(recycle["reason"], "memory", "{recycle:?}");
    let private: u64 = recycle["private_bytes"].parse().unwrap();
    assert_eq!(recycle["limit_bytes"], (48u64 << 20).to_string());
    assert!(private > 48 << 20, "{recycle:?}");

    // The old worker exits, counted as recycled; meanwhile nothing failed.
    let exit = format!("pid={old} event=exit");
    let log = master.wait_log(&exit, secs(30));
    load.wait_answers(20);
    load.finish_without_failures();

    // Surge-first: the replacement was ready before the old worker's stop.
    let ready = line_of(&log, &[&format!("pid={replacement} event=ready")]);
    let stop = line_of(&log, &[&format!("pid={old} event=stop")]);
    let started = line_of(&log, &["event=recycle ", &format!("pid={old}")]);
    assert!(started < ready && ready < stop, "{log}");
    let status = app.status();
    assert_eq!(status["ready"], 2, "{status:#}");

    let samples = metrics(&app.pid_file);
    let recycles = "forkmaster_worker_recycles_total{reason=\"memory\"}";
    assert_eq!(counter(&samples, recycles), 1.0);
    let exits = "forkmaster_worker_exits_total{reason=\"recycled\"}";
    assert_eq!(counter(&samples, exits), 1.0);
    let stopped = "forkmaster_worker_exits_total{reason=\"stopped\"}";
    assert_eq!(counter(&samples, stopped), 0.0);
}

#[test]
fn workers_past_their_age_recycle_apart_with_jitter_and_without_failures() {
    let app = App::new(
        4,
        "max_worker_age: 3s\nmax_worker_age_jitter: 50%\nmax_surge: 4\n",
    );
    let master = app.start();
    let load = Load::start(&app.target, 2);
    let log = master.wait_log_count("event=recycle-ready", 4, secs(30));
    load.finish_without_failures();
    let uptimes: Vec<u64> = master_events(&log, "recycle")
        .iter()
        .take(4)
        .map(|e| {
            assert_eq!(e["reason"], "age", "{e:?}");
            e["uptime_ms"].parse().unwrap()
        })
        .collect();
    // Each limit was drawn in [1.5 s, 3 s] from its worker's start.
    for ms in &uptimes {
        assert!((1400..=4500).contains(ms), "{uptimes:?}");
    }
    let spread = uptimes.iter().max().unwrap() - uptimes.iter().min().unwrap();
    assert!(spread >= 50, "all recycled together: {uptimes:?}");
    let samples = metrics(&app.pid_file);
    let recycles = "forkmaster_worker_recycles_total{reason=\"age\"}";
    assert!(counter(&samples, recycles) >= 4.0, "{samples:?}");
}

#[test]
fn a_recycle_due_during_a_rolling_restart_waits_for_its_end() {
    let app = App::new(2, "");
    let master = app.start();
    // The reloaded workers boot slowly and are due for recycling at once.
    let env = app.env_line(&[("DEMO_BOOT_DELAY", "1500ms")]);
    app.write_config(
        2,
        &format!("{env}max_worker_age: 1s\nmax_worker_age_jitter: 0\n"),
    );
    master.signal(nix::sys::signal::Signal::SIGHUP);
    let log = master.wait_log("event=recycle-ready", secs(60));
    let done = line_of(&log, &["event=reload-done"]);
    let first_recycle = line_of(&log, &["event=recycle "]);
    assert!(done < first_recycle, "{log}");
    // The first replacement of the rollout was due long before the end.
    let reload_ready = master_events(&log, "ready");
    assert!(reload_ready.len() >= 4, "{log}");
}

#[test]
fn a_failed_replacement_leaves_the_old_worker_serving_and_is_retried() {
    let dir = TempDir::new();
    let flag = dir.join("fail-boot");
    let socket = dir.join("app.sock");
    let script = format!("test -e '{}' && exit 3; exec '{}'", flag.display(), demo());
    let pid_file = dir.join("app.pid");
    let master = Fixture::new(&dir)
        .workers(1)
        .listen(format!("unix:{}", socket.display()))
        .pid_file(&pid_file)
        .args(&["--max-worker-age", "3s", "--max-worker-age-jitter", "0"])
        .command(&["/bin/sh", "-c", &script])
        .start();
    master.wait_ready();
    std::fs::write(&flag, "").unwrap();
    let target = Target::unix(&socket);
    let original = wait_serving(&target)["pid"].clone();

    let log = master.wait_log_count("event=recycle-failed", 2, secs(30));
    assert!(log.contains("action=\"old worker keeps serving\""), "{log}");
    // Capacity held: the original still serves, alone and ready.
    assert_eq!(wait_serving(&target)["pid"], original);
    let status: serde_json::Value = {
        let (code, out, err) = client(
            &["status", "-p", pid_file.to_str().unwrap(), "--json"],
            secs(10),
        );
        assert_eq!(code, 0, "{out}{err}");
        serde_json::from_str(&out).unwrap()
    };
    assert_eq!(status["ready"], 1, "{status:#}");
    let failures: Vec<u32> = master_events(&log, "recycle-failed")
        .iter()
        .map(|e| e["failures"].parse().unwrap())
        .collect();
    assert_eq!(failures[..2], [1, 2], "{log}");

    // Booting works again: the next retry recycles it.
    std::fs::remove_file(&flag).unwrap();
    master.wait_log("event=recycle-ready", secs(30));
    let served = wait_for("the replacement to serve", secs(20), || {
        let pid = wait_serving(&target)["pid"].clone();
        (pid != original).then_some(pid)
    });
    assert_ne!(served, original);
}

#[test]
fn counters_survive_an_upgrade() {
    let app = App::new(2, "");
    let mut master = app.start();
    // A worker exits on its own: counted, and respawned.
    let _ = get(&app.target, "/exit?code=3");
    master.wait_log("event=respawn", secs(20));
    master.wait_log_count("event=ready", 3, secs(20));
    let before = metrics(&app.pid_file);
    let exits = "forkmaster_worker_exits_total{reason=\"exit\"}";
    assert_eq!(counter(&before, exits), 1.0);

    let pid_file = app.pid_file.to_str().unwrap();
    let (code, out, err) = client(&["upgrade", "-p", pid_file, "--wait"], secs(60));
    assert_eq!(code, 0, "{out}{err}");
    assert!(master.wait_exit(secs(20)).success());
    assert_ne!(app.master_pid(), master.pid());

    let after = metrics(&app.pid_file);
    assert_eq!(counter(&after, exits), 1.0, "{after:?}");
    let respawns = "forkmaster_worker_respawns_total";
    assert_eq!(counter(&after, respawns), counter(&before, respawns));
    let upgrades = "forkmaster_upgrades_total{outcome=\"done\"}";
    assert_eq!(counter(&after, upgrades), 1.0, "{after:?}");
}

#[test]
fn limits_far_off_never_wake_an_idle_master() {
    let dir = TempDir::new();
    let run = dir.join("run");
    std::fs::create_dir(&run).expect("runtime dir");
    let master = Fixture::new(&dir)
        .workers(2)
        .unix("app.sock")
        .args(&["--max-worker-age", "1h", "--max-worker-memory", "1G"])
        .args(&["--memory-check-interval", "1h"])
        .args(&["--runtime-dir", &run.display().to_string()])
        .start();
    master.wait_ready();
    master.wait_log_count("notified=true", 2, secs(10));
    // The age deadlines and the memory check are an hour away, and nothing
    // polls.
    assert_never_wakes(master.pid(), Duration::from_secs(1));
}
