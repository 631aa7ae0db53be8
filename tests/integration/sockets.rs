//! The control and notify sockets: files in a private directory that no
//! other user can enter or pre-empt, reached by a plain sd_notify sender,
//! and a client that believes (and signals) only the very process that
//! answers, in its own pid namespace.

use crate::fixture::Fixture;
use crate::guard::Guard;
use crate::support::*;
use nix::sys::signal::Signal;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The private directory a root (or whoever runs the tests) master makes
/// under `base`.
fn private_dir(base: &Path) -> PathBuf {
    base.join(format!(".forkmaster-{}", nix::unistd::geteuid()))
}

/// A python3 every user may run (a per-user install under /root is not).
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// `setpriv` dropping to uid/gid 65534 with no other groups, then `args`.
fn as_nobody(args: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
        "--",
    ]);
    cmd.args(args);
    cmd
}

/// Spawns `cmd` with stdin and stdout piped, adopted by `guard`, and
/// returns once it printed its first line (its "ready"), with that line.
fn spawn_until_line(guard: &mut Guard, mut cmd: Command) -> (&mut Child, String) {
    let child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let child = guard.adopt(child);
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read the first line");
    assert!(!line.is_empty(), "{cmd:?} exited before it was ready");
    (child, line.trim().to_string())
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn skip_unless_root(test: &str) -> bool {
    if !is_root() {
        eprintln!("skipped {test}: needs root");
        return true;
    }
    false
}

/// Binds, as another user, the abstract names the master used to take:
/// `@forkmaster/<pid>/control` and `/notify` for the next `COUNT` pids.
const SQUATTER: &str = r#"
import resource, socket, sys
first, count, pid_max = map(int, sys.argv[1:4])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held, pid = [], first
for _ in range(count):
    for kind, type in (("control", socket.SOCK_STREAM), ("notify", socket.SOCK_DGRAM)):
        s = socket.socket(socket.AF_UNIX, type)
        try:
            s.bind("\0forkmaster/%d/%s" % (pid, kind))
            if type == socket.SOCK_STREAM:
                s.listen(1)
            held.append(s)
        except OSError:
            s.close()
    pid = pid + 1 if pid + 1 < pid_max else 300
print(pid, flush=True)
sys.stdin.read()
"#;

#[test]
fn another_user_squatting_the_old_abstract_names_stops_no_start_upgrade_or_query() {
    if skip_unless_root("squatting") {
        return;
    }
    let read = |path: &str| -> i32 {
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let pid_max = read("/proc/sys/kernel/pid_max");
    let first = read("/proc/sys/kernel/ns_last_pid") + 1;
    let count = 3000.min(pid_max / 2);
    let mut guard = Guard::new();
    let args = [first, count, pid_max].map(|n| n.to_string());
    let (_, last) = spawn_until_line(
        &mut guard,
        as_nobody(&[python(), "-c", SQUATTER, &args[0], &args[1], &args[2]]),
    );
    let last: i32 = last.parse().expect("the squatter's last pid");
    let squatted = |pid: i32| {
        if first <= last {
            (first..last).contains(&pid)
        } else {
            pid >= first || (300..last).contains(&pid)
        }
    };

    let app = App::new(2, "");
    let master = app.start();
    assert!(
        squatted(master.pid()),
        "master pid {} outside the squatted {first}..{last}",
        master.pid()
    );
    let (code, out, err) = client(&["status", "-c", app.cfg()], secs(10));
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = client(&["upgrade", "-c", app.cfg(), "--wait"], secs(60));
    assert_eq!(code, 0, "{out}{err}\n{}", master.log());
    let new = app.master_pid();
    let (code, out, err) = client(&["status", "-c", app.cfg()], secs(10));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with(&format!("master: pid={new} ")), "{out}");
}

#[test]
fn the_private_directory_is_closed_to_other_users_and_a_planted_one_is_refused() {
    if skip_unless_root("private directory") {
        return;
    }
    let dir = TempDir::new();
    let pid_file = dir.join("app.pid");
    let master = Fixture::new(&dir).pid_file(&pid_file).tcp().start();
    master.wait_ready();
    let private = private_dir(&dir.path);
    let meta = std::fs::symlink_metadata(&private).expect("the private directory");
    assert!(meta.is_dir());
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o700));
    for kind in ["control", "notify"] {
        let socket = private.join(format!("{}.{kind}", master.pid()));
        let meta = std::fs::symlink_metadata(&socket).expect("socket file");
        assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600), "{kind}");
    }
    // Another user can neither create anything there nor list it.
    let planted = private.join("planted");
    let sh = format!(
        "touch {0} || mkfifo {0} || ln -s /etc {0}; ls {1}",
        planted.display(),
        private.display()
    );
    let out = run_command(as_nobody(&["/bin/sh", "-c", &sh]), secs(10));
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(std::fs::symlink_metadata(&planted).is_err());
    // A client of that user is told as before: the master is not theirs.
    let fm = forkmaster();
    let out = run_command(
        as_nobody(&[fm, "status", "-p", pid_file.to_str().unwrap()]),
        secs(10),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("answers only its own user (or root)"),
        "{}",
        text(&out)
    );

    // Planted before the master starts, at the private directory's path:
    // a symlink (to a directory that would do), a directory of another user,
    // one others may write in. Each is refused, naming the path.
    let target = TempDir::new();
    let cases: [(&str, &Plant, String); 3] = [
        (
            "symlink",
            &|p| std::os::unix::fs::symlink(&target.path, p).unwrap(),
            "not a directory (a symlink or another file was placed there): refusing it".into(),
        ),
        (
            "foreign",
            &|p| {
                std::fs::create_dir(p).unwrap();
                std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
            },
            "owned by uid 65534, not by us (uid 0): refusing it".into(),
        ),
        (
            "writable",
            &|p| {
                std::fs::create_dir(p).unwrap();
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
            },
            "mode 0777 lets others write in it: refusing it".into(),
        ),
    ];
    for (what, plant, why) in cases {
        let dir = TempDir::new();
        let private = private_dir(&dir.path);
        plant(&private);
        let out = Fixture::new(&dir)
            .pid_file(dir.join("app.pid"))
            .tcp()
            .run(secs(20));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out));
        assert_eq!(
            stderr.lines().last().unwrap_or_default(),
            format!("forkmaster: runtime directory {}: {why}", private.display()),
            "{what}"
        );
        assert!(!dir.join("app.pid").exists(), "{what}");
    }
    let through_link: Vec<_> = std::fs::read_dir(&target.path).unwrap().collect();
    assert!(
        through_link.is_empty(),
        "written through the link: {through_link:?}"
    );
}

