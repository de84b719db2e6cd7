//! Command line and environment.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use orderflow_ingest::auth::{check_secret, proxy::TrustedProxies, AuthSettings, MIN_SECRET_LEN};
use orderflow_kafka::{admin::TopicSettings, KafkaConfig};
use orderflow_processors::{payment::expiry::ExpirySettings, ProcessorSettings, Stage};
use orderflow_schemas::{
    registry::{Compatibility, RegistryAuth, RegistryClient},
    Topics,
};
use orderflow_store::scylla::{Replication, ScyllaConfig, ScyllaCredentials, ScyllaTls};

#[derive(Debug, Parser)]
#[command(
    name = "orderflow",
    version,
    about = "A Kafka-compatible order pipeline."
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole pipeline in this process: embedded broker (unless --brokers), store,
    /// HTTP API, processors and bridge.
    Run(RunArgs),
    /// Run the HTTP API alone.
    Ingest(IngestArgs),
    /// Run one processor stage (scale out by starting more: one consumer group per stage).
    Process(ProcessArgs),
    /// Run the bridge (events and notifications to sinks) alone.
    Bridge(BridgeServiceArgs),
    /// Run the embedded Kafka-API broker alone (tansu, its log in SQLite under --data-dir):
    /// the broker of `orderflow run`, for other processes to share with `--brokers`.
    #[cfg(feature = "embedded-broker")]
    Broker(BrokerArgs),
    /// Dead-letter topics.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Manage topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Apply the ScyllaDB migrations (creates the keyspace and tables; safe to run again).
    Migrate(MigrateArgs),
    /// Load the demo data (idempotently: running it again changes nothing): the accounts
    /// admin@example.com / admin123 (admin) and user@example.com / user123 (customer), the
    /// demo catalogue, and a few orders of the user, placed as `POST /v1/orders` places them.
    /// The passwords are weak on purpose: demo data, for development only.
    Seed(SeedArgs),
    /// Load a running pipeline: post orders over HTTP, read `orders.invoiced` over Kafka, and
    /// report throughput and accept → invoiced latency.
    Load(LoadArgs),
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Re-drive a dead-letter topic: each message goes back to the topic it came from (its
    /// `orderflow-dlq-source-topic` header), from where the last replay stopped to the end the
    /// topic had when this one started.
    Replay(DlqReplayArgs),
    /// List what is parked on the dead-letter topics: topic, partition, offset, time, key,
    /// the stage that parked it and why. Reads without a consumer group: changes nothing.
    List(DlqListArgs),
}

#[derive(Debug, Args)]
pub struct DlqListArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The Kafka bootstrap servers (`orderflow run`'s embedded broker by default).
    #[arg(long, env = "ORDERFLOW_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// A dead-letter topic to list, without the prefix (repeatable; default: the stages',
    /// `orderflow.dead-letter`, and the bridge's, `orderflow.bridge.dead-letter`).
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// One JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
}

#[derive(Debug, Args)]
pub struct DlqReplayArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[arg(long, env = "ORDERFLOW_BROKERS")]
    pub brokers: String,
    /// The dead-letter topic, without the prefix (default: the bridge's,
    /// `orderflow.bridge.dead-letter`; the stages' is `orderflow.dead-letter`).
    #[arg(long, default_value = "orderflow.bridge.dead-letter")]
    pub topic: String,
    /// Stop when no message came for this many seconds.
    #[arg(long, default_value_t = 10)]
    pub idle_secs: u64,
}

/// How the bridge is set up.
#[derive(Debug, Args)]
pub struct BridgeArgs {
    /// The routing config (TOML): sinks and which events go to them. Without it, every
    /// customer notification goes to the log and to `<data dir>/notifications.jsonl`.
    #[arg(long, env = "ORDERFLOW_BRIDGE_CONFIG")]
    pub bridge_config: Option<PathBuf>,
    /// Create missing SQS queues and the SES sender identity at start (as `provision = true`
    /// in the config).
    #[arg(long, env = "ORDERFLOW_PROVISION_SINKS")]
    pub provision_sinks: bool,
}

#[derive(Debug, Args)]
pub struct BridgeServiceArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub bridge: BridgeArgs,
}

