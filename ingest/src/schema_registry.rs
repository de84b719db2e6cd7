//! The schema registry `orderflow run` serves on its HTTP listener: Confluent's REST API over
//! the embedded [`LocalRegistry`], so that standard Avro deserializers (Confluent's, Redpanda
//! Console, `kcat -s avro`, …) decode the topics of the embedded broker.
//!
//! Reads: `GET /schemas/ids/{id}`, `/schemas/ids/{id}/versions`, `/schemas/types`,
//! `/subjects`, `/subjects/{subject}/versions`, `/subjects/{subject}/versions/{version}`
//! (a number or `latest`) and its `/schema`, `/config`, `/config/{subject}`.
//! Lookups and checks, open like the reads: `POST /subjects/{subject}` (is this schema
//! registered?) and `POST /compatibility/subjects/{subject}/versions/{version}`.
//! Writes ([`is_write`]) need an admin's access token (`Authorization: Bearer …`): `POST
//! /subjects/{subject}/versions`, `PUT /config`, `PUT /config/{subject}`. The registry keeps at
//! most [`orderflow_schemas::registry::local::MAX_SCHEMAS`] schemas, as many subjects and
//! [`orderflow_schemas::registry::local::MAX_VERSIONS`] versions per subject (then 422, error
//! code 42205).
//!
//! Answers are `application/vnd.schemaregistry.v1+json`; errors are Confluent's
//! `{"error_code": 40401, "message": "…"}`.

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::{header, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use orderflow_schemas::registry::{
    local::{LocalError, VersionRef},
    Compatibility, LocalRegistry, SubjectVersion, CONTENT_TYPE,
};
use serde::Deserialize;
use serde_json::{json, Value};

type Registry = Arc<LocalRegistry>;

/// The registry's routes, to merge into a router with any state.
pub fn routes<S: Clone + Send + Sync + 'static>(registry: Registry) -> Router<S> {
    Router::new()
        .route("/schemas/types", get(schema_types))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/versions", get(versions_of_id))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup))
        .route(
            "/subjects/{subject}/versions",
            get(subject_versions).post(register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(subject_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(raw_subject_version),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check),
        )
        .route("/config", get(global_config).put(set_global_config))
        .route(
            "/config/{subject}",
            get(subject_config).put(set_subject_config),
        )
        .with_state(registry)
}

/// Whether the route `matched_path` (as the router matched it) changes the registry for
/// `method`: those need an admin.
pub fn is_write(method: &Method, matched_path: &str) -> bool {
    matches!(
        (method.as_str(), matched_path),
        ("POST", "/subjects/{subject}/versions")
            | ("PUT", "/config")
            | ("PUT", "/config/{subject}")
    )
}

/// A Confluent error body (`{"error_code": …, "message": …}`) with its status.
pub fn error(status: StatusCode, error_code: u32, message: &str) -> Response {
    answer(
        status,
        json!({"error_code": error_code, "message": message}),
    )
}

/// A registry answer: JSON in Confluent's content type.
fn answer(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> Response {
    answer(StatusCode::OK, body)
}

/// Confluent's error body.
struct RegistryError(LocalError);

impl From<LocalError> for RegistryError {
    fn from(e: LocalError) -> Self {
        RegistryError(e)
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = match &self.0 {
            // Where the registry's file is and how writing it failed are for the log.
            LocalError::Storage(detail) => {
                tracing::error!(error = %detail, "The schema registry could not save.");
                "Error in the backend data store.".to_string()
            }
            e => e.to_string(),
        };
        error(status, self.0.error_code(), &message)
    }
}

type Result<T = Response> = std::result::Result<T, RegistryError>;

fn parse_id(id: &str) -> Result<u32> {
    id.parse()
        .map_err(|_| LocalError::SchemaNotFound(id.to_string()).into())
}

fn version_json(v: SubjectVersion) -> Value {
    json!({"subject": v.subject, "version": v.version, "id": v.id, "schema": v.schema})
}

/// A schema in a request body: `{"schema": "…", "schemaType": "AVRO"}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaBody {
    schema: String,
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Value>,
}

fn schema_body(body: &[u8]) -> Result<String> {
    let body: SchemaBody = serde_json::from_slice(body)
        .map_err(|e| LocalError::InvalidSchema(format!("request body: {e}")))?;
    if let Some(kind) = body.schema_type.filter(|t| t != "AVRO") {
        return Err(LocalError::InvalidSchema(format!(
            "schemaType {kind}: only AVRO is supported"
        ))
        .into());
    }
    if !body.references.is_empty() {
        return Err(LocalError::InvalidSchema("schema references are not supported".into()).into());
    }
    Ok(body.schema)
}

async fn schema_types() -> Response {
    ok(json!(["AVRO"]))
}

async fn schema_by_id(State(r): State<Registry>, Path(id): Path<String>) -> Result {
    Ok(ok(json!({"schema": r.schema(parse_id(&id)?)?})))
}

async fn raw_schema_by_id(State(r): State<Registry>, Path(id): Path<String>) -> Result {
    let schema = r.schema(parse_id(&id)?)?;
    Ok(answer(
        StatusCode::OK,
        serde_json::from_str(&schema).unwrap_or(Value::String(schema)),
    ))
}

async fn versions_of_id(State(r): State<Registry>, Path(id): Path<String>) -> Result {
    let found = r.subject_versions_of(parse_id(&id)?)?;
    Ok(ok(found
        .into_iter()
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect()))
}

async fn subjects(State(r): State<Registry>) -> Response {
    ok(json!(r.subjects()))
}

async fn subject_versions(State(r): State<Registry>, Path(subject): Path<String>) -> Result {
    Ok(ok(json!(r.versions(&subject)?)))
}

async fn subject_version(
    State(r): State<Registry>,
    Path((subject, version)): Path<(String, String)>,
) -> Result {
    let found = r.version(&subject, VersionRef::parse(&version)?)?;
    Ok(ok(version_json(found)))
}

async fn raw_subject_version(
    State(r): State<Registry>,
    Path((subject, version)): Path<(String, String)>,
) -> Result {
    let found = r.version(&subject, VersionRef::parse(&version)?)?;
    Ok(answer(
        StatusCode::OK,
        serde_json::from_str(&found.schema).unwrap_or(Value::String(found.schema)),
    ))
}

async fn lookup(State(r): State<Registry>, Path(subject): Path<String>, body: Bytes) -> Result {
    let schema = schema_body(&body)?;
    Ok(ok(version_json(r.lookup(&subject, &schema)?)))
}

async fn register(State(r): State<Registry>, Path(subject): Path<String>, body: Bytes) -> Result {
    let schema = schema_body(&body)?;
    Ok(ok(json!({"id": r.register(&subject, &schema)?})))
}

/// Whether a query flag is set (`true`, `True`: clients spell booleans their way).
fn flag(query: &HashMap<String, String>, name: &str) -> bool {
    query
        .get(name)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

async fn check(
    State(r): State<Registry>,
    Path((subject, version)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result {
    let schema = schema_body(&body)?;
    let reasons = r.check(&subject, &schema, Some(VersionRef::parse(&version)?))?;
    let mut answer = json!({"is_compatible": reasons.is_empty()});
    if flag(&query, "verbose") {
        answer["messages"] = json!(reasons);
    }
    Ok(ok(answer))
}

async fn global_config(State(r): State<Registry>) -> Response {
    ok(json!({"compatibilityLevel": r.global_compatibility().as_str()}))
}

async fn subject_config(
    State(r): State<Registry>,
    Path(subject): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result {
    let level = match r.subject_compatibility(&subject) {
        Ok(level) => level,
        Err(LocalError::NoSubjectCompatibility(_)) if flag(&query, "defaultToGlobal") => {
            r.global_compatibility()
        }
        Err(e) => return Err(e.into()),
    };
    Ok(ok(json!({"compatibilityLevel": level.as_str()})))
}

fn config_body(body: &[u8]) -> Result<Compatibility> {
    #[derive(Deserialize)]
    struct Config {
        compatibility: String,
    }
    let invalid = |message: String| RegistryError(LocalError::InvalidCompatibility(message));
    let config: Config =
        serde_json::from_slice(body).map_err(|e| invalid(format!("request body: {e}")))?;
    config.compatibility.parse().map_err(invalid)
}

async fn set_global_config(State(r): State<Registry>, body: Bytes) -> Result {
    let level = config_body(&body)?;
    r.set_compatibility(None, level)?;
    Ok(ok(json!({"compatibility": level.as_str()})))
}

async fn set_subject_config(
    State(r): State<Registry>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result {
    let level = config_body(&body)?;
    r.set_compatibility(Some(&subject), level)?;
    Ok(ok(json!({"compatibility": level.as_str()})))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio_util::sync::CancellationToken;

    /// One request over plain HTTP/1.1; the status line, content type and body.
    async fn call(
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: &str,
    ) -> (String, String, Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\
             content-type: application/vnd.schemaregistry.v1+json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.lines().next().unwrap().to_string();
        let content_type = head
            .lines()
            .find_map(|l| l.strip_prefix("content-type: "))
            .unwrap_or_default()
            .to_string();
        (status, content_type, serde_json::from_str(body).unwrap())
    }

    #[tokio::test]
    async fn answers_in_confluents_content_type_and_error_bodies() {
        let registry = Arc::new(LocalRegistry::in_memory());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn({
            let app: Router = routes(registry.clone());
            let shutdown = shutdown.clone();
            async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown.cancelled_owned())
                    .await
            }
        });

        let schema = json!({"schema": r#"{"type": "record", "name": "R", "fields": [{"name": "a", "type": "string"}]}"#});
        let (status, content_type, body) = call(
            addr,
            "POST",
            "/subjects/r-value/versions",
            &schema.to_string(),
        )
        .await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(content_type, CONTENT_TYPE);
        assert_eq!(body, json!({"id": 1}));
        let (_, _, latest) = call(addr, "GET", "/subjects/r-value/versions/latest", "").await;
        assert_eq!(latest["subject"], "r-value");
        assert_eq!((&latest["version"], &latest["id"]), (&json!(1), &json!(1)));
        let (_, _, by_id) = call(addr, "GET", "/schemas/ids/1", "").await;
        assert_eq!(by_id["schema"], latest["schema"]);

        let (status, content_type, body) =
            call(addr, "GET", "/subjects/nope-value/versions/1", "").await;
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        assert_eq!(content_type, CONTENT_TYPE);
        assert_eq!(body["error_code"], 40401);
        let (status, _, body) = call(addr, "GET", "/schemas/ids/x", "").await;
        assert_eq!(
            (status.as_str(), &body["error_code"]),
            ("HTTP/1.1 404 Not Found", &json!(40403))
        );
        let (status, _, body) = call(addr, "GET", "/config/r-value", "").await;
        assert_eq!(
            (status.as_str(), &body["error_code"]),
            ("HTTP/1.1 404 Not Found", &json!(40408))
        );
        let (_, _, body) = call(addr, "GET", "/config/r-value?defaultToGlobal=true", "").await;
        assert_eq!(body, json!({"compatibilityLevel": "BACKWARD"}));
        let (status, _, body) = call(
            addr,
            "PUT",
            "/config/r-value",
            r#"{"compatibility": "SIDEWAYS"}"#,
        )
        .await;
        assert_eq!(
            (status.as_str(), &body["error_code"]),
            ("HTTP/1.1 422 Unprocessable Entity", &json!(42203))
        );
        let (status, _, body) = call(
            addr,
            "POST",
            "/subjects/r-value/versions",
            r#"{"schema": "{"}"#,
        )
        .await;
        assert_eq!(
            (status.as_str(), &body["error_code"]),
            ("HTTP/1.1 422 Unprocessable Entity", &json!(42201))
        );
        let protobuf = json!({"schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF"});
        let (_, _, body) = call(
            addr,
            "POST",
            "/subjects/p-value/versions",
            &protobuf.to_string(),
        )
        .await;
        assert_eq!(body["error_code"], 42201);

        // A field without a default breaks BACKWARD: the check says why; registering is a 409.
        let breaking = json!({"schema": r#"{"type": "record", "name": "R", "fields": [{"name": "a", "type": "string"}, {"name": "b", "type": "int"}]}"#});
        let (_, _, check) = call(
            addr,
            "POST",
            "/compatibility/subjects/r-value/versions/latest?verbose=True",
            &breaking.to_string(),
        )
        .await;
        assert_eq!(check["is_compatible"], false);
        assert!(
            check["messages"][0].as_str().unwrap().contains("'b'"),
            "{check}"
        );
        let (status, _, body) = call(
            addr,
            "POST",
            "/subjects/r-value/versions",
            &breaking.to_string(),
        )
        .await;
        assert_eq!(
            (status.as_str(), &body["error_code"]),
            ("HTTP/1.1 409 Conflict", &json!(409))
        );
        let (_, _, versions) = call(addr, "GET", "/subjects/r-value/versions", "").await;
        assert_eq!(versions, json!([1]));

        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}
