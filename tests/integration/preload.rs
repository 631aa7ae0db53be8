//! `--preload`: the app loads once per generation in the preloader, which
//! forks the workers (docs/PRELOAD.md), with the Python helper from
//! contrib/preload/python and the Ruby one from contrib/preload/ruby, each
//! behind a small stdlib HTTP app (tests/apps).

use crate::source::assert_no_event;
use crate::support::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The path of the test app `name` in tests/apps.
fn script(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/apps")
        .join(name)
        .display()
        .to_string()
}

/// The Python test app, tests/apps/preload_app.py.
const PYTHON: [&str; 2] = ["python3", "preload_app.py"];

/// The Python app behind a Unix socket, `preload` on or off, its boots
/// recorded in `boots` (one line per load of the app).
fn python_app(workers: usize, preload: bool, mode: &str) -> App {
    let app = App::new(workers, "");
    let yaml = format!("preload: {preload}\n");
    write_app_config(&app, workers, PYTHON, mode, &[], &yaml);
    app
}

/// The Ruby app (tests/apps/preload_app.rb), as `python_app`; `None`
/// (the test skipped, loudly) where Ruby is not installed.
fn ruby_app(test: &str, workers: usize, preload: bool) -> Option<App> {
    let ruby = std::process::Command::new("ruby").arg("--version").output();
    if !ruby.is_ok_and(|out| out.status.success()) {
        skip_unless_required(&format!(
            "{test}: ruby is not installed (apt-get install ruby)"
        ));
        return None;
    }
    let app = App::new(workers, "");
    let yaml = format!("preload: {preload}\n");
    write_app_config(&app, workers, ["ruby", "preload_app.rb"], "", &[], &yaml);
    Some(app)
}

/// The Python app in `mode` with more variables in its environment.
fn python_app_env(workers: usize, mode: &str, env: &[(&str, &str)]) -> App {
    let app = App::new(workers, "");
    write_app_config(&app, workers, PYTHON, mode, env, "preload: true\n");
    app
}

/// Writes `app`'s config: the test app `command` (an interpreter and a
/// script in tests/apps), its boots recorded in `boots`, `mode` as
/// `PRELOAD_APP_MODE` and `env` in its environment, then `yaml` (more keys:
/// `preload`, `upgrade_mode`, ...).
fn write_app_config(
    app: &App,
    workers: usize,
    command: [&str; 2],
    mode: &str,
    env: &[(&str, &str)],
    yaml: &str,
) {
    let boots = app.dir.join("boots");
    let mut pairs = vec![
        ("PRELOAD_APP_BOOTS", boots.to_str().unwrap()),
        ("PRELOAD_APP_MODE", mode),
    ];
    pairs.extend_from_slice(env);
    let extra = format!(
        "command: ['{}', '{}']\n{yaml}{}",
        command[0],
        script(command[1]),
        app.env_line(&pairs)
    );
    app.write_config(workers, &extra);
}

