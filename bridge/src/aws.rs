//! What the AWS sinks share: one SDK configuration (credentials through the standard chain,
//! region, `AWS_ENDPOINT_URL`), and the mapping of SDK errors onto [`retry::Cause`].
//!
//! The SDK's own retries are off: a failed call is classified by [`retry::is_retriable`] and
//! retried by the bridge, with its backoff, like every other sink. Nothing here logs a
//! credential: errors are rendered from the SDK's error types, which carry none.

use std::time::Duration;

use aws_config::{retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::{
    config::{http::HttpResponse, SharedHttpClient},
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
};
use aws_smithy_http_client::{
    proxy::ProxyConfig,
    tls::{self, rustls_provider::CryptoMode},
    Builder, ConnectorBuilder,
};
use serde::{Deserialize, Serialize};

use crate::{
    retry::{self, Cause},
    SinkError,
};

/// `[aws]` in the routing config. Everything else (credentials, profile) comes from the
/// standard AWS chain: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, web identity,
/// container and instance roles.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsConfig {
    /// The region (default: `AWS_REGION`, then the profile).
    pub region: Option<String>,
    /// Send every AWS call here instead of the service's endpoint, e.g. an emulator (default:
    /// `AWS_ENDPOINT_URL`, or the real AWS endpoints).
    pub endpoint_url: Option<String>,
    /// Give up on one call after this many seconds (default 10); it is then retried.
    pub timeout_secs: Option<u64>,
}

impl AwsConfig {
    /// Loads the SDK configuration.
    pub async fn load(&self) -> SdkConfig {
        let timeout = Duration::from_secs(self.timeout_secs.unwrap_or(10).max(1));
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(https_client())
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3).min(timeout))
                    .operation_attempt_timeout(timeout)
                    .operation_timeout(timeout)
                    .build(),
            );
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &self.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        loader.load().await
    }
}

/// The HTTP client of every AWS call (the services and the credential providers): the SDK's
/// default client, hyper with rustls and the system's root certificates, honouring
/// `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`, with ring as rustls' crypto provider instead of the
/// SDK's default aws-lc. Connections are pooled per connector settings.
pub fn https_client() -> SharedHttpClient {
    // What `aws-smithy-runtime`'s `default-https-client` feature builds, with the provider
    // swapped.
    Builder::new().build_with_connector_fn(|settings, components| {
        let mut connector =
            ConnectorBuilder::default().tls_provider(tls::Provider::Rustls(CryptoMode::Ring));
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    })
}

/// Classifies a failed SDK call, with `what` saying what was attempted.
pub fn sdk_error<E>(what: &str, error: &SdkError<E, HttpResponse>) -> SinkError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let cause = match error {
        // Credentials or region that cannot be loaded; a request that cannot be serialized is
        // caught before it is sent (builders, size checks).
        SdkError::ConstructionFailure(_) => Cause::Client,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => Cause::Transport,
        SdkError::ResponseError(e) => Cause::Response {
            status: e.raw().status().as_u16(),
            code: None,
        },
        SdkError::ServiceError(e) => Cause::Response {
            status: e.raw().status().as_u16(),
            code: e.err().code(),
        },
        // `SdkError` is non-exhaustive: an unknown kind of failure is assumed to pass.
        _ => Cause::Transport,
    };
    retry::sink_error(cause, format!("{what}: {}", DisplayErrorContext(error)))
}

/// The error code of a failed SDK call, if the service answered with one.
pub fn error_code<E: ProvideErrorMetadata, R>(error: &SdkError<E, R>) -> Option<&str> {
    match error {
        SdkError::ServiceError(e) => e.err().code(),
        _ => None,
    }
}
