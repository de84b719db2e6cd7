//! A Confluent-compatible schema registry over HTTP: the few calls registration needs.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::{de::DeserializeOwned, Deserialize};
use serde_json::{json, Value};

use apache_avro::Schema;

use super::{
    subject, Compatibility, Registry, RegistryError, Result, SubjectVersion, CONTENT_TYPE,
};
use crate::{TopicKind, Topics};

/// What Confluent's clients accept.
const ACCEPT: &str =
    "application/vnd.schemaregistry.v1+json, application/vnd.schemaregistry+json, application/json";

/// A client of one registry (`http://host:8081`, a path prefix allowed).
#[derive(Debug, Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    base: Url,
    auth: Option<RegistryAuth>,
}

/// How the client proves who it is: Confluent Cloud and Redpanda Cloud take HTTP basic auth
/// (an API key and secret), Orderflow's own registry an admin's bearer token.
#[derive(Clone)]
pub enum RegistryAuth {
    /// `Authorization: Basic` with a user (API key) and password (secret).
    Basic { user: String, password: String },
    /// `Authorization: Bearer <token>`.
    Bearer(String),
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The credentials never reach a log.
        match self {
            RegistryAuth::Basic { user, .. } => write!(f, "Basic({user}:***)"),
            RegistryAuth::Bearer(_) => f.write_str("Bearer(***)"),
        }
    }
}

impl RegistryAuth {
    /// Basic auth from Confluent's `USER:PASSWORD` form (`basic.auth.user.info`).
    pub fn basic(user_info: &str) -> Option<RegistryAuth> {
        let (user, password) = user_info.split_once(':')?;
        Some(RegistryAuth::Basic {
            user: user.to_string(),
            password: password.to_string(),
        })
    }
}

/// Confluent's error body.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error_code: Option<i64>,
    message: Option<String>,
}

/// An error with the causes behind it (`error sending request` alone does not say that the
/// certificate was not trusted or the connection refused).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The HTTP client: the system's roots plus `extra_roots`, a bounded wait for every call.
fn http_client(extra_roots: &[reqwest::Certificate]) -> reqwest::Result<reqwest::Client> {
    extra_roots
        .iter()
        .fold(
            reqwest::Client::builder().timeout(Duration::from_secs(10)),
            |builder, root| builder.add_root_certificate(root.clone()),
        )
        .build()
}

