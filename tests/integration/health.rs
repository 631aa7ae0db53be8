//! The health endpoint (`--health-listen`: `/livez`, `/readyz`), `min_ready`,
//! `forkmaster ready`, and the orchestrators' stop: `term` and
//! `shutdown_delay`. Probes never wait on the master: a slow or flooding
//! client cannot delay a signal or another probe, and an idle master with
//! the endpoint still never wakes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::fixture::Fixture;
use crate::support::{
    assert_never_wakes, client, get, health_addr, listen_addr, open_connections, secs, wait_for,
    wait_serving, Master, Signal, Target, TempDir,
};

/// `GET path` on the health endpoint: (status, body).
fn probe(target: &Target, path: &str) -> (u16, String) {
    let r = get(target, path).unwrap_or_else(|e| panic!("probe {path}: {e}"));
    (r.status, r.body.trim().to_string())
}

/// Waits until `/readyz` answers `status`; the body.
fn wait_readyz(master: &Master, target: &Target, status: u16) -> String {
    master.wait_for(&format!("/readyz {status}"), secs(20), |_| {
        get(target, "/readyz")
            .ok()
            .filter(|r| r.status == status)
            .map(|r| r.body.trim().to_string())
    })
}

fn ready_client(pid_file: &Path) -> (i32, String, String) {
    let pid = pid_file.display().to_string();
    client(&["ready", "-p", &pid], secs(10))
}

#[test]
fn readyz_follows_start_ready_and_a_delayed_graceful_stop() {
    let dir = TempDir::new();
    let health = dir.join("health.sock");
    let mut master = Fixture::new(&dir)
        .workers(2)
        .tcp()
        .env("DEMO_BOOT_DELAY=2s")
        .args(&["--health-listen", &format!("unix:{}", health.display())])
        .args(&["--shutdown-delay", "4s"])
        .start();
    let target = Target::unix(&health);
    master.wait_log("event=health-listen", secs(10));
    // Starting: 503, unless the workers were ready before we asked (then
    // the answer proves nothing either way).
    let (status, body) = probe(&target, "/readyz");
    if !master.log().contains("event=ready") {
        assert_eq!(status, 503, "{body}");
        assert_eq!(body, "not ready: 0/2 workers ready, 2 needed");
    }
    assert_eq!(probe(&target, "/livez"), (200, "alive".to_string()));

    assert_eq!(wait_readyz(&master, &target, 200), "ready 2/2");
    let app = Target::Tcp(listen_addr(&master.log(), 0));
    wait_serving(&app);

    master.signal(Signal::SIGQUIT);
    master.wait_log("event=shutdown-delay signal=QUIT", secs(10));
    let (status, body) = probe(&target, "/readyz");
    let app_answer = get(&app, "/").map(|r| r.status);
    let livez = probe(&target, "/livez");
    // Conclusive only if the delay was not over by then (it is 4s).
    if !master.log().contains("event=stop mode=graceful") {
        assert_eq!((status, body.as_str()), (503, "not ready: draining"));
        assert_eq!(app_answer, Ok(200), "the app still serves during the delay");
        assert_eq!(livez.0, 200, "alive while draining");
    }
    master.wait_log("event=stop mode=graceful after=shutdown-delay", secs(20));
    assert!(master.wait_exit(secs(20)).success(), "{}", master.log());
    assert!(!health.exists(), "the socket file goes with the master");
}

