//! docker-compose.yml and k8s/ stay in step with the code (ARCHITECTURE.md "Local
//! infrastructure"): no Docker engine or cluster exists here, so this checks what can be
//! checked without one. Every file parses; the kustomize base and the local overlay, rendered
//! here, pass schema validation by a pinned offline validator (`kubernetes-validate`, installed
//! by scripts/test); every variable they set is one the code reads and every service gets the
//! ones it needs; ports, probe paths and metrics targets match what the services serve; compose
//! runs a three-node KRaft cluster and both deployments the same Apache Kafka release, with three
//! replicas and two in sync; the topic script creates exactly the topics the code uses, each
//! with the retention the code gives it and the replication the environment asks for.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The Kubernetes version the manifests are validated against.
const KUBERNETES_VERSION: &str = "1.33.0";

/// The Apache Kafka release compose runs and whose tools the Kubernetes topic Job uses.
const KAFKA_IMAGE: &str = "apache/kafka:4.4.0";

/// The replication both deployments ask for, as the services and the topic script read it:
/// three replicas per topic, an `acks=all` write on two of them.
const REPLICATION: [(&str, &str); 2] = [
    ("KAFKA_REPLICATION_FACTOR", "3"),
    ("KAFKA_MIN_INSYNC_REPLICAS", "2"),
];

/// The single-node overlay's replication: its one Kafka broker cannot hold three replicas.
const SINGLE_BROKER_REPLICATION: [(&str, &str); 2] = [
    ("KAFKA_REPLICATION_FACTOR", "1"),
    ("KAFKA_MIN_INSYNC_REPLICAS", "1"),
];

/// The Kafka nodes of docker-compose.yml (node id = position + 1), each broker and controller.
const COMPOSE_KAFKA_NODES: [&str; 3] = ["kafka-1", "kafka-2", "kafka-3"];

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
        r#"(?:var|var_or|number|positive_number|positive_millis|positive_env|millis|Missing|Config)\(\s*"([A-Z][A-Z0-9_]+)""#,
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

