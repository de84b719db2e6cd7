//! Demo data: two accounts, the demo catalogue and a few orders of the demo user.
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
use orderflow_ingest::{
    auth::Role,
    customers::new_account,
    ops::{place_order, NewOrder, Placed},
    ApiState,
};
use orderflow_schemas::{Address, OrderItem};
use orderflow_store::{IdempotencyKey, Store};
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

/// Places the sample orders of the demo user (as the customer itself, through the operation
/// behind `POST /v1/orders`), unless the user has orders already.
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
        let items: Vec<OrderItem> = items
            .into_iter()
            .map(|(sku, quantity)| OrderItem {
                sku: sku.into(),
                quantity,
            })
            .collect();
        // The key makes a second seeding that races the first place nothing twice.
        let key = format!("demo-seed-{i}");
        let idempotency_key = IdempotencyKey {
            fingerprint: orderflow_schemas::stable_digest(
                format!("{}:{key}", user.customer_id).as_bytes(),
            ),
            key,
            expires_at: orderflow_schemas::now_millis() + state.idempotency_ttl_ms,
        };
        let new = NewOrder {
            customer_id: user.customer_id.clone(),
            items,
            shipping_address: Address {
                name: user.name.clone(),
                line1: "1 Demo Street".into(),
                line2: None,
                city: "Berlin".into(),
                postal_code: "10115".into(),
                country: "DE".into(),
            },
            payment_method: method.into(),
            payment_token: token.into(),
            idempotency_key: Some(idempotency_key),
        };
        match place_order(&state, new).await {
            Ok(Placed::Accepted { .. } | Placed::Replayed { .. }) => {}
            Ok(other) => bail!("placing sample order {i}: {other:?}"),
            Err(e) => bail!("placing sample order {i}: {e}"),
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
