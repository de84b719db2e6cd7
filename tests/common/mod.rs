//! Helpers for the end-to-end tests: start the real `orderflow run` binary on ephemeral
//! ports with its own data dir, talk to it over HTTP and over the Kafka protocol.

#![allow(dead_code)]

pub mod moto;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    message::OwnedMessage,
    producer::{BaseProducer, BaseRecord, Producer},
    ClientConfig, Message, Offset, TopicPartitionList,
};
use serde_json::{json, Value};

/// The demo admin `orderflow run` creates on its first start (everything local), whose login
/// `Pipeline::client` uses.
pub const ADMIN_EMAIL: &str = "admin@example.com";
const ADMIN_PASSWORD: &str = "admin123";
/// The password of the accounts [`Pipeline::customer`] creates.
pub const CUSTOMER_PASSWORD: &str = "correct horse battery";

/// A logged-in account of a running pipeline.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: String,
    /// `Bearer <access token>`.
    pub bearer: String,
}

impl Account {
    /// The access token alone.
    pub fn token(&self) -> &str {
        self.bearer.trim_start_matches("Bearer ")
    }
}

/// A running `orderflow run`.
pub struct Pipeline {
    child: Option<Child>,
    pub http: String,
    pub bootstrap: String,
    pub data_dir: PathBuf,
    /// The demo admin, logged in.
    pub admin: Account,
    /// Sends the admin's access token with every request that sets none.
    pub client: reqwest::Client,
    /// Sends no token.
    pub anonymous: reqwest::Client,
    /// The customers [`Pipeline::customer`] made, by name.
    customers: tokio::sync::Mutex<std::collections::HashMap<String, Account>>,
}

/// Logs in over plain HTTP/1.1 (blocking: `Pipeline::start` is not async); the account's id and
/// access token.
fn login_blocking(http: &str, email: &str, password: &str) -> Account {
    use std::io::{Read, Write};
    let host = http.trim_start_matches("http://");
    let body = json!({"email": email, "password": password}).to_string();
    let mut stream = std::net::TcpStream::connect(host).expect("the API accepts connections");
    write!(
        stream,
        "POST /v1/auth/login HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, json) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "login as {email}: {answer}"
    );
    let v: Value = serde_json::from_str(json).expect("a JSON login answer");
    let token = v["access_token"].as_str().expect("an access token");
    Account {
        id: subject(token),
        bearer: format!("Bearer {token}"),
    }
}

/// The `sub` of a JWT (read, not checked: the pipeline checks it).
pub fn subject(token: &str) -> String {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url claims");
    let claims: Value = serde_json::from_slice(&claims).unwrap();
    claims["sub"].as_str().unwrap().to_string()
}

impl Pipeline {
    /// Starts the pipeline on the embedded broker.
    pub fn start(data_dir: &Path) -> Pipeline {
        Self::start_with(data_dir, &[])
    }

    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Pipeline {
        Self::spawn(data_dir, extra, "warn", Vec::new(), Stdio::inherit())
    }

