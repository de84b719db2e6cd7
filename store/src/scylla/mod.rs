//! The ScyllaDB store: the same [`Store`] contract as the embedded one, for services that run
//! apart and scale out. Tables: `store/migrations/scylla/` (applied by [`migrate`]).
//!
//! How each guarantee is kept without multi-partition transactions:
//! - **Stock** is moved by compare-and-set (LWT on `products.version`). An order's reservation
//!   is owned by one worker at a time through a lease on its `reservations` row; the owner
//!   takes each SKU's units recording them in `products.holds[order]`, so a retry after a crash
//!   knows which SKUs it already took and never takes twice. The outcome is recorded on the
//!   reservation row (`IF owner = me`), then the holds are dropped. A reservation that fails
//!   part-way gives back what it took before it records the rejection: all or nothing.
//! - **Payments** and **invoices** are `INSERT … IF NOT EXISTS`: the first writer wins and
//!   everyone else reads the winner.
//! - **Idempotency keys**: the key is claimed (`INSERT … IF NOT EXISTS`) naming the new order's
//!   id, and the order is then written by a conditional batch on its own partition (`IF
//!   customer_id = null AND voided = null`). A call that meets a key whose order is not written
//!   yet answers "in progress" while the claim is young (10 s, from the UUIDv7 order id);
//!   after that it voids the named order id (`SET voided = true IF customer_id = null`) before
//!   it replaces the key, so the first call, if it was only stalled, can no longer write its
//!   order. Claim and write are two partitions, but the fence is on the order's: one key, one
//!   order, under any interleaving.
//! - **Unpaid orders** (`orders.rs`): bank-transfer orders awaiting their transfer are listed by
//!   time placed for the expiry sweep; an expiry is the cancel's conditional batch that is also
//!   refused once the payment is claimed.
//! - **Invoice numbers** come from one LWT sequence row that takes the next number together
//!   with the whole invoice (`pending`): whoever takes the number after it writes that invoice
//!   first, so a crash between the two steps leaves no gap.
//! - The **order read model** is one partition per order with one row per timeline event
//!   (clustered by event id, so a redelivery overwrites itself); the status is the furthest
//!   step, computed on read, so it never moves back whatever order events arrive in.
//!
//! Every operation is idempotent, so a timeout whose outcome is unknown is simply retried (a
//! few times here, then by the caller, which sees [`StoreError::Unavailable`]).
//!
//! Limits, by design: invoice numbering is one LWT partition (a few hundred to a few thousand
//! invoices/s per cluster); a lease owner stalled past its lease (30 s, and it stops 10 s
//! before) could race the next owner on one stock update; a crash between recording a
//! reservation and dropping its holds leaves a stale `holds` entry (the stock stays right; the
//! entry goes when the order is released). Order ids are UUIDv7 (ingest makes them so): the
//! customer index is bucketed by their time.
//! - The **admin list** (`list_orders`) walks `orders_by_day` (one partition per day of the
//!   order id's time, newest first) over the days `order_days` names, or a customer's own index
//!   when the filter names one; the status and time filters are applied to the orders read
//!   while paging.
//! - **Payment tokens** (`payments.rs`) and **verification emails** (`accounts.rs`): a card
//!   order's token is a static column pair of the order's partition, written right after the
//!   order with a TTL to its expiry; a verification email's clear code is a row by event id
//!   with a TTL.
//! - **Modifications** and **payment claims** (`orders.rs`): an order's `revision`,
//!   `payment_claim` and `lifecycle` static columns are written only by LWTs on its partition,
//!   so a modification's fence, a claim, a cancel and a ship are ordered by Paxos and exactly
//!   one of a racing modification and claim wins. A modification moves the stock first, under
//!   the reservation lease and a `holds` key of its revision, and moves it back when its fence
//!   is refused; whoever takes the lease next finishes or undoes one that stopped part-way.
//! - The **outbox** (`outbox.rs`): a call that announces a change writes an intent row before
//!   its decisive write, and deletes it when it changed nothing; the relay is given an intent
//!   once the change it names is recorded (the order's timeline has the event id), with the
//!   event built from the recorded state.

mod accounts;
mod catalogue;
mod deliveries;
mod invoices;
mod migrate;
mod orders;
mod outbox;
mod payments;

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering as AtomicOrdering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use futures::{future::try_join_all, TryStreamExt};
pub use migrate::{
    current_version, latest_version, migrate, valid_keyspace, MigrationReport, Replication,
    MIGRATIONS,
};
use orderflow_schemas::{now_millis, Backoff, OrderItem, OrderStatus};
use scylla::{
    client::{session::Session, session_builder::SessionBuilder},
    frame::types::Consistency,
    response::query_result::QueryResult,
    statement::{
        batch::{Batch, BatchType},
        prepared::PreparedStatement,
    },
    value::{CqlValue, Row},
};
use serde::{de::DeserializeOwned, Serialize};

use crate::{model::*, InvoiceStore, OrderStore, Result, StepStore, Store, StoreError};

/// Where the store is and how it behaves.
#[derive(Debug, Clone)]
pub struct ScyllaConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    pub keyspace: String,
    /// How long a sink's delivery marker is kept (the bridge's dedup window).
    pub delivery_ttl: Duration,
    pub connect_timeout: Duration,
    /// Who to log in as (PasswordAuthenticator), when the cluster requires it.
    pub credentials: Option<ScyllaCredentials>,
    /// TLS to every node, when the cluster requires it (`None`: plain CQL).
    pub tls: Option<ScyllaTls>,
}

impl ScyllaConfig {
    pub fn new(nodes: Vec<String>, keyspace: impl Into<String>) -> Self {
        ScyllaConfig {
            nodes,
            keyspace: keyspace.into(),
            delivery_ttl: crate::DEFAULT_DELIVERY_TTL,
            connect_timeout: Duration::from_secs(10),
            credentials: None,
            tls: None,
        }
    }
}

/// A CQL username and password. `Debug` leaves the password out.
#[derive(Clone, PartialEq, Eq)]
pub struct ScyllaCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for ScyllaCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaCredentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// How to trust the nodes' certificates. Each node's certificate must name the address the
/// driver connects to (its IP, as the cluster reports it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScyllaTls {
    /// A PEM file of the CA(s) that signed the nodes' certificates; `None`: the system's CAs.
    pub ca: Option<std::path::PathBuf>,
}

impl ScyllaTls {
    /// The driver's TLS context: OpenSSL (the library librdkafka uses too), peer verification
    /// on, against `ca` or the system's CAs.
    fn context(&self) -> Result<scylla::client::session::OpenSsl010Config> {
        use openssl::ssl::{SslConnector, SslMethod};
        let invalid = |what: String| StoreError::Invalid(what);
        let mut builder = SslConnector::builder(SslMethod::tls())
            .map_err(|e| invalid(format!("ScyllaDB TLS: {e}")))?;
        if let Some(ca) = &self.ca {
            // Read here so that a wrong path is one clear line, not an OpenSSL error stack.
            let pem = std::fs::read(ca)
                .map_err(|e| invalid(format!("ScyllaDB CA {}: {e}", ca.display())))?;
            let certs = openssl::x509::X509::stack_from_pem(&pem)
                .ok()
                .filter(|certs| !certs.is_empty())
                .ok_or_else(|| {
                    invalid(format!(
                        "ScyllaDB CA {}: no PEM certificate in it",
                        ca.display()
                    ))
                })?;
            let store = builder.cert_store_mut();
            for cert in certs {
                store
                    .add_cert(cert)
                    .map_err(|e| invalid(format!("ScyllaDB CA {}: {e}", ca.display())))?;
            }
        }
        Ok(scylla::client::session::OpenSsl010Config::new(builder))
    }
}