/// Puts something at the private directory's path before a master starts.
type Plant<'a> = dyn Fn(&Path) + 'a;

/// Answers every connection, on a socket file and on the old abstract name,
/// with a made-up status of a master of the given pid and pid file.
const IMPOSTOR: &str = r#"
import json, selectors, socket, sys
pid, path, pid_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
op = {"attempts": 0, "state": "none", "reason": None, "new_master": None, "secs": None}
status = {"pid": pid, "pid_file": pid_file, "generation": 1, "uptime_secs": 1.0,
          "phase": "running", "target": 1, "ready": 1, "old_master": None,
          "upgrade": op, "reload": op, "workers": []}
answer = (json.dumps(status) + "\n").encode()
sel = selectors.DefaultSelector()
for address in (path, "\0forkmaster/%d/control" % pid):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(address)
    s.listen(16)
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        c, _ = key.fileobj.accept()
        try:
            c.sendall(answer)
        except OSError:
            pass  # a client that verified us first hangs up unread
        c.close()
"#;

#[test]
fn an_answer_from_another_process_than_the_pid_file_names_is_refused_and_nothing_signalled() {
    let dir = TempDir::new();
    let mut guard = Guard::new();
    let sleeper = Command::new("sleep")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep");
    let sleeper = guard.adopt(sleeper).id() as i32;
    let pid_file = dir.join("app.pid");
    std::fs::write(&pid_file, format!("{sleeper}\n")).unwrap();
    let private = private_dir(&dir.path);
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let socket = private.join(format!("{sleeper}.control"));
    let mut impostor = Command::new(python());
    impostor.args([
        "-c",
        IMPOSTOR,
        &sleeper.to_string(),
        socket.to_str().unwrap(),
        pid_file.to_str().unwrap(),
    ]);
    let (impostor, _) = spawn_until_line(&mut guard, impostor);
    let impostor = impostor.id();

    let (code, out, err) = client(&["stop", "-p", pid_file.to_str().unwrap()], secs(10));
    assert_eq!(code, 3, "{out}{err}");
    assert_eq!(
        err,
        format!(
            "forkmaster: refusing pid {sleeper} from {}: its control socket is held by pid {impostor}, not by pid {sleeper} (a master of another pid namespace, or an impostor); nothing was signalled\n",
            pid_file.display()
        )
    );
    assert!(is_running(sleeper), "sleep was signalled");
    assert_eq!(
        proc_status(sleeper, "ShdPnd").as_deref(),
        Some("0000000000000000")
    );
    assert_eq!(
        proc_status(sleeper, "SigPnd").as_deref(),
        Some("0000000000000000")
    );
}