impl RegistryClient {
    pub fn new(url: &str) -> Result<RegistryClient> {
        let invalid = |message: String| RegistryError::Config {
            registry: url.to_string(),
            message,
        };
        let mut base = Url::parse(url).map_err(|e| invalid(format!("not a URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("expected an http:// or https:// URL".into()));
        }
        if !base.username().is_empty() || base.password().is_some() {
            // Name the registry without the secret.
            let _ = base.set_username("");
            let _ = base.set_password(None);
            return Err(RegistryError::Config {
                registry: base.to_string(),
                message: "credentials in the URL are not supported".into(),
            });
        }
        if base.cannot_be_a_base() {
            return Err(invalid("not a base URL".into()));
        }
        // Paths are appended segment by segment: drop a trailing slash.
        if base.path().ends_with('/') {
            let trimmed = base.path().trim_end_matches('/').to_string();
            base.set_path(&trimmed);
        }
        let http = http_client(&[]).map_err(|e| invalid(e.to_string()))?;
        Ok(RegistryClient {
            http,
            base,
            auth: None,
        })
    }

    /// Trusts the certificate authorities in `pem` (one or more PEM certificates) besides the
    /// system's: for a registry whose certificate a private CA signed.
    pub fn with_ca_certificates(mut self, pem: &[u8]) -> Result<Self> {
        let invalid = |message: String| RegistryError::Config {
            registry: self.base.to_string(),
            message,
        };
        let certificates = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| invalid(format!("not PEM certificates: {e}")))?;
        if certificates.is_empty() {
            return Err(invalid("no PEM certificate in the CA file".into()));
        }
        self.http = http_client(&certificates).map_err(|e| invalid(e.to_string()))?;
        Ok(self)
    }

    /// Sends these credentials with every call.
    pub fn with_auth(mut self, auth: RegistryAuth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// The registry's URL.
    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    fn url_for(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// One call; the answer's JSON, or the registry's error.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<T> {
        let url = self.url_for(segments);
        let registry = self.base.to_string();
        let mut request = self
            .http
            .request(method, url.clone())
            .query(query)
            .header(reqwest::header::ACCEPT, ACCEPT);
        request = match &self.auth {
            Some(RegistryAuth::Basic { user, password }) => {
                request.basic_auth(user, Some(password))
            }
            Some(RegistryAuth::Bearer(token)) => request.bearer_auth(token),
            None => request,
        };
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .map_err(|e| RegistryError::Unreachable {
                registry: registry.clone(),
                message: format!("{url}: {}", with_causes(&e)),
            })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| RegistryError::Unreachable {
                registry: registry.clone(),
                message: format!("{url}: {}", with_causes(&e)),
            })?;
        if !status.is_success() {
            let body: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
            let text = String::from_utf8_lossy(&bytes);
            return Err(RegistryError::Status {
                registry,
                status: status.as_u16(),
                error_code: body.as_ref().and_then(|b| b.error_code),
                message: body
                    .and_then(|b| b.message)
                    .unwrap_or_else(|| text.chars().take(300).collect()),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| RegistryError::Invalid {
            registry,
            message: format!("{url}: {}", with_causes(&e)),
        })
    }
}

impl RegistryClient {
    /// The event type and schema behind an id the process has not seen, if it is a version of
    /// one of `topics`' subjects (`None` otherwise, or when the registry has no such id).
    pub async fn event_schema(
        &self,
        id: u32,
        topics: &Topics,
    ) -> Result<Option<(TopicKind, Schema)>> {
        #[derive(Deserialize)]
        struct SubjectVersionRef {
            subject: String,
        }
        #[derive(Deserialize)]
        struct SchemaAnswer {
            schema: String,
        }
        let id_text = id.to_string();
        let used_by: Vec<SubjectVersionRef> = match self
            .call(
                Method::GET,
                &["schemas", "ids", &id_text, "versions"],
                &[],
                None,
            )
            .await
        {
            Ok(used_by) => used_by,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(kind) = used_by.iter().find_map(|v| {
            v.subject
                .strip_suffix("-value")
                .and_then(|topic| topics.kind_of(topic))
                .filter(|kind| kind.spec().schema.is_some())
        }) else {
            return Ok(None);
        };
        let answer: SchemaAnswer = match self
            .call(Method::GET, &["schemas", "ids", &id_text], &[], None)
            .await
        {
            Ok(answer) => answer,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        match Schema::parse_str(&answer.schema) {
            Ok(schema) => Ok(Some((kind, schema))),
            Err(e) => Err(RegistryError::Catalogue {
                subject: subject(topics, kind),
                message: format!("schema {id} is not Avro: {e}"),
            }),
        }
    }
}

fn is_not_found(e: &RegistryError) -> bool {
    matches!(e, RegistryError::Status { status, .. } if *status == StatusCode::NOT_FOUND.as_u16())
}

impl Registry for RegistryClient {
    async fn compatibility(&self, subject: &str) -> Result<Option<Compatibility>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Config {
            compatibility_level: Option<String>,
            compatibility: Option<String>,
        }
        let config: Config = match self
            .call(
                Method::GET,
                &["config", subject],
                &[("defaultToGlobal", "false")],
                None,
            )
            .await
        {
            Ok(config) => config,
            // 40408 (no subject-level config) or 40401 (no such subject).
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        match config.compatibility_level.or(config.compatibility) {
            Some(level) => level
                .parse()
                .map(Some)
                .map_err(|message| RegistryError::Invalid {
                    registry: self.base.to_string(),
                    message,
                }),
            None => Ok(None),
        }
    }

    async fn set_compatibility(&self, subject: &str, level: Compatibility) -> Result<()> {
        let _: Value = self
            .call(
                Method::PUT,
                &["config", subject],
                &[],
                Some(json!({"compatibility": level.as_str()})),
            )
            .await?;
        Ok(())
    }

    async fn check(&self, subject: &str, schema: &str) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Answer {
            is_compatible: bool,
            #[serde(default)]
            messages: Vec<String>,
        }
        let answer: Answer = match self
            .call(
                Method::POST,
                &["compatibility", "subjects", subject, "versions", "latest"],
                &[("verbose", "true")],
                Some(json!({"schema": schema, "schemaType": "AVRO"})),
            )
            .await
        {
            Ok(answer) => answer,
            // No such subject (40401) or version (40402): nothing to be compatible with.
            Err(e) if is_not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(match (answer.is_compatible, answer.messages.is_empty()) {
            (true, _) => Vec::new(),
            (false, false) => answer.messages,
            (false, true) => vec![format!(
                "the registry says it is incompatible with the latest version of {subject} under \
                 the subject's compatibility level"
            )],
        })
    }

    async fn register(&self, subject: &str, schema: &str) -> Result<u32> {
        #[derive(Deserialize)]
        struct Answer {
            id: u32,
        }
        let answer: Answer = self
            .call(
                Method::POST,
                &["subjects", subject, "versions"],
                &[],
                Some(json!({"schema": schema, "schemaType": "AVRO"})),
            )
            .await
            .map_err(|e| match e {
                RegistryError::Status {
                    status: 409,
                    message,
                    ..
                } => RegistryError::Incompatible {
                    subject: subject.to_string(),
                    reasons: vec![message],
                },
                other => other,
            })?;
        Ok(answer.id)
    }

    async fn versions(&self, subject: &str) -> Result<Vec<SubjectVersion>> {
        let numbers: Vec<u32> = match self
            .call(Method::GET, &["subjects", subject, "versions"], &[], None)
            .await
        {
            Ok(numbers) => numbers,
            Err(e) if is_not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut versions = Vec::with_capacity(numbers.len());
        for n in numbers {
            let version: SubjectVersion = self
                .call(
                    Method::GET,
                    &["subjects", subject, "versions", &n.to_string()],
                    &[],
                    None,
                )
                .await?;
            versions.push(version);
        }
        versions.sort_by_key(|v| v.version);
        Ok(versions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_take_the_segments_encoded() {
        let client = RegistryClient::new("http://registry:8081/").unwrap();
        assert_eq!(
            client
                .url_for(&["subjects", "orders.accepted-value", "versions"])
                .as_str(),
            "http://registry:8081/subjects/orders.accepted-value/versions"
        );
        let prefixed = RegistryClient::new("http://proxy/registry").unwrap();
        assert_eq!(
            prefixed.url_for(&["config", "a/b"]).as_str(),
            "http://proxy/registry/config/a%2Fb"
        );
    }

    #[test]
    fn bad_urls_are_named() {
        let err = RegistryClient::new("registry:8081")
            .unwrap_err()
            .to_string();
        assert!(err.contains("registry:8081"), "{err}");
        let err = RegistryClient::new("ftp://registry:8081")
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected an http:// or https:// URL"), "{err}");
        let err = RegistryClient::new("http://key:secret@registry:8081")
            .unwrap_err()
            .to_string();
        assert!(err.contains("credentials"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_retriable() {
        // A port nothing listens on: bind one, then free it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = RegistryClient::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let err = client.versions("x-value").await.unwrap_err();
        assert!(err.is_retriable(), "{err}");
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }
}
