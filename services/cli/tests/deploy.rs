//! The deployment files under `deploy/` checked against what they deploy and against each
//! other: every config key against `config/default.toml`, the effective configuration of every
//! container through `vidx_config::Config::load` (defaults < the mounted file < its
//! `VIDX__SECTION__KEY` variables, as `vidx run` loads it), the ports, the gRPC health service
//! names of `vidx_server`, the Kafka brokers, topic and group, the workspace's package, binary
//! and features, and the images.
//!
//! Nothing here runs Docker, Helm or Kubernetes. The Helm chart is rendered by [`gotmpl`], a
//! small interpreter of the Go-template subset the chart uses, which refuses anything outside
//! that subset. Where a real `helm` is at hand (`VIDX_HELM=/path/to/helm`, or `helm` on PATH)
//! the chart is rendered by it too, and both renderings must be equal.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::{Mapping, Value};
use vidx_config::{Config, ConfigSources, DEFAULT_TOML};
use vidx_server::service_names;

/// The longest model batch a worker may be running when it gets SIGTERM (a PerceptionLM-1B
/// batch on a GPU); the workers' grace periods must exceed it.
const LONGEST_BATCH_SECS: u64 = 600;

/// Where every vidx container reads its config file.
const CONFIG_MOUNT: &str = "/etc/vidx/vidx.toml";

/// Images the compose file may pull rather than build (repository names).
const PUBLIC_IMAGES: [&str; 3] = [
    "apache/kafka",
    "qdrant/qdrant",
    "otel/opentelemetry-collector-contrib",
];

/// The FFmpeg libraries vidx links (ffmpeg-next's default features).
const FFMPEG_LIBRARIES: [&str; 7] = [
    "avcodec",
    "avformat",
    "avutil",
    "swscale",
    "swresample",
    "avfilter",
    "avdevice",
];

/// Qdrant's gRPC port, which `store.url` must name.
const QDRANT_GRPC_PORT: u16 = 6334;

// ---------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

/// Problems found by one test, reported together: each names the file and the reference.
#[derive(Debug, Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.0.push(message());
        }
    }

    fn add(&mut self, message: String) {
        self.0.push(message);
    }

    fn assert_none(self, what: &str) {
        assert!(
            self.0.is_empty(),
            "{what}: {} problem(s):\n  - {}",
            self.0.len(),
            self.0.join("\n  - ")
        );
    }
}

/// Every YAML document of `text` (merge keys `<<` applied; empty documents dropped).
fn yaml_documents(file: &str, text: &str) -> Vec<Value> {
    let mut documents = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let mut value: Value = serde::Deserialize::deserialize(document)
            .unwrap_or_else(|error| panic!("{file} is not valid YAML: {error}"));
        value
            .apply_merge()
            .unwrap_or_else(|error| panic!("{file}: bad YAML merge key: {error}"));
        if !value.is_null() {
            documents.push(value);
        }
    }
    documents
}

fn yaml_file(relative: &str) -> Value {
    let mut documents = yaml_documents(relative, &read(relative));
    assert_eq!(documents.len(), 1, "{relative}: expected one YAML document");
    documents.remove(0)
}

/// `value` at a path of mapping keys, or `None`.
fn at<'v>(value: &'v Value, path: &[&str]) -> Option<&'v Value> {
    path.iter()
        .try_fold(value, |current, key| current.as_mapping()?.get(*key))
}

fn str_at<'v>(value: &'v Value, path: &[&str]) -> Option<&'v str> {
    at(value, path)?.as_str()
}

fn seq_at<'v>(value: &'v Value, path: &[&str]) -> &'v [Value] {
    at(value, path)
        .and_then(Value::as_sequence)
        .map_or(&[], Vec::as_slice)
}

/// A scalar as text (strings, numbers, booleans), as YAML would print it.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn u64_at(value: &Value, path: &[&str]) -> Option<u64> {
    let found = at(value, path)?;
    found
        .as_u64()
        .or_else(|| found.as_str().and_then(|text| text.parse().ok()))
}

/// The dotted key path of a `VIDX__SECTION__KEY` variable (`VIDX__KAFKA__GROUP_ID` →
/// `kafka.group_id`), as `vidx_config` reads it.
fn env_key_path(name: &str) -> Option<String> {
    let rest = name.strip_prefix(vidx_config::ENV_PREFIX)?;
    Some(
        rest.split("__")
            .map(str::to_ascii_lowercase)
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// The key paths of the schema: leaves of `config/default.toml`, and its free-form tables
/// (`server.blob_options`, `kafka.properties`: empty in the defaults, any key allowed).
#[derive(Debug)]
struct Schema {
    leaves: BTreeSet<String>,
    tables: BTreeSet<String>,
    free_form: BTreeSet<String>,
}

impl Schema {
    fn load() -> Self {
        let defaults: toml::Table =
            toml::from_str(DEFAULT_TOML).expect("config/default.toml parses as TOML");
        let mut schema = Schema {
            leaves: BTreeSet::new(),
            tables: BTreeSet::new(),
            free_form: BTreeSet::new(),
        };
        schema.walk(&defaults, "");
        assert!(
            schema.leaves.contains("server.listen") && schema.leaves.contains("kafka.group_id"),
            "config/default.toml lost server.listen or kafka.group_id"
        );
        schema
    }

    fn walk(&mut self, table: &toml::Table, prefix: &str) {
        for (key, value) in table {
            let path = join_key(prefix, key);
            match value {
                toml::Value::Table(inner) => {
                    if inner.is_empty() {
                        self.free_form.insert(path.clone());
                    }
                    self.tables.insert(path.clone());
                    self.walk(inner, &path);
                }
                _ => {
                    self.leaves.insert(path);
                }
            }
        }
    }

    /// Whether a dotted key path names a setting (or a key of a free-form table).
    fn knows(&self, path: &str) -> bool {
        self.leaves.contains(path)
            || self
                .free_form
                .iter()
                .any(|table| path.starts_with(&format!("{table}.")))
    }

    /// The key paths of a config file that the schema does not have.
    fn unknown_keys(&self, config: &toml::Table) -> Vec<String> {
        let mut unknown = Vec::new();
        self.collect_unknown(config, "", &mut unknown);
        unknown
    }

    fn collect_unknown(&self, table: &toml::Table, prefix: &str, unknown: &mut Vec<String>) {
        for (key, value) in table {
            let path = join_key(prefix, key);
            if self.free_form.contains(&path) || self.knows(&path) {
                continue;
            }
            match value {
                toml::Value::Table(inner) if self.tables.contains(&path) => {
                    self.collect_unknown(inner, &path, unknown)
                }
                _ => unknown.push(path),
            }
        }
    }
}

fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Every key path a config file sets (leaves; free-form tables as one key).
fn set_key_paths(table: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
    for (key, value) in table {
        let path = join_key(prefix, key);
        match value {
            toml::Value::Table(inner) if !inner.is_empty() => set_key_paths(inner, &path, out),
            _ => {
                out.insert(path);
            }
        }
    }
}

/// The configuration `vidx run --config FILE` gets from `file_text` and the container's
/// environment (only `VIDX__*` variables are read).
fn effective_config(file_text: &str, env: &BTreeMap<String, String>) -> Result<Config, String> {
    let file = tempfile::NamedTempFile::new().map_err(|error| error.to_string())?;
    std::fs::write(file.path(), file_text).map_err(|error| error.to_string())?;
    Config::load(&ConfigSources {
        file: Some(file.path().to_path_buf()),
        env: env.clone(),
        overrides: Vec::new(),
    })
    .map_err(|error| error.to_string())
}

fn port_of(address: &str) -> Option<u16> {
    address
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|socket| socket.port())
}

/// `host:port` → (host, port).
fn host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok()?))
}

/// `http://host:port[/…]` → (host, port).
fn url_host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.split_once("://")?.1;
    host_port(rest.split('/').next()?)
}

/// The gRPC health service a role reports on.
fn role_service(role: &str) -> Option<&'static str> {
    match role {
        "ingest" => Some(service_names::INGEST),
        "worker" => Some(service_names::WORKER),
        "query" => Some(service_names::SEARCH),
        _ => None,
    }
}

/// A Go/compose duration (`660s`, `11m`, `1m30s`) in seconds.
fn duration_secs(text: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut number = String::new();
    let mut chars = text.chars().peekable();
    while let Some(character) = chars.next() {
        if character.is_ascii_digit() {
            number.push(character);
            continue;
        }
        let value: u64 = number.parse().ok()?;
        number.clear();
        let factor = match character {
            'h' => 3600,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                0
            }
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        total += value * factor;
    }
    number.is_empty().then_some(total)
}

/// The value `auto.offset.reset` of the workers' consumer (services/bus/src/kafka.rs).
fn worker_offset_reset() -> String {
    let source = read("services/bus/src/kafka.rs");
    let marker = "\"auto.offset.reset\", \"";
    let start = source
        .find(marker)
        .expect("services/bus/src/kafka.rs no longer sets auto.offset.reset")
        + marker.len();
    source[start..]
        .split('"')
        .next()
        .expect("a quoted auto.offset.reset value")
        .to_string()
}

// ---------------------------------------------------------------------------------------
// Every YAML file
// ---------------------------------------------------------------------------------------

