//! forkmaster: a preforking master process manager.
//!
//! The master binds the listening sockets once and forks workers that exec
//! the app with those sockets inherited, so connections queue in the kernel
//! across every restart. See `master` for the event loop, and
//! docs/ARCHITECTURE.md for how the parts fit.
//!
//! The binary needs three entry points: `cli` (the command line), `client`
//! (the client commands) and `start` (a master); everything else is private.

// Only `sys` may hold code the compiler cannot check; each such block there
// says why it is sound.
#![deny(unsafe_code)]

pub mod cli;
pub mod client;
mod config;
mod daemon;
mod duration;
mod error;
mod files;
mod handoff;
mod inplace;
mod ipc;
mod launch;
mod listen;
mod logging;
mod master;
mod metrics;
mod pidfile;
mod plan;
mod procfs;
#[cfg(test)]
mod proptests;
mod protocol;
mod ratelimit;
mod sockets;
mod spawn;
pub mod start;
mod status;
#[allow(unsafe_code)]
mod sys;
mod timers;
mod worker;
