//! `orderflow`: the whole pipeline in one process (`orderflow run`), or one stage per process
//! for a real deployment (`ingest`, `process <stage>`, `bridge`, `topics create`).

mod cli;
mod demo;
#[cfg(feature = "embedded-broker")]
mod embedded_broker;
mod load;
mod seed;
mod telemetry;

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::{bail, Context, Result};
use clap::Parser;
use cli::{Cli, Command, CommonArgs, DlqCommand, TopicsCommand};
use orderflow_bridge::{BridgeConfig, BuildContext, Routing, SinkHealth};
use orderflow_ingest::{Readiness, ReadyCheck};
use orderflow_kafka::{admin, EventProducer, KafkaConfig};
use orderflow_processors::{run_stage, Stage};
use orderflow_schemas::{
    registry::{register_catalogue, subject, Compatibility, LocalRegistry, Registry},
    SchemaIds, TopicKind, Topics,
};
use orderflow_store::{scylla, EmbeddedConfig, EmbeddedStore, Instrumented, ScyllaStore, Store};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// mimalloc instead of the system's allocator: the pipeline allocates and frees small buffers
/// on every message (decoded events, store records, Kafka frames), and glibc's malloc spent a
/// fifth of the CPU of a loaded `orderflow run` on them (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A failure is one line on stderr (the error and its causes, `: `-separated), never a
/// backtrace: most are a user's config to fix.
fn main() -> std::process::ExitCode {
    match run_cli() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_cli() -> Result<()> {
    let cli = Cli::parse();
    // Dropped after the runtime: flushes the spans still buffered for OTLP export.
    let _telemetry = telemetry::init(&cli.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        match cli.command {
            Command::Run(args) => run(args, shutdown).await,
            Command::Ingest(args) => {
                // Refused before anything connects: no secret, or a short one.
                let auth = args.auth.settings(None)?;
                let cors = args.cors.origins()?;
                let (kafka, store, producer) = connect(&args.common, &args.brokers).await?;
                seed::first_admin(store.as_ref(), &args.auth).await?;
                let files = args.common.invoice_files()?;
                let ready = invoice_store_check(files.clone(), &shutdown);
                let state = orderflow_ingest::ApiState::new(store, producer.clone())
                    .with_invoice_files(files)
                    .with_ready_check(ready)
                    .with_auth(auth)
                    .with_cors(cors)
                    .with_max_unpaid_orders(args.common.max_unpaid_orders());
                serve_http(args.http, state, &kafka, shutdown).await?;
                producer.flush(Duration::from_secs(10));
                Ok(())
            }
            Command::Process(args) => {
                let stage: Stage = args.stage.into();
                let mut settings = args.service.common.processor_settings();
                let mut ready_checks = Vec::new();
                if stage == Stage::Invoicing {
                    let files = args.service.common.invoice_files()?;
                    ready_checks.push(invoice_store_check(files.clone(), &shutdown));
                    settings.invoice_files = Some(files);
                }
                run_service(
                    &args.service,
                    ready_checks,
                    shutdown,
                    |kafka, store, producer, shutdown| async move {
                        run_stage(stage, &kafka, store, producer, &settings, shutdown).await
                    },
                )
                .await
            }
            Command::Bridge(args) => {
                let (routing, ready) =
                    build_bridge(&args.service.common.data_dir, &args.bridge, &shutdown).await?;
                run_service(
                    &args.service,
                    vec![ready],
                    shutdown,
                    |kafka, store, producer, shutdown| async move {
                        orderflow_bridge::run_bridge(&kafka, store, routing, producer, shutdown)
                            .await
                    },
                )
                .await
            }
            #[cfg(feature = "embedded-broker")]
            Command::Broker(args) => broker(args, shutdown).await,
            Command::Dlq(DlqCommand::Replay(args)) => {
                let kafka = args.common.kafka(&args.brokers)?;
                let producer = EventProducer::new(&kafka)?;
                let topic = format!("{}{}", kafka.topics.prefix(), args.topic);
                let report = orderflow_kafka::replay::replay_dead_letters(
                    &kafka,
                    &topic,
                    &producer,
                    Duration::from_secs(args.idle_secs.max(1)),
                )
                .await?;
                producer.flush(Duration::from_secs(10));
                println!(
                    "{topic}: {} replayed, {} skipped (no source topic)",
                    report.replayed, report.skipped
                );
                Ok(())
            }
            Command::Dlq(DlqCommand::List(args)) => dlq_list(args).await,
            Command::Load(args) => load::run(args).await,
            Command::Seed(args) => {
                let (_, store, producer) = connect(&args.common, &args.brokers).await?;
                let state = Arc::new(orderflow_ingest::ApiState::new(store, producer.clone()));
                let seeded = seed::all(state.clone()).await?;
                // The seeded orders' events wait in the outbox; put them out before leaving
                // (otherwise the next API process does).
                if let Err(e) = orderflow_ingest::relay::drain(&state).await {
                    eprintln!("The seeded orders' events are queued; the API puts them out ({e}).");
                }
                producer.flush(Duration::from_secs(10));
                println!(
                    "Seeded: {} accounts, {} products, {} orders new.",
                    seeded.accounts, seeded.products, seeded.orders
                );
                Ok(())
            }
            Command::Migrate(args) => migrate(&args.store).await,
            Command::Topics(TopicsCommand::Create(args)) => {
                let kafka = args.common.kafka(&args.brokers)?;
                let created = admin::create_topics(&kafka, &args.settings()).await?;
                for name in kafka.topics.all() {
                    let state = if created.contains(&name) {
                        "created"
                    } else {
                        "exists"
                    };
                    println!("{name}\t{state}");
                }
                Ok(())
            }
        }
    })
}

