//! Inputs at the edges: a config emptied or replaced by a FIFO before a
//! HUP, and a relative unix socket path with workers in another directory.

use crate::environment::worker_env;
use crate::support::*;

/// A deploy that wrote half a file, or nothing: a HUP fails with the reason
/// and nothing changes; the worker count is not reset to its default.
#[test]
fn an_empty_or_unreadable_config_at_hup_changes_nothing() {
    let app = App::new(3, "");
    let master = app.start();
    let before = App::worker_pids(&app.status());
    let pid_file = app.pid_file.to_str().unwrap();
    for (what, write) in [
        (
            "empty",
            Box::new(|p: &std::path::Path| std::fs::write(p, "").unwrap())
                as Box<dyn Fn(&std::path::Path)>,
        ),
        (
            "comments only",
            Box::new(|p: &std::path::Path| std::fs::write(p, "# being written\n").unwrap()),
        ),
        (
            "a FIFO",
            Box::new(|p: &std::path::Path| {
                std::fs::remove_file(p).expect("remove the config");
                let made = std::process::Command::new("mkfifo")
                    .arg(p)
                    .status()
                    .unwrap();
                assert!(made.success());
            }),
        ),
    ] {
        write(&app.config);
        let (code, out, err) = client(&["reload", "-p", pid_file, "--wait"], secs(30));
        assert_eq!(code, 1, "{what}: {out}{err}");
        assert!(
            err.starts_with(&format!(
                "forkmaster: reload failed: config {}: ",
                app.config.display()
            )),
            "{what}: {err}"
        );
        let status = app.status();
        assert_eq!(status["target"], 3, "{what}: {status}");
        assert_eq!(App::worker_pids(&status), before, "{what}");
        assert_eq!(status["generation"], 1, "{what}");
    }
    let log = master.log();
    assert_no_event(&log, "reload-start");
}

/// A relative unix socket path is bound relative to where forkmaster starts,
/// and workers that run elsewhere are told the absolute path.
#[test]
fn a_relative_unix_socket_is_published_absolute() {
    let dir = TempDir::new();
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let start_dir = dir.path.clone();
    let master = Fixture::new(&dir)
        .listen("unix:app.sock")
        .arg("--working-directory")
        .arg(elsewhere.display().to_string())
        .setup(move |cmd| {
            cmd.current_dir(&start_dir).env("PWD", &start_dir);
        })
        .start();
    master.wait_ready();
    let socket = dir.join("app.sock");
    let env = worker_env(&Target::unix(&socket));
    assert_eq!(
        env["SERVER_STARTER_PORT"],
        format!("{}=3", socket.display()),
        "{env:?}"
    );
    assert_eq!(env["LISTEN_FDS"], "1");
}

/// A client only needs the pid file from a config: it looks up no user and
/// resolves no host, so an init script's `status` or `stop` works during a
/// DNS outage or before the app's user exists.
#[test]
fn clients_read_a_config_without_name_service_lookups() {
    let app = App::new(1, "");
    let _master = app.start();
    let config = app.dir.join("client.yml");
    std::fs::write(
        &config,
        format!(
            "pid: {}\nuser: no-such-user-xyz\ngroup: no-such-group-xyz\n\
             listen: ['no-such-host.invalid:80']\ncommand: [app]\n",
            app.pid_file.display()
        ),
    )
    .unwrap();
    let (code, out, err) = client(&["status", "-c", config.to_str().unwrap()], secs(10));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("master: pid="), "{out}");
}