#[test]
fn min_ready_lower_than_the_target_and_ready_exit_codes() {
    let dir = TempDir::new();
    let (dir_all, dir_one) = (TempDir::new(), TempDir::new());
    let pid_all = dir_all.join("all.pid");
    let pid_one = dir_one.join("one.pid");
    // Slot 1 never boots: one of two workers is ready, at best.
    let start = |dir, pid: &Path, extra: &[&str]| {
        Fixture::new(dir)
            .workers(2)
            .tcp()
            .pid_file(pid)
            .env("DEMO_FAIL_BOOT=1")
            .env("DEMO_FAIL_WORKER=1")
            .args(&["--health-listen", "127.0.0.1:0"])
            .args(extra)
            .start()
    };
    let all = start(&dir_all, &pid_all, &[]);
    let one = start(&dir_one, &pid_one, &["--min-ready", "1"]);
    for master in [&all, &one] {
        master.wait_for("worker 0 ready", secs(20), |m| {
            m.log()
                .lines()
                .any(|l| l.contains("worker=0") && l.contains("event=ready"))
                .then_some(())
        });
    }
    let all_target = Target::Tcp(health_addr(&all));
    let one_target = Target::Tcp(health_addr(&one));

    let (status, body) = probe(&all_target, "/readyz");
    assert_eq!(
        (status, body.as_str()),
        (503, "not ready: 1/2 workers ready, 2 needed")
    );
    let (code, _, err) = ready_client(&pid_all);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("not ready: 1/2 workers ready, 2 needed"),
        "{err}"
    );

    assert_eq!(wait_readyz(&one, &one_target, 200), "ready 1/2");
    let (code, out, err) = ready_client(&pid_one);
    assert_eq!((code, out.trim()), (0, "ready 1/2"), "{err}");

    let (code, _, err) = ready_client(&dir.join("none.pid"));
    assert_eq!(code, 3, "no master: {err}");
}

/// A worker of `master` (its only one), once ready.
fn only_worker(master: &Master) -> i32 {
    master.wait_ready();
    let log = master.log();
    log.lines()
        .filter(|l| l.contains("event=ready"))
        .find_map(|l| {
            l.split("pid=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no ready worker in log:\n{log}"))
}

#[test]
fn term_graceful_lets_an_inflight_request_finish_while_default_term_stays_quick() {
    let dir = TempDir::new();
    let mut graceful = Fixture::new(&dir)
        .workers(1)
        .tcp()
        .args(&["--term", "graceful"])
        .start();
    let worker = only_worker(&graceful);
    let app = Target::Tcp(listen_addr(&graceful.log(), 0));
    let slow = {
        let app = app.clone();
        std::thread::spawn(move || get(&app, "/sleep?ms=1500"))
    };
    wait_for("the request in flight", secs(10), || {
        (open_connections(worker) > 0).then_some(())
    });
    graceful.signal(Signal::SIGTERM);
    graceful.wait_log("event=stop mode=graceful signal=TERM", secs(10));
    let answer = slow.join().expect("request thread");
    assert_eq!(answer.map(|r| r.status), Ok(200), "{}", graceful.log());
    assert!(graceful.wait_exit(secs(20)).success());

    let dir = TempDir::new();
    let mut quick = Fixture::new(&dir).workers(1).tcp().start();
    quick.wait_ready();
    quick.signal(Signal::SIGTERM);
    quick.wait_log("event=stop mode=quick signal=TERM", secs(10));
    quick.wait_exit(secs(20));
}

#[test]
fn a_second_quit_during_the_shutdown_delay_stops_quickly() {
    let dir = TempDir::new();
    let mut master = Fixture::new(&dir)
        .workers(1)
        .tcp()
        .args(&["--shutdown-delay", "1h", "--term", "graceful"])
        .start();
    master.wait_ready();
    master.signal(Signal::SIGTERM);
    master.wait_log("event=shutdown-delay signal=TERM", secs(10));
    master.signal(Signal::SIGQUIT);
    master.wait_log("event=stop mode=quick signal=QUIT", secs(10));
    master.wait_exit(secs(20));
}

/// Opens a connection to `addr` that sends one byte and never finishes.
fn slow_connection(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    let _ = s.write_all(b"G");
    s
}

#[test]
fn slow_and_idle_connections_delay_neither_signals_nor_probes() {
    let dir = TempDir::new();
    let master = Fixture::new(&dir)
        .workers(1)
        .tcp()
        .args(&["--health-listen", "127.0.0.1:0"])
        .start();
    master.wait_ready();
    let addr = health_addr(&master);
    let target = Target::Tcp(addr);

    // A slowloris: one byte at a time, never the end of the headers.
    let mut slowloris = slow_connection(addr);
    // 500 idle connections: far beyond the cap of open ones.
    let idle: Vec<TcpStream> = (0..500)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let _ = slowloris.write_all(b"ET / HTTP/1.1\r\nX: ");

    let asked = Instant::now();
    assert_eq!(probe(&target, "/livez").0, 200);
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(1), "probe took {took:?}");

    let asked = Instant::now();
    master.signal(Signal::SIGTTIN);
    master.wait_log("event=scale signal=TTIN", secs(10));
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(1), "TTIN handled after {took:?}");

    let _ = slowloris.write_all(b"y");
    // The worker TTIN added boots; then all are ready again.
    assert_eq!(wait_readyz(&master, &target, 200), "ready 2/2");
    drop(idle);
}