/// Cancels `shutdown` on Ctrl-C or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "Cannot listen for SIGTERM.");
                let _ = tokio::signal::ctrl_c().await;
                shutdown.cancel();
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    info!("Shutting down: finishing in-flight work.");
    shutdown.cancel();
}

/// Runs a consuming service (`process`, `bridge`): serves `/metrics`, runs `service` until
/// shutdown, then flushes the producer and stops the metrics listener.
async fn run_service<F, Fut>(
    args: &cli::ServiceArgs,
    ready_checks: Vec<ReadyCheck>,
    shutdown: CancellationToken,
    service: F,
) -> Result<()>
where
    F: FnOnce(KafkaConfig, Arc<dyn Store>, EventProducer, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = orderflow_kafka::Result<()>>,
{
    let (kafka, store, producer) = connect(&args.common, &args.brokers).await?;
    let readiness = Readiness::new(store.clone(), producer.clone()).with_checks(ready_checks);
    let metrics = serve_metrics(args.metrics, readiness, shutdown.clone()).await?;
    let result = service(kafka, store, producer.clone(), shutdown.clone()).await;
    producer.flush(Duration::from_secs(10));
    shutdown.cancel();
    metrics.await??;
    result?;
    Ok(())
}

/// What a single-stage service needs: its Kafka config (with the schema ids), the store, a
/// producer.
async fn connect(
    common: &CommonArgs,
    brokers: &str,
) -> Result<(KafkaConfig, Arc<dyn Store>, EventProducer)> {
    let mut kafka = common.kafka(brokers)?;
    if let Some(url) = &common.schema_registry {
        use_external_registry(&mut kafka, url, common).await?;
    }
    let store = open_store(common).await?;
    let producer = EventProducer::new(&kafka)?;
    Ok((kafka, store, producer))
}

/// Registers the event schemas with the registry at `url` and frames and decodes with its ids
/// (`--schema-registry`); the consume loop asks it about ids registered later.
async fn use_external_registry(
    kafka: &mut KafkaConfig,
    url: &str,
    common: &CommonArgs,
) -> Result<()> {
    let client = common.registry_client(url)?;
    kafka.schemas =
        register_schemas(&client, url, &kafka.topics, common.schema_compatibility).await?;
    kafka.registry = Some(client);
    Ok(())
}

/// Registers every event schema with `registry` (retrying while it is unreachable or
/// overloaded); the ids to frame with.
async fn register_schemas(
    registry: &impl Registry,
    name: &str,
    topics: &Topics,
    level: Compatibility,
) -> Result<SchemaIds> {
    let mut attempt = 0;
    loop {
        match register_catalogue(registry, topics, level).await {
            Ok(ids) => {
                let ids_text = ids
                    .current()
                    .into_iter()
                    .map(|(kind, id)| format!("{}={id}", subject(topics, kind)))
                    .collect::<Vec<_>>()
                    .join(", ");
                info!(registry = name, ids = %ids_text, "Event schemas registered.");
                return Ok(ids);
            }
            Err(e) if e.is_retriable() && attempt < 10 => {
                warn!(registry = name, error = %e, attempt, "Schema registry unavailable; retrying.");
                tokio::time::sleep(orderflow_kafka::BACKOFF.delay(attempt.min(5))).await;
                attempt += 1;
            }
            Err(e) => return Err(e).context(format!("registering the event schemas with {name}")),
        }
    }
}

/// The store (ScyllaDB with `--scylla`, else the embedded one under `--data-dir`), timed by
/// `orderflow_store_operation_seconds`.
async fn open_store(common: &CommonArgs) -> Result<Arc<dyn Store>> {
    let Some(config) = common.store.scylla() else {
        let config = EmbeddedConfig {
            delivery_ttl: common.store.delivery_ttl,
            commit_interval: common.store.store_commit_interval,
            ..EmbeddedConfig::default()
        };
        let store = EmbeddedStore::open_with(&common.data_dir.join("state"), &config)
            .with_context(|| format!("opening the store under {}", common.data_dir.display()))?;
        // Writes remove what expired as they add; this catches up after a quiet spell. It
        // ends with the runtime.
        tokio::spawn(
            store
                .clone()
                .prune_periodically(Duration::from_secs(60), std::future::pending()),
        );
        return Ok(Arc::new(Instrumented::new(store)));
    };
    let session = scylla::connect(&config).await?;
    if common.migrate {
        scylla::migrate(&session, &config.keyspace, &common.store.scylla_replication).await?;
    }
    let store = ScyllaStore::with_session(session, &config).await?;
    info!(nodes = %config.nodes.join(","), keyspace = %config.keyspace, "Using ScyllaDB.");
    Ok(Arc::new(Instrumented::new(store)))
}

/// `orderflow migrate`: applies what the keyspace lacks and says what it did.
async fn migrate(args: &cli::StoreArgs) -> Result<()> {
    let Some(config) = args.scylla() else {
        bail!("orderflow migrate needs --scylla host:9042 (or ORDERFLOW_SCYLLA_NODES); the embedded store needs no migrations");
    };
    let session = scylla::connect(&config).await?;
    let report = scylla::migrate(&session, &config.keyspace, &args.scylla_replication).await?;
    if report.applied.is_empty() {
        println!(
            "keyspace {} is up to date (schema version {})",
            config.keyspace, report.version
        );
    } else {
        for version in &report.applied {
            let name = scylla::MIGRATIONS
                .iter()
                .find(|m| m.version == *version)
                .map_or("", |m| m.name);
            println!("applied {version:04}_{name}");
        }
        println!(
            "keyspace {} is at schema version {}",
            config.keyspace, report.version
        );
    }
    Ok(())
}

/// Binds `addr` and serves `/metrics`, `/healthz` and `/readyz` there until `shutdown`, in a
/// task.
async fn serve_metrics(
    addr: SocketAddr,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener to {addr}"))?;
    Ok(tokio::spawn(async move {
        orderflow_ingest::serve_metrics(listener, readiness, shutdown)
            .await
            .context("metrics listener")
    }))
}

/// The bridge's sinks and routes (from `--bridge-config`, or the log and file default), and a
/// readiness check over the sinks' healthchecks, which run every 10 s until `shutdown`.
async fn build_bridge(
    data_dir: &Path,
    args: &cli::BridgeArgs,
    shutdown: &CancellationToken,
) -> Result<(Arc<Routing>, ReadyCheck)> {
    let config = match &args.bridge_config {
        Some(path) => BridgeConfig::load(path, std::env::vars())?,
        None => BridgeConfig::default_with_env(std::env::vars())?,
    };
    let ctx = BuildContext::new(
        data_dir,
        config.provision || args.provision_sinks,
        config.aws.clone(),
    );
    let routing = Routing::build(&config, &ctx)
        .await
        .context("building the bridge's sinks")?;
    let names: Vec<&str> = routing.sinks.iter().map(|s| s.sink.name()).collect();
    info!(sinks = ?names, "Bridge sinks ready.");
    let health = Arc::new(SinkHealth::new(
        routing.sinks.iter().map(|s| s.sink.clone()).collect(),
    ));
    health.spawn(Duration::from_secs(10), shutdown.clone());
    let ready = ReadyCheck {
        name: "sinks",
        check: Arc::new(move || health.ready()),
    };
    Ok((Arc::new(routing), ready))
}

async fn serve_http(
    addr: SocketAddr,
    state: orderflow_ingest::ApiState,
    kafka: &KafkaConfig,
    shutdown: CancellationToken,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the HTTP API to {addr}"))?;
    let state = Arc::new(state);
    let follower = spawn_order_follower(kafka, &state, &shutdown);
    orderflow_ingest::serve(listener, state, shutdown.clone()).await?;
    shutdown.cancel();
    follower.await??;
    Ok(())
}

/// A readiness check on the invoice PDFs' object store: a cheap read every 10 s
/// until `shutdown`; `/readyz` names `invoice_store` while the last one failed.
fn invoice_store_check(
    files: orderflow_store::InvoiceFiles,
    shutdown: &CancellationToken,
) -> ReadyCheck {
    let last = Arc::new(std::sync::Mutex::new(Ok::<(), String>(())));
    let (writer, shutdown) = (last.clone(), shutdown.clone());
    tokio::spawn(async move {
        loop {
            let result = files.healthcheck().await.map_err(|e| e.to_string());
            if let Err(e) = &result {
                warn!(error = %e, "Invoice store check failed.");
            }
            *writer.lock().unwrap_or_else(|p| p.into_inner()) = result;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            }
        }
    });
    ReadyCheck {
        name: "invoice_store",
        check: Arc::new(move || last.lock().unwrap_or_else(|p| p.into_inner()).clone()),
    }
}

