//! RFC 9457 problem details: every error the API returns is `application/problem+json`.

use axum::{
    extract::{rejection::PathRejection, Path},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use orderflow_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// The media type of every error.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// One field that failed validation.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, ToSchema)]
pub struct FieldError {
    /// Where in the request: `items[0].quantity`, `customer_id`, `body`,
    /// `header:Idempotency-Key`, `header:Content-Type`, `path:id`.
    #[schema(example = "items[0].quantity")]
    pub field: String,
    /// What is wrong with it.
    #[schema(example = "must be at least 1")]
    pub message: String,
}

/// An RFC 9457 problem details document (`application/problem+json`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI reference naming the kind of problem, relative to the API: `/problems/<slug>`.
    #[serde(rename = "type")]
    #[schema(example = "/problems/invalid-request")]
    pub kind: String,
    /// A short summary of the kind of problem.
    #[schema(example = "The request has invalid fields")]
    pub title: String,
    /// The HTTP status code.
    #[schema(example = 422)]
    pub status: u16,
    /// What went wrong this time: every field error as `field: message`, joined by `; `.
    #[schema(example = "items[0].quantity: must be at least 1")]
    pub detail: String,
    /// The fields at fault, when the problem is in the request; absent otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
    pub errors: Vec<FieldError>,
    /// The response headers beyond the body (`Retry-After`, `WWW-Authenticate`), boxed: most
    /// problems have none, and every handler returns `Problem`, so it stays small (clippy's
    /// `result_large_err`).
    #[serde(skip)]
    headers: Option<Box<Headers>>,
}

/// A problem's response headers.
#[derive(Debug, Clone, Default)]
struct Headers {
    retry_after: Option<u32>,
    /// `WWW-Authenticate` for a `401`.
    challenge: Option<String>,
}

/// Why a free-text field is wrong, if it is: blank, over `max_chars` characters, or holding
/// control characters.
pub fn text_problem(value: &str, max_chars: usize) -> Option<String> {
    if value.trim().is_empty() {
        Some("must not be empty".into())
    } else if value.chars().count() > max_chars {
        Some(format!("is too long (at most {max_chars} characters)"))
    } else if value.chars().any(char::is_control) {
        Some("must not contain control characters".into())
    } else {
        None
    }
}

impl Problem {
    fn headers_mut(&mut self) -> &mut Headers {
        self.headers.get_or_insert_with(Default::default)
    }

    pub fn new(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Problem {
            kind: format!("/problems/{slug}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            headers: None,
        }
    }

    /// 422: the request is well-formed but some fields are invalid.
    pub fn invalid(errors: Vec<FieldError>) -> Self {
        Problem::fields(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-request",
            "The request has invalid fields",
            errors,
        )
    }

    /// Several fields at fault, with a status of their own; the detail lists them.
    pub fn fields(status: StatusCode, slug: &str, title: &str, errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        let mut p = Problem::new(status, slug, title, detail);
        p.errors = errors;
        p
    }

    /// One field, with a status of its own.
    pub fn field(
        status: StatusCode,
        slug: &str,
        title: &str,
        field: &str,
        message: impl Into<String>,
    ) -> Self {
        let message = message.into();
        let mut p = Problem::new(status, slug, title, format!("{field}: {message}"));
        p.errors.push(FieldError {
            field: field.to_string(),
            message,
        });
        p
    }

    /// 415 naming `header:Content-Type`: every request body is JSON.
    pub fn unsupported_media_type() -> Self {
        Problem::field(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported content type",
            "header:Content-Type",
            "must be application/json",
        )
    }

    /// 400 naming `path:<param>`: a path segment that is not UTF-8 once percent-decoded.
    pub fn path_segment(param: &str, rejection: PathRejection) -> Self {
        Problem::field(
            StatusCode::BAD_REQUEST,
            "invalid-path",
            "Invalid path",
            &format!("path:{param}"),
            rejection.body_text(),
        )
    }

    /// 401 with `WWW-Authenticate: Bearer`: no valid access token came with the request.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        let detail = detail.into();
        let mut p = Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authentication required",
            detail.clone(),
        );
        p.headers_mut().challenge = Some(format!(
            "Bearer error=\"invalid_token\", error_description=\"{}\"",
            detail.replace(['"', '\\'], "'")
        ));
        p
    }

    /// 403: the caller is known but may not do this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }

    /// 409: the resource is not in a state that allows this.
    pub fn conflict(slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::CONFLICT, slug, title, detail)
    }

    /// Adds `Retry-After: seconds` (a 409 for an order between two steps).
    pub fn with_retry_after(mut self, seconds: u32) -> Self {
        self.headers_mut().retry_after = Some(seconds);
        self
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// 429 with `Retry-After`: too many attempts (login); wait `seconds`.
    pub fn too_many_requests(detail: impl Into<String>, seconds: u32) -> Self {
        let mut p = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-requests",
            "Too many requests",
            detail,
        );
        p.headers_mut().retry_after = Some(seconds);
        p
    }

    /// 503 with `Retry-After`: a dependency (store, broker) is down; retrying can help.
    /// 503 for a dependency that failed (`what`: "order store", "broker", …): the answer
    /// names it; why it failed (which can name files, hosts, queries) goes to the log only.
    pub fn down(what: &str, error: &dyn std::fmt::Display) -> Self {
        tracing::warn!(dependency = what, error = %error, "A dependency failed a request.");
        Problem::unavailable(format!("the {what} is unavailable; retry"))
    }

    /// 500 for a failure retrying will not mend (a record that cannot be read back): the
    /// answer says no more than that; the error goes to the log only.
    pub fn internal(error: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %error, "A request failed internally.");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the request could not be completed",
        )
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        let mut p = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service temporarily unavailable",
            detail,
        );
        p.headers_mut().retry_after = Some(1);
        p
    }
}

