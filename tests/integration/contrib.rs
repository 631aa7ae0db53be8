//! The container examples in contrib/ stay true: the Docker image's
//! forkmaster config and the Kubernetes ConfigMap's pass `forkmaster -t`,
//! the Kubernetes YAML parses and its probes, ports, volumes and grace
//! period agree with that config, and the Dockerfile is well formed.

use crate::support::*;
use serde::Deserialize;
use serde_yaml_ng::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Every document of a YAML file.
fn documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// `forkmaster -t -c FILE`, with the demo app (the examples' app) on PATH.
fn check_config(file: &Path) {
    let bin_dir = Path::new(demo()).parent().expect("demo dir");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(forkmaster());
    cmd.args(["-t", "-c"]).arg(file).env("PATH", path);
    let out = run_command(cmd, secs(10));
    assert!(
        out.status.success(),
        "forkmaster -t -c {}: {}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `5s`, `30s`, `500ms`, `1m` as the examples write them.
fn duration(value: &Value) -> Duration {
    let text = value.as_str().expect("a duration string");
    let (number, unit) = text.split_at(
        text.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len()),
    );
    let n: f64 = number.parse().unwrap_or_else(|_| panic!("duration {text}"));
    match unit {
        "ms" => Duration::from_secs_f64(n / 1000.0),
        "s" | "" => Duration::from_secs_f64(n),
        "m" => Duration::from_secs_f64(n * 60.0),
        _ => panic!("duration {text}"),
    }
}

fn port_of(addr: &Value) -> u64 {
    let text = addr.as_str().expect("an address");
    text.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port")
}

#[test]
fn the_docker_example_config_passes_the_check() {
    check_config(&repo("contrib/docker/forkmaster.yml"));
}

#[test]
fn the_kubernetes_examples_parse_and_agree_with_their_forkmaster_config() {
    let configmap = documents("contrib/kubernetes/configmap.yaml");
    let deployment = documents("contrib/kubernetes/deployment.yaml");
    let map = kind(&configmap, "ConfigMap");
    let text = map["data"]["app.yml"].as_str().expect("data app.yml");

    // The embedded config passes `forkmaster -t`, and is the Docker image's.
    let dir = TempDir::new();
    let file = dir.join("app.yml");
    std::fs::write(&file, text).unwrap();
    check_config(&file);
    let config: Value = serde_yaml_ng::from_str(text).unwrap();
    let docker: Value =
        serde_yaml_ng::from_str(&file_text(&repo("contrib/docker/forkmaster.yml"))).unwrap();
    assert_eq!(
        config, docker,
        "the ConfigMap and contrib/docker/forkmaster.yml differ"
    );

    let deploy = kind(&deployment, "Deployment");
    kind(&deployment, "Service");
    let rolling = &deploy["spec"]["strategy"]["rollingUpdate"];
    assert_eq!(rolling["maxUnavailable"].as_u64(), Some(0));
    assert!(rolling["maxSurge"].as_u64().unwrap_or(0) >= 1);

    let pod = &deploy["spec"]["template"]["spec"];
    // The grace period covers the whole stop: shutdown_delay +
    // graceful_timeout + 5 s for what the workers left behind.
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace");
    let stop = duration(&config["shutdown_delay"])
        + duration(&config["graceful_timeout"])
        + Duration::from_secs(5);
    assert!(
        Duration::from_secs(grace) >= stop,
        "terminationGracePeriodSeconds {grace} < the stop's {stop:?}"
    );
    assert_eq!(config["term"].as_str(), Some("graceful"));

    let container = &pod["containers"][0];
    assert!(
        container["lifecycle"]["preStop"].is_null(),
        "no preStop: shutdown_delay does it"
    );
    let health_port = container["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .find(|p| p["name"].as_str() == Some("health"))
        .and_then(|p| p["containerPort"].as_u64())
        .expect("a port named health");
    assert_eq!(health_port, port_of(&config["health_listen"]));
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/livez")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(get["port"].as_str(), Some("health"), "{probe}");
    }
    let http_port = container["ports"][0]["containerPort"].as_u64();
    let listen = &config["listen"][0];
    assert_eq!(http_port, Some(port_of(listen)));

    // The ConfigMap is mounted where the command reads it, and the pid
    // file's directory is a writable volume.
    let command: Vec<&str> = container["command"]
        .as_sequence()
        .expect("command")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(command[0], "forkmaster");
    let config_path = Path::new(command[command.iter().position(|a| *a == "-c").expect("-c") + 1]);
    let mounts = container["volumeMounts"].as_sequence().expect("mounts");
    let volumes = pod["volumes"].as_sequence().expect("volumes");
    let mount_of = |dir: &Path| {
        let mount = mounts
            .iter()
            .find(|m| m["mountPath"].as_str().map(Path::new) == Some(dir))
            .unwrap_or_else(|| panic!("nothing mounted at {}", dir.display()));
        let name = mount["name"].as_str();
        volumes
            .iter()
            .find(|v| v["name"].as_str() == name)
            .expect("the mount's volume")
    };
    let config_volume = mount_of(config_path.parent().expect("config dir"));
    assert_eq!(config_volume["configMap"]["name"], map["metadata"]["name"]);
    assert_eq!(
        config_path.file_name().and_then(|n| n.to_str()),
        Some("app.yml")
    );
    let pid = Path::new(config["pid"].as_str().expect("pid"));
    assert!(!mount_of(pid.parent().expect("pid dir"))["emptyDir"].is_null());
}

#[test]
fn the_dockerfile_is_well_formed_and_runs_forkmaster_as_its_entrypoint() {
    const INSTRUCTIONS: [&str; 18] = [
        "FROM",
        "RUN",
        "CMD",
        "LABEL",
        "EXPOSE",
        "ENV",
        "ADD",
        "COPY",
        "ENTRYPOINT",
        "VOLUME",
        "USER",
        "WORKDIR",
        "ARG",
        "ONBUILD",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "SHELL",
        "MAINTAINER",
    ];
    let text = file_text(&repo("contrib/docker/Dockerfile"));
    // Logical lines: continuations joined, comments dropped.
    let mut lines: Vec<String> = Vec::new();
    let mut continued = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && !continued) {
            continue;
        }
        let (body, more) = match trimmed.strip_suffix('\\') {
            Some(body) => (body, true),
            None => (trimmed, false),
        };
        match (continued, lines.last_mut()) {
            (true, Some(last)) => last.push_str(body),
            _ => lines.push(body.to_string()),
        }
        continued = more;
    }
    assert!(!continued, "the Dockerfile ends in a continuation");
    let mut entrypoint = None;
    let mut stopsignal = None;
    let mut healthcheck = None;
    let mut config_copy = None;
    for line in &lines {
        let (instruction, args) = line.split_once(' ').unwrap_or((line, ""));
        assert!(
            INSTRUCTIONS.contains(&instruction),
            "unknown instruction: {line}"
        );
        let exec_form = |json: &str| -> Vec<String> {
            serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{line}: exec form: {e}"))
        };
        match instruction {
            "ENTRYPOINT" => entrypoint = Some(exec_form(args)),
            "STOPSIGNAL" => stopsignal = Some(args.trim().to_string()),
            "HEALTHCHECK" => {
                let json = args.split_once("CMD").expect("HEALTHCHECK CMD").1;
                healthcheck = Some(exec_form(json));
            }
            "COPY" if !args.contains("--from") => {
                let words: Vec<&str> = args.split_whitespace().collect();
                let (dest, sources) = words.split_last().expect("COPY args");
                for source in sources {
                    assert!(
                        repo(source).exists(),
                        "COPY source {source} is not in the repository"
                    );
                    if source.ends_with("forkmaster.yml") {
                        config_copy = Some(dest.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    let entrypoint = entrypoint.expect("an ENTRYPOINT");
    assert_eq!(entrypoint[0], "forkmaster", "forkmaster must be PID 1");
    let config = config_copy.expect("the config COPY");
    assert_eq!(entrypoint[1..], ["-c".to_string(), config.clone()]);
    assert_eq!(stopsignal.as_deref(), Some("SIGTERM"));
    let health = healthcheck.expect("a HEALTHCHECK");
    assert_eq!(health, ["forkmaster", "ready", "-c", config.as_str()]);
    assert_eq!(
        serde_yaml_ng::from_str::<Value>(&file_text(&repo("contrib/docker/forkmaster.yml")))
            .unwrap()["term"]
            .as_str(),
        Some("graceful"),
        "STOPSIGNAL TERM needs term: graceful"
    );
}