fn check_cluster(
    name: &str,
    objects: &[Value],
    read: &BTreeSet<String>,
    replication: [(&str, &str); 2],
) {
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
        for (variable, value) in replication {
            assert_eq!(
                env.get(variable).and_then(Value::as_str),
                Some(value),
                "{name}/{service} {variable}"
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
    let config = find(objects, "ConfigMap", "orderstream-config");
    for (variable, value) in replication {
        assert_eq!(
            config["data"][variable], value,
            "{name}: ConfigMap {variable}"
        );
    }
    let job = find(objects, "Job", "orderstream-topics");
    let script = &job["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"];
    assert!(
        find(objects, "ConfigMap", script.as_str().unwrap())["data"]["create-topics.sh"]
            .is_string()
    );
    let job_container = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        job_container["image"], KAFKA_IMAGE,
        "{name}: the topic Job uses the tools of the Kafka release compose runs"
    );
    let job_env = container_env(objects, job_container);
    for (variable, value) in replication {
        assert_eq!(
            job_env.get(variable).and_then(Value::as_str),
            Some(value),
            "{name}: the topic Job creates topics with the services' {variable}"
        );
    }
    let no_secret_values = objects.iter().all(|o| o["kind"] != "Secret");
    assert!(
        no_secret_values,
        "secrets are referenced, never kept in the repository"
    );
}

#[test]
fn the_kubernetes_base_passes_schema_validation_and_matches_the_code() {
    let objects = render(&root().join("k8s/base"));
    check_cluster("base", &objects, &variables_the_code_reads(), REPLICATION);
}

#[test]
fn the_local_overlay_renders_and_passes_schema_validation_and_matches_the_code() {
    let objects = render(&root().join("k8s/overlays/local"));
    check_cluster(
        "overlay-local",
        &objects,
        &variables_the_code_reads(),
        SINGLE_BROKER_REPLICATION,
    );
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
        assert_eq!(
            env["KAFKA_BROKERS"],
            compose_bootstrap_servers(),
            "compose {service} knows every broker"
        );
        for (variable, value) in REPLICATION {
            assert_eq!(
                env.get(variable),
                Some(&Value::from(value)),
                "compose {service}"
            );
        }
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

/// `kafka-1:9092,kafka-2:9092,kafka-3:9092`: every compose Kafka node's in-network listener.
fn compose_bootstrap_servers() -> String {
    COMPOSE_KAFKA_NODES
        .map(|node| format!("{node}:9092"))
        .join(",")
}

#[test]
fn docker_compose_runs_a_three_node_kraft_cluster_that_keeps_acknowledged_writes_on_two_brokers() {
    let compose = yaml_documents(&root().join("docker-compose.yml")).remove(0);
    let services = compose["services"].as_object().unwrap();
    let voters = COMPOSE_KAFKA_NODES
        .iter()
        .enumerate()
        .map(|(i, node)| format!("{}@{node}:9093", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let cluster_id = &services[COMPOSE_KAFKA_NODES[0]]["environment"]["CLUSTER_ID"];
    assert!(cluster_id.is_string(), "the nodes share a CLUSTER_ID");
    for (i, node) in COMPOSE_KAFKA_NODES.iter().enumerate() {
        assert!(services.contains_key(*node), "compose runs {node}");
        let definition = &services[*node];
        let env = &definition["environment"];
        assert_eq!(definition["image"], KAFKA_IMAGE, "{node}");
        assert_eq!(
            env["KAFKA_PROCESS_ROLES"], "broker,controller",
            "KRaft: {node} is a broker and a controller"
        );
        assert_eq!(env["KAFKA_NODE_ID"], (i + 1).to_string(), "{node}");
        assert_eq!(
            &env["CLUSTER_ID"], cluster_id,
            "{node} joins the one cluster"
        );
        assert_eq!(
            env["KAFKA_CONTROLLER_QUORUM_VOTERS"],
            voters.as_str(),
            "{node}"
        );
        let listeners = env["KAFKA_LISTENERS"].as_str().unwrap();
        assert!(
            listeners.contains("PLAINTEXT://:9092"),
            "{node}: {listeners}"
        );
        assert!(
            listeners.contains("CONTROLLER://:9093"),
            "{node}: {listeners}"
        );
        let advertised = env["KAFKA_ADVERTISED_LISTENERS"].as_str().unwrap();
        assert!(
            advertised.contains(&format!("PLAINTEXT://{node}:9092")),
            "{node} is reached in the network by its name: {advertised}"
        );
        for (setting, value) in [
            ("KAFKA_MIN_INSYNC_REPLICAS", "2"),
            ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "3"),
            ("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "3"),
            ("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "2"),
            ("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false"),
        ] {
            assert_eq!(env[setting], value, "{node} {setting}");
        }
        let health = definition["healthcheck"]["test"].as_array().unwrap();
        assert!(
            health.iter().any(|t| t
                .as_str()
                .is_some_and(|t| t.contains("--bootstrap-server localhost:9092"))),
            "{node} healthcheck: {health:?}"
        );
    }
    let factor: usize = REPLICATION[0].1.parse().unwrap();
    assert!(
        factor <= COMPOSE_KAFKA_NODES.len(),
        "compose runs a broker for every replica"
    );
    // The topic job creates the topics once every node is up, with the services' settings.
    let topics = &services["topics"];
    assert_eq!(topics["image"], KAFKA_IMAGE);
    let env = &topics["environment"];
    assert_eq!(env["KAFKA_BROKERS"], compose_bootstrap_servers());
    for (variable, value) in REPLICATION {
        assert_eq!(env[variable], value, "compose topics {variable}");
    }
    for node in COMPOSE_KAFKA_NODES {
        assert_eq!(
            topics["depends_on"][node]["condition"], "service_healthy",
            "topics waits for {node}"
        );
    }
}

#[test]
fn compose_and_the_kubernetes_topic_job_use_the_same_apache_kafka_release() {
    let compose = yaml_documents(&root().join("docker-compose.yml")).remove(0);
    let kafka_images: Vec<&str> = compose["services"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|service| service["image"].as_str())
        .filter(|image| image.starts_with("apache/kafka"))
        .collect();
    assert_eq!(
        kafka_images.len(),
        COMPOSE_KAFKA_NODES.len() + 1,
        "the nodes and the topics job: {kafka_images:?}"
    );
    for image in &kafka_images {
        assert_eq!(*image, KAFKA_IMAGE);
    }
    let objects = render(&root().join("k8s/base"));
    let job = find(&objects, "Job", "orderstream-topics");
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["image"],
        KAFKA_IMAGE
    );
}

// ---------------------------------------------------------------- the topic script

/// One run of a stand-in Kafka CLI tool: which tool, with which arguments.
#[derive(Debug)]
struct Call {
    tool: String,
    args: Vec<String>,
}

impl Call {
    /// Every value given after `flag`, in order.
    fn values(&self, flag: &str) -> Vec<&str> {
        self.args
            .windows(2)
            .filter(|pair| pair[0] == flag)
            .map(|pair| pair[1].as_str())
            .collect()
    }

    /// The one value given after `flag`.
    fn value(&self, flag: &str) -> &str {
        let values = self.values(flag);
        assert_eq!(values.len(), 1, "{flag} given once: {self:?}");
        values[0]
    }

    fn has(&self, flag: &str) -> bool {
        self.args.iter().any(|arg| arg == flag)
    }
}

/// Runs k8s/base/create-topics.sh with only `env` (and PATH) set, against stand-ins for Kafka's
/// `kafka-topics.sh` and `kafka-configs.sh` that only record how they were called (the script's
/// logic is under test, not the broker). Returns whether it succeeded, its stderr, and the calls
/// in the order made.
fn run_topic_script(name: &str, env: &[(&str, &str)]) -> (bool, String, Vec<Call>) {
    let bin =
        std::env::temp_dir().join(format!("orderstream-topics-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&bin);
    std::fs::create_dir_all(&bin).unwrap();
    let log = bin.join("calls");
    for tool in ["kafka-topics.sh", "kafka-configs.sh"] {
        let path = bin.join(tool);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\n{{ printf %s '{tool}'; printf '\\t%s' \"$@\"; printf '\\n'; }} >>'{}'\n",
                log.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut command = std::process::Command::new("sh");
    command
        .arg(root().join("k8s/base/create-topics.sh"))
        .env_clear()
        .env("KAFKA_BIN", &bin)
        .envs(env.iter().copied());
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    let output = command.output().unwrap();
    let calls: Vec<Call> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let mut fields = line.split('\t').map(str::to_owned);
            Call {
                tool: fields.next().unwrap(),
                args: fields.collect(),
            }
        })
        .collect();
    let _ = std::fs::remove_dir_all(&bin);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        calls,
    )
}

/// Every topic `Topics` names for a deployment: per aggregate kind its events, commands and
/// events dead-letter topic, and the replies topic.
fn topics_the_code_uses(prefix: &str) -> BTreeSet<String> {
    use domain::AggregateKind;
    use platform::topics::Topics;
    let topics = Topics::new(prefix);
    let mut expected = BTreeSet::from([topics.replies()]);
    for kind in AggregateKind::ALL {
        expected.insert(topics.events(kind));
        expected.insert(topics.commands(kind));
        expected.insert(Topics::dead_letters(&topics.events(kind)));
        expected.insert(topics.snapshots(kind));
    }
    expected
}

/// The configs the code creates `topic` with, as `key=value` (retention and cleanup policy).
fn retention_configs(topic: &str) -> Vec<String> {
    platform::topics::Topics::retention(topic)
        .topic_configs()
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect()
}

fn sorted(mut items: Vec<String>) -> Vec<String> {
    items.sort();
    items
}

/// The script's `kafka-topics.sh --create` calls, by topic (each topic created exactly once).
fn creations(calls: &[Call]) -> BTreeMap<&str, (usize, &Call)> {
    let mut creations = BTreeMap::new();
    for (i, call) in calls.iter().enumerate() {
        if call.tool == "kafka-topics.sh" {
            assert!(call.has("--create"), "{call:?}");
            let previous = creations.insert(call.value("--topic"), (i, call));
            assert!(previous.is_none(), "created twice: {call:?}");
        }
    }
    creations
}

#[test]
fn the_topic_script_creates_exactly_the_topics_the_code_uses() {
    let (ok, stderr, calls) = run_topic_script(
        "names",
        &[
            ("KAFKA_BROKERS", "unused:9092"),
            ("KAFKA_TOPIC_PREFIX", "orderstream"),
        ],
    );
    assert!(ok, "{stderr}");
    let created: BTreeSet<String> = creations(&calls)
        .keys()
        .map(|topic| (*topic).to_owned())
        .collect();
    assert_eq!(created, topics_the_code_uses("orderstream"));
}

#[test]
fn the_topic_script_gives_every_topic_the_retention_the_code_sets_and_the_replication_from_the_environment(
) {
    let brokers = "kafka-1:9092,kafka-2:9092,kafka-3:9092";
    let (ok, stderr, calls) = run_topic_script(
        "configs",
        &[
            ("KAFKA_BROKERS", brokers),
            ("KAFKA_TOPIC_PREFIX", "demo"),
            ("KAFKA_PARTITIONS", "12"),
            ("KAFKA_REPLICATION_FACTOR", "3"),
            ("KAFKA_MIN_INSYNC_REPLICAS", "2"),
        ],
    );
    assert!(ok, "{stderr}");
    let creations = creations(&calls);
    let expected = topics_the_code_uses("demo");
    assert_eq!(creations.len(), expected.len(), "{calls:#?}");
    let alterations: Vec<(usize, &Call)> = calls
        .iter()
        .enumerate()
        .filter(|(_, call)| call.tool == "kafka-configs.sh")
        .collect();
    assert_eq!(
        alterations.len(),
        expected.len(),
        "one config update per topic: {calls:#?}"
    );
    for topic in &expected {
        // Created (unless it exists) with the code's retention and the environment's replication.
        let (created_at, create) = creations[topic.as_str()];
        assert!(create.has("--if-not-exists"), "safe to rerun: {create:?}");
        assert_eq!(create.value("--bootstrap-server"), brokers);
        assert_eq!(create.value("--partitions"), "12", "{topic}");
        assert_eq!(create.value("--replication-factor"), "3", "{topic}");
        let mut wanted = retention_configs(topic);
        wanted.push("min.insync.replicas=2".to_owned());
        let given = create
            .values("--config")
            .into_iter()
            .map(str::to_owned)
            .collect();
        assert_eq!(sorted(given), sorted(wanted), "{topic} is created with");
        // Then its retention is set again, which repairs a topic that existed with other configs.
        let altered: Vec<&(usize, &Call)> = alterations
            .iter()
            .filter(|(_, call)| call.values("--entity-name") == [topic.as_str()])
            .collect();
        assert_eq!(altered.len(), 1, "{topic}: {alterations:#?}");
        let (altered_at, alter) = *altered[0];
        assert!(
            altered_at > created_at,
            "{topic} is altered after it is created"
        );
        assert!(alter.has("--alter"), "{alter:?}");
        assert_eq!(alter.value("--entity-type"), "topics");
        assert_eq!(alter.value("--bootstrap-server"), brokers);
        let added = alter
            .value("--add-config")
            .split(',')
            .map(str::to_owned)
            .collect();
        assert_eq!(
            sorted(added),
            sorted(retention_configs(topic)),
            "{topic} gets its retention back"
        );
    }
}

#[test]
fn the_topic_script_defaults_to_one_replica_for_a_single_local_broker() {
    let (ok, stderr, calls) = run_topic_script("defaults", &[("KAFKA_BROKERS", "unused:9092")]);
    assert!(ok, "{stderr}");
    let creations = creations(&calls);
    assert_eq!(
        creations
            .keys()
            .map(|t| (*t).to_owned())
            .collect::<BTreeSet<_>>(),
        topics_the_code_uses("orderstream")
    );
    for (topic, (_, create)) in creations {
        assert_eq!(create.value("--replication-factor"), "1", "{topic}");
        assert_eq!(create.value("--partitions"), "6", "{topic}");
        assert!(
            create.values("--config").contains(&"min.insync.replicas=1"),
            "{topic}: {create:?}"
        );
    }
}

#[test]
fn the_topic_script_refuses_more_in_sync_replicas_than_replicas_and_creates_nothing() {
    let (ok, stderr, calls) = run_topic_script(
        "refuses",
        &[
            ("KAFKA_BROKERS", "unused:9092"),
            ("KAFKA_REPLICATION_FACTOR", "1"),
            ("KAFKA_MIN_INSYNC_REPLICAS", "2"),
        ],
    );
    assert!(!ok, "no acks=all write could succeed on such topics");
    assert!(stderr.contains("KAFKA_MIN_INSYNC_REPLICAS"), "{stderr}");
    assert!(calls.is_empty(), "{calls:?}");
}
