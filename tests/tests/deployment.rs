//! docker-compose.yml and k8s/ stay in step with the code (ARCHITECTURE.md "Local
//! infrastructure"): no Docker engine or cluster exists here, so this checks what can be
//! checked without one. Every file parses; the kustomize base and the local overlay, rendered
//! here, pass schema validation by a pinned offline validator (`kubernetes-validate`, installed
//! by scripts/test); every variable they set is one the code reads and every service gets the
//! ones it needs; ports, probe paths and metrics targets match what the services serve; the
//! topic script creates exactly the topics the code uses.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The Kubernetes version the manifests are validated against.
const KUBERNETES_VERSION: &str = "1.33.0";

/// Each service: its listen-address variable, port, and the variables it cannot run without.
const SERVICES: [(&str, &str, u16, &[&str]); 4] = [
    (
        "command-api",
        "COMMAND_API_ADDR",
        8080,
        &["KAFKA_BROKERS", "AUTH_JWT_SECRET"],
    ),
    (
        "query-api",
        "QUERY_API_ADDR",
        8081,
        &["DATABASE_URL", "AUTH_JWT_SECRET"],
    ),
    (
        "projectors",
        "PROJECTORS_ADDR",
        8082,
        &["DATABASE_URL", "KAFKA_BROKERS"],
    ),
    (
        "saga-orchestrator",
        "SAGA_ORCHESTRATOR_ADDR",
        8083,
        &["KAFKA_BROKERS"],
    ),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            let mut value = serde_norway::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            value.apply_merge().unwrap();
            serde_json::to_value(value).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

/// Every environment variable the services' code reads (by the readers the code uses), plus
/// the OpenTelemetry SDK's own `OTEL_*` and `RUST_LOG` (read by the log filter).
fn variables_the_code_reads() -> BTreeSet<String> {
    let reader = regex::Regex::new(
        r#"(?:var|var_or|number|positive_number|positive_millis|millis|Missing|Config)\(\s*"([A-Z][A-Z0-9_]+)""#,
    )
    .unwrap();
    let mut names = BTreeSet::from([
        "RUST_LOG".to_owned(),
        "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
    ]);
    for crate_dir in [
        "platform",
        "command-api",
        "query-api",
        "projectors",
        "saga-orchestrator",
    ] {
        for file in rust_files(&root().join(crate_dir).join("src")) {
            let text = std::fs::read_to_string(&file).unwrap();
            names.extend(reader.captures_iter(&text).map(|c| c[1].to_owned()));
        }
    }
    names
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

fn known(name: &str, read: &BTreeSet<String>) -> bool {
    read.contains(name) || name.starts_with("OTEL_")
}

// ---------------------------------------------------------------- kustomize, the parts we use

fn kustomization(dir: &Path) -> Value {
    yaml_documents(&dir.join("kustomization.yaml")).remove(0)
}

/// Renders a kustomization: resources (files or directories), namespace, configMapGenerator
/// from files, images and JSON 6902 patches (the subset this repository uses; anything else
/// fails the test rather than being ignored).
fn render(dir: &Path) -> Vec<Value> {
    let k = kustomization(dir);
    for key in k.as_object().unwrap().keys() {
        assert!(
            [
                "apiVersion",
                "kind",
                "namespace",
                "resources",
                "configMapGenerator",
                "generatorOptions",
                "images",
                "patches"
            ]
            .contains(&key.as_str()),
            "{}: kustomization field {key} is not rendered by this test",
            dir.display()
        );
    }
    let mut objects = vec![];
    for resource in k["resources"].as_array().into_iter().flatten() {
        let path = dir.join(resource.as_str().unwrap());
        if path.is_dir() {
            objects.extend(render(&path));
        } else {
            objects.extend(yaml_documents(&path));
        }
    }
    for generator in k["configMapGenerator"].as_array().into_iter().flatten() {
        let mut data = serde_json::Map::new();
        for file in generator["files"].as_array().unwrap() {
            let file = file.as_str().unwrap();
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            data.insert(file.to_owned(), Value::String(text));
        }
        objects.push(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": generator["name"]}, "data": data,
        }));
    }
    if let Some(namespace) = k["namespace"].as_str() {
        for object in &mut objects {
            if object["kind"] != "Namespace" {
                object["metadata"]["namespace"] = Value::String(namespace.to_owned());
            }
        }
    }
    for image in k["images"].as_array().into_iter().flatten() {
        let (name, new_name, tag) = (
            image["name"].as_str().unwrap(),
            image["newName"].as_str().unwrap(),
            image["newTag"].as_str().unwrap(),
        );
        for object in &mut objects {
            for container in containers_mut(object) {
                let current = container["image"].as_str().unwrap().to_owned();
                if current.split(':').next() == Some(name) {
                    container["image"] = Value::String(format!("{new_name}:{tag}"));
                }
            }
        }
    }
    for patch in k["patches"].as_array().into_iter().flatten() {
        let target = &patch["target"];
        let operations: Vec<Value> = yaml_documents_of(patch["patch"].as_str().unwrap());
        let mut matched = 0;
        for object in &mut objects {
            let kind_matches = object["kind"] == target["kind"];
            let name_matches =
                target["name"].is_null() || object["metadata"]["name"] == target["name"];
            if kind_matches && name_matches {
                matched += 1;
                for operation in operations.iter().flat_map(|o| o.as_array().unwrap()) {
                    apply(object, operation);
                }
            }
        }
        assert!(matched > 0, "patch target {target} matches nothing");
    }
    objects
}

