//! The routing config: which sinks exist and which event types go to which of them, with what
//! mapping. A TOML file (`--bridge-config`, `ORDERFLOW_BRIDGE_CONFIG`), every field of which an
//! environment variable can set: `ORDERFLOW_BRIDGE__<PATH>`, the path's parts separated by
//! `__` (`ORDERFLOW_BRIDGE__SINKS__HOOK__SECRET=…`, `ORDERFLOW_BRIDGE__PROVISION=true`).
//!
//! ```toml
//! provision = false          # create missing queues and the sender identity at start
//!
//! [aws]                      # optional; the standard AWS chain and AWS_ENDPOINT_URL apply
//! region = "us-east-1"
//!
//! [sinks.created]            # a sink: its name, then `type` and the type's fields
//! type = "sqs"
//! queue_name = "orders-created"
//!
//! [[routes]]                 # event types → sinks
//! events = ["order_accepted"]
//! sinks = ["created"]
//! mapping = "event"          # or "notification"; default by sink type
//! ```
//!
//! Sink types, each in its folder with its config: `log`, `file`, `sqs`, `ses`, `webhook`. A new
//! sink is a folder and one line in [`SinkConfig`] and [`SinkConfig::build`].

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
};

use aws_config::SdkConfig;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::{
    aws::AwsConfig, file::FileConfig, log::LogConfig, ses::SesConfig, sqs::SqsConfig,
    webhook::WebhookConfig, EventType, Mapping, Sink,
};

/// The prefix of environment variables that set config fields.
pub const ENV_PREFIX: &str = "ORDERFLOW_BRIDGE__";

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("bridge config {path}: {message}")]
    File { path: String, message: String },
    #[error("bridge config: {0}")]
    Invalid(String),
    #[error("sink {name}: {message}")]
    Sink { name: String, message: String },
}

impl ConfigError {
    pub fn sink(name: &str, message: impl std::fmt::Display) -> Self {
        ConfigError::Sink {
            name: name.to_string(),
            message: message.to_string(),
        }
    }
}

/// The whole routing config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    /// Create missing SQS queues and the SES sender identity at start (in production they are
    /// provisioned outside; `--provision-sinks` sets it too).
    pub provision: bool,
    /// AWS settings shared by the AWS sinks.
    pub aws: AwsConfig,
    /// The sinks, by name (the name keys the delivered-markers: keep it stable).
    pub sinks: BTreeMap<String, SinkConfig>,
    /// What goes where.
    pub routes: Vec<RouteConfig>,
}

impl Default for BridgeConfig {
    /// Without a config: every customer notification to `<data dir>/notifications.jsonl`.
    /// Each sink costs a consumer of its own and a sent-marker per event, so the default has one;
    /// a config routes to the log sink too (`type = "log"`) for a line per notification.
    fn default() -> Self {
        BridgeConfig {
            provision: false,
            aws: AwsConfig::default(),
            sinks: BTreeMap::from([("file".to_string(), SinkConfig::File(FileConfig::default()))]),
            routes: vec![RouteConfig {
                events: EventType::all().filter(|t| t.notifies()).collect(),
                sinks: vec!["file".into()],
                mapping: None,
            }],
        }
    }
}

/// One sink: `type` picks the kind, the other fields are that kind's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkConfig {
    Log(LogConfig),
    File(FileConfig),
    Sqs(SqsConfig),
    Ses(SesConfig),
    Webhook(WebhookConfig),
}

/// Event types → sinks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Event types: `order_accepted`, `order_validated`, `order_rejected`, `order_paid`,
    /// `payment_failed`, `order_invoiced`, `account_verification`.
    pub events: Vec<EventType>,
    /// Sink names.
    pub sinks: Vec<String>,
    /// `event` (the event as JSON) or `notification` (the customer notification). Default:
    /// `notification` for `ses`, `log` and `file`, `event` for `sqs` and `webhook`.
    #[serde(default)]
    pub mapping: Option<Mapping>,
}

