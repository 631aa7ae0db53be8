//! Integration tests: the real binary, the real demo app, real sockets and
//! real signals. One test binary, one module per area.

mod fixture;
mod guard;
mod harness;
mod source;
mod support;

mod clients;
mod config_errors;
mod daemon;
mod descendants;
mod environment;
mod faults;
mod init_script;
mod listeners;
mod log_files;
mod pidfile;
mod privileges;
mod reloads;
mod serving;
mod signals;
mod supervision;
mod systemd;
mod upgrade_failures;
mod upgrades;
