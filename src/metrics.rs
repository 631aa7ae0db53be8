//! The master's metrics in the Prometheus text exposition format (0.0.4),
//! rendered from a `Status` alone: the health endpoint's `/metrics` and
//! `forkmaster metrics` (which asks the control socket for the status and
//! renders it locally) print the same text.
//!
//! Names start with `forkmaster_`, are in base units (`_bytes`,
//! `_seconds`), counters end in `_total`; labels are bounded sets only
//! (`state`, `reason`, `outcome`, `kind`, `listener`, and `slot` with
//! `generation` on per-worker gauges), never a pid. Every family has its
//! `# HELP` and `# TYPE` lines, even with no sample. See docs/OBSERVABILITY.md.

use crate::status::{ExitReason, Outcomes, RecycleReason, Status, Usage, WorkerPhase};
use std::collections::HashSet;
use std::fmt::Write;

/// The `Content-Type` of the text this module renders.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every metric family of `status`, as exposition text ending in a newline.
pub fn render(status: &Status) -> String {
    let mut out = Exposition::default();
    render_master(&mut out, status);
    render_workers(&mut out, status);
    render_operations(&mut out, status);
    render_usage(&mut out, status);
    render_listeners(&mut out, status);
    out.text
}

fn render_master(out: &mut Exposition, status: &Status) {
    out.family(
        "forkmaster_generation",
        "gauge",
        "The workers' generation: 1 at first start, one more per upgrade and reload.",
    );
    out.sample("forkmaster_generation", &[], status.generation);
    out.family(
        "forkmaster_uptime_seconds",
        "gauge",
        "Seconds since this master started (an upgrade starts a new one).",
    );
    out.sample("forkmaster_uptime_seconds", &[], status.uptime_secs);
}

fn render_workers(out: &mut Exposition, status: &Status) {
    out.family(
        "forkmaster_workers",
        "gauge",
        "Workers by state: booting, ready (serving), stopping.",
    );
    for phase in [
        WorkerPhase::Booting,
        WorkerPhase::Ready,
        WorkerPhase::Stopping,
    ] {
        let n = status.workers.iter().filter(|w| w.state == phase).count();
        out.sample("forkmaster_workers", &[("state", phase.name())], n);
    }
    out.family(
        "forkmaster_workers_target",
        "gauge",
        "Workers wanted (workers, TTIN/TTOU).",
    );
    out.sample("forkmaster_workers_target", &[], status.target);
    out.family(
        "forkmaster_worker_exits_total",
        "counter",
        "Worker exits by reason: stopped (asked for), crash (a signal), exit (a status), ready_timeout, watchdog, exec_failed, recycled (stopped once its replacement was ready).",
    );
    for reason in ExitReason::ALL {
        out.sample(
            "forkmaster_worker_exits_total",
            &[("reason", reason.name())],
            status.counters.worker_exits.get(reason),
        );
    }
    out.family(
        "forkmaster_worker_respawns_total",
        "counter",
        "Respawns scheduled after a worker died unasked or failed to spawn.",
    );
    out.sample(
        "forkmaster_worker_respawns_total",
        &[],
        status.counters.respawns,
    );
    out.family(
        "forkmaster_worker_recycles_total",
        "counter",
        "Workers replaced surge-first for going over a limit: memory (max_worker_memory) or age (max_worker_age).",
    );
    for reason in RecycleReason::ALL {
        out.sample(
            "forkmaster_worker_recycles_total",
            &[("reason", reason.name())],
            status.counters.recycles.get(reason),
        );
    }
}

fn render_operations(out: &mut Exposition, status: &Status) {
    for (what, counts, op) in [
        ("upgrade", status.counters.upgrades, &status.upgrade),
        ("reload", status.counters.reloads, &status.reload),
    ] {
        let total = format!("forkmaster_{what}s_total");
        out.family(
            &total,
            "counter",
            &format!("{what}s that ended, by outcome: done or failed."),
        );
        let Outcomes { done, failed } = counts;
        out.sample(&total, &[("outcome", "done")], done);
        out.sample(&total, &[("outcome", "failed")], failed);
        let duration = format!("forkmaster_{what}_last_duration_seconds");
        out.family(
            &duration,
            "gauge",
            &format!("How long the last {what} that ended took."),
        );
        if let Some(secs) = op.secs {
            out.sample(&duration, &[], secs);
        }
    }
}