fn yaml_documents_of(text: &str) -> Vec<Value> {
    let value: serde_norway::Value = serde_norway::from_str(text).unwrap();
    vec![serde_json::to_value(value).unwrap()]
}

/// A JSON 6902 `replace` or `add` (the only operations used).
fn apply(object: &mut Value, operation: &Value) {
    let op = operation["op"].as_str().unwrap();
    let path = operation["path"].as_str().unwrap();
    let (parent, key) = path.rsplit_once('/').unwrap();
    let parent = object
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("patch path {path} does not exist"));
    match op {
        "replace" => {
            assert!(parent.get(key).is_some(), "replace of missing {path}");
            parent[key] = operation["value"].clone();
        }
        "add" => parent[key] = operation["value"].clone(),
        other => panic!("patch operation {other} is not rendered by this test"),
    }
}

fn containers_mut(object: &mut Value) -> Vec<&mut Value> {
    object
        .pointer_mut("/spec/template/spec/containers")
        .and_then(Value::as_array_mut)
        .map(|c| c.iter_mut().collect())
        .unwrap_or_default()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The pinned validator: `KUBERNETES_VALIDATE` (set by scripts/test) or on the PATH.
fn validator() -> PathBuf {
    let path = std::env::var_os("KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("kubernetes-validate"));
    let works = std::process::Command::new(&path)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        works,
        "kubernetes-validate not found: run scripts/test (it installs the pinned version) or \
         set KUBERNETES_VALIDATE"
    );
    path
}

fn validate_schemas(name: &str, objects: &[Value]) {
    let dir = std::env::temp_dir().join(format!("orderstream-k8s-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = vec![];
    for (i, object) in objects.iter().enumerate() {
        let file = dir.join(format!("{i:02}.yaml"));
        std::fs::write(&file, serde_norway::to_string(object).unwrap()).unwrap();
        files.push(file);
    }
    let output = std::process::Command::new(validator())
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .args(&files)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{name} fails schema validation:\n{report}"
    );
    assert!(!report.contains("ERROR"), "{name}:\n{report}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A container's environment: its `env` plus the ConfigMaps it takes whole (`envFrom`).
fn container_env(objects: &[Value], container: &Value) -> BTreeMap<String, Value> {
    let mut env = BTreeMap::new();
    for source in container["envFrom"].as_array().into_iter().flatten() {
        let name = source["configMapRef"]["name"].as_str().unwrap();
        for (key, value) in find(objects, "ConfigMap", name)["data"]
            .as_object()
            .unwrap()
        {
            env.insert(key.clone(), value.clone());
        }
    }
    for variable in container["env"].as_array().into_iter().flatten() {
        let value = if let Some(v) = variable.get("value") {
            v.clone()
        } else {
            let from = &variable["valueFrom"];
            if let Some(reference) = from.get("configMapKeyRef") {
                let map = find(objects, "ConfigMap", reference["name"].as_str().unwrap());
                let value = map["data"][reference["key"].as_str().unwrap()].clone();
                assert!(!value.is_null(), "{reference} names a missing key");
                value
            } else {
                assert!(from.get("secretKeyRef").is_some(), "{variable}");
                Value::String("<secret>".into())
            }
        };
        env.insert(variable["name"].as_str().unwrap().to_owned(), value);
    }
    env
}

fn check_cluster(name: &str, objects: &[Value], read: &BTreeSet<String>) {
    validate_schemas(name, objects);
    for (service, addr_var, port, required) in SERVICES {
        let deployment = find(objects, "Deployment", service);
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let env = container_env(objects, container);
        for variable in env.keys() {
            assert!(
                known(variable, read),
                "{name}/{service} sets {variable}, which no code reads"
            );
        }
        for variable in required.iter().chain(&[addr_var]) {
            assert!(
                env.contains_key(*variable),
                "{name}/{service} lacks {variable}"
            );
        }
        assert_eq!(
            env[addr_var],
            format!("0.0.0.0:{port}"),
            "{name}/{service} listens on all interfaces"
        );
        assert_eq!(container["ports"][0]["containerPort"], port);
        assert_eq!(container["ports"][0]["name"], "http");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            assert_eq!(
                container[probe]["httpGet"]["port"], "http",
                "{service} {probe}"
            );
        }
        assert!(container["resources"]["requests"]["memory"].is_string());
        assert!(container["resources"]["limits"]["memory"].is_string());
        let command = container["command"][0].as_str().unwrap();
        assert_eq!(command, service, "{service} runs its own binary");
        let svc = find(objects, "Service", service);
        assert_eq!(svc["spec"]["ports"][0]["port"], port);
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
        assert_eq!(
            deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"],
            port.to_string()
        );
        find(objects, "PodDisruptionBudget", service);
    }
    for api in ["command-api", "query-api"] {
        let hpa = find(objects, "HorizontalPodAutoscaler", api);
        assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], api);
    }
    assert!(objects.iter().any(|o| o["kind"] == "NetworkPolicy"));
    let job = find(objects, "Job", "orderstream-topics");
    let script = &job["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"];
    assert!(
        find(objects, "ConfigMap", script.as_str().unwrap())["data"]["create-topics.sh"]
            .is_string()
    );
    let no_secret_values = objects.iter().all(|o| o["kind"] != "Secret");
    assert!(
        no_secret_values,
        "secrets are referenced, never kept in the repository"
    );
}

#[test]
fn the_kubernetes_base_passes_schema_validation_and_matches_the_code() {
    let objects = render(&root().join("k8s/base"));
    check_cluster("base", &objects, &variables_the_code_reads());
}

#[test]
fn the_local_overlay_renders_and_passes_schema_validation_and_matches_the_code() {
    let objects = render(&root().join("k8s/overlays/local"));
    check_cluster("overlay-local", &objects, &variables_the_code_reads());
    let deployment = find(&objects, "Deployment", "command-api");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "orderstream:local"
    );
}