#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Where the broker's log (`broker.db`) lives.
    #[arg(long, env = "ORDERFLOW_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// The broker's address (port 0 picks a free one). Loopback only: it has no
    /// authentication.
    #[arg(
        long,
        env = "ORDERFLOW_BROKER_LISTEN",
        default_value = "127.0.0.1:9092"
    )]
    pub kafka_listen: SocketAddr,
    /// The address the broker tells clients to connect to (default: the listen address).
    #[arg(long, env = "ORDERFLOW_BROKER_ADVERTISE")]
    pub kafka_advertise: Option<String>,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The pipeline's HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The pipeline's Kafka bootstrap servers.
    #[arg(long, env = "ORDERFLOW_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    #[arg(long, env = "ORDERFLOW_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
    /// The schema registry to read the ids from (default: the --url, which `orderflow run`
    /// serves it on).
    #[arg(long, env = "ORDERFLOW_SCHEMA_REGISTRY_URL", value_name = "URL")]
    pub schema_registry: Option<String>,
    /// How many orders to post (closed loop: `--concurrency` requests in flight, each next
    /// one sent when one is answered).
    #[arg(long, default_value_t = 10_000)]
    pub orders: u64,
    /// Requests in flight at once (closed loop).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Open loop instead: post this many orders per second, on schedule whatever the answers
    /// take (latency counts from the scheduled time), for `--duration`.
    #[arg(long, value_name = "ORDERS_PER_S", requires = "duration")]
    pub rate: Option<u32>,
    /// How long to post at `--rate` (e.g. `20s`).
    #[arg(long, value_parser = humantime_duration, requires = "rate")]
    pub duration: Option<std::time::Duration>,
    /// Instead of orders: produce this many records of `--record-bytes` to a scratch topic
    /// (`<prefix>bench.raw`, created if missing) with the pipeline's producer settings, and
    /// report the broker's ceiling (records a second).
    #[arg(long, value_name = "RECORDS", conflicts_with = "rate")]
    pub raw: Option<u64>,
    /// The size of each `--raw` record's value.
    #[arg(long, default_value_t = 400)]
    pub record_bytes: usize,
    /// Measure the API alone: count the answers and do not wait for invoiced events (for an
    /// `orderflow ingest` with no stages behind it; the end-to-end figures are left out).
    #[arg(long, conflicts_with = "raw")]
    pub accept_only: bool,
    /// Print the figures as one JSON object, last.
    #[arg(long)]
    pub json: bool,
    /// The pipeline's process, whose CPU time per order is reported (default: the local
    /// process listening on the `--url` port, when there is one).
    #[arg(long)]
    pub pid: Option<u32>,
    /// The SKU every valid order buys one of (the demo catalogue has 1,000,000 sticker packs).
    #[arg(long, default_value = "STICKER-001")]
    pub sku: String,
    /// Percent of the orders paid with a card the gateway declines (`tok_decline`): they end
    /// in `orders.payment-failed`, and are awaited there.
    #[arg(long, value_name = "PERCENT", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub declines: u8,
    /// Percent of the orders of a SKU the catalogue does not have: validation rejects them
    /// (`orders.rejected`), where they are awaited.
    #[arg(long, value_name = "PERCENT", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub unknown_skus: u8,
    /// Give up waiting for the orders' outcomes after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// The access token to post every order with (as its account: the orders name no
    /// customer). Without it, the tool logs in with --email and --password.
    #[arg(
        long,
        env = "ORDERFLOW_TOKEN",
        value_name = "JWT",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// The account to log in as when no --token is given (default: the demo customer that
    /// `orderflow run` creates on this machine).
    #[arg(long, env = "ORDERFLOW_LOAD_EMAIL", default_value = "user@example.com")]
    pub email: String,
    /// The password of --email.
    #[arg(
        long,
        env = "ORDERFLOW_LOAD_PASSWORD",
        default_value = "user123",
        hide_env_values = true
    )]
    pub password: String,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "ORDERFLOW_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Which store: the embedded one under `--data-dir`, or ScyllaDB with `--scylla`.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Keep state in ScyllaDB at these nodes (host:port[,host:port…]) instead of the embedded
    /// store under --data-dir. Every service of one deployment must use the same keyspace.
    #[arg(long = "scylla", env = "ORDERFLOW_SCYLLA_NODES", value_delimiter = ',')]
    pub scylla_nodes: Vec<String>,
    /// The ScyllaDB keyspace.
    #[arg(long, env = "ORDERFLOW_SCYLLA_KEYSPACE", default_value = "orderflow")]
    pub scylla_keyspace: String,
    /// The keyspace's replication when migrations create it: `simple:<factor>` (development)
    /// or `<datacenter>:<factor>[,…]` (NetworkTopologyStrategy, production).
    #[arg(
        long,
        env = "ORDERFLOW_SCYLLA_REPLICATION",
        default_value = "simple:1",
        value_parser = parse_replication
    )]
    pub scylla_replication: Replication,
    /// How long the bridge remembers a delivered event (its dedup window), e.g. `14d`, in
    /// either store: a replay of an event delivered longer ago sends it again. Keep it above
    /// twice the topics' retention (see README, "Delivery guarantees, per sink").
    #[arg(
        long,
        alias = "scylla-delivery-ttl",
        env = "ORDERFLOW_DELIVERY_TTL",
        default_value = "14d",
        value_parser = humantime_duration
    )]
    pub delivery_ttl: Duration,
    /// The embedded store's least time between the starts of two commits, e.g. `2ms`: under
    /// load a write waits up to this long to share its commit (and its fsync) with the writes
    /// that come meanwhile; a write after a quiet spell commits at once. `0s` commits each
    /// group as soon as the previous commit is done. Longer saves CPU, shorter saves latency.
    #[arg(
        long,
        env = "ORDERFLOW_STORE_COMMIT_INTERVAL",
        default_value = "4ms",
        value_parser = humantime_duration
    )]
    pub store_commit_interval: Duration,
    /// The CQL user to log in as (PasswordAuthenticator), with --scylla-password.
    #[arg(long, env = "ORDERFLOW_SCYLLA_USERNAME", requires = "scylla_password")]
    pub scylla_username: Option<String>,
    /// --scylla-username's password (prefer the environment variable: a flag shows in `ps`).
    #[arg(
        long,
        env = "ORDERFLOW_SCYLLA_PASSWORD",
        hide_env_values = true,
        requires = "scylla_username"
    )]
    pub scylla_password: Option<String>,
    /// Talk to ScyllaDB over TLS, trusting the system's CAs (--scylla-ca: a CA of your own).
    #[arg(long, env = "ORDERFLOW_SCYLLA_TLS")]
    pub scylla_tls: bool,
    /// Talk to ScyllaDB over TLS, trusting the CA certificate(s) in this PEM file. Each node's
    /// certificate must name the IP address the driver connects to.
    #[arg(long, env = "ORDERFLOW_SCYLLA_CA", value_name = "PEM")]
    pub scylla_ca: Option<PathBuf>,
}