#[test]
fn an_oversized_request_gets_431_and_is_closed() {
    let dir = TempDir::new();
    let master = Fixture::new(&dir)
        .workers(1)
        .tcp()
        .args(&["--health-listen", "127.0.0.1:0"])
        .start();
    let addr = health_addr(&master);
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(secs(10))).expect("timeout");
    let mut request = b"GET /livez HTTP/1.1\r\n".to_vec();
    request.extend(vec![b'a'; 8192]);
    // The master may close before all of it is written.
    let _ = s.write_all(&request);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 431 "),
        "answer: {answer:?}\n{}",
        master.log()
    );
    assert!(answer.contains("Connection: close"), "{answer}");
    // Still serving others.
    assert_eq!(probe(&Target::Tcp(addr), "/livez").0, 200);
}

#[test]
fn idle_master_with_a_health_endpoint_never_wakes() {
    let dir = TempDir::new();
    // Its own runtime directory: a master starting elsewhere checks the
    // sockets it finds in a shared one for staleness, by connecting.
    let run = dir.join("run");
    std::fs::create_dir(&run).expect("runtime dir");
    let master = Fixture::new(&dir)
        .workers(1)
        .tcp()
        .args(&["--health-listen", "127.0.0.1:0"])
        .args(&["--runtime-dir", &run.display().to_string()])
        .start();
    master.wait_ready();
    // The worker's last word at boot: nothing more is on its way.
    master.wait_log("notified=true", secs(10));
    // Copying that line was its last work: then it sleeps in poll(2).
    assert_never_wakes(master.pid(), Duration::from_secs(1));
    let addr = health_addr(&master);
    // And it was listening all along.
    assert_eq!(probe(&Target::Tcp(addr), "/livez").0, 200);
}

#[test]
fn after_an_upgrade_the_new_master_serves_the_health_endpoint() {
    let app = crate::support::App::new(1, "");
    let health = app.dir.join("health.sock");
    app.write_config(1, &format!("health_listen: 'unix:{}'\n", health.display()));
    let mut master = app.start();
    let target = Target::unix(&health);
    assert_eq!(wait_readyz(&master, &target, 200), "ready 1/1");
    let (code, out, err) = client(&["upgrade", "-c", app.cfg(), "--wait"], secs(120));
    assert_eq!(code, 0, "{out}{err}\n{}", master.log());
    assert!(master.wait_exit(secs(20)).success());
    // The old master handed its socket over: the new master answers on it
    // at once, and never had to bind it.
    let new = crate::support::read_pid(&app.pid_file).expect("new pid");
    let r = get(&target, "/readyz").unwrap_or_else(|e| panic!("{e}\n{}", master.log()));
    assert_eq!((r.status, r.body.trim()), (200, "ready 1/1"));
    assert!(crate::support::is_running(new));
    crate::source::assert_no_event(&master.log(), "health-unavailable");
}

/// Probes every ~20 ms through a fork upgrade: none is refused, none fails.
#[test]
fn no_probe_is_refused_through_an_upgrade() {
    let app = crate::support::App::new(2, "");
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    app.write_config(2, &format!("health_listen: '{addr}'\n"));
    let mut master = app.start();
    let target = Target::Tcp(addr);
    wait_readyz(&master, &target, 200);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        let target = target.clone();
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            let mut probes = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                probes += 1;
                match get(&target, "/livez") {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => failures.push(format!("{} {}", r.status, r.body)),
                    Err(e) => failures.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (probes, failures)
        })
    };
    let (code, out, err) = client(&["upgrade", "-c", app.cfg(), "--wait"], secs(120));
    assert_eq!(code, 0, "{out}{err}\n{}", master.log());
    assert!(master.wait_exit(secs(20)).success());
    let new = crate::support::read_pid(&app.pid_file).expect("new pid");
    assert_eq!(probe(&target, "/livez").0, 200);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (probes, failures) = prober.join().unwrap();
    assert!(
        failures.is_empty(),
        "{probes} probes: {failures:?}\n{}",
        master.log()
    );
    assert!(crate::support::is_running(new));
}