/// `forkmaster status | head -1`: a client whose reader went away exits
/// quietly with its own exit code, not with a panic (101).
#[test]
fn a_client_writing_into_a_closed_pipe_exits_quietly() {
    let app = App::new(1, "");
    let _master = app.start();
    let (read, write) = nix::unistd::pipe().expect("pipe");
    // The reader is gone before the client writes a byte: EPIPE for sure.
    drop(read);
    for args in [
        vec!["status", "-p", app.pid_file.to_str().unwrap()],
        vec!["status", "--json", "-p", app.pid_file.to_str().unwrap()],
    ] {
        let out = std::process::Command::new(forkmaster())
            .args(&args)
            .stdout(std::process::Stdio::from(write.try_clone().expect("dup")))
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("run the client");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// A configuration that drops or moves the pid file cannot be upgraded to:
/// the new master would serve where no client looks. The upgrade fails with
/// the reason, and the old master serves on.
#[test]
fn an_upgrade_keeps_the_pid_file() {
    let app = App::new(2, "");
    let master = app.start();
    let pid_file = app.pid_file.to_str().unwrap();
    let moved = app.dir.join("moved.pid");
    for (what, text) in [
        (
            "dropped",
            app.config_text(2, "")
                .lines()
                .filter(|l| !l.starts_with("pid:"))
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
        ),
        (
            "moved",
            app.config_text(2, &format!("pid: {}\n", moved.display())),
        ),
    ] {
        std::fs::write(&app.config, text).unwrap();
        let (code, out, err) = client(&["upgrade", "-p", pid_file, "--wait"], secs(60));
        assert_eq!(code, 1, "{what}: {out}{err}\nlog:\n{}", master.log());
        assert!(
            err.contains("an upgrade keeps the pid file"),
            "{what}: {err}"
        );
        let status = app.status();
        assert_eq!(status["pid"], master.pid(), "{what}");
        assert_eq!(status["ready"], 2, "{what}");
        assert!(!moved.exists(), "{what}");
    }
    assert_eq!(wait_serving(&app.target)["generation"], "1");
}

/// Log files are never opened or handed to the workers' user through a
/// link planted in their place, and a FIFO never blocks the master.
#[test]
fn log_files_follow_no_link_and_no_fifo() {
    let dir = TempDir::new();
    let victim = dir.join("victim");
    std::fs::write(&victim, "secret\n").unwrap();
    let link = dir.join("link.log");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let fifo = dir.join("fifo.log");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    for (path, why) in [(&link, "a symbolic link"), (&fifo, "a FIFO")] {
        let out = Fixture::new(&dir)
            .tcp()
            .arg("--stderr-path")
            .arg(path.display().to_string())
            .run(secs(10));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("stderr_path {}: {why}", path.display())),
            "{stderr}"
        );
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "secret\n");
}

/// A worker user who can write the log directory swaps the log file for a
/// link to a root file before a rotation: the master neither writes into it
/// nor gives it to that user.
#[test]
fn a_log_swapped_for_a_link_is_not_reopened_or_chowned() {
    use std::os::unix::fs::MetadataExt;
    let dir = TempDir::new();
    let logs = dir.join("logs");
    std::fs::create_dir(&logs).unwrap();
    std::os::unix::fs::chown(&logs, Some(65534), Some(65534)).unwrap();
    let victim = dir.join("victim");
    std::fs::write(&victim, "secret\n").unwrap();
    let log = logs.join("err.log");
    let pid_file = dir.join("app.pid");
    let master = Fixture::new(&dir)
        .tcp()
        .pid_file(&pid_file)
        .args(&["--user", "65534", "--stderr-path", log.to_str().unwrap()])
        .start();
    master.wait_for("the log file", secs(20), |_| {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("event=all-ready"))
    });
    std::fs::rename(&log, logs.join("err.log.1")).unwrap();
    std::os::unix::fs::symlink(&victim, &log).unwrap();
    let (code, out, err) = client(&["reopen-logs", "-p", pid_file.to_str().unwrap()], secs(10));
    assert_eq!(code, 0, "{out}{err}");
    master.wait_for("the failed reopen", secs(20), |_| {
        std::fs::read_to_string(logs.join("err.log.1"))
            .ok()
            .filter(|t| t.contains("event=log-reopen-failed"))
    });
    let meta = std::fs::metadata(&victim).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "the victim was chowned");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "secret\n");
}

/// Masters started at once beside each other share a runtime directory;
/// one cleaning up stale sockets never takes another's fresh socket for
/// stale (a control socket is renamed into place only once it listens).
#[test]
fn masters_started_at_once_in_one_directory_all_start() {
    let dir = TempDir::new();
    let masters: Vec<Master> = (0..6)
        .map(|i| {
            Fixture::new(&dir)
                .workers(1)
                .unix(&format!("app{i}.sock"))
                .pid_file(dir.join(&format!("app{i}.pid")))
                .start()
        })
        .collect();
    for (i, master) in masters.iter().enumerate() {
        master.wait_ready();
        let pid_file = dir.join(&format!("app{i}.pid"));
        let (code, out, err) = client(&["status", "-p", pid_file.to_str().unwrap()], secs(10));
        assert_eq!(code, 0, "master {i}: {out}{err}");
    }
}
