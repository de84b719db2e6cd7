//! The schema registry: which id a message is framed with, and which schema an id stands for.
//!
//! Each event schema is registered under the TopicNameStrategy subject `<topic>-value`
//! (`orders.accepted-value`, with the deployment's topic prefix in front). The registry gives
//! it an id; messages are framed with that id, and a consumer resolves an id to its writer
//! schema. [`SchemaIds`] holds that mapping for one process: built once at start-up, carried
//! by `KafkaConfig` to the producer (framing) and the consume loop (decoding).
//!
//! - [`SchemaIds::builtin`]: ids 1..11 ([`Event::SCHEMA_ID`](crate::Event::SCHEMA_ID)), used when
//!   no registry is configured. The embedded registry assigns the same ids on a fresh data dir.
//! - [`register_catalogue`]: registers the six schemas with a [`Registry`] — setting each
//!   subject's compatibility level if it has none, checking compatibility first — and returns
//!   the ids the registry gave, plus every older version's id and writer schema, so that
//!   messages written with an earlier version still decode.
//! - [`client::RegistryClient`]: a Confluent-compatible registry over HTTP (Confluent,
//!   Redpanda's built-in one, Karapace, Apicurio's `ccompat` API, `orderflow run`).
//! - [`local::LocalRegistry`]: the registry `orderflow run` keeps in its data dir and serves
//!   on its HTTP listener.

pub mod client;
pub mod local;

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    str::FromStr,
    sync::{Arc, LazyLock},
};

use apache_avro::{schema_compatibility::SchemaCompatibility, Schema};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::{events, topics::TopicKind, Topics};

pub use client::{RegistryAuth, RegistryClient};
pub use local::LocalRegistry;

/// The Confluent content type of registry requests and answers.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// The TopicNameStrategy subject of a topic's values: `<topic>-value`.
pub fn subject(topics: &Topics, kind: TopicKind) -> String {
    format!("{}-value", topics.name(kind))
}

/// A subject's compatibility level: which earlier versions a new schema must stay readable
/// with, and in which direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Compatibility {
    /// The new schema reads data written with the latest version (upgrade consumers first).
    #[default]
    Backward,
    /// … with every earlier version.
    BackwardTransitive,
    /// Data written with the new schema is readable with the latest version.
    Forward,
    ForwardTransitive,
    /// Both directions, against the latest version.
    Full,
    FullTransitive,
    /// No check.
    None,
}

impl Compatibility {
    pub const ALL: [Compatibility; 7] = [
        Compatibility::Backward,
        Compatibility::BackwardTransitive,
        Compatibility::Forward,
        Compatibility::ForwardTransitive,
        Compatibility::Full,
        Compatibility::FullTransitive,
        Compatibility::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Compatibility::Backward => "BACKWARD",
            Compatibility::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Compatibility::Forward => "FORWARD",
            Compatibility::ForwardTransitive => "FORWARD_TRANSITIVE",
            Compatibility::Full => "FULL",
            Compatibility::FullTransitive => "FULL_TRANSITIVE",
            Compatibility::None => "NONE",
        }
    }

    /// Why `new` may not follow the `existing` versions (oldest first) under this level; empty
    /// when it may.
    pub fn violations(self, new: &Schema, existing: &[(u32, Schema)]) -> Vec<String> {
        use Compatibility as C;
        let against = match self {
            C::None => return Vec::new(),
            C::Backward | C::Forward | C::Full => existing.last().into_iter().collect::<Vec<_>>(),
            C::BackwardTransitive | C::ForwardTransitive | C::FullTransitive => {
                existing.iter().collect()
            }
        };
        let backward = matches!(
            self,
            C::Backward | C::BackwardTransitive | C::Full | C::FullTransitive
        );
        let forward = matches!(
            self,
            C::Forward | C::ForwardTransitive | C::Full | C::FullTransitive
        );
        let mut reasons = Vec::new();
        for (version, old) in against {
            if backward {
                if let Err(e) = SchemaCompatibility::can_read(old, new) {
                    reasons.push(format!(
                        "the new schema cannot read data written with version {version}: {e}"
                    ));
                }
            }
            if forward {
                if let Err(e) = SchemaCompatibility::can_read(new, old) {
                    reasons.push(format!(
                        "version {version} cannot read data written with the new schema: {e}"
                    ));
                }
            }
        }
        reasons
    }
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Compatibility {
    type Err = String;

    /// `BACKWARD`, `backward`, `backward-transitive`, `BACKWARD_TRANSITIVE`, …
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_uppercase().replace('-', "_");
        Compatibility::ALL
            .into_iter()
            .find(|c| c.as_str() == wanted)
            .ok_or_else(|| {
                format!(
                    "unknown compatibility level {s:?}; expected one of {}",
                    Compatibility::ALL.map(Compatibility::as_str).join(", ")
                )
            })
    }
}

