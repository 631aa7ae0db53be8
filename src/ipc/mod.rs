//! The event sources the master's loop polls, one file each, and the
//! messages that travel through them.
//!
//! | source    | what arrives                                              |
//! |-----------|-----------------------------------------------------------|
//! | `signals` | signals, as bytes on a self-pipe written by the handlers   |
//! | `notify`  | sd_notify datagrams from workers and from a new master     |
//! | `control` | status requests from the client commands                   |
//! | `health`  | orchestrators' probes: `/livez`, `/readyz` over HTTP      |
//! | `output`  | the workers' stdout and stderr, for `stdout_path`/`stderr_path` |
//! | `preload` | a preloader's `hello`, `spawned` and `spawn_failed` packets |
//! | `rundir`  | not a source: the private directory the socket files live in |
//!
//! `systemd` goes the other way: what the master tells its own supervisor.

pub mod control;
pub mod health;
pub mod notify;
pub mod output;
pub mod preload;
pub mod rundir;
pub mod signals;
pub mod systemd;
