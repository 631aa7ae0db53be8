//! Integration tests: the real binary, the real demo app, real sockets and
//! real signals. One test binary, one module per area.

mod fixture;
mod guard;
mod harness;
mod source;
mod support;

mod clients;
mod config_errors;
mod contrib;
mod daemon;
mod descendants;
mod edges;
mod environment;
mod faults;
mod flag_values;
mod fleet;
mod health;
mod init_script;
mod inplace;
mod listeners;
mod log_files;
mod metrics;
mod operators;
mod output;
mod pid1;
mod pidfile;
mod pods;
mod preload;
mod preload_conformance;
mod privileges;
mod readiness_client;
mod real_servers;
mod recycle;
mod recycle_limits;
mod reloads;
mod serving;
mod signals;
mod sockets;
mod supervision;
mod systemd;
mod upgrade_failures;
mod upgrades;
