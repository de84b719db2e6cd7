//! `docker-compose.yml` and the Kubernetes manifests in `deploy/k8s` stay in step with the code.
//! Nothing here can start a container, so the files are checked against what can be known
//! without one: they parse; every file they reference exists; every `orderflow` subcommand, flag
//! and `ORDERFLOW_*` variable they use is one the built binary takes (its `--help`); the ports
//! healthchecks, probes, Services and Prometheus use are the ports the commands listen on, and
//! the commands (started here on 127.0.0.1) answer the paths probed there; start-up order holds
//! together.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use crate::common;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// What the binary takes, from its --help
// ---------------------------------------------------------------------------------------------

/// One option of a subcommand, from its `--help`.
#[derive(Debug, Default, Clone)]
struct Opt {
    takes_value: bool,
    env: Option<String>,
    default: Option<String>,
}

/// What `orderflow <path…> --help` says.
#[derive(Debug, Default)]
struct Help {
    /// `--name` → the option.
    options: BTreeMap<String, Opt>,
    /// Allowed values of each positional argument, in order (empty: any).
    positionals: Vec<BTreeSet<String>>,
    /// Subcommands, if this command has any.
    commands: BTreeSet<String>,
}

/// Runs `orderflow <path…> --help` with no `ORDERFLOW_*` set (clap shows the values of set
/// variables) and parses it.
fn help(path: &[&str]) -> Help {
    let output = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(path)
        .arg("--help")
        .env_clear()
        .env("COLUMNS", "1000")
        .output()
        .expect("orderflow runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "`orderflow {} --help` failed: {}",
        path.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    parse_help(&text)
}

/// `[key: value]` in a help line.
fn bracket(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("[{key}: "))? + key.len() + 3;
    let end = line[start..].find(']')? + start;
    Some(line[start..end].to_string())
}

fn parse_help(text: &str) -> Help {
    let mut help = Help::default();
    let mut section = "";
    let mut current: Option<String> = None;
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line.trim_end_matches(':');
            current = None;
            continue;
        }
        let trimmed = line.trim_start();
        match section {
            "Commands" => {
                if let Some(name) = trimmed.split_whitespace().next() {
                    if name != "help" {
                        help.commands.insert(name.to_string());
                    }
                }
            }
            "Arguments" if trimmed.starts_with('<') => {
                let values = bracket(trimmed, "possible values")
                    .map(|v| v.split(", ").map(str::to_string).collect())
                    .unwrap_or_default();
                help.positionals.push(values);
            }
            "Options" => {
                // `-h, --help`, `--brokers <BROKERS>`: a new option; anything else continues
                // the description of the last one.
                let spec = if trimmed.starts_with("--") {
                    Some(trimmed)
                } else if trimmed.starts_with('-') && trimmed.get(2..5) == Some(", -") {
                    Some(&trimmed[4..])
                } else {
                    None
                };
                if let Some(spec) = spec {
                    let name = spec
                        .split(|c: char| c.is_whitespace() || c == '=')
                        .next()
                        .unwrap()
                        .to_string();
                    let rest = &spec[name.len()..];
                    help.options.insert(
                        name.clone(),
                        Opt {
                            takes_value: rest.trim_start().starts_with('<'),
                            ..Opt::default()
                        },
                    );
                    current = Some(name);
                }
                if let Some(opt) = current.as_ref().and_then(|n| help.options.get_mut(n)) {
                    if let Some(env) = bracket(line, "env") {
                        opt.env = Some(env.trim_end_matches('=').to_string());
                    }
                    if let Some(default) = bracket(line, "default") {
                        opt.default = Some(default);
                    }
                }
            }
            _ => {}
        }
    }
    help
}

/// Every subcommand's help, by its path (`["process"]`, `["topics", "create"]`).
struct Binary {
    top: Help,
    subcommands: BTreeMap<Vec<String>, Help>,
}

impl Binary {
    fn load() -> Binary {
        let top = help(&[]);
        assert!(top.commands.len() >= 5, "subcommands: {:?}", top.commands);
        let mut subcommands = BTreeMap::new();
        for command in &top.commands {
            let h = help(&[command]);
            for sub in &h.commands {
                subcommands.insert(vec![command.clone(), sub.clone()], help(&[command, sub]));
            }
            subcommands.insert(vec![command.clone()], h);
        }
        Binary { top, subcommands }
    }

    /// Every `ORDERFLOW_*` variable some subcommand reads.
    fn all_envs(&self) -> BTreeSet<String> {
        self.subcommands
            .values()
            .flat_map(|h| h.options.values().filter_map(|o| o.env.clone()))
            .collect()
    }
}

/// An `orderflow` invocation in a deployment file, checked against the binary.
#[derive(Debug)]
struct Invocation {
    /// `process validation`, `topics create`, …: for messages.
    name: String,
    /// `--flag` → value (the last one given).
    flags: BTreeMap<String, String>,
    /// `ORDERFLOW_*` variables this subcommand reads.
    envs: BTreeSet<String>,
    /// The listen options' (`--http`, `--metrics`) options, for resolving ports.
    options: BTreeMap<String, Opt>,
}