fn render_usage(out: &mut Exposition, status: &Status) {
    out.family(
        "forkmaster_master_memory_bytes",
        "gauge",
        "The master's memory by kind: rss, pss, private, shared (smaps_rollup).",
    );
    for (kind, value) in memory(&status.usage) {
        if let Some(bytes) = value {
            out.sample("forkmaster_master_memory_bytes", &[("kind", kind)], bytes);
        }
    }
    out.family(
        "forkmaster_master_cpu_seconds_total",
        "counter",
        "The master's user and system CPU time.",
    );
    if let Some(secs) = status.usage.cpu_secs {
        out.sample("forkmaster_master_cpu_seconds_total", &[], secs);
    }
    out.family(
        "forkmaster_worker_memory_bytes",
        "gauge",
        "Each worker's memory by kind: rss, pss, private, shared (smaps_rollup).",
    );
    // A slot holds two workers during a rolling restart, of two generations;
    // a label set is shown once even so.
    let mut seen = HashSet::new();
    let workers: Vec<_> = status
        .workers
        .iter()
        .filter(|w| seen.insert((w.slot, w.generation)))
        .collect();
    for w in &workers {
        let (slot, generation) = (w.slot.to_string(), w.generation.to_string());
        for (kind, value) in memory(&w.usage) {
            if let Some(bytes) = value {
                let labels = [
                    ("slot", &*slot),
                    ("generation", &*generation),
                    ("kind", kind),
                ];
                out.sample("forkmaster_worker_memory_bytes", &labels, bytes);
            }
        }
    }
    out.family(
        "forkmaster_worker_cpu_seconds_total",
        "counter",
        "Each worker's user and system CPU time (starts again with a new worker).",
    );
    for w in &workers {
        if let Some(secs) = w.usage.cpu_secs {
            let (slot, generation) = (w.slot.to_string(), w.generation.to_string());
            let labels = [("slot", &*slot), ("generation", &*generation)];
            out.sample("forkmaster_worker_cpu_seconds_total", &labels, secs);
        }
    }
}

fn memory(usage: &Usage) -> [(&'static str, Option<u64>); 4] {
    [
        ("rss", usage.rss_bytes),
        ("pss", usage.pss_bytes),
        ("private", usage.private_bytes),
        ("shared", usage.shared_bytes),
    ]
}

fn render_listeners(out: &mut Exposition, status: &Status) {
    out.family(
        "forkmaster_listener_accept_queue",
        "gauge",
        "Connections waiting in a TCP listener's accept queue.",
    );
    for l in &status.listeners {
        if let Some(queued) = l.accept_queue {
            let labels = [("listener", l.address.as_str())];
            out.sample("forkmaster_listener_accept_queue", &labels, queued);
        }
    }
    out.family(
        "forkmaster_listener_backlog",
        "gauge",
        "The most a TCP listener's accept queue holds (backlog, capped by somaxconn).",
    );
    for l in &status.listeners {
        if let Some(backlog) = l.backlog {
            let labels = [("listener", l.address.as_str())];
            out.sample("forkmaster_listener_backlog", &labels, backlog);
        }
    }
}

/// Exposition text being written.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape(help, false));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Value) {
        self.text.push_str(name);
        if !labels.is_empty() {
            let pairs: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v, true)))
                .collect();
            let _ = write!(self.text, "{{{}}}", pairs.join(","));
        }
        let _ = writeln!(self.text, " {}", value.exposed());
    }
}

/// A sample value as the format writes it.
trait Value {
    fn exposed(&self) -> String;
}