impl SinkConfig {
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkConfig::Log(_) => "log",
            SinkConfig::File(_) => "file",
            SinkConfig::Sqs(_) => "sqs",
            SinkConfig::Ses(_) => "ses",
            SinkConfig::Webhook(_) => "webhook",
        }
    }

    /// The mapping a route uses unless it names one.
    pub fn default_mapping(&self) -> Mapping {
        match self {
            SinkConfig::Sqs(_) | SinkConfig::Webhook(_) => Mapping::Event,
            SinkConfig::Log(_) | SinkConfig::File(_) | SinkConfig::Ses(_) => Mapping::Notification,
        }
    }

    pub fn max_in_flight(&self) -> usize {
        match self {
            SinkConfig::Log(c) => c.max_in_flight,
            SinkConfig::File(c) => c.max_in_flight,
            SinkConfig::Sqs(c) => c.max_in_flight,
            SinkConfig::Ses(c) => c.max_in_flight,
            SinkConfig::Webhook(c) => c.max_in_flight,
        }
        .max(1)
    }

    /// Builds the sink: the one place where sink types are registered.
    pub async fn build(
        &self,
        name: &str,
        ctx: &BuildContext,
    ) -> Result<Arc<dyn Sink>, ConfigError> {
        Ok(match self {
            SinkConfig::Log(c) => Arc::new(c.build(name)),
            SinkConfig::File(c) => Arc::new(
                c.build(name, &ctx.data_dir)
                    .map_err(|e| ConfigError::sink(name, e))?,
            ),
            SinkConfig::Sqs(c) => Arc::new(c.build(name, ctx).await?),
            SinkConfig::Ses(c) => Arc::new(c.build(name, ctx).await?),
            SinkConfig::Webhook(c) => Arc::new(c.build(name)?),
        })
    }
}

/// What building sinks needs from the process.
pub struct BuildContext {
    /// Where file sinks write relative paths.
    pub data_dir: PathBuf,
    /// Create missing queues and identities.
    pub provision: bool,
    aws_config: AwsConfig,
    sdk: OnceCell<SdkConfig>,
}

impl BuildContext {
    pub fn new(data_dir: &Path, provision: bool, aws: AwsConfig) -> Self {
        BuildContext {
            data_dir: data_dir.to_path_buf(),
            provision,
            aws_config: aws,
            sdk: OnceCell::new(),
        }
    }

    /// Uses this SDK configuration for the AWS sinks instead of loading one (tests, embedding).
    pub fn with_sdk_config(self, sdk: SdkConfig) -> Self {
        BuildContext {
            sdk: OnceCell::new_with(Some(sdk)),
            ..self
        }
    }

    /// The AWS SDK configuration, loaded on first use.
    pub async fn aws(&self) -> Result<&SdkConfig, ConfigError> {
        let sdk = self.sdk.get_or_init(|| self.aws_config.load()).await;
        if sdk.region().is_none() {
            return Err(ConfigError::Invalid(
                "no AWS region: set AWS_REGION or [aws] region".into(),
            ));
        }
        Ok(sdk)
    }
}