impl StoreArgs {
    /// The ScyllaDB settings, when `--scylla` is given.
    pub fn scylla(&self) -> Option<ScyllaConfig> {
        let nodes: Vec<String> = self
            .scylla_nodes
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        if nodes.is_empty() {
            return None;
        }
        let mut config = ScyllaConfig::new(nodes, self.scylla_keyspace.clone());
        config.delivery_ttl = self.delivery_ttl;
        if let (Some(username), Some(password)) = (&self.scylla_username, &self.scylla_password) {
            config.credentials = Some(ScyllaCredentials {
                username: username.clone(),
                password: password.clone(),
            });
        }
        if self.scylla_tls || self.scylla_ca.is_some() {
            config.tls = Some(ScyllaTls {
                ca: self.scylla_ca.clone(),
            });
        }
        Some(config)
    }
}

fn parse_replication(s: &str) -> Result<Replication, String> {
    s.parse()
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Where the embedded store, the embedded broker's log and the file sink live.
    #[arg(long, env = "ORDERFLOW_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Apply missing ScyllaDB migrations before starting (otherwise a keyspace without this
    /// build's schema stops the start with a message naming `orderflow migrate`).
    #[arg(long, env = "ORDERFLOW_MIGRATE")]
    pub migrate: bool,
    /// Prefix for every topic name (and consumer group), to share a cluster.
    #[arg(long, env = "ORDERFLOW_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
    /// A librdkafka property, KEY=VALUE (repeatable). `ORDERFLOW_KAFKA_<KEY>` works too, with
    /// dots as underscores: ORDERFLOW_KAFKA_COMPRESSION_TYPE=zstd.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE")]
    pub kafka_properties: Vec<String>,
    /// A Confluent-compatible schema registry, e.g. Redpanda's built-in one on :8081. At
    /// start-up every event schema is registered under its topic's subject `<topic>-value`
    /// (after a compatibility check) and messages are framed with the ids it returns. Without
    /// it, `orderflow run` keeps a registry in its data dir and serves it on the HTTP API, and
    /// the other commands use the built-in ids 1..11.
    #[arg(long, env = "ORDERFLOW_SCHEMA_REGISTRY_URL", value_name = "URL")]
    pub schema_registry: Option<String>,
    /// HTTP basic auth for --schema-registry, as `USER:PASSWORD` (Confluent Cloud and Redpanda
    /// Cloud: an API key and its secret).
    #[arg(
        long,
        env = "ORDERFLOW_SCHEMA_REGISTRY_USER_INFO",
        value_name = "USER:PASSWORD",
        hide_env_values = true,
        conflicts_with = "schema_registry_token"
    )]
    pub schema_registry_user_info: Option<String>,
    /// A bearer token for --schema-registry (for another Orderflow's registry: an admin's
    /// access token, which registering schemas needs).
    #[arg(
        long,
        env = "ORDERFLOW_SCHEMA_REGISTRY_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub schema_registry_token: Option<String>,
    /// A PEM file of certificate authorities to trust for an https:// --schema-registry, besides
    /// the system's (a registry behind a private CA).
    #[arg(long, env = "ORDERFLOW_SCHEMA_REGISTRY_CA", value_name = "FILE")]
    pub schema_registry_ca: Option<std::path::PathBuf>,
    /// The compatibility level set on a subject that has none of its own (BACKWARD, FORWARD,
    /// FULL, their _TRANSITIVE forms, NONE).
    #[arg(
        long,
        env = "ORDERFLOW_SCHEMA_COMPATIBILITY",
        default_value = "BACKWARD",
        value_name = "LEVEL"
    )]
    pub schema_compatibility: Compatibility,
    /// Tax added to every order, in basis points (2000 = 20%).
    #[arg(long, env = "ORDERFLOW_TAX_BPS", default_value_t = 2000)]
    pub tax_bps: i64,
    /// The simulated payment gateway declines charges above this many cents.
    #[arg(
        long,
        env = "ORDERFLOW_PAYMENT_LIMIT_CENTS",
        default_value_t = 1_000_000
    )]
    pub payment_limit_cents: i64,
    /// Where invoice PDFs are kept: `s3://bucket[/prefix]` (credentials, region
    /// and `AWS_ENDPOINT_URL` from the standard AWS environment), `file:///dir` or a directory.
    /// Default: `<data dir>/objects`. Invoicing writes there, the API reads from there.
    #[arg(long, env = "ORDERFLOW_INVOICE_STORE", value_name = "URL")]
    pub invoice_store: Option<String>,
    /// How long an order paid by bank transfer waits for its transfer, e.g. `72h`: then the
    /// payment stage cancels it ("payment not received in time"), gives its stock back and
    /// the customer gets the cancelled email. `0` keeps unpaid orders forever.
    #[arg(
        long,
        env = "ORDERFLOW_UNPAID_ORDER_TTL",
        default_value = "72h",
        value_parser = humantime_duration
    )]
    pub unpaid_order_ttl: Duration,
    /// How often the payment stage looks for orders past --unpaid-order-ttl (at least 100ms).
    /// Default: a twentieth of the TTL, between 1s and 5m.
    #[arg(long, env = "ORDERFLOW_UNPAID_SWEEP_INTERVAL", value_parser = humantime_duration)]
    pub unpaid_sweep_interval: Option<Duration>,
    /// How many orders awaiting a bank transfer one customer may have open: one more is
    /// refused with 409 naming `payment.method`, also when an admin places it for them.
    /// `0`: no cap.
    #[arg(long, env = "ORDERFLOW_MAX_UNPAID_ORDERS", default_value_t = 3)]
    pub max_unpaid_orders: u32,
}