/// Why talking to a registry failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema registry URL {registry}: {message}")]
    Config { registry: String, message: String },
    #[error("schema registry {registry} cannot be reached: {message}")]
    Unreachable { registry: String, message: String },
    #[error("schema registry {registry} answered {status}{}: {message}", error_code.map(|c| format!(" (error code {c})")).unwrap_or_default())]
    Status {
        registry: String,
        status: u16,
        error_code: Option<i64>,
        message: String,
    },
    #[error("schema for subject {subject} is incompatible with the versions the registry holds: {}", reasons.join("; "))]
    Incompatible {
        subject: String,
        reasons: Vec<String>,
    },
    #[error("schema registry {registry} sent an answer we cannot read: {message}")]
    Invalid { registry: String, message: String },
    #[error("schema for subject {subject}: {message}")]
    Catalogue { subject: String, message: String },
}

impl RegistryError {
    /// Whether trying again can help: the registry is down or overloaded, not saying no.
    pub fn is_retriable(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } => true,
            RegistryError::Status { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            RegistryError::Config { .. }
            | RegistryError::Incompatible { .. }
            | RegistryError::Invalid { .. }
            | RegistryError::Catalogue { .. } => false,
        }
    }
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// One version of a subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub schema: String,
}

/// What [`register_catalogue`] needs from a registry: Confluent's REST API, or the embedded one
/// called in-process.
pub trait Registry: Send + Sync {
    /// The subject's own compatibility level; `None` when it has none set (the registry's global
    /// level applies).
    fn compatibility(
        &self,
        subject: &str,
    ) -> impl Future<Output = Result<Option<Compatibility>>> + Send;
    fn set_compatibility(
        &self,
        subject: &str,
        level: Compatibility,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Why `schema` may not be registered under `subject` as it stands; empty when it may (also
    /// when the subject does not exist yet).
    fn check(
        &self,
        subject: &str,
        schema: &str,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Registers `schema` under `subject` (the same schema again: its existing id); its id.
    fn register(&self, subject: &str, schema: &str) -> impl Future<Output = Result<u32>> + Send;
    /// Every version of `subject`, oldest first; empty when the subject does not exist.
    fn versions(&self, subject: &str) -> impl Future<Output = Result<Vec<SubjectVersion>>> + Send;
}

/// A schema's JSON with formatting and key order normalised, to compare two texts of one schema.
pub fn normalize(schema: &str) -> Option<String> {
    fn sort(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sort(v))).collect())
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.into_iter().map(sort).collect())
            }
            other => other,
        }
    }
    serde_json::from_str::<serde_json::Value>(schema)
        .ok()
        .map(|v| sort(v).to_string())
}

/// Registers one schema under `subject`: if the subject has no compatibility level of its own,
/// sets `level`; if this exact schema is already a version, takes its id without a check;
/// otherwise checks compatibility (failing with the registry's reasons) and registers. Returns
/// the schema's id and every version of the subject.
pub async fn register_schema(
    registry: &impl Registry,
    subject: &str,
    schema: &str,
    level: Compatibility,
) -> Result<(u32, Vec<SubjectVersion>)> {
    if registry.compatibility(subject).await?.is_none() {
        registry.set_compatibility(subject, level).await?;
    }
    let wanted = normalize(schema);
    let mut versions = registry.versions(subject).await?;
    if let Some(existing) = versions
        .iter()
        .find(|v| wanted.is_some() && normalize(&v.schema) == wanted)
    {
        return Ok((existing.id, versions));
    }
    let reasons = registry.check(subject, schema).await?;
    if !reasons.is_empty() {
        return Err(RegistryError::Incompatible {
            subject: subject.to_string(),
            reasons,
        });
    }
    let id = registry.register(subject, schema).await?;
    if !versions.iter().any(|v| v.id == id) {
        versions = registry.versions(subject).await?;
    }
    Ok((id, versions))
}