/// Starts `unshare --pid --fork --mount-proc ARGS` (after `prefix`), adopted
/// by `guard`; the pid of its child, PID 1 of the new namespace, once it is
/// there.
fn spawn_pid1(guard: &mut Guard, prefix: &[&str], args: &[&str], log: &Path) -> i32 {
    let log = std::fs::File::create(log).unwrap();
    let (program, rest) = match prefix.split_first() {
        Some((program, rest)) => (*program, rest),
        None => ("unshare", &[][..]),
    };
    let mut cmd = Command::new(program);
    cmd.args(rest);
    if !prefix.is_empty() {
        cmd.arg("unshare");
    }
    cmd.args(["--pid", "--fork", "--mount-proc"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let child = guard.adopt(cmd.spawn().expect("spawn unshare"));
    let root = child.id() as i32;
    guard.watch_pid(root);
    wait_for("PID 1 of the new pid namespace", secs(20), || {
        descendants_of(root).into_iter().find(|pid| {
            proc_status(*pid, "NSpid").is_some_and(|ns| ns.split_whitespace().last() == Some("1"))
        })
    })
}

/// A master that is PID 1 of a new pid namespace, its pid file and socket
/// in `dir` (shared: the file system is the same).
fn master_args(dir: &TempDir) -> Vec<String> {
    vec![
        forkmaster().to_string(),
        "-p".into(),
        dir.join("app.pid").display().to_string(),
        "-l".into(),
        dir.unix("app.sock"),
        "--ready".into(),
        "delay:100ms".into(),
        "--".into(),
        demo().to_string(),
    ]
}

fn wait_pid1_master(dir: &TempDir) {
    let log = dir.join("master.log");
    wait_for(
        "the namespaced master to write its pid file",
        secs(20),
        || (read_pid(&dir.join("app.pid")) == Some(1)).then_some(()),
    );
    let socket = Target::unix(dir.join("app.sock"));
    let serving = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wait_serving(&socket)));
    assert!(serving.is_ok(), "log:\n{}", file_text(&log));
}

#[test]
fn a_client_in_the_parent_pid_namespace_refuses_a_pid_1_master_and_one_inside_works() {
    if skip_unless_root("pid namespaces") {
        return;
    }
    let dir = TempDir::new();
    let mut guard = Guard::new();
    // The "parent" namespace is itself a new one whose PID 1 is a sleep: a
    // client there that believed the pid file (`1`) would signal only it.
    let parent_init = spawn_pid1(&mut guard, &[], &["sleep", "600"], &dir.join("sleep.log"));
    let target = parent_init.to_string();
    let enter_parent = ["nsenter", "-t", &target, "-p", "-m", "--"];
    let args = master_args(&dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let master = spawn_pid1(&mut guard, &enter_parent, &args, &dir.join("master.log"));
    wait_pid1_master(&dir);
    // The master as the parent namespace sees it.
    let ns_pids = proc_status(master, "NSpid").expect("NSpid");
    let seen: Vec<&str> = ns_pids.split_whitespace().collect();
    assert_eq!(seen.len(), 3, "{ns_pids}");

    let pid_file = dir.join("app.pid");
    let pid_file = pid_file.to_str().unwrap();
    let mut stop = Command::new("nsenter");
    stop.args(enter_parent)
        .args([forkmaster(), "stop", "-p", pid_file]);
    let out = run_command(stop, secs(20));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err,
        format!(
            "forkmaster: refusing pid 1 from {pid_file}: its control socket is held by pid {}, not by pid 1 (a master of another pid namespace, or an impostor); nothing was signalled\n",
            seen[1]
        )
    );
    assert!(is_running(parent_init), "the parent namespace's PID 1");
    assert_eq!(
        proc_status(parent_init, "ShdPnd").as_deref(),
        Some("0000000000000000")
    );
    assert!(is_running(master));

    // Inside the master's own namespace, the same pid file is right.
    let master_pid = master.to_string();
    let mut status = Command::new("nsenter");
    status.args(["-t", &master_pid, "-p", "-m", "--"]).args([
        forkmaster(),
        "status",
        "-p",
        pid_file,
    ]);
    let out = run_command(status, secs(20));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("master: pid=1 "),
        "{}",
        text(&out)
    );
}