/// Runs the master to its end; it must fail. Its stderr.
fn failed_start(fixture: Fixture<'_>) -> String {
    let out = fixture.run(secs(60));
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn boots(app: &App) -> Vec<i32> {
    std::fs::read_to_string(app.dir.join("boots"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("boot pid=")?.parse().ok())
        .collect()
}

/// The serving preloader in a status: (pid, generation, spawns).
fn preloader(status: &serde_json::Value) -> Option<(i32, u64, u64)> {
    status["preloaders"]
        .as_array()?
        .iter()
        .find(|p| p["state"] == "serving")
        .map(|p| {
            (
                p["pid"].as_i64().unwrap() as i32,
                p["generation"].as_u64().unwrap(),
                p["spawns"].as_u64().unwrap(),
            )
        })
}

fn exe(pid: i32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

/// Every answer comes from a worker forked from `preloader`.
fn assert_forked_from(app: &App, master: i32, preloader: i32) {
    let status = app.status();
    for (_, pid) in App::worker_pids(&status) {
        let pid = pid as i32;
        let (_, ppid, pgid) = proc_stat(pid).expect("worker runs");
        assert_eq!(ppid, master, "worker {pid} is the master's child");
        assert_eq!(pgid, pid, "worker {pid} leads its own group");
        assert_eq!(exe(pid), exe(preloader), "worker {pid} runs the app");
    }
    // Its environment as the app sees it (/proc shows the preloader's).
    for _ in 0..4 {
        let fields = get(&app.target, "/").expect("GET /").fields();
        assert_eq!(fields["boot_pid"], preloader.to_string(), "{fields:?}");
        assert_eq!(fields["hooks"], "after_fork", "{fields:?}");
        assert_eq!(fields["listen_pid"], fields["pid"], "{fields:?}");
        assert_eq!(fields["preload_fd"], "-", "{fields:?}");
        assert_eq!(fields["notify"], "yes", "{fields:?}");
        assert_ne!(fields["worker"], "-", "{fields:?}");
    }
}

#[test]
fn workers_are_forked_from_one_boot_of_the_app() {
    let app = python_app(2, true, "");
    let master = app.start();
    let status = app.status();
    let (preloader_pid, generation, spawns) = preloader(&status).expect("a serving preloader");
    assert_eq!((generation, spawns), (1, 2), "{status:#}");
    // Loaded once, by the preloader; no worker booted the app again.
    assert_eq!(boots(&app), [preloader_pid]);
    assert_eq!(proc_stat(preloader_pid).unwrap().1, master.pid());
    assert_forked_from(&app, master.pid(), preloader_pid);
    let preloader_env = proc_environ(preloader_pid);
    assert!(preloader_env.contains_key("FORKMASTER_PRELOAD_FD"));
    assert!(!preloader_env.contains_key("FORKMASTER_WORKER"));
    assert!(!preloader_env.contains_key("NOTIFY_SOCKET"));
    assert_eq!(preloader_env["LISTEN_PID"], preloader_pid.to_string());
    let (code, text, err) = client(&["status", "-p", app.pid_file.to_str().unwrap()], secs(10));
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains(&format!(
            "preloader: pid={preloader_pid} generation=1 state=serving"
        )),
        "{text}"
    );
    assert!(text.contains("spawns=2"), "{text}");
}

#[test]
fn exec_mode_is_unchanged_for_the_same_app() {
    let app = python_app(2, false, "");
    let master = app.start();
    let status = app.status();
    assert!(preloader(&status).is_none(), "{status:#}");
    // Each worker loaded the app itself.
    let mut booted = boots(&app);
    booted.sort_unstable();
    let mut workers: Vec<i32> = App::worker_pids(&status)
        .into_iter()
        .map(|(_, p)| p as i32)
        .collect();
    workers.sort_unstable();
    assert_eq!(booted, workers);
    let fields = get(&app.target, "/").expect("GET /").fields();
    assert_eq!(fields["boot_pid"], fields["pid"], "{fields:?}");
    assert_no_event(&master.log(), "preloader-ready");
}

#[test]
fn a_crashed_worker_is_forked_again_from_the_preloader() {
    let app = python_app(2, true, "");
    let master = app.start();
    let (preloader_pid, _, _) = preloader(&app.status()).unwrap();
    let (_, victim) = App::worker_pids(&app.status())[0];
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    let status = app.wait_status("the crashed worker replaced", secs(20), |s| {
        let pids = App::worker_pids(s);
        pids.len() == 2
            && pids.iter().all(|(_, p)| *p != victim)
            && s["ready"] == 2
            && preloader(s).is_some_and(|(_, _, spawns)| spawns == 3)
    });
    assert_eq!(preloader(&status).unwrap().0, preloader_pid);
    assert_eq!(boots(&app), [preloader_pid]);
    assert_forked_from(&app, master.pid(), preloader_pid);
}

#[test]
fn a_crashed_preloader_is_restarted_while_the_workers_serve() {
    let app = python_app(2, true, "");
    let master = app.start();
    let status = app.status();
    let (first, _, _) = preloader(&status).unwrap();
    let workers = App::worker_pids(&status);
    let load = Load::start(&app.target, 2);
    load.wait_answers(10);
    kill(Pid::from_raw(first), Signal::SIGKILL).unwrap();
    let status = app.wait_status("a new preloader", secs(20), |s| {
        preloader(s).is_some_and(|(pid, _, _)| pid != first)
    });
    let (second, _, _) = preloader(&status).unwrap();
    assert_eq!(App::worker_pids(&status), workers, "workers kept serving");
    load.wait_answers(10);
    load.finish_without_failures();
    master.wait_log("event=exit role=preloader", secs(5));
    assert_eq!(boots(&app), [first, second]);
    // Workers now come from the new one.
    let (_, victim) = workers[0];
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    let status = app.wait_status("the worker forked from the new preloader", secs(20), |s| {
        s["ready"] == 2 && App::worker_pids(s).iter().all(|(_, p)| *p != victim)
    });
    assert_eq!(preloader(&status), Some((second, 1, 1)), "{status:#}");
    let replacement = App::worker_pids(&status)
        .into_iter()
        .find(|(slot, _)| *slot == workers[0].0)
        .unwrap()
        .1 as i32;
    assert_eq!(proc_stat(replacement).unwrap().1, master.pid());
}

#[test]
fn upgrades_and_reloads_fork_from_a_new_preloader_and_fail_no_request() {
    let app = python_app(2, true, "");
    let master = app.start();
    let (first, _, _) = preloader(&app.status()).unwrap();
    let load = Load::start(&app.target, 2);
    load.wait_answers(10);

    app.set_token("upgraded");
    let (code, out, err) = client(&["upgrade", "-c", app.cfg(), "--wait"], secs(120));
    assert_eq!(code, 0, "upgrade: {out}{err}\n{}", master.log());
    let new_master = app.master_pid();
    let status = app.status();
    let (second, _, _) = preloader(&status).expect("the new master's preloader");
    assert_ne!(second, first);
    assert_forked_from(&app, new_master, second);
    wait_for("the old preloader to go", secs(20), || {
        (!is_running(first)).then_some(())
    });

    app.set_token("reloaded");
    let (code, out, err) = client(&["reload", "-c", app.cfg(), "--wait"], secs(120));
    assert_eq!(code, 0, "reload: {out}{err}");
    let status = app.wait_status("only the reloaded generation", secs(20), |s| {
        s["preloaders"].as_array().is_some_and(|p| p.len() == 1)
            && s["workers"].as_array().unwrap().len() == 2
    });
    let (third, generation, _) = preloader(&status).unwrap();
    assert_ne!(third, second);
    assert_eq!(generation, 3, "{status:#}");
    wait_for("the replaced preloader to go", secs(20), || {
        (!is_running(second)).then_some(())
    });
    assert_forked_from(&app, new_master, third);
    load.wait_answers(10);
    load.finish_without_failures();
    assert_eq!(boots(&app), [first, second, third]);
}

#[test]
fn an_app_that_ignores_the_preload_fd_fails_with_a_clear_message() {
    let dir = TempDir::new();
    let err = failed_start(
        Fixture::new(&dir)
            .unix("app.sock")
            .arg("--preload")
            .command(&["true"]),
    );
    assert!(
        err.contains("the app did not answer on FORKMASTER_PRELOAD_FD: does it load forkmaster's preload helper?"),
        "{err}"
    );
}

#[test]
fn garbage_from_a_serving_preloader_is_logged_and_ignored() {
    let app = python_app(2, true, "garbage");
    let master = app.start();
    let log = master.wait_log_count("event=preload_message_ignored", 3, secs(10));
    assert!(log.contains("not a JSON object"), "{log}");
    assert!(log.contains("unknown type"), "{log}");
    let (preloader_pid, _, _) = preloader(&app.status()).unwrap();
    assert_forked_from(&app, master.pid(), preloader_pid);
}

#[test]
fn a_flooding_preloader_gets_a_bounded_log_and_the_master_keeps_serving() {
    let dir = TempDir::new();
    let flooded = dir.join("flooded");
    let app = python_app_env(
        2,
        "flood",
        &[
            ("PRELOAD_APP_FLOODED", flooded.to_str().unwrap()),
            ("PRELOAD_APP_FLOOD_SECS", "4"),
        ],
    );
    let master = app.fixture().start();
    master.wait_log("event=preload_message_ignored", secs(20));
    // While the flood lasts: workers are forked, status answers at once,
    // and the master spends little of its time on the junk.
    let (cpu_before, flood_seen) = (cpu_time(master.pid()).unwrap(), Instant::now());
    let mut answered = 0;
    while !flooded.exists() {
        let asked = Instant::now();
        let status = app.try_status();
        let took = asked.elapsed();
        assert!(
            status.is_some() && took < Duration::from_secs(2),
            "status took {took:?} during the flood: {status:?}"
        );
        answered += 1;
    }
    assert!(answered > 0);
    let cpu = cpu_time(master.pid()).unwrap() - cpu_before;
    let elapsed = flood_seen.elapsed();
    assert!(
        cpu < elapsed / 4,
        "the master spent {cpu:?} of CPU in {elapsed:?} of flood"
    );
    master.wait_ready();
    let sent: u64 = file_text(&flooded).trim().parse().unwrap();
    assert!(sent > 1000, "the flood: {sent} packets");
    // Every packet is either logged or counted in a later line.
    let log = master.wait_for("every flooded packet accounted for", secs(10), |m| {
        let log = m.log();
        let lines = master_events(&log, "preload_message_ignored");
        let logged = lines.len() as u64
            + lines
                .iter()
                .map(|e| e["suppressed_before"].parse::<u64>().unwrap())
                .sum::<u64>()
            + master_events(&log, "preload_messages_suppressed")
                .iter()
                .map(|e| e["count"].parse::<u64>().unwrap())
                .sum::<u64>();
        (logged >= sent).then_some(log)
    });
    let lines = log.matches("event=preload_message_ignored").count()
        + log.matches("event=preload_messages_suppressed").count();
    assert!(
        lines <= 40,
        "{lines} log lines for a flood of {sent} packets"
    );
    assert_no_event(&log, "preloader-failed");
    // No worker's READY=1 was taken for a stranger's, however early.
    assert_no_event(&log, "notify-ignored");
    let (preloader_pid, _, spawns) = preloader(&app.status()).unwrap();
    assert_eq!(spawns, 2);
    assert_forked_from(&app, master.pid(), preloader_pid);
}

#[test]
fn garbage_before_hello_fails_the_start() {
    let app = python_app(1, true, "garbage-first");
    let err = failed_start(app.fixture());
    assert!(err.contains("its first message is not a hello"), "{err}");
}

#[test]
fn a_preloader_whose_spawns_all_fail_trips_the_circuit_breaker() {
    let app = python_app(1, true, "refuse");
    let err = failed_start(app.fixture());
    assert!(err.contains("5 spawns in a row failed"), "{err}");
    assert!(err.contains("refused by the test"), "{err}");
    assert!(err.contains("event=startup-failed"), "{err}");
}

#[test]
fn a_failed_spawn_waits_out_its_backoff_before_the_next() {
    // Every spawn within 0.6 s of the first fails: asked again at once,
    // five fail in a few milliseconds and trip the circuit breaker; spaced
    // by the backoff (100 ms, 200 ms, 400 ms), the fourth one works.
    let dir = TempDir::new();
    let spawns = dir.join("spawns");
    let app = python_app_env(
        1,
        "glitch",
        &[("PRELOAD_APP_SPAWNS", spawns.to_str().unwrap())],
    );
    let master = app.start();
    let log = master.log();
    assert_no_event(&log, "preloader-failed");
    let times: Vec<(f64, bool)> = file_text(&spawns)
        .lines()
        .map(|l| {
            let f = fields(l);
            (f["at"].parse().unwrap(), f["failed"] == "yes")
        })
        .collect();
    let failed = times.iter().filter(|(_, failed)| *failed).count();
    assert!((1..5).contains(&failed), "{times:?}\n{log}");
    assert!(!times.last().unwrap().1, "the last spawn worked: {times:?}");
    let delays: Vec<u64> = master_events(&log, "respawn")
        .iter()
        .filter(|e| e.get("worker").is_some_and(|w| w == "0"))
        .map(|e| e["delay"].trim_end_matches("ms").parse().unwrap())
        .collect();
    assert_eq!(delays.len(), failed, "{log}");
    for (i, pair) in times.windows(2).enumerate() {
        let gap_ms = (pair[1].0 - pair[0].0) * 1000.0;
        // The previous spawn's delivery may lag a little; the backoff counts
        // from its answer.
        let min = delays[i] as f64 * 0.9;
        assert!(
            gap_ms >= min,
            "spawn {} came {gap_ms:.1} ms after the one before, its backoff is {} ms: {times:?}\n{log}",
            i + 2,
            delays[i]
        );
    }
}

#[test]
fn a_pid_that_never_becomes_the_masters_child_is_never_believed() {
    let app = python_app(1, true, "liar");
    let err = failed_start(app.fixture().arg("--spawn-timeout").arg("200ms"));
    assert!(
        err.contains("which did not become our child within 200ms"),
        "{err}"
    );
    assert!(err.contains("5 spawns in a row failed"), "{err}");
    // The master was named, and never taken for a worker.
    assert_no_event(&err, "ready");
}

/// The app's config again, in `mode`.
fn rewrite(app: &App, workers: usize, mode: &str) {
    write_app_config(app, workers, PYTHON, mode, &[], "preload: true\n");
}

#[test]
fn a_reload_whose_preloader_fails_goes_back_to_the_serving_one() {
    let app = python_app(2, true, "");
    let master = app.start();
    let status = app.status();
    let (first, _, _) = preloader(&status).unwrap();
    let workers = App::worker_pids(&status);
    rewrite(&app, 2, "garbage-first");
    let (code, out, err) = client(&["reload", "-c", app.cfg(), "--wait"], secs(60));
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("its first message is not a hello"),
        "{out}{err}"
    );
    let status = app.wait_status("only the first preloader", secs(20), |s| {
        s["preloaders"].as_array().is_some_and(|p| p.len() == 1)
    });
    assert_eq!(preloader(&status).unwrap().0, first);
    assert_eq!(App::worker_pids(&status), workers);
    assert_forked_from(&app, master.pid(), first);
}

#[test]
fn an_upgrade_whose_preloader_fails_leaves_the_old_master_serving() {
    let app = python_app(1, true, "");
    let master = app.start();
    let (first, _, _) = preloader(&app.status()).unwrap();
    rewrite(&app, 1, "garbage-first");
    let (code, out, err) = client(&["upgrade", "-c", app.cfg(), "--wait"], secs(60));
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("its first message is not a hello"),
        "{out}{err}"
    );
    assert_eq!(app.master_pid(), master.pid());
    assert_eq!(preloader(&app.status()).unwrap().0, first);
    assert_forked_from(&app, master.pid(), first);
}

