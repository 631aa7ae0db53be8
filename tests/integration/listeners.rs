//! Listeners: every `--listen` form and the YAML map form, names, Unix
//! socket files (stale, live, not a socket, mode, removal at stop) and busy
//! TCP ports.

use crate::config_errors::assert_one_line_error;
use crate::environment::worker_env;
use crate::support::*;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .expect("stat socket file")
        .permissions()
        .mode()
        & 0o7777
}

/// Starts a master on a bare port (`-l PORT`). The port is found free by
/// binding 127.0.0.1:0 and closing it; should something take it before the
/// master binds, that start fails with "address already in use" and a new
/// port is tried.
fn start_on_bare_port(dir: &TempDir) -> (Master, u16, String) {
    for _attempt in 0..3 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("find a free port")
            .port();
        let mut master = Fixture::new(dir).listen(port.to_string()).start();
        let bound = master.try_wait_for(secs(20), |m| {
            let log = m.log();
            if log.contains("event=listen addr=") {
                Some(true)
            } else if log.contains("address already in use") {
                Some(false)
            } else {
                None
            }
        });
        match bound {
            Some(true) => {
                let log = master.wait_ready();
                return (master, port, log);
            }
            Some(false) => {
                master.wait_exit(secs(10));
                eprintln!("port {port} was taken before forkmaster bound it; trying another");
            }
            None => panic!("no listen line; log:\n{}", master.log()),
        }
    }
    panic!("three free ports in a row were taken before forkmaster bound them");
}

#[test]
fn bare_port_binds_all_ipv4_interfaces_and_serves() {
    let dir = TempDir::new();
    let (_master, port, log) = start_on_bare_port(&dir);
    assert_eq!(listen_addr(&log, 0), SocketAddr::from(([0, 0, 0, 0], port)));
    let fields = wait_serving(&Target::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
    assert_eq!(fields["worker"], "0");
}

#[test]
fn ipv4_loopback_port_zero_gets_a_real_port_and_serves() {
    let dir = TempDir::new();
    let master = Fixture::new(&dir).tcp().start();
    let log = master.wait_ready();
    let addr = listen_addr(&log, 0);
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0, "the log names the port really bound");
    let fields = wait_serving(&Target::Tcp(addr));
    assert_eq!(fields["worker"], "0");
}

#[test]
fn ipv6_loopback_serves_when_the_machine_has_it() {
    if let Err(e) = TcpListener::bind("[::1]:0") {
        eprintln!("skipped: this machine cannot bind [::1]:0 ({e})");
        return;
    }
    let dir = TempDir::new();
    let master = Fixture::new(&dir).listen("[::1]:0").start();
    let log = master.wait_ready();
    let addr = listen_addr(&log, 0);
    assert!(addr.is_ipv6() && addr.ip().is_loopback(), "{addr}");
    assert_ne!(addr.port(), 0);
    let fields = wait_serving(&Target::Tcp(addr));
    assert_eq!(fields["worker"], "0");
}

#[test]
fn unix_socket_serves() {
    let dir = TempDir::new();
    let path = dir.join("app.sock");
    let master = Fixture::new(&dir).unix("app.sock").start();
    let log = master.wait_ready();
    assert!(
        log.contains(&format!("event=listen addr=unix:{} fd=3", path.display())),
        "{log}"
    );
    assert!(is_socket(&path));
    let fields = wait_serving(&Target::unix(&path));
    assert_eq!(fields["worker"], "0");
}

#[test]
fn listener_names_go_into_listen_fdnames_in_fd_order() {
    let dir = TempDir::new();
    let master = Fixture::new(&dir)
        .listen("web=127.0.0.1:0")
        .unix("plain.sock")
        .listen(format!("admin={}", dir.unix("admin.sock")))
        .start();
    let log = master.wait_ready();
    assert!(log.contains(" fd=3 name=web"), "{log}");
    assert!(log.contains(" fd=4 name=unknown"), "{log}");
    assert!(log.contains(" fd=5 name=admin"), "{log}");
    let tcp = Target::Tcp(listen_addr(&log, 0));
    wait_serving(&tcp);
    let env = worker_env(&tcp);
    assert_eq!(env["LISTEN_FDS"], "3");
    assert_eq!(env["LISTEN_FDNAMES"], "web:unknown:admin");
    // Every named and unnamed listener serves.
    wait_serving(&Target::unix(dir.join("plain.sock")));
    wait_serving(&Target::unix(dir.join("admin.sock")));
}

#[test]
fn yaml_map_listener_sets_name_backlog_and_socket_mode() {
    let dir = TempDir::new();
    let path = dir.join("api.sock");
    let cfg = dir.join("app.yml");
    std::fs::write(
        &cfg,
        format!(
            "listen:\n  - {{address: 'unix:{}', name: api, backlog: 16, mode: '0600'}}\n",
            path.display()
        ),
    )
    .expect("write config");
    let cfg = cfg.display().to_string();

    // What the master makes of the entry, backlog included.
    let check = run(&["-t", "-c", &cfg, "--", demo()], secs(10));
    let described = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    assert!(
        described.contains(&format!(
            "listen: fd=3 unix:{} name=api backlog=16 mode=0600\n",
            path.display()
        )),
        "{described}"
    );

    let master = Fixture::config(&dir, &cfg)
        .ready("notify")
        .command(&[demo()])
        .start();
    master.wait_ready();
    assert!(is_socket(&path));
    assert_eq!(mode_of(&path), 0o600, "the socket file's mode");
    let unix = Target::unix(&path);
    wait_serving(&unix);
    assert_eq!(worker_env(&unix)["LISTEN_FDNAMES"], "api");
}

