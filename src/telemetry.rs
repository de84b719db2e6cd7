//! Logs and traces: text or JSON logs on stderr (`--log-format`, `RUST_LOG` filters), and with
//! the `otlp` feature, the same spans exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set.
//!
//! The spans: `http_request` (method, route, status, order id) around every API request, and
//! `handle_message` (stage, order id, event type, topic, partition, offset) around every message
//! a stage handles, at debug level (target `orderflow::messages`); every log line written inside
//! one carries its fields. With `otlp`, events carry the trace context across Kafka
//! (`orderflow_kafka`'s feature of the same name), so an order's spans form one trace.

use anyhow::Result;
use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

use crate::cli::{LogArgs, LogFormat};

/// Keeps the exporter running; dropping it sends the spans still buffered.
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    otlp: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.otlp.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("OTLP exporter shutdown: {e}");
            }
        }
    }
}

/// Installs the global subscriber. Call it before starting the Tokio runtime (the OTLP
/// exporter's HTTP client is a blocking one, on its own thread).
pub fn init(args: &LogArgs) -> Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(
            "info,tansu_broker=warn,tansu_storage=warn,tansu_service=warn,tansu_sans_io=warn,\
             tansu_schema=warn,tansu_auth=warn,libsql=warn,rdkafka=warn",
        )
    });
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = match args.log_format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    // `RUST_LOG` filters the logs only: quieter logs do not lose traces.
    let registry = tracing_subscriber::registry().with(fmt.with_filter(filter));

    #[cfg(feature = "otlp")]
    {
        let provider = otlp::provider()?;
        let layer = provider.as_ref().map(|provider| {
            use opentelemetry::trace::TracerProvider as _;
            // Orderflow's own spans (`orderflow*` targets), not the embedded broker's; the
            // stages' message spans are at debug level.
            let ours = tracing_subscriber::filter::Targets::new()
                .with_target("orderflow", tracing::Level::INFO)
                .with_target(
                    orderflow_kafka::consume::MESSAGE_SPANS,
                    tracing::Level::DEBUG,
                );
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("orderflow"))
                .with_filter(ours)
        });
        registry.with(layer).init();
        if provider.is_some() {
            tracing::info!("Exporting traces over OTLP.");
        }
        Ok(Telemetry { otlp: provider })
    }
    #[cfg(not(feature = "otlp"))]
    {
        registry.init();
        Ok(Telemetry {})
    }
}

#[cfg(feature = "otlp")]
mod otlp {
    use anyhow::{Context, Result};
    use opentelemetry_otlp::SpanExporter;
    use opentelemetry_sdk::{trace::SdkTracerProvider, Resource};

    /// A tracer provider exporting in batches over OTLP/HTTP (protobuf) to
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`;
    /// `None` when neither is set. The other `OTEL_*` variables (headers, timeout,
    /// `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`) apply as the SDK reads them.
    pub fn provider() -> Result<Option<SdkTracerProvider>> {
        let set = |name| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            return Ok(None);
        }
        let exporter = SpanExporter::builder()
            .with_http()
            .build()
            .context("building the OTLP span exporter")?;
        let mut resource = Resource::builder();
        if !set("OTEL_SERVICE_NAME") {
            resource = resource.with_service_name("orderflow");
        }
        Ok(Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource.build())
                .build(),
        ))
    }
}