/// Connects to the cluster, without selecting a keyspace (for [`migrate`]).
pub async fn connect(config: &ScyllaConfig) -> Result<Session> {
    if config.nodes.is_empty() {
        return Err(StoreError::Invalid("no ScyllaDB node given".into()));
    }
    let mut builder = SessionBuilder::new()
        .known_nodes(&config.nodes)
        .connection_timeout(config.connect_timeout);
    if let Some(credentials) = &config.credentials {
        builder = builder.user(&credentials.username, &credentials.password);
    }
    if let Some(tls) = &config.tls {
        builder = builder.tls_context(Some(tls.context()?));
    }
    builder.build().await.map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot connect to ScyllaDB at {}: {e}",
            config.nodes.join(",")
        ))
    })
}

/// How long a worker owns an order's reservation before another may take over.
const LEASE_MS: i64 = 30_000;
/// A lease owner stops moving stock this long before its lease ends.
const LEASE_MARGIN_MS: i64 = 10_000;
/// Attempts of one operation on timeouts and lost races before the caller sees the error.
const ATTEMPTS: u32 = 6;
/// 30-day buckets of a customer's order index.
const BUCKET_MS: i64 = 30 * 24 * 60 * 60 * 1000;
/// How long a call that claimed an idempotency key has to write its order: until then another
/// call with the key answers "in progress"; after it, the claim is taken over (and its order
/// id voided, so the claiming call can never write it).
const KEY_CLAIM_MS: i64 = 10_000;
/// Idempotency-key rows live this long past their `expires_at` (the decision uses `expires_at`).
const IDEMPOTENCY_GRACE_SECS: i64 = 60 * 60;
const INVOICE_SEQUENCE: &str = "invoice";

/// The ScyllaDB-backed [`Store`]. Clones share one session.
#[derive(Clone)]
pub struct ScyllaStore {
    session: Arc<Session>,
    q: Arc<Statements>,
    /// The statements of accounts: [`accounts`].
    accounts: Arc<accounts::AccountStatements>,
    /// The statements of cancel and ship: [`orders`].
    lifecycle: Arc<orders::LifecycleStatements>,
    /// The statements of modifications and payment claims: [`orders`].
    modify: Arc<orders::ModifyStatements>,
    /// The statements of orders awaiting a bank transfer: [`orders`].
    unpaid: Arc<orders::UnpaidStatements>,
    /// The statements of payment tokens: [`payments`].
    tokens: Arc<payments::TokenStatements>,
    /// The outbox's statements and this instance's place in it: [`outbox`].
    outbox: Arc<outbox::Outbox>,
    keyspace: String,
    delivery_ttl_secs: i32,
}

impl std::fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaStore")
            .field("keyspace", &self.keyspace)
            .finish()
    }
}

struct Statements {
    product_get: PreparedStatement,
    product_insert: PreparedStatement,
    product_update: PreparedStatement,
    product_edit: PreparedStatement,
    product_adjust: PreparedStatement,
    /// Clears an adjustment key's hold and bumps the version.
    product_clear_hold: PreparedStatement,
    adjustment_key_claim: PreparedStatement,
    adjustment_key_get: PreparedStatement,
    adjustment_key_done: PreparedStatement,
    product_move: PreparedStatement,
    product_drop_hold: PreparedStatement,
    product_list: PreparedStatement,
    order_get: PreparedStatement,
    order_statics: PreparedStatement,
    order_entry: PreparedStatement,
    order_entry_with_customer: PreparedStatement,
    order_pricing: PreparedStatement,
    order_invoice_number: PreparedStatement,
    customer_order: PreparedStatement,
    customer_bucket: PreparedStatement,
    customer_buckets: PreparedStatement,
    customer_page: PreparedStatement,
    customer_page_before: PreparedStatement,
    key_claim: PreparedStatement,
    key_replace: PreparedStatement,
    key_release: PreparedStatement,
    /// Writes a keyed order's statics unless its partition has an order or is voided.
    order_open: PreparedStatement,
    /// Makes sure an order id named by a key that is taken over is never written.
    order_void: PreparedStatement,
    reservation_get: PreparedStatement,
    reservation_claim: PreparedStatement,
    reservation_take_over: PreparedStatement,
    reservation_decide: PreparedStatement,
    reservation_let_go: PreparedStatement,
    payment_get: PreparedStatement,
    payment_insert: PreparedStatement,
    invoice_get: PreparedStatement,
    invoice_insert: PreparedStatement,
    sequence_get: PreparedStatement,
    sequence_init: PreparedStatement,
    sequence_take: PreparedStatement,
    delivery_get: PreparedStatement,
    delivery_put: PreparedStatement,
    health: PreparedStatement,
    // --- Order lifecycle ---
    day_order: PreparedStatement,
    day_mark: PreparedStatement,
    days: PreparedStatement,
    day_page: PreparedStatement,
    day_page_before: PreparedStatement,
}