#[test]
fn an_unquoted_yaml_mode_is_refused_rather_than_misread() {
    // YAML reads `0o660` as 432 and `0660` as 660: neither can be trusted to
    // mean the octal mode the user wrote, so only a quoted mode is accepted.
    let dir = TempDir::new();
    let path = dir.join("api.sock");
    let cfg = dir.join("app.yml");
    std::fs::write(
        &cfg,
        format!(
            "listen:\n  - {{address: 'unix:{}', mode: 0o660}}\ncommand: [app]\n",
            path.display()
        ),
    )
    .expect("write config");
    let out = run(&["-t", "-c", &cfg.display().to_string()], secs(10));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("write it quoted, e.g. mode: '0660'"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!path.exists());
}

#[test]
fn stale_unix_socket_file_is_replaced_and_served() {
    let dir = TempDir::new();
    let path = dir.join("app.sock");
    // A server that died without cleaning up: the file stays, nobody accepts.
    drop(UnixListener::bind(&path).expect("bind the soon stale socket"));
    assert!(is_socket(&path), "the stale socket file is there");
    let master = Fixture::new(&dir).unix("app.sock").start();
    let log = master.wait_ready();
    assert!(
        log.contains(&format!(
            "event=stale-socket path={} action=replace",
            path.display()
        )),
        "{log}"
    );
    wait_serving(&Target::unix(&path));
}

#[test]
fn live_unix_socket_refuses_to_start_and_is_left_alone() {
    let dir = TempDir::new();
    let path = dir.join("app.sock");
    let live = UnixListener::bind(&path).expect("bind the live socket");
    let out = Fixture::new(&dir).unix("app.sock").run(secs(10));
    assert_one_line_error(
        &out,
        1,
        &[&format!("forkmaster: listen unix:{}: ", path.display())],
    );
    // The live server still has its socket.
    UnixStream::connect(&path).expect("the live server's socket still accepts");
    live.accept().expect("and its listener got the connection");
}

#[test]
fn regular_file_at_unix_path_refuses_to_start_and_is_left_alone() {
    let dir = TempDir::new();
    let path = dir.join("app.sock");
    std::fs::write(&path, "not a socket\n").expect("write regular file");
    let out = Fixture::new(&dir).unix("app.sock").run(secs(10));
    assert_one_line_error(
        &out,
        1,
        &[
            &format!("forkmaster: listen unix:{}: ", path.display()),
            "not a socket",
        ],
    );
    assert_eq!(
        std::fs::read_to_string(&path).expect("the file is still there"),
        "not a socket\n"
    );
}

#[test]
fn busy_tcp_port_fails_with_one_line_naming_it() {
    let held = TcpListener::bind("127.0.0.1:0").expect("bind a port to hold");
    let addr = held.local_addr().expect("local_addr");
    let out = run(
        &["-l", &addr.to_string(), "--ready", "notify", "--", demo()],
        secs(10),
    );
    let line = assert_one_line_error(&out, 1, &[]);
    assert!(
        line.starts_with(&format!(
            "forkmaster: listen {addr}: address already in use"
        )),
        "{line}"
    );
    drop(held);
}

#[test]
fn failed_start_removes_the_unix_socket_files_it_created() {
    let dir = TempDir::new();
    let path = dir.join("first.sock");
    let held = TcpListener::bind("127.0.0.1:0").expect("bind a port to hold");
    let busy = held.local_addr().expect("local_addr").to_string();
    let out = Fixture::new(&dir)
        .unix("first.sock")
        .listen(busy)
        .run(secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("address already in use"), "{stderr}");
    assert!(
        !path.exists(),
        "{} is left behind by a start that failed",
        path.display()
    );
}

#[test]
fn graceful_stop_removes_the_unix_socket_file() {
    let dir = TempDir::new();
    let path = dir.join("app.sock");
    let mut master = Fixture::new(&dir).unix("app.sock").start();
    master.wait_ready();
    wait_serving(&Target::unix(&path));
    assert!(is_socket(&path));
    master.signal(Signal::SIGQUIT);
    let status = master.wait_exit(secs(30));
    assert!(status.success(), "{status:?}; log:\n{}", master.log());
    assert!(!path.exists(), "socket file left after stop");
}

#[test]
fn stop_leaves_a_socket_file_that_is_no_longer_ours() {
    let dir = TempDir::new();
    let path = dir.join("app.sock");
    let mut master = Fixture::new(&dir).unix("app.sock").start();
    master.wait_ready();
    wait_serving(&Target::unix(&path));
    // A newer server took the path over while this master runs.
    std::fs::remove_file(&path).expect("remove socket file");
    let newer = UnixListener::bind(&path).expect("bind the newer server's socket");
    master.signal(Signal::SIGQUIT);
    let status = master.wait_exit(secs(30));
    assert!(status.success(), "{status:?}; log:\n{}", master.log());
    UnixStream::connect(&path).expect("the newer server's socket is still there");
    newer.accept().expect("and still reaches the newer server");
}
