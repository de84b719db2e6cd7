//! `GET /v1/orders`: a customer's own orders, or (for an admin) everyone's, newest first and
//! cursor-paged.
//!
//! A page holds at most `limit` orders (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]);
//! `next_cursor`, when present, fetches the next one, which starts strictly after the last order
//! of this one, so pages never overlap. The cursor is opaque to clients.
//!
//! Filters: `status`, `from` and `to` (creation time, `from` inclusive, `to` exclusive; ms since
//! the Unix epoch, or an RFC 3339 time) for everyone; `customer_id` for an admin (a customer may
//! only name itself: another id is a `403`). A customer's list is always its own. A bad value is
//! a `422` naming the query parameter (`query:limit`, …).

use std::sync::Arc;

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    Json,
};
use orderflow_schemas::OrderStatus;
use orderflow_store::OrderFilter;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::problem::responses;
use crate::{
    auth::Caller,
    orders::OrderView,
    problem::{FieldError, Problem},
    ApiState,
};

/// Orders per page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 20;
/// Most orders per page.
pub const MAX_LIMIT: usize = 100;
/// Latest time `from` and `to` take as ms (the end of year 9999).
const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// The query of `GET /v1/orders`. Every value is read as text and checked here, so that a bad
/// one is named.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Orders per page, 1 to 100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100, nullable = false)]
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(value_type = Option<String>, pattern = "^([0-9a-f]{2})+$", nullable = false)]
    pub cursor: Option<String>,
    /// Only orders in this status.
    #[param(value_type = Option<OrderStatus>, nullable = false)]
    pub status: Option<String>,
    /// Only this customer's orders (admin; a customer may only name itself).
    #[param(value_type = Option<String>, min_length = 1, max_length = 128, nullable = false)]
    pub customer_id: Option<String>,
    /// Only orders created at or after this time: ms since the Unix epoch (an RFC 3339 time,
    /// e.g. `2026-01-31T12:00:00Z`, is taken too).
    #[param(value_type = Option<i64>, minimum = 0, maximum = 253_402_300_799_999_i64,
            nullable = false)]
    pub from: Option<String>,
    /// Only orders created before this time: ms since the Unix epoch (or RFC 3339).
    #[param(value_type = Option<i64>, minimum = 0, maximum = 253_402_300_799_999_i64,
            nullable = false)]
    pub to: Option<String>,
}

/// One page of orders, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderPage {
    pub orders: Vec<OrderView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// What a valid query asks for.
#[derive(Debug, PartialEq, Eq)]
struct ListRequest {
    limit: usize,
    before: Option<String>,
    filter: OrderFilter,
}

/// The cursor that continues after `order_id`: its bytes in hex.
fn encode_cursor(order_id: &str) -> String {
    order_id.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(cursor: &str) -> Option<String> {
    if cursor.is_empty() || !cursor.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..cursor.len())
        .step_by(2)
        .map(|i| {
            let pair = cursor.get(i..i + 2)?;
            if !pair.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return None;
            }
            u8::from_str_radix(pair, 16).ok()
        })
        .collect();
    Some(String::from_utf8_lossy(&bytes?).into_owned())
}

/// A time as ms since the Unix epoch or RFC 3339 (`Z` or a `±hh:mm` offset).
fn parse_time(value: &str) -> Option<i64> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<i64>().ok().filter(|ms| *ms <= MAX_TIME_MS);
    }
    // humantime reads UTC only: take a numeric offset off and apply it ourselves.
    let (utc, offset_ms) = match value.len().checked_sub(6).and_then(|i| {
        let (head, tail) = value.split_at_checked(i)?;
        let sign = match tail.as_bytes().first()? {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let (h, m) = tail.get(1..)?.split_once(':')?;
        let minutes = h.parse::<i64>().ok()? * 60 + m.parse::<i64>().ok()?;
        Some((format!("{head}Z"), sign * minutes * 60_000))
    }) {
        Some(split) => split,
        None => (value.to_string(), 0),
    };
    let t = humantime::parse_rfc3339_weak(&utc).ok()?;
    let ms = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    i64::try_from(ms).ok().map(|ms| ms - offset_ms)
}

/// Checks every parameter; lists every bad one at once.
fn check(query: ListQuery, caller: &Caller) -> Result<ListRequest, Problem> {
    let mut errors = Vec::new();
    let mut err = |field: &str, message: String| {
        errors.push(FieldError {
            field: format!("query:{field}"),
            message,
        })
    };
    let limit = match query.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                err("limit", format!("must be an integer from 1 to {MAX_LIMIT}"));
                DEFAULT_LIMIT
            }
        },
    };
    let before = query.cursor.as_deref().and_then(|c| {
        let decoded = decode_cursor(c);
        if decoded.is_none() {
            err("cursor", "is not a cursor this API returned".into());
        }
        decoded
    });
    let status = query.status.as_deref().and_then(|s| {
        let status = serde_json::from_value::<OrderStatus>(serde_json::Value::from(s)).ok();
        if status.is_none() {
            err("status", format!("`{s}` is not an order status"));
        }
        status
    });
    let mut time = |field: &str, value: Option<&str>| {
        value.and_then(|v| {
            let ms = parse_time(v);
            if ms.is_none() {
                err(
                    field,
                    "must be ms since the Unix epoch or an RFC 3339 time".into(),
                );
            }
            ms
        })
    };
    // `to` before `from` is a valid, empty range.
    let from = time("from", query.from.as_deref());
    let to = time("to", query.to.as_deref());
    let customer_id = match query.customer_id {
        Some(c) if c.trim().is_empty() || c.chars().count() > 128 => {
            err("customer_id", "must be 1 to 128 characters".into());
            None
        }
        Some(c) => Some(c),
        None => None,
    };
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    let customer_id = match customer_id {
        _ if caller.is_admin() => customer_id,
        Some(c) if c != caller.customer_id => {
            return Err(Problem::forbidden(
                "only an admin can list another customer's orders",
            ))
        }
        _ => Some(caller.customer_id.clone()),
    };
    Ok(ListRequest {
        limit,
        before,
        filter: OrderFilter {
            status,
            customer_id,
            from,
            to,
        },
    })
}