/// Follows the order topics for the API's order cache and its live order streams, until
/// `shutdown`.
fn spawn_order_follower(
    kafka: &KafkaConfig,
    state: &Arc<orderflow_ingest::ApiState>,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<Result<()>> {
    let (kafka, cache, live) = (kafka.clone(), state.orders.clone(), state.live.clone());
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        orderflow_ingest::live::follow_orders(&kafka, cache, live, shutdown)
            .await
            .context("following the order topics")
    })
}

/// Creates the topics, retrying while the broker comes up.
async fn ensure_topics(kafka: &KafkaConfig, settings: &admin::TopicSettings) -> Result<()> {
    let mut last = None;
    for attempt in 0..20 {
        match admin::create_topics(kafka, settings).await {
            Ok(created) => {
                if !created.is_empty() {
                    info!(topics = ?created, "Topics created.");
                }
                return Ok(());
            }
            // A property librdkafka refuses will not change by waiting.
            Err(orderflow_kafka::Error::Kafka(
                e @ rdkafka::error::KafkaError::ClientCreation(_),
            )) => {
                bail!("{e}")
            }
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(orderflow_kafka::BACKOFF.delay(attempt.min(4))).await;
            }
        }
    }
    bail!(
        "cannot create topics: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    )
}

/// `orderflow run`: every stage in this process, on the embedded broker unless `--brokers`.
async fn run(args: cli::RunArgs, shutdown: CancellationToken) -> Result<()> {
    let common = &args.common;
    let auth = args.auth.settings(Some(&common.data_dir))?;
    let cors = args.cors.origins()?;
    // The embedded broker has no authentication: whoever reaches it could produce any event
    // (an order for any customer, an email of their wording). It stays on loopback.
    if args.brokers.is_none() && !args.kafka_listen.ip().is_loopback() {
        bail!(
            "the embedded broker has no authentication, so it listens on loopback only \
             (--kafka-listen {} is not); to share topics with other hosts, run Kafka or \
             Redpanda with SASL and pass --brokers",
            args.kafka_listen
        );
    }
    #[cfg(feature = "embedded-broker")]
    let mut embedded = None;
    let brokers = match &args.brokers {
        Some(brokers) => brokers.clone(),
        None => {
            #[cfg(feature = "embedded-broker")]
            {
                let broker = embedded_broker::EmbeddedBroker::start(
                    args.kafka_listen,
                    args.kafka_advertise.as_deref(),
                    &common.data_dir,
                )
                .await?;
                let addr = broker.advertised.clone();
                embedded = Some(broker);
                addr
            }
            #[cfg(not(feature = "embedded-broker"))]
            bail!("this build has no embedded broker: pass --brokers HOST:PORT")
        }
    };
    let mut kafka = common.kafka(&brokers)?;
    if args.brokers.is_none() {
        // The embedded broker (its patched storage, vendor/tansu-storage) answers a fetch as
        // soon as a record is produced to one of its topics, so a long wait adds no latency
        // and an idle consumer asks every five seconds instead of a hundred times a second.
        // (librdkafka sends heartbeats and commits on the group coordinator's own connection,
        // which a waiting fetch does not hold up.) Flags and ORDERFLOW_KAFKA_* still win,
        // since they are applied after this.
        kafka
            .properties
            .insert(0, ("fetch.wait.max.ms".into(), "5000".into()));
        // After a crash (kill -9), the stages' old group members block the rebalance until
        // their session times out: on loopback a short session is safe and resumes in seconds
        // instead of librdkafka's 45.
        kafka
            .properties
            .insert(0, ("session.timeout.ms".into(), "6000".into()));
        kafka
            .properties
            .insert(0, ("heartbeat.interval.ms".into(), "1500".into()));
        // Uncompressed batches on loopback: the broker keeps a row per record, so it unpacks
        // every batch it is sent and packs every batch it answers a fetch with, and for a
        // compressed batch its decoder reads through the codec a byte at a time.
        kafka
            .properties
            .insert(0, ("compression.type".into(), "none".into()));
    }
    let settings = admin::TopicSettings {
        partitions: args.partitions,
        ..Default::default()
    };
    if args.brokers.is_some() {
        // An external cluster may manage its topics itself (or auto-create them).
        if let Err(e) = ensure_topics(&kafka, &settings).await {
            warn!(error = %e, "Could not create topics; assuming they exist.");
        }
    } else {
        ensure_topics(&kafka, &settings).await?;
    }

    // The schema ids: the external registry's, or those of the registry kept in the data dir,
    // which the HTTP API then serves.
    let local_registry = match &common.schema_registry {
        Some(url) => {
            use_external_registry(&mut kafka, url, common).await?;
            None
        }
        None => {
            let path = common.data_dir.join(LocalRegistry::FILE);
            let registry = Arc::new(
                LocalRegistry::open(&path)
                    .with_context(|| format!("opening the schema registry {}", path.display()))?,
            );
            kafka.schemas = register_schemas(
                registry.as_ref(),
                "(embedded)",
                &kafka.topics,
                common.schema_compatibility,
            )
            .await?;
            Some(registry)
        }
    };

    let store = open_store(common).await?;
    let seeded = store.seed_products(demo::catalogue()).await?;
    if seeded > 0 {
        info!(products = seeded, "Demo catalogue loaded.");
    }
    // Demo data (with its well-known passwords) only where everything is local: the embedded
    // broker and store, the API on loopback. On the first such start only (`orderflow seed`
    // elsewhere): the accounts now, the sample orders once the pipeline runs (below).
    let local =
        common.store.scylla().is_none() && args.brokers.is_none() && args.http.ip().is_loopback();
    if !local && args.auth.admin_email.is_none() {
        info!(
            "No demo accounts: this pipeline is not local to this machine. Create the first \
             admin with --admin-email and --admin-password (ORDERFLOW_ADMIN_EMAIL, \
             ORDERFLOW_ADMIN_PASSWORD)."
        );
    }
    seed::first_admin(store.as_ref(), &args.auth).await?;
    let first_start = local
        && store
            .set_marker(seed::MARKER, orderflow_schemas::now_millis())
            .await?;
    if first_start {
        let accounts = seed::accounts(store.as_ref()).await?;
        info!(
            accounts,
            "Demo accounts created: admin@example.com / admin123, user@example.com / user123 \
             (development only)."
        );
    }
    let producer = EventProducer::new(&kafka)?;
    let listener = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| format!("binding the HTTP API to {}", args.http))?;
    let http_addr = listener.local_addr()?;

    // A bad routing config or an unreachable sink fails the start before anything runs.
    let (routing, sinks_ready) = build_bridge(&common.data_dir, &args.bridge, &shutdown).await?;
    let mut tasks = JoinSet::new();
    let invoice_files = common.invoice_files()?;
    info!(
        location = invoice_files.location(),
        "Invoice PDFs kept there."
    );
    let mut processor_settings = common.processor_settings();
    processor_settings.invoice_files = Some(invoice_files.clone());
    for stage in Stage::ALL {
        let (kafka, store, producer, settings, shutdown) = (
            kafka.clone(),
            store.clone(),
            producer.clone(),
            processor_settings.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            run_stage(stage, &kafka, store, producer, &settings, shutdown)
                .await
                .with_context(|| format!("stage {}", stage.name()))
        });
    }
    {
        let (kafka, store, producer, shutdown) = (
            kafka.clone(),
            store.clone(),
            producer.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            orderflow_bridge::run_bridge(&kafka, store, routing, producer, shutdown)
                .await
                .context("bridge")
        });
    }
    {
        let mut state = orderflow_ingest::ApiState::new(store.clone(), producer.clone())
            .with_ready_check(sinks_ready)
            .with_ready_check(invoice_store_check(invoice_files.clone(), &shutdown))
            .with_invoice_files(invoice_files)
            .with_auth(auth)
            .with_cors(cors)
            .with_max_unpaid_orders(args.common.max_unpaid_orders());
        if let Some(registry) = &local_registry {
            state = state.with_schema_registry(registry.clone());
        }
        let state = Arc::new(state);
        let follower = spawn_order_follower(&kafka, &state, &shutdown);
        tasks.spawn(async move { follower.await? });
        if first_start && args.sample_orders {
            // Through the API's own handler, as the demo user; the stages take them from there.
            let state = state.clone();
            tokio::spawn(async move {
                match seed::orders(state).await {
                    Ok(placed) => info!(orders = placed, "Demo orders placed."),
                    Err(e) => warn!(error = %format!("{e:#}"), "Could not place the demo orders."),
                }
            });
        }
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            orderflow_ingest::serve(listener, state, shutdown)
                .await
                .context("HTTP API")
        });
    }

    println!("Orderflow is running.");
    println!("  HTTP API:        http://{http_addr}");
    println!("  Kafka bootstrap: {brokers}");
    match &common.schema_registry {
        Some(url) => println!("  Schema registry: {url}"),
        None => println!("  Schema registry: http://{http_addr}"),
    }
    println!("  Data dir:        {}", common.data_dir.display());
    if let Some(scylla) = common.store.scylla() {
        println!(
            "  Store:           ScyllaDB {} (keyspace {})",
            scylla.nodes.join(","),
            scylla.keyspace
        );
    }
    println!("Try: curl http://{http_addr}/v1/products");
    println!("Press Ctrl-C to stop.");

    // A task that ends before shutdown is a failure: stop the rest.
    let mut result = Ok(());
    while let Some(done) = tasks.join_next().await {
        let outcome = done.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(e) = outcome {
            if result.is_ok() {
                result = Err(e);
            }
            shutdown.cancel();
        } else if !shutdown.is_cancelled() {
            result = Err(anyhow::anyhow!("a pipeline task stopped unexpectedly"));
            shutdown.cancel();
        }
    }
    producer.flush(Duration::from_secs(10));
    // The last Kafka client goes before the embedded broker does: one that outlives its broker
    // logs "all brokers are down" after the stop.
    drop(producer);
    #[cfg(feature = "embedded-broker")]
    if let Some(broker) = embedded {
        broker.stop().await;
    }
    info!("Stopped.");
    result
}

