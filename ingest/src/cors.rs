//! CORS: a shop's own front end on another origin may call the API, from the origins
//! configured (`--cors-allow-origin`, `ORDERFLOW_CORS_ALLOW_ORIGINS`); none by default, and then
//! no CORS header is ever sent, so browsers keep other origins out.
//!
//! Preflight requests (`OPTIONS` with `Access-Control-Request-Method`) are answered by the
//! layer itself. Credentials (cookies) are not allowed: the API takes bearer tokens, which a
//! front end sends in the `Authorization` header.

use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may cache a preflight's answer.
const MAX_AGE: Duration = Duration::from_secs(600);

/// The allowed origins: `*` for any, else each `scheme://host[:port]` exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Origins {
    /// No CORS (the default).
    #[default]
    None,
    Any,
    List(Vec<HeaderValue>),
}

impl Origins {
    /// Parses the configured origins; an error names the one that is not an origin.
    pub fn parse<S: AsRef<str>>(origins: &[S]) -> Result<Self, String> {
        let mut list = Vec::new();
        for origin in origins.iter().map(|o| o.as_ref().trim()) {
            if origin.is_empty() {
                continue;
            }
            if origin == "*" {
                return Ok(Origins::Any);
            }
            let url_like = origin.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.contains('/')
            });
            if !url_like {
                return Err(format!(
                    "{origin:?} is not an origin: scheme://host[:port], without a path \
                     (e.g. https://shop.example.com), or *"
                ));
            }
            let value = HeaderValue::from_str(origin)
                .map_err(|_| format!("{origin:?} is not an origin"))?;
            list.push(value);
        }
        Ok(if list.is_empty() {
            Origins::None
        } else {
            Origins::List(list)
        })
    }

    /// The layer, if CORS is on.
    pub fn layer(&self) -> Option<CorsLayer> {
        let allow = match self {
            Origins::None => return None,
            Origins::Any => AllowOrigin::any(),
            Origins::List(list) => AllowOrigin::list(list.clone()),
        };
        Some(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods([
                    Method::GET,
                    Method::POST,
                    Method::PATCH,
                    Method::DELETE,
                    Method::OPTIONS,
                ])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    header::ACCEPT,
                    HeaderName::from_static("idempotency-key"),
                ])
                .expose_headers([
                    header::LOCATION,
                    header::RETRY_AFTER,
                    header::CONTENT_DISPOSITION,
                    header::WWW_AUTHENTICATE,
                ])
                .max_age(MAX_AGE),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked() {
        assert_eq!(Origins::parse::<&str>(&[]).unwrap(), Origins::None);
        assert_eq!(Origins::parse(&["", " "]).unwrap(), Origins::None);
        assert_eq!(
            Origins::parse(&["https://a.example", "*"]).unwrap(),
            Origins::Any
        );
        assert_eq!(
            Origins::parse(&["https://a.example", "http://localhost:3000"]).unwrap(),
            Origins::List(vec![
                HeaderValue::from_static("https://a.example"),
                HeaderValue::from_static("http://localhost:3000"),
            ])
        );
        for bad in [
            "a.example",
            "https://a.example/",
            "ftp://a.example",
            "https://",
        ] {
            assert!(Origins::parse(&[bad]).is_err(), "{bad}");
        }
        assert!(Origins::None.layer().is_none());
        assert!(Origins::Any.layer().is_some());
    }
}