#[test]
fn docker_compose_runs_every_service_with_variables_the_code_reads() {
    let read = variables_the_code_reads();
    let compose = yaml_documents(&root().join("docker-compose.yml")).remove(0);
    let services = compose["services"].as_object().unwrap();
    assert!(services["kafka"]["image"]
        .as_str()
        .unwrap()
        .starts_with("apache/kafka:"));
    assert_eq!(
        services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"], "broker,controller",
        "KRaft"
    );
    for needed in [
        "postgres",
        "topics",
        "otel-collector",
        "jaeger",
        "prometheus",
    ] {
        assert!(services.contains_key(needed), "compose runs {needed}");
    }
    for (service, addr_var, port, required) in SERVICES {
        let definition = &services[service];
        assert_eq!(
            definition["command"][0], service,
            "{service} runs its own binary"
        );
        let env = definition["environment"].as_object().unwrap();
        for variable in env.keys() {
            assert!(
                known(variable, &read),
                "compose {service} sets {variable}, which no code reads"
            );
        }
        for variable in required.iter().chain(&[addr_var]) {
            assert!(
                env.contains_key(*variable),
                "compose {service} lacks {variable}"
            );
        }
        assert_eq!(env[addr_var], format!("0.0.0.0:{port}"));
        assert!(
            env.contains_key("OTEL_EXPORTER_OTLP_ENDPOINT"),
            "{service} exports traces"
        );
        let health = definition["healthcheck"]["test"].as_array().unwrap();
        assert!(
            health
                .iter()
                .any(|t| t == &Value::String(format!("http://localhost:{port}/readyz"))),
            "{service} healthcheck: {health:?}"
        );
        assert_eq!(
            definition["depends_on"]["topics"]["condition"],
            "service_completed_successfully"
        );
    }
    // Prometheus scrapes exactly these services on these ports.
    let prometheus = yaml_documents(&root().join("deploy/prometheus.yml")).remove(0);
    let targets: BTreeSet<String> = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    let expected: BTreeSet<String> = SERVICES
        .iter()
        .map(|(s, _, p, _)| format!("{s}:{p}"))
        .collect();
    assert_eq!(targets, expected);
    yaml_documents(&root().join("deploy/otel-collector.yaml"));
}

#[test]
fn the_topic_script_creates_exactly_the_topics_the_code_uses() {
    use domain::AggregateKind;
    use platform::topics::Topics;
    // Run the script against a stand-in for Kafka's CLI that only prints the topic it is asked
    // to create (the script's logic is under test, not the broker).
    let bin = std::env::temp_dir().join(format!("orderstream-topics-{}", std::process::id()));
    std::fs::create_dir_all(&bin).unwrap();
    let tool = bin.join("kafka-topics.sh");
    std::fs::write(
        &tool,
        "#!/bin/sh\nwhile [ $# -gt 0 ]; do [ \"$1\" = --topic ] && echo \"$2\"; shift; done\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let output = std::process::Command::new("sh")
        .arg(root().join("k8s/base/create-topics.sh"))
        .env("KAFKA_BIN", &bin)
        .env("KAFKA_BROKERS", "unused:9092")
        .env("KAFKA_TOPIC_PREFIX", "orderstream")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let created: BTreeSet<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let topics = Topics::new("orderstream");
    let mut expected = BTreeSet::from([topics.replies()]);
    for kind in AggregateKind::ALL {
        expected.insert(topics.events(kind));
        expected.insert(topics.commands(kind));
        expected.insert(Topics::dead_letters(&topics.events(kind)));
    }
    assert_eq!(created, expected);
    let _ = std::fs::remove_dir_all(&bin);
}