impl CommonArgs {
    /// A client of the registry at `url` with the configured credentials.
    pub fn registry_client(&self, url: &str) -> Result<RegistryClient> {
        let mut client = RegistryClient::new(url)?;
        if let Some(info) = &self.schema_registry_user_info {
            let Some(auth) = RegistryAuth::basic(info) else {
                bail!("--schema-registry-user-info: expected USER:PASSWORD");
            };
            client = client.with_auth(auth);
        }
        if let Some(token) = &self.schema_registry_token {
            client = client.with_auth(RegistryAuth::Bearer(token.clone()));
        }
        if let Some(path) = &self.schema_registry_ca {
            let pem = std::fs::read(path)
                .with_context(|| format!("--schema-registry-ca {}", path.display()))?;
            client = client
                .with_ca_certificates(&pem)
                .with_context(|| format!("--schema-registry-ca {}", path.display()))?;
        }
        Ok(client)
    }

    /// The invoice PDFs' object store (`--invoice-store`).
    pub fn invoice_files(&self) -> Result<orderflow_store::InvoiceFiles> {
        let files = match &self.invoice_store {
            Some(url) => orderflow_store::InvoiceFiles::open(url)?,
            None => orderflow_store::InvoiceFiles::local(&self.data_dir.join("objects"))?,
        };
        Ok(files)
    }

