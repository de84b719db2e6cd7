//! Orders live: `GET /v1/orders/{id}/events`, a server-sent event stream of the order as the
//! stages move it along.
//!
//! The API follows the order topics already, to drop entries of its order read cache
//! ([`crate::cache`]). [`Follower`] does that and then tells [`Live`], a broadcast of the order
//! ids that changed. Every stage writes the order's read model before it produces the event
//! (its step, [`orderflow_store::StepStore`], then the produce), so when an event goes by the
//! store already shows its step: a stream re-reads its order and sends it when it differs from
//! what it sent last. Nothing is polled; between changes only SSE keep-alive comments go out.
//!
//! A stream starts with the order as it is (`event: order`, the [`OrderView`] JSON), is for the
//! order's customer and admins (another customer gets 404, as for `GET /v1/orders/{id}`), and
//! ends when the client goes away or the API shuts down. When the follower may have missed
//! events (a consumer error, a stream that fell behind the broadcast), every stream reads its
//! order again.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::{rejection::PathRejection, Path, State},
    http::{header, HeaderValue},
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
};
use futures::Stream;
use orderflow_kafka::follow::{Hold, KeyListener};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::Caller,
    cache::OrderCache,
    orders::{no_order, order_path, OrderView},
    problem::Problem,
    ApiState,
};

/// How many changes a slow stream may fall behind before it reads its order again anyway.
const BACKLOG: usize = 1024;
/// How often an idle stream sends a keep-alive comment (proxies close silent connections).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An event of this order went by.
    Order(Arc<str>),
    /// Events may have been missed: every order may have changed.
    All,
}

/// The order ids that changed, for the streams; and the signal that ends them all.
pub struct Live {
    changes: broadcast::Sender<Change>,
    closing: CancellationToken,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            changes: broadcast::channel(BACKLOG).0,
            closing: CancellationToken::new(),
        }
    }
}

impl Live {
    /// Tells the streams of this order (no stream: nothing happens).
    pub fn publish(&self, change: Change) {
        let _ = self.changes.send(change);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Ends every stream (the server is shutting down: it waits for open requests).
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// Cancelled once [`Live::close`] is called.
    pub fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }
}

/// The order topics' follower of the API: drops the order from the read cache, then tells the
/// live streams (which read it again, past the cache).
pub struct Follower {
    pub cache: crate::cache::Invalidator,
    pub live: Arc<Live>,
}

impl KeyListener for Follower {
    fn following(&self) {
        self.cache.following();
        orderflow_schemas::metrics::metrics()
            .order_follower_following
            .set(1);
        // A stream that read its order before the follower was in place reads it again.
        self.live.publish(Change::All);
    }

    async fn key(&self, key: &[u8]) {
        self.cache.key(key).await;
        if let Ok(order_id) = std::str::from_utf8(key) {
            self.live.publish(Change::Order(order_id.into()));
        }
    }

    fn gap(&self) {
        self.cache.gap();
        self.live.publish(Change::All);
    }

    fn stopped(&self) {
        self.cache.stopped();
        orderflow_schemas::metrics::metrics()
            .order_follower_following
            .set(0);
    }
}

/// Follows the order topics until `shutdown`, while the cache's reads or a live stream want
/// it ([`OrderCache::demand`]): the read cache's invalidations and the live streams' changes.
pub async fn follow_orders(
    kafka: &orderflow_kafka::KafkaConfig,
    cache: Arc<OrderCache>,
    live: Arc<Live>,
    shutdown: CancellationToken,
) -> orderflow_kafka::Result<()> {
    let demand = cache.demand().clone();
    let follower = Follower {
        cache: crate::cache::Invalidator(cache),
        live,
    };
    orderflow_kafka::follow::follow_keys(
        kafka,
        orderflow_kafka::follow::order_topics(),
        Arc::new(follower),
        demand,
        shutdown,
    )
    .await
}