/// Registers every event schema under its topic's subject (see [`register_schema`]) and returns
/// the ids to frame with, and every older version's writer schema to decode with.
pub async fn register_catalogue(
    registry: &impl Registry,
    topics: &Topics,
    level: Compatibility,
) -> Result<SchemaIds> {
    let mut found = Vec::new();
    for (_, _, kind, text) in events::catalogue() {
        let subject = subject(topics, kind);
        let (id, versions) = register_schema(registry, &subject, text, level).await?;
        found.push((kind, id, versions));
    }
    catalogue_ids(found)
}

/// The ids a registry already holds for this build's schemas, without registering anything
/// (for a reader such as `orderflow load`): fails for a subject that has no version equal to
/// this build's schema.
pub async fn lookup_catalogue(registry: &impl Registry, topics: &Topics) -> Result<SchemaIds> {
    let mut found = Vec::new();
    for (_, _, kind, text) in events::catalogue() {
        let subject = subject(topics, kind);
        let wanted = normalize(text);
        let versions = registry.versions(&subject).await?;
        let Some(id) = versions
            .iter()
            .find(|v| normalize(&v.schema) == wanted)
            .map(|v| v.id)
        else {
            return Err(RegistryError::Catalogue {
                subject,
                message: "the registry has no version equal to this build's schema".into(),
            });
        };
        found.push((kind, id, versions));
    }
    catalogue_ids(found)
}

/// The ids from each event type's current id and its subject's versions.
fn catalogue_ids(found: Vec<(TopicKind, u32, Vec<SubjectVersion>)>) -> Result<SchemaIds> {
    let mut current = Vec::new();
    let mut older = Vec::new();
    for (kind, id, versions) in found {
        current.push((kind, id));
        for v in versions.into_iter().filter(|v| v.id != id) {
            match Schema::parse_str(&v.schema) {
                Ok(schema) => older.push((v.id, kind, schema)),
                Err(e) => warn!(subject = %v.subject, version = v.version, id = v.id, error = %e,
                                "Skipping a version that is not an Avro schema."),
            }
        }
    }
    SchemaIds::new(current, older).map_err(|message| RegistryError::Catalogue {
        subject: "(every event subject)".into(),
        message,
    })
}

/// An id's event type and, for an older version, the schema its data was written with.
#[derive(Debug, Clone)]
struct Writer {
    kind: TopicKind,
    /// `None`: the event type's current schema.
    schema: Option<Schema>,
}

/// The schema ids of one process: which id each event type is framed with, and which event
/// type (and writer schema) each known id stands for. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SchemaIds(Arc<Ids>);

#[derive(Debug, Clone)]
struct Ids {
    current: HashMap<TopicKind, u32>,
    by_id: HashMap<u32, Writer>,
}

impl SchemaIds {
    /// The built-in ids, 1..11, for when no registry is configured.
    pub fn builtin() -> SchemaIds {
        static BUILTIN: LazyLock<SchemaIds> = LazyLock::new(|| {
            SchemaIds::new(events::catalogue().map(|(_, id, kind, _)| (kind, id)), [])
                .expect("the built-in ids are distinct")
        });
        BUILTIN.clone()
    }

