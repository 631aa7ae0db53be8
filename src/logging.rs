//! Log lines: `2026-11-23T17:57:26.123Z INFO forkmaster[4242] worker=2 pid=4243 event=ready`.
//!
//! Timestamped, with the master's pid (two masters share stderr during an
//! upgrade), and `key=value` fields so grep and log tools can read them.

use std::io::Write;

/// Sets up logging at `level` (a `--log-level` value), else from `RUST_LOG`,
/// else `info`.
pub fn init(level: Option<&str>) {
    let mut builder = env_logger::Builder::new();
    match (level, std::env::var("RUST_LOG")) {
        (Some(level), _) => builder.parse_filters(level),
        (None, Ok(filters)) => builder.parse_filters(&filters),
        (None, Err(_)) => builder.parse_filters("info"),
    };
    let pid = std::process::id();
    builder
        .format(move |buf, record| {
            writeln!(
                buf,
                "{} {} forkmaster[{pid}] {}",
                buf.timestamp_millis(),
                record.level(),
                record.args()
            )
        })
        .target(env_logger::Target::Stderr)
        .init();
}