#[test]
fn an_app_that_never_says_hello_fails_after_the_ready_timeout() {
    let dir = TempDir::new();
    let err = failed_start(
        Fixture::new(&dir)
            .unix("app.sock")
            .args(&["--preload", "--ready-timeout", "300ms"])
            .command(&["sleep", "60"]),
    );
    assert!(
        err.contains("no hello within 300ms: the app did not answer on FORKMASTER_PRELOAD_FD"),
        "{err}"
    );
    assert!(err.contains("event=startup-failed attempts=3"), "{err}");
}

#[test]
fn an_oversize_packet_fails_the_generation() {
    let app = python_app(1, true, "oversize");
    let err = failed_start(app.fixture());
    assert!(
        err.contains("sent a packet of 70000 bytes, over the 65536-byte limit"),
        "{err}"
    );
}

#[test]
fn a_hello_in_another_protocol_version_names_both() {
    let app = python_app(1, true, "version2");
    let err = failed_start(app.fixture());
    assert!(
        err.contains("speaks preload protocol version 2; this master speaks version 1"),
        "{err}"
    );
}

#[test]
fn ruby_workers_are_forked_from_one_boot_and_survive_upgrades_and_reloads() {
    let Some(app) = ruby_app(
        "ruby_workers_are_forked_from_one_boot_and_survive_upgrades_and_reloads",
        2,
        true,
    ) else {
        return;
    };
    let master = app.start();
    let (first, generation, spawns) = preloader(&app.status()).expect("a serving preloader");
    assert_eq!((generation, spawns), (1, 2));
    assert_eq!(boots(&app), [first]);
    assert_forked_from(&app, master.pid(), first);

    let load = Load::start(&app.target, 2);
    load.wait_answers(10);
    app.set_token("upgraded");
    let (code, out, err) = client(&["upgrade", "-c", app.cfg(), "--wait"], secs(120));
    assert_eq!(code, 0, "upgrade: {out}{err}\n{}", master.log());
    let new_master = app.master_pid();
    let (second, _, _) = preloader(&app.status()).expect("the new master's preloader");
    assert_ne!(second, first);
    assert_forked_from(&app, new_master, second);

    app.set_token("reloaded");
    let (code, out, err) = client(&["reload", "-c", app.cfg(), "--wait"], secs(120));
    assert_eq!(code, 0, "reload: {out}{err}");
    let status = app.wait_status("only the reloaded generation", secs(20), |s| {
        s["preloaders"].as_array().is_some_and(|p| p.len() == 1)
            && s["workers"].as_array().unwrap().len() == 2
    });
    let (third, _, _) = preloader(&status).unwrap();
    assert_ne!(third, second);
    assert_forked_from(&app, new_master, third);
    load.wait_answers(10);
    load.finish_without_failures();
    assert_eq!(boots(&app), [first, second, third]);
}