    /// Ids for the current schemas (every event type exactly once, distinct ids) and for older
    /// versions: `(id, event type, writer schema)`.
    pub fn new(
        current: impl IntoIterator<Item = (TopicKind, u32)>,
        older: impl IntoIterator<Item = (u32, TopicKind, Schema)>,
    ) -> std::result::Result<SchemaIds, String> {
        let mut ids = Ids {
            current: HashMap::new(),
            by_id: HashMap::new(),
        };
        for (kind, id) in current {
            if kind.spec().schema.is_none() {
                return Err(format!("{} has no schema", kind.spec().base_name));
            }
            if ids.current.insert(kind, id).is_some() {
                return Err(format!("{} given twice", kind.spec().base_name));
            }
            if let Some(other) = ids.by_id.insert(id, Writer { kind, schema: None }) {
                return Err(format!(
                    "id {id} given to both {} and {}",
                    other.kind.spec().base_name,
                    kind.spec().base_name
                ));
            }
        }
        for (_, _, kind, _) in events::catalogue() {
            if !ids.current.contains_key(&kind) {
                return Err(format!("no id for {}", kind.spec().base_name));
            }
        }
        for (id, kind, schema) in older {
            match ids.by_id.get(&id) {
                Some(w) if w.kind == kind => continue,
                Some(w) => {
                    return Err(format!(
                        "id {id} stands for both {} and {}",
                        w.kind.spec().base_name,
                        kind.spec().base_name
                    ))
                }
                None => {
                    ids.by_id.insert(
                        id,
                        Writer {
                            kind,
                            schema: Some(schema),
                        },
                    );
                }
            }
        }
        Ok(SchemaIds(Arc::new(ids)))
    }

    /// The id events of `kind` are framed with.
    pub fn id(&self, kind: TopicKind) -> Option<u32> {
        self.0.current.get(&kind).copied()
    }

    /// The event type an id stands for, and the schema its data was written with when that is
    /// an older version (`None`: the current one).
    pub fn resolve(&self, id: u32) -> Option<(TopicKind, Option<&Schema>)> {
        self.0.by_id.get(&id).map(|w| (w.kind, w.schema.as_ref()))
    }

    /// These ids plus an older (or newer) version of `kind`'s schema learnt since (an id
    /// already known is left as it is).
    pub fn with_version(&self, id: u32, kind: TopicKind, schema: Schema) -> SchemaIds {
        if self.0.by_id.contains_key(&id) || kind.spec().schema.is_none() {
            return self.clone();
        }
        let mut ids = Ids::clone(&self.0);
        ids.by_id.insert(
            id,
            Writer {
                kind,
                schema: Some(schema),
            },
        );
        SchemaIds(Arc::new(ids))
    }

    /// Every event type's current id, in catalogue order.
    pub fn current(&self) -> Vec<(TopicKind, u32)> {
        events::catalogue()
            .into_iter()
            .filter_map(|(_, _, kind, _)| self.id(kind).map(|id| (kind, id)))
            .collect()
    }
}

impl Default for SchemaIds {
    fn default() -> Self {
        SchemaIds::builtin()
    }
}

impl PartialEq for SchemaIds {
    /// Equal when they frame every event type with the same id.
    fn eq(&self, other: &Self) -> bool {
        self.0.current == other.0.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event, OrderAccepted};

    #[test]
    fn subjects_follow_the_topic_name_strategy() {
        assert_eq!(
            subject(&Topics::default(), TopicKind::OrdersAccepted),
            "orders.accepted-value"
        );
        assert_eq!(
            subject(&Topics::new("t1."), TopicKind::PaymentFailed),
            "t1.orders.payment-failed-value"
        );
    }

    #[test]
    fn compatibility_levels_parse_in_either_spelling() {
        for c in Compatibility::ALL {
            assert_eq!(c.as_str().parse::<Compatibility>(), Ok(c));
            assert_eq!(c.as_str().to_lowercase().replace('_', "-").parse(), Ok(c));
        }
        let err = "sideways".parse::<Compatibility>().unwrap_err();
        assert!(err.contains("BACKWARD_TRANSITIVE"), "{err}");
    }

    #[test]
    fn builtin_ids_are_the_event_constants() {
        let ids = SchemaIds::builtin();
        assert_eq!(
            ids.id(TopicKind::OrdersAccepted),
            Some(OrderAccepted::SCHEMA_ID)
        );
        assert_eq!(ids.id(TopicKind::DeadLetter), None);
        assert_eq!(ids.current().len(), events::catalogue().len());
        for (kind, id) in ids.current() {
            assert_eq!(ids.resolve(id).map(|r| r.0), Some(kind));
        }
        assert!(ids.resolve(events::catalogue().len() as u32 + 1).is_none());
    }