/// `orderflow broker`: the embedded broker alone, until Ctrl-C or SIGTERM.
#[cfg(feature = "embedded-broker")]
async fn broker(args: cli::BrokerArgs, shutdown: CancellationToken) -> Result<()> {
    // As in `orderflow run`: a broker without authentication stays on loopback.
    if !args.kafka_listen.ip().is_loopback() {
        bail!(
            "the embedded broker has no authentication, so it listens on loopback only \
             (--kafka-listen {} is not)",
            args.kafka_listen
        );
    }
    let broker = embedded_broker::EmbeddedBroker::start(
        args.kafka_listen,
        args.kafka_advertise.as_deref(),
        &args.data_dir,
    )
    .await?;
    println!("Orderflow broker is running.");
    println!("  Kafka bootstrap: {}", broker.advertised);
    println!("  Data dir:        {}", args.data_dir.display());
    println!("Press Ctrl-C to stop.");
    broker.serve_until(shutdown).await?;
    info!("Stopped.");
    Ok(())
}

/// `orderflow dlq list`: a table (or JSON) of the dead-lettered messages.
async fn dlq_list(args: cli::DlqListArgs) -> Result<()> {
    let kafka = args.common.kafka(&args.brokers)?;
    let topics: Vec<String> = if args.topics.is_empty() {
        [TopicKind::DeadLetter, TopicKind::BridgeDeadLetter]
            .map(|k| kafka.topics.name(k))
            .to_vec()
    } else {
        args.topics
            .iter()
            .map(|t| format!("{}{t}", kafka.topics.prefix()))
            .collect()
    };
    let parked = orderflow_kafka::parked::list_parked(
        &kafka,
        &topics,
        Duration::from_secs(args.timeout_secs.max(1)),
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&parked)?);
        return Ok(());
    }
    println!("TOPIC\tPARTITION\tOFFSET\tTIME\tKEY\tSTAGE\tREASON");
    for m in &parked {
        let time = m
            .timestamp_ms
            .and_then(|ms| u64::try_from(ms).ok())
            .map(|ms| {
                humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms))
                    .to_string()
            })
            .unwrap_or_else(|| "-".into());
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        // One line per message: a reason's line breaks become spaces.
        let reason = dash(&m.reason).replace(['\n', '\r', '\t'], " ");
        println!(
            "{}\t{}\t{}\t{time}\t{}\t{}\t{reason}",
            m.topic,
            m.partition,
            m.offset,
            dash(&m.key),
            dash(&m.stage)
        );
    }
    println!("{} parked", parked.len());
    Ok(())
}