impl Statements {
    async fn prepare(session: &Session, ks: &str) -> Result<Self> {
        let p = |cql: String, serial_read: bool| async move {
            let mut statement = session
                .prepare(cql.clone())
                .await
                .map_err(|e| StoreError::Unavailable(format!("cannot prepare `{cql}`: {e}")))?;
            // Every statement of this store may run twice: each is written to be idempotent.
            statement.set_is_idempotent(true);
            if serial_read {
                // Reads that a compare-and-set decision depends on see every accepted LWT.
                statement.set_consistency(Consistency::LocalSerial);
            } else {
                statement.set_consistency(Consistency::LocalQuorum);
            }
            Ok::<_, StoreError>(statement)
        };
        Ok(Statements {
            product_get: p(format!("SELECT sku, name, price_cents, currency, stock, reserved, holds, version, discontinued FROM {ks}.products WHERE sku = ?"), true).await?,
            product_insert: p(format!("INSERT INTO {ks}.products (sku, name, price_cents, currency, stock, reserved, discontinued, version) VALUES (?, ?, ?, ?, ?, ?, ?, 0) IF NOT EXISTS"), false).await?,
            product_update: p(format!("UPDATE {ks}.products SET name = ?, price_cents = ?, currency = ?, stock = ?, reserved = ?, discontinued = ?, version = ? WHERE sku = ? IF version = ?"), false).await?,
            product_edit: p(format!("UPDATE {ks}.products SET name = ?, price_cents = ?, discontinued = ?, version = ? WHERE sku = ? IF version = ?"), false).await?,
            product_adjust: p(format!("UPDATE {ks}.products SET stock = ?, holds[?] = ?, version = ? WHERE sku = ? IF version = ?"), false).await?,
            product_clear_hold: p(format!("UPDATE {ks}.products SET holds = holds - ?, version = ? WHERE sku = ? IF version = ?"), false).await?,
            adjustment_key_claim: p(format!("INSERT INTO {ks}.stock_adjustment_keys (key, sku, delta, expires_at) VALUES (?, ?, ?, ?) IF NOT EXISTS USING TTL ?"), false).await?,
            adjustment_key_get: p(format!("SELECT sku, delta, expires_at, done FROM {ks}.stock_adjustment_keys WHERE key = ?"), true).await?,
            adjustment_key_done: p(format!("UPDATE {ks}.stock_adjustment_keys SET done = true WHERE key = ? IF EXISTS"), false).await?,
            product_move: p(format!("UPDATE {ks}.products SET stock = ?, reserved = ?, holds[?] = ?, version = ? WHERE sku = ? IF version = ?"), false).await?,
            product_drop_hold: p(format!("DELETE holds[?] FROM {ks}.products WHERE sku = ? IF EXISTS"), false).await?,
            product_list: p(format!("SELECT sku, name, price_cents, currency, stock, reserved, holds, version, discontinued FROM {ks}.products"), false).await?,
            order_get: p(format!("SELECT {ORDER_COLUMNS} FROM {ks}.orders WHERE order_id = ?"), false).await?,
            order_statics: p(format!("INSERT INTO {ks}.orders (order_id, customer_id, items, shipping_address, payment_method, pricing, invoice_number, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"), false).await?,
            order_entry: p(format!("INSERT INTO {ks}.orders (order_id, event_id, status, at, detail) VALUES (?, ?, ?, ?, ?)"), false).await?,
            order_entry_with_customer: p(format!("INSERT INTO {ks}.orders (order_id, event_id, status, at, detail, customer_id) VALUES (?, ?, ?, ?, ?, ?)"), false).await?,
            order_pricing: p(format!("UPDATE {ks}.orders SET pricing = ? WHERE order_id = ?"), false).await?,
            order_invoice_number: p(format!("UPDATE {ks}.orders SET invoice_number = ? WHERE order_id = ?"), false).await?,
            customer_order: p(format!("INSERT INTO {ks}.customer_orders (customer_id, bucket, order_id) VALUES (?, ?, ?)"), false).await?,
            customer_bucket: p(format!("INSERT INTO {ks}.customer_order_buckets (customer_id, bucket) VALUES (?, ?)"), false).await?,
            customer_buckets: p(format!("SELECT bucket FROM {ks}.customer_order_buckets WHERE customer_id = ? AND bucket <= ?"), false).await?,
            customer_page: p(format!("SELECT order_id FROM {ks}.customer_orders WHERE customer_id = ? AND bucket = ? LIMIT ?"), false).await?,
            customer_page_before: p(format!("SELECT order_id FROM {ks}.customer_orders WHERE customer_id = ? AND bucket = ? AND order_id < ? LIMIT ?"), false).await?,
            key_claim: p(format!("INSERT INTO {ks}.idempotency_keys (customer_id, key, order_id, fingerprint, expires_at) VALUES (?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?"), false).await?,
            key_replace: p(format!("UPDATE {ks}.idempotency_keys USING TTL ? SET order_id = ?, fingerprint = ?, expires_at = ? WHERE customer_id = ? AND key = ? IF order_id = ? AND expires_at = ?"), false).await?,
            key_release: p(format!("DELETE FROM {ks}.idempotency_keys WHERE customer_id = ? AND key = ? IF order_id = ?"), false).await?,
            order_open: p(format!("UPDATE {ks}.orders SET customer_id = ?, items = ?, shipping_address = ?, payment_method = ?, pricing = ?, invoice_number = ?, created_at = ? WHERE order_id = ? IF customer_id = null AND voided = null"), false).await?,
            order_void: p(format!("UPDATE {ks}.orders SET voided = true WHERE order_id = ? IF customer_id = null"), false).await?,
            reservation_get: p(format!("SELECT outcome, owner, lease_until FROM {ks}.reservations WHERE order_id = ?"), true).await?,
            reservation_claim: p(format!("INSERT INTO {ks}.reservations (order_id, owner, lease_until) VALUES (?, ?, ?) IF NOT EXISTS"), false).await?,
            reservation_take_over: p(format!("UPDATE {ks}.reservations SET owner = ?, lease_until = ? WHERE order_id = ? IF lease_until < ?"), false).await?,
            reservation_decide: p(format!("UPDATE {ks}.reservations SET outcome = ?, owner = null, lease_until = 0 WHERE order_id = ? IF owner = ?"), false).await?,
            reservation_let_go: p(format!("UPDATE {ks}.reservations SET owner = null, lease_until = 0 WHERE order_id = ? IF owner = ?"), false).await?,
            payment_get: p(format!("SELECT payment FROM {ks}.payments WHERE order_id = ?"), true).await?,
            payment_insert: p(format!("INSERT INTO {ks}.payments (order_id, payment) VALUES (?, ?) IF NOT EXISTS"), false).await?,
            invoice_get: p(format!("SELECT invoice FROM {ks}.invoices WHERE order_id = ?"), true).await?,
            invoice_insert: p(format!("INSERT INTO {ks}.invoices (order_id, invoice) VALUES (?, ?) IF NOT EXISTS"), false).await?,
            sequence_get: p(format!("SELECT value, pending FROM {ks}.sequences WHERE name = ?"), true).await?,
            sequence_init: p(format!("INSERT INTO {ks}.sequences (name, value) VALUES (?, 0) IF NOT EXISTS"), false).await?,
            sequence_take: p(format!("UPDATE {ks}.sequences SET value = ?, pending = ? WHERE name = ? IF value = ?"), false).await?,
            delivery_get: p(format!("SELECT delivered_at FROM {ks}.deliveries WHERE sink = ? AND id = ?"), false).await?,
            delivery_put: p(format!("INSERT INTO {ks}.deliveries (sink, id, delivered_at) VALUES (?, ?, ?) USING TTL ?"), false).await?,
            health: p(format!("SELECT version FROM {ks}.schema_migrations LIMIT 1"), false).await?,
            // --- Order lifecycle ---
            day_order: p(format!("INSERT INTO {ks}.orders_by_day (day, order_id, customer_id) VALUES (?, ?, ?)"), false).await?,
            day_mark: p(format!("INSERT INTO {ks}.order_days (shard, day) VALUES (0, ?)"), false).await?,
            days: p(format!("SELECT day FROM {ks}.order_days WHERE shard = 0 AND day <= ? AND day >= ?"), false).await?,
            day_page: p(format!("SELECT order_id FROM {ks}.orders_by_day WHERE day = ? LIMIT ?"), false).await?,
            day_page_before: p(format!("SELECT order_id FROM {ks}.orders_by_day WHERE day = ? AND order_id < ? LIMIT ?"), false).await?,
        })
    }
}

impl ScyllaStore {
    /// Connects, checks that the keyspace has this build's schema (see [`migrate`]) and
    /// prepares every statement.
    pub async fn open(config: &ScyllaConfig) -> Result<Self> {
        let session = connect(config).await?;
        Self::with_session(session, config).await
    }

    /// As [`ScyllaStore::open`], on a session already connected.
    pub async fn with_session(session: Session, config: &ScyllaConfig) -> Result<Self> {
        let keyspace = config.keyspace.clone();
        if !valid_keyspace(&keyspace) {
            return Err(StoreError::Invalid(format!(
                "`{keyspace}` is not a valid keyspace name"
            )));
        }
        let version = current_version(&session, &keyspace).await?;
        let needed = latest_version();
        if version < needed {
            return Err(StoreError::Invalid(format!(
                "keyspace {keyspace} is at schema version {version}, this build needs {needed}: \
                 run `orderflow migrate` (or start with --migrate)"
            )));
        }
        if version > needed {
            return Err(StoreError::Invalid(format!(
                "keyspace {keyspace} is at schema version {version}, newer than this build \
                 knows ({needed}): upgrade orderflow"
            )));
        }
        let q = Statements::prepare(&session, &keyspace).await?;
        let accounts = accounts::AccountStatements::prepare(&session, &keyspace).await?;
        let lifecycle = orders::LifecycleStatements::prepare(&session, &keyspace).await?;
        let modify = orders::ModifyStatements::prepare(&session, &keyspace).await?;
        let unpaid = orders::UnpaidStatements::prepare(&session, &keyspace).await?;
        let tokens = payments::TokenStatements::prepare(&session, &keyspace).await?;
        let outbox = outbox::Outbox::prepare(&session, &keyspace).await?;
        Ok(ScyllaStore {
            session: Arc::new(session),
            q: Arc::new(q),
            accounts: Arc::new(accounts),
            lifecycle: Arc::new(lifecycle),
            modify: Arc::new(modify),
            unpaid: Arc::new(unpaid),
            tokens: Arc::new(tokens),
            outbox: Arc::new(outbox),
            keyspace,
            delivery_ttl_secs: i32::try_from(config.delivery_ttl.as_secs())
                .unwrap_or(i32::MAX)
                .max(1),
        })
    }

    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    async fn run(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<QueryResult> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(unavailable)
    }

