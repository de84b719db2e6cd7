//! Orderflow on a Kafka that is not on loopback in plain text, as managed services are: zstd
//! batches, TLS with a private CA, SASL/SCRAM. Each runs the real protocol against a real peer:
//! the whole pipeline with zstd read back by confluent-kafka (Python); the whole pipeline
//! through a TLS listener (Debian's stunnel in front of the embedded broker, which advertises the
//! TLS port); its schemas registered over https with a private CA; the whole pipeline on a tansu
//! broker that requires SASL/SCRAM-SHA-256.

use crate::common;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{free_port, order_body, python, wait_for_port, Killed, Pipeline};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    ClientConfig,
};
use serde_json::{json, Value};

/// Reads `orders.invoiced` with confluent-kafka (its own librdkafka) until the record keyed by
/// `order_id`, decoded through the pipeline's registry; `kafka` adds consumer properties.
async fn read_invoiced_in_python(p: &Pipeline, order_id: &str, kafka: Value) -> Value {
    let python = python();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/registry_consumer.py"
    );
    let args = json!({
        "bootstrap": p.bootstrap,
        "registry": p.http,
        "timeout_s": 30,
        "wanted": {"orders.invoiced": order_id},
        "kafka": kafka,
    });
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-W", "ignore", script, &args.to_string()])
            .stderr(Stdio::inherit())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "registry_consumer.py failed");
    let out: Value = serde_json::from_slice(&out.stdout).unwrap();
    out["records"][0]["record"].clone()
}

/// Places an order and waits until it is invoiced; returns its id.
async fn one_invoiced_order(p: &Pipeline) -> String {
    p.wait_until_ready().await;
    let id = p.place(&order_body("MUG-001", 2, "tok_visa")).await;
    p.wait_for_status(&id, "invoiced").await;
    id
}