    pub fn kafka(&self, brokers: &str) -> Result<KafkaConfig> {
        let mut config = KafkaConfig::new(brokers, Topics::new(self.topic_prefix.clone()));
        for (key, value) in std::env::vars() {
            if let Some(name) = key.strip_prefix("ORDERFLOW_KAFKA_") {
                config
                    .properties
                    .push((name.to_ascii_lowercase().replace('_', "."), value));
            }
        }
        for property in &self.kafka_properties {
            let Some((k, v)) = property.split_once('=') else {
                bail!("--kafka-property {property}: expected KEY=VALUE");
            };
            config
                .properties
                .push((k.trim().to_string(), v.trim().to_string()));
        }
        config.check()?;
        Ok(config)
    }

    pub fn processor_settings(&self) -> ProcessorSettings {
        ProcessorSettings {
            tax_bps: self.tax_bps,
            payment_limit_cents: self.payment_limit_cents,
            invoice_files: None,
            unpaid_expiry: self.unpaid_expiry(),
        }
    }

    /// When unpaid orders expire (`--unpaid-order-ttl`, `--unpaid-sweep-interval`).
    pub fn unpaid_expiry(&self) -> ExpirySettings {
        let mut settings = ExpirySettings::with_ttl(self.unpaid_order_ttl);
        if let Some(interval) = self.unpaid_sweep_interval {
            settings.interval = interval.max(Duration::from_millis(100));
        }
        settings
    }

    /// The cap on a customer's orders awaiting a bank transfer (`--max-unpaid-orders`).
    pub fn max_unpaid_orders(&self) -> Option<u32> {
        Some(self.max_unpaid_orders).filter(|max| *max > 0)
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The HTTP API's address.
    #[arg(long, env = "ORDERFLOW_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// Use this Kafka/Redpanda cluster instead of the embedded broker.
    #[arg(long, env = "ORDERFLOW_BROKERS")]
    pub brokers: Option<String>,
    /// The embedded broker's address (port 0 picks a free one).
    #[arg(
        long,
        env = "ORDERFLOW_BROKER_LISTEN",
        default_value = "127.0.0.1:9092"
    )]
    pub kafka_listen: SocketAddr,
    /// The address the embedded broker tells clients to connect to (default: the listen
    /// address, with 127.0.0.1 for an unspecified IP). Set it when clients reach this host by
    /// another name, e.g. in a container.
    #[arg(long, env = "ORDERFLOW_BROKER_ADVERTISE")]
    pub kafka_advertise: Option<String>,
    /// Partitions per topic when creating topics. One by default: in one process each stage
    /// is one consumer, which reads every partition of its topics in each fetch, so more
    /// partitions only add work. More are for consumers in other processes sharing this
    /// broker's topics.
    #[arg(long, env = "ORDERFLOW_PARTITIONS", default_value_t = 1)]
    pub partitions: i32,
    /// On the embedded defaults' first start, place the demo user's sample orders too (the demo
    /// accounts and catalogue are always loaded then). `false` starts with no orders.
    #[arg(
        long,
        env = "ORDERFLOW_SAMPLE_ORDERS",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub sample_orders: bool,
    #[command(flatten)]
    pub bridge: BridgeArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub cors: CorsArgs,
}