    /// Runs a statement and decodes its rows.
    async fn rows<R>(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<Vec<R>>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let result = self.run(statement, values).await?;
        let rows = result.into_rows_result().map_err(corrupt)?;
        let out = rows
            .rows::<R>()
            .map_err(corrupt)?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(corrupt);
        out
    }

    async fn first<R>(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<Option<R>>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        Ok(self.rows(statement, values).await?.into_iter().next())
    }

    /// Runs a lightweight transaction: whether it applied, and the row that stopped it.
    async fn lwt(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<Lwt> {
        let result = self.run(statement, values).await?;
        Lwt::from_result(result)
    }

    /// Runs a conditional batch (one partition; its first statement carries the `IF`) at
    /// quorum with serial consistency, idempotent, and reads its answer like [`Self::lwt`].
    async fn lwt_batch(
        &self,
        mut batch: scylla::statement::batch::Batch,
        values: Vec<Vec<Option<CqlValue>>>,
    ) -> Result<Lwt> {
        batch.set_consistency(Consistency::LocalQuorum);
        batch.set_serial_consistency(Some(scylla::statement::SerialConsistency::LocalSerial));
        batch.set_is_idempotent(true);
        let result = self
            .session
            .batch(&batch, values)
            .await
            .map_err(unavailable)?;
        Lwt::from_result(result)
    }

    /// Inserts a product unless its SKU exists (`applied` says which).
    async fn insert_product(&self, p: &Product) -> Result<Lwt> {
        self.lwt(
            &self.q.product_insert,
            (
                p.sku.as_str(),
                p.name.as_str(),
                p.price_cents,
                p.currency.as_str(),
                p.stock,
                p.reserved,
                p.discontinued,
            ),
        )
        .await
    }

    async fn read_product(&self, sku: &str) -> Result<Option<StockRow>> {
        self.first::<ProductRow>(&self.q.product_get, (sku,))
            .await
            .map(|row| row.map(StockRow::from))
    }

    /// Moves `units` of stock into (positive) or out of (negative) `reserved`, recording `hold`
    /// for `order_id`, if the row is still at `version`.
    async fn move_stock(
        &self,
        row: &StockRow,
        order_id: &str,
        units: i64,
        hold: i64,
    ) -> Result<bool> {
        let lwt = self
            .lwt(
                &self.q.product_move,
                (
                    row.product.stock - units,
                    row.product.reserved + units,
                    order_id,
                    hold,
                    row.version + 1,
                    row.product.sku.as_str(),
                    row.version,
                ),
            )
            .await?;
        Ok(lwt.applied)
    }

    async fn drop_holds(&self, order_id: &str, skus: &[&str]) -> Result<()> {
        try_join_all(
            skus.iter()
                .map(|sku| self.lwt(&self.q.product_drop_hold, (order_id, *sku))),
        )
        .await?;
        Ok(())
    }

    /// Takes the lease on an order's reservation row: `Ok(Some(outcome))` when one is recorded
    /// and `wanted` says that is all the caller needs.
    async fn claim(&self, order_id: &str, lease: &Lease, create: bool) -> Result<Claim> {
        for _ in 0..ATTEMPTS {
            if create {
                let lwt = self
                    .lwt(
                        &self.q.reservation_claim,
                        (order_id, lease.owner.as_str(), lease.until),
                    )
                    .await?;
                if lwt.applied {
                    return Ok(Claim::Owned(None));
                }
            }
            let Some((outcome, owner, until)) = self
                .first::<(Option<String>, Option<String>, Option<i64>)>(
                    &self.q.reservation_get,
                    (order_id,),
                )
                .await?
            else {
                if create {
                    continue; // gone between the two statements: claim again
                }
                return Ok(Claim::Missing);
            };
            let outcome: Option<Reservation> =
                outcome.map(|o| from_json("reservation", &o)).transpose()?;
            if create {
                if let Some(outcome) = outcome {
                    return Ok(Claim::Decided(outcome));
                }
            }
            let until = until.unwrap_or(0);
            // Our own lease, from an attempt whose answer was lost.
            if owner.as_deref() == Some(lease.owner.as_str()) {
                return Ok(Claim::Owned(outcome));
            }
            if until > now_millis() {
                return Err(StoreError::Unavailable(format!(
                    "the reservation of order {order_id} is being changed by another worker"
                )));
            }
            let lwt = self
                .lwt(
                    &self.q.reservation_take_over,
                    (lease.owner.as_str(), lease.until, order_id, now_millis()),
                )
                .await?;
            if lwt.applied {
                return Ok(Claim::Owned(outcome));
            }
        }
        Err(StoreError::Unavailable(format!(
            "could not take the reservation lease of order {order_id}"
        )))
    }

    /// Records the outcome and gives up the lease; fails if the lease was lost.
    async fn decide(&self, order_id: &str, lease: &Lease, outcome: &Reservation) -> Result<()> {
        let lwt = self
            .lwt(
                &self.q.reservation_decide,
                (to_json(outcome)?, order_id, lease.owner.as_str()),
            )
            .await?;
        if !lwt.applied {
            return Err(StoreError::Unavailable(format!(
                "lost the reservation lease of order {order_id} before recording its outcome"
            )));
        }
        Ok(())
    }

    /// Gives back whatever this order still holds of these SKUs (a reservation that failed
    /// part-way).
    async fn give_back(&self, order_id: &str, skus: &[&str], lease: &Lease) -> Result<()> {
        for sku in skus {
            loop {
                lease.check(order_id)?;
                let Some(row) = self.read_product(sku).await? else {
                    break;
                };
                let held = row.holds.get(order_id).copied().unwrap_or(0);
                if held <= 0 {
                    break;
                }
                if self.move_stock(&row, order_id, -held, 0).await? {
                    break;
                }
                tokio::time::sleep(jitter(Duration::from_millis(2))).await;
            }
        }
        Ok(())
    }

    async fn release_once(&self, order_id: &str, lease: &Lease) -> Result<bool> {
        self.settle_once(order_id, lease, true).await
    }

    /// Settles the order's reservation once: its units go back to the stock (`give_back`), or
    /// leave `reserved` without returning (shipped). A negative hold marks a SKU settled, so a
    /// retry after a crash settles what is left and nothing twice.
    async fn settle_once(&self, order_id: &str, lease: &Lease, give_back: bool) -> Result<bool> {
        let outcome = match self.claim(order_id, lease, false).await? {
            Claim::Missing => return Ok(false),
            Claim::Owned(outcome) => outcome,
            Claim::Decided(_) => unreachable!("claim without create never answers Decided"),
        };
        let Some(Reservation::Reserved {
            lines,
            at,
            released: false,
            revision,
        }) = outcome
        else {
            // Rejected, released already, or still being decided: nothing to give back.
            self.let_go(order_id, lease).await?;
            return Ok(false);
        };
        // A modification that stopped part-way is finished or undone first, so what is
        // settled is what the order holds ([`orders`]).
        let orders::Reconciled {
            lines, revision, ..
        } = self.reconcile(order_id, lease, lines, revision).await?;
        let mut given: Vec<(String, i64)> = Vec::new();
        for line in &lines {
            match given.iter_mut().find(|(sku, _)| *sku == line.sku) {
                Some((_, q)) => *q += i64::from(line.quantity),
                None => given.push((line.sku.clone(), i64::from(line.quantity))),
            }
        }
        for (sku, quantity) in &given {
            loop {
                lease.check(order_id)?;
                let Some(row) = self.read_product(sku).await? else {
                    break; // the product is gone: nothing to give back to
                };
                // A negative hold: this release already gave this SKU back.
                if row.holds.get(order_id).copied().unwrap_or(0) < 0 {
                    break;
                }
                let settled = if give_back {
                    self.move_stock(&row, order_id, -quantity, -quantity)
                        .await?
                } else {
                    self.lwt(
                        &self.q.product_move,
                        (
                            row.product.stock,
                            row.product.reserved - quantity,
                            order_id,
                            -quantity,
                            row.version + 1,
                            row.product.sku.as_str(),
                            row.version,
                        ),
                    )
                    .await?
                    .applied
                };
                if settled {
                    break;
                }
                tokio::time::sleep(jitter(Duration::from_millis(2))).await;
            }
        }
        self.decide(
            order_id,
            lease,
            &Reservation::Reserved {
                lines,
                at,
                released: true,
                revision,
            },
        )
        .await?;
        let skus: Vec<&str> = given.iter().map(|(sku, _)| sku.as_str()).collect();
        self.drop_holds(order_id, &skus).await?;
        Ok(true)
    }

    /// Claims a stock adjustment's key: `Some(answer)` when the key already
    /// answers the call (done: replayed; another adjustment: reused), `None` when the call
    /// goes on (the key is new, or pending for this same adjustment).
    async fn claim_adjustment_key(
        &self,
        key: &AdjustmentKey,
        sku: &str,
        delta: i64,
    ) -> Result<Option<StockAdjustment>> {
        let now = now_millis();
        let ttl = i32::try_from((key.expires_at - now).max(0) / 1000 + 1).unwrap_or(i32::MAX);
        let lwt = retry("adjust_stock", || {
            self.lwt(
                &self.q.adjustment_key_claim,
                (key.key.as_str(), sku, delta, key.expires_at, ttl),
            )
        })
        .await?;
        if lwt.applied {
            return Ok(None);
        }
        let (Some(seen_sku), Some(seen_delta), Some(expires_at)) = (
            lwt.text("sku"),
            lwt.bigint("delta"),
            lwt.bigint("expires_at"),
        ) else {
            return Err(raced());
        };
        if expires_at <= now {
            // Expired but not yet gone (TTL): the key is free again, the earlier adjustment is
            // over; go on (the hold of the earlier call was cleared once it was done).
            return Ok(None);
        }
        if seen_sku != sku || seen_delta != delta {
            return Ok(Some(StockAdjustment::KeyReused));
        }
        if !self.adjustment_done(&key.key).await? {
            return Ok(None);
        }
        match retry("adjust_stock", || self.read_product(sku)).await? {
            Some(row) => Ok(Some(StockAdjustment::Replayed(row.product))),
            None => Ok(Some(StockAdjustment::NotFound)),
        }
    }

    /// Whether the adjustment under `key` is done (its stock moved, durably).
    async fn adjustment_done(&self, key: &str) -> Result<bool> {
        let row = self
            .first::<(Option<String>, Option<i64>, Option<i64>, Option<bool>)>(
                &self.q.adjustment_key_get,
                (key,),
            )
            .await?;
        Ok(row.is_some_and(|(.., done)| done == Some(true)))
    }

    /// Removes a done adjustment's hold from the product, bumping its version, so a call that
    /// read the product before this and the key before it was done cannot move the stock.
    async fn clear_adjustment_hold(&self, sku: &str, hold: &str) -> Result<()> {
        for _ in 0..ATTEMPTS * 8 {
            let Some(row) = self.read_product(sku).await? else {
                return Ok(());
            };
            if !row.holds.contains_key(hold) {
                return Ok(());
            }
            let holds: std::collections::HashSet<&str> = [hold].into_iter().collect();
            let lwt = self
                .lwt(
                    &self.q.product_clear_hold,
                    (holds, row.version + 1, sku, row.version),
                )
                .await?;
            if lwt.applied {
                return Ok(());
            }
            tokio::time::sleep(jitter(Duration::from_millis(2))).await;
        }
        Err(StoreError::Unavailable(format!(
            "the stock of {sku} is too contended to clear a hold"
        )))
    }

    /// Records `record` as the order's `column` (JSON) with an `INSERT … IF NOT EXISTS` of
    /// `(order_id, column)`, unless the order has one: returns the one recorded, the first
    /// writer's.
    async fn record_once<T: Serialize + DeserializeOwned + Clone>(
        &self,
        insert: &PreparedStatement,
        column: &str,
        order_id: &str,
        record: T,
    ) -> Result<T> {
        let json = to_json(&record)?;
        retry(&format!("record_{column}"), || async {
            let lwt = self.lwt(insert, (order_id, json.as_str())).await?;
            if lwt.applied {
                return Ok(record.clone());
            }
            match lwt.text(column) {
                Some(existing) => from_json(column, &existing),
                None => Err(raced()),
            }
        })
        .await
    }

    async fn let_go(&self, order_id: &str, lease: &Lease) -> Result<()> {
        self.lwt(&self.q.reservation_let_go, (order_id, lease.owner.as_str()))
            .await?;
        Ok(())
    }

    /// Writes an order: its statics and timeline, and its index rows.
    async fn write_order(&self, order: &OrderRecord) -> Result<()> {
        let mut batch = Batch::new(BatchType::Logged);
        let mut values: Vec<Vec<Option<CqlValue>>> = Vec::new();
        batch.append_statement(self.q.order_statics.clone());
        values.push(vec![
            text(&order.order_id),
            text(&order.customer_id),
            Some(CqlValue::Text(to_json(&order.items)?)),
            json_opt(&order.shipping_address)?,
            order.payment_method.as_deref().and_then(text),
            json_opt(&order.pricing)?,
            order.invoice_number.as_deref().and_then(text),
            Some(CqlValue::BigInt(order.created_at)),
        ]);
        self.timeline_rows(order, &mut batch, &mut values);
        self.index_rows(order, &mut batch, &mut values);
        batch.set_consistency(Consistency::LocalQuorum);
        batch.set_is_idempotent(true);
        self.session
            .batch(&batch, values)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// The timeline rows of a new order, for a batch on its partition.
    fn timeline_rows(
        &self,
        order: &OrderRecord,
        batch: &mut Batch,
        values: &mut Vec<Vec<Option<CqlValue>>>,
    ) {
        for entry in &order.timeline {
            batch.append_statement(self.q.order_entry.clone());
            values.push(vec![
                text(&order.order_id),
                text(&entry.event_id),
                text(entry.status.as_str()),
                Some(CqlValue::BigInt(entry.at)),
                entry.detail.as_deref().and_then(text),
            ]);
        }
    }

    /// The rows that list a new order: its customer's, its day's, and the unpaid orders'.
    fn index_rows(
        &self,
        order: &OrderRecord,
        batch: &mut Batch,
        values: &mut Vec<Vec<Option<CqlValue>>>,
    ) {
        let bucket = bucket_of(&order.order_id, order.created_at);
        batch.append_statement(self.q.customer_order.clone());
        values.push(vec![
            text(&order.customer_id),
            Some(CqlValue::Int(bucket)),
            text(&order.order_id),
        ]);
        batch.append_statement(self.q.customer_bucket.clone());
        values.push(vec![text(&order.customer_id), Some(CqlValue::Int(bucket))]);
        let day = day_of(&order.order_id, order.created_at);
        batch.append_statement(self.q.day_order.clone());
        values.push(vec![
            Some(CqlValue::Int(day)),
            text(&order.order_id),
            text(&order.customer_id),
        ]);
        batch.append_statement(self.q.day_mark.clone());
        values.push(vec![Some(CqlValue::Int(day))]);
        self.unpaid_rows(order, batch, values);
    }

    /// Writes the index rows of an order written already (idempotent).
    async fn write_index_rows(&self, order: &OrderRecord) -> Result<()> {
        let mut batch = Batch::new(BatchType::Logged);
        let mut values: Vec<Vec<Option<CqlValue>>> = Vec::new();
        self.index_rows(order, &mut batch, &mut values);
        batch.set_consistency(Consistency::LocalQuorum);
        batch.set_is_idempotent(true);
        self.session
            .batch(&batch, values)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Writes a keyed order's statics and timeline in one conditional batch on its partition,
    /// unless its id was voided (a call that took the key over did that): whether it is
    /// written. A repeat after a lost answer finds its own order and answers true.
    async fn open_order(&self, order: &OrderRecord) -> Result<bool> {
        let mut batch = Batch::new(BatchType::Logged);
        let mut values: Vec<Vec<Option<CqlValue>>> = Vec::new();
        batch.append_statement(self.q.order_open.clone());
        values.push(vec![
            text(&order.customer_id),
            Some(CqlValue::Text(to_json(&order.items)?)),
            json_opt(&order.shipping_address)?,
            order.payment_method.as_deref().and_then(text),
            json_opt(&order.pricing)?,
            order.invoice_number.as_deref().and_then(text),
            Some(CqlValue::BigInt(order.created_at)),
            text(&order.order_id),
        ]);
        self.timeline_rows(order, &mut batch, &mut values);
        let lwt = self.lwt_batch(batch, values).await?;
        if lwt.applied {
            return Ok(true);
        }
        if matches!(lwt.value("voided"), Some(CqlValue::Boolean(true))) {
            return Ok(false);
        }
        match lwt.text("customer_id") {
            // Order ids are unique to a call: a written order with this id is this one.
            Some(_) => Ok(true),
            None => Err(raced()),
        }
    }

    /// Makes sure the order `order_id` (named by an idempotency key being taken over) is never
    /// written: true when it was not and now cannot be, false when it is written.
    async fn void_order(&self, order_id: &str) -> Result<bool> {
        let lwt = self.lwt(&self.q.order_void, (order_id,)).await?;
        if lwt.applied || lwt.text("customer_id").is_none() {
            // Not applied with no customer: voided already.
            return Ok(true);
        }
        Ok(false)
    }

    /// One key, one order: the key is claimed (`IF NOT EXISTS`) naming this order, then the
    /// order is written by [`Self::open_order`], conditional on its id not being voided. A call
    /// that finds the key naming an order not written yet answers
    /// [`CreateOrder::InProgress`] while that claim is younger than [`KEY_CLAIM_MS`]; past it,
    /// the claiming call is taken to have stopped, its order id is voided (so it can never be
    /// written, even by a call that was only stalled) and the key is replaced. Of two calls
    /// whichever loses answers with the winner's order or "in progress" on its next round.
    /// The order is written once `announce`'s intent is ([`outbox`]).
    async fn create_order_once(
        &self,
        order: &OrderRecord,
        idempotency: Option<&IdempotencyKey>,
        max_unpaid: Option<u32>,
        announce: &outbox::Announce<'_>,
    ) -> Result<CreateOrder> {
        let Some(key) = idempotency else {
            if let Some(refused) = self.unpaid_refusal(order, max_unpaid).await? {
                return Ok(refused);
            }
            announce.decide(self.write_order(order)).await?;
            announce.applied();
            return Ok(CreateOrder::Created);
        };
        let ttl = key_ttl_secs(key, order.created_at);
        for _ in 0..ATTEMPTS {
            let lwt = self
                .lwt(
                    &self.q.key_claim,
                    (
                        order.customer_id.as_str(),
                        key.key.as_str(),
                        order.order_id.as_str(),
                        key.fingerprint.as_str(),
                        key.expires_at,
                        ttl,
                    ),
                )
                .await?;
            if !lwt.applied {
                let (Some(seen_order), Some(seen_fingerprint), Some(seen_expiry)) = (
                    lwt.text("order_id"),
                    lwt.text("fingerprint"),
                    lwt.bigint("expires_at"),
                ) else {
                    continue; // expired (TTL) between the two statements: claim again
                };
                if seen_order == order.order_id {
                    // Our own claim, from an attempt whose answer was lost.
                    if self.get_order(&order.order_id).await?.is_some() {
                        // Order ids are unique to a call: an earlier attempt wrote it.
                        announce.applied();
                        return Ok(CreateOrder::Created);
                    }
                } else {
                    let live = seen_expiry > order.created_at;
                    if live {
                        if seen_fingerprint != key.fingerprint {
                            return Ok(CreateOrder::KeyReused {
                                order_id: seen_order,
                            });
                        }
                        if let Some(existing) = self.get_order(&seen_order).await? {
                            if existing.status == OrderStatus::Accepted {
                                // Its call may have stopped between the order and its index.
                                self.write_index_rows(&existing).await?;
                            }
                            return Ok(CreateOrder::Existing(Box::new(existing)));
                        }
                        let claimed_at = uuid_v7_millis(&seen_order).unwrap_or(0);
                        if now_millis().saturating_sub(claimed_at) < KEY_CLAIM_MS {
                            return Ok(CreateOrder::InProgress);
                        }
                    }
                    // Expired, or claimed by a call that has stopped: that call's order must
                    // never be written before the key names another.
                    if !self.void_order(&seen_order).await? && live {
                        continue; // written meanwhile: the next round answers with it
                    }
                    let replaced = self
                        .lwt(
                            &self.q.key_replace,
                            (
                                ttl,
                                order.order_id.as_str(),
                                key.fingerprint.as_str(),
                                key.expires_at,
                                order.customer_id.as_str(),
                                key.key.as_str(),
                                seen_order.as_str(),
                                seen_expiry,
                            ),
                        )
                        .await?;
                    if !replaced.applied {
                        continue;
                    }
                }
            }
            // The key names this order.
            if let Some(refused) = self.unpaid_refusal(order, max_unpaid).await? {
                // Let the key go: the same request may be made again once a place is free.
                self.lwt(
                    &self.q.key_release,
                    (
                        order.customer_id.as_str(),
                        key.key.as_str(),
                        order.order_id.as_str(),
                    ),
                )
                .await?;
                return Ok(refused);
            }
            if announce.decide(self.open_order(order)).await? {
                announce.applied();
                self.write_index_rows(order).await?;
                return Ok(CreateOrder::Created);
            }
            // Voided: another call took the key over; the next round answers with its order.
        }
        Err(StoreError::Unavailable(format!(
            "could not claim idempotency key {:?}",
            key.key
        )))
    }

    async fn create_invoice_once(&self, draft: &InvoiceDraft) -> Result<Invoice> {
        for _ in 0..64 {
            if let Some(invoice) = self.get_invoice(&draft.order_id).await? {
                return Ok(invoice);
            }
            let Some((value, pending)) = self
                .first::<(Option<i64>, Option<String>)>(&self.q.sequence_get, (INVOICE_SEQUENCE,))
                .await?
            else {
                self.lwt(&self.q.sequence_init, (INVOICE_SEQUENCE,)).await?;
                continue;
            };
            let value = value.unwrap_or(0);
            if let Some(pending) = pending {
                let pending: Invoice = from_json("invoice", &pending)?;
                self.lwt(
                    &self.q.invoice_insert,
                    (pending.order_id.as_str(), to_json(&pending)?),
                )
                .await?;
                if pending.order_id == draft.order_id {
                    return Ok(pending);
                }
                // Ours may have been taken and written by a concurrent call since we looked.
                if let Some(invoice) = self.get_invoice(&draft.order_id).await? {
                    return Ok(invoice);
                }
            }
            let sequence = value as u64 + 1;
            let invoice = draft.numbered(sequence);
            let taken = self
                .lwt(
                    &self.q.sequence_take,
                    (value + 1, to_json(&invoice)?, INVOICE_SEQUENCE, value),
                )
                .await?;
            if taken.applied {
                self.lwt(
                    &self.q.invoice_insert,
                    (invoice.order_id.as_str(), to_json(&invoice)?),
                )
                .await?;
                return Ok(invoice);
            }
            tokio::time::sleep(jitter(Duration::from_millis(5))).await;
        }
        Err(StoreError::Unavailable(
            "the invoice sequence is too contended; try again".into(),
        ))
    }
}

/// How long [`retry`] waits before its retry number `attempt` (0-based): from 20 ms, doubled up
/// to 1 s, plus up to as much again, so racing writers spread out.
const RETRY_BACKOFF: Backoff = Backoff {
    first: Duration::from_millis(20),
    max: Duration::from_secs(1),
    jitter_percent: 100,
};

/// Runs an idempotent operation again on [`StoreError::Unavailable`], with backoff.
async fn retry<T, F, Fut>(what: &str, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if e.is_retriable() && attempt < ATTEMPTS => {
                tracing::debug!(what, attempt, error = %e, "store operation retried");
                tokio::time::sleep(RETRY_BACKOFF.delay(attempt - 1)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// `base` plus up to 100 % of it, so racing callers spread out.
fn jitter(base: Duration) -> Duration {
    base + orderflow_schemas::backoff::jitter(base)
}

/// The steps as separate statements (the default methods): ScyllaDB has no transactions
/// across tables, and each call they make is idempotent and retried on its own.
impl StepStore for ScyllaStore {}

#[async_trait]
impl Store for ScyllaStore {
    async fn healthcheck(&self) -> Result<()> {
        self.run(&self.q.health, ()).await?;
        Ok(())
    }

    async fn set_marker(&self, name: &str, at: i64) -> Result<bool> {
        self.set_marker_impl(name, at).await
    }
}

/// The owner id and end of a reservation lease.
struct Lease {
    owner: String,
    until: i64,
}

impl Lease {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let now = now_millis();
        Lease {
            owner: format!(
                "{}-{now}-{}",
                std::process::id(),
                NEXT.fetch_add(1, AtomicOrdering::Relaxed)
            ),
            until: now + LEASE_MS,
        }
    }

    /// Fails when the lease is about to end: better to stop than to race the next owner.
    fn check(&self, order_id: &str) -> Result<()> {
        if now_millis() >= self.until - LEASE_MARGIN_MS {
            return Err(StoreError::Unavailable(format!(
                "the reservation lease of order {order_id} ran out"
            )));
        }
        Ok(())
    }
}

enum Claim {
    /// We hold the lease; the outcome recorded so far, if any.
    Owned(Option<Reservation>),
    /// The reservation has an outcome and nothing more is to be done.
    Decided(Reservation),
    /// There is no reservation for the order.
    Missing,
}

/// What an LWT answered.
struct Lwt {
    applied: bool,
    columns: Vec<(String, Option<CqlValue>)>,
}

impl Lwt {
    /// The answer of a conditional statement or batch: `[applied]`, then the columns it read.
    fn from_result(result: QueryResult) -> Result<Lwt> {
        let rows = result.into_rows_result().map_err(corrupt)?;
        let names: Vec<String> = rows
            .column_specs()
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        let row: Row = rows.first_row().map_err(corrupt)?;
        let applied = matches!(row.columns.first(), Some(Some(CqlValue::Boolean(true))));
        Ok(Lwt {
            applied,
            columns: names.into_iter().zip(row.columns).collect(),
        })
    }

    fn value(&self, name: &str) -> Option<&CqlValue> {
        self.columns
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_ref())
    }

    fn text(&self, name: &str) -> Option<String> {
        match self.value(name) {
            Some(CqlValue::Text(s)) | Some(CqlValue::Ascii(s)) => Some(s.clone()),
            _ => None,
        }
    }

    fn bigint(&self, name: &str) -> Option<i64> {
        match self.value(name) {
            Some(CqlValue::BigInt(v)) => Some(*v),
            _ => None,
        }
    }
}

type ProductRow = (
    String,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<HashMap<String, i64>>,
    Option<i64>,
    Option<bool>,
);

#[derive(Clone)]
struct StockRow {
    product: Product,
    holds: HashMap<String, i64>,
    version: i64,
}

impl From<ProductRow> for StockRow {
    fn from(
        (sku, name, price_cents, currency, stock, reserved, holds, version, discontinued): ProductRow,
    ) -> Self {
        StockRow {
            product: Product {
                sku,
                name: name.unwrap_or_default(),
                price_cents: price_cents.unwrap_or(0),
                currency: currency.unwrap_or_default(),
                stock: stock.unwrap_or(0),
                reserved: reserved.unwrap_or(0),
                discontinued: discontinued.unwrap_or(false),
            },
            holds: holds.unwrap_or_default(),
            version: version.unwrap_or(0),
        }
    }
}

/// The columns of an order's partition, as [`OrderRow`].
const ORDER_COLUMNS: &str = "customer_id, items, shipping_address, payment_method, pricing, \
     invoice_number, created_at, revision, payment_claim, event_id, status, at, detail";

type OrderRow = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    // `revision` and `payment_claim` (0006): null reads as revision 0, no claim.
    Option<i32>,
    Option<i32>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
);

/// Rebuilds an order from its partition: the static columns (the same on every row) and one
/// timeline entry per row.
fn order_from_rows(order_id: &str, rows: Vec<OrderRow>) -> Result<Option<OrderRecord>> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let (
        customer_id,
        items,
        address,
        payment_method,
        pricing,
        invoice_number,
        created_at,
        revision,
        payment_claim,
        ..,
    ) = first.clone();
    let mut timeline = Vec::with_capacity(rows.len());
    for (.., event_id, status, at, detail) in rows {
        let (Some(event_id), Some(status)) = (event_id, status) else {
            continue; // the statics-only row of an order without events
        };
        timeline.push(TimelineEntry {
            status: serde_json::from_value(serde_json::Value::String(status.clone()))
                .map_err(|_| StoreError::Corrupt(format!("order {order_id}: status {status:?}")))?,
            event_id,
            at: at.unwrap_or(0),
            detail,
        });
    }
    let Some(customer_id) = customer_id else {
        return Ok(None);
    };
    timeline.sort_by_key(|t| (t.status.rank(), t.at));
    let created_at = created_at
        .or_else(|| timeline.iter().map(|t| t.at).min())
        .unwrap_or(0);
    let status = timeline
        .iter()
        .max_by_key(|t| (t.status.rank(), t.at))
        .map_or(OrderStatus::Accepted, |t| t.status);
    let updated_at = timeline
        .iter()
        .map(|t| t.at)
        .max()
        .unwrap_or(created_at)
        .max(created_at);
    Ok(Some(OrderRecord {
        order_id: order_id.to_string(),
        customer_id,
        status,
        items: items
            .map(|i| from_json("order items", &i))
            .transpose()?
            .unwrap_or_default(),
        shipping_address: address
            .map(|a| from_json("shipping address", &a))
            .transpose()?,
        payment_method,
        pricing: pricing.map(|p| from_json("pricing", &p)).transpose()?,
        invoice_number,
        created_at,
        updated_at,
        timeline,
        revision: revision.unwrap_or(0),
        payment_claim,
    }))
}

/// The Unix time (ms) a UUIDv7 carries in its first 48 bits.
fn uuid_v7_millis(id: &str) -> Option<i64> {
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || hex.as_bytes()[12] != b'7' {
        return None;
    }
    i64::from_str_radix(&hex[..12], 16).ok()
}

fn bucket_at(ms: i64) -> i32 {
    i32::try_from(ms.div_euclid(BUCKET_MS)).unwrap_or(i32::MAX)
}

/// The index bucket of an order: from its UUIDv7 id, so bucket order is id order.
fn bucket_of(order_id: &str, fallback_ms: i64) -> i32 {
    bucket_at(uuid_v7_millis(order_id).unwrap_or(fallback_ms))
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

fn day_at(ms: i64) -> i32 {
    i32::try_from(ms.div_euclid(DAY_MS)).unwrap_or(if ms < 0 { i32::MIN } else { i32::MAX })
}

/// The `orders_by_day` partition of an order: the day of its UUIDv7 id's time, so day order is
/// id order.
fn day_of(order_id: &str, fallback_ms: i64) -> i32 {
    day_at(uuid_v7_millis(order_id).unwrap_or(fallback_ms))
}

/// Prepares an idempotent statement.
async fn prepare(
    session: &scylla::client::session::Session,
    cql: String,
    consistency: Consistency,
) -> Result<PreparedStatement> {
    let mut statement = session
        .prepare(cql.clone())
        .await
        .map_err(|e| StoreError::Unavailable(format!("cannot prepare `{cql}`: {e}")))?;
    statement.set_is_idempotent(true);
    statement.set_consistency(consistency);
    Ok(statement)
}

/// The TTL of an idempotency-key row: the key's lifetime plus a grace period (the expiry
/// itself is decided on `expires_at`; the TTL only cleans up).
fn key_ttl_secs(key: &IdempotencyKey, now: i64) -> i32 {
    let lifetime = (key.expires_at - now).max(0) / 1000 + 1;
    i32::try_from(lifetime + IDEMPOTENCY_GRACE_SECS).unwrap_or(i32::MAX)
}

/// The longest TTL ScyllaDB (and Cassandra) take: 20 years.
const MAX_TTL_SECS: i64 = 630_720_000;

/// The TTL (seconds, at least 1) of a record that must be gone at `expires_at` (at most
/// [`MAX_TTL_SECS`]: a record that never expires lives that long).
fn ttl_until(expires_at: i64, now: i64) -> i32 {
    let secs = expires_at.saturating_sub(now).max(0) / 1000 + 1;
    i32::try_from(secs.min(MAX_TTL_SECS)).unwrap_or(i32::MAX)
}

fn text(s: &str) -> Option<CqlValue> {
    Some(CqlValue::Text(s.to_string()))
}

fn json_opt<T: Serialize>(value: &Option<T>) -> Result<Option<CqlValue>> {
    value
        .as_ref()
        .map(|v| to_json(v).map(CqlValue::Text))
        .transpose()
}

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Invalid(e.to_string()))
}

fn from_json<T: DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn raced() -> StoreError {
    StoreError::Unavailable("a concurrent write won; retrying".into())
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("ScyllaDB: {e}"))
}

