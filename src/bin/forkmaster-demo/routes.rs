//! What each path answers (GET or HEAD; anything else is 404):
//!
//! * `/` → `pid=<pid> worker=<FORKMASTER_WORKER> generation=<FORKMASTER_GENERATION> token=<token>`
//! * `/sleep?ms=N` → the same after sleeping N ms
//! * `/crash` → `abort()`; `/exit?code=N` → `exit(N)` (neither sends a response)
//! * `/hang-watchdog` → stop the `WATCHDOG=1` pings
//! * `/alloc?mb=N` → hold N MiB more private memory (`ballast`), answer `held_mb=..`
//! * `/env` → the environment, sorted; `/fds` → the fds open when `main` started
//! * `/info` → `/` plus `ppid=`, `pgid=` and `pdeathsig=` lines

use crate::app::App;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::{env, process, thread};

/// The status and body for a request; may not return (`/crash`, `/exit`).
pub fn route(app: &App, method: &str, target: &str) -> (u16, String) {
    if method != "GET" && method != "HEAD" {
        return (404, "not found\n".into());
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let param = |key: &str| {
        query.split('&').find_map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| *k == key)
                .map(|(_, v)| v)
        })
    };
    match path {
        "/" => (200, app.body.clone()),
        "/sleep" => match param("ms").and_then(|v| v.parse::<u64>().ok()) {
            Some(ms) => {
                thread::sleep(Duration::from_millis(ms));
                (200, app.body.clone())
            }
            None => (400, "bad or missing ms\n".into()),
        },
        "/crash" => {
            log!("event=crash");
            process::abort();
        }
        "/exit" => match param("code").and_then(|v| v.parse::<i32>().ok()) {
            Some(code) => {
                log!("event=exit reason=request status={code}");
                process::exit(code);
            }
            None => (400, "bad or missing code\n".into()),
        },
        "/alloc" => match param("mb").and_then(|v| v.parse::<usize>().ok()) {
            Some(mb) => match crate::ballast::grow(mb) {
                Ok(total) => {
                    log!("event=alloc mb={total}");
                    (200, format!("held_mb={total}\n"))
                }
                Err(e) => (400, format!("{e}\n")),
            },
            None => (400, "bad or missing mb\n".into()),
        },
        "/hang-watchdog" => {
            app.hang_watchdog.store(true, Ordering::SeqCst);
            log!("event=hang-watchdog");
            (200, "ok\n".into())
        }
        "/env" => {
            let mut vars: Vec<String> = env::vars_os()
                .map(|(k, v)| format!("{}={}\n", k.to_string_lossy(), v.to_string_lossy()))
                .collect();
            vars.sort();
            (200, vars.concat())
        }
        "/fds" => (200, app.fds.clone()),
        "/info" => {
            let pdeathsig = app.pdeathsig;
            // SAFETY: getpgrp takes no arguments and cannot fail.
            let pgid = unsafe { libc::getpgrp() };
            let ppid = std::os::unix::process::parent_id();
            let body = &app.body;
            (
                200,
                format!("{body}ppid={ppid}\npgid={pgid}\npdeathsig={pdeathsig}\n"),
            )
        }
        _ => (404, "not found\n".into()),
    }
}