/// Cross-origin requests to the HTTP API (`orderflow run`, `orderflow ingest`).
#[derive(Debug, Args)]
pub struct CorsArgs {
    /// An origin whose pages may call the API from the browser (CORS), e.g.
    /// `https://shop.example.com`; repeatable, or comma-separated in the env variable; `*` for
    /// any. None by default: browsers keep other origins out.
    #[arg(
        long = "cors-allow-origin",
        env = "ORDERFLOW_CORS_ALLOW_ORIGINS",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub cors_allow_origins: Vec<String>,
}

impl CorsArgs {
    pub fn origins(&self) -> Result<orderflow_ingest::cors::Origins> {
        orderflow_ingest::cors::Origins::parse(&self.cors_allow_origins)
            .map_err(|e| anyhow::anyhow!("--cors-allow-origin: {e}"))
    }
}

#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The Kafka/Redpanda bootstrap servers, host:port[,host:port…].
    #[arg(long, env = "ORDERFLOW_BROKERS")]
    pub brokers: String,
    /// Where to serve `GET /metrics` (Prometheus), `GET /healthz` and `GET /readyz`.
    #[arg(long, env = "ORDERFLOW_METRICS", default_value = "0.0.0.0:9464")]
    pub metrics: SocketAddr,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[arg(long, env = "ORDERFLOW_BROKERS")]
    pub brokers: String,
    /// The HTTP API's address.
    #[arg(long, env = "ORDERFLOW_HTTP", default_value = "0.0.0.0:8080")]
    pub http: SocketAddr,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub cors: CorsArgs,
}

/// How access tokens are signed and how long tokens live.
#[derive(Debug, Args)]
pub struct AuthArgs {
    /// The secret access tokens (HS256 JWTs) are signed with: at least 32 bytes, the same for
    /// every API instance. `orderflow ingest` requires it; `orderflow run` without it generates
    /// a random one on its first start and keeps it in `<data dir>/jwt-secret`.
    #[arg(long, env = "ORDERFLOW_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Create this admin account at start unless an account with this email exists (with
    /// `--admin-password`): how the first admin of a deployment comes to be.
    #[arg(long, env = "ORDERFLOW_ADMIN_EMAIL", requires = "admin_password")]
    pub admin_email: Option<String>,
    /// The password of `--admin-email`'s account when it is created (at least 12 characters).
    #[arg(
        long,
        env = "ORDERFLOW_ADMIN_PASSWORD",
        hide_env_values = true,
        requires = "admin_email"
    )]
    pub admin_password: Option<String>,
    /// How long an access token is valid, e.g. `15m`.
    #[arg(long, env = "ORDERFLOW_ACCESS_TOKEN_TTL", default_value = "15m", value_parser = humantime_duration)]
    pub access_token_ttl: Duration,
    /// How long a refresh token is valid, e.g. `30d` (each refresh issues a new one).
    #[arg(long, env = "ORDERFLOW_REFRESH_TOKEN_TTL", default_value = "30d", value_parser = humantime_duration)]
    pub refresh_token_ttl: Duration,
    /// The reverse proxies (load balancers) in front of the API, as comma-separated IPs and
    /// CIDRs, e.g. `10.0.0.0/8,192.168.1.7`. A request from one of them is rate-limited by the
    /// client IP its `X-Forwarded-For` names (the rightmost hop that is not a trusted proxy);
    /// from any other peer the header is ignored. None by default.
    #[arg(
        long,
        env = "ORDERFLOW_TRUSTED_PROXIES",
        default_value = "",
        value_name = "IPS_AND_CIDRS",
        value_parser = trusted_proxies
    )]
    pub trusted_proxies: TrustedProxies,
}

fn trusted_proxies(s: &str) -> std::result::Result<TrustedProxies, String> {
    s.parse()
}