fn files_under(directory: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(directory)
        .unwrap_or_else(|error| panic!("cannot list {}: {error}", directory.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn every_yaml_file_under_deploy_parses() {
    let root = repo_root();
    let mut files = Vec::new();
    files_under(&root.join("deploy"), &mut files);
    let mut parsed = 0;
    for path in files {
        let relative = path
            .strip_prefix(&root)
            .expect("under the repository")
            .display()
            .to_string();
        let is_yaml = relative.ends_with(".yaml") || relative.ends_with(".yml");
        // Helm templates are Go templates, YAML only once rendered (the chart tests below).
        if !is_yaml || relative.contains("/templates/") {
            continue;
        }
        let documents = yaml_documents(&relative, &read(&relative));
        assert!(!documents.is_empty(), "{relative} holds no YAML document");
        parsed += 1;
    }
    // docker-compose.yml, otel-collector.yaml, Chart.yaml, values.yaml.
    assert!(parsed >= 4, "only {parsed} YAML files found under deploy/");
}

// ---------------------------------------------------------------------------------------
// docker compose
// ---------------------------------------------------------------------------------------

const COMPOSE_DIR: &str = "deploy/compose";
const COMPOSE_FILE: &str = "deploy/compose/docker-compose.yml";
const COMPOSE_GPU_FILE: &str = "deploy/compose/gpu.yml";
const COLLECTOR_FILE: &str = "deploy/compose/otel-collector.yaml";

/// Compose's `${NAME:-default}` / `${NAME}` with nothing set (deterministic: the defaults).
fn interpolate(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            break;
        };
        let inner = &rest[start + 2..start + end];
        if let Some((_, default)) = inner.split_once(":-") {
            out.push_str(default);
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

/// One vidx service of the compose file, as the checks need it.
#[derive(Debug)]
struct ComposeNode {
    name: String,
    roles: Vec<String>,
    config: Config,
    env: BTreeMap<String, String>,
    /// Mount target → source (a named volume, or a path relative to deploy/compose).
    mounts: BTreeMap<String, String>,
    dockerfile: String,
    optional: bool,
}

fn compose_env(service: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    match at(service, &["environment"]) {
        Some(Value::Mapping(mapping)) => {
            for (key, value) in mapping {
                if let (Some(key), Some(value)) = (key.as_str(), scalar_text(value)) {
                    env.insert(key.to_string(), interpolate(&value));
                }
            }
        }
        Some(Value::Sequence(items)) => {
            for item in items.iter().filter_map(Value::as_str) {
                if let Some((key, value)) = item.split_once('=') {
                    env.insert(key.to_string(), interpolate(value));
                }
            }
        }
        _ => {}
    }
    env
}

fn compose_mounts(service: &Value) -> BTreeMap<String, String> {
    let mut mounts = BTreeMap::new();
    for volume in seq_at(service, &["volumes"]) {
        if let Some(short) = volume.as_str() {
            // `source:target[:mode]`, once `${VAR:-default}` is resolved.
            let short = interpolate(short);
            let parts: Vec<&str> = short.split(':').collect();
            if parts.len() >= 2 {
                mounts.insert(parts[1].to_string(), parts[0].to_string());
            }
        } else if let (Some(source), Some(target)) =
            (str_at(volume, &["source"]), str_at(volume, &["target"]))
        {
            mounts.insert(target.to_string(), interpolate(source));
        }
    }
    mounts
}

/// The mount of `path`: the longest mount target that is `path` or above it.
fn mount_of<'m>(mounts: &'m BTreeMap<String, String>, path: &str) -> Option<(&'m str, &'m str)> {
    mounts
        .iter()
        .filter(|(target, _)| {
            path == target.as_str()
                || path.starts_with(&format!("{}/", target.trim_end_matches('/')))
        })
        .max_by_key(|(target, _)| target.len())
        .map(|(target, source)| (target.as_str(), source.as_str()))
}

fn command_words(service: &Value) -> Vec<String> {
    match at(service, &["command"]) {
        Some(Value::Sequence(words)) => words.iter().filter_map(scalar_text).collect(),
        Some(Value::String(line)) => line.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

/// `vidx run ROLE... --config FILE` → (roles, FILE).
fn run_command(words: &[String]) -> Option<(Vec<String>, Option<String>)> {
    if words.first().map(String::as_str) != Some("run") {
        return None;
    }
    let mut roles = Vec::new();
    let mut config = None;
    let mut index = 1;
    while index < words.len() {
        match words[index].as_str() {
            "--config" => {
                config = words.get(index + 1).cloned();
                index += 2;
            }
            flag if flag.starts_with("--config=") => {
                config = Some(flag["--config=".len()..].to_string());
                index += 1;
            }
            flag if flag.starts_with("--") => index += 2,
            role => {
                roles.push(role.to_string());
                index += 1;
            }
        }
    }
    Some((roles, config))
}

/// The `-flag=value` arguments of a healthcheck test.
fn probe_flag(test: &[String], flag: &str) -> Option<String> {
    test.iter()
        .flat_map(|word| word.split_whitespace())
        .find_map(|word| word.strip_prefix(&format!("-{flag}=")))
        .map(str::to_string)
}

/// Container ports a service publishes (`[ip:]published:target[/proto]` or long form).
fn published_targets(service: &Value) -> Vec<u16> {
    let mut targets = Vec::new();
    for port in seq_at(service, &["ports"]) {
        if let Some(short) = scalar_text(port) {
            let without_proto = short.split('/').next().unwrap_or_default().to_string();
            if let Some(target) = without_proto
                .rsplit(':')
                .next()
                .and_then(|t| t.parse().ok())
            {
                targets.push(target);
            }
        } else if let Some(target) = u64_at(port, &["target"]) {
            targets.push(target as u16);
        }
    }
    targets
}

fn exposed_ports(service: &Value) -> Vec<u16> {
    let mut ports = published_targets(service);
    for port in seq_at(service, &["expose"]) {
        if let Some(port) = scalar_text(port).and_then(|text| text.parse().ok()) {
            ports.push(port);
        }
    }
    ports
}

fn depends_healthy(service: &Value, on: &str) -> bool {
    match at(service, &["depends_on"]) {
        Some(Value::Mapping(mapping)) => mapping.get(on).is_some_and(|dependency| {
            str_at(dependency, &["condition"]) == Some("service_healthy")
        }),
        _ => false,
    }
}

fn compose_image_repository(image: &str) -> &str {
    // `registry/repo:tag` → `registry/repo` (a registry port has no `/` after its `:`).
    match image.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => repository,
        _ => image,
    }
}

#[test]
fn compose_stack_references_agree() {
    check_compose_stack(&yaml_file(COMPOSE_FILE), COMPOSE_FILE, 2);
}

/// The GPU override replaces the CPU workers (one consumer group, one model set: a GPU
/// worker beside caption-less CPU workers would leave some segments without captions), and
/// its workers caption in batches.
#[test]
fn the_gpu_compose_override_makes_every_worker_a_batched_gpu_captioner() {
    let mut stack = yaml_file(COMPOSE_FILE);
    gotmpl::merge_values(&mut stack, &yaml_file(COMPOSE_GPU_FILE));
    let label = format!("{COMPOSE_FILE} + {COMPOSE_GPU_FILE}");
    // One GPU worker by default (one per GPU of the host).
    let nodes = check_compose_stack(&stack, &label, 1);
    let workers: Vec<&ComposeNode> = nodes
        .iter()
        .filter(|node| node.roles.iter().any(|role| role == "worker"))
        .collect();
    assert!(!workers.is_empty(), "{label}: no worker");
    for worker in workers {
        let models = &worker.config.models;
        assert!(
            models.device.starts_with("cuda") && !models.captioner.is_empty(),
            "{label}: worker `{}` is not a GPU captioner (device `{}`, captioner `{}`)",
            worker.name,
            models.device,
            models.captioner
        );
        assert_eq!(
            worker.dockerfile, "deploy/docker/Dockerfile.cuda",
            "{label}: worker `{}`",
            worker.name
        );
    }
}

/// Every check of one compose stack (a file, or a file with its overrides merged); the vidx
/// nodes it found.
fn check_compose_stack(compose: &Value, file: &str, min_workers: u64) -> Vec<ComposeNode> {
    let mut problems = Problems::default();
    let schema = Schema::load();
    let compose_dir = repo_root().join(COMPOSE_DIR);
    let services = at(compose, &["services"])
        .and_then(Value::as_mapping)
        .unwrap_or_else(|| panic!("{file}: no services"));
    let declared_volumes: BTreeSet<String> = at(compose, &["volumes"])
        .and_then(Value::as_mapping)
        .map(|volumes| {
            volumes
                .keys()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let vidx_toml_text = read(&format!("{COMPOSE_DIR}/vidx.toml"));
    let vidx_toml: toml::Table = toml::from_str(&vidx_toml_text)
        .unwrap_or_else(|error| panic!("{COMPOSE_DIR}/vidx.toml is not TOML: {error}"));
    for key in schema.unknown_keys(&vidx_toml) {
        problems.add(format!(
            "{COMPOSE_DIR}/vidx.toml: key `{key}` does not exist in config/default.toml"
        ));
    }

    let mut nodes = Vec::new();
    let mut collector_service = None;
    for (name, service) in services {
        let name = name.as_str().unwrap_or_default().to_string();
        let image = str_at(service, &["image"]);
        let build = at(service, &["build"]);
        let mut dockerfile = None;
        if let Some(build) = build {
            let context = str_at(build, &["context"]).unwrap_or(".");
            let context_dir = compose_dir.join(context);
            problems.check(
                context_dir.join("Cargo.toml").is_file()
                    && read_to_string_or_empty(&context_dir.join("Cargo.toml"))
                        .contains("[workspace]"),
                || format!("{file}: service `{name}` builds from `{context}`, which is not the workspace root"),
            );
            let built_with = str_at(build, &["dockerfile"]).unwrap_or("Dockerfile");
            problems.check(context_dir.join(built_with).is_file(), || {
                format!("{file}: service `{name}` builds with `{built_with}`, which does not exist")
            });
            dockerfile = Some(built_with.to_string());
        } else if let Some(image) = image {
            let repository = compose_image_repository(image);
            problems.check(PUBLIC_IMAGES.contains(&repository), || {
                format!("{file}: service `{name}` pulls `{image}`, which is neither built here nor a known public image ({PUBLIC_IMAGES:?})")
            });
            let tag = image.strip_prefix(repository).unwrap_or_default();
            problems.check(!tag.is_empty() && tag != ":latest", || {
                format!("{file}: service `{name}` pulls `{image}` without a pinned tag")
            });
            if repository == "otel/opentelemetry-collector-contrib" {
                collector_service = Some((name.clone(), service));
            }
        } else {
            problems.add(format!(
                "{file}: service `{name}` has neither image nor build"
            ));
        }

        let Some(dockerfile) = dockerfile else {
            continue;
        };
        // A vidx service.
        let words = command_words(service);
        let Some((roles, config_path)) = run_command(&words) else {
            problems.add(format!(
                "{file}: service `{name}` builds vidx but its command {words:?} is not `run ROLE... --config FILE`"
            ));
            continue;
        };
        for role in &roles {
            problems.check(role_service(role).is_some(), || {
                format!("{file}: service `{name}`: `{role}` is not a role of `vidx run`")
            });
        }
        problems.check(config_path.as_deref() == Some(CONFIG_MOUNT), || {
            format!(
                "{file}: service `{name}` reads its config from {config_path:?}, not {CONFIG_MOUNT}"
            )
        });
        let mounts = compose_mounts(service);
        problems.check(
            mounts.get(CONFIG_MOUNT).map(String::as_str) == Some("./vidx.toml"),
            || format!("{file}: service `{name}` does not mount ./vidx.toml at {CONFIG_MOUNT}"),
        );
        for source in mounts.values() {
            let is_named = !source.starts_with('.') && !source.starts_with('/');
            problems.check(!is_named || declared_volumes.contains(source), || {
                format!("{file}: service `{name}` mounts volume `{source}`, which is not declared under volumes")
            });
        }
        let env = compose_env(service);
        for variable in env.keys() {
            if let Some(path) = env_key_path(variable) {
                problems.check(schema.knows(&path), || {
                    format!("{file}: service `{name}` sets {variable}, but `{path}` does not exist in config/default.toml")
                });
            }
        }
        match effective_config(&vidx_toml_text, &env) {
            Ok(config) => nodes.push(ComposeNode {
                name: name.clone(),
                roles,
                config,
                env,
                mounts,
                dockerfile,
                optional: at(service, &["profiles"]).is_some(),
            }),
            Err(error) => problems.add(format!(
                "{file}: service `{name}`: {COMPOSE_DIR}/vidx.toml with its environment does not load: {error}"
            )),
        }
    }

    let collector_grpc_port = check_collector(&mut problems, collector_service, &nodes, file);

    for node in &nodes {
        let service = &services[node.name.as_str()];
        let name = &node.name;
        let config = &node.config;
        let listen_port = port_of(&config.server.listen);
        let metrics_port = port_of(&config.server.metrics_listen);
        problems.check(
            config.server.listen.starts_with("0.0.0.0:") && listen_port.is_some(),
            || format!("{file}: service `{name}`: server.listen `{}` is not reachable from other containers", config.server.listen),
        );
        problems.check(metrics_port.is_some(), || {
            format!("{file}: service `{name}`: server.metrics_listen is not set, the collector scrapes it")
        });
        for target in published_targets(service) {
            problems.check(Some(target) == listen_port || Some(target) == metrics_port, || {
                format!("{file}: service `{name}` publishes container port {target}, but vidx listens on {listen_port:?} and {metrics_port:?}")
            });
        }

        // Healthcheck: the right service of the right port.
        let test: Vec<String> = seq_at(service, &["healthcheck", "test"])
            .iter()
            .filter_map(scalar_text)
            .collect();
        let probed_port = probe_flag(&test, "addr").and_then(|address| host_port(&address));
        problems.check(probed_port.as_ref().map(|(_, port)| *port) == listen_port, || {
            format!("{file}: service `{name}`: the healthcheck probes {probed_port:?}, vidx listens on port {listen_port:?}")
        });
        let probed_service = probe_flag(&test, "service").unwrap_or_default();
        let expected: Vec<&str> = node
            .roles
            .iter()
            .filter_map(|role| role_service(role))
            .collect();
        problems.check(expected.contains(&probed_service.as_str()), || {
            format!("{file}: service `{name}`: the healthcheck asks for `{probed_service}`, which is not one of {expected:?} (vidx_server::service_names)")
        });

        let has = |role: &str| node.roles.iter().any(|r| r == role);
        if has("ingest") || has("worker") {
            for broker in config.kafka.brokers.split(',') {
                let Some((host, port)) = host_port(broker.trim()) else {
                    problems.add(format!(
                        "{file}: service `{name}`: kafka.brokers `{broker}` is not host:port"
                    ));
                    continue;
                };
                let advertised = services
                    .get(host.as_str())
                    .map(compose_env)
                    .and_then(|env| env.get("KAFKA_ADVERTISED_LISTENERS").cloned())
                    .unwrap_or_default();
                problems.check(advertised.contains(&format!("://{host}:{port}")), || {
                    format!("{file}: service `{name}`: kafka.brokers names {host}:{port}, but no service `{host}` advertises that listener")
                });
                problems.check(depends_healthy(service, &host), || {
                    format!("{file}: service `{name}` does not wait for `{host}` to be healthy")
                });
                problems.check(
                    services
                        .get(host.as_str())
                        .is_some_and(|broker| at(broker, &["healthcheck"]).is_some()),
                    || format!("{file}: service `{host}` has no healthcheck for depends_on"),
                );
            }
        }
        if has("worker") || has("query") {
            problems.check(config.store.kind == "qdrant", || {
                format!("{file}: service `{name}`: store.kind is `{}`; separate worker and query containers need a Qdrant server", config.store.kind)
            });
            match url_host_port(&config.store.url) {
                Some((host, port)) => {
                    problems.check(port == QDRANT_GRPC_PORT, || {
                        format!("{file}: service `{name}`: store.url `{}` is not Qdrant's gRPC port {QDRANT_GRPC_PORT}", config.store.url)
                    });
                    problems.check(
                        services.get(host.as_str()).is_some_and(|qdrant| exposed_ports(qdrant).contains(&port)),
                        || format!("{file}: service `{name}`: store.url names `{host}:{port}`, which no service exposes"),
                    );
                    problems.check(depends_healthy(service, &host), || {
                        format!("{file}: service `{name}` does not wait for `{host}` to be healthy")
                    });
                }
                None => problems.add(format!(
                    "{file}: service `{name}`: store.url `{}` has no host:port",
                    config.store.url
                )),
            }
            let hf_home = node.env.get("HF_HOME").cloned().unwrap_or_default();
            problems.check(node.mounts.contains_key(&hf_home), || {
                format!("{file}: service `{name}`: HF_HOME `{hf_home}` is not a volume (models would be fetched on every start)")
            });
        }
        if has("ingest") {
            for root in &config.server.ingest_roots {
                problems.check(mount_of(&node.mounts, root).is_some(), || {
                    format!("{file}: service `{name}`: server.ingest_roots `{root}` is not mounted")
                });
            }
        }
        if has("worker") {
            let grace = str_at(service, &["stop_grace_period"]).and_then(duration_secs);
            let batch_grace = config.pipeline.shutdown_grace_ms.div_ceil(1000);
            problems.check(grace.is_some_and(|secs| secs > LONGEST_BATCH_SECS && secs > batch_grace), || {
                format!("{file}: service `{name}`: stop_grace_period {grace:?} s does not exceed the longest batch ({LONGEST_BATCH_SECS} s) and pipeline.shutdown_grace_ms ({batch_grace} s)")
            });
        }
        let is_cuda_image = node.dockerfile.ends_with("Dockerfile.cuda");
        let wants_cuda = config.models.device.starts_with("cuda");
        problems.check(is_cuda_image == wants_cuda, || {
            format!(
                "{file}: service `{name}` builds `{}` but models.device is `{}`",
                node.dockerfile, config.models.device
            )
        });
        if wants_cuda {
            let devices = seq_at(service, &["deploy", "resources", "reservations", "devices"]);
            problems.check(
                devices
                    .iter()
                    .any(|device| str_at(device, &["driver"]) == Some("nvidia")),
                || format!("{file}: service `{name}` runs on cuda but reserves no nvidia device"),
            );
        }

        // OpenTelemetry: the collector's OTLP gRPC receiver.
        match node
            .env
            .get("OTEL_EXPORTER_OTLP_ENDPOINT")
            .and_then(|url| url_host_port(url))
        {
            Some((host, port)) => {
                problems.check(
                    collector_service_name(services).as_deref() == Some(host.as_str()),
                    || format!("{file}: service `{name}`: OTEL_EXPORTER_OTLP_ENDPOINT names `{host}`, not the collector service"),
                );
                problems.check(Some(port) == collector_grpc_port, || {
                    format!("{file}: service `{name}`: OTEL_EXPORTER_OTLP_ENDPOINT port {port} is not the collector's OTLP gRPC port {collector_grpc_port:?}")
                });
            }
            None => problems.add(format!(
                "{file}: service `{name}` has no OTEL_EXPORTER_OTLP_ENDPOINT"
            )),
        }
        problems.check(node.env.contains_key("OTEL_SERVICE_NAME"), || {
            format!("{file}: service `{name}` has no OTEL_SERVICE_NAME")
        });
    }

    // Blobs: ingest and every worker reach server.blob_store through the same volume.
    let blob_volumes: BTreeSet<(String, String)> = nodes
        .iter()
        .filter(|node| {
            node.roles
                .iter()
                .any(|role| role == "ingest" || role == "worker")
        })
        .map(|node| {
            let blob_store = node.config.server.blob_store.clone();
            let volume = mount_of(&node.mounts, &blob_store)
                .map(|(_, source)| source.to_string())
                .unwrap_or_else(|| format!("<not mounted in {}>", node.name));
            (blob_store, volume)
        })
        .collect();
    problems.check(blob_volumes.len() == 1, || {
        format!("{file}: ingest and workers do not share one blob store volume: {blob_volumes:?}")
    });

    // The stack: one ingest, `min_workers` workers, one query (profiles aside).
    let count = |role: &str| -> u64 {
        nodes
            .iter()
            .filter(|node| !node.optional && node.roles.iter().any(|r| r == role))
            .map(|node| u64_at(&services[node.name.as_str()], &["deploy", "replicas"]).unwrap_or(1))
            .sum()
    };
    problems.check(count("ingest") >= 1 && count("query") >= 1 && count("worker") >= min_workers, || {
        format!(
            "{file}: expected ingest, {min_workers} worker(s) and query; found {} ingest, {} worker, {} query",
            count("ingest"),
            count("worker"),
            count("query")
        )
    });
    // Every vidx node speaks the same Kafka and Qdrant.
    let clusters: BTreeSet<(String, String, String, String)> = nodes
        .iter()
        .map(|node| {
            let config = &node.config;
            (
                config.kafka.brokers.clone(),
                config.kafka.topic.clone(),
                config.kafka.group_id.clone(),
                config.store.url.clone(),
            )
        })
        .collect();
    problems.check(clusters.len() == 1, || {
        format!("{file}: the vidx services disagree on Kafka or Qdrant: {clusters:?}")
    });
    // Workers of one consumer group share the segments: they must run the same models, or
    // the segments some of them take miss captions or vectors the others produce.
    let mut groups: BTreeMap<String, Vec<&ComposeNode>> = BTreeMap::new();
    for node in nodes
        .iter()
        .filter(|node| node.roles.iter().any(|role| role == "worker"))
    {
        groups
            .entry(node.config.kafka.group_id.clone())
            .or_default()
            .push(node);
    }
    for (group, workers) in &groups {
        let models: BTreeSet<(String, String, String)> = workers
            .iter()
            .map(|node| {
                let models = &node.config.models;
                (
                    models.captioner.clone(),
                    models.visual_embedder.clone(),
                    models.text_embedder.clone(),
                )
            })
            .collect();
        problems.check(models.len() == 1, || {
            format!(
                "{file}: the workers of consumer group `{group}` run different models: {models:?}"
            )
        });
    }
    // A GPU worker captions in batches (one segment at a time leaves most of a GPU idle).
    for node in nodes
        .iter()
        .filter(|node| node.config.models.device.starts_with("cuda"))
    {
        problems.check(node.config.pipeline.max_batch > 1, || {
            format!(
                "{file}: GPU service `{}` has pipeline.max_batch = {}",
                node.name, node.config.pipeline.max_batch
            )
        });
    }
    problems.assert_none(file);
    nodes
}

fn read_to_string_or_empty(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn collector_service_name(services: &Mapping) -> Option<String> {
    services.iter().find_map(|(name, service)| {
        let image = str_at(service, &["image"])?;
        (compose_image_repository(image) == "otel/opentelemetry-collector-contrib")
            .then(|| name.as_str().map(str::to_string))
            .flatten()
    })
}

/// Checks the collector service and its config; returns its OTLP gRPC port.
fn check_collector(
    problems: &mut Problems,
    collector: Option<(String, &Value)>,
    nodes: &[ComposeNode],
    file: &str,
) -> Option<u16> {
    let Some((name, service)) = collector else {
        problems.add(format!("{file}: no OpenTelemetry collector service"));
        return None;
    };
    let mounts = compose_mounts(service);
    let config_flag = command_words(service)
        .iter()
        .find_map(|word| word.strip_prefix("--config=").map(str::to_string));
    let mounted = config_flag.as_ref().and_then(|path| mounts.get(path));
    problems.check(mounted.map(String::as_str) == Some("./otel-collector.yaml"), || {
        format!("{file}: service `{name}` reads --config={config_flag:?}, which is not ./otel-collector.yaml mounted")
    });
    let collector = yaml_file(COLLECTOR_FILE);
    let grpc_port = str_at(
        &collector,
        &["receivers", "otlp", "protocols", "grpc", "endpoint"],
    )
    .and_then(host_port)
    .map(|(_, port)| port);
    problems.check(grpc_port.is_some(), || {
        format!("{COLLECTOR_FILE}: no OTLP gRPC receiver endpoint")
    });
    if let Some(port) = grpc_port {
        problems.check(exposed_ports(service).contains(&port), || {
            format!("{file}: service `{name}` does not expose the OTLP gRPC port {port}")
        });
    }
    // The pipelines use only defined components.
    let pipelines = at(&collector, &["service", "pipelines"])
        .and_then(Value::as_mapping)
        .cloned()
        .unwrap_or_default();
    problems.check(!pipelines.is_empty(), || {
        format!("{COLLECTOR_FILE}: no pipelines")
    });
    for (pipeline_name, pipeline) in &pipelines {
        let pipeline_name = pipeline_name.as_str().unwrap_or_default();
        for kind in ["receivers", "processors", "exporters"] {
            for component in seq_at(pipeline, &[kind]).iter().filter_map(Value::as_str) {
                problems.check(at(&collector, &[kind, component]).is_some(), || {
                    format!("{COLLECTOR_FILE}: pipeline `{pipeline_name}` uses {kind} `{component}`, which is not defined")
                });
            }
        }
    }
    // The Prometheus scrape reaches every (non-optional) vidx service on its metrics port.
    let mut scraped: BTreeSet<String> = BTreeSet::new();
    for scrape in seq_at(
        &collector,
        &["receivers", "prometheus", "config", "scrape_configs"],
    ) {
        for discovery in seq_at(scrape, &["dns_sd_configs"]) {
            let port = u64_at(discovery, &["port"]).map(|port| port as u16);
            for host in seq_at(discovery, &["names"])
                .iter()
                .filter_map(Value::as_str)
            {
                match nodes.iter().find(|node| node.name == host) {
                    Some(node) => {
                        let metrics_port = port_of(&node.config.server.metrics_listen);
                        problems.check(port == metrics_port, || {
                            format!("{COLLECTOR_FILE}: scrapes `{host}` on port {port:?}, its server.metrics_listen port is {metrics_port:?}")
                        });
                        scraped.insert(host.to_string());
                    }
                    None => problems.add(format!(
                        "{COLLECTOR_FILE}: scrapes `{host}`, which is not a vidx service of {file}"
                    )),
                }
            }
        }
    }
    for node in nodes.iter().filter(|node| !node.optional) {
        problems.check(scraped.contains(&node.name), || {
            format!(
                "{COLLECTOR_FILE}: does not scrape the metrics of `{}`",
                node.name
            )
        });
    }
    grpc_port
}

// ---------------------------------------------------------------------------------------
// Dockerfiles
// ---------------------------------------------------------------------------------------

/// A Dockerfile as instructions (continuation lines joined, comments dropped), per stage.
fn dockerfile_stages(text: &str) -> Vec<Vec<String>> {
    let mut stages: Vec<Vec<String>> = vec![Vec::new()];
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.starts_with('#') || trimmed.is_empty()) {
            continue;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let instruction = std::mem::take(&mut current);
        if instruction.to_ascii_uppercase().starts_with("FROM ") {
            stages.push(Vec::new());
        }
        stages.last_mut().expect("a stage").push(instruction);
    }
    stages
}

fn instruction_args<'i>(instruction: &'i str, keyword: &str) -> Option<&'i str> {
    let (head, rest) = instruction.split_once(char::is_whitespace)?;
    head.eq_ignore_ascii_case(keyword).then_some(rest.trim())
}

/// The packages of the `apt-get install` commands of a stage.
fn apt_packages(stage: &[String]) -> BTreeSet<String> {
    let mut packages = BTreeSet::new();
    for instruction in stage {
        for command in instruction.split("&&") {
            if let Some((_, rest)) = command.split_once("apt-get install") {
                packages.extend(
                    rest.split_whitespace()
                        .filter(|word| !word.starts_with('-'))
                        .map(str::to_string),
                );
            }
        }
    }
    packages
}

/// The Debian packages scripts/setup.sh installs for building (its `packages=(…)` list).
fn setup_packages() -> Vec<String> {
    let script = read("scripts/setup.sh");
    let start = script
        .find("packages=(")
        .expect("scripts/setup.sh lists packages=(…)")
        + "packages=(".len();
    let end = start + script[start..].find(')').expect("the end of packages=(…)");
    script[start..end]
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn dockerfiles_build_the_vidx_binary_and_expose_its_ports() {
    let mut problems = Problems::default();
    let cli_manifest: toml::Table =
        toml::from_str(&read("services/cli/Cargo.toml")).expect("services/cli/Cargo.toml parses");
    let package = cli_manifest["package"]["name"]
        .as_str()
        .expect("a package name");
    let binaries: Vec<String> = cli_manifest
        .get("bin")
        .and_then(toml::Value::as_array)
        .map(|bins| {
            bins.iter()
                .filter_map(|bin| bin.get("name")?.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let features: BTreeSet<String> = cli_manifest
        .get("features")
        .and_then(toml::Value::as_table)
        .map(|features| features.keys().cloned().collect())
        .unwrap_or_default();
    let workspace: toml::Table = toml::from_str(&read("Cargo.toml")).expect("Cargo.toml parses");
    let rust_version = workspace["workspace"]["package"]["rust-version"]
        .as_str()
        .expect("workspace rust-version")
        .to_string();
    // The ports every deployment uses: the compose config's, which the Helm chart shares.
    let compose_config = effective_config(&read("deploy/compose/vidx.toml"), &BTreeMap::new())
        .expect("deploy/compose/vidx.toml loads");
    let listen_port = port_of(&compose_config.server.listen).expect("a listen port");
    let metrics_port = port_of(&compose_config.server.metrics_listen).expect("a metrics port");
    let build_packages = setup_packages();

    for (file, cuda) in [
        ("deploy/docker/Dockerfile", false),
        ("deploy/docker/Dockerfile.cuda", true),
    ] {
        let text = read(file);
        let stages = dockerfile_stages(&text);
        let all: Vec<&String> = stages.iter().flatten().collect();
        let runtime = stages.last().expect("a final stage");

        // The build: the vidx-cli package, its vidx binary, the cuda feature for GPUs.
        let build_line = all
            .iter()
            .find(|instruction| instruction.contains("cargo build"))
            .map(|instruction| instruction.as_str())
            .unwrap_or_default();
        problems.check(build_line.contains("--release"), || {
            format!("{file}: no `cargo build --release`")
        });
        problems.check(build_line.contains(&format!("-p {package}")), || {
            format!("{file}: `cargo build` does not build the package `{package}` (services/cli/Cargo.toml)")
        });
        for binary in &binaries {
            problems.check(
                build_line.contains(&format!("target/release/{binary}")),
                || {
                    format!(
                        "{file}: does not take the binary target/release/{binary} out of the build"
                    )
                },
            );
        }
        let words: Vec<&str> = build_line.split_whitespace().collect();
        let built_features: Vec<&str> = words
            .windows(2)
            .filter(|pair| pair[0] == "--features")
            .flat_map(|pair| pair[1].split(','))
            .collect();
        for feature in &built_features {
            problems.check(features.contains(*feature), || {
                format!("{file}: builds with feature `{feature}`, which services/cli/Cargo.toml does not have")
            });
        }
        if cuda {
            problems.check(built_features.contains(&"cuda"), || {
                format!("{file}: does not build with `--features cuda`")
            });
            problems.check(text.contains("CUDA_COMPUTE_CAP"), || {
                format!("{file}: no CUDA_COMPUTE_CAP: candle's kernels cannot detect a GPU during docker build")
            });
        } else {
            problems.check(built_features.is_empty(), || {
                format!("{file}: the CPU image builds with features {built_features:?}")
            });
        }
        // The Rust toolchain: the workspace's rust-version.
        problems.check(
            text.contains(&format!("ARG RUST_VERSION={rust_version}\n")),
            || format!("{file}: ARG RUST_VERSION is not the workspace rust-version {rust_version}"),
        );

        // What the build installs covers scripts/setup.sh (the ffmpeg CLI aside: the demo and
        // the tests; what only the tests need is in scripts/setup-test.sh).
        let builder = stages
            .iter()
            .find(|stage| {
                stage
                    .iter()
                    .any(|instruction| instruction.contains("cargo build"))
            })
            .expect("a build stage");
        let installed = apt_packages(builder);
        for needed in build_packages.iter().filter(|package| *package != "ffmpeg") {
            problems.check(installed.contains(needed), || {
                format!(
                    "{file}: the build stage does not install `{needed}` (scripts/setup.sh does)"
                )
            });
        }
        // The runtime has every FFmpeg library vidx links, and CA roots.
        let runtime_packages = apt_packages(runtime);
        for library in FFMPEG_LIBRARIES {
            let prefix = format!("lib{library}");
            problems.check(
                runtime_packages.iter().any(|package| {
                    package.strip_prefix(&prefix).is_some_and(|soname| {
                        !soname.is_empty() && soname.chars().all(|c| c.is_ascii_digit())
                    })
                }),
                || format!("{file}: the runtime stage installs no lib{library}<soname> package"),
            );
        }
        problems.check(runtime_packages.contains("ca-certificates"), || {
            format!("{file}: the runtime stage does not install ca-certificates")
        });

        // EXPOSE, ENTRYPOINT, USER and HEALTHCHECK of the final stage.
        let exposed: BTreeSet<u16> = runtime
            .iter()
            .filter_map(|instruction| instruction_args(instruction, "EXPOSE"))
            .flat_map(|ports| ports.split_whitespace())
            .filter_map(|port| port.split('/').next()?.parse().ok())
            .collect();
        problems.check(exposed == BTreeSet::from([listen_port, metrics_port]), || {
            format!("{file}: EXPOSE {exposed:?}, but server.listen / server.metrics_listen use {listen_port} and {metrics_port}")
        });
        let entrypoint = runtime
            .iter()
            .find_map(|instruction| instruction_args(instruction, "ENTRYPOINT"));
        problems.check(
            binaries
                .iter()
                .any(|binary| entrypoint == Some(&format!("[\"{binary}\"]"))),
            || format!("{file}: ENTRYPOINT {entrypoint:?} is not the vidx binary {binaries:?}"),
        );
        let user = runtime
            .iter()
            .find_map(|instruction| instruction_args(instruction, "USER"))
            .unwrap_or("root");
        problems.check(!user.starts_with("root") && !user.starts_with('0'), || {
            format!("{file}: the image runs as `{user}`, not a non-root user")
        });
        let healthcheck = runtime
            .iter()
            .find_map(|instruction| instruction_args(instruction, "HEALTHCHECK"))
            .unwrap_or_default();
        let probed = healthcheck
            .split(['"', ' ', ','])
            .find_map(|word| word.strip_prefix("-addr="))
            .and_then(host_port)
            .map(|(_, port)| port);
        problems.check(probed == Some(listen_port), || {
            format!("{file}: HEALTHCHECK probes port {probed:?}, vidx listens on {listen_port}")
        });
        // Fresh named volumes inherit the owner of these directories (deploy/compose).
        for directory in [
            "/var/lib/vidx",
            "/var/cache/huggingface",
            "/shared/blobs",
            "/shared/videos",
        ] {
            problems.check(text.contains(directory), || {
                format!("{file}: does not create {directory}")
            });
        }

        // The BuildKit ignore file of this Dockerfile keeps target/ out of the context.
        let ignore_file = format!("{file}.dockerignore");
        let ignore = std::fs::read_to_string(repo_root().join(&ignore_file)).unwrap_or_default();
        problems.check(
            ignore
                .lines()
                .any(|line| matches!(line.trim(), "target" | "target/" | "/target" | "/target/")),
            || format!("{ignore_file}: missing, or does not exclude target/"),
        );
    }
    problems.assert_none("deploy/docker");
}

// ---------------------------------------------------------------------------------------
// Helm
// ---------------------------------------------------------------------------------------

const CHART: &str = "deploy/helm/vidx";

/// The `.Values.a.b` paths a template names.
fn values_references(source: &str) -> Vec<String> {
    let mut references = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find(".Values.") {
        let tail = &rest[start + ".Values.".len()..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(tail.len());
        references.push(tail[..end].trim_end_matches('.').to_string());
        rest = &tail[end..];
    }
    references
}

fn chart_files() -> Vec<(String, String)> {
    let directory = repo_root().join(CHART).join("templates");
    let mut files = Vec::new();
    files_under(&directory, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = format!(
                "templates/{}",
                path.file_name().expect("a file name").to_string_lossy()
            );
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
            (name, text)
        })
        .collect()
}

fn chart_values() -> Value {
    yaml_file(&format!("{CHART}/values.yaml"))
}

#[test]
fn helm_templates_name_only_existing_values() {
    let mut problems = Problems::default();
    let values = chart_values();
    let chart = yaml_file(&format!("{CHART}/Chart.yaml"));
    problems.check(str_at(&chart, &["apiVersion"]) == Some("v2"), || {
        format!("{CHART}/Chart.yaml: apiVersion is not v2")
    });
    problems.check(str_at(&chart, &["name"]) == Some("vidx"), || {
        format!("{CHART}/Chart.yaml: name is not vidx (the chart directory's name)")
    });
    for key in ["version", "appVersion"] {
        problems.check(at(&chart, &[key]).and_then(scalar_text).is_some(), || {
            format!("{CHART}/Chart.yaml: no {key}")
        });
    }
    let mut seen = 0;
    for (file, text) in chart_files() {
        for reference in values_references(&text) {
            seen += 1;
            let path: Vec<&str> = reference.split('.').collect();
            problems.check(at(&values, &path).is_some(), || {
                format!("{CHART}/{file}: .Values.{reference} does not exist in {CHART}/values.yaml")
            });
        }
    }
    assert!(
        seen > 20,
        "only {seen} .Values references found in {CHART}/templates"
    );
    problems.assert_none(CHART);
}

#[test]
fn helm_config_has_only_schema_keys_and_leaves_chart_keys_to_the_chart() {
    let mut problems = Problems::default();
    let schema = Schema::load();
    let values = chart_values();
    let config_text = str_at(&values, &["config"]).expect("values.yaml has a `config` string");
    let config: toml::Table = toml::from_str(config_text)
        .unwrap_or_else(|error| panic!("{CHART}/values.yaml: `config` is not TOML: {error}"));
    for key in schema.unknown_keys(&config) {
        problems.add(format!(
            "{CHART}/values.yaml: config key `{key}` does not exist in config/default.toml"
        ));
    }
    // Keys the chart sets through VIDX__* variables (from ports, kafka, worker, secrets)
    // must not also be set in the file, where they would silently lose.
    let mut set = BTreeSet::new();
    set_key_paths(&config, "", &mut set);
    let rendered = render_chart(&values, &Value::Null).expect("the chart renders");
    // Keys overridden in every vidx container (a key only some roles override, such as the
    // workers' models.device, is a deliberate per-role setting), and the Secret's keys.
    let mut overridden: Option<BTreeSet<String>> = None;
    let mut from_secret = BTreeSet::new();
    for document in &rendered {
        if str_at(document, &["kind"]) == Some("Deployment") {
            let container = seq_at(pod_spec(document).unwrap_or(&Value::Null), &["containers"])
                .first()
                .cloned()
                .unwrap_or(Value::Null);
            let keys: BTreeSet<String> = seq_at(&container, &["env"])
                .iter()
                .filter_map(|variable| str_at(variable, &["name"]).and_then(env_key_path))
                .collect();
            overridden = Some(match overridden {
                Some(previous) => previous.intersection(&keys).cloned().collect(),
                None => keys,
            });
        }
        for key in at(document, &["stringData"])
            .and_then(Value::as_mapping)
            .map(|data| data.keys().filter_map(Value::as_str).collect::<Vec<_>>())
            .unwrap_or_default()
        {
            if let Some(path) = env_key_path(key) {
                from_secret.insert(path);
            }
        }
    }
    let mut overridden = overridden.expect("the chart renders Deployments");
    overridden.extend(from_secret);
    assert!(
        overridden.contains("kafka.topic"),
        "the chart sets no VIDX__KAFKA__TOPIC"
    );
    for key in set.intersection(&overridden) {
        problems.add(format!(
            "{CHART}/values.yaml: config sets `{key}`, which the chart overrides with a VIDX__ variable from other values"
        ));
    }
    problems.assert_none(CHART);
}

/// Render the chart with values.yaml and `overrides` (merged over it).
fn render_chart(values: &Value, overrides: &Value) -> Result<Vec<Value>, String> {
    let chart = yaml_file(&format!("{CHART}/Chart.yaml"));
    let mut merged = values.clone();
    gotmpl::merge_values(&mut merged, overrides);
    let mut templates = gotmpl::Templates::default();
    let files = chart_files();
    for (name, text) in &files {
        templates.add(name, text)?;
    }
    let root = gotmpl::helm_root(&chart, merged, RELEASE);
    let mut documents = Vec::new();
    for (name, _) in &files {
        let basename = name.rsplit('/').next().unwrap_or_default();
        if basename.starts_with('_') {
            continue;
        }
        let output = templates.render(name, &root)?;
        if name.ends_with("NOTES.txt") {
            continue;
        }
        documents.extend(yaml_documents(
            &format!("{CHART}/{name} (rendered)"),
            &output,
        ));
    }
    Ok(documents)
}

const RELEASE: &str = "vidx";

/// Render with a real `helm template`, when one is at hand.
fn helm_binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("VIDX_HELM") {
        return Some(PathBuf::from(path));
    }
    Command::new("helm")
        .arg("version")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|_| PathBuf::from("helm"))
}

fn render_with_helm(helm: &Path, overrides: &Value) -> Result<Vec<Value>, String> {
    let values_file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .map_err(|error| error.to_string())?;
    let overrides = if overrides.is_null() {
        Value::Mapping(Mapping::new())
    } else {
        overrides.clone()
    };
    std::fs::write(
        values_file.path(),
        serde_norway::to_string(&overrides).map_err(|error| error.to_string())?,
    )
    .map_err(|error| error.to_string())?;
    let output = Command::new(helm)
        .args(["template", RELEASE])
        .arg(repo_root().join(CHART))
        .arg("-f")
        .arg(values_file.path())
        .output()
        .map_err(|error| format!("running {}: {error}", helm.display()))?;
    if !output.status.success() {
        return Err(format!(
            "helm template failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(yaml_documents(
        "helm template output",
        &String::from_utf8_lossy(&output.stdout),
    ))
}

fn object_key(document: &Value) -> (String, String) {
    (
        str_at(document, &["kind"]).unwrap_or("?").to_string(),
        str_at(document, &["metadata", "name"])
            .unwrap_or("?")
            .to_string(),
    )
}

/// The pod spec of a Deployment.
fn pod_spec(document: &Value) -> Option<&Value> {
    at(document, &["spec", "template", "spec"])
}

/// The scenarios the chart is rendered in: its defaults, and everything switched the
/// other way (CPU workers without KEDA, an existing Secret, object storage for blobs).
fn scenarios(values: &Value) -> Vec<(&'static str, Value)> {
    let config = str_at(values, &["config"]).expect("a config string");
    let object_storage_config = config
        .replace(
            "blob_store = \"/shared/blobs\"",
            "blob_store = \"s3://vidx-segments/test\"",
        )
        .replace("ingest_roots = [\"/shared/videos\"]", "ingest_roots = []");
    assert_ne!(
        object_storage_config, config,
        "{CHART}/values.yaml: config no longer has the blob_store and ingest_roots lines the second scenario replaces"
    );
    let mut overrides: Value = serde_norway::from_str(
        r#"
fullnameOverride: vidx-alt
secrets:
  existingSecret: vidx-existing
sharedVolume:
  enabled: false
modelCache:
  existingClaim: hf-cache
otel:
  endpoint: http://otel-collector.observability:4317
worker:
  gpu:
    enabled: false
  keda:
    enabled: false
  extraEnv:
    - name: VIDX__MODELS__MAX_NEW_TOKENS
      value: "256"
"#,
    )
    .expect("the override values parse");
    if let Value::Mapping(mapping) = &mut overrides {
        mapping.insert("config".into(), Value::String(object_storage_config));
    }
    vec![("defaults", Value::Null), ("cpu-no-keda", overrides)]
}

#[test]
fn helm_chart_renders_consistent_manifests() {
    let values = chart_values();
    let helm = helm_binary();
    if helm.is_none() {
        eprintln!(
            "no helm binary (VIDX_HELM or helm on PATH): the chart is rendered by the test's own Go-template subset only"
        );
    }
    for (scenario, overrides) in scenarios(&values) {
        let mut problems = Problems::default();
        let documents = render_chart(&values, &overrides)
            .unwrap_or_else(|error| panic!("{CHART} ({scenario}): {error}"));
        let mut merged = values.clone();
        gotmpl::merge_values(&mut merged, &overrides);
        check_manifests(&mut problems, scenario, &merged, &documents);
        if let Some(helm) = &helm {
            match render_with_helm(helm, &overrides) {
                Ok(by_helm) => compare_renderings(&mut problems, scenario, &documents, &by_helm),
                Err(error) => problems.add(format!("{CHART} ({scenario}): {error}")),
            }
        }
        problems.assert_none(&format!("{CHART} ({scenario})"));
    }
}

fn compare_renderings(problems: &mut Problems, scenario: &str, ours: &[Value], helms: &[Value]) {
    let index = |documents: &[Value]| -> BTreeMap<(String, String), Value> {
        documents
            .iter()
            .map(|document| (object_key(document), document.clone()))
            .collect()
    };
    let (ours, helms) = (index(ours), index(helms));
    let our_keys: BTreeSet<_> = ours.keys().collect();
    let helm_keys: BTreeSet<_> = helms.keys().collect();
    problems.check(our_keys == helm_keys, || {
        format!(
            "{CHART} ({scenario}): helm renders {helm_keys:?}, the test's renderer {our_keys:?}"
        )
    });
    for (key, document) in &ours {
        if let Some(by_helm) = helms.get(key)
            && by_helm != document
        {
            problems.add(format!(
                "{CHART} ({scenario}): {key:?} differs between helm and the test's renderer:\n--- helm\n{}\n--- test\n{}",
                serde_norway::to_string(by_helm).unwrap_or_default(),
                serde_norway::to_string(document).unwrap_or_default()
            ));
        }
    }
}

fn env_values(container: &Value) -> BTreeMap<String, String> {
    seq_at(container, &["env"])
        .iter()
        .filter_map(|variable| {
            Some((
                str_at(variable, &["name"])?.to_string(),
                at(variable, &["value"]).and_then(scalar_text)?,
            ))
        })
        .collect()
}

fn mount_paths(container: &Value) -> BTreeMap<String, String> {
    seq_at(container, &["volumeMounts"])
        .iter()
        .filter_map(|mount| {
            Some((
                str_at(mount, &["mountPath"])?.to_string(),
                str_at(mount, &["name"])?.to_string(),
            ))
        })
        .collect()
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let (Some(selector), Some(labels)) = (selector.as_mapping(), labels.as_mapping()) else {
        return false;
    };
    !selector.is_empty()
        && selector
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
}

/// What the checks learn about one vidx Deployment.
#[derive(Debug)]
struct Node {
    name: String,
    config: Config,
    pod_labels: Value,
    container_ports: BTreeMap<String, u16>,
    claim_of_mount: BTreeMap<String, String>,
}

fn check_manifests(problems: &mut Problems, scenario: &str, values: &Value, documents: &[Value]) {
    let schema = Schema::load();
    let context = format!("{CHART} ({scenario})");
    let mut seen = BTreeSet::new();
    for document in documents {
        let key = object_key(document);
        problems.check(
            str_at(document, &["apiVersion"]).is_some() && key.0 != "?" && key.1 != "?",
            || {
                format!(
                    "{context}: an object without apiVersion, kind or metadata.name: {document:?}"
                )
            },
        );
        problems.check(seen.insert(key.clone()), || {
            format!("{context}: {key:?} rendered twice")
        });
        problems.check(key.1.len() <= 63, || {
            format!("{context}: {key:?}: name longer than 63 characters")
        });
    }
    let of_kind = |kind: &str| -> Vec<&Value> {
        documents
            .iter()
            .filter(|document| str_at(document, &["kind"]) == Some(kind))
            .collect()
    };
    let config_maps = of_kind("ConfigMap");
    let Some(config_map) = config_maps.first() else {
        problems.add(format!("{context}: no ConfigMap"));
        return;
    };
    let config_map_name = str_at(config_map, &["metadata", "name"]).unwrap_or_default();
    let Some(config_text) = str_at(config_map, &["data", "vidx.toml"]) else {
        problems.add(format!(
            "{context}: ConfigMap {config_map_name} has no vidx.toml"
        ));
        return;
    };
    match toml::from_str::<toml::Table>(config_text) {
        Ok(table) => {
            for key in schema.unknown_keys(&table) {
                problems.add(format!("{context}: ConfigMap {config_map_name}: key `{key}` does not exist in config/default.toml"));
            }
        }
        Err(error) => problems.add(format!(
            "{context}: ConfigMap {config_map_name}: vidx.toml is not TOML: {error}"
        )),
    }

    // The Secret the pods load, and its VIDX__ keys.
    let existing_secret = str_at(values, &["secrets", "existingSecret"]).unwrap_or_default();
    let secrets = of_kind("Secret");
    let secret_name = if existing_secret.is_empty() {
        problems.check(secrets.len() == 1, || {
            format!("{context}: expected one Secret, found {}", secrets.len())
        });
        secrets
            .first()
            .and_then(|secret| str_at(secret, &["metadata", "name"]))
            .unwrap_or_default()
            .to_string()
    } else {
        problems.check(secrets.is_empty(), || {
            format!("{context}: secrets.existingSecret is set, yet the chart renders a Secret")
        });
        existing_secret.to_string()
    };
    let mut secret_env = BTreeMap::new();
    for secret in &secrets {
        if let Some(data) = at(secret, &["stringData"]).and_then(Value::as_mapping) {
            for (key, value) in data {
                let (Some(key), Some(value)) = (key.as_str(), scalar_text(value)) else {
                    continue;
                };
                if let Some(path) = env_key_path(key) {
                    problems.check(schema.knows(&path), || {
                        format!("{context}: Secret key {key}: `{path}` does not exist in config/default.toml")
                    });
                }
                secret_env.insert(key.to_string(), value);
            }
        }
    }
    let claims: BTreeSet<String> = of_kind("PersistentVolumeClaim")
        .iter()
        .filter_map(|claim| str_at(claim, &["metadata", "name"]).map(str::to_string))
        .collect();

    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    for deployment in of_kind("Deployment") {
        let name = str_at(deployment, &["metadata", "name"])
            .unwrap_or_default()
            .to_string();
        let pod_labels = at(deployment, &["spec", "template", "metadata", "labels"])
            .cloned()
            .unwrap_or(Value::Null);
        let Some(role) = str_at(&pod_labels, &["app.kubernetes.io/component"]).map(str::to_string)
        else {
            problems.add(format!(
                "{context}: Deployment {name} has no app.kubernetes.io/component label"
            ));
            continue;
        };
        let where_ = format!("{context}: Deployment {name}");
        problems.check(
            labels_match(
                at(deployment, &["spec", "selector", "matchLabels"]).unwrap_or(&Value::Null),
                &pod_labels,
            ),
            || format!("{where_}: spec.selector.matchLabels does not select its own pods"),
        );
        let Some(spec) = pod_spec(deployment) else {
            problems.add(format!("{where_}: no pod spec"));
            continue;
        };
        let Some(container) = seq_at(spec, &["containers"]).first() else {
            problems.add(format!("{where_}: no container"));
            continue;
        };
        // The command: `vidx run ROLE --config /etc/vidx/vidx.toml` (ENTRYPOINT is vidx).
        let args: Vec<String> = seq_at(container, &["args"])
            .iter()
            .filter_map(scalar_text)
            .collect();
        let expected_args = ["run", role.as_str(), "--config", CONFIG_MOUNT];
        problems.check(args == expected_args, || {
            format!("{where_}: args {args:?}, expected {expected_args:?}")
        });
        problems.check(at(container, &["command"]).is_none(), || {
            format!("{where_}: overrides the image's ENTRYPOINT (vidx) with a command")
        });
        // Volumes: every mount has a volume; the config volume is the ConfigMap.
        let volumes: BTreeMap<String, &Value> = seq_at(spec, &["volumes"])
            .iter()
            .filter_map(|volume| Some((str_at(volume, &["name"])?.to_string(), volume)))
            .collect();
        let mounts = mount_paths(container);
        for init in seq_at(spec, &["initContainers"]) {
            for (path, volume) in mount_paths(init) {
                problems.check(volumes.contains_key(&volume), || {
                    format!("{where_}: an init container mounts {path} from volume `{volume}`, which is not defined")
                });
            }
        }
        for (path, volume) in &mounts {
            problems.check(volumes.contains_key(volume), || {
                format!("{where_}: mounts {path} from volume `{volume}`, which is not defined")
            });
        }
        let config_dir = CONFIG_MOUNT
            .rsplit_once('/')
            .map(|(dir, _)| dir)
            .unwrap_or_default();
        let config_file = CONFIG_MOUNT.rsplit('/').next().unwrap_or_default();
        let config_volume = mounts
            .get(config_dir)
            .and_then(|volume| volumes.get(volume));
        let config_volume_ok = config_volume.is_some_and(|volume| {
            str_at(volume, &["configMap", "name"]) == Some(config_map_name)
                && seq_at(volume, &["configMap", "items"]).iter().all(|item| {
                    str_at(item, &["key"]) == Some("vidx.toml")
                        && str_at(item, &["path"]) == Some(config_file)
                })
        });
        problems.check(config_volume_ok, || {
            format!("{where_}: {CONFIG_MOUNT} is not the vidx.toml of ConfigMap {config_map_name}")
        });
        let mut claim_of_mount = BTreeMap::new();
        for (path, volume) in &mounts {
            if let Some(claim) = volumes
                .get(volume)
                .and_then(|v| str_at(v, &["persistentVolumeClaim", "claimName"]))
            {
                claim_of_mount.insert(path.clone(), claim.to_string());
            }
        }
        for volume in volumes.values() {
            if let Some(claim) = str_at(volume, &["persistentVolumeClaim", "claimName"]) {
                let existing = [
                    str_at(values, &["sharedVolume", "existingClaim"]),
                    str_at(values, &["modelCache", "existingClaim"]),
                ];
                problems.check(claims.contains(claim) || existing.contains(&Some(claim)), || {
                    format!("{where_}: claims `{claim}`, which the chart neither renders nor was given as an existing claim")
                });
            }
        }
        // The Secret.
        let secret_refs: Vec<&str> = seq_at(container, &["envFrom"])
            .iter()
            .filter_map(|source| str_at(source, &["secretRef", "name"]))
            .collect();
        problems.check(secret_refs == [secret_name.as_str()], || {
            format!("{where_}: envFrom {secret_refs:?}, expected the Secret {secret_name}")
        });
        // The effective configuration of this container.
        let container_env = env_values(container);
        for variable in seq_at(container, &["env"])
            .iter()
            .filter_map(|v| str_at(v, &["name"]))
        {
            if let Some(path) = env_key_path(variable) {
                problems.check(schema.knows(&path), || {
                    format!(
                        "{where_}: env {variable}: `{path}` does not exist in config/default.toml"
                    )
                });
            }
        }
        let mut env = secret_env.clone();
        env.extend(container_env.clone());
        let config = match effective_config(config_text, &env) {
            Ok(config) => config,
            Err(error) => {
                problems.add(format!(
                    "{where_}: the config with the container's environment does not load: {error}"
                ));
                continue;
            }
        };
        // Ports and probes.
        let container_ports: BTreeMap<String, u16> = seq_at(container, &["ports"])
            .iter()
            .filter_map(|port| {
                Some((
                    str_at(port, &["name"])?.to_string(),
                    u64_at(port, &["containerPort"])? as u16,
                ))
            })
            .collect();
        let listen_port = port_of(&config.server.listen);
        let metrics_port = port_of(&config.server.metrics_listen);
        problems.check(config.server.listen.starts_with("0.0.0.0:"), || {
            format!(
                "{where_}: server.listen `{}` is not reachable from other pods",
                config.server.listen
            )
        });
        problems.check(container_ports.get("grpc").copied() == listen_port, || {
            format!(
                "{where_}: containerPort grpc {:?}, server.listen port {listen_port:?}",
                container_ports.get("grpc")
            )
        });
        problems.check(container_ports.get("metrics").copied() == metrics_port && metrics_port.is_some(), || {
            format!("{where_}: containerPort metrics {:?}, server.metrics_listen port {metrics_port:?}", container_ports.get("metrics"))
        });
        let annotated_port = str_at(
            deployment,
            &[
                "spec",
                "template",
                "metadata",
                "annotations",
                "prometheus.io/port",
            ],
        )
        .and_then(|port| port.parse().ok());
        problems.check(annotated_port == metrics_port, || {
            format!("{where_}: prometheus.io/port {annotated_port:?}, server.metrics_listen port {metrics_port:?}")
        });
        let expected_service = role_service(&role);
        problems.check(expected_service.is_some(), || {
            format!("{where_}: `{role}` is not a role of `vidx run`")
        });
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            let port = u64_at(container, &[probe, "grpc", "port"]).map(|port| port as u16);
            let service = str_at(container, &[probe, "grpc", "service"]);
            problems.check(port.is_some() && port == listen_port, || {
                format!("{where_}: {probe} grpc.port {port:?}, server.listen port {listen_port:?}")
            });
            problems.check(service.is_some() && service == expected_service, || {
                format!("{where_}: {probe} asks for gRPC health service {service:?}, the {role} role reports on {expected_service:?} (vidx_server::service_names)")
            });
        }
        // A read-only root: the data dir and HF_HOME are volumes.
        let read_only = at(container, &["securityContext", "readOnlyRootFilesystem"])
            == Some(&Value::Bool(true));
        if read_only {
            for (what, path) in [
                ("general.data_dir", config.general.data_dir.clone()),
                ("/tmp", "/tmp".to_string()),
            ] {
                problems.check(mounts.contains_key(&path), || {
                    format!(
                        "{where_}: {what} {path} is not a volume on a read-only root filesystem"
                    )
                });
            }
        }
        if role == "worker" || role == "query" {
            let hf_home = container_env.get("HF_HOME").cloned().unwrap_or_default();
            problems.check(mounts.contains_key(&hf_home), || {
                format!("{where_}: HF_HOME `{hf_home}` is not a volume")
            });
        }
        if role == "ingest" {
            for root in &config.server.ingest_roots {
                problems.check(
                    mounts
                        .keys()
                        .any(|path| root.starts_with(path.as_str()) && path != "/"),
                    || format!("{where_}: server.ingest_roots `{root}` is not on a volume"),
                );
            }
        }
        problems.check(container_env.contains_key("OTEL_SERVICE_NAME"), || {
            format!("{where_}: no OTEL_SERVICE_NAME")
        });
        let otel_endpoint = str_at(values, &["otel", "endpoint"]).unwrap_or_default();
        problems.check(
            container_env
                .get("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(String::as_str)
                .unwrap_or_default()
                == otel_endpoint,
            || {
                format!(
                    "{where_}: OTEL_EXPORTER_OTLP_ENDPOINT is not otel.endpoint `{otel_endpoint}`"
                )
            },
        );

        if role == "worker" {
            check_worker(problems, &where_, values, deployment, container, &config);
        }
        nodes.insert(
            role.clone(),
            Node {
                name,
                config,
                pod_labels,
                container_ports,
                claim_of_mount,
            },
        );
    }
    for role in ["ingest", "worker", "query"] {
        problems.check(nodes.contains_key(role), || {
            format!("{context}: no {role} Deployment")
        });
    }
    let (Some(ingest), Some(worker), Some(query)) =
        (nodes.get("ingest"), nodes.get("worker"), nodes.get("query"))
    else {
        return;
    };
    // One cluster: the same Kafka and Qdrant; query and workers embed with the same models.
    for other in [ingest, query] {
        let (a, b) = (&worker.config, &other.config);
        problems.check(
            (
                &a.kafka.brokers,
                &a.kafka.topic,
                &a.kafka.group_id,
                &a.store.url,
                &a.store.collection,
            ) == (
                &b.kafka.brokers,
                &b.kafka.topic,
                &b.kafka.group_id,
                &b.store.url,
                &b.store.collection,
            ),
            || {
                format!(
                    "{context}: {} and {} disagree on Kafka or Qdrant",
                    worker.name, other.name
                )
            },
        );
    }
    problems.check(
        (&worker.config.models.text_embedder, &worker.config.models.visual_embedder)
            == (&query.config.models.text_embedder, &query.config.models.visual_embedder),
        || format!("{context}: the workers and the query service use different embedders: their vectors would not match"),
    );
    problems.check(worker.config.store.kind == "qdrant", || {
        format!(
            "{context}: store.kind is `{}`: separate worker and query pods need a Qdrant server",
            worker.config.store.kind
        )
    });
    // Blobs: a local blob_store must be one claim shared by ingest and the workers.
    let blob_store = &worker.config.server.blob_store;
    if !blob_store.contains("://") {
        let claim = |node: &Node| {
            node.claim_of_mount
                .iter()
                .filter(|(path, _)| blob_store.starts_with(path.as_str()))
                .max_by_key(|(path, _)| path.len())
                .map(|(_, claim)| claim.clone())
        };
        problems.check(claim(ingest).is_some() && claim(ingest) == claim(worker), || {
            format!("{context}: server.blob_store `{blob_store}` is not on one claim shared by ingest and the workers")
        });
    }
    // Services select their Deployment's pods and reach its ports.
    for service in of_kind("Service") {
        let name = str_at(service, &["metadata", "name"]).unwrap_or_default();
        let selector = at(service, &["spec", "selector"]).unwrap_or(&Value::Null);
        let Some(node) = nodes
            .values()
            .find(|node| labels_match(selector, &node.pod_labels))
        else {
            problems.add(format!(
                "{context}: Service {name} selects no vidx Deployment's pods"
            ));
            continue;
        };
        for port in seq_at(service, &["spec", "ports"]) {
            let target = at(port, &["targetPort"])
                .and_then(scalar_text)
                .unwrap_or_default();
            let known = node.container_ports.contains_key(&target)
                || node
                    .container_ports
                    .values()
                    .any(|number| number.to_string() == target);
            problems.check(known, || {
                format!(
                    "{context}: Service {name} targets port `{target}`, which {} does not have",
                    node.name
                )
            });
        }
    }
    for role in ["ingest", "query"] {
        let node = &nodes[role];
        problems.check(
            of_kind("Service").iter().any(|service| {
                labels_match(
                    at(service, &["spec", "selector"]).unwrap_or(&Value::Null),
                    &node.pod_labels,
                )
            }),
            || format!("{context}: no Service for {}", node.name),
        );
    }
    check_keda(
        problems,
        &context,
        values,
        &of_kind("ScaledObject"),
        documents,
        worker,
    );
}

fn check_worker(
    problems: &mut Problems,
    where_: &str,
    values: &Value,
    deployment: &Value,
    container: &Value,
    config: &Config,
) {
    let spec = pod_spec(deployment).unwrap_or(&Value::Null);
    let grace = u64_at(spec, &["terminationGracePeriodSeconds"]);
    let batch_grace = config.pipeline.shutdown_grace_ms.div_ceil(1000);
    problems.check(grace.is_some_and(|secs| secs > LONGEST_BATCH_SECS && secs > batch_grace), || {
        format!("{where_}: terminationGracePeriodSeconds {grace:?} does not exceed the longest batch ({LONGEST_BATCH_SECS} s) and pipeline.shutdown_grace_ms ({batch_grace} s)")
    });
    let gpu = at(values, &["worker", "gpu", "enabled"]) == Some(&Value::Bool(true));
    let gpus = u64_at(container, &["resources", "limits", "nvidia.com/gpu"]);
    let tolerates_gpu = seq_at(spec, &["tolerations"]).iter().any(|toleration| {
        str_at(toleration, &["key"]) == Some("nvidia.com/gpu")
            && str_at(toleration, &["effect"]) == Some("NoSchedule")
            && str_at(toleration, &["operator"]) == Some("Exists")
    });
    let image = str_at(container, &["image"]).unwrap_or_default();
    if gpu {
        problems.check(gpus.is_some_and(|count| count >= 1), || {
            format!("{where_}: no resources.limits nvidia.com/gpu")
        });
        problems.check(tolerates_gpu, || {
            format!("{where_}: no toleration of the nvidia.com/gpu NoSchedule taint")
        });
        problems.check(
            config.models.device.starts_with("cuda") && config.models.dtype == "bf16",
            || {
                format!(
                    "{where_}: a GPU worker runs models.device `{}` / models.dtype `{}`",
                    config.models.device, config.models.dtype
                )
            },
        );
        // One segment at a time leaves most of a GPU idle.
        problems.check(config.pipeline.max_batch > 1, || {
            format!(
                "{where_}: a GPU worker runs pipeline.max_batch = {}",
                config.pipeline.max_batch
            )
        });
        let repository = str_at(values, &["worker", "gpuImage", "repository"]).unwrap_or_default();
        problems.check(!repository.is_empty() && image.starts_with(&format!("{repository}:")), || {
            format!("{where_}: a GPU worker runs image `{image}`, not worker.gpuImage `{repository}` (deploy/docker/Dockerfile.cuda)")
        });
    } else {
        // `auto` in the CPU image (built without the cuda feature) is the CPU.
        let on_cpu = matches!(config.models.device.as_str(), "cpu" | "auto");
        problems.check(gpus.is_none() && on_cpu, || {
            format!(
                "{where_}: a CPU worker asks for GPUs ({gpus:?}) or runs on `{}`",
                config.models.device
            )
        });
    }
}

fn check_keda(
    problems: &mut Problems,
    context: &str,
    values: &Value,
    scaled_objects: &[&Value],
    documents: &[Value],
    worker: &Node,
) {
    let enabled = at(values, &["worker", "keda", "enabled"]) == Some(&Value::Bool(true));
    let worker_deployment = documents
        .iter()
        .find(|document| object_key(document) == ("Deployment".to_string(), worker.name.clone()));
    let replicas = worker_deployment.and_then(|deployment| at(deployment, &["spec", "replicas"]));
    if !enabled {
        problems.check(scaled_objects.is_empty(), || {
            format!("{context}: worker.keda.enabled is false, yet a ScaledObject is rendered")
        });
        problems.check(replicas.is_some(), || {
            format!("{context}: without KEDA, {} sets no replicas", worker.name)
        });
        return;
    }
    problems.check(replicas.is_none(), || {
        format!("{context}: {} sets spec.replicas while KEDA scales it (every upgrade would reset the scale)", worker.name)
    });
    let [scaled] = scaled_objects else {
        problems.add(format!(
            "{context}: expected one ScaledObject, found {}",
            scaled_objects.len()
        ));
        return;
    };
    let name = str_at(scaled, &["metadata", "name"]).unwrap_or_default();
    let where_ = format!("{context}: ScaledObject {name}");
    problems.check(
        str_at(scaled, &["apiVersion"]) == Some("keda.sh/v1alpha1"),
        || format!("{where_}: apiVersion is not keda.sh/v1alpha1"),
    );
    let target = str_at(scaled, &["spec", "scaleTargetRef", "name"]);
    problems.check(target == Some(worker.name.as_str()), || {
        format!(
            "{where_}: scaleTargetRef.name {target:?} is not the worker Deployment {}",
            worker.name
        )
    });
    let target_kind = str_at(scaled, &["spec", "scaleTargetRef", "kind"]).unwrap_or("Deployment");
    problems.check(target_kind == "Deployment", || {
        format!("{where_}: scaleTargetRef.kind is {target_kind}")
    });
    let triggers = seq_at(scaled, &["spec", "triggers"]);
    let Some(trigger) = triggers
        .iter()
        .find(|trigger| str_at(trigger, &["type"]) == Some("kafka"))
    else {
        problems.add(format!("{where_}: no kafka trigger"));
        return;
    };
    // KEDA's schema: trigger metadata is a map of strings (quote numbers).
    for (key, value) in at(trigger, &["metadata"])
        .and_then(Value::as_mapping)
        .cloned()
        .unwrap_or_default()
    {
        problems.check(value.is_string(), || {
            format!("{where_}: trigger metadata {key:?} is {value:?}, not a string")
        });
    }
    let config = &worker.config;
    let metadata = |key: &str| {
        str_at(trigger, &["metadata", key])
            .unwrap_or_default()
            .to_string()
    };
    for (key, expected, config_key) in [
        ("topic", &config.kafka.topic, "kafka.topic"),
        ("consumerGroup", &config.kafka.group_id, "kafka.group_id"),
        ("bootstrapServers", &config.kafka.brokers, "kafka.brokers"),
    ] {
        problems.check(&metadata(key) == expected, || {
            format!(
                "{where_}: trigger {key} `{}` is not the workers' {config_key} `{expected}`",
                metadata(key)
            )
        });
    }
    let lag = metadata("lagThreshold").parse::<u64>();
    problems.check(lag.as_ref().is_ok_and(|lag| *lag > 0), || {
        format!(
            "{where_}: lagThreshold `{}` is not a positive integer string",
            metadata("lagThreshold")
        )
    });
    let reset = worker_offset_reset();
    problems.check(metadata("offsetResetPolicy") == reset, || {
        format!("{where_}: offsetResetPolicy `{}`, the workers' consumer uses auto.offset.reset `{reset}` (services/bus/src/kafka.rs)", metadata("offsetResetPolicy"))
    });
    let max = u64_at(scaled, &["spec", "maxReplicaCount"]);
    let min = u64_at(scaled, &["spec", "minReplicaCount"]).unwrap_or(0);
    problems.check(max.is_some_and(|max| max >= min && max <= config.kafka.partitions as u64), || {
        format!("{where_}: maxReplicaCount {max:?} must be at least minReplicaCount {min} and at most kafka.partitions {}", config.kafka.partitions)
    });
}

// ---------------------------------------------------------------------------------------
// READMEs
// ---------------------------------------------------------------------------------------

#[test]
fn readmes_name_existing_deploy_files() {
    let mut problems = Problems::default();
    for readme in ["README.md", "deploy/README.md"] {
        let text = read(readme);
        problems.check(
            readme != "README.md" || text.contains("\n## Deployment\n"),
            || format!("{readme}: no `## Deployment` section"),
        );
        let mut rest = text.as_str();
        while let Some(start) = rest.find("deploy/") {
            let tail = &rest[start..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || "/._-".contains(c)))
                .unwrap_or(tail.len());
            let path = tail[..end].trim_end_matches(['.', '/']);
            // A path, not prose such as "deploy/ holds …".
            if path.len() > "deploy/".len() && !path.contains('*') {
                problems.check(repo_root().join(path).exists(), || {
                    format!("{readme}: names `{path}`, which does not exist")
                });
            }
            rest = &tail[end..];
        }
    }
    problems.assert_none("READMEs");
}

#[test]
fn readme_is_short_and_links_existing_docs() {
    let mut problems = Problems::default();
    let text = read("README.md");
    let lines = text.lines().count();
    problems.check(lines <= 200, || {
        format!("README.md: {lines} lines, more than 200 (the detail belongs in docs/)")
    });
    let mut links = 0;
    let mut rest = text.as_str();
    while let Some(start) = rest.find("(docs/") {
        let tail = &rest[start + 1..];
        let end = tail.find(')').unwrap_or(tail.len());
        let target = &tail[..end];
        // A link may name a heading: `docs/gpu.md#warm-up`.
        let path = target.split_once('#').map_or(target, |(path, _)| path);
        problems.check(repo_root().join(path).exists(), || {
            format!("README.md: links `{target}`, which does not exist")
        });
        links += 1;
        rest = &tail[end..];
    }
    problems.check(links > 0, || {
        "README.md: links nothing under docs/".to_string()
    });
    problems.assert_none("README");
}

// ---------------------------------------------------------------------------------------
// The Go-template subset renderer
// ---------------------------------------------------------------------------------------

#[test]
fn the_template_renderer_follows_go_template_rules() {
    let mut templates = gotmpl::Templates::default();
    templates
        .add(
            "templates/_helpers.tpl",
            "{{- define \"greet\" -}}\nhello: {{ .name | quote }}\nn: {{ .n }}\n{{- end }}",
        )
        .expect("the helpers parse");
    templates
        .add(
            "templates/t.yaml",
            concat!(
                "a:\n  {{- include \"greet\" .Values | nindent 2 }}\n",
                "{{- if .Values.off }}\nnever: true\n{{- else if .Values.list }}\nlist:\n  {{- toYaml .Values.list | nindent 2 }}\n{{- end }}\n",
                "{{- with .Values.missing }}\nnever: {{ . }}\n{{- else }}\nwith_else: {{ default \"d\" .Values.empty }}\n{{- end }}\n",
                "joined: {{ printf \"%s-%s\" .Release.Name .Chart.Name | trunc 6 | trimSuffix \"-\" }}\n",
                "{{/* a comment */}}\n",
                "logic: {{ and .Values.n (not .Values.off) }} {{ or .Values.empty \"x\" }} {{ contains \"ab\" \"cabd\" }} {{ div 1800 10 }}\n",
            ),
        )
        .expect("the template parses");
    let values: Value = serde_norway::from_str(
        "name: \"say \\\"hi\\\"\"\nn: 3\noff: false\nlist: [1, two]\nempty: \"\"\n",
    )
    .expect("values parse");
    let chart: Value = serde_norway::from_str("name: chart\nversion: 1.0.0\nappVersion: \"1\"")
        .expect("chart parses");
    let root = gotmpl::helm_root(&chart, values, "release");
    let output = templates
        .render("templates/t.yaml", &root)
        .expect("the template renders");
    assert_eq!(
        output,
        "a:\n  hello: \"say \\\"hi\\\"\"\n  n: 3\nlist:\n  - 1\n  - two\nwith_else: d\njoined: releas\n\nlogic: true x true 180\n"
    );
    for unsupported in [
        "{{ range .Values.list }}x{{ end }}",
        "{{ $x := 1 }}",
        "{{ lookup \"v1\" \"Secret\" \"\" \"\" }}",
    ] {
        let mut templates = gotmpl::Templates::default();
        let refused = templates
            .add("templates/u.yaml", unsupported)
            .and_then(|()| templates.render("templates/u.yaml", &root));
        assert!(
            refused.is_err(),
            "`{unsupported}` should be refused, got {refused:?}"
        );
    }
}

/// A small interpreter of the Go-template subset the chart uses: text, `{{ pipeline }}` with
/// `{{-`/`-}}` trimming and comments, `if`/`else if`/`else`, `with`/`else`, `define` and
/// `include`, fields of `.` and `$`, string/number/bool literals, parentheses, pipes, and the
/// functions `include quote nindent indent toYaml default trunc trimSuffix replace printf
/// contains not and or eq ne div sha256sum`. Anything else (`range`, variables, `tpl`,
/// `lookup`, …) is an error, so a template that leaves the subset fails the test instead of
/// rendering wrongly. As in Helm, a missing value prints as nothing.
mod gotmpl {
    use std::collections::BTreeMap;

    use serde_norway::{Mapping, Value};
    use sha2::Digest;

    #[derive(Debug)]
    enum Node {
        Text(String),
        Output(Pipeline),
        If {
            branches: Vec<(Pipeline, Vec<Node>)>,
            otherwise: Vec<Node>,
        },
        With {
            pipeline: Pipeline,
            body: Vec<Node>,
            otherwise: Vec<Node>,
        },
    }

    type Pipeline = Vec<Vec<Operand>>;

    #[derive(Debug)]
    enum Operand {
        Function(String),
        Field { from_root: bool, path: Vec<String> },
        Literal(Value),
        Group(Pipeline),
    }

    #[derive(Debug)]
    enum Item {
        Text(String),
        Action(String),
    }

    /// How a block of nodes ended.
    enum Closing {
        Eof,
        End,
        Else(Option<Pipeline>),
    }

    /// Templates by file name, and the `define`d ones by name.
    #[derive(Debug, Default)]
    pub struct Templates {
        defines: BTreeMap<String, Vec<Node>>,
        files: BTreeMap<String, Vec<Node>>,
    }

    impl Templates {
        pub fn add(&mut self, name: &str, source: &str) -> Result<(), String> {
            let items = lex(source).map_err(|error| format!("{name}: {error}"))?;
            let mut position = 0;
            let (nodes, end) = parse_block(&items, &mut position, &mut self.defines)
                .map_err(|error| format!("{name}: {error}"))?;
            if !matches!(end, Closing::Eof) {
                return Err(format!("{name}: `end` or `else` without a block"));
            }
            self.files.insert(name.to_string(), nodes);
            Ok(())
        }

        pub fn render(&self, name: &str, root: &Value) -> Result<String, String> {
            let nodes = self
                .files
                .get(name)
                .ok_or_else(|| format!("no template {name}"))?;
            let mut out = String::new();
            Renderer {
                templates: self,
                root,
                depth: 0,
            }
            .exec(nodes, root, &mut out)
            .map_err(|error| format!("{name}: {error}"))?;
            Ok(out)
        }
    }

    /// The root object of a Helm render: `.Values`, `.Chart`, `.Release`.
    pub fn helm_root(chart: &Value, values: Value, release: &str) -> Value {
        let field = |key: &str| chart.get(key).cloned().unwrap_or(Value::Null);
        let mut chart_object = Mapping::new();
        chart_object.insert("Name".into(), field("name"));
        chart_object.insert("Version".into(), field("version"));
        chart_object.insert("AppVersion".into(), field("appVersion"));
        let mut release_object = Mapping::new();
        release_object.insert("Name".into(), release.into());
        release_object.insert("Namespace".into(), "default".into());
        release_object.insert("Service".into(), "Helm".into());
        let mut root = Mapping::new();
        root.insert("Values".into(), values);
        root.insert("Chart".into(), Value::Mapping(chart_object));
        root.insert("Release".into(), Value::Mapping(release_object));
        Value::Mapping(root)
    }

    /// Helm's values merge: maps merge key by key, anything else replaces.
    pub fn merge_values(base: &mut Value, overrides: &Value) {
        match (base, overrides) {
            (Value::Mapping(base), Value::Mapping(overrides)) => {
                for (key, value) in overrides {
                    match base.get_mut(key) {
                        Some(existing) => merge_values(existing, value),
                        None => {
                            base.insert(key.clone(), value.clone());
                        }
                    }
                }
            }
            (_, Value::Null) => {}
            (base, overrides) => *base = overrides.clone(),
        }
    }

    fn is_space(character: char) -> bool {
        matches!(character, ' ' | '\t' | '\r' | '\n')
    }

    /// Text and actions, with trim markers applied and comments dropped.
    fn lex(source: &str) -> Result<Vec<Item>, String> {
        let mut items = Vec::new();
        let mut rest = source;
        let mut trim_next = false;
        loop {
            let Some(start) = rest.find("{{") else {
                let text = if trim_next {
                    rest.trim_start_matches(is_space)
                } else {
                    rest
                };
                items.push(Item::Text(text.to_string()));
                return Ok(items);
            };
            let mut text = &rest[..start];
            if trim_next {
                text = text.trim_start_matches(is_space);
            }
            let after = &rest[start + 2..];
            let trim_left = after.starts_with('-') && after[1..].starts_with(is_space);
            if trim_left {
                text = text.trim_end_matches(is_space);
            }
            items.push(Item::Text(text.to_string()));
            let body = if trim_left { &after[1..] } else { after };
            let end = action_end(body)?;
            let mut inner = &body[..end];
            let trim_right = inner.ends_with('-') && inner[..inner.len() - 1].ends_with(is_space);
            if trim_right {
                inner = &inner[..inner.len() - 1];
            }
            let inner = inner.trim_matches(is_space);
            if !(inner.starts_with("/*") && inner.ends_with("*/")) {
                items.push(Item::Action(inner.to_string()));
            }
            trim_next = trim_right;
            rest = &body[end + 2..];
        }
    }

    /// Where an action's `}}` is, skipping string literals and comments.
    fn action_end(body: &str) -> Result<usize, String> {
        let trimmed = body.trim_start_matches(is_space);
        if trimmed.starts_with("/*") {
            let offset = body.len() - trimmed.len();
            let close = trimmed.find("*/").ok_or("unclosed comment")?;
            let after = offset + close + 2;
            return body[after..]
                .find("}}")
                .map(|end| after + end)
                .ok_or_else(|| "unclosed comment action".to_string());
        }
        let bytes = body.as_bytes();
        let mut index = 0;
        let mut quote: Option<u8> = None;
        while index < bytes.len() {
            let byte = bytes[index];
            match quote {
                Some(b'"') if byte == b'\\' => index += 1,
                Some(open) if byte == open => quote = None,
                Some(_) => {}
                None if byte == b'"' || byte == b'`' => quote = Some(byte),
                None if bytes[index..].starts_with(b"}}") => return Ok(index),
                None => {}
            }
            index += 1;
        }
        Err("unclosed action `{{`".into())
    }

    fn parse_block(
        items: &[Item],
        position: &mut usize,
        defines: &mut BTreeMap<String, Vec<Node>>,
    ) -> Result<(Vec<Node>, Closing), String> {
        let mut nodes = Vec::new();
        while *position < items.len() {
            let item = &items[*position];
            *position += 1;
            let action = match item {
                Item::Text(text) => {
                    if !text.is_empty() {
                        nodes.push(Node::Text(text.clone()));
                    }
                    continue;
                }
                Item::Action(action) => action.as_str(),
            };
            let (keyword, rest) = action
                .split_once(is_space)
                .map_or((action, ""), |(keyword, rest)| (keyword, rest.trim()));
            match keyword {
                "if" => {
                    let mut condition = parse_pipeline(rest)?;
                    let mut branches = Vec::new();
                    let otherwise = loop {
                        let (body, end) = parse_block(items, position, defines)?;
                        branches.push((condition, body));
                        match end {
                            Closing::End => break Vec::new(),
                            Closing::Else(Some(next)) => condition = next,
                            Closing::Else(None) => {
                                let (otherwise, end) = parse_block(items, position, defines)?;
                                if !matches!(end, Closing::End) {
                                    return Err("`if … else` without `end`".into());
                                }
                                break otherwise;
                            }
                            Closing::Eof => return Err(format!("`{action}` without `end`")),
                        }
                    };
                    nodes.push(Node::If {
                        branches,
                        otherwise,
                    });
                }
                "with" => {
                    let pipeline = parse_pipeline(rest)?;
                    let (body, end) = parse_block(items, position, defines)?;
                    let otherwise = match end {
                        Closing::End => Vec::new(),
                        Closing::Else(None) => {
                            let (otherwise, end) = parse_block(items, position, defines)?;
                            if !matches!(end, Closing::End) {
                                return Err("`with … else` without `end`".into());
                            }
                            otherwise
                        }
                        _ => return Err(format!("`{action}`: unsupported else-if or missing end")),
                    };
                    nodes.push(Node::With {
                        pipeline,
                        body,
                        otherwise,
                    });
                }
                "define" => {
                    let name = match parse_pipeline(rest)?.as_slice() {
                        [command] => match command.as_slice() {
                            [Operand::Literal(Value::String(name))] => name.clone(),
                            _ => return Err(format!("`{action}`: define needs a name")),
                        },
                        _ => return Err(format!("`{action}`: define needs a name")),
                    };
                    let (body, end) = parse_block(items, position, defines)?;
                    if !matches!(end, Closing::End) {
                        return Err(format!("`{action}` without `end`"));
                    }
                    defines.insert(name, body);
                }
                "end" => return Ok((nodes, Closing::End)),
                "else" if rest.is_empty() => return Ok((nodes, Closing::Else(None))),
                "else" => {
                    let condition = rest
                        .strip_prefix("if")
                        .filter(|condition| condition.starts_with(is_space))
                        .ok_or_else(|| format!("`{action}`: unsupported else"))?;
                    return Ok((
                        nodes,
                        Closing::Else(Some(parse_pipeline(condition.trim())?)),
                    ));
                }
                "range" | "template" | "block" | "break" | "continue" => {
                    return Err(format!(
                        "`{action}`: `{keyword}` is outside the supported subset"
                    ));
                }
                _ if action.contains(":=") || action.starts_with('$') && action.contains('=') => {
                    return Err(format!(
                        "`{action}`: variables are outside the supported subset"
                    ));
                }
                _ => nodes.push(Node::Output(parse_pipeline(action)?)),
            }
        }
        Ok((nodes, Closing::Eof))
    }

    #[derive(Debug, PartialEq)]
    enum Token {
        Pipe,
        Open,
        Close,
        Word(String),
        Text(String),
    }

    fn tokenize(source: &str) -> Result<Vec<Token>, String> {
        let mut tokens = Vec::new();
        let mut chars = source.chars().peekable();
        while let Some(&character) = chars.peek() {
            match character {
                c if is_space(c) => {
                    chars.next();
                }
                '|' => {
                    chars.next();
                    tokens.push(Token::Pipe);
                }
                '(' => {
                    chars.next();
                    tokens.push(Token::Open);
                }
                ')' => {
                    chars.next();
                    tokens.push(Token::Close);
                }
                '"' => {
                    chars.next();
                    let mut text = String::new();
                    loop {
                        match chars.next() {
                            Some('"') => break,
                            Some('\\') => match chars.next() {
                                Some('n') => text.push('\n'),
                                Some('t') => text.push('\t'),
                                Some(other) => text.push(other),
                                None => return Err("unterminated string".into()),
                            },
                            Some(other) => text.push(other),
                            None => return Err("unterminated string".into()),
                        }
                    }
                    tokens.push(Token::Text(text));
                }
                '`' => {
                    chars.next();
                    let text: String = chars.by_ref().take_while(|c| *c != '`').collect();
                    tokens.push(Token::Text(text));
                }
                _ => {
                    let mut word = String::new();
                    while let Some(&c) = chars.peek() {
                        if is_space(c) || matches!(c, '|' | '(' | ')' | '"') {
                            break;
                        }
                        word.push(c);
                        chars.next();
                    }
                    tokens.push(Token::Word(word));
                }
            }
        }
        Ok(tokens)
    }

    fn parse_pipeline(source: &str) -> Result<Pipeline, String> {
        let tokens = tokenize(source)?;
        let mut position = 0;
        let pipeline = parse_tokens(&tokens, &mut position)?;
        if position != tokens.len() {
            return Err(format!("`{source}`: unbalanced parentheses"));
        }
        if pipeline.iter().any(Vec::is_empty) {
            return Err(format!("`{source}`: empty command"));
        }
        Ok(pipeline)
    }

    fn parse_tokens(tokens: &[Token], position: &mut usize) -> Result<Pipeline, String> {
        let mut pipeline = vec![Vec::new()];
        while *position < tokens.len() {
            let token = &tokens[*position];
            *position += 1;
            let operand = match token {
                Token::Pipe => {
                    pipeline.push(Vec::new());
                    continue;
                }
                Token::Close => return Ok(pipeline),
                Token::Open => Operand::Group(parse_tokens(tokens, position)?),
                Token::Text(text) => Operand::Literal(Value::String(text.clone())),
                Token::Word(word) => operand(word)?,
            };
            pipeline.last_mut().expect("a command").push(operand);
        }
        Ok(pipeline)
    }

    fn operand(word: &str) -> Result<Operand, String> {
        let field = |from_root: bool, rest: &str| Operand::Field {
            from_root,
            path: rest
                .split('.')
                .filter(|part| !part.is_empty())
                .map(str::to_string)
                .collect(),
        };
        Ok(match word {
            "true" => Operand::Literal(Value::Bool(true)),
            "false" => Operand::Literal(Value::Bool(false)),
            "nil" => Operand::Literal(Value::Null),
            _ if word.starts_with('.') => field(false, word),
            _ if word == "$" || word.starts_with("$.") => field(true, &word[1..]),
            _ if word.starts_with('$') => {
                return Err(format!(
                    "`{word}`: variables are outside the supported subset"
                ));
            }
            _ if word.starts_with(|c: char| c.is_ascii_digit() || c == '-') => Operand::Literal(
                serde_norway::from_str(word).map_err(|_| format!("`{word}` is not a number"))?,
            ),
            _ if word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                Operand::Function(word.to_string())
            }
            _ => return Err(format!("`{word}`: not understood")),
        })
    }

    fn truthy(value: &Value) -> bool {
        match value {
            Value::Null => false,
            Value::Bool(flag) => *flag,
            Value::Number(number) => number.as_f64().is_some_and(|n| n != 0.0),
            Value::String(text) => !text.is_empty(),
            Value::Sequence(items) => !items.is_empty(),
            Value::Mapping(mapping) => !mapping.is_empty(),
            Value::Tagged(tagged) => truthy(&tagged.value),
        }
    }

    /// A value as `{{ }}` prints it; a missing value prints as nothing (Helm).
    fn print(value: &Value) -> Result<String, String> {
        match value {
            Value::Null => Ok(String::new()),
            Value::Bool(flag) => Ok(flag.to_string()),
            Value::Number(number) => Ok(number.to_string()),
            Value::String(text) => Ok(text.clone()),
            other => Err(format!(
                "printing a map or list ({other:?}) directly: use toYaml"
            )),
        }
    }

    /// Go's `%q`.
    fn go_quote(text: &str) -> String {
        let mut out = String::from("\"");
        for character in text.chars() {
            match character {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    fn indent(spaces: usize, text: &str) -> String {
        let pad = " ".repeat(spaces);
        format!("{pad}{}", text.replace('\n', &format!("\n{pad}")))
    }

    struct Renderer<'t> {
        templates: &'t Templates,
        root: &'t Value,
        depth: usize,
    }

    impl Renderer<'_> {
        fn exec(&self, nodes: &[Node], dot: &Value, out: &mut String) -> Result<(), String> {
            for node in nodes {
                match node {
                    Node::Text(text) => out.push_str(text),
                    Node::Output(pipeline) => out.push_str(&print(&self.eval(pipeline, dot)?)?),
                    Node::If {
                        branches,
                        otherwise,
                    } => {
                        let mut taken = false;
                        for (condition, body) in branches {
                            if truthy(&self.eval(condition, dot)?) {
                                self.exec(body, dot, out)?;
                                taken = true;
                                break;
                            }
                        }
                        if !taken {
                            self.exec(otherwise, dot, out)?;
                        }
                    }
                    Node::With {
                        pipeline,
                        body,
                        otherwise,
                    } => {
                        let value = self.eval(pipeline, dot)?;
                        if truthy(&value) {
                            self.exec(body, &value, out)?;
                        } else {
                            self.exec(otherwise, dot, out)?;
                        }
                    }
                }
            }
            Ok(())
        }

        fn eval(&self, pipeline: &Pipeline, dot: &Value) -> Result<Value, String> {
            let mut piped: Option<Value> = None;
            for command in pipeline {
                piped = Some(self.command(command, dot, piped.take())?);
            }
            piped.ok_or_else(|| "empty pipeline".to_string())
        }

        fn command(
            &self,
            command: &[Operand],
            dot: &Value,
            piped: Option<Value>,
        ) -> Result<Value, String> {
            match command {
                [Operand::Function(name), arguments @ ..] => {
                    let mut values = arguments
                        .iter()
                        .map(|argument| self.operand(argument, dot))
                        .collect::<Result<Vec<_>, _>>()?;
                    values.extend(piped);
                    self.call(name, values)
                }
                [single] if piped.is_none() => self.operand(single, dot),
                _ => Err(format!("cannot apply {command:?}")),
            }
        }

        fn operand(&self, operand: &Operand, dot: &Value) -> Result<Value, String> {
            match operand {
                Operand::Literal(value) => Ok(value.clone()),
                Operand::Group(pipeline) => self.eval(pipeline, dot),
                Operand::Field { from_root, path } => {
                    let mut current = if *from_root { self.root } else { dot };
                    for key in path {
                        match current.get(key.as_str()) {
                            Some(next) => current = next,
                            None => return Ok(Value::Null),
                        }
                    }
                    Ok(current.clone())
                }
                Operand::Function(name) => self.call(name, Vec::new()),
            }
        }

        fn call(&self, name: &str, arguments: Vec<Value>) -> Result<Value, String> {
            let text = |index: usize| -> Result<String, String> {
                arguments
                    .get(index)
                    .map(print)
                    .unwrap_or_else(|| Err(format!("{name}: missing argument {index}")))
            };
            let integer = |index: usize| -> Result<i64, String> {
                let value = arguments
                    .get(index)
                    .ok_or(format!("{name}: missing argument {index}"))?;
                value
                    .as_i64()
                    .or_else(|| value.as_f64().map(|f| f as i64))
                    .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
                    .ok_or_else(|| format!("{name}: {value:?} is not a number"))
            };
            let arity = |count: usize| -> Result<(), String> {
                if arguments.len() == count {
                    Ok(())
                } else {
                    Err(format!(
                        "{name} takes {count} arguments, got {}",
                        arguments.len()
                    ))
                }
            };
            Ok(match name {
                "include" => {
                    arity(2)?;
                    let template = text(0)?;
                    let body = self
                        .templates
                        .defines
                        .get(&template)
                        .ok_or_else(|| format!("include: no template \"{template}\""))?;
                    if self.depth > 50 {
                        return Err("include: recursion too deep".into());
                    }
                    let mut out = String::new();
                    Renderer {
                        templates: self.templates,
                        root: self.root,
                        depth: self.depth + 1,
                    }
                    .exec(body, &arguments[1], &mut out)?;
                    Value::String(out)
                }
                "quote" => Value::String(
                    arguments
                        .iter()
                        .filter(|value| !value.is_null())
                        .map(|value| print(value).map(|text| go_quote(&text)))
                        .collect::<Result<Vec<_>, _>>()?
                        .join(" "),
                ),
                "indent" => {
                    arity(2)?;
                    Value::String(indent(integer(0)? as usize, &text(1)?))
                }
                "nindent" => {
                    arity(2)?;
                    Value::String(format!("\n{}", indent(integer(0)? as usize, &text(1)?)))
                }
                "toYaml" => {
                    arity(1)?;
                    let yaml = serde_norway::to_string(&arguments[0])
                        .map_err(|error| error.to_string())?;
                    Value::String(yaml.trim_end_matches('\n').to_string())
                }
                "default" => {
                    arity(2)?;
                    if truthy(&arguments[1]) {
                        arguments[1].clone()
                    } else {
                        arguments[0].clone()
                    }
                }
                "trunc" => {
                    arity(2)?;
                    Value::String(text(1)?.chars().take(integer(0)? as usize).collect())
                }
                "trimSuffix" => {
                    arity(2)?;
                    let (suffix, subject) = (text(0)?, text(1)?);
                    Value::String(
                        subject
                            .strip_suffix(suffix.as_str())
                            .unwrap_or(&subject)
                            .to_string(),
                    )
                }
                "replace" => {
                    arity(3)?;
                    Value::String(text(2)?.replace(&text(0)?, &text(1)?))
                }
                "printf" => {
                    let format = text(0)?;
                    let mut out = String::new();
                    let mut next = 1;
                    let mut chars = format.chars();
                    while let Some(character) = chars.next() {
                        if character != '%' {
                            out.push(character);
                            continue;
                        }
                        match chars.next() {
                            Some('%') => out.push('%'),
                            Some('s' | 'd' | 'v') => {
                                out.push_str(&text(next)?);
                                next += 1;
                            }
                            other => {
                                return Err(format!(
                                    "printf: verb {other:?} is outside the supported subset"
                                ));
                            }
                        }
                    }
                    Value::String(out)
                }
                "contains" => {
                    arity(2)?;
                    Value::Bool(text(1)?.contains(&text(0)?))
                }
                "not" => {
                    arity(1)?;
                    Value::Bool(!truthy(&arguments[0]))
                }
                "and" => arguments
                    .iter()
                    .find(|value| !truthy(value))
                    .or(arguments.last())
                    .cloned()
                    .unwrap_or(Value::Null),
                "or" => arguments
                    .iter()
                    .find(|value| truthy(value))
                    .or(arguments.last())
                    .cloned()
                    .unwrap_or(Value::Null),
                "eq" | "ne" => {
                    arity(2)?;
                    let equal = match (arguments[0].as_f64(), arguments[1].as_f64()) {
                        (Some(a), Some(b)) => a == b,
                        _ => arguments[0] == arguments[1],
                    };
                    Value::Bool(equal == (name == "eq"))
                }
                "div" => {
                    arity(2)?;
                    let divisor = integer(1)?;
                    if divisor == 0 {
                        return Err("div: by zero".into());
                    }
                    Value::Number((integer(0)? / divisor).into())
                }
                "sha256sum" => {
                    arity(1)?;
                    let digest = sha2::Sha256::digest(text(0)?.as_bytes());
                    Value::String(digest.iter().map(|byte| format!("{byte:02x}")).collect())
                }
                _ => return Err(format!("function `{name}` is outside the supported subset")),
            })
        }
    }
}
