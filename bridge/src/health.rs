//! Sink health for readiness: every sink's healthcheck (SQS GetQueueAttributes, SES GetAccount,
//! …) runs in the background, and `/readyz` reads the latest results without waiting on AWS.

use std::{sync::Arc, time::Duration};

use std::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Sink;

/// A sink's last healthcheck: `Err` says what failed.
type LastCheck = Mutex<Result<(), String>>;

/// The latest healthcheck result of each sink.
pub struct SinkHealth {
    sinks: Vec<(Arc<dyn Sink>, LastCheck)>,
}

impl SinkHealth {
    /// Every sink starts as not checked yet (not ready).
    pub fn new(sinks: Vec<Arc<dyn Sink>>) -> Self {
        SinkHealth {
            sinks: sinks
                .into_iter()
                .map(|s| (s, Mutex::new(Err("not checked yet".to_string()))))
                .collect(),
        }
    }

    /// Runs every healthcheck once, concurrently, and records the results.
    pub async fn check_all(&self) {
        let checks = self.sinks.iter().map(|(sink, state)| async move {
            let result = sink.healthcheck().await.map_err(|e| e.to_string());
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            match (&*state, &result) {
                (Ok(()), Err(error)) => warn!(sink = sink.name(), %error, "Sink unhealthy."),
                (Err(_), Ok(())) => info!(sink = sink.name(), "Sink healthy."),
                _ => {}
            }
            *state = result;
        });
        futures::future::join_all(checks).await;
    }

    /// Checks now and then every `every`, until `shutdown`.
    pub fn spawn(self: &Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let health = self.clone();
        tokio::spawn(async move {
            loop {
                health.check_all().await;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
    }

    /// Ok when every sink's last check passed; otherwise which did not, and why.
    pub fn ready(&self) -> Result<(), String> {
        let failing: Vec<String> = self
            .sinks
            .iter()
            .filter_map(|(sink, state)| {
                let state = state.lock().unwrap_or_else(|p| p.into_inner());
                state
                    .as_ref()
                    .err()
                    .map(|e| format!("sink {}: {e}", sink.name()))
            })
            .collect();
        if failing.is_empty() {
            Ok(())
        } else {
            Err(failing.join("; "))
        }
    }
}
