//! moto's AWS emulator as a test peer: started by the test on a free loopback port from the
//! Python that `scripts/test.sh` prepares (`ORDERFLOW_TEST_PYTHON`, else `python3`), killed on
//! drop. Shared by the workspace's end-to-end tests and the bridge crate's tests.

#![allow(dead_code)]

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::config::Credentials;
use serde_json::Value;

/// A running moto server.
pub struct Moto {
    child: Option<Child>,
    pub port: u16,
    http: reqwest::Client,
}

/// The Python with moto installed.
fn python() -> String {
    std::env::var("ORDERFLOW_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

impl Moto {
    /// Starts moto on a free port and waits until it answers.
    pub async fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut moto = Moto {
            child: None,
            port,
            http: reqwest::Client::new(),
        };
        moto.spawn().await;
        moto
    }

    async fn spawn(&mut self) {
        let python = python();
        let has_moto = Command::new(&python)
            .args(["-c", "import moto.server"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            has_moto,
            "{python} cannot import moto.server: run the tests with scripts/test.sh, which \
             installs moto[server] (scripts/test-requirements.txt) and sets ORDERFLOW_TEST_PYTHON"
        );
        let child = Command::new(&python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self.http.get(self.url("/moto-api/")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("moto server exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "moto did not answer within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the server (its state is lost).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint())
    }

    /// Drops every resource (queues, identities, sent emails).
    pub async fn reset(&self) {
        let r = self
            .http
            .post(self.url("/moto-api/reset"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    /// The environment a process needs to use this server through the standard AWS chain.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// An SDK config for this server, with dummy credentials.
    pub async fn sdk_config(&self) -> SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .http_client(orderflow_bridge::aws::https_client())
            .region(Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .load()
            .await
    }

    pub async fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk_config().await)
    }

    /// Creates a queue (FIFO when the name ends in `.fifo`); returns its URL.
    pub async fn create_queue(&self, name: &str) -> String {
        let mut request = self.sqs().await.create_queue().queue_name(name);
        if name.ends_with(".fifo") {
            request = request.attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true");
        }
        request.send().await.unwrap().queue_url.unwrap()
    }

    /// The URL of an existing queue.
    pub async fn queue_url(&self, name: &str) -> String {
        self.sqs()
            .await
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap()
    }

    /// Receives from `queue` until `done` holds for everything received (panics after 30 s).
    /// Received messages stay invisible for 5 minutes, so each is seen once.
    pub async fn receive_until(
        &self,
        queue_url: &str,
        done: impl Fn(&[aws_sdk_sqs::types::Message]) -> bool,
    ) -> Vec<aws_sdk_sqs::types::Message> {
        let sqs = self.sqs().await;
        let mut all = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(&all) {
            assert!(
                Instant::now() < deadline,
                "{queue_url}: never received what was expected; got {} messages: {all:#?}",
                all.len()
            );
            let out = sqs
                .receive_message()
                .queue_url(queue_url)
                .max_number_of_messages(10)
                .visibility_timeout(300)
                .wait_time_seconds(1)
                .message_attribute_names("All")
                .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
                .send()
                .await
                .unwrap();
            all.extend(out.messages.unwrap_or_default());
        }
        all
    }

    /// Receives whatever arrives in the next `quiet` (each message once).
    pub async fn drain(
        &self,
        queue_url: &str,
        quiet: Duration,
    ) -> Vec<aws_sdk_sqs::types::Message> {
        let sqs = self.sqs().await;
        let mut all = Vec::new();
        let until = Instant::now() + quiet;
        while Instant::now() < until {
            let out = sqs
                .receive_message()
                .queue_url(queue_url)
                .max_number_of_messages(10)
                .visibility_timeout(300)
                .wait_time_seconds(1)
                .message_attribute_names("All")
                .send()
                .await
                .unwrap();
            all.extend(out.messages.unwrap_or_default());
        }
        all
    }

    /// Creates (so verifies, in moto) an SES identity.
    pub async fn verify_identity(&self, address: &str) {
        aws_sdk_sesv2::Client::new(&self.sdk_config().await)
            .create_email_identity()
            .email_identity(address)
            .send()
            .await
            .unwrap();
    }

    /// The emails SES took: moto's `ses.Message` entries (`source`, `subject`, `body`,
    /// `destinations.ToAddresses`).
    pub async fn emails(&self) -> Vec<Value> {
        let data: Value = self
            .http
            .get(self.url("/moto-api/data.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        data["ses"]["Message"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Polls the emails until `done` holds (panics after 30 s).
    pub async fn emails_until(&self, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let emails = self.emails().await;
            if done(&emails) {
                return emails;
            }
            assert!(
                Instant::now() < deadline,
                "emails never matched: {emails:#?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A message attribute's string value.
pub fn attribute(m: &aws_sdk_sqs::types::Message, name: &str) -> Option<String> {
    m.message_attributes()
        .and_then(|a| a.get(name))
        .and_then(|v| v.string_value())
        .map(str::to_string)
}

/// A message body as JSON.
pub fn body(m: &aws_sdk_sqs::types::Message) -> Value {
    serde_json::from_str(m.body().unwrap_or("null")).unwrap()
}

/// Whether an email went to `to`.
pub fn sent_to(email: &Value, to: &str) -> bool {
    email["destinations"]["ToAddresses"]
        .as_array()
        .is_some_and(|a| a.iter().any(|t| t == to))
}
