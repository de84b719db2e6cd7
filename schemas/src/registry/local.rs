//! The registry `orderflow run` keeps for itself: subjects, versions and ids in a small JSON file
//! in the data dir (so that ids stay what the broker's log was framed with across restarts),
//! with Confluent's semantics — global ids, the same schema keeps its id, a new version must
//! pass the subject's compatibility level — and Confluent's error codes, which the HTTP
//! endpoints (`orderflow_ingest::schema_registry`) pass on.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Mutex,
};

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use super::{normalize, Compatibility, Registry, RegistryError, SubjectVersion};

/// Why the embedded registry said no, with Confluent's error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalError {
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    #[error("Version {1} not found for subject '{0}'.")]
    VersionNotFound(String, String),
    #[error("Schema {0} not found.")]
    SchemaNotFound(String),
    #[error("Subject '{0}' does not have subject-level compatibility configured.")]
    NoSubjectCompatibility(String),
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    #[error("The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\"")]
    InvalidVersion(String),
    #[error("Invalid compatibility level: {0}")]
    InvalidCompatibility(String),
    #[error("Schema being registered is incompatible with an earlier schema for subject '{subject}': {}", reasons.join("; "))]
    Incompatible {
        subject: String,
        reasons: Vec<String>,
    },
    #[error("Error in the backend data store: {0}")]
    Storage(String),
    #[error("{0}")]
    LimitReached(String),
}

/// Most schemas the registry keeps (each distinct schema once, whatever its subjects).
pub const MAX_SCHEMAS: usize = 1_000;
/// Most subjects.
pub const MAX_SUBJECTS: usize = 1_000;
/// Most versions of one subject.
pub const MAX_VERSIONS: usize = 100;
/// Longest schema text, in bytes.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;

impl LocalError {
    /// Confluent's `error_code`: the HTTP status and a detail.
    pub fn error_code(&self) -> u32 {
        match self {
            LocalError::SubjectNotFound(_) => 40401,
            LocalError::VersionNotFound(..) => 40402,
            LocalError::SchemaNotFound(_) => 40403,
            LocalError::NoSubjectCompatibility(_) => 40408,
            LocalError::Incompatible { .. } => 409,
            LocalError::InvalidSchema(_) => 42201,
            LocalError::InvalidVersion(_) => 42202,
            LocalError::InvalidCompatibility(_) => 42203,
            LocalError::Storage(_) => 50001,
            LocalError::LimitReached(_) => 42205,
        }
    }

    /// The HTTP status Confluent answers with.
    pub fn status(&self) -> u16 {
        match self.error_code() {
            409 => 409,
            code => (code / 100) as u16,
        }
    }
}

/// Which version of a subject: a number or `latest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionRef {
    Number(u32),
    Latest,
}

