//! The deployment files parse, pass Prometheus's own checks, and agree with the code
//! (metric names, drain deadline vs. grace periods, configs that load).

use sluice::config::Config;
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn all_files() -> Vec<PathBuf> {
    let mut v = Vec::new();
    files(&deploy(), &mut v);
    v.sort();
    v
}

#[test]
fn every_yaml_and_json_file_parses() {
    let mut yaml = 0;
    let mut json = 0;
    for p in all_files() {
        let text = std::fs::read_to_string(&p).unwrap();
        match p.extension().and_then(|e| e.to_str()) {
            Some("yml" | "yaml") => {
                for doc in serde_yaml::Deserializer::from_str(&text) {
                    let v: serde_yaml::Value = serde::Deserialize::deserialize(doc)
                        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                    let _ = v;
                }
                yaml += 1;
            }
            Some("json") => {
                serde_json::from_str::<serde_json::Value>(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                json += 1;
            }
            _ => {}
        }
    }
    assert!(yaml >= 10, "only {yaml} YAML files found");
    assert!(json >= 1);
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool").args(args).output().expect(
        "promtool (Debian's prometheus package) must be installed; scripts/test installs it",
    );
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_rules_and_configs() {
    let d = deploy().join("prometheus");
    promtool(&["check", "rules", d.join("rules.yml").to_str().unwrap()]);
    promtool(&[
        "check",
        "config",
        d.join("prometheus.yml").to_str().unwrap(),
    ]);
    // The compose config names its rule file by its in-container path; check it with the
    // rule file beside it instead.
    let tmp = std::env::temp_dir().join(format!("sluice-prom-check-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let text = std::fs::read_to_string(d.join("prometheus.compose.yml"))
        .unwrap()
        .replace(
            "/etc/prometheus/rules.yml",
            d.join("rules.yml").to_str().unwrap(),
        );
    std::fs::write(tmp.join("p.yml"), text).unwrap();
    promtool(&["check", "config", tmp.join("p.yml").to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// `sluice_*` metric names an expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("sluice_") {
        let start = i + pos;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        out.push(expr[start..end].to_owned());
        i = end;
    }
    out
}

fn known(name: &str) -> bool {
    let mut families = sluice::metrics::family_names();
    families.extend(sluice::matrix::metrics::family_names());
    families.extend(sluice::livekit::metrics::family_names());
    families.contains(&name)
        || ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(|b| families.contains(&b)))
}

#[test]
fn dashboards_and_rules_use_only_metrics_sluice_exports() {
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("grafana/sluice-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs: Vec<String> = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    let rules: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(deploy().join("prometheus/rules.yml")).unwrap(),
    )
    .unwrap();
    for g in rules["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            exprs.push(r["expr"].as_str().unwrap().to_owned());
        }
    }
    let adapter =
        std::fs::read_to_string(deploy().join("k8s/prometheus-adapter-rules.yaml")).unwrap();
    exprs.push(adapter);
    let mut seen = 0;
    for e in &exprs {
        for n in metric_names(e) {
            assert!(known(&n), "{n} (in {e:?}) is not a metric Sluice exports");
            seen += 1;
        }
    }
    assert!(seen > 20);
}

#[test]
fn shipped_configs_load_and_grace_periods_cover_the_drain() {
    let drain = |path: &str| -> u64 {
        let text = std::fs::read_to_string(deploy().join(path)).unwrap();
        let c = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        c.http.drain_deadline_secs
    };
    let compose_drain = drain("compose/sluice.toml");
    drain("sluice.example.toml");
    // The Kubernetes config map's embedded configuration.
    let cm: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(deploy().join("k8s/configmap.yaml")).unwrap(),
    )
    .unwrap();
    let toml = cm["data"]["sluice.toml"].as_str().unwrap();
    let k8s_drain = Config::from_toml_str(toml)
        .unwrap()
        .http
        .drain_deadline_secs;
    let sts: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(deploy().join("k8s/statefulset.yaml")).unwrap(),
    )
    .unwrap();
    let grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        grace > k8s_drain,
        "terminationGracePeriodSeconds {grace} <= drain {k8s_drain}"
    );
    let unit = std::fs::read_to_string(deploy().join("systemd/sluice.service")).unwrap();
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(stop > Config::default().http.drain_deadline_secs);
    let compose = std::fs::read_to_string(deploy().join("docker-compose.yml")).unwrap();
    let grace: u64 = compose
        .lines()
        .find_map(|l| l.trim().strip_prefix("stop_grace_period: "))
        .and_then(|v| v.trim_end_matches('s').parse().ok())
        .unwrap();
    assert!(grace > compose_drain);
}