#[test]
fn the_ruby_app_runs_unchanged_in_exec_mode() {
    let Some(app) = ruby_app("the_ruby_app_runs_unchanged_in_exec_mode", 2, false) else {
        return;
    };
    let _master = app.start();
    let status = app.status();
    assert!(preloader(&status).is_none(), "{status:#}");
    let fields = get(&app.target, "/").expect("GET /").fields();
    assert_eq!(fields["boot_pid"], fields["pid"], "{fields:?}");
    assert_eq!(fields["hooks"], "-", "{fields:?}");
    assert_eq!(boots(&app).len(), 2);
}

/// The preload app with `upgrade_mode: in-place` and `mode` in its env.
fn in_place_app(app: &App, workers: usize, mode: &str) {
    let yaml = "preload: true\nupgrade_mode: in-place\nready_timeout: 20s\n";
    write_app_config(app, workers, PYTHON, mode, &[], yaml);
}

#[test]
fn an_in_place_upgrade_forks_the_new_generation_from_a_new_preloader() {
    let app = App::new(2, "");
    in_place_app(&app, 2, "");
    let master = app.start();
    let (first, _, _) = preloader(&app.status()).unwrap();
    let load = Load::start(&app.target, 2);
    load.wait_answers(10);

    let (code, out, err) = client(&["upgrade", "-c", app.cfg(), "--wait"], secs(120));
    assert_eq!(code, 0, "upgrade: {out}{err}\n{}", master.log());
    assert_eq!(app.master_pid(), master.pid(), "the pid is kept");
    let status = app.wait_status("one preloader, of generation 2", secs(20), |s| {
        s["preloaders"].as_array().is_some_and(|p| p.len() == 1)
            && preloader(s).is_some_and(|(_, g, _)| g == 2)
    });
    let (second, _, _) = preloader(&status).unwrap();
    assert_ne!(second, first);
    assert_forked_from(&app, master.pid(), second);
    // The old preloader came through the exec: the new image stops it, and
    // knows its exit.
    master.wait_log(
        &format!("event=preloader-resumed role=preloader pid={first} generation=1"),
        secs(5),
    );
    master.wait_log(
        &format!("event=exit role=preloader pid={first} generation=1 status=0 stopped=yes"),
        secs(20),
    );
    assert_eq!(boots(&app).len(), 2);

    // A failed in-place upgrade: the old generation keeps serving, and a
    // worker of it that dies is forked again from its own preloader, handed
    // across the exec: the code on disk now is not loaded.
    in_place_app(&app, 2, "refuse");
    let (code, out, err) = client(&["upgrade", "-c", app.cfg(), "--wait"], secs(120));
    assert_eq!(code, 1, "upgrade: {out}{err}\n{}", master.log());
    assert!(err.contains("keeps serving"), "{err}");
    // The load stops first: a request in the hands of the killed worker fails.
    load.wait_answers(10);
    load.finish_without_failures();
    let (_, victim) = App::worker_pids(&app.status())[0];
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    let status = app.wait_status("the killed worker replaced", secs(30), |s| {
        let pids = App::worker_pids(s);
        pids.len() == 2
            && pids.iter().all(|(_, p)| *p != victim)
            && s["workers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|w| w["state"] == "ready" && w["generation"] == 2)
    });
    let (third, generation, spawns) = preloader(&status).expect("a preloader of generation 2");
    assert_eq!((third, generation, spawns), (second, 2, 3), "{status:#}");
    // Generation 1, 2 and the failed 3: no second load of generation 2.
    assert_eq!(boots(&app).len(), 3);
    for (_, pid) in App::worker_pids(&status) {
        assert_eq!(proc_stat(pid as i32).unwrap().1, master.pid());
    }
    let load = Load::start(&app.target, 2);
    load.wait_answers(10);
    load.finish_without_failures();
}
