//! The deployment pieces in `deploy/` (issue 18, item 7) cannot rot
//! unnoticed: every metric the Grafana dashboard and the Prometheus rules
//! name is one a running fleet member exports on `/metrics` (with the
//! suffix its type gives the series); the rules, the scrape job and the
//! Kubernetes manifests parse; the manifests' config passes `cutover
//! check`, forms a fleet, and its ports are the ones the probes, the
//! Service and the scrape annotations use.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use cutover::routing::Phase;
use support::{Config, Served};
use yaml_rust2::{Yaml, YamlLoader};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

fn yaml(path: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

/// The metric families `/metrics` describes (`# TYPE name kind`).
fn families(exposition: &str) -> HashMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some((name.to_string(), kind.to_string()))
        })
        .collect()
}

/// Whether `series` is a series of an exported family: a gauge by its
/// name, a counter with `_total`, a histogram's buckets, sum and count.
fn exported(series: &str, families: &HashMap<String, String>) -> bool {
    let is = |name: &str, kind: &str| families.get(name).is_some_and(|k| k == kind);
    is(series, "gauge")
        || series
            .strip_suffix("_total")
            .is_some_and(|f| is(f, "counter"))
        || ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| series.strip_suffix(s).is_some_and(|f| is(f, "histogram")))
}

/// The `cutover_...` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("cutover_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// Every `expr` (and templating query) of the dashboard, wherever nested.
fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| dashboard_exprs(x, out)),
        _ => {}
    }
}

/// The alerting rules' expressions, each rule checked for the fields an
/// operator reads.
fn rule_exprs() -> Vec<String> {
    let docs = yaml("prometheus/cutover-rules.yaml");
    let groups = docs[0]["groups"].as_vec().expect("groups");
    let mut out = Vec::new();
    for g in groups {
        for r in g["rules"].as_vec().expect("rules") {
            let alert = r["alert"].as_str().expect("every rule alerts");
            assert!(
                r["labels"]["severity"].as_str().is_some(),
                "{alert}: severity"
            );
            assert!(
                r["annotations"]["summary"].as_str().is_some(),
                "{alert}: summary"
            );
            out.push(r["expr"].as_str().expect("expr").to_string());
        }
    }
    out
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_rules_name_is_exported() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana/cutover-dashboard.json")).expect("dashboard JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard["panels"], &mut exprs);
    dashboard_exprs(&dashboard["templating"], &mut exprs);
    let panels = exprs.len();
    let rules = rule_exprs();
    assert!(panels >= 20 && rules.len() >= 6, "{panels} {}", rules.len());
    exprs.extend(rules);

    // A fleet member: every family it can export is described.
    let (old, new) = support::start_pair();
    let text = Config::new(&old.addr(), &new.addr())
        .route("default", None, Phase::DualWrite)
        .with("[fleet]\nname = \"metrics\"\n")
        .text();
    let member = Served::start(&text, &[]).await;
    let (code, body) =
        cutover::admin::client::request(&member.admin, "GET", "/metrics", None, None)
            .await
            .unwrap();
    assert_eq!(code, 200);
    let families = families(&body);
    let named: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    let missing: Vec<&String> = named.iter().filter(|n| !exported(n, &families)).collect();
    assert!(
        missing.is_empty(),
        "named in deploy/ but not exported: {missing:?}\nexported: {families:?}"
    );
    // What the issue asks the dashboard to show is there.
    for must in [
        "cutover_route_phase",
        "cutover_fleet_epoch",
        "cutover_fleet_applied_epoch",
        "cutover_fleet_members",
        "cutover_route_shadow_agreement",
        "cutover_route_mirror_failed_total",
        "cutover_route_mismatches_total",
        "cutover_route_repaired_total",
        "cutover_route_journal_keys",
        "cutover_request_duration_seconds_bucket",
    ] {
        let shown = exprs
            .iter()
            .any(|e| metric_names(e).iter().any(|n| n == must));
        assert!(shown, "{must} is not on the dashboard or in the rules");
    }
    // The checker itself sees an unknown name.
    assert!(!exported("cutover_route_no_such", &families));
    assert!(
        !exported("cutover_route_reads", &families),
        "a counter's series end in _total"
    );
}

#[tokio::test]
async fn the_kubernetes_manifests_fit_the_config_they_ship() {
    // The kustomization's files exist.
    let k = &yaml("kubernetes/kustomization.yaml")[0];
    for r in k["resources"].as_vec().unwrap() {
        assert!(deploy(&format!("kubernetes/{}", r.as_str().unwrap())).exists());
    }
    let files = &k["configMapGenerator"][0]["files"];
    assert_eq!(files[0].as_str(), Some("cutover.toml"));

    // The config passes `cutover check` (with the token the Secret gives).
    let config = deploy("kubernetes/cutover.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["check", "--config", config.to_str().unwrap()])
        .env("CUTOVER_ADMIN__TOKEN", "from-the-secret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let toml: toml::Table = read("kubernetes/cutover.toml").parse().unwrap();
    assert!(
        toml["fleet"]["name"].as_str().is_some(),
        "the pods form one fleet"
    );
    let port = |section: &str| -> i64 {
        let addr = toml[section]["address"].as_str().unwrap();
        addr.rsplit_once(':').unwrap().1.parse().unwrap()
    };
    let (listen, admin) = (port("listen"), port("admin"));

    let d = &yaml("kubernetes/deployment.yaml")[0];
    let spec = &d["spec"];
    assert_eq!(spec["replicas"].as_i64(), Some(3));
    let pod = &spec["template"];
    let c = &pod["spec"]["containers"][0];
    let container_port = |name: &str| {
        c["ports"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_i64())
            .unwrap()
    };
    assert_eq!(container_port("redis"), listen);
    assert_eq!(container_port("admin"), admin);
    for (probe, path) in [
        ("livenessProbe", "/live"),
        ("readinessProbe", "/ready"),
        ("startupProbe", "/live"),
    ] {
        assert_eq!(c[probe]["httpGet"]["path"].as_str(), Some(path), "{probe}");
        assert_eq!(
            c[probe]["httpGet"]["port"].as_str(),
            Some("admin"),
            "{probe}"
        );
    }
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(admin.to_string().as_str())
    );
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));
    // Termination: the preStop pause, then at most 10 s of draining.
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .unwrap();
    let pause = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_i64()
        .unwrap();
    assert!(
        grace >= pause + 10 + 5,
        "grace {grace}s for a {pause}s pause and 10 s drain"
    );
    // The config is the ConfigMap, mounted where the args read it.
    let args: Vec<&str> = c["args"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(args, ["serve", "--config", "/etc/cutover/cutover.toml"]);

    let services = yaml("kubernetes/service.yaml");
    let targets: Vec<&str> = services
        .iter()
        .flat_map(|s| s["spec"]["ports"].as_vec().unwrap())
        .filter_map(|p| p["targetPort"].as_str())
        .collect();
    assert_eq!(targets, ["redis", "admin"]);
    let pdb = &yaml("kubernetes/pdb.yaml")[0];
    assert_eq!(pdb["spec"]["maxUnavailable"].as_i64(), Some(1));
    let scrape = &yaml("prometheus/scrape-config.yaml")[0];
    assert_eq!(
        scrape["scrape_configs"][0]["job_name"].as_str(),
        Some("cutover")
    );
}
