//! The schema registry end to end, through the real binary: `orderflow run` registers its
//! schemas, frames messages with the registry's ids and serves Confluent's registry API; a
//! registry client we did not write (confluent-kafka's, Python) decodes every topic through
//! it; our client registers against it; and a pipeline pointed at it with `--schema-registry`
//! frames with its ids, or refuses to start on an incompatible schema.
//!
//! No other Confluent-compatible registry can run here (Karapace is not on the package index
//! this machine reaches; Confluent's and Redpanda's are not Python or Rust packages), so
//! `orderflow run`'s own endpoints play the external registry.

use crate::common;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{keyed, order_body, produce_raw, python, read_topic, Pipeline};
use orderflow_schemas::{
    registry::{
        register_catalogue, register_schema, subject, Compatibility, LocalRegistry, Registry,
        RegistryAuth, RegistryClient, RegistryError,
    },
    wire, Event, OrderAccepted, OrderRejected, SchemaIds, TopicKind, Topics,
};
use rdkafka::Message;
use serde_json::{json, Value};

/// Starts a data dir whose registry already holds one unrelated schema, so that the pipeline's
/// schemas get ids 2..12, not the built-in 1..11.
fn data_dir_with_a_registered_schema(dir: &Path) {
    let registry = LocalRegistry::open(&dir.join(LocalRegistry::FILE)).unwrap();
    registry
        .register(
            "legacy-value",
            r#"{"type": "record", "name": "Legacy", "fields": [{"name": "a", "type": "string"}]}"#,
        )
        .unwrap();
}

/// OrderAccepted with one more field (`field` as JSON).
fn accepted_plus(field: Value) -> String {
    let mut schema: Value = serde_json::from_str(OrderAccepted::schema_text()).unwrap();
    schema["fields"].as_array_mut().unwrap().push(field);
    schema.to_string()
}

