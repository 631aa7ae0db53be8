//! One builder for the masters the tests start: the common case (the demo
//! app as the command, `--ready notify`, logs in the test's temp dir) by
//! default, each variation a test needs as one call.
//!
//! ```ignore
//! let master = Fixture::new(&dir).workers(2).unix("app.sock").arg("--retire").arg("manual").start();
//! ```
//!
//! The arguments come out as `[-c FILE] [-p PIDFILE] [-w N] [-l ADDR]...
//! [--ready MODE] [ARG]... [-- COMMAND...]`, listeners and extra arguments
//! in the order given.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::{demo, forkmaster, run_command, spawn_master, Master, TempDir};

/// A last say on the `Command`, run in the order given.
type Setup<'a> = Box<dyn FnOnce(&mut Command) + 'a>;

/// A master about to start in `dir`; `start` runs it (without waiting),
/// `run` runs it to completion.
pub struct Fixture<'a> {
    dir: &'a TempDir,
    program: PathBuf,
    /// Arguments before forkmaster's own (a shell's `-c SCRIPT forkmaster`).
    prefix: Vec<String>,
    config: Option<String>,
    pid_file: Option<PathBuf>,
    /// Watched for later generations without a `-p` (a config file names it).
    watched: Option<PathBuf>,
    workers: Option<usize>,
    listen: Vec<String>,
    ready: Option<String>,
    args: Vec<String>,
    command: Vec<String>,
    setup: Vec<Setup<'a>>,
}

impl<'a> Fixture<'a> {
    /// `forkmaster --ready notify -- forkmaster-demo`, logging into `dir`.
    pub fn new(dir: &'a TempDir) -> Fixture<'a> {
        Fixture {
            dir,
            program: PathBuf::from(forkmaster()),
            prefix: Vec::new(),
            config: None,
            pid_file: None,
            watched: None,
            workers: None,
            listen: Vec::new(),
            ready: Some("notify".to_string()),
            args: Vec::new(),
            command: vec![demo().to_string()],
            setup: Vec::new(),
        }
    }

    /// `forkmaster -c FILE` alone: the file says the rest (readiness and
    /// command included) unless more calls add flags.
    pub fn config(dir: &'a TempDir, file: impl AsRef<Path>) -> Fixture<'a> {
        let mut fixture = Fixture::new(dir);
        fixture.config = Some(file.as_ref().display().to_string());
        fixture.ready = None;
        fixture.command.clear();
        fixture
    }

    /// `-w N`.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// `-l SPEC`, after the listeners given before.
    pub fn listen(mut self, spec: impl Into<String>) -> Self {
        self.listen.push(spec.into());
        self
    }

    /// `-l 127.0.0.1:0`: a free loopback port (the log names it).
    pub fn tcp(self) -> Self {
        self.listen("127.0.0.1:0")
    }

    /// `-l unix:<dir>/<name>`.
    pub fn unix(self, name: &str) -> Self {
        let spec = self.dir.unix(name);
        self.listen(spec)
    }

    /// `--ready MODE` instead of `notify`.
    pub fn ready(mut self, mode: &str) -> Self {
        self.ready = Some(mode.to_string());
        self
    }

    /// No `--ready` flag at all.
    pub fn no_ready(mut self) -> Self {
        self.ready = None;
        self
    }

    /// `-p PATH`; the master's guard watches it for later generations.
    pub fn pid_file(mut self, path: impl AsRef<Path>) -> Self {
        self.pid_file = Some(path.as_ref().to_path_buf());
        self
    }

    /// Watches `path` for later generations, as `pid_file` does, but adds
    /// no flag (the config file names it).
    pub fn watch_pid_file(mut self, path: impl AsRef<Path>) -> Self {
        self.watched = Some(path.as_ref().to_path_buf());
        self
    }

    /// `--env KEY=VALUE` for the command.
    pub fn env(self, pair: &str) -> Self {
        self.arg("--env").arg(pair)
    }

    /// `--stdout-path OUT --stderr-path ERR`: the master's and workers'
    /// output into files (the master's log then goes to `err`, not the one
    /// `Master::log` reads unless the test points `log_path` there).
    pub fn log_files(self, out: impl AsRef<Path>, err: impl AsRef<Path>) -> Self {
        let (out, err) = (out.as_ref().display(), err.as_ref().display());
        self.arg("--stdout-path")
            .arg(out.to_string())
            .arg("--stderr-path")
            .arg(err.to_string())
    }

    /// One more argument before the command.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// More arguments before the command.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// The command after `--` instead of the demo app (empty: no `--`).
    pub fn command(mut self, command: &[&str]) -> Self {
        self.command = command.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Runs the master as `program` (e.g. a symlink to the binary).
    pub fn program(mut self, program: impl AsRef<Path>) -> Self {
        self.program = program.as_ref().to_path_buf();
        self
    }

    /// Runs `/bin/sh -c SCRIPT PROGRAM ARGS...`, where the script ends in
    /// `exec "$0" "$@"`: the master keeps the shell's pid, so the script can
    /// hand it `$$` (as a service manager would set `LISTEN_PID`).
    pub fn through_shell(mut self, script: &str) -> Self {
        self.prefix = vec![
            "-c".to_string(),
            script.to_string(),
            self.program.display().to_string(),
        ];
        self.program = PathBuf::from("/bin/sh");
        self
    }

    /// An environment variable of the master process itself.
    pub fn master_env(self, key: &'a str, value: &'a str) -> Self {
        self.setup(move |cmd| {
            cmd.env(key, value);
        })
    }

    /// A last say on the `Command` (streams, limits, user), after the
    /// defaults and the calls before.
    pub fn setup(mut self, setup: impl FnOnce(&mut Command) + 'a) -> Self {
        self.setup.push(Box::new(setup));
        self
    }

    /// The command line `start` runs, after the program.
    pub fn command_line(&self) -> Vec<String> {
        let mut line = self.prefix.clone();
        let mut flag = |name: &str, value: &str| {
            line.push(name.to_string());
            line.push(value.to_string());
        };
        if let Some(config) = &self.config {
            flag("-c", config);
        }
        if let Some(path) = &self.pid_file {
            flag("-p", &path.display().to_string());
        }
        if let Some(n) = self.workers {
            flag("-w", &n.to_string());
        }
        for spec in &self.listen {
            flag("-l", spec);
        }
        if let Some(mode) = &self.ready {
            flag("--ready", mode);
        }
        line.extend(self.args.iter().cloned());
        if !self.command.is_empty() {
            line.push("--".to_string());
            line.extend(self.command.iter().cloned());
        }
        line
    }

    /// Starts the master; it is not waited for.
    pub fn start(self) -> Master {
        let mut cmd = Command::new(&self.program);
        cmd.args(self.command_line());
        let setups = self.setup;
        let mut master = spawn_master(self.dir, cmd, |cmd| {
            for setup in setups {
                setup(cmd);
            }
        });
        if let Some(path) = self.pid_file.as_ref().or(self.watched.as_ref()) {
            master.watch_pid_file(path);
        }
        master
    }

    /// Runs forkmaster to completion with its output captured (a start
    /// that must fail), killing it if it outlives `timeout`.
    pub fn run(self, timeout: Duration) -> Output {
        let mut cmd = Command::new(&self.program);
        cmd.args(self.command_line());
        for setup in self.setup {
            setup(&mut cmd);
        }
        run_command(cmd, timeout)
    }
}
