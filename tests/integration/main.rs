//! Integration tests: the real binary, the real demo app, real sockets and
//! real signals. One test binary, one module per area.

mod support;

mod config_errors;
mod environment;
mod listeners;
mod pidfile;
mod serving;
mod signals;
mod supervision;
mod upgrades;

mod clients;
mod reloads;
mod upgrade_failures;
