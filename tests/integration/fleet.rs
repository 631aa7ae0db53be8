//! `status` shows the fleet: each worker's and the master's memory (RSS,
//! PSS, private, shared) and CPU (time, recent %), and which workers a
//! rolling restart is replacing.

use crate::fixture::Fixture;
use crate::support::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// The memory and CPU figures of one process in `status --json`, checked
/// for plausibility.
#[track_caller]
fn assert_plausible(process: &Value, status: &Value) {
    let bytes = |key: &str| {
        process[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no {key} in {process:#}\nof {status:#}"))
    };
    let (rss, pss, private, shared) = (
        bytes("rss_bytes"),
        bytes("pss_bytes"),
        bytes("private_bytes"),
        bytes("shared_bytes"),
    );
    assert!(rss > 0, "{process:#}");
    assert!(pss > 0 && pss <= rss, "{process:#}");
    // The kernel sums both from the same pages, in kB.
    assert!(
        (private + shared).abs_diff(rss) <= 64 * 1024,
        "private + shared != rss: {process:#}"
    );
    let cpu = process["cpu_secs"].as_f64().expect("cpu_secs");
    assert!(cpu >= 0.0, "{process:#}");
    let percent = process["cpu_percent"].as_f64().expect("cpu_percent");
    assert!(percent >= 0.0, "{process:#}");
}

fn workers(status: &Value) -> &Vec<Value> {
    status["workers"].as_array().expect("workers")
}

#[test]
fn status_json_shows_memory_and_cpu_of_the_master_and_every_worker() {
    let app = App::new(3, "");
    let master = app.start();
    let status = app.status();
    assert_eq!(status["pid"], master.pid());
    assert_plausible(&status, &status);
    assert_eq!(workers(&status).len(), 3, "{status:#}");
    for worker in workers(&status) {
        assert_plausible(worker, &status);
        assert_eq!(worker["rollout"], Value::Null, "{status:#}");
    }
    // A second request measures recent CPU from the first: still figures.
    let again = app.status();
    assert_plausible(&again, &again);
    for worker in workers(&again) {
        assert_plausible(worker, &again);
    }
}

#[test]
fn a_busy_worker_shows_more_cpu_than_an_idle_one() {
    let dir = TempDir::new();
    let pid_file = dir.join("app.pid").display().to_string();
    let master = Fixture::new(&dir)
        .workers(2)
        .tcp()
        .ready("delay:100ms")
        .pid_file(&pid_file)
        .command(&[
            "/bin/sh",
            "-c",
            "if [ \"$FORKMASTER_WORKER\" = 0 ]; then while :; do :; done; fi; exec sleep 600",
        ])
        .start();
    master.wait_ready();
    let status_json = || {
        let (code, out, _) = client(&["status", "-p", &pid_file, "--json"], secs(10));
        serde_json::from_str::<Value>(&out)
            .ok()
            .filter(|_| code == 0)
    };
    let slot = |status: &Value, slot: u64| {
        workers(status)
            .iter()
            .find(|w| w["slot"] == slot)
            .cloned()
            .unwrap_or_else(|| panic!("no worker in slot {slot}: {status:#}"))
    };
    // Until the busy one has burnt a measurable amount.
    let status = master.wait_for("the busy worker to use CPU", secs(30), |_| {
        status_json().filter(|s| slot(s, 0)["cpu_secs"].as_f64().unwrap_or(0.0) >= 0.3)
    });
    let (busy, idle) = (slot(&status, 0), slot(&status, 1));
    let busy_percent = busy["cpu_percent"].as_f64().expect("busy cpu_percent");
    let idle_percent = idle["cpu_percent"].as_f64().expect("idle cpu_percent");
    assert!(
        busy_percent >= 10.0 && busy_percent > idle_percent + 5.0,
        "busy {busy:#}\nidle {idle:#}"
    );
    assert!(
        idle["cpu_secs"].as_f64().expect("idle cpu_secs") < 0.3,
        "{idle:#}"
    );
    // Later requests measure from the previous one: still busy.
    let (code, out, err) = client(&["status", "-p", &pid_file, "--json"], secs(10));
    assert_eq!(code, 0, "{err}");
    let again: Value = serde_json::from_str(&out).expect("JSON");
    let busy_percent = slot(&again, 0)["cpu_percent"]
        .as_f64()
        .expect("cpu_percent");
    assert!(busy_percent >= 10.0, "{again:#}");
}

#[test]
fn the_table_shows_memory_and_cpu_columns() {
    let app = App::new(2, "");
    let master = app.start();
    let (code, out, err) = client(&["status", "-c", app.cfg()], secs(10));
    assert_eq!(code, 0, "{err}");
    let header = out
        .lines()
        .find(|l| l.starts_with("SLOT"))
        .unwrap_or_else(|| panic!("no header: {out}"));
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        columns[5..12],
        ["RSS", "PSS", "PRIVATE", "SHARED", "CPU", "CPU%", "ROLLOUT"],
        "{out}"
    );
    let is_size = |cell: &str| {
        let (number, unit) = cell.split_at(cell.len() - 1);
        number.parse::<f64>().is_ok() && "BKMGTP".contains(unit)
    };
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip_while(|l| !l.starts_with("SLOT"))
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    for row in rows {
        assert!(row[5..9].iter().all(|c| is_size(c)), "{out}");
        assert!(row[9].ends_with('s') || row[9].ends_with('m'), "{out}");
        assert!(row[10].ends_with('%'), "{out}");
        assert_eq!(row[11], "-", "{out}");
    }
    let master_line = out
        .lines()
        .find(|l| l.starts_with("master usage: "))
        .unwrap_or_else(|| panic!("no master usage line: {out}"));
    let fields = fields(&master_line.replace("master usage: ", "").replace(' ', "\n"));
    for key in ["rss", "pss", "private", "shared"] {
        assert!(is_size(&fields[key]), "{key}: {out}");
    }
    assert!(fields["cpu%"].ends_with('%'), "{out}");
    assert!(master.exited().is_none());
}

#[test]
fn a_worker_killed_between_requests_does_not_break_status() {
    let app = App::new(2, "");
    let master = app.start();
    let before = app.status();
    let victim = workers(&before)[0]["pid"].as_i64().expect("pid") as i32;
    kill(Pid::from_raw(victim), Signal::SIGKILL).expect("kill");
    // Asked at once: the worker may be listed still (a zombie, not reaped
    // yet), with what can no longer be read shown as null.
    for _ in 0..3 {
        let status = app.status();
        assert_plausible(&status, &status);
        for worker in workers(&status) {
            let known = workers(&before).iter().any(|w| w["pid"] == worker["pid"]);
            if known && worker["pid"] != victim {
                assert_plausible(worker, &status);
            } else {
                // The killed worker, or its replacement caught between fork
                // and exec: what cannot be read is null, never an error.
                assert!(worker["rss_bytes"].is_null() || worker["rss_bytes"].is_u64());
            }
        }
        let (code, out, err) = client(&["status", "-c", app.cfg()], secs(10));
        assert_eq!(code, 0, "{out}{err}");
    }
    let status = app.wait_status("the killed worker replaced", secs(30), |s| {
        s["ready"] == 2 && workers(s).iter().all(|w| w["pid"] != victim)
    });
    for worker in workers(&status) {
        assert_plausible(worker, &status);
    }
    assert!(master.exited().is_none(), "{}", master.log());
}

#[test]
fn a_rolling_restart_marks_the_incoming_and_the_replaced_worker() {
    let app = App::new(1, "");
    let master = app.start();
    let old = workers(&app.status())[0]["pid"].clone();
    app.write_config(1, &app.env_line(&[("DEMO_BOOT_DELAY", "2s")]));
    master.signal(Signal::SIGHUP);
    let status = app.wait_status("a replacement booting", secs(20), |s| {
        workers(s).iter().any(|w| w["rollout"] == "incoming")
    });
    let marked = |rollout: &str| {
        workers(&status)
            .iter()
            .find(|w| w["rollout"] == rollout)
            .cloned()
            .unwrap_or_else(|| panic!("no {rollout} worker: {status:#}"))
    };
    let (incoming, replaced) = (marked("incoming"), marked("replaced"));
    assert_eq!(replaced["pid"], old, "{status:#}");
    assert_eq!(incoming["state"], "booting", "{status:#}");
    assert_eq!(incoming["slot"], replaced["slot"], "{status:#}");
    app.wait_status("the reload done", secs(30), |s| {
        s["reload"]["state"] == "done" && workers(s).iter().all(|w| w["rollout"].is_null())
    });
}