/// `GET /v1/orders`.
#[utoipa::path(
    get,
    path = "/v1/orders",
    operation_id = "list_orders",
    tag = "orders",
    summary = "List orders",
    description = "The caller's orders (an admin's: everyone's), newest first, one page at a \
        time: follow `next_cursor` until it is absent. Filters narrow the list; an admin may \
        name a customer.",
    params(ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One page of orders.", body = OrderPage),
        responses::Unauthorized,
        (status = 403, description = "A customer named another customer.", body = Problem,
         content_type = "application/problem+json"),
        (status = 422, description = "A query parameter is unknown or has a bad value (each is \
            listed in `errors`).", body = Problem, content_type = "application/problem+json",
         example = json!({"type": "/problems/invalid-request",
            "title": "The request has invalid fields", "status": 422,
            "detail": "query:limit: must be an integer from 1 to 100",
            "errors": [{"field": "query:limit",
                        "message": "must be an integer from 1 to 100"}]})),
        responses::Unavailable,
    ),
)]
pub async fn list(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<OrderPage>, Problem> {
    let Query(query) = query.map_err(|e| {
        Problem::invalid(vec![FieldError {
            field: "query".into(),
            message: e.body_text(),
        }])
    })?;
    let request = check(query, &caller)?;
    // One more than asked for tells whether there is a next page.
    let mut orders = state
        .store
        .list_orders(
            &request.filter,
            request.before.as_deref(),
            request.limit + 1,
        )
        .await?;
    let next_cursor = if orders.len() > request.limit {
        orders.truncate(request.limit);
        orders.last().map(|o| encode_cursor(&o.order_id))
    } else {
        None
    };
    Ok(Json(OrderPage {
        orders: orders.into_iter().map(OrderView::from).collect(),
        next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn caller(role: Role) -> Caller {
        Caller {
            customer_id: "c1".into(),
            role,
            session_id: None,
        }
    }

    fn fields(p: &Problem) -> Vec<&str> {
        p.errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn cursors_round_trip_and_junk_is_refused() {
        let id = "0190b6a2-7c1e-7000-8000-000000000001";
        assert_eq!(decode_cursor(&encode_cursor(id)).as_deref(), Some(id));
        for junk in ["", "a", "zz", "0G", "ABCD"] {
            assert_eq!(decode_cursor(junk), None, "{junk}");
        }
    }

    #[test]
    fn times_are_ms_or_rfc3339() {
        assert_eq!(parse_time("1700000000000"), Some(1_700_000_000_000));
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Some(1_000));
        assert_eq!(parse_time("1970-01-01T00:00:01.5Z"), Some(1_500));
        assert_eq!(parse_time("1970-01-01T01:00:01+01:00"), Some(1_000));
        assert_eq!(parse_time("1970-01-01T00:00:01-00:30"), Some(1_801_000));
        for bad in [
            "",
            "yesterday",
            "-5",
            "1970-13-01T00:00:00Z",
            "99999999999999999999",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_bad_parameter_is_named() {
        let query = ListQuery {
            limit: Some("0".into()),
            cursor: Some("xyz".into()),
            status: Some("lost".into()),
            from: Some("soon".into()),
            to: Some("1".into()),
            customer_id: None,
        };
        let p = check(query, &caller(Role::Admin)).unwrap_err();
        assert_eq!(p.status, 422);
        assert_eq!(
            fields(&p),
            ["query:limit", "query:cursor", "query:status", "query:from"]
        );
        let query = ListQuery {
            to: Some("2026-02-30T00:00:00Z".into()),
            ..ListQuery::default()
        };
        let p = check(query, &caller(Role::Admin)).unwrap_err();
        assert_eq!(fields(&p), ["query:to"]);
    }

    #[test]
    fn a_customer_lists_only_its_own_orders() {
        let own = check(ListQuery::default(), &caller(Role::Customer)).unwrap();
        assert_eq!(own.filter.customer_id.as_deref(), Some("c1"));
        assert_eq!(own.limit, DEFAULT_LIMIT);
        let named = ListQuery {
            customer_id: Some("c2".into()),
            ..ListQuery::default()
        };
        assert_eq!(
            check(named, &caller(Role::Customer)).unwrap_err().status,
            403
        );
        let all = check(ListQuery::default(), &caller(Role::Admin)).unwrap();
        assert_eq!(all.filter.customer_id, None);
        let named = ListQuery {
            customer_id: Some("c2".into()),
            status: Some("paid".into()),
            limit: Some("5".into()),
            ..ListQuery::default()
        };
        let named = check(named, &caller(Role::Admin)).unwrap();
        assert_eq!(named.filter.customer_id.as_deref(), Some("c2"));
        assert_eq!(named.filter.status, Some(OrderStatus::Paid));
        assert_eq!(named.limit, 5);
    }
}
