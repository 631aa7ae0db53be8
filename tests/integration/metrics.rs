//! The master's metrics: `GET /metrics` on the health endpoint and
//! `forkmaster metrics -p PIDFILE`, read with a real parser (Python's
//! `prometheus_client`, as Prometheus's own client library parses it).
//!
//! `prometheus_client` is not a build dependency: when it is missing the
//! test says so loudly and passes, unless `FORKMASTER_REQUIRE_REAL_SERVERS=1`
//! (set by CI, which installs it) makes it fail instead.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};

use crate::fixture::Fixture;
use crate::support::{
    client, demo, get, health_addr, listen_addr, secs, skip_unless_required, wait_serving, Target,
    TempDir,
};

/// Prints each sample of the text on stdin as one JSON object, with its
/// family's name and type: whatever the parser rejects fails the script.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"family": family.name, "type": family.type,
                    "name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;

/// One parsed sample.
#[derive(Debug, Clone)]
struct Sample {
    family: String,
    kind: String,
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A Python that imports `prometheus_client` (the one on PATH, or the
/// system's, where Debian's package installs it); without one the test is
/// skipped loudly, or fails under `FORKMASTER_REQUIRE_REAL_SERVERS=1`.
fn parser_python() -> Option<&'static str> {
    let found = ["python3", "/usr/bin/python3"].into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import prometheus_client"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if found.is_some() {
        return found;
    }
    let message = "metrics: python3 prometheus_client not installed \
                   (e.g. apt-get install python3-prometheus-client)";
    skip_unless_required(message);
    None
}

/// The samples of `text`, as `prometheus_client` parses it; panics with
/// the parser's error and the text if it refuses it.
fn parse(python: &str, text: &str) -> Vec<Sample> {
    let mut child = Command::new(python)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to the parser");
    let out = child.wait_with_output().expect("parser output");
    assert!(
        out.status.success(),
        "the parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("parser JSON");
    json.as_array()
        .expect("a list of samples")
        .iter()
        .map(|s| Sample {
            family: s["family"].as_str().unwrap_or_default().to_string(),
            kind: s["type"].as_str().unwrap_or_default().to_string(),
            name: s["name"].as_str().unwrap_or_default().to_string(),
            labels: s["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            value: s["value"].as_f64().expect("a numeric value"),
        })
        .collect()
}

/// The value of the one sample `name` with (at least) `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} twice: {found:?}");
    found.first().map(|s| s.value)
}

/// `GET /metrics`: its `Content-Type` and body (200 asserted).
fn fetch_metrics(addr: SocketAddr) -> (String, String) {
    let mut s = TcpStream::connect_timeout(&addr, secs(5)).expect("connect to health");
    s.set_read_timeout(Some(secs(10))).expect("read timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .expect("write request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete answer");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or_default()
        .to_string();
    (content_type, body.to_string())
}

fn families(samples: &[Sample]) -> BTreeSet<(String, String)> {
    samples
        .iter()
        .map(|s| (s.family.clone(), s.kind.clone()))
        .collect()
}

#[test]
fn metrics_parse_and_count_workers_queues_and_a_crash() {
    let Some(python) = parser_python() else {
        return;
    };
    let parse = |text: &str| parse(python, text);
    let dir = TempDir::new();
    let pid_file = dir.join("master.pid");
    // A backlog of its own, to see it reported (a listener's backlog is
    // set in the config file).
    let cfg = dir.join("app.yml");
    let listen = "listen: [{address: '127.0.0.1:0', backlog: 64}]\n";
    std::fs::write(&cfg, listen).expect("write config");
    let master = Fixture::config(&dir, &cfg)
        .ready("notify")
        .command(&[demo()])
        .workers(2)
        .pid_file(&pid_file)
        .args(&["--health-listen", "127.0.0.1:0"])
        .start();
    master.wait_ready();
    let health = health_addr(&master);
    let app_addr = listen_addr(&master.log(), 0);
    let app = Target::Tcp(app_addr);
    wait_serving(&app);
    let listener = app_addr.to_string();

    let (content_type, text) = fetch_metrics(health);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let samples = parse(&text);
    let ready = [("state", "ready")];
    assert_eq!(value(&samples, "forkmaster_workers", &ready), Some(2.0));
    assert_eq!(value(&samples, "forkmaster_workers_target", &[]), Some(2.0));
    assert_eq!(value(&samples, "forkmaster_generation", &[]), Some(1.0));
    let queue = [("listener", listener.as_str())];
    assert_eq!(
        value(&samples, "forkmaster_listener_accept_queue", &queue),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        value(&samples, "forkmaster_listener_backlog", &queue),
        Some(64.0),
        "{text}"
    );
    let crash = [("reason", "crash")];
    assert_eq!(
        value(&samples, "forkmaster_worker_exits_total", &crash),
        Some(0.0)
    );
    assert!(
        value(
            &samples,
            "forkmaster_master_memory_bytes",
            &[("kind", "rss")]
        )
        .is_some_and(|b| b > 0.0),
        "{text}"
    );
    let worker_rss = samples
        .iter()
        .filter(|s| s.name == "forkmaster_worker_memory_bytes" && s.labels["kind"] == "rss")
        .count();
    assert_eq!(worker_rss, 2, "{text}");
    for s in &samples {
        assert!(s.name.starts_with("forkmaster_"), "{s:?}");
        assert!(!s.labels.contains_key("pid"), "{s:?}");
        if s.kind == "counter" {
            assert!(s.name.ends_with("_total"), "{s:?}");
        }
    }

    // The crash is counted once the master reaped the worker.
    assert!(get(&app, "/crash").is_err(), "/crash answered");
    // Counted before the respawn is logged.
    master.wait_log("event=respawn", secs(20));
    let samples = parse(&fetch_metrics(health).1);
    assert_eq!(
        value(&samples, "forkmaster_worker_exits_total", &crash),
        Some(1.0)
    );
    assert!(
        value(&samples, "forkmaster_worker_respawns_total", &[]).is_some_and(|n| n >= 1.0),
        "{samples:?}"
    );

    // The client renders the same text from the status.
    let pid = pid_file.display().to_string();
    let (code, stdout, stderr) = client(&["metrics", "-p", &pid], secs(10));
    assert_eq!(code, 0, "{stderr}");
    let from_client = parse(&stdout);
    assert_eq!(families(&from_client), families(&samples), "{stdout}");
    assert_eq!(
        value(&from_client, "forkmaster_worker_exits_total", &crash),
        Some(1.0)
    );
    assert_eq!(
        value(&from_client, "forkmaster_listener_backlog", &queue),
        Some(64.0)
    );
}