    #[test]
    fn ids_must_cover_every_event_once_and_be_distinct() {
        let mut current: Vec<_> = SchemaIds::builtin().current();
        let err = SchemaIds::new(current[..5].to_vec(), []).unwrap_err();
        assert!(err.contains("no id for orders.invoiced"), "{err}");
        current[1].1 = current[0].1;
        let err = SchemaIds::new(current.clone(), []).unwrap_err();
        assert!(err.contains("id 1 given to both"), "{err}");
        current[1].1 = 2;
        let err = SchemaIds::new(
            current.clone(),
            [(1, TopicKind::OrdersPaid, OrderAccepted::schema().clone())],
        )
        .unwrap_err();
        assert!(err.contains("id 1 stands for both"), "{err}");
        let ids = SchemaIds::new(
            current,
            [(
                40,
                TopicKind::OrdersAccepted,
                OrderAccepted::schema().clone(),
            )],
        )
        .unwrap();
        assert!(matches!(
            ids.resolve(40),
            Some((TopicKind::OrdersAccepted, Some(_)))
        ));
        assert!(matches!(
            ids.resolve(1),
            Some((TopicKind::OrdersAccepted, None))
        ));
        let schema = OrderAccepted::schema().clone();
        let learnt = ids.with_version(41, TopicKind::OrdersPaid, schema.clone());
        assert!(matches!(
            learnt.resolve(41),
            Some((TopicKind::OrdersPaid, Some(_)))
        ));
        assert!(ids.resolve(41).is_none());
        let unchanged = learnt.with_version(1, TopicKind::OrdersPaid, schema);
        assert!(matches!(
            unchanged.resolve(1),
            Some((TopicKind::OrdersAccepted, None))
        ));
    }

    fn record(fields: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type": "record", "name": "R", "fields": [{fields}]}}"#
        ))
        .unwrap()
    }

    #[test]
    fn compatibility_levels_check_the_right_direction() {
        let v1 = record(r#"{"name": "a", "type": "string"}"#);
        let added_with_default = record(
            r#"{"name": "a", "type": "string"}, {"name": "b", "type": "int", "default": 0}"#,
        );
        let added_without_default =
            record(r#"{"name": "a", "type": "string"}, {"name": "b", "type": "int"}"#);
        let existing = [(1, v1.clone())];
        use Compatibility as C;
        assert!(C::Backward
            .violations(&added_with_default, &existing)
            .is_empty());
        let reasons = C::Backward.violations(&added_without_default, &existing);
        assert_eq!(reasons.len(), 1);
        assert!(
            reasons[0].contains("version 1") && reasons[0].contains("'b'"),
            "{reasons:?}"
        );
        // Old readers ignore the new field: forward compatible either way.
        assert!(C::Forward
            .violations(&added_without_default, &existing)
            .is_empty());
        assert_eq!(
            C::Full.violations(&added_without_default, &existing).len(),
            1
        );
        assert!(C::None
            .violations(&added_without_default, &existing)
            .is_empty());
        // Removing a field without a default breaks forward compatibility.
        let removed = record(r#"{"name": "b", "type": "int", "default": 0}"#);
        let existing = [(1, v1), (2, added_with_default)];
        assert!(C::Backward.violations(&removed, &existing).is_empty());
        assert_eq!(C::Forward.violations(&removed, &existing).len(), 1);
        // Transitive levels look at every version, the others at the latest only.
        let needs_b = record(r#"{"name": "b", "type": "int"}"#);
        assert!(C::Backward.violations(&needs_b, &existing).is_empty());
        assert_eq!(
            C::BackwardTransitive.violations(&needs_b, &existing).len(),
            1
        );
    }

    #[test]
    fn normalized_schemas_ignore_formatting_and_key_order() {
        assert_eq!(
            normalize(r#"{"type": "string", "doc": "x"}"#),
            normalize("{\"doc\":\"x\",\n \"type\":\"string\"}")
        );
        assert_ne!(
            normalize(r#"{"type": "int"}"#),
            normalize(r#"{"type": "long"}"#)
        );
        assert_eq!(normalize("not json"), None);
    }
}