#[test]
fn two_masters_each_pid_1_of_its_own_namespace_in_one_network_namespace_both_serve() {
    if skip_unless_root("pid namespaces") {
        return;
    }
    let (a, b) = (TempDir::new(), TempDir::new());
    let mut guard = Guard::new();
    let mut masters = Vec::new();
    for dir in [&a, &b] {
        let args = master_args(dir);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        masters.push(spawn_pid1(&mut guard, &[], &args, &dir.join("master.log")));
        wait_pid1_master(dir);
    }
    for (dir, master) in [&a, &b].into_iter().zip(masters) {
        assert!(
            is_running(master),
            "log:\n{}",
            file_text(&dir.join("master.log"))
        );
        wait_serving(&Target::unix(dir.join("app.sock")));
    }
}

#[test]
fn notify_socket_is_a_path_a_plain_sd_notify_sender_reaches() {
    let dir = TempDir::new();
    let script = r#"
import os, signal, socket
path = os.environ["NOTIFY_SOCKET"]
assert path.startswith("/"), path
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", path)
signal.pause()
"#;
    let master = Fixture::new(&dir)
        .tcp()
        .workers(2)
        .command(&[python(), "-c", script])
        .start();
    let log = master.wait_ready();
    assert_eq!(master_events(&log, "ready").len(), 2, "{log}");
}

#[test]
fn status_by_the_oldbin_file_shows_the_old_master_during_a_manual_upgrade() {
    let app = App::new(1, "retire: manual\n");
    let master = app.start();
    let old = master.pid();
    master.signal(Signal::SIGUSR2);
    master.wait_log("retire=manual action=", secs(30));
    let oldbin = app.oldbin();
    let (code, out, err) = client(&["status", "-p", oldbin.to_str().unwrap()], secs(10));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with(&format!("master: pid={old} ")), "{out}");
    let new = app.master_pid();
    assert_ne!(new, old);
    let (code, out, err) = client(&["status", "-c", app.cfg()], secs(10));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with(&format!("master: pid={new} ")), "{out}");
}

#[test]
fn a_socket_path_too_long_for_sun_path_fails_naming_the_way_out_and_runtime_dir_is_it() {
    let dir = TempDir::new();
    let deep = dir.join(&"d".repeat(90));
    std::fs::create_dir(&deep).unwrap();
    let pid_file = deep.join("app.pid");
    let out = Fixture::new(&dir).pid_file(&pid_file).tcp().run(secs(20));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    let private = private_dir(&deep);
    assert!(
        last.starts_with(&format!("forkmaster: socket {}/", private.display()))
            && last.ends_with(
                "longer than the 107 a socket path may have: use --runtime-dir with a shorter directory"
            ),
        "{stderr}"
    );
    assert!(!pid_file.exists());

    // With --runtime-dir the master starts; a client finds it given the same.
    let run = dir.join("run");
    std::fs::create_dir(&run).unwrap();
    let master = Fixture::new(&dir)
        .pid_file(&pid_file)
        .tcp()
        .args(&["--runtime-dir", run.to_str().unwrap()])
        .start();
    master.wait_ready();
    assert!(private_dir(&run)
        .join(format!("{}.control", master.pid()))
        .exists());
    let pid_arg = pid_file.to_str().unwrap();
    let (code, out, err) = client(
        &[
            "status",
            "-p",
            pid_arg,
            "--runtime-dir",
            run.to_str().unwrap(),
        ],
        secs(10),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with(&format!("master: pid={} ", master.pid())),
        "{out}"
    );
    // Without it, the client looks beside the pid file and finds nothing.
    let (code, out, err) = client(&["status", "-p", pid_arg], secs(10));
    assert_eq!(code, 3, "{out}{err}");
}