impl BridgeConfig {
    /// Reads a TOML file, then applies `ORDERFLOW_BRIDGE__*` from `env`.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<BridgeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(&text, env).map_err(|e| match e {
            ConfigError::Invalid(message) => ConfigError::File {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses TOML text, then applies `ORDERFLOW_BRIDGE__*` from `env`, then checks it.
    pub fn parse(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<BridgeConfig, ConfigError> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Self::from_table(table, env)
    }

    /// The default config (notifications to the log and the file), with `ORDERFLOW_BRIDGE__*`
    /// from `env` applied.
    pub fn default_with_env(
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<BridgeConfig, ConfigError> {
        let table = toml::Table::try_from(BridgeConfig::default())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Self::from_table(table, env)
    }

    fn from_table(
        mut table: toml::Table,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<BridgeConfig, ConfigError> {
        for (key, value) in env {
            let Some(path) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
            set_path(&mut table, &path, &value)
                .map_err(|e| ConfigError::Invalid(format!("{key}: {e}")))?;
        }
        let config: BridgeConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks that routes name existing sinks, that notification-only sinks get only events
    /// that notify, and that no event goes to one sink twice.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.routes.is_empty() {
            return Err(ConfigError::Invalid("no routes".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for route in &self.routes {
            if route.events.is_empty() || route.sinks.is_empty() {
                return Err(ConfigError::Invalid(
                    "every route needs at least one event type and one sink".into(),
                ));
            }
            for sink_name in &route.sinks {
                let sink = self.sinks.get(sink_name).ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "a route names sink {sink_name}, which is not in [sinks]"
                    ))
                })?;
                let mapping = route.mapping.unwrap_or_else(|| sink.default_mapping());
                for event in &route.events {
                    let notification_only = matches!(sink, SinkConfig::Ses(_));
                    if (mapping == Mapping::Notification || notification_only) && !event.notifies()
                    {
                        return Err(ConfigError::Invalid(format!(
                            "route {event} → {sink_name}: {event} events become no customer \
                             notification; use mapping = \"event\"{}",
                            if notification_only {
                                " with a sink that is not ses"
                            } else {
                                ""
                            }
                        )));
                    }
                    if !seen.insert((*event, sink_name.clone())) {
                        return Err(ConfigError::Invalid(format!(
                            "{event} goes to sink {sink_name} twice"
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Sets `path` in a TOML table to `raw`, read as a TOML value when it is one (`true`, `5`,
/// `["a"]`) and as a string otherwise.
fn set_path(table: &mut toml::Table, path: &[String], raw: &str) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty path")?;
    let mut at = table;
    for part in parents {
        let entry = at
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = entry
            .as_table_mut()
            .ok_or_else(|| format!("{part} is not a table"))?;
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    at.insert(last.clone(), value);
    Ok(())
}

/// The sinks and routes of a config, built.
pub struct Routing {
    /// Each sink with its in-flight bound.
    pub sinks: Vec<SinkSlot>,
    /// For each event type, which sinks (indices into `sinks`) get it, with what mapping.
    pub routes: HashMap<EventType, Vec<(usize, Mapping)>>,
}

/// A sink and the bound on its in-flight deliveries.
pub struct SinkSlot {
    pub sink: Arc<dyn Sink>,
    pub permits: tokio::sync::Semaphore,
}

impl Routing {
    /// Builds every sink that a route uses.
    pub async fn build(config: &BridgeConfig, ctx: &BuildContext) -> Result<Routing, ConfigError> {
        config.validate()?;
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut sinks = Vec::new();
        let mut routes: HashMap<EventType, Vec<(usize, Mapping)>> = HashMap::new();
        for route in &config.routes {
            for name in &route.sinks {
                let sink_config = &config.sinks[name];
                let i = match index.get(name.as_str()) {
                    Some(&i) => i,
                    None => {
                        let sink = sink_config.build(name, ctx).await?;
                        sinks.push(SinkSlot {
                            sink,
                            permits: tokio::sync::Semaphore::new(sink_config.max_in_flight()),
                        });
                        index.insert(name, sinks.len() - 1);
                        sinks.len() - 1
                    }
                };
                let mapping = route
                    .mapping
                    .unwrap_or_else(|| sink_config.default_mapping());
                for event in &route.events {
                    routes.entry(*event).or_default().push((i, mapping));
                }
            }
        }
        Ok(Routing { sinks, routes })
    }

    /// Routing over sinks built elsewhere: every event type that notifies goes to each of them
    /// as a notification (tests, benches).
    pub fn notifications_to(sinks: Vec<Arc<dyn Sink>>) -> Routing {
        let slots: Vec<SinkSlot> = sinks
            .into_iter()
            .map(|sink| SinkSlot {
                sink,
                permits: tokio::sync::Semaphore::new(1024),
            })
            .collect();
        let targets: Vec<(usize, Mapping)> = (0..slots.len())
            .map(|i| (i, Mapping::Notification))
            .collect();
        Routing {
            sinks: slots,
            routes: EventType::all()
                .filter(|t| t.notifies())
                .map(|t| (t, targets.clone()))
                .collect(),
        }
    }

    /// The topics the bridge must read: those of the routed event types.
    pub fn inputs(&self) -> Vec<orderflow_schemas::TopicKind> {
        let mut types: Vec<EventType> = self.routes.keys().copied().collect();
        types.sort();
        types.into_iter().map(EventType::topic).collect()
    }

    /// The topics sink number `sink` reads: those of the event types routed to it.
    pub fn inputs_of(&self, sink: usize) -> Vec<orderflow_schemas::TopicKind> {
        let mut types: Vec<EventType> = self
            .routes
            .iter()
            .filter(|(_, targets)| targets.iter().any(|(i, _)| *i == sink))
            .map(|(t, _)| *t)
            .collect();
        types.sort();
        types.into_iter().map(EventType::topic).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        provision = true
        [aws]
        region = "eu-west-1"
        [sinks.created]
        type = "sqs"
        queue_name = "created"
        [sinks.paid]
        type = "sqs"
        queue_name = "paid.fifo"
        group_by = "customer_id"
        [sinks.email]
        type = "ses"
        from = "Shop <orders@shop.example>"
        [sinks.hook]
        type = "webhook"
        url = "http://127.0.0.1:1/hook"
        [[routes]]
        events = ["order_accepted"]
        sinks = ["created", "hook"]
        [[routes]]
        events = ["order_paid"]
        sinks = ["paid"]
        [[routes]]
        events = ["order_validated", "order_invoiced"]
        sinks = ["email"]
    "#;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_config_names_sinks_and_routes_and_env_sets_any_field() {
        let c = BridgeConfig::parse(
            EXAMPLE,
            env(&[
                ("ORDERFLOW_BRIDGE__SINKS__HOOK__SECRET", "s3cret"),
                ("ORDERFLOW_BRIDGE__SINKS__CREATED__MAX_IN_FLIGHT", "7"),
                ("ORDERFLOW_BRIDGE__PROVISION", "false"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert!(!c.provision);
        assert_eq!(c.aws.region.as_deref(), Some("eu-west-1"));
        let SinkConfig::Webhook(hook) = &c.sinks["hook"] else {
            panic!("hook is a webhook")
        };
        assert_eq!(hook.secret, "s3cret");
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "Debug hides the secret"
        );
        let SinkConfig::Sqs(created) = &c.sinks["created"] else {
            panic!("created is sqs")
        };
        assert_eq!(created.max_in_flight, 7);
        let SinkConfig::Sqs(paid) = &c.sinks["paid"] else {
            panic!("paid is sqs")
        };
        assert!(paid.is_fifo());
        assert_eq!(paid.group_by, crate::sqs::GroupBy::CustomerId);
    }

    #[test]
    fn mistakes_are_named() {
        let unknown_field = EXAMPLE.replace("group_by", "group_bi");
        let e = BridgeConfig::parse(&unknown_field, [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("group_bi"), "{e}");

        let unknown_sink = EXAMPLE.replace(r#"sinks = ["paid"]"#, r#"sinks = ["nope"]"#);
        let e = BridgeConfig::parse(&unknown_sink, [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");

        let unknown_event = EXAMPLE.replace("order_paid", "order_payed");
        let e = BridgeConfig::parse(&unknown_event, [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("order_payed"), "{e}");

        let email_for_accepted = EXAMPLE.replace(
            r#"["order_validated", "order_invoiced"]"#,
            r#"["order_accepted"]"#,
        );
        let e = BridgeConfig::parse(&email_for_accepted, [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("order_accepted"), "{e}");

        let unknown_type = EXAMPLE.replace(r#"type = "webhook""#, r#"type = "pigeon""#);
        assert!(BridgeConfig::parse(&unknown_type, []).is_err());
    }

    #[test]
    fn the_default_sends_every_notification_to_the_file() {
        let c = BridgeConfig::default();
        c.validate().unwrap();
        assert_eq!(c.sinks.keys().collect::<Vec<_>>(), ["file"]);
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].sinks, ["file"]);
        assert_eq!(BridgeConfig::default_with_env([]).unwrap(), c);
        let moved = BridgeConfig::default_with_env(env(&[(
            "ORDERFLOW_BRIDGE__SINKS__FILE__PATH",
            "out/n.jsonl",
        )]))
        .unwrap();
        let SinkConfig::File(file) = &moved.sinks["file"] else {
            panic!("file is a file sink")
        };
        assert_eq!(file.path.as_deref(), Some(Path::new("out/n.jsonl")));
        let routing = Routing::notifications_to(vec![]);
        let mut types: Vec<_> = routing.routes.keys().copied().collect();
        types.sort();
        assert_eq!(types, c.routes[0].events);
    }

    #[test]
    fn the_shipped_aws_local_config_is_valid() {
        let text = include_str!("../../deploy/bridge/aws-local.toml");
        let c = BridgeConfig::parse(text, []).unwrap();
        assert!(c.provision);
        assert!(c.sinks.values().any(|s| matches!(s, SinkConfig::Ses(_))));
    }
}
