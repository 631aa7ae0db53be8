//! forkmaster: a preforking master process manager.
//!
//! The master binds the listening sockets once and forks workers that exec
//! the app with those sockets inherited, so connections queue in the kernel
//! across every restart. See `master` for the event loop.

pub mod cli;
pub mod client;
pub mod config;
pub mod control;
pub mod daemon;
pub mod duration;
pub mod error;
pub mod handoff;
pub mod launch;
pub mod listen;
pub mod logging;
pub mod logs;
pub mod master;
pub mod notify;
pub mod pidfile;
pub mod plan;
pub mod protocol;
pub mod ratelimit;
pub mod signals;
pub mod sockets;
pub mod spawn;
pub mod status;
pub mod sys;
pub mod systemd;
pub mod timers;
pub mod worker;
