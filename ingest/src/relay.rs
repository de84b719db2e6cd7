//! The outbox relay: puts the events the store queued with the API's changes
//! ([`orderflow_store::OutboxStore`]) on their topics, oldest first, and forgets each once the
//! broker has acknowledged it.
//!
//! An operation answers as soon as its change (and with it its event) is durable in the store,
//! and wakes the relay; the relay produces at once. While the broker is down the events wait in
//! the store and go out, in order, when it is back: nothing the API answered is lost, and a
//! request repeated meanwhile queues nothing new. The relay stops between producing and
//! forgetting only when the process dies; the next relay produces those events again, with the
//! same event ids, which consumers deduplicate on.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use orderflow_kafka::TraceContext;
use orderflow_schemas::{
    metrics::metrics, AccountVerificationRequested, Event, OrderAccepted, OrderCancelled,
    OrderModified, OrderPaid, OrderShipped,
};
use orderflow_store::{OutboxEvent, StoreError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::ApiState;

/// Most events one round produces.
const BATCH: usize = 256;
/// How often an idle relay looks at the outbox without being woken: for events queued by
/// another process (the seeder, or a stopped API instance on a shared store).
const IDLE_LOOK: Duration = Duration::from_secs(5);
/// How long the relay keeps going after the shutdown to put the last events out.
const DRAIN_AT_SHUTDOWN: Duration = Duration::from_secs(5);
/// Most keys whose trace contexts wait for their events to go out (while the broker is down, the
/// events queued beyond these go out in traces of their own).
const MAX_TRACES: usize = 65_536;

/// Wakes the relay when an operation has queued an event, and keeps the trace context of the
/// operation (with the `otlp` feature), so that the event goes out in the request's trace.
#[derive(Debug, Default)]
pub struct Relay {
    queued: Notify,
    /// By event key (the order id; the customer id for account events): the trace context of
    /// the last operation that queued an event with that key, until the relay has produced it.
    /// Kept in memory only: an event produced after a restart starts a trace of its own.
    traces: Mutex<HashMap<String, TraceContext>>,
}

impl Relay {
    /// Tells the relay that an event was queued.
    pub fn wake(&self) {
        // Counted at once, so the gauge shows what waits while the relay is stuck on a
        // broker that is down; the relay sets it exactly on its next look.
        metrics().outbox_events.inc();
        self.queued.notify_one();
    }

    /// Tells the relay that the operation running now queued an event keyed `key`: it goes out
    /// in the current span's trace, if that is traced.
    pub fn announce(&self, key: &str) {
        if let Some(trace) = TraceContext::current() {
            let mut traces = self.traces.lock().unwrap_or_else(|e| e.into_inner());
            if traces.len() < MAX_TRACES || traces.contains_key(key) {
                traces.insert(key.to_string(), trace);
            }
        }
        self.wake();
    }

    /// The trace context an event keyed `key` goes out in, if one was kept.
    fn trace_of(&self, key: &str) -> Option<TraceContext> {
        let traces = self.traces.lock().unwrap_or_else(|e| e.into_inner());
        if traces.is_empty() {
            return None;
        }
        traces.get(key).cloned()
    }

    /// Forgets the trace context of events keyed `key`: one went out.
    fn forget(&self, key: &str) {
        let mut traces = self.traces.lock().unwrap_or_else(|e| e.into_inner());
        if !traces.is_empty() {
            traces.remove(key);
        }
    }
}

/// Why a round of the relay stopped short.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("event {event_id}: {source}")]
    Produce {
        event_id: String,
        #[source]
        source: orderflow_kafka::Error,
    },
    #[error("event {event_id} is a {name}, which the relay does not produce")]
    Unknown { event_id: String, name: String },
}

/// Relays until `shutdown`, then for a few seconds more to put out what is left.
pub async fn run(state: Arc<ApiState>, shutdown: CancellationToken) {
    let mut failures = 0u32;
    loop {
        match relay_once(&state).await {
            Ok(0) => {
                failures = 0;
                tokio::select! {
                    _ = state.relay.queued.notified() => {}
                    _ = tokio::time::sleep(IDLE_LOOK) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
            Ok(_) => failures = 0,
            Err(e) => {
                // Logged on the first failure and then every 64th, so a broker that is down
                // for long does not flood the log; the gauge shows the waiting events.
                if failures.is_multiple_of(64) {
                    warn!(error = %e, "The outbox relay cannot put events on their topics; retrying.");
                }
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = tokio::time::sleep(orderflow_kafka::BACKOFF.delay(failures.min(7))) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }
    let _ = tokio::time::timeout(DRAIN_AT_SHUTDOWN, drain(&state)).await;
}

/// Relays until the outbox is empty (or a round fails).
pub async fn drain(state: &ApiState) -> Result<(), RelayError> {
    while relay_once(state).await? > 0 {}
    Ok(())
}

/// One round: produces up to `BATCH` (256) queued events, forgets those the broker acknowledged,
/// and answers how many; an error when any could not be produced (the others are forgotten).
pub async fn relay_once(state: &ApiState) -> Result<usize, RelayError> {
    let queued = state.store.outbox(BATCH).await?;
    metrics().outbox_events.set(queued.len() as i64);
    if queued.is_empty() {
        return Ok(0);
    }
    // Sent together, in the outbox's order: the producer keeps the order of the events of one
    // key (one partition), so an order's events reach their topics in the order they happened.
    let results = futures::future::join_all(queued.iter().map(|q| produce(state, &q.event))).await;
    let mut relayed = Vec::with_capacity(queued.len());
    let mut failed = None;
    for (q, result) in queued.iter().zip(results) {
        match result {
            Ok(()) => {
                relayed.push(q.position.clone());
                state.relay.forget(&q.event.key);
            }
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    if !relayed.is_empty() {
        state.store.outbox_relayed(&relayed).await?;
        metrics().outbox_relayed.inc_by(relayed.len() as u64);
        metrics()
            .outbox_events
            .set((queued.len() - relayed.len()) as i64);
        debug!(events = relayed.len(), "Outbox events relayed.");
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(relayed.len()),
    }
}

/// Produces one queued event to its type's topic.
async fn produce(state: &ApiState, event: &OutboxEvent) -> Result<(), RelayError> {
    match event.name.as_str() {
        OrderAccepted::NAME => send::<OrderAccepted>(state, event).await,
        OrderCancelled::NAME => send::<OrderCancelled>(state, event).await,
        OrderShipped::NAME => send::<OrderShipped>(state, event).await,
        OrderModified::NAME => send::<OrderModified>(state, event).await,
        OrderPaid::NAME => send::<OrderPaid>(state, event).await,
        AccountVerificationRequested::NAME => {
            send::<AccountVerificationRequested>(state, event).await
        }
        other => Err(RelayError::Unknown {
            event_id: event.event_id.clone(),
            name: other.to_string(),
        }),
    }
}

async fn send<E: Event>(state: &ApiState, queued: &OutboxEvent) -> Result<(), RelayError> {
    let event: E = queued.decode()?;
    let trace = state.relay.trace_of(&queued.key);
    state
        .producer
        .send_in(&event, trace.as_ref())
        .await
        .map_err(|source| RelayError::Produce {
            event_id: queued.event_id.clone(),
            source,
        })
}