impl VersionRef {
    /// `latest`, `-1` (Confluent's alias of latest) or a version number from 1.
    pub fn parse(s: &str) -> Result<VersionRef, LocalError> {
        match s {
            "latest" | "-1" => Ok(VersionRef::Latest),
            _ => match s.parse::<u32>() {
                Ok(n) if n >= 1 && n <= i32::MAX as u32 => Ok(VersionRef::Number(n)),
                _ => Err(LocalError::InvalidVersion(s.to_string())),
            },
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct State {
    /// The global compatibility level.
    compatibility: Compatibility,
    /// Every schema text, the id being the index + 1.
    schemas: Vec<String>,
    subjects: BTreeMap<String, SubjectState>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct SubjectState {
    /// The subject's own level, if set.
    compatibility: Option<Compatibility>,
    /// The schema id of each version, the version being the index + 1.
    versions: Vec<u32>,
}

/// A Confluent-compatible schema registry in memory, saved to a JSON file on every change.
#[derive(Debug)]
pub struct LocalRegistry {
    path: Option<PathBuf>,
    state: Mutex<State>,
}

impl LocalRegistry {
    /// The file's name in the data dir.
    pub const FILE: &'static str = "schema-registry.json";

    /// A registry that lives only as long as the value.
    pub fn in_memory() -> LocalRegistry {
        LocalRegistry {
            path: None,
            state: Mutex::new(State::default()),
        }
    }

    /// Opens (or starts) the registry saved at `path`.
    pub fn open(path: &Path) -> Result<LocalRegistry, LocalError> {
        let state = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                LocalError::Storage(format!(
                    "{} is not a schema registry file: {e}",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => {
                return Err(LocalError::Storage(format!(
                    "reading {}: {e}",
                    path.display()
                )))
            }
        };
        Ok(LocalRegistry {
            path: Some(path.to_path_buf()),
            state: Mutex::new(state),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as it was before the change (changes
        // are made after every check), so the poison flag carries no information.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the state next to the file and renames it over, so a crash leaves either version.
    fn save(&self, state: &State) -> Result<(), LocalError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let storage =
            |e: std::io::Error| LocalError::Storage(format!("writing {}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(storage)?;
        }
        let json =
            serde_json::to_vec_pretty(state).map_err(|e| LocalError::Storage(e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json).map_err(storage)?;
        std::fs::rename(&tmp, path).map_err(storage)
    }

    /// The schema with this id.
    pub fn schema(&self, id: u32) -> Result<String, LocalError> {
        let state = self.state();
        id.checked_sub(1)
            .and_then(|i| state.schemas.get(i as usize))
            .cloned()
            .ok_or_else(|| LocalError::SchemaNotFound(id.to_string()))
    }

    /// Every (subject, version) that has the schema with this id.
    pub fn subject_versions_of(&self, id: u32) -> Result<Vec<(String, u32)>, LocalError> {
        self.schema(id)?;
        let state = self.state();
        Ok(state
            .subjects
            .iter()
            .flat_map(|(subject, s)| {
                s.versions
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| **v == id)
                    .map(|(i, _)| (subject.clone(), i as u32 + 1))
            })
            .collect())
    }

    /// Every subject with at least one version, sorted.
    pub fn subjects(&self) -> Vec<String> {
        let state = self.state();
        state
            .subjects
            .iter()
            .filter(|(_, s)| !s.versions.is_empty())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The version numbers of a subject.
    pub fn versions(&self, subject: &str) -> Result<Vec<u32>, LocalError> {
        let state = self.state();
        match state.subjects.get(subject) {
            Some(s) if !s.versions.is_empty() => Ok((1..=s.versions.len() as u32).collect()),
            _ => Err(LocalError::SubjectNotFound(subject.to_string())),
        }
    }

    /// One version of a subject.
    pub fn version(
        &self,
        subject: &str,
        version: VersionRef,
    ) -> Result<SubjectVersion, LocalError> {
        let state = self.state();
        version_of(&state, subject, version)
    }

    /// The version of `subject` that is this schema.
    pub fn lookup(&self, subject: &str, schema: &str) -> Result<SubjectVersion, LocalError> {
        let state = self.state();
        let (_, text) = parse(schema)?;
        let Some(s) = state
            .subjects
            .get(subject)
            .filter(|s| !s.versions.is_empty())
        else {
            return Err(LocalError::SubjectNotFound(subject.to_string()));
        };
        s.versions
            .iter()
            .position(|id| state.schemas[*id as usize - 1] == text)
            .map(|i| SubjectVersion {
                subject: subject.to_string(),
                version: i as u32 + 1,
                id: s.versions[i],
                schema: text,
            })
            .ok_or_else(|| LocalError::SchemaNotFound("not registered under this subject".into()))
    }

    /// The level that applies to `subject`: its own, else the global one.
    pub fn effective_compatibility(&self, subject: &str) -> Compatibility {
        let state = self.state();
        state
            .subjects
            .get(subject)
            .and_then(|s| s.compatibility)
            .unwrap_or(state.compatibility)
    }

    /// The subject's own level.
    pub fn subject_compatibility(&self, subject: &str) -> Result<Compatibility, LocalError> {
        let state = self.state();
        state
            .subjects
            .get(subject)
            .and_then(|s| s.compatibility)
            .ok_or_else(|| LocalError::NoSubjectCompatibility(subject.to_string()))
    }

    pub fn global_compatibility(&self) -> Compatibility {
        self.state().compatibility
    }

    /// Sets a subject's level (`None`: the global one).
    pub fn set_compatibility(
        &self,
        subject: Option<&str>,
        level: Compatibility,
    ) -> Result<(), LocalError> {
        let mut state = self.state();
        match subject {
            Some(subject) => {
                if !state.subjects.contains_key(subject) && state.subjects.len() >= MAX_SUBJECTS {
                    return Err(subjects_full());
                }
                state
                    .subjects
                    .entry(subject.to_string())
                    .or_default()
                    .compatibility = Some(level)
            }
            None => state.compatibility = level,
        }
        self.save(&state)
    }

    /// Why `schema` may not be registered under `subject`, checked against `version` (or, with
    /// `None`, against what the subject's level says); empty when it may.
    pub fn check(
        &self,
        subject: &str,
        schema: &str,
        version: Option<VersionRef>,
    ) -> Result<Vec<String>, LocalError> {
        let (new, _) = parse(schema)?;
        let state = self.state();
        let level = state
            .subjects
            .get(subject)
            .and_then(|s| s.compatibility)
            .unwrap_or(state.compatibility);
        let existing = match version {
            Some(v) => {
                let found = version_of(&state, subject, v)?;
                vec![(found.version, parse(&found.schema)?.0)]
            }
            None => existing_versions(&state, subject)?,
        };
        Ok(level.violations(&new, &existing))
    }

    /// Registers `schema` under `subject`: the same schema again keeps its version and id; a
    /// schema known under another subject keeps its id; a new one gets the next id.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, LocalError> {
        let (new, text) = parse(schema)?;
        let mut state = self.state();
        if let Some(s) = state.subjects.get(subject) {
            if let Some(id) = s
                .versions
                .iter()
                .find(|id| state.schemas[**id as usize - 1] == text)
            {
                return Ok(*id);
            }
        }
        let level = state
            .subjects
            .get(subject)
            .and_then(|s| s.compatibility)
            .unwrap_or(state.compatibility);
        let reasons = level.violations(&new, &existing_versions(&state, subject)?);
        if !reasons.is_empty() {
            return Err(LocalError::Incompatible {
                subject: subject.to_string(),
                reasons,
            });
        }
        match state.subjects.get(subject) {
            None if state.subjects.len() >= MAX_SUBJECTS => return Err(subjects_full()),
            Some(s) if s.versions.len() >= MAX_VERSIONS => {
                return Err(LocalError::LimitReached(format!(
                    "subject '{subject}' has {MAX_VERSIONS} versions, the most kept"
                )))
            }
            _ => {}
        }
        let id = match state.schemas.iter().position(|s| *s == text) {
            Some(i) => i as u32 + 1,
            None => {
                if state.schemas.len() >= MAX_SCHEMAS {
                    return Err(LocalError::LimitReached(format!(
                        "the registry holds {MAX_SCHEMAS} schemas, the most kept"
                    )));
                }
                state.schemas.push(text);
                state.schemas.len() as u32
            }
        };
        state
            .subjects
            .entry(subject.to_string())
            .or_default()
            .versions
            .push(id);
        self.save(&state)?;
        Ok(id)
    }
}

fn subjects_full() -> LocalError {
    LocalError::LimitReached(format!(
        "the registry holds {MAX_SUBJECTS} subjects, the most kept"
    ))
}

/// Parses an Avro schema; returns it with its normalised text (what the registry stores).
fn parse(schema: &str) -> Result<(Schema, String), LocalError> {
    if schema.len() > MAX_SCHEMA_BYTES {
        return Err(LocalError::InvalidSchema(format!(
            "the schema is {} bytes; at most {MAX_SCHEMA_BYTES} are kept",
            schema.len()
        )));
    }
    let parsed = Schema::parse_str(schema).map_err(|e| LocalError::InvalidSchema(e.to_string()))?;
    let text = normalize(schema).ok_or_else(|| LocalError::InvalidSchema("not JSON".into()))?;
    Ok((parsed, text))
}

fn version_of(
    state: &State,
    subject: &str,
    version: VersionRef,
) -> Result<SubjectVersion, LocalError> {
    let Some(s) = state
        .subjects
        .get(subject)
        .filter(|s| !s.versions.is_empty())
    else {
        return Err(LocalError::SubjectNotFound(subject.to_string()));
    };
    let index = match version {
        VersionRef::Latest => s.versions.len() - 1,
        VersionRef::Number(n) => n as usize - 1,
    };
    let id = *s.versions.get(index).ok_or_else(|| {
        let v = match version {
            VersionRef::Number(n) => n.to_string(),
            VersionRef::Latest => "latest".into(),
        };
        LocalError::VersionNotFound(subject.to_string(), v)
    })?;
    Ok(SubjectVersion {
        subject: subject.to_string(),
        version: index as u32 + 1,
        id,
        schema: state.schemas[id as usize - 1].clone(),
    })
}

/// The subject's versions, parsed, oldest first (none for a new subject).
fn existing_versions(state: &State, subject: &str) -> Result<Vec<(u32, Schema)>, LocalError> {
    let Some(s) = state.subjects.get(subject) else {
        return Ok(Vec::new());
    };
    s.versions
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let schema = Schema::parse_str(&state.schemas[*id as usize - 1])
                .map_err(|e| LocalError::Storage(format!("stored schema {id}: {e}")))?;
            Ok((i as u32 + 1, schema))
        })
        .collect()
}

impl From<LocalError> for RegistryError {
    fn from(e: LocalError) -> Self {
        match e {
            LocalError::Incompatible { subject, reasons } => {
                RegistryError::Incompatible { subject, reasons }
            }
            other => RegistryError::Status {
                registry: "(embedded)".into(),
                status: other.status(),
                error_code: Some(other.error_code() as i64),
                message: other.to_string(),
            },
        }
    }
}

impl Registry for LocalRegistry {
    async fn compatibility(&self, subject: &str) -> super::Result<Option<Compatibility>> {
        match self.subject_compatibility(subject) {
            Ok(level) => Ok(Some(level)),
            Err(LocalError::NoSubjectCompatibility(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn set_compatibility(&self, subject: &str, level: Compatibility) -> super::Result<()> {
        Ok(LocalRegistry::set_compatibility(
            self,
            Some(subject),
            level,
        )?)
    }

    async fn check(&self, subject: &str, schema: &str) -> super::Result<Vec<String>> {
        Ok(LocalRegistry::check(self, subject, schema, None)?)
    }

    async fn register(&self, subject: &str, schema: &str) -> super::Result<u32> {
        Ok(LocalRegistry::register(self, subject, schema)?)
    }

    async fn versions(&self, subject: &str) -> super::Result<Vec<SubjectVersion>> {
        let state = self.state();
        let count = state.subjects.get(subject).map_or(0, |s| s.versions.len());
        (1..=count as u32)
            .map(|v| Ok(version_of(&state, subject, VersionRef::Number(v))?))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        registry::{register_catalogue, register_schema, subject, SchemaIds},
        Event, OrderAccepted, TopicKind, Topics,
    };

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        // The in-process registry never awaits anything: one poll finishes it.
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the local registry never waits"),
        }
    }

    /// OrderAccepted with one more field, with or without a default.
    fn accepted_plus(field: &str) -> String {
        let mut schema: serde_json::Value =
            serde_json::from_str(OrderAccepted::schema_text()).unwrap();
        schema["fields"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::from_str(field).unwrap());
        schema.to_string()
    }

    #[test]
    fn a_fresh_registry_gives_the_builtin_ids() {
        let registry = LocalRegistry::in_memory();
        let ids = block_on(register_catalogue(
            &registry,
            &Topics::default(),
            Compatibility::Backward,
        ))
        .unwrap();
        assert_eq!(ids, SchemaIds::builtin());
        assert_eq!(registry.subjects().len(), crate::events::catalogue().len());
        let subject = subject(&Topics::default(), TopicKind::OrdersAccepted);
        assert_eq!(
            registry.subject_compatibility(&subject),
            Ok(Compatibility::Backward)
        );
        let latest = registry.version(&subject, VersionRef::Latest).unwrap();
        assert_eq!((latest.version, latest.id), (1, 1));
        // Again, and under a second prefix: same schemas, same ids, no new versions.
        let again = block_on(register_catalogue(
            &registry,
            &Topics::default(),
            Compatibility::Full,
        ))
        .unwrap();
        assert_eq!(again, ids);
        assert_eq!(
            registry.subject_compatibility(&subject),
            Ok(Compatibility::Backward)
        );
        let other = block_on(register_catalogue(
            &registry,
            &Topics::new("p."),
            Compatibility::Backward,
        ))
        .unwrap();
        assert_eq!(other, ids);
        assert_eq!(registry.versions(&subject), Ok(vec![1]));
        assert_eq!(
            registry.subjects().len(),
            2 * crate::events::catalogue().len()
        );
    }

    #[test]
    fn an_incompatible_change_fails_naming_the_subject_and_the_reason() {
        let registry = LocalRegistry::in_memory();
        let topics = Topics::default();
        block_on(register_catalogue(
            &registry,
            &topics,
            Compatibility::Backward,
        ))
        .unwrap();
        let subject = subject(&topics, TopicKind::OrdersAccepted);
        let breaking = accepted_plus(r#"{"name": "channel", "type": "string"}"#);
        let err = block_on(register_schema(
            &registry,
            &subject,
            &breaking,
            Compatibility::Backward,
        ))
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("orders.accepted-value"), "{text}");
        assert!(
            text.contains("'channel'") && text.contains("default"),
            "{text}"
        );
        assert!(!err.is_retriable());
        // The registry itself refuses it too, with Confluent's code.
        let direct = registry.register(&subject, &breaking).unwrap_err();
        assert_eq!((direct.status(), direct.error_code()), (409, 409));
        assert_eq!(registry.versions(&subject), Ok(vec![1]));
    }

    #[test]
    fn a_compatible_change_is_a_new_version_and_older_ids_still_resolve() {
        let registry = LocalRegistry::in_memory();
        let topics = Topics::default();
        let subject = subject(&topics, TopicKind::OrdersAccepted);
        block_on(register_catalogue(
            &registry,
            &topics,
            Compatibility::Backward,
        ))
        .unwrap();
        let v2 = accepted_plus(r#"{"name": "channel", "type": "string", "default": "web"}"#);
        let (id, versions) = block_on(register_schema(
            &registry,
            &subject,
            &v2,
            Compatibility::Backward,
        ))
        .unwrap();
        assert_eq!(id as usize, crate::events::catalogue().len() + 1);
        assert_eq!(
            versions.iter().map(|v| v.version).collect::<Vec<_>>(),
            [1, 2]
        );
        // A process built with v1 still frames with v1's id and knows v2's writer schema.
        let ids = block_on(register_catalogue(
            &registry,
            &topics,
            Compatibility::Backward,
        ))
        .unwrap();
        assert_eq!(ids.id(TopicKind::OrdersAccepted), Some(1));
        let v2_id = crate::events::catalogue().len() as u32 + 1;
        assert!(matches!(
            ids.resolve(v2_id),
            Some((TopicKind::OrdersAccepted, Some(_)))
        ));
    }

    #[test]
    fn ids_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LocalRegistry::FILE);
        let registry = LocalRegistry::open(&path).unwrap();
        registry
            .register("other-value", r#"{"type": "string"}"#)
            .unwrap();
        let ids = block_on(register_catalogue(
            &registry,
            &Topics::default(),
            Compatibility::Backward,
        ))
        .unwrap();
        assert_eq!(ids.id(TopicKind::OrdersAccepted), Some(2));
        drop(registry);
        let reopened = LocalRegistry::open(&path).unwrap();
        assert_eq!(reopened.schema(1).unwrap(), r#"{"type":"string"}"#);
        let again = block_on(register_catalogue(
            &reopened,
            &Topics::default(),
            Compatibility::Backward,
        ))
        .unwrap();
        assert_eq!(again, ids);
        std::fs::write(&path, "{not json").unwrap();
        let err = LocalRegistry::open(&path).unwrap_err();
        assert!(err.to_string().contains("schema-registry.json"), "{err}");
    }

    #[test]
    fn reads_answer_with_confluents_errors() {
        let registry = LocalRegistry::in_memory();
        assert_eq!(registry.schema(1).unwrap_err().error_code(), 40403);
        assert_eq!(
            registry.versions("x-value").unwrap_err().error_code(),
            40401
        );
        registry.register("x-value", r#"{"type": "int"}"#).unwrap();
        let missing = registry
            .version("x-value", VersionRef::Number(2))
            .unwrap_err();
        assert_eq!((missing.status(), missing.error_code()), (404, 40402));
        assert_eq!(VersionRef::parse("0").unwrap_err().error_code(), 42202);
        assert_eq!(VersionRef::parse("latest"), Ok(VersionRef::Latest));
        assert_eq!(
            registry.register("x-value", "{").unwrap_err().error_code(),
            42201
        );
        assert_eq!(
            registry.subject_versions_of(1),
            Ok(vec![("x-value".to_string(), 1)])
        );
        assert_eq!(
            registry
                .subject_compatibility("x-value")
                .unwrap_err()
                .error_code(),
            40408
        );
    }

    #[test]
    fn the_registry_keeps_a_bounded_number_of_subjects_versions_and_schemas() {
        let registry = LocalRegistry::in_memory();
        registry
            .set_compatibility(Some("grows-value"), Compatibility::None)
            .unwrap();
        // A subject's versions: each a new record name, so each a new schema.
        let record = |n: usize| format!(r#"{{"type": "record", "name": "R{n}", "fields": []}}"#);
        for n in 0..MAX_VERSIONS {
            registry.register("grows-value", &record(n)).unwrap();
        }
        let full = registry
            .register("grows-value", &record(MAX_VERSIONS))
            .unwrap_err();
        assert_eq!((full.status(), full.error_code()), (422, 42205));
        assert!(full.to_string().contains("versions"), "{full}");
        // A schema already there registers again under its id, full or not.
        assert!(registry.register("grows-value", &record(0)).is_ok());
        // Subjects.
        for n in 0..MAX_SUBJECTS - 1 {
            registry
                .register(&format!("s{n}-value"), r#"{"type": "int"}"#)
                .unwrap();
        }
        let full = registry
            .register("one-more-value", r#"{"type": "int"}"#)
            .unwrap_err();
        assert_eq!(full.error_code(), 42205);
        let full = registry
            .set_compatibility(Some("one-more-value"), Compatibility::Full)
            .unwrap_err();
        assert_eq!(full.error_code(), 42205);
        // A schema too long to keep.
        let long = format!(
            r#"{{"type": "string", "doc": "{}"}}"#,
            "x".repeat(MAX_SCHEMA_BYTES)
        );
        assert_eq!(
            registry
                .register("s0-value", &long)
                .unwrap_err()
                .error_code(),
            42201
        );
    }
}