pub(crate) fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("ScyllaDB: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_days_follow_the_id_time_and_saturate() {
        assert_eq!(day_of("order-1", DAY_MS * 5 + 1), 5);
        assert_eq!(day_of("0190b6a2-7c1e-7000-8000-000000000001", 0), 19_919);
        assert_eq!(day_at(-1), -1);
        assert_eq!(day_at(i64::MAX), i32::MAX);
    }

    #[test]
    fn uuid_v7_time_orders_buckets() {
        // 2025-06-15T… as a UUIDv7.
        let id = "01976f3a-1c2b-7def-8123-456789abcdef";
        let ms = uuid_v7_millis(id).unwrap();
        assert_eq!(ms, 0x0197_6f3a_1c2b);
        assert_eq!(bucket_of(id, 0), bucket_at(ms));
        assert_eq!(
            uuid_v7_millis("01976f3a-1c2b-4def-8123-456789abcdef"),
            None,
            "v4"
        );
        assert_eq!(uuid_v7_millis("order-1"), None);
        assert_eq!(bucket_of("order-1", BUCKET_MS * 3 + 5), 3);
        assert!(bucket_at(ms) < bucket_at(ms + BUCKET_MS));
    }

    #[test]
    fn key_rows_outlive_their_expiry() {
        let key = IdempotencyKey {
            key: "k".into(),
            fingerprint: "f".into(),
            expires_at: 10_000,
        };
        assert_eq!(key_ttl_secs(&key, 0), 11 + IDEMPOTENCY_GRACE_SECS as i32);
        assert_eq!(
            key_ttl_secs(&key, 20_000),
            1 + IDEMPOTENCY_GRACE_SECS as i32
        );
    }

    #[test]
    fn ttls_run_to_the_expiry_within_what_the_server_takes() {
        assert_eq!(ttl_until(10_000, 0), 11);
        assert_eq!(ttl_until(0, 10_000), 1, "expired: gone at once");
        assert_eq!(ttl_until(i64::MAX, 0), MAX_TTL_SECS as i32, "never expires");
        assert_eq!(ttl_until(i64::MAX, i64::MIN), MAX_TTL_SECS as i32);
    }

    #[test]
    fn an_order_is_rebuilt_from_its_rows() {
        let statics = (
            Some("c1".to_string()),
            Some(r#"[{"sku":"A","quantity":1}]"#.to_string()),
            None,
            Some("card".to_string()),
            None,
            Some("INV-00000001".to_string()),
            Some(100),
            Some(2),
        );
        let row = |event: &str, status: &str, at: i64| -> OrderRow {
            (
                statics.0.clone(),
                statics.1.clone(),
                statics.2.clone(),
                statics.3.clone(),
                statics.4.clone(),
                statics.5.clone(),
                statics.6,
                statics.7,
                None,
                Some(event.into()),
                Some(status.into()),
                Some(at),
                None,
            )
        };
        // Clustered by event id, so not in pipeline order.
        let rows = vec![
            row("o:accepted", "accepted", 100),
            row("o:invoiced", "invoiced", 400),
            row("o:paid", "paid", 300),
            row("o:validated", "validated", 200),
        ];
        let order = order_from_rows("o", rows).unwrap().unwrap();
        assert_eq!(order.status, OrderStatus::Invoiced);
        let statuses: Vec<&str> = order.timeline.iter().map(|t| t.status.as_str()).collect();
        assert_eq!(statuses, ["accepted", "validated", "paid", "invoiced"]);
        assert_eq!((order.created_at, order.updated_at), (100, 400));
        assert_eq!(order.items.len(), 1);
        assert_eq!(order.invoice_number.as_deref(), Some("INV-00000001"));
        assert_eq!((order.revision, order.payment_claim), (2, None));
        assert_eq!(order_from_rows("none", Vec::new()).unwrap(), None);
    }

    /// A self-signed CA certificate, PEM.
    fn ca_pem() -> Vec<u8> {
        use openssl::{asn1::Asn1Time, hash::MessageDigest, pkey::PKey, rsa::Rsa, x509};
        let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let mut name = x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "Orderflow test CA")
            .unwrap();
        let name = name.build();
        let mut cert = x509::X509Builder::new().unwrap();
        cert.set_version(2).unwrap();
        cert.set_subject_name(&name).unwrap();
        cert.set_issuer_name(&name).unwrap();
        cert.set_pubkey(&key).unwrap();
        cert.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        cert.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        cert.sign(&key, MessageDigest::sha256()).unwrap();
        cert.build().to_pem().unwrap()
    }

    #[test]
    fn a_tls_context_trusts_the_given_ca_and_names_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca_pem()).unwrap();
        let tls = ScyllaTls {
            ca: Some(good.clone()),
        };
        tls.context().expect("a PEM CA is taken");
        ScyllaTls { ca: None }
            .context()
            .expect("the system's CAs are taken");

        let missing = dir.path().join("missing.pem");
        let e = ScyllaTls {
            ca: Some(missing.clone()),
        }
        .context()
        .err()
        .unwrap();
        assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}");

        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let e = ScyllaTls { ca: Some(not_pem) }.context().err().unwrap();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
    }
}