impl Invocation {
    /// Checks `args` (the container's command after `orderflow`) against the binary; returns
    /// the problems found, or the invocation.
    fn parse(binary: &Binary, args: &[String]) -> Result<Invocation, String> {
        let Some(first) = args.first() else {
            return Err("no subcommand (the image's default command)".into());
        };
        if !binary.top.commands.contains(first) {
            return Err(format!("`orderflow {first}`: no such subcommand"));
        }
        let mut path = vec![first.clone()];
        let mut rest = &args[1..];
        if !binary.subcommands[&path].commands.is_empty() {
            let Some(sub) = rest.first() else {
                return Err(format!("`orderflow {first}` needs a subcommand"));
            };
            path.push(sub.clone());
            if !binary.subcommands.contains_key(&path) {
                return Err(format!(
                    "`orderflow {}`: no such subcommand",
                    path.join(" ")
                ));
            }
            rest = &rest[1..];
        }
        let help = &binary.subcommands[&path];
        let mut problems = Vec::new();
        let mut flags = BTreeMap::new();
        let mut positionals = Vec::new();
        let mut i = 0;
        while i < rest.len() {
            let arg = &rest[i];
            i += 1;
            if let Some(flag) = arg.strip_prefix("--") {
                let (name, inline) = match flag.split_once('=') {
                    Some((n, v)) => (format!("--{n}"), Some(v.to_string())),
                    None => (format!("--{flag}"), None),
                };
                let Some(opt) = help.options.get(&name) else {
                    problems.push(format!("`{name}` is not an option"));
                    // Its value, if it has one, is no positional argument.
                    if inline.is_none() && rest.get(i).is_some_and(|v| !v.starts_with("--")) {
                        i += 1;
                    }
                    continue;
                };
                let value = match (opt.takes_value, inline) {
                    (true, Some(v)) => v,
                    (true, None) if i < rest.len() => {
                        i += 1;
                        rest[i - 1].clone()
                    }
                    (true, None) => {
                        problems.push(format!("`{name}` without a value"));
                        continue;
                    }
                    (false, _) => String::new(),
                };
                flags.insert(name, value);
            } else {
                positionals.push(arg.clone());
            }
        }
        if positionals.len() > help.positionals.len() {
            problems.push(format!("unexpected arguments {positionals:?}"));
        }
        for (value, allowed) in positionals.iter().zip(&help.positionals) {
            if !allowed.is_empty() && !allowed.contains(value) {
                problems.push(format!("`{value}` is not one of {allowed:?}"));
            }
        }
        let name = std::iter::once(path.join(" "))
            .chain(positionals)
            .collect::<Vec<_>>()
            .join(" ");
        if !problems.is_empty() {
            return Err(format!("`orderflow {name}`: {}", problems.join("; ")));
        }
        Ok(Invocation {
            name,
            envs: help
                .options
                .values()
                .filter_map(|o| o.env.clone())
                .collect(),
            options: help.options.clone(),
            flags,
        })
    }

    /// The ports it listens on: `--http` / `--metrics` from the command line, else from the
    /// environment, else their defaults.
    fn listen_ports(&self, env: &BTreeMap<String, String>) -> BTreeSet<u16> {
        ["--http", "--metrics"]
            .iter()
            .filter_map(|flag| {
                let opt = self.options.get(*flag)?;
                let addr = self
                    .flags
                    .get(*flag)
                    .cloned()
                    .or_else(|| opt.env.as_ref().and_then(|e| env.get(e).cloned()))
                    .or_else(|| opt.default.clone())?;
                Some(port_of(&addr))
            })
            .collect()
    }

    /// The port its metrics are served on: `--metrics`, or the HTTP API's.
    fn metrics_port(&self, env: &BTreeMap<String, String>) -> Option<u16> {
        let with = |flag: &str| {
            Invocation {
                name: String::new(),
                flags: self.flags.clone(),
                envs: BTreeSet::new(),
                options: self
                    .options
                    .iter()
                    .filter(|(n, _)| n.as_str() == flag)
                    .map(|(n, o)| (n.clone(), o.clone()))
                    .collect(),
            }
            .listen_ports(env)
            .into_iter()
            .next()
        };
        with("--metrics").or_else(|| with("--http"))
    }

    /// Absolute paths given as flag values (config files): they must exist in the container.
    fn paths(&self) -> Vec<&str> {
        self.flags
            .values()
            .map(String::as_str)
            .filter(|v| v.starts_with('/'))
            .collect()
    }
}

fn port_of(addr: &str) -> u16 {
    let port = addr.rsplit(':').next().unwrap();
    port.parse()
        .unwrap_or_else(|_| panic!("no port in address {addr:?}"))
}

