//! forkmaster: a preforking master process manager.
//!
//! The master binds the listening sockets once and forks workers that exec
//! the app with those sockets inherited, so connections queue in the kernel
//! across every restart. See `master` for the event loop.

// Only `sys` may hold code the compiler cannot check; each such block there
// says why it is sound.
#![deny(unsafe_code)]

pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod duration;
pub mod error;
pub mod files;
pub mod handoff;
pub mod ipc;
pub mod launch;
pub mod listen;
pub mod logging;
pub mod master;
pub mod pidfile;
pub mod plan;
pub mod protocol;
pub mod ratelimit;
pub mod sockets;
pub mod spawn;
pub mod start;
pub mod status;
#[allow(unsafe_code)]
pub mod sys;
pub mod timers;
pub mod worker;
