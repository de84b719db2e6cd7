//! Demo data (issue #5): two accounts, the demo catalogue and a few orders of the demo user.
//!
//! The accounts' passwords are weak on purpose (`admin123`, `user123`): they are demo data,
//! for development only. `orderflow run` on its embedded defaults loads the accounts and the
//! catalogue on its first start (marker `demo-seeded` in the store); anywhere else seeding is
//! explicit: `orderflow seed`, which also places the sample orders.
//!
//! Everything is idempotent: accounts are looked up by email, products inserted only when
//! their SKU is missing, and orders placed only while the demo user has none, each with an
//! `Idempotency-Key`.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderMap, HeaderValue},
};
use orderflow_ingest::{auth::Role, customers::new_account, ApiState};
use orderflow_store::Store;
use serde_json::json;
use tracing::info;

use crate::demo;

/// The demo accounts: name, email, password, role.
pub const ACCOUNTS: [(&str, &str, &str, Role); 2] = [
    ("Demo Admin", "admin@example.com", "admin123", Role::Admin),
    ("Demo User", "user@example.com", "user123", Role::Customer),
];

/// The store marker of the first-start seeding of `orderflow run`.
pub const MARKER: &str = "demo-seeded";

/// What seeding did.
#[derive(Debug, Default)]
pub struct Seeded {
    pub accounts: usize,
    pub products: usize,
    pub orders: usize,
}

/// Creates the demo accounts that do not exist yet (verified).
pub async fn accounts(store: &dyn Store) -> Result<usize> {
    let mut created = 0;
    for (name, email, password, role) in ACCOUNTS {
        if store.get_account_by_email(email).await?.is_some() {
            continue;
        }
        let account = new_account(name, email, role, password.to_string())
            .await
            .map_err(|p| anyhow::anyhow!("creating {email}: {}", p.detail))?;
        if store.create_account(account).await? {
            created += 1;
        }
    }
    Ok(created)
}

/// Creates the admin of `--admin-email` / `--admin-password` unless an account with that
/// email exists (its password is then left as it is).
pub async fn first_admin(store: &dyn Store, args: &crate::cli::AuthArgs) -> Result<()> {
    let (Some(email), Some(password)) = (&args.admin_email, &args.admin_password) else {
        return Ok(());
    };
    if password.chars().count() < ADMIN_PASSWORD_MIN {
        bail!("--admin-password must be at least {ADMIN_PASSWORD_MIN} characters long");
    }
    if let Some(problem) = orderflow_ingest::auth::routes::email_problem(email) {
        bail!("--admin-email {email}: {problem}");
    }
    let email = orderflow_ingest::auth::routes::normalize_email(email);
    if store.get_account_by_email(&email).await?.is_some() {
        return Ok(());
    }
    let account = new_account("Admin", &email, Role::Admin, password.clone())
        .await
        .map_err(|p| anyhow::anyhow!("--admin-email {email}: {}", p.detail))?;
    if store.create_account(account).await? {
        info!(email = %email, "Admin account created.");
    }
    Ok(())
}

/// Shortest password `--admin-password` takes.
const ADMIN_PASSWORD_MIN: usize = 12;

/// Places the sample orders of the demo user through the API's own handler, unless the user
/// has orders already.
pub async fn orders(state: Arc<ApiState>) -> Result<usize> {
    let user = state
        .store
        .get_account_by_email(ACCOUNTS[1].1)
        .await?
        .context("the demo user is missing")?;
    if !state
        .store
        .list_customer_orders(&user.customer_id, None, 1)
        .await?
        .is_empty()
    {
        return Ok(0);
    }
    // Paid, declined, and one awaiting its bank transfer (its quantities may still change).
    let samples = [
        (vec![("MUG-001", 2), ("STICKER-001", 3)], "card", "tok_visa"),
        (vec![("TEE-001", 1)], "card", "tok_visa"),
        (vec![("HOODIE-001", 1)], "card", "tok_decline"),
        (
            vec![("MUG-001", 1)],
            "bank_transfer",
            "DE89 3704 0044 0532 0130 00",
        ),
    ];
    let placed = samples.len();
    for (i, (items, method, token)) in samples.into_iter().enumerate() {
        let body = json!({
            "customer_id": user.customer_id,
            "items": items.iter().map(|(sku, q)| json!({"sku": sku, "quantity": q}))
                .collect::<Vec<_>>(),
            "shipping_address": {"name": user.name, "line1": "1 Demo Street",
                                 "city": "Berlin", "postal_code": "10115", "country": "DE"},
            "payment": {"method": method, "token": token},
        });
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            "idempotency-key",
            HeaderValue::from_str(&format!("demo-seed-{i}"))?,
        );
        // Placed as the customer itself, as its own POST /v1/orders would be.
        let caller = orderflow_ingest::auth::Caller {
            customer_id: user.customer_id.clone(),
            role: orderflow_ingest::auth::Role::Customer,
            session_id: None,
        };
        if let Err(p) = orderflow_ingest::orders::create(
            State(state.clone()),
            caller,
            headers,
            Body::from(body.to_string()),
        )
        .await
        {
            bail!("placing sample order {i}: {}", p.detail);
        }
    }
    Ok(placed)
}

/// `orderflow seed`: accounts, catalogue, orders.
pub async fn all(state: Arc<ApiState>) -> Result<Seeded> {
    let seeded = Seeded {
        accounts: accounts(state.store.as_ref()).await?,
        products: state.store.seed_products(demo::catalogue()).await?,
        orders: orders(state.clone()).await?,
    };
    info!(
        accounts = seeded.accounts,
        products = seeded.products,
        orders = seeded.orders,
        "Demo data loaded."
    );
    Ok(seeded)
}