macro_rules! integer_value {
    ($($t:ty),*) => {$(
        impl Value for $t {
            fn exposed(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
integer_value!(u32, u64, usize);

impl Value for f64 {
    fn exposed(&self) -> String {
        if self.is_nan() {
            "NaN".into()
        } else if self.is_infinite() {
            if *self > 0.0 { "+Inf" } else { "-Inf" }.into()
        } else {
            self.to_string()
        }
    }
}

/// HELP text escapes `\` and newlines; label values `"` too.
fn escape(text: &str, quotes: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quotes => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Counters, ListenerStatus, Operation, WorkerStatus};

    fn sample_lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn every_family_has_help_and_type_and_counters_end_in_total() {
        let text = render(&Status::default());
        let types: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        assert_eq!(types.len(), helps, "{text}");
        for t in types {
            let (name, kind) = t.split_once(' ').unwrap();
            assert!(name.starts_with("forkmaster_"), "{name}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{name}");
        }
        for line in sample_lines(&text) {
            assert!(!line.contains("pid"), "{line}");
        }
    }

    #[test]
    fn counts_workers_exits_operations_and_listeners() {
        let mut counters = Counters::default();
        counters.worker_exits.count(ExitReason::Crash);
        counters.worker_exits.count(ExitReason::Crash);
        counters.upgrades.failed = 1;
        counters.recycles.count(RecycleReason::Age);
        let status = Status {
            generation: 3,
            target: 2,
            workers: vec![
                WorkerStatus {
                    slot: 0,
                    state: WorkerPhase::Ready,
                    generation: 3,
                    usage: Usage {
                        rss_bytes: Some(4096),
                        cpu_secs: Some(0.25),
                        ..Usage::default()
                    },
                    ..WorkerStatus::default()
                },
                WorkerStatus {
                    slot: 1,
                    state: WorkerPhase::Booting,
                    generation: 3,
                    ..WorkerStatus::default()
                },
            ],
            upgrade: Operation {
                secs: Some(1.5),
                ..Operation::default()
            },
            counters,
            listeners: vec![
                ListenerStatus {
                    address: "127.0.0.1:8080".into(),
                    accept_queue: Some(0),
                    backlog: Some(128),
                },
                ListenerStatus {
                    address: "unix:/run/a \"b\".sock".into(),
                    ..ListenerStatus::default()
                },
            ],
            ..Status::default()
        };
        let text = render(&status);
        let lines = sample_lines(&text);
        for expected in [
            "forkmaster_generation 3",
            "forkmaster_workers{state=\"ready\"} 1",
            "forkmaster_workers{state=\"booting\"} 1",
            "forkmaster_workers{state=\"stopping\"} 0",
            "forkmaster_workers_target 2",
            "forkmaster_worker_exits_total{reason=\"crash\"} 2",
            "forkmaster_worker_exits_total{reason=\"watchdog\"} 0",
            "forkmaster_worker_exits_total{reason=\"recycled\"} 0",
            "forkmaster_worker_recycles_total{reason=\"age\"} 1",
            "forkmaster_worker_recycles_total{reason=\"memory\"} 0",
            "forkmaster_upgrades_total{outcome=\"failed\"} 1",
            "forkmaster_upgrade_last_duration_seconds 1.5",
            "forkmaster_worker_memory_bytes{slot=\"0\",generation=\"3\",kind=\"rss\"} 4096",
            "forkmaster_worker_cpu_seconds_total{slot=\"0\",generation=\"3\"} 0.25",
            "forkmaster_listener_accept_queue{listener=\"127.0.0.1:8080\"} 0",
            "forkmaster_listener_backlog{listener=\"127.0.0.1:8080\"} 128",
        ] {
            assert!(lines.contains(&expected), "{expected}\n{text}");
        }
        let unread = "forkmaster_reload_last_duration_seconds";
        assert!(!lines.iter().any(|l| l.starts_with(unread)), "{text}");
        assert!(!text.contains("unix:"), "{text}");
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd", true), "a\\\"b\\\\c\\nd");
        assert_eq!(escape("a\"b", false), "a\"b");
    }
}