/// `ORDERFLOW_*` names in `env` that `invocation` does not read (`ORDERFLOW_KAFKA_*` are
/// librdkafka properties, all read).
fn unread(invocation: &Invocation, env: impl IntoIterator<Item = String>) -> Vec<String> {
    env.into_iter()
        .filter(|k| k.starts_with("ORDERFLOW_") && !k.starts_with("ORDERFLOW_KAFKA_"))
        .filter(|k| !invocation.envs.contains(k))
        .collect()
}

/// `http://localhost:PORT/path` in a healthcheck command → (port, path).
fn local_url(text: &str) -> Option<(u16, String)> {
    let at = text.find("http://localhost:")? + "http://localhost:".len();
    let rest = &text[at..];
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    let port = rest[..end].parse().ok()?;
    let path: String = rest[end..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"' && *c != '\'')
        .collect();
    Some((port, path))
}

/// A probe a deployment file points at a command: `orderflow <name>` must answer `path` on the
/// listener of `flag` (`--http` or `--metrics`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Probe {
    name: String,
    flag: &'static str,
    path: String,
}

impl Invocation {
    /// The listen option (`--http`, `--metrics`) whose port is `port`.
    fn listener_on(&self, port: u16, env: &BTreeMap<String, String>) -> Option<&'static str> {
        ["--http", "--metrics"].into_iter().find(|flag| {
            let only = Invocation {
                name: String::new(),
                flags: self.flags.clone(),
                envs: BTreeSet::new(),
                options: self
                    .options
                    .iter()
                    .filter(|(n, _)| n == flag)
                    .map(|(n, o)| (n.clone(), o.clone()))
                    .collect(),
            };
            only.listen_ports(env).contains(&port)
        })
    }
}

/// Starts each probed command on 127.0.0.1 (its broker unreachable, its store in a temporary
/// directory) and checks that it serves each probed path: any answer but 404 (`/readyz` may
/// well say 503 here). Returns the problems.
fn check_probe_paths(binary: &Binary, probes: &BTreeSet<Probe>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut by_command: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for p in probes {
        by_command
            .entry((p.name.as_str(), p.flag))
            .or_default()
            .push(p.path.as_str());
    }
    for ((name, flag), paths) in by_command {
        let words: Vec<String> = name.split(' ').map(str::to_string).collect();
        let has_subcommands = !binary.subcommands[&words[..1].to_vec()].commands.is_empty();
        let path_len = if has_subcommands { 2 } else { 1 };
        let options = &binary.subcommands[&words[..path_len].to_vec()].options;
        let data = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_orderflow"));
        command
            .args(&words)
            .args([flag, &format!("127.0.0.1:{port}")])
            .env_clear()
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if options.contains_key("--brokers") {
            // Nothing listens there: the command starts and keeps trying.
            command.args(["--brokers", "127.0.0.1:9"]);
        }
        if options.contains_key("--data-dir") {
            command.arg("--data-dir").arg(data.path());
        }
        if options.contains_key("--jwt-secret") {
            // `orderflow ingest` refuses to start without a secret of its own.
            command.args(["--jwt-secret", "probe-secret-of-at-least-32-bytes!!"]);
        }
        let mut child = command.spawn().expect("orderflow starts");
        for path in paths {
            match http_status(port, path, &mut child) {
                Ok(404) => problems.push(format!(
                    "`orderflow {name}` does not serve {path} on {flag}"
                )),
                Ok(_) => {}
                Err(e) => problems.push(format!("`orderflow {name}` on {flag}: {e}")),
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    problems
}

/// The status of `GET path` on 127.0.0.1:`port`, retried while the command starts (20 s).
fn http_status(port: u16, path: &str, child: &mut std::process::Child) -> Result<u16, String> {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}"));
        }
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            let request =
                format!("GET {path} HTTP/1.1\r\nhost: probe\r\nconnection: close\r\n\r\n");
            stream
                .write_all(request.as_bytes())
                .map_err(|e| e.to_string())?;
            let mut response = String::new();
            let _ = stream.read_to_string(&mut response);
            let status = response
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("no HTTP answer: {response:?}"))?;
            return Ok(status);
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("nothing listens on port {port} after 20 s"));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// YAML
// ---------------------------------------------------------------------------------------------

/// Every document of a YAML file, merge keys (`<<`) applied, as JSON values.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| {
            let mut value = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(document)
                .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", path.display()));
            value
                .apply_merge()
                .unwrap_or_else(|e| panic!("{}: merge keys: {e}", path.display()));
            serde_json::to_value(&value)
                .unwrap_or_else(|e| panic!("{}: not JSON-like: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A Compose `environment`, as a mapping or a `KEY=VALUE` list.
fn compose_env(value: &Value) -> BTreeMap<String, String> {
    match value {
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), scalar(v))).collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.to_string(), String::new()),
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// docker-compose.yml
// ---------------------------------------------------------------------------------------------