    /// Starts the pipeline with these environment variables set too.
    pub fn start_with_env<V: AsRef<std::ffi::OsStr>>(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, V)],
    ) -> Pipeline {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_ref().to_os_string()))
            .collect();
        Self::spawn(data_dir, extra, "warn", env, Stdio::inherit())
    }

    /// Starts the pipeline with `RUST_LOG=rust_log`, its log (stderr) going to `log_file`.
    pub fn start_logging_to(
        data_dir: &Path,
        extra: &[&str],
        rust_log: &str,
        log_file: &Path,
    ) -> Pipeline {
        let file = std::fs::File::create(log_file).expect("log file created");
        Self::spawn(data_dir, extra, rust_log, Vec::new(), Stdio::from(file))
    }

    fn spawn(
        data_dir: &Path,
        extra: &[&str],
        rust_log: &str,
        env: Vec<(String, std::ffi::OsString)>,
        stderr: Stdio,
    ) -> Pipeline {
        let mut child = Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .arg("run")
            .args(if extra.contains(&"--http") {
                &[][..]
            } else {
                &["--http", "127.0.0.1:0"][..]
            })
            // The embedded broker on any free port, unless the test says where.
            .args(if extra.contains(&"--kafka-listen") {
                &[][..]
            } else {
                &["--kafka-listen", "127.0.0.1:0"][..]
            })
            .arg("--data-dir")
            .arg(data_dir)
            // Tests count stock and invoice numbers from a clean start, unless they ask for
            // the demo's sample orders.
            .args(if extra.contains(&"--sample-orders") {
                &[][..]
            } else {
                &["--sample-orders", "false"][..]
            })
            .args(extra)
            .env("RUST_LOG", rust_log)
            // The tests are one process: AWS settings one test sets for a client of its own
            // reach a pipeline only when its test passes them.
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_REGION")
            .envs(env)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("orderflow starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut http, mut bootstrap) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(60);
        while http.is_none() || bootstrap.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("orderflow run printed no addresses within 60 s"));
            if let Some(url) = line.trim().strip_prefix("HTTP API:") {
                http = Some(url.trim().to_string());
            }
            if let Some(addr) = line.trim().strip_prefix("Kafka bootstrap:") {
                bootstrap = Some(addr.trim().to_string());
            }
        }
        let http = http.unwrap();
        // The admin of `--admin-email` when the test names one, else the demo admin.
        let given = |flag: &str| {
            let at = extra.iter().position(|a| *a == flag)?;
            extra.get(at + 1).copied()
        };
        let admin = match (given("--admin-email"), given("--admin-password")) {
            (Some(email), Some(password)) => login_blocking(&http, email, password),
            _ => login_blocking(&http, ADMIN_EMAIL, ADMIN_PASSWORD),
        };
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            admin.bearer.parse().unwrap(),
        );
        Pipeline {
            child: Some(child),
            http,
            bootstrap: bootstrap.unwrap(),
            data_dir: data_dir.to_path_buf(),
            admin,
            client: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .unwrap(),
            anonymous: reqwest::Client::new(),
            customers: Default::default(),
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: signals a child process this test started and still owns.
        let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM delivered");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("orderflow did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no graceful stop, nothing committed that was not committed already.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Polls `GET /readyz` until it answers 200 (panics after 30 s); returns its body.
    pub async fn wait_until_ready(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.client.get(self.url("/readyz")).send().await.unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap_or_default();
            if status == 200 {
                return body;
            }
            assert!(Instant::now() < deadline, "never ready: {status} {body}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The customer account `name` of this pipeline (`<name>@example.test`), created by the
    /// admin on first use, logged in.
    pub async fn customer(&self, name: &str) -> Account {
        let mut customers = self.customers.lock().await;
        if let Some(account) = customers.get(name) {
            return account.clone();
        }
        let email = format!("{name}@example.test");
        let response = self
            .client
            .post(self.url("/v1/customers"))
            .json(&json!({"name": name, "email": email, "password": CUSTOMER_PASSWORD}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        assert!(
            status == 201 || status == 409,
            "creating {email}: {status} {}",
            response.text().await.unwrap_or_default()
        );
        let account = self.login(&email, CUSTOMER_PASSWORD).await;
        customers.insert(name.to_string(), account.clone());
        account
    }

    /// `Bearer <token>` of the customer `name` ([`Pipeline::customer`]).
    pub async fn bearer(&self, name: &str) -> String {
        self.customer(name).await.bearer
    }

    /// The id of the customer `name` ([`Pipeline::customer`]).
    pub async fn id(&self, name: &str) -> String {
        self.customer(name).await.id
    }

    /// Logs in; panics unless the login succeeds.
    pub async fn login(&self, email: &str, password: &str) -> Account {
        let response = self
            .anonymous
            .post(self.url("/v1/auth/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let v: Value = response.json().await.unwrap_or_default();
        assert_eq!(status, 200, "login as {email}: {v}");
        let token = v["access_token"].as_str().unwrap();
        Account {
            id: subject(token),
            bearer: format!("Bearer {token}"),
        }
    }

    /// The id of the account with this email, as the admin lists it.
    pub async fn account_id(&self, email: &str) -> String {
        let page: Value = self
            .client
            .get(self.url("/v1/customers?limit=100"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let found: Vec<&Value> = page["customers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["email"] == email)
            .collect();
        assert_eq!(found.len(), 1, "one account has {email}: {page}");
        found[0]["customer_id"].as_str().unwrap().to_string()
    }

    /// The code of the `nth` (from 0) verification email to `customer_id` in the file sink.
    pub async fn emailed_code(&self, customer_id: &str, nth: usize) -> String {
        let to_them = |n: &&Value| n["kind"] == "verify_email" && n["customer_id"] == customer_id;
        let notes = self
            .wait_for_notifications(|all| all.iter().filter(to_them).count() > nth)
            .await;
        let note = notes.iter().filter(to_them).nth(nth).unwrap();
        let text = note["text"].as_str().unwrap();
        text.split_whitespace()
            .map(|w| w.trim_end_matches('.'))
            .find(|w| w.len() == 6 && w.chars().all(|c| c.is_ascii_digit()))
            .unwrap_or_else(|| panic!("no code in {text:?}"))
            .to_string()
    }

    /// The secret this pipeline signs tokens with (generated in its data dir).
    pub fn token_keys(&self) -> orderflow_ingest::auth::AuthSettings {
        let secret = std::fs::read_to_string(self.data_dir.join("jwt-secret"))
            .expect("orderflow run keeps its JWT secret in the data dir");
        orderflow_ingest::auth::AuthSettings::new(secret.trim().as_bytes())
    }

    /// The text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http)
    }

    /// POSTs an order body as the admin (for the customer the body names, or for the admin
    /// when it names none); returns the response.
    pub async fn post_order(&self, body: &Value, key: Option<&str>) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.url("/v1/orders"))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send().await.unwrap()
    }

    /// POSTs an order that must be accepted; returns its id.
    pub async fn place(&self, body: &Value) -> String {
        let response = self.post_order(body, None).await;
        assert_eq!(response.status(), 202);
        let v: Value = response.json().await.unwrap();
        v["order_id"].as_str().unwrap().to_string()
    }

    pub async fn order(&self, id: &str) -> Value {
        let response = self
            .client
            .get(self.url(&format!("/v1/orders/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Polls the order until its status is `status` (panics after 15 s).
    pub async fn wait_for_status(&self, id: &str, status: &str) -> Value {
        poll_until(
            &format!("order {id} reaching {status}"),
            Duration::from_secs(15),
            Duration::from_millis(25),
            || self.order(id),
            |order| order["status"] == status,
        )
        .await
    }

    /// The stock of a SKU as `GET /v1/products` shows it.
    pub async fn stock(&self, sku: &str) -> i64 {
        let v: Value = self
            .client
            .get(self.url("/v1/products"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["products"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["sku"] == sku)
            .unwrap()["stock"]
            .as_i64()
            .unwrap()
    }

    /// The notifications the file sink holds.
    pub fn notifications(&self) -> Vec<Value> {
        std::fs::read_to_string(self.data_dir.join("notifications.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Polls the file sink until `pred` holds for its notifications (panics after 15 s).
    pub async fn wait_for_notifications(&self, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        poll_until(
            "notifications",
            Duration::from_secs(15),
            Duration::from_millis(50),
            || async { self.notifications() },
            |all| pred(all),
        )
        .await
    }
}

/// Reads with `read` every `every` until `done` holds for what it read, and returns that;
/// panics after `within`, showing the last read of `what`.
pub async fn poll_until<T, Fut>(
    what: &str,
    within: Duration,
    every: Duration,
    mut read: impl FnMut() -> Fut,
    done: impl Fn(&T) -> bool,
) -> T
where
    T: std::fmt::Debug,
    Fut: std::future::Future<Output = T>,
{
    let deadline = Instant::now() + within;
    loop {
        let value = read().await;
        if done(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never matched within {within:?}: {value:#?}"
        );
        tokio::time::sleep(every).await;
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Places one order that gets invoiced and one that gets rejected (unknown SKU), and waits for
/// both; returns their ids.
pub async fn one_invoiced_one_rejected(p: &Pipeline) -> (String, String) {
    let good = p.place(&order_body("MUG-001", 1, "tok_visa")).await;
    let unknown = p.place(&order_body("NOPE-404", 1, "tok_visa")).await;
    p.wait_for_status(&good, "invoiced").await;
    p.wait_for_status(&unknown, "rejected").await;
    (good, unknown)
}

/// The Python that has the test peers (scripts/test.sh sets it), else `python3`.
pub fn python() -> String {
    let python = std::env::var("ORDERFLOW_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let check = Command::new(&python)
        .args([
            "-c",
            "import confluent_kafka.schema_registry.avro, fastavro",
        ])
        .output();
    match check {
        Ok(out) if out.status.success() => python,
        _ => panic!(
            "{python} lacks confluent-kafka[avro] and fastavro: run the tests with \
             scripts/test.sh, which installs scripts/test-requirements.txt into a venv and sets \
             ORDERFLOW_TEST_PYTHON"
        ),
    }
}

/// A valid order body.
pub fn order_body(sku: &str, quantity: i64, token: &str) -> Value {
    json!({
        "customer_id": "cust-1",
        "items": [{"sku": sku, "quantity": quantity}],
        "shipping_address": {"name": "Ada Lovelace", "line1": "1 Main St", "city": "Berlin",
                             "postal_code": "10115", "country": "DE"},
        "payment": {"method": "card", "token": token}
    })
}

/// Produces one raw record to `topic` as an outside Kafka client would (e.g. something that is
/// not one of our events), and waits until the broker has it.
pub async fn produce_raw(bootstrap: &str, topic: &str, key: &str, payload: Vec<u8>) {
    let (bootstrap, topic, key) = (bootstrap.to_string(), topic.to_string(), key.to_string());
    tokio::task::spawn_blocking(move || {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
        producer
            .send(BaseRecord::to(&topic).key(&key).payload(&payload))
            .map_err(|(e, _)| e)
            .unwrap();
        producer.flush(Duration::from_secs(10)).unwrap();
    })
    .await
    .unwrap();
}

/// Reads `topic` from the beginning, as an outside Kafka client would, until `done` holds for
/// what was read (panics after 20 s).
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    done: impl Fn(&[OwnedMessage]) -> bool,
) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("test-reader-{}", uuid::Uuid::now_v7()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done(&seen) {
        assert!(
            Instant::now() < deadline,
            "{topic}: never saw what was expected; read {} messages",
            seen.len()
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            seen.push(m.detach());
        }
    }
    seen
}

/// Whether a message is keyed by `order_id`.
pub fn keyed(m: &OwnedMessage, order_id: &str) -> bool {
    m.key() == Some(order_id.as_bytes())
}

/// Every message on `topic`, from the beginning to its end as of the call, as an outside
/// Kafka client reads it.
pub fn read_all(bootstrap: &str, topic: &str) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("test-reader-{}", uuid::Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut tpl = TopicPartitionList::new();
    let mut ends = std::collections::BTreeMap::new();
    for p in &partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, *p, Duration::from_secs(10))
            .unwrap();
        ends.insert(*p, high);
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut next: std::collections::BTreeMap<i32, i64> =
        partitions.iter().map(|p| (*p, 0)).collect();
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while next.iter().any(|(p, n)| *n < ends[p]) {
        assert!(
            Instant::now() < deadline,
            "{topic}: could not read to the end"
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            next.insert(m.partition(), m.offset() + 1);
            messages.push(m.detach());
        }
    }
    messages
}

/// A port free on 127.0.0.1 now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `child` (`what`) listens on `port`; panics if it exits first or after 20 s.
pub fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited ({status}) before listening on {port}");
        }
        assert!(Instant::now() < deadline, "{what} never listened on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `orderflow broker` on a free port with its data in `dir`: the process (killed when dropped)
/// and its bootstrap address.
pub fn start_broker(dir: &Path) -> (Killed, String) {
    let port = free_port();
    (broker_on(dir, port), format!("127.0.0.1:{port}"))
}

/// Creates `topics` (name, partitions) on the broker at `bootstrap`, failing the test if one of
/// them cannot be.
pub fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    let created = futures::executor::block_on(admin.create_topics(
        &new,
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))
    .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
}

/// `orderflow broker` on `port` with its data in `dir`, quiet but for errors, killed when the
/// guard drops (started again on the same port and dir, it carries on where it stopped).
pub fn broker_on(dir: &Path, port: u16) -> Killed {
    let mut child = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(["broker", "--data-dir"])
        .arg(dir)
        .args(["--kafka-listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "error")
        .spawn()
        .unwrap();
    wait_for_port(port, &mut child, "orderflow broker");
    Killed(child)
}

/// A child process killed when the test ends, however it ends.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