#[test]
fn librdkafka_is_built_with_tls_sasl_and_zstd() {
    let config = ClientConfig::new().create_native_config().unwrap();
    let features = config.get("builtin.features").unwrap();
    let features: Vec<&str> = features.split(',').collect();
    for wanted in [
        "ssl",
        "sasl_plain",
        "sasl_scram",
        "sasl_oauthbearer",
        "zstd",
        "gzip",
        "lz4",
        "snappy",
    ] {
        assert!(features.contains(&wanted), "{wanted} missing: {features:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_produces_zstd_batches_that_another_client_reads() {
    let dir = tempfile::tempdir().unwrap();
    // Every batch the pipeline produces is zstd, and every stage downstream fetches zstd.
    let p = Pipeline::start_with(dir.path(), &["--kafka-property", "compression.type=zstd"]);
    let id = one_invoiced_order(&p).await;
    let record = read_invoiced_in_python(&p, &id, json!({})).await;
    assert_eq!(record["order_id"], id.as_str(), "{record}");
    assert!(record["total_cents"].as_i64().unwrap() > 0, "{record}");
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

/// stunnel, if it is installed (scripts/test.sh installs Debian's stunnel4).
pub(crate) fn stunnel() -> Option<&'static str> {
    ["stunnel4", "stunnel"].into_iter().find(|bin| {
        Command::new(bin)
            .arg("-version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    })
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.pem`) and a certificate it signed for IP 127.0.0.1 (`server.pem`, `server.key`).
pub(crate) fn private_ca(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=Orderflow test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\n\
         extendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_through_a_tls_listener_with_a_private_ca() {
    let Some(stunnel) = stunnel() else {
        eprintln!(
            "SKIPPED: no stunnel4 on this machine (scripts/test.sh installs it with apt-get when \
             it runs as root): the TLS test did not run"
        );
        return;
    };
    let tls = tempfile::tempdir().unwrap();
    private_ca(tls.path());
    let (broker_port, tls_port) = (free_port(), free_port());
    // TLS on tls_port, the embedded broker's plain listener behind it.
    std::fs::write(
        tls.path().join("stunnel.conf"),
        format!(
            "foreground = yes\npid =\ndebug = 4\n[kafka]\naccept = 127.0.0.1:{tls_port}\n\
             connect = 127.0.0.1:{broker_port}\ncert = server.pem\nkey = server.key\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(stunnel)
        .arg("stunnel.conf")
        .current_dir(tls.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("stunnel starts");
    wait_for_port(tls_port, &mut child, "stunnel");
    let _stunnel = Killed(child);

    let ca = tls.path().join("ca.pem");
    let ca = ca.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{broker_port}");
    let advertise = format!("127.0.0.1:{tls_port}");
    let ca_location = format!("ssl.ca.location={ca}");
    // Every client of the pipeline (producer, stages, admin) bootstraps from the TLS port and
    // is sent back there by the broker's metadata.
    let p = Pipeline::start_with(
        dir.path(),
        &[
            "--kafka-listen",
            &listen,
            "--kafka-advertise",
            &advertise,
            "--kafka-property",
            "security.protocol=ssl",
            "--kafka-property",
            &ca_location,
        ],
    );
    assert_eq!(p.bootstrap, advertise);
    let id = one_invoiced_order(&p).await;
    let record = read_invoiced_in_python(
        &p,
        &id,
        json!({"security.protocol": "ssl", "ssl.ca.location": ca}),
    )
    .await;
    assert_eq!(record["order_id"], id.as_str(), "{record}");

    // The CA is what makes the certificate trusted: without it the handshake fails.
    let bootstrap = p.bootstrap.clone();
    let refused = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("security.protocol", "ssl")
            .set("log_level", "0")
            .create()
            .unwrap();
        consumer
            .fetch_metadata(None, Duration::from_secs(5))
            .map(|_| ())
    })
    .await
    .unwrap();
    assert!(refused.is_err(), "a client without the CA got metadata");
}

/// stunnel on a free port with the private CA's server certificate in `dir`, in front of
/// `127.0.0.1:<behind>`; killed when dropped.
pub(crate) fn tls_in_front_of(stunnel: &str, dir: &Path, behind: u16) -> (u16, Killed) {
    let port = free_port();
    std::fs::write(
        dir.join(format!("stunnel-{behind}.conf")),
        format!(
            "foreground = yes\npid =\ndebug = 4\n[tls]\naccept = 127.0.0.1:{port}\n\
             connect = 127.0.0.1:{behind}\ncert = server.pem\nkey = server.key\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(stunnel)
        .arg(format!("stunnel-{behind}.conf"))
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("stunnel starts");
    wait_for_port(port, &mut child, "stunnel");
    (port, Killed(child))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_registers_its_schemas_with_a_registry_behind_a_private_ca() {
    let Some(stunnel) = stunnel() else {
        eprintln!(
            "SKIPPED: no stunnel4 on this machine (scripts/test.sh installs it with apt-get when \
             it runs as root): the registry TLS test did not run"
        );
        return;
    };
    let tls = tempfile::tempdir().unwrap();
    private_ca(tls.path());
    // The registry: another pipeline's, served over https by stunnel.
    let registry_dir = tempfile::tempdir().unwrap();
    let registry = Pipeline::start(registry_dir.path());
    let http_port: u16 = registry.http.rsplit(':').next().unwrap().parse().unwrap();
    let (port, _stunnel) = tls_in_front_of(stunnel, tls.path(), http_port);
    let url = format!("https://127.0.0.1:{port}");
    let ca = tls.path().join("ca.pem");
    let ca = ca.to_str().unwrap();

    // Without the CA the certificate is not trusted: the pipeline does not start, and says why.
    let refused_dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args([
            "run",
            "--http",
            "127.0.0.1:0",
            "--kafka-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(refused_dir.path())
        .args(["--schema-registry", &url])
        .args(["--schema-registry-token", registry.admin.token()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&url), "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");

    // A file that holds no certificate is named as the culprit.
    let not_pem = tls.path().join("server.csr");
    let out = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args([
            "run",
            "--http",
            "127.0.0.1:0",
            "--kafka-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(refused_dir.path())
        .args(["--schema-registry", &url, "--schema-registry-ca"])
        .arg(&not_pem)
        .args(["--schema-registry-token", registry.admin.token()])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--schema-registry-ca"), "{stderr}");

    // With it: the schemas are registered over TLS and an order is invoiced with their ids.
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start_with(
        dir.path(),
        &[
            "--schema-registry",
            &url,
            "--schema-registry-ca",
            ca,
            "--schema-registry-token",
            registry.admin.token(),
            "--topic-prefix",
            "tls.",
        ],
    );
    one_invoiced_order(&p).await;
    let subjects: Value = registry
        .client
        .get(registry.url("/subjects"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        subjects
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "tls.orders.invoiced-value"),
        "{subjects}"
    );
}

// ---------------------------------------------------------------------------------------------
// SASL/SCRAM
// ---------------------------------------------------------------------------------------------

/// On tansu, the embedded broker's crate, with its SASL authentication on.
#[cfg(feature = "embedded-broker")]
mod scram {
    use super::*;

    /// The SCRAM credential of `password` (RFC 5802 with SHA-256): what a broker keeps instead of
    /// the password.
    fn scram_sha256_credential(password: &str, salt: &[u8], iterations: u32) -> (Vec<u8>, Vec<u8>) {
        use hmac::{Hmac, KeyInit, Mac};
        use sha2::{Digest, Sha256};
        let hmac = |key: &[u8], data: &[u8]| {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        };
        // PBKDF2-HMAC-SHA256, one block.
        let mut u = hmac(password.as_bytes(), &[salt, &1u32.to_be_bytes()].concat());
        let mut salted = u.clone();
        for _ in 1..iterations {
            u = hmac(password.as_bytes(), &u);
            salted.iter_mut().zip(&u).for_each(|(s, x)| *s ^= x);
        }
        let stored_key = Sha256::digest(hmac(&salted, b"Client Key")).to_vec();
        let server_key = hmac(&salted, b"Server Key");
        (stored_key, server_key)
    }

    /// A tansu broker (the embedded broker's crate) on `port` that requires SASL, with one SCRAM-
    /// SHA-256 user, its log in `dir`; runs until the test's runtime ends.
    async fn scram_broker(dir: &Path, port: u16, user: &str, password: &str) {
        use tansu_storage::Storage as _;
        let db = dir.join("broker.db");
        let storage = url::Url::parse(&format!("sqlite:///{}", db.display())).unwrap();
        let listener = url::Url::parse(&format!("tcp://127.0.0.1:{port}")).unwrap();
        let cluster = "orderflow-scram";

        let salt = b"orderflow-test-salt".to_vec();
        let (stored_key, server_key) = scram_sha256_credential(password, &salt, 4096);
        let users = tansu_storage::StorageContainer::builder()
            .node_id(1)
            .cluster_id(cluster)
            .advertised_listener(listener.clone())
            .storage(storage.clone())
            .build()
            .await
            .unwrap();
        // A credential belongs to a cluster: its row exists once a broker has registered, and
        // an upsert before that stores nothing.
        users
            .register_broker(tansu_storage::BrokerRegistrationRequest {
                broker_id: 1,
                cluster_id: cluster.into(),
                incarnation_id: uuid::Uuid::now_v7(),
                rack: None,
            })
            .await
            .unwrap();
        users
            .upsert_user_scram_credential(
                user,
                tansu_sans_io::ScramMechanism::Scram256,
                tansu_storage::ScramCredential {
                    salt: salt.into(),
                    iterations: 4096,
                    stored_key: stored_key.into(),
                    server_key: server_key.into(),
                },
            )
            .await
            .unwrap();
        drop(users);

        // The user's writer lets go of the SQLite file a moment after it is dropped.
        let mut attempts = 0;
        let mut broker = loop {
            let built = tansu_broker::broker::Broker::<
                tansu_broker::coordinator::group::administrator::Controller<
                    tansu_storage::StorageContainer,
                >,
                tansu_storage::StorageContainer,
            >::builder()
            .node_id(1)
            .cluster_id(cluster)
            .incarnation_id(uuid::Uuid::now_v7())
            .advertised_listener(listener.clone())
            .storage(storage.clone())
            .listener(listener.clone())
            .authentication(true)
            .silent(true)
            .build()
            .await;
            match built {
                Ok(broker) => break broker,
                Err(e) if attempts < 50 && format!("{e:?}").contains("database is locked") => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("the SCRAM broker starts: {e:?}"),
            }
        };
        tokio::spawn(async move {
            let _ = broker.serve(tokio::time::Instant::now()).await;
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "the SCRAM broker never listened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether a client with these credentials gets the cluster's metadata.
    async fn scram_metadata(bootstrap: &str, user: &str, password: &str) -> bool {
        let (bootstrap, user, password) = (
            bootstrap.to_string(),
            user.to_string(),
            password.to_string(),
        );
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("security.protocol", "sasl_plaintext")
                .set("sasl.mechanism", "SCRAM-SHA-256")
                .set("sasl.username", &user)
                .set("sasl.password", &password)
                .set("log_level", "0")
                .create()
                .unwrap();
            consumer
                .fetch_metadata(None, Duration::from_secs(5))
                .is_ok()
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pipeline_runs_on_a_broker_that_requires_sasl_scram() {
        let broker_dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let (user, password) = ("orderflow", "scram-test-password");
        scram_broker(broker_dir.path(), port, user, password).await;
        let bootstrap = format!("127.0.0.1:{port}");

        // The broker checks the proof: a wrong password gets nothing.
        assert!(!scram_metadata(&bootstrap, user, "wrong-password").await);
        assert!(scram_metadata(&bootstrap, user, password).await);

        // The credentials as a deployment passes them: the ORDERFLOW_KAFKA_* environment. Not
        // all local (an external broker): no demo accounts, an admin of its own.
        let dir = tempfile::tempdir().unwrap();
        let p = Pipeline::start_with_env(
            dir.path(),
            &[
                "--brokers",
                &bootstrap,
                "--admin-email",
                "admin@shop.example",
                "--admin-password",
                "a long admin password",
            ],
            &[
                ("ORDERFLOW_KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
                ("ORDERFLOW_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"),
                ("ORDERFLOW_KAFKA_SASL_USERNAME", user),
                ("ORDERFLOW_KAFKA_SASL_PASSWORD", password),
            ],
        );
        one_invoiced_order(&p).await;
    }
}