/// An OrderAccepted that this build cannot read: its `order_id` is an int.
fn unreadable_accepted() -> String {
    let mut schema: Value = serde_json::from_str(OrderAccepted::schema_text()).unwrap();
    for field in schema["fields"].as_array_mut().unwrap() {
        if field["name"] == "order_id" {
            field["type"] = json!("int");
        }
    }
    schema.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluents_avro_deserializer_decodes_every_topic_through_the_embedded_registry() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    data_dir_with_a_registered_schema(dir.path());
    let p = Pipeline::start(dir.path());

    let good = p.place(&order_body("MUG-001", 2, "tok_visa")).await;
    let unknown = p.place(&order_body("NOPE-404", 1, "tok_visa")).await;
    let declined = p.place(&order_body("MUG-001", 1, "tok_decline")).await;
    p.wait_for_status(&good, "invoiced").await;
    p.wait_for_status(&unknown, "rejected").await;
    p.wait_for_status(&declined, "payment_failed").await;

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/registry_consumer.py"
    );
    let args = json!({
        "bootstrap": p.bootstrap,
        "registry": p.http,
        "timeout_s": 30,
        "wanted": {
            "orders.accepted": good, "orders.validated": good, "orders.paid": good,
            "orders.invoiced": good, "orders.rejected": unknown, "orders.payment-failed": declined,
        },
        "incompatible": {"subject": "orders.accepted-value", "schema": unreadable_accepted()},
        "token": p.admin.token(),
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

    // What the registry lists: our subjects (one per catalogue event) beside the one that was
    // there, each at version 1 with ids from 2, in catalogue order.
    let subjects: Vec<&str> = out["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(
        subjects.len(),
        orderflow_schemas::events::catalogue().len() + 1,
        "{subjects:?}"
    );
    assert!(subjects.contains(&"legacy-value"));
    let latest = &out["latest"];
    for (i, (_, _, kind, _)) in orderflow_schemas::events::catalogue().iter().enumerate() {
        let s = subject(&Topics::default(), *kind);
        assert_eq!(latest[&s], json!({"id": i + 2, "version": 1}), "{s}");
    }

    // Every record decoded, framed with its subject's id, with the order's fields.
    let records = out["records"].as_array().unwrap();
    assert_eq!(records.len(), 6);
    let record = |topic: &str| {
        let r = records.iter().find(|r| r["topic"] == topic).unwrap();
        assert_eq!(
            r["schema_id"],
            latest[format!("{topic}-value")]["id"],
            "{topic}"
        );
        r["record"].clone()
    };
    let a = record("orders.accepted");
    assert_eq!(a["order_id"], good);
    assert_eq!(a["event_id"], format!("{good}:accepted"));
    assert_eq!(a["customer_id"], "cust-1");
    assert_eq!(a["items"], json!([{"sku": "MUG-001", "quantity": 2}]));
    assert_eq!(a["shipping_address"]["city"], "Berlin");
    assert_eq!(a["shipping_address"]["line2"], Value::Null);
    // The method, never the card token.
    assert_eq!(a["payment"], json!({"method": "card"}));
    assert!(a["occurred_at"].as_i64().unwrap() > 1_700_000_000_000);
    let v = record("orders.validated");
    assert_eq!(v["order_id"], good);
    assert_eq!(v["lines"][0]["name"], "Orderflow mug");
    assert_eq!(v["lines"][0]["unit_price_cents"], 1250);
    assert_eq!(
        (&v["subtotal_cents"], &v["tax_cents"], &v["total_cents"]),
        (&json!(2500), &json!(500), &json!(3000))
    );
    assert_eq!(v["currency"], "EUR");
    let paid = record("orders.paid");
    assert_eq!(paid["order_id"], good);
    assert!(!paid["payment_id"].as_str().unwrap().is_empty());
    assert_eq!(paid["total_cents"], 3000);
    let inv = record("orders.invoiced");
    assert_eq!(inv["event_id"], format!("{good}:invoiced"));
    let order = p.order(&good).await;
    assert_eq!(inv["invoice_number"], order["invoice_number"]);
    assert_eq!(inv["total_cents"], 3000);
    let rej = record("orders.rejected");
    assert_eq!(rej["order_id"], unknown);
    assert_eq!(rej["reason_code"], "unknown_sku");
    let failed = record("orders.payment-failed");
    assert_eq!(failed["order_id"], declined);
    assert_eq!(failed["amount_cents"], 1500);
    assert!(!failed["reason"].as_str().unwrap().is_empty());

    // The same client checks and tries to register a schema that breaks compatibility.
    let incompatible = &out["incompatible"];
    assert_eq!(incompatible["compatible"], false);
    // Registering needs an admin's token; with one, the incompatible schema is refused.
    assert_eq!(
        incompatible["anonymous_error"]["status"], 401,
        "{incompatible}"
    );
    assert_eq!(incompatible["anonymous_error"]["error_code"], 40101);
    assert_eq!(incompatible["register_error"]["status"], 409);
    assert_eq!(incompatible["register_error"]["error_code"], 409);
    assert!(incompatible["register_error"]["message"]
        .as_str()
        .unwrap()
        .contains("order_id"));
    assert!(p.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_checks_compatibility_and_returns_the_registrys_ids() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start(dir.path());
    let topics = Topics::new(format!("t{}.", uuid::Uuid::now_v7().simple()));

    // Registering changes the registry: nobody without a token, no customer.
    let anonymous = RegistryClient::new(&p.http).unwrap();
    let customer = anonymous.clone().with_auth(RegistryAuth::Bearer(
        p.customer("cust-1").await.token().into(),
    ));
    for (client, status) in [(anonymous, 401), (customer, 403)] {
        match register_catalogue(&client, &topics, Compatibility::Backward).await {
            Err(RegistryError::Status { status: got, .. }) => assert_eq!(got, status),
            other => panic!("registered without an admin: {other:?}"),
        }
    }
    let client = RegistryClient::new(&p.http)
        .unwrap()
        .with_auth(RegistryAuth::Bearer(p.admin.token().into()));

    // New subjects: each gets BACKWARD and a version; schemas the registry already holds
    // (under the pipeline's own subjects) keep their ids, as Confluent's do.
    let ids = register_catalogue(&client, &topics, Compatibility::Backward)
        .await
        .unwrap();
    assert_eq!(ids, SchemaIds::builtin());
    let accepted = subject(&topics, TopicKind::OrdersAccepted);
    assert_eq!(
        client.compatibility(&accepted).await.unwrap(),
        Some(Compatibility::Backward)
    );
    let versions = client.versions(&accepted).await.unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(
        (versions[0].version, versions[0].id),
        (1, ids.id(TopicKind::OrdersAccepted).unwrap())
    );

    // Again, with another level asked for: same ids, no new version, the level kept.
    let again = register_catalogue(&client, &topics, Compatibility::Full)
        .await
        .unwrap();
    assert_eq!(again, ids);
    assert_eq!(client.versions(&accepted).await.unwrap().len(), 1);
    assert_eq!(
        client.compatibility(&accepted).await.unwrap(),
        Some(Compatibility::Backward)
    );

    // Messages framed with the ids decode with them.
    let rejected = OrderRejected {
        event_id: "o1:rejected".into(),
        order_id: "o1".into(),
        customer_id: "c1".into(),
        reason_code: "out_of_stock".into(),
        reason: "LIMITED-001: 3 left".into(),
        occurred_at: 1,
    };
    let framed = wire::encode_with(&ids, &rejected).unwrap();
    assert_eq!(
        wire::schema_id(&framed).unwrap(),
        ids.id(TopicKind::OrdersRejected).unwrap()
    );
    assert_eq!(
        wire::decode_with::<OrderRejected>(&ids, &framed).unwrap(),
        rejected
    );

    // An incompatible change fails, naming the subject and the registry's reason; nothing is
    // registered.
    let breaking = accepted_plus(json!({"name": "channel", "type": "string"}));
    let err = register_schema(&client, &accepted, &breaking, Compatibility::Backward)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Incompatible { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&accepted), "{text}");
    assert!(
        text.contains("'channel'") && text.contains("default"),
        "{text}"
    );
    assert_eq!(client.versions(&accepted).await.unwrap().len(), 1);

    // A compatible change is version 2 with a new id; this build still frames with version 1's
    // id and reads data written with version 2.
    let v2 = accepted_plus(json!({"name": "channel", "type": "string", "default": "web"}));
    let (v2_id, versions) = register_schema(&client, &accepted, &v2, Compatibility::Backward)
        .await
        .unwrap();
    assert_eq!(versions.len(), 2);
    assert!(!ids.current().iter().any(|(_, id)| *id == v2_id));
    let ids = register_catalogue(&client, &topics, Compatibility::Backward)
        .await
        .unwrap();
    assert_eq!(
        ids.id(TopicKind::OrdersAccepted),
        SchemaIds::builtin().id(TopicKind::OrdersAccepted)
    );
    let v2_schema = apache_avro::Schema::parse_str(&v2).unwrap();
    let accepted_event: OrderAccepted = {
        let body = order_body("MUG-001", 1, "tok_visa");
        serde_json::from_value(json!({
            "event_id": "o2:accepted", "order_id": "o2", "customer_id": body["customer_id"],
            "items": body["items"],
            "shipping_address": {"name": "Ada", "line1": "1 Main St", "line2": null,
                                 "city": "Berlin", "postal_code": "10115", "country": "DE"},
            "payment": body["payment"], "occurred_at": 2,
        }))
        .unwrap()
    };
    let mut value = apache_avro::to_value(&accepted_event).unwrap();
    if let apache_avro::types::Value::Record(fields) = &mut value {
        fields.push((
            "channel".into(),
            apache_avro::types::Value::String("app".into()),
        ));
    }
    let mut written_with_v2 = vec![wire::MAGIC];
    written_with_v2.extend_from_slice(&v2_id.to_be_bytes());
    written_with_v2.extend(apache_avro::to_avro_datum(&v2_schema, value).unwrap());
    assert_eq!(
        wire::decode_with::<OrderAccepted>(&ids, &written_with_v2).unwrap(),
        accepted_event
    );
    assert!(p.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_with_schema_registry_frames_with_its_ids_learns_new_versions_and_refuses_an_incompatible_subject(
) {
    // The registry: a pipeline whose schemas have ids 2..7.
    let registry_dir = tempfile::tempdir().unwrap();
    data_dir_with_a_registered_schema(registry_dir.path());
    let registry = Pipeline::start(registry_dir.path());

    // A pipeline using it registers (same schemas: same ids), frames with those ids, and its
    // stages decode them: an order gets invoiced.
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start_with(
        dir.path(),
        &[
            "--schema-registry",
            &registry.http,
            "--schema-registry-token",
            registry.admin.token(),
            "--topic-prefix",
            "p2.",
        ],
    );
    let id = p.place(&order_body("MUG-001", 1, "tok_visa")).await;
    p.wait_for_status(&id, "invoiced").await;
    let bootstrap = p.bootstrap.clone();
    let wanted = id.clone();
    let invoiced = tokio::task::spawn_blocking(move || {
        read_topic(&bootstrap, "p2.orders.invoiced", |ms| {
            ms.iter().any(|m| keyed(m, &wanted))
        })
    })
    .await
    .unwrap();
    let m = invoiced.iter().find(|m| keyed(m, &id)).unwrap();
    let latest: Value = p
        .client
        .get(registry.url("/subjects/p2.orders.invoiced-value/versions/latest"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(latest["id"], 7);
    assert_eq!(wire::schema_id(m.payload().unwrap()).unwrap(), 7);
    // With an external registry, the pipeline serves none itself.
    let own = p.client.get(p.url("/subjects")).send().await.unwrap();
    assert_eq!(own.status(), 404);

    // A newer, compatible version registered while it runs (as a newer producer would in a
    // rolling upgrade): a message framed with its id still reaches the customer.
    let client = RegistryClient::new(&registry.http)
        .unwrap()
        .with_auth(RegistryAuth::Bearer(registry.admin.token().into()));
    let mut v2: Value = serde_json::from_str(OrderRejected::schema_text()).unwrap();
    v2["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "channel", "type": "string", "default": "web"}));
    let v2 = v2.to_string();
    let (v2_id, _) = register_schema(
        &client,
        "p2.orders.rejected-value",
        &v2,
        Compatibility::Backward,
    )
    .await
    .unwrap();
    let rejected = OrderRejected {
        event_id: "o-v2:rejected".into(),
        order_id: "o-v2".into(),
        customer_id: "c-v2".into(),
        reason_code: "out_of_stock".into(),
        reason: "LIMITED-001 is sold out".into(),
        occurred_at: orderflow_schemas::now_millis(),
    };
    let mut value = apache_avro::to_value(&rejected).unwrap();
    if let apache_avro::types::Value::Record(fields) = &mut value {
        fields.push((
            "channel".into(),
            apache_avro::types::Value::String("app".into()),
        ));
    }
    let mut framed = vec![wire::MAGIC];
    framed.extend_from_slice(&v2_id.to_be_bytes());
    framed.extend(
        apache_avro::to_avro_datum(&apache_avro::Schema::parse_str(&v2).unwrap(), value).unwrap(),
    );
    produce_raw(&p.bootstrap, "p2.orders.rejected", "o-v2", framed).await;
    let notes = p
        .wait_for_notifications(|all| all.iter().any(|n| n["order_id"] == "o-v2"))
        .await;
    let note = notes.iter().find(|n| n["order_id"] == "o-v2").unwrap();
    assert_eq!(note["kind"], "order_rejected");
    assert!(note["text"]
        .as_str()
        .unwrap()
        .contains("LIMITED-001 is sold out"));
    assert!(p.stop().success());

    // A subject whose latest version this build cannot read: the pipeline does not start, and
    // says which subject and why.
    client
        .register("p3.orders.accepted-value", &unreadable_accepted())
        .await
        .unwrap();
    let refused_dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args([
            "run",
            "--http",
            "127.0.0.1:0",
            "--kafka-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(refused_dir.path())
        .args(["--schema-registry", &registry.http, "--topic-prefix", "p3."])
        .args(["--schema-registry-token", registry.admin.token()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("orderflow run kept running with an incompatible schema");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("p3.orders.accepted-value"), "{stderr}");
    assert!(stderr.contains("incompatible"), "{stderr}");
    assert!(stderr.contains("order_id"), "{stderr}");
    assert!(registry.stop().success());
}
