//! Request bodies: every body is a JSON object, read within [`MAX_BODY_BYTES`]; a wrong one
//! is a problem naming the field ([`json_body`] for handlers that read the body themselves,
//! [`JsonBody`] as an extractor).

use axum::{
    body::Body,
    extract::{FromRequest, Request},
    http::{header, HeaderMap, StatusCode},
};
use serde::de::DeserializeOwned;

use crate::problem::{FieldError, Problem};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A JSON body of type `T` as an extractor (the last argument of a handler), with the answers
/// of [`json_body`].
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Problem> {
        let (parts, body) = req.into_parts();
        json_body(&parts.headers, body).await.map(JsonBody)
    }
}

/// Is the content type JSON (`application/json`, `application/*+json`, any parameters)?
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Reads the body within the size limit.
pub async fn read_body(headers: &HeaderMap, body: Body) -> Result<bytes::Bytes, Problem> {
    let too_large = || {
        Problem::field(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body too large",
            "body",
            format!("the body must be at most {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| too_large())
}

/// Reads a JSON body of type `T`: 415 unless the content type is JSON, 413 over
/// [`MAX_BODY_BYTES`], 400 for broken JSON, 422 naming the field for a wrong one.
pub async fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, Problem> {
    if !is_json(headers) {
        return Err(Problem::unsupported_media_type());
    }
    let bytes = read_body(headers, body).await?;
    parse_json(&bytes)
}

/// Parses a JSON object into `T`, naming the field that is wrong. Every request body is an
/// object: serde would also fill a struct from an array of its fields in order (`[null, null]`),
/// which no client means, so an array is refused before it gets that far.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    if bytes.trim_ascii_start().first() == Some(&b'[') {
        return Err(Problem::invalid(vec![FieldError {
            field: "body".into(),
            message: "must be a JSON object, not an array".into(),
        }]));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let result: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let value = result.map_err(|e| {
        let inner = e.inner();
        let mut field = e.path().to_string();
        // `?` stands for a segment the parser never reached (the body ended first): say where it
        // broke off instead.
        while let Some(known) = field.strip_suffix(".?") {
            field.truncate(known.len());
        }
        if field == "." || field == "?" {
            field.clear();
        }
        let message = inner.to_string();
        // Missing fields are reported at their parent (unknown ones already at themselves).
        if let Some(name) = backticked(&message).filter(|name| {
            (message.starts_with("missing field") || message.starts_with("unknown field"))
                && !field.ends_with(name)
        }) {
            field = if field.is_empty() {
                name.to_string()
            } else {
                format!("{field}.{name}")
            };
        }
        if field.is_empty() {
            field = "body".into();
        }
        // Strip serde_json's " at line L column C"; the field says where.
        let message = match message.rfind(" at line ") {
            Some(i) if !(inner.is_syntax() || inner.is_eof()) => message[..i].to_string(),
            _ => message,
        };
        // serde names the value it could not take (``invalid type: integer `123456` ``): not
        // for a secret, which no answer repeats.
        let message = if SECRET_FIELDS.contains(&field.as_str()) && message.contains('`') {
            "must be a string".to_string()
        } else {
            message
        };
        if inner.is_syntax() || inner.is_eof() {
            Problem::field(
                StatusCode::BAD_REQUEST,
                "malformed-json",
                "The body is not valid JSON",
                &field,
                message,
            )
        } else {
            Problem::invalid(vec![FieldError { field, message }])
        }
    })?;
    de.end().map_err(|e| {
        Problem::field(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "The body is not valid JSON",
            "body",
            e.to_string(),
        )
    })?;
    Ok(value)
}

/// Request fields whose values are secrets: a problem document names them, never their value.
const SECRET_FIELDS: [&str; 2] = ["payment.token", "code"];

fn backticked(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

/// An `i64` from a JSON integer, or from a number with no fractional part within range (`2.0`).
pub(crate) fn integer<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    struct Integer;
    impl serde::de::Visitor<'_> for Integer {
        type Value = i64;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an integer")
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v)
                .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<i64, E> {
            // -2^63 and 2^63 are exact in f64: every integral f64 in [-2^63, 2^63) fits.
            const BOUND: f64 = 9_223_372_036_854_775_808.0;
            if v.fract() == 0.0 && (-BOUND..BOUND).contains(&v) {
                Ok(v as i64)
            } else {
                Err(E::invalid_value(serde::de::Unexpected::Float(v), &self))
            }
        }
    }
    deserializer.deserialize_any(Integer)
}