impl AuthArgs {
    /// The API's token settings. Without a configured secret, `kept_in` (the data dir of
    /// `orderflow run`) holds one generated on the first start; without either, no start.
    pub fn settings(&self, kept_in: Option<&Path>) -> Result<AuthSettings> {
        let secret = match (&self.jwt_secret, kept_in) {
            (Some(secret), _) => secret.clone(),
            (None, Some(dir)) => kept_secret(&dir.join(SECRET_FILE))?,
            (None, None) => bail!(
                "the API needs a JWT secret: set --jwt-secret or ORDERFLOW_JWT_SECRET (at \
                 least {MIN_SECRET_LEN} bytes, the same for every API instance; e.g. \
                 `openssl rand -base64 48`)"
            ),
        };
        if let Err(e) = check_secret(&secret) {
            bail!("{e}");
        }
        if self.access_token_ttl.is_zero() || self.refresh_token_ttl.is_zero() {
            bail!("--access-token-ttl and --refresh-token-ttl must be more than 0");
        }
        let mut settings = AuthSettings::new(secret.as_bytes());
        settings.access_ttl = self.access_token_ttl;
        settings.refresh_ttl = self.refresh_token_ttl;
        settings.trusted_proxies = self.trusted_proxies.clone();
        Ok(settings)
    }
}

#[derive(Debug, Args)]
pub struct SeedArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[arg(long, env = "ORDERFLOW_BROKERS")]
    pub brokers: String,
}

#[derive(Debug, Args)]
pub struct ProcessArgs {
    /// Which stage.
    #[arg(value_enum)]
    pub stage: StageArg,
    #[command(flatten)]
    pub service: ServiceArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StageArg {
    Validation,
    Payment,
    Invoicing,
}

impl From<StageArg> for Stage {
    fn from(s: StageArg) -> Self {
        match s {
            StageArg::Validation => Stage::Validation,
            StageArg::Payment => Stage::Payment,
            StageArg::Invoicing => Stage::Invoicing,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create every catalogue topic that does not exist yet.
    Create(TopicsCreateArgs),
}

#[derive(Debug, Args)]
pub struct TopicsCreateArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[arg(long, env = "ORDERFLOW_BROKERS")]
    pub brokers: String,
    /// Partitions per topic: the most consumers one stage can usefully run.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    #[arg(long, default_value_t = 1)]
    pub replication_factor: i32,
    /// Retention, e.g. `7d`, `12h` (default: the broker's).
    #[arg(long, value_parser = humantime_duration)]
    pub retention: Option<Duration>,
}

impl TopicsCreateArgs {
    pub fn settings(&self) -> TopicSettings {
        TopicSettings {
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            retention: self.retention,
        }
    }
}

/// Where `orderflow run` keeps its generated JWT secret, in its data dir.
pub const SECRET_FILE: &str = "jwt-secret";

/// The secret kept at `path`, generated (48 random bytes, base64) and written there, readable by
/// its owner only, when the file does not exist yet.
fn kept_secret(path: &Path) -> Result<String> {
    use std::io::Write as _;
    match std::fs::read_to_string(path) {
        Ok(secret) => return Ok(secret.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut bytes = [0u8; 48];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a secret: {e}"))?;
    let secret = base64::engine::general_purpose::STANDARD.encode(bytes);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(secret.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(
        path = %path.display(),
        "Generated the secret access tokens are signed with (kept for later starts)."
    );
    Ok(secret)
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_of(args: &[&str]) -> Option<ScyllaConfig> {
        let cli = Cli::try_parse_from(["orderflow", "migrate"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Migrate(args) => args.store.scylla(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn scylla_credentials_and_tls_reach_the_store_config() {
        let plain = store_of(&["--scylla", "db:9042"]).unwrap();
        assert_eq!((plain.credentials, plain.tls), (None, None));

        let secured = store_of(&[
            "--scylla",
            "db1:9142,db2:9142",
            "--scylla-username",
            "orderflow",
            "--scylla-password",
            "s3cret",
            "--scylla-ca",
            "/etc/orderflow/scylla-ca.pem",
        ])
        .unwrap();
        let credentials = secured.credentials.unwrap();
        assert_eq!(credentials.username, "orderflow");
        assert_eq!(credentials.password, "s3cret");
        assert!(!format!("{credentials:?}").contains("s3cret"));
        assert_eq!(
            secured.tls.unwrap().ca.unwrap(),
            std::path::Path::new("/etc/orderflow/scylla-ca.pem")
        );

        let system_cas = store_of(&["--scylla", "db:9142", "--scylla-tls"]).unwrap();
        assert_eq!(system_cas.tls, Some(ScyllaTls { ca: None }));
    }

    #[test]
    fn a_scylla_username_needs_its_password() {
        let e = Cli::try_parse_from([
            "orderflow",
            "migrate",
            "--scylla",
            "db:9042",
            "--scylla-username",
            "u",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("--scylla-password"), "{e}");
    }
}