/// A store error as the answer: unavailable is a 503 with `Retry-After` (retrying can help),
/// a corrupt record a 500, a request the store cannot take a 422. What the store said stays in
/// the log (it can name files, hosts, queries).
impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => Problem::down("store", &e),
            StoreError::Corrupt(_) => Problem::internal(&e),
            StoreError::Invalid(_) => {
                tracing::warn!(error = %e, "The store refused a request.");
                Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid-request",
                    "The request has invalid fields",
                    "the store cannot record these values",
                )
            }
        }
    }
}

/// The responses every route shares, declared once for the OpenAPI document:
/// `responses((status = 200, ...), responses::Unauthorized, responses::Unavailable)`.
pub mod responses {
    use utoipa::IntoResponses;

    use super::Problem;

    /// 401: no valid access token came with the request.
    #[derive(IntoResponses)]
    #[response(
        status = 401,
        description = "No valid access token.",
        content_type = "application/problem+json",
        headers(("WWW-Authenticate" = String, description = "`Bearer …`."))
    )]
    pub struct Unauthorized(pub Problem);

    /// 403: the route is for admins.
    #[derive(IntoResponses)]
    #[response(
        status = 403,
        description = "The caller is not an admin.",
        content_type = "application/problem+json"
    )]
    pub struct Forbidden(pub Problem);

    /// 413: the body is over the limit.
    #[derive(IntoResponses)]
    #[response(
        status = 413,
        description = "The body is over 1 MiB.",
        content_type = "application/problem+json"
    )]
    pub struct BodyTooLarge(pub Problem);

    /// 415: the body is not JSON.
    #[derive(IntoResponses)]
    #[response(
        status = 415,
        description = "The content type is not JSON.",
        content_type = "application/problem+json"
    )]
    pub struct NotJson(pub Problem);

    /// 503: the store is down.
    #[derive(IntoResponses)]
    #[response(
        status = 503,
        description = "The store is down; retry (a retry finishes what the first call \
            started). A broker that is down is no reason: the events wait in the outbox.",
        content_type = "application/problem+json",
        headers(("Retry-After" = u32, description = "Seconds to wait."))
    )]
    pub struct Unavailable(pub Problem);
}

/// The path parameter `param`, or the 400 that names it.
pub fn path(param: &str, segment: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    segment
        .map(|Path(value)| value)
        .map_err(|e| Problem::path_segment(param, e))
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        // The body was not read to its end: the connection cannot carry another request.
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let extra = self.headers.as_deref();
        if let Some(challenge) = extra.and_then(|h| h.challenge.as_deref()) {
            if let Ok(value) = HeaderValue::from_str(challenge) {
                headers.insert(header::WWW_AUTHENTICATE, value);
            }
        }
        if let Some(seconds) = extra.and_then(|h| h.retry_after) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
