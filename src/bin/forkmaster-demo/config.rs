//! How this worker boots, from its flags and the `DEMO_*` environment: the
//! token it answers with, the boot delay, an injected boot failure, and
//! whether it sends `READY=1`.

use std::time::Duration;
use std::{env, fs};

pub struct Boot {
    /// From `--token-file`/`DEMO_TOKEN_FILE` (read once), else `DEMO_TOKEN`, else `none`.
    pub token: String,
    /// `--boot-delay`/`DEMO_BOOT_DELAY`: how long to wait before serving.
    pub delay: Duration,
    /// `DEMO_FAIL_BOOT`: the status to exit with instead of serving.
    pub fail_status: Option<i32>,
    /// `DEMO_NO_READY=1`: serve without sending `READY=1`.
    pub no_ready: bool,
}

/// The value of `key` if it is set, UTF-8 and not empty.
pub fn env_nonempty(key: &str) -> Option<String> {
    env::var_os(key)
        .and_then(|v| v.into_string().ok())
        .filter(|v| !v.is_empty())
}

/// Reads the boot settings of the worker in slot `worker`, the flags taking
/// precedence; exits 1 with a message on an unreadable token file or an invalid value.
pub fn load_boot(token_file: Option<String>, boot_delay: Option<String>, worker: &str) -> Boot {
    let token = match token_file.or_else(|| env_nonempty("DEMO_TOKEN_FILE")) {
        Some(file) => fs::read_to_string(&file)
            .map(|t| t.trim().to_string())
            .unwrap_or_else(|e| fatal!("cannot read token file {file}: {e}")),
        None => env_nonempty("DEMO_TOKEN").unwrap_or_else(|| "none".into()),
    };
    let delay = match boot_delay.or_else(|| env_nonempty("DEMO_BOOT_DELAY")) {
        Some(d) => parse_duration(&d).unwrap_or_else(|| fatal!("invalid boot delay {d:?}")),
        None => Duration::ZERO,
    };
    let fail_status = env_nonempty("DEMO_FAIL_BOOT")
        .map(|v| {
            v.trim()
                .parse::<i32>()
                .unwrap_or_else(|_| fatal!("invalid DEMO_FAIL_BOOT={v:?}"))
        })
        // DEMO_FAIL_WORKER=N limits the failure to the worker in slot N.
        .filter(|_| env_nonempty("DEMO_FAIL_WORKER").is_none_or(|w| w.trim() == worker));
    let no_ready = env_nonempty("DEMO_NO_READY").is_some_and(|v| v.trim() != "0");
    Boot {
        token,
        delay,
        fail_status,
        no_ready,
    }
}

/// `250ms`, `1.5s`, or a bare number of milliseconds.
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        ms.trim().parse().ok().map(Duration::from_millis)
    } else if let Some(secs) = s.strip_suffix('s') {
        Duration::try_from_secs_f64(secs.trim().parse().ok()?).ok()
    } else {
        s.parse().ok().map(Duration::from_millis)
    }
}