/// `GET /v1/orders/{id}/events`.
#[utoipa::path(
    get,
    path = "/v1/orders/{id}/events",
    operation_id = "order_events",
    tag = "orders",
    summary = "Follow an order live (server-sent events)",
    description = "A `text/event-stream` of the order: first as it is, then again each time a \
        stage (or a person) moves it on, as an `order` event whose data is the order's JSON \
        (as `GET /v1/orders/{id}` answers it). Failures (rejected, payment failed) come with \
        their reason in the timeline. The stream stays open until the client closes it; \
        keep-alive comments go out every 15 s. For the order's customer and admins; another \
        customer gets 404.",
    params(("id" = String, Path, description = "The order id.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The stream: `event: order` / `data: {…}` per change.",
         body = String, content_type = "text/event-stream"),
        (status = 400, description = "The id is not UTF-8 once percent-decoded.", body = Problem,
         content_type = "application/problem+json"),
        (status = 401, description = "No valid access token.", body = Problem,
         content_type = "application/problem+json",
         headers(("WWW-Authenticate" = String, description = "`Bearer …`."))),
        (status = 404, description = "No such order, or another customer's.", body = Problem,
         content_type = "application/problem+json"),
        (status = 503, description = "The store is down; retry.", body = Problem,
         content_type = "application/problem+json",
         headers(("Retry-After" = u32, description = "Seconds to wait."))),
    ),
)]
pub async fn order_events(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    order_id: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let order_id = order_path(order_id)?;
    // Subscribed before the first read: a change between the two is not lost. The stream
    // keeps the follower going; one that was stopped tells every stream to read again once it
    // follows (`Change::All`), which catches a change made before it was in place.
    let wanted = state.orders.demand().hold();
    let changes = state.live.subscribe();
    let order = state
        .store
        .get_order(&order_id)
        .await
        .map_err(|e| Problem::down("order store", &e))?
        .filter(|o| caller.may_access(&o.customer_id))
        .ok_or_else(|| no_order(&order_id))?;
    let first = view_json(order.into());
    let stream = order_stream(state.clone(), order_id, first, changes, wanted);
    Ok(sse(stream))
}

/// An SSE response of `stream`, with keep-alives and no caching or buffering on the way.
pub(crate) fn sse<S>(stream: S) -> Response
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx and friends would hold the events back otherwise.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn view_json(view: OrderView) -> String {
    serde_json::to_string(&view).unwrap_or_default()
}

struct Following {
    state: Arc<ApiState>,
    order_id: String,
    changes: broadcast::Receiver<Change>,
    closing: CancellationToken,
    /// What was sent last.
    last: String,
    /// Still to send first.
    pending: Option<String>,
    /// Keeps the follower going while the stream is open.
    _wanted: Hold,
}

/// The order's events: `first`, then the order each time it changes.
fn order_stream(
    state: Arc<ApiState>,
    order_id: String,
    first: String,
    changes: broadcast::Receiver<Change>,
    wanted: Hold,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let closing = state.live.closing();
    let s = Following {
        state,
        order_id,
        changes,
        closing,
        last: String::new(),
        pending: Some(first),
        _wanted: wanted,
    };
    futures::stream::unfold(s, |mut s| async move {
        if let Some(json) = s.pending.take() {
            s.last = json.clone();
            return Some((Ok(Event::default().event("order").data(json)), s));
        }
        loop {
            let change = tokio::select! {
                _ = s.closing.cancelled() => return None,
                change = s.changes.recv() => change,
            };
            let concerned = match change {
                Ok(Change::Order(id)) => *id == *s.order_id,
                Ok(Change::All) | Err(broadcast::error::RecvError::Lagged(_)) => true,
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            if !concerned {
                continue;
            }
            // Past the cache: the follower dropped the entry, but a read racing it may not see.
            let order = match s.state.store.get_order(&s.order_id).await {
                Ok(Some(order)) => order,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(order_id = %s.order_id, error = %e, "Live order read failed.");
                    continue;
                }
            };
            let json = view_json(order.into());
            if json != s.last {
                s.last = json.clone();
                return Some((Ok(Event::default().event("order").data(json)), s));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn changes_reach_every_subscriber_and_close_ends_them() {
        let live = Live::default();
        let mut a = live.subscribe();
        let mut b = live.subscribe();
        live.publish(Change::Order("o1".into()));
        assert_eq!(a.recv().await.unwrap(), Change::Order("o1".into()));
        assert_eq!(b.recv().await.unwrap(), Change::Order("o1".into()));
        let closing = live.closing();
        assert!(!closing.is_cancelled());
        live.close();
        assert!(closing.is_cancelled());
    }
}