/// A bind mount of a Compose service: (host path, container path).
fn binds(service: &Value) -> Vec<(String, String)> {
    service["volumes"]
        .as_array()
        .map(|volumes| {
            volumes
                .iter()
                .filter_map(Value::as_str)
                .filter(|v| v.starts_with("./") || v.starts_with('/'))
                .map(|v| {
                    let mut parts = v.split(':');
                    (
                        parts.next().unwrap().to_string(),
                        parts.next().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// An Orderflow service of the Compose file: the invocation, its environment and its ports.
struct ComposeService {
    invocation: Invocation,
    env: BTreeMap<String, String>,
    one_shot: bool,
}

#[test]
fn compose_runs_the_whole_stack_with_commands_envs_files_and_ports_the_code_has() {
    let binary = Binary::load();
    let documents = yaml_documents(&root().join("docker-compose.yml"));
    assert_eq!(documents.len(), 1);
    let compose = &documents[0];
    let services = compose["services"]
        .as_object()
        .expect("docker-compose.yml has services");

    let mut problems = Vec::new();
    for wanted in [
        "redpanda",
        "console",
        "scylla",
        "localstack",
        "prometheus",
        "grafana",
        "topics",
        "migrate",
        "ingest",
        "bridge",
    ] {
        if !services.contains_key(wanted) {
            problems.push(format!("no `{wanted}` service"));
        }
    }

    // Files: every bind mount's host path, and the build context's Dockerfile.
    for (name, service) in services {
        for (host, _) in binds(service) {
            if !root().join(&host).exists() {
                problems.push(format!("{name}: mounts {host}, which does not exist"));
            }
        }
        if let Some(build) = service.get("build") {
            let context = build
                .as_str()
                .or_else(|| build["context"].as_str())
                .unwrap_or(".");
            let dockerfile = build["dockerfile"].as_str().unwrap_or("Dockerfile");
            if !root().join(context).join(dockerfile).exists() {
                problems.push(format!("{name}: builds {context}/{dockerfile}, missing"));
            }
        }
    }

    // Start-up order: dependencies exist, and their conditions can be met.
    for (name, service) in services {
        let Some(deps) = service["depends_on"].as_object() else {
            continue;
        };
        for (dep, condition) in deps {
            let Some(target) = services.get(dep) else {
                problems.push(format!("{name}: depends on `{dep}`, no such service"));
                continue;
            };
            match condition["condition"].as_str() {
                Some("service_healthy") if target.get("healthcheck").is_none() => problems.push(
                    format!("{name}: waits for `{dep}` to be healthy; it has no healthcheck"),
                ),
                Some("service_completed_successfully") if target["restart"] != "no" => problems
                    .push(format!(
                        "{name}: waits for `{dep}` to complete; it is not one-shot"
                    )),
                _ => {}
            }
        }
    }

    // The Orderflow services: real subcommands, flags, variables; healthchecks on their ports;
    // config files mounted.
    let mut orderflow = BTreeMap::new();
    let mut probes = BTreeSet::new();
    for (name, service) in services {
        if service["image"] != "orderflow:local" {
            continue;
        }
        let args = strings(&service["command"]);
        let invocation = match Invocation::parse(&binary, &args) {
            Ok(i) => i,
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                continue;
            }
        };
        let env = compose_env(&service["environment"]);
        for var in unread(&invocation, env.keys().cloned()) {
            problems.push(format!(
                "{name}: sets {var}, which `orderflow {}` does not read",
                invocation.name
            ));
        }
        let ports = invocation.listen_ports(&env);
        let one_shot = service["restart"] == "no";
        if one_shot {
            if service.get("healthcheck").is_some() {
                problems.push(format!("{name}: a one-shot job with a healthcheck"));
            }
        } else {
            let test = strings(&service["healthcheck"]["test"]).join(" ");
            match local_url(&test) {
                None => problems.push(format!("{name}: no HTTP healthcheck ({test:?})")),
                Some((port, path)) => {
                    if !ports.contains(&port) {
                        problems.push(format!(
                            "{name}: healthcheck on port {port}; it listens on {ports:?}"
                        ));
                    }
                    if let Some(flag) = invocation.listener_on(port, &env) {
                        probes.insert(Probe {
                            name: invocation.name.clone(),
                            flag,
                            path: path.clone(),
                        });
                    }
                    if !["/healthz", "/readyz"].contains(&path.as_str()) {
                        problems.push(format!("{name}: healthcheck on {path}"));
                    }
                }
            }
        }
        for path in invocation.paths() {
            let mounted = binds(service).into_iter().any(|(host, target)| {
                (path == target || path.starts_with(&format!("{target}/")))
                    && root().join(&host).exists()
            });
            if !mounted {
                problems.push(format!(
                    "{name}: uses {path}, which no existing file is mounted at"
                ));
            }
        }
        orderflow.insert(
            name.clone(),
            ComposeService {
                invocation,
                env,
                one_shot,
            },
        );
    }

    // Every piece of the pipeline runs, once: the API, each stage, the bridge, and the jobs.
    let runs: BTreeSet<String> = orderflow
        .values()
        .map(|s| s.invocation.name.clone())
        .collect();
    let stages = &binary.subcommands[&vec!["process".to_string()]].positionals[0];
    let mut wanted: Vec<String> = stages.iter().map(|s| format!("process {s}")).collect();
    wanted.extend(["ingest", "bridge", "topics create", "migrate"].map(String::from));
    for w in &wanted {
        if !runs.contains(w) {
            problems.push(format!("no service runs `orderflow {w}`"));
        }
    }

    // Prometheus scrapes every long-running Orderflow service on its metrics port.
    let prometheus_config = binds(&services["prometheus"])
        .into_iter()
        .find(|(_, target)| target.ends_with("prometheus.yml"))
        .map(|(host, _)| root().join(host))
        .expect("prometheus mounts its config");
    let config = &yaml_documents(&prometheus_config)[0];
    let mut scraped = BTreeSet::new();
    for job in config["scrape_configs"].as_array().expect("scrape_configs") {
        let mut targets: Vec<(String, u16)> = Vec::new();
        for sc in job["static_configs"].as_array().into_iter().flatten() {
            for t in sc["targets"].as_array().into_iter().flatten() {
                let t = t.as_str().unwrap();
                let (host, port) = t.rsplit_once(':').expect("host:port");
                targets.push((host.to_string(), port.parse().unwrap()));
            }
        }
        for sd in job["dns_sd_configs"].as_array().into_iter().flatten() {
            let port = sd["port"].as_u64().expect("dns_sd_configs port") as u16;
            for n in sd["names"].as_array().into_iter().flatten() {
                targets.push((n.as_str().unwrap().to_string(), port));
            }
        }
        for (host, port) in targets {
            let job_name = job["job_name"].as_str().unwrap_or("?");
            if !services.contains_key(&host) {
                problems.push(format!("prometheus job {job_name}: no service `{host}`"));
                continue;
            }
            if let Some(s) = orderflow.get(&host) {
                let metrics = s.invocation.metrics_port(&s.env);
                if metrics != Some(port) {
                    problems.push(format!(
                        "prometheus job {job_name}: scrapes {host}:{port}; its metrics are on {metrics:?}"
                    ));
                }
                if job["metrics_path"].as_str().unwrap_or("/metrics") != "/metrics" {
                    problems.push(format!("prometheus job {job_name}: not /metrics"));
                }
            }
            scraped.insert(host);
        }
    }
    for (name, s) in &orderflow {
        if !s.one_shot && !scraped.contains(name) {
            problems.push(format!("prometheus does not scrape `{name}`"));
        }
    }
    for infra in ["redpanda", "scylla"] {
        if !scraped.contains(infra) {
            problems.push(format!("prometheus does not scrape `{infra}`"));
        }
    }

    problems.extend(check_probe_paths(&binary, &probes));

    assert!(
        problems.is_empty(),
        "docker-compose.yml:\n  {}",
        problems.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------------
// deploy/k8s
// ---------------------------------------------------------------------------------------------

/// A container's port, by name or number, as its containerPort.
fn container_port(container: &Value, port: &Value) -> Option<u16> {
    match port {
        Value::Number(n) => n.as_u64().map(|n| n as u16),
        Value::String(name) => container["ports"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == *name)
            .and_then(|p| p["containerPort"].as_u64())
            .map(|n| n as u16),
        _ => None,
    }
}

#[test]
fn k8s_manifests_use_commands_envs_files_and_ports_the_code_has() {
    let binary = Binary::load();
    let dir = root().join("deploy/k8s");
    let kustomization = &yaml_documents(&dir.join("kustomization.yaml"))[0];
    let mut problems = Vec::new();

    // Files: every resource and generated ConfigMap's file exists, and every manifest is listed.
    let resources: BTreeSet<String> = strings(&kustomization["resources"]).into_iter().collect();
    for r in &resources {
        if !dir.join(r).exists() {
            problems.push(format!(
                "kustomization.yaml lists {r}, which does not exist"
            ));
        }
    }
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .filter(|p| p.file_name().unwrap() != "kustomization.yaml")
        .collect();
    manifests.sort();
    for m in &manifests {
        let file = m.file_name().unwrap().to_string_lossy().into_owned();
        if !resources.contains(&file) {
            problems.push(format!("{file} is not in kustomization.yaml's resources"));
        }
    }
    // ConfigMap name → its keys (files of a generator are keys named after the file).
    let mut config_maps: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for generator in kustomization["configMapGenerator"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = generator["name"].as_str().unwrap().to_string();
        let mut keys = BTreeMap::new();
        for file in strings(&generator["files"]) {
            let (key, path) = file.split_once('=').unwrap_or((&file, &file));
            let key = Path::new(key).file_name().unwrap().to_string_lossy();
            if !dir.join(path).exists() {
                problems.push(format!("configMapGenerator {name}: {path} does not exist"));
            }
            keys.insert(key.into_owned(), String::new());
        }
        config_maps.insert(name, keys);
    }

    // The opt-in demo overlay (`kubectl apply -k deploy/k8s/demo`, not in the default
    // kustomization) runs against the same ConfigMap: checked like the rest.
    let demo = dir.join("demo");
    let demo_kustomization = &yaml_documents(&demo.join("kustomization.yaml"))[0];
    let demo_manifests: Vec<PathBuf> = strings(&demo_kustomization["resources"])
        .iter()
        .map(|r| demo.join(r))
        .collect();
    assert!(
        !demo_manifests.is_empty(),
        "deploy/k8s/demo lists no resources"
    );
    let objects: Vec<Value> = manifests
        .iter()
        .chain(&demo_manifests)
        .flat_map(|m| yaml_documents(m))
        .collect();
    for o in objects.iter().filter(|o| o["kind"] == "ConfigMap") {
        let data = o["data"]
            .as_object()
            .map(|d| d.iter().map(|(k, v)| (k.clone(), scalar(v))).collect())
            .unwrap_or_default();
        config_maps.insert(o["metadata"]["name"].as_str().unwrap().to_string(), data);
    }

    // Workloads: Deployments and Jobs running the orderflow image.
    let mut deployments: BTreeMap<String, (Value, Vec<u16>)> = BTreeMap::new();
    let mut runs = BTreeSet::new();
    let mut probes = BTreeSet::new();
    // ConfigMap name → the invocations whose containers load it whole (envFrom).
    let mut env_from_users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut env_from_reads: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for o in &objects {
        let kind = o["kind"].as_str().unwrap_or_default();
        if kind != "Deployment" && kind != "Job" {
            continue;
        }
        let name = o["metadata"]["name"].as_str().unwrap_or("?").to_string();
        let pod = &o["spec"]["template"];
        if kind == "Deployment" {
            let selector = o["spec"]["selector"]["matchLabels"].as_object();
            let labels = pod["metadata"]["labels"].as_object();
            let matches = selector.is_some_and(|s| {
                s.iter()
                    .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            });
            if !matches {
                problems.push(format!(
                    "{name}: the selector does not match the pod's labels"
                ));
            }
        }
        for container in pod["spec"]["containers"].as_array().into_iter().flatten() {
            if container["image"] != "orderflow" {
                continue;
            }
            let args = strings(&container["args"]);
            let invocation = match Invocation::parse(&binary, &args) {
                Ok(i) => i,
                Err(e) => {
                    problems.push(format!("{name}: {e}"));
                    continue;
                }
            };
            runs.insert(invocation.name.clone());

            // The environment: ConfigMaps loaded whole, then explicit variables.
            let mut env = BTreeMap::new();
            for from in container["envFrom"].as_array().into_iter().flatten() {
                let cm = from["configMapRef"]["name"].as_str().unwrap_or_default();
                match config_maps.get(cm) {
                    None => problems.push(format!("{name}: envFrom ConfigMap {cm}, undefined")),
                    Some(data) => {
                        env.extend(data.clone());
                        env_from_users
                            .entry(cm.to_string())
                            .or_default()
                            .push(invocation.name.clone());
                        env_from_reads
                            .entry(cm.to_string())
                            .or_default()
                            .extend(invocation.envs.iter().cloned());
                    }
                }
            }
            let explicit: Vec<String> = container["env"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    env.insert(scalar(&e["name"]), scalar(&e["value"]));
                    scalar(&e["name"])
                })
                .collect();
            for var in unread(&invocation, explicit) {
                problems.push(format!(
                    "{name}: sets {var}, which `orderflow {}` does not read",
                    invocation.name
                ));
            }

            // Ports: declared = listened on; probes and the scrape annotation on them.
            let listens = invocation.listen_ports(&env);
            let declared: BTreeSet<u16> = container["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["containerPort"].as_u64().map(|n| n as u16))
                .collect();
            if declared != listens {
                problems.push(format!(
                    "{name}: declares ports {declared:?}; it listens on {listens:?}"
                ));
            }
            if kind == "Deployment" {
                for probe in ["livenessProbe", "readinessProbe"] {
                    let get = &container[probe]["httpGet"];
                    match container_port(container, &get["port"]) {
                        Some(port) if listens.contains(&port) => {
                            if let Some(flag) = invocation.listener_on(port, &env) {
                                probes.insert(Probe {
                                    name: invocation.name.clone(),
                                    flag,
                                    path: scalar(&get["path"]),
                                });
                            }
                        }
                        other => problems.push(format!(
                            "{name}: {probe} on port {other:?}; it listens on {listens:?}"
                        )),
                    }
                    if !["/healthz", "/readyz"].contains(&get["path"].as_str().unwrap_or("")) {
                        problems.push(format!("{name}: {probe} on {}", get["path"]));
                    }
                }
                let annotated = pod["metadata"]["annotations"]["prometheus.io/port"]
                    .as_str()
                    .and_then(|p| p.parse::<u16>().ok());
                let metrics = invocation.metrics_port(&env);
                if annotated != metrics {
                    problems.push(format!(
                        "{name}: prometheus.io/port {annotated:?}; its metrics are on {metrics:?}"
                    ));
                }
                deployments.insert(name.clone(), (pod.clone(), declared.into_iter().collect()));
            }
            let requests = &container["resources"]["requests"];
            if requests.get("cpu").is_none() || requests.get("memory").is_none() {
                problems.push(format!("{name}: no cpu and memory requests"));
            }

            // Config files: mounted from a ConfigMap that has them.
            for path in invocation.paths() {
                let mount = container["volumeMounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|m| {
                        let at = m["mountPath"].as_str().unwrap_or("/nowhere");
                        path.starts_with(&format!("{at}/"))
                    });
                let cm = mount.and_then(|m| {
                    pod["spec"]["volumes"]
                        .as_array()?
                        .iter()
                        .find(|v| v["name"] == m["name"])?["configMap"]["name"]
                        .as_str()
                });
                let file = Path::new(path).file_name().unwrap().to_string_lossy();
                let has = cm
                    .and_then(|cm| config_maps.get(cm))
                    .is_some_and(|data| data.contains_key(file.as_ref()));
                if !has {
                    problems.push(format!("{name}: uses {path}, which no ConfigMap provides"));
                }
            }
        }
    }

    // A shared ConfigMap holds only variables some container that loads it reads.
    for (cm, users) in &env_from_users {
        let reads = &env_from_reads[cm];
        for var in config_maps[cm].keys() {
            if var.starts_with("ORDERFLOW_")
                && !var.starts_with("ORDERFLOW_KAFKA_")
                && !reads.contains(var)
            {
                problems.push(format!(
                    "ConfigMap {cm} sets {var}, which none of {users:?} reads"
                ));
            }
        }
    }
    let all_envs = binary.all_envs();
    for data in config_maps.values() {
        for var in data.keys().filter(|k| k.starts_with("ORDERFLOW_")) {
            if !var.starts_with("ORDERFLOW_KAFKA_") && !all_envs.contains(var) {
                problems.push(format!("{var} is read by no subcommand"));
            }
        }
    }

    // Services reach a Deployment's declared port; the HPA scales a Deployment.
    for o in objects.iter().filter(|o| o["kind"] == "Service") {
        let name = o["metadata"]["name"].as_str().unwrap_or("?");
        let selector = o["spec"]["selector"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let target = deployments.iter().find(|(_, (pod, _))| {
            selector
                .iter()
                .all(|(k, v)| pod["metadata"]["labels"].get(k) == Some(v))
        });
        let Some((_, (pod, _))) = target else {
            problems.push(format!("Service {name}: selects no Deployment"));
            continue;
        };
        let container = &pod["spec"]["containers"][0];
        for port in o["spec"]["ports"].as_array().into_iter().flatten() {
            let target = port.get("targetPort").unwrap_or(&port["port"]);
            if container_port(container, target).is_none() {
                problems.push(format!(
                    "Service {name}: targetPort {target} is not declared"
                ));
            }
        }
    }
    for o in objects
        .iter()
        .filter(|o| o["kind"] == "HorizontalPodAutoscaler")
    {
        let target = o["spec"]["scaleTargetRef"]["name"].as_str().unwrap_or("?");
        if !deployments.contains_key(target) {
            problems.push(format!(
                "HPA scales {target}, which is not a Deployment here"
            ));
        }
    }
    if !objects
        .iter()
        .any(|o| o["kind"] == "Service" && o["metadata"]["name"] == "orderflow-ingest")
    {
        problems.push("no Service for ingest".into());
    }

    // Every piece runs.
    let stages = &binary.subcommands[&vec!["process".to_string()]].positionals[0];
    let mut wanted: Vec<String> = stages.iter().map(|s| format!("process {s}")).collect();
    wanted.extend(["ingest", "bridge", "topics create", "migrate"].map(String::from));
    for w in &wanted {
        if !runs.contains(w) {
            problems.push(format!("nothing runs `orderflow {w}`"));
        }
    }

    problems.extend(check_probe_paths(&binary, &probes));

    assert!(
        problems.is_empty(),
        "deploy/k8s:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn help_is_parsed_into_options_envs_defaults_and_subcommands() {
    let h = parse_help(
        "Run one stage\n\nUsage: orderflow process [OPTIONS] --brokers <BROKERS> <STAGE>\n\n\
         Arguments:\n  <STAGE>  Which stage [possible values: validation, payment]\n\n\
         Options:\n      --brokers <BROKERS>\n          Bootstrap servers [env: ORDERFLOW_BROKERS=]\n\
         \x20     --metrics <METRICS>\n          Where [env: ORDERFLOW_METRICS=] [default: 0.0.0.0:9464]\n\
         \x20 -h, --help\n          Print help\n",
    );
    assert_eq!(
        h.options["--brokers"].env.as_deref(),
        Some("ORDERFLOW_BROKERS")
    );
    assert_eq!(
        h.options["--metrics"].default.as_deref(),
        Some("0.0.0.0:9464")
    );
    assert!(h.options["--metrics"].takes_value);
    assert!(!h.options["--help"].takes_value);
    assert_eq!(
        h.positionals,
        [BTreeSet::from([
            "validation".to_string(),
            "payment".to_string()
        ])]
    );
    let top = parse_help(
        "A pipeline.\n\nUsage: orderflow <COMMAND>\n\nCommands:\n  run      Run it\n  topics   Manage topics\n  help     Print help\n",
    );
    assert_eq!(
        top.commands,
        BTreeSet::from(["run".to_string(), "topics".to_string()])
    );
    assert_eq!(
        local_url(r#"curl -fsS http://localhost:9464/healthz"#),
        Some((9464, "/healthz".to_string()))
    );
}

/// The shipped Compose file publishes its ports on the host's loopback only (its Redpanda,
/// ScyllaDB and LocalStack have no authentication), and no shipped file signs tokens with a
/// fixed secret: Compose insists on one from the environment, k8s on a Secret of the user's.
#[test]
fn shipped_files_open_no_door_and_fix_no_secret() {
    let compose = &yaml_documents(&root().join("docker-compose.yml"))[0];
    let mut problems = Vec::new();
    for (name, service) in compose["services"].as_object().unwrap() {
        for port in service["ports"].as_array().into_iter().flatten() {
            let port = scalar(port);
            if !port.starts_with("127.0.0.1:") {
                problems.push(format!("{name}: publishes {port} beyond loopback"));
            }
        }
        let env = compose_env(&service["environment"]);
        if let Some(secret) = env.get("ORDERFLOW_JWT_SECRET") {
            if !secret.starts_with("${ORDERFLOW_JWT_SECRET:?") {
                problems.push(format!(
                    "{name}: ORDERFLOW_JWT_SECRET is {secret:?}, not required"
                ));
            }
        }
    }
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let cmd = dockerfile
        .lines()
        .find(|l| l.starts_with("CMD "))
        .expect("a CMD");
    if cmd.contains("--kafka-listen") {
        problems.push(format!("Dockerfile: {cmd} opens the embedded broker"));
    }
    let secret = &yaml_documents(&root().join("deploy/k8s/secret.yaml"))[0];
    let placeholder = secret["stringData"]["secret"].as_str().unwrap();
    let ingest = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args([
            "ingest",
            "--http",
            "127.0.0.1:0",
            "--brokers",
            "127.0.0.1:9",
        ])
        .env_clear()
        .env("ORDERFLOW_JWT_SECRET", placeholder)
        .output()
        .unwrap();
    if ingest.status.success() {
        problems.push("deploy/k8s/secret.yaml: its placeholder starts the API".into());
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
// ---------------------------------------------------------------------------------------------
// Shipped bridge configs
// ---------------------------------------------------------------------------------------------

/// Every `.toml` under `dir`, recursively.
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(toml_files(&path));
        } else if path.extension().is_some_and(|e| e == "toml") {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// A customer who registers must get the verification code, and one whose order is cancelled,
/// shipped or refunded must hear of it, wherever the shipped routing configs are used.
#[test]
fn shipped_bridge_configs_route_every_event_a_customer_hears_of() {
    use orderflow_bridge::{BridgeConfig, EventType};
    let files = toml_files(&root().join("deploy"));
    assert!(
        files.len() >= 2,
        "expected the Compose and k8s bridge configs, found {files:?}"
    );
    let mut problems = Vec::new();
    for file in &files {
        let name = file.strip_prefix(root()).unwrap().display().to_string();
        let config = match BridgeConfig::load(file, []) {
            Ok(config) => config,
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                continue;
            }
        };
        for event in EventType::all().filter(|t| t.notifies()) {
            if !config.routes.iter().any(|r| r.events.contains(&event)) {
                problems.push(format!("{name}: no route for {event}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// deploy/README.md's first order
// ---------------------------------------------------------------------------------------------

/// The README's shell block that logs in and orders (the one that sets `TOKEN`).
fn first_order_commands() -> String {
    let readme = std::fs::read_to_string(root().join("deploy/README.md")).unwrap();
    readme
        .split("```sh\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .find(|block| block.contains("TOKEN=$("))
        .expect("deploy/README.md has a block that logs in")
        .to_string()
}

/// The walkthrough a first user follows on Compose (log in, order with the token, wait for the
/// invoice, download it), run word for word against `orderflow run`: the same HTTP API, with
/// the demo customer its first start creates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_readmes_first_order_works_as_written() {
    for tool in ["bash", "curl", "jq"] {
        if Command::new(tool).arg("--version").output().is_err() {
            eprintln!("SKIPPED: deploy/README.md's walkthrough needs {tool}, which is missing");
            return;
        }
    }
    let commands = first_order_commands();
    assert!(commands.contains("Bearer $TOKEN"), "{commands}");
    let dir = tempfile::tempdir().unwrap();
    let p = common::Pipeline::start(dir.path());
    p.wait_until_ready().await;
    let script = commands.replace("http://localhost:8080", &p.http);
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args(["60", "bash", "-euo", "pipefail", "-c", &script])
            .current_dir(cwd)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the walkthrough failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("MUG-001"), "{stdout}");
    let pdf = std::fs::read(work.path().join("invoice.pdf")).unwrap();
    assert!(pdf.starts_with(b"%PDF"), "invoice.pdf is no PDF");
}
