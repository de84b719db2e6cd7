//! The Confluent wire format: byte 0 is the magic byte `0`, bytes 1..5 the schema id (big
//! endian), the rest the Avro binary datum. Standard Avro deserializers (Confluent's, Redpanda's,
//! `fastavro` with a registry) read it given the schema for the id.
//!
//! The ids come from a [`SchemaIds`]: the registry's when one is configured, the built-in
//! ones (1..11) otherwise. [`encode`] and [`decode`] use the built-in ids.

use crate::{events::Event, registry::SchemaIds};

/// The magic byte that opens every framed message.
pub const MAGIC: u8 = 0;
/// Magic byte + schema id.
pub const HEADER_LEN: usize = 5;

/// Why a payload could not be decoded. Never retriable: the same bytes fail the same way, so
/// the message goes to the dead-letter topic.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("payload is {0} bytes, shorter than the 5-byte Confluent header")]
    TooShort(usize),
    #[error("magic byte is {0}, expected 0 (not Confluent wire format)")]
    BadMagic(u8),
    #[error("schema id {found} does not match {expected} ({name})")]
    WrongSchema {
        found: u32,
        expected: u32,
        name: &'static str,
    },
    #[error("schema id {found} is not a known version of {name}'s schema (registered after this process started?)")]
    UnknownSchema { found: u32, name: &'static str },
    #[error("avro datum does not match {name}: {message}")]
    Avro { name: &'static str, message: String },
    #[error("{0} trailing bytes after the avro datum")]
    Trailing(usize),
}

/// Encoding fails only when a value breaks its own schema, which is a bug.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {name}: {message}")]
pub struct EncodeError {
    pub name: &'static str,
    pub message: String,
}

/// The schema id of a framed payload, if it has a valid header.
pub fn schema_id(payload: &[u8]) -> Result<u32, DecodeError> {
    if payload.len() < HEADER_LEN {
        return Err(DecodeError::TooShort(payload.len()));
    }
    if payload[0] != MAGIC {
        return Err(DecodeError::BadMagic(payload[0]));
    }
    Ok(u32::from_be_bytes([
        payload[1], payload[2], payload[3], payload[4],
    ]))
}

/// Frames an event with its built-in schema id.
pub fn encode<E: Event>(event: &E) -> Result<Vec<u8>, EncodeError> {
    encode_with(&SchemaIds::builtin(), event)
}

/// Frames an event: header (the id `ids` gives its type) + Avro datum.
pub fn encode_with<E: Event>(ids: &SchemaIds, event: &E) -> Result<Vec<u8>, EncodeError> {
    let id = ids.id(E::TOPIC).ok_or_else(|| EncodeError {
        name: E::NAME,
        message: "no schema id for this event type".into(),
    })?;
    let mut buf = Vec::with_capacity(256);
    buf.push(MAGIC);
    buf.extend_from_slice(&id.to_be_bytes());
    apache_avro::write_avro_datum_ref(E::schema(), event, &mut buf).map_err(|e| EncodeError {
        name: E::NAME,
        message: e.to_string(),
    })?;
    Ok(buf)
}

/// Reads a framed event of type `E` framed with its built-in schema id.
pub fn decode<E: Event>(payload: &[u8]) -> Result<E, DecodeError> {
    decode_with(&SchemaIds::builtin(), payload)
}

/// Reads a framed event of type `E`: the id must stand for `E`'s current schema or an older
/// version of it in `ids`; an older version's datum is read with its writer schema and resolved
/// to `E`'s (Avro schema resolution: defaults fill added fields, removed fields are skipped).
pub fn decode_with<E: Event>(ids: &SchemaIds, payload: &[u8]) -> Result<E, DecodeError> {
    let found = schema_id(payload)?;
    let writer = match ids.resolve(found) {
        Some((kind, writer)) if kind == E::TOPIC => writer,
        Some(_) => {
            return Err(DecodeError::WrongSchema {
                found,
                expected: ids.id(E::TOPIC).unwrap_or_default(),
                name: E::NAME,
            })
        }
        None => {
            return Err(DecodeError::UnknownSchema {
                found,
                name: E::NAME,
            })
        }
    };
    let mut datum = &payload[HEADER_LEN..];
    let avro = |e: apache_avro::Error| DecodeError::Avro {
        name: E::NAME,
        message: e.to_string(),
    };
    let value = match writer {
        // `E`'s own schema names no type by reference (its encoder, `write_avro_datum_ref`,
        // resolves no names either), so it is read without indexing its names first, which
        // `from_avro_datum` does again on every call.
        None => apache_avro::from_avro_datum_schemata(E::schema(), Vec::new(), &mut datum, None),
        Some(writer) => apache_avro::from_avro_datum(writer, &mut datum, Some(E::schema())),
    }
    .map_err(avro)?;
    let event = apache_avro::from_value::<E>(&value).map_err(avro)?;
    if !datum.is_empty() {
        return Err(DecodeError::Trailing(datum.len()));
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::*;
    use apache_avro::types::Value;

    fn lines() -> Vec<OrderLine> {
        vec![OrderLine {
            sku: "SKU-1".into(),
            name: "Mug".into(),
            quantity: 2,
            unit_price_cents: 1250,
            line_total_cents: 2500,
        }]
    }

    fn accepted() -> OrderAccepted {
        OrderAccepted {
            event_id: "o1:accepted".into(),
            order_id: "o1".into(),
            customer_id: "c1".into(),
            items: vec![OrderItem {
                sku: "SKU-1".into(),
                quantity: 2,
            }],
            shipping_address: Address {
                name: "Ada".into(),
                line1: "1 Main St".into(),
                line2: None,
                city: "Springfield".into(),
                postal_code: "12345".into(),
                country: "US".into(),
            },
            payment: PaymentMethod {
                method: "card".into(),
            },
            occurred_at: 1_700_000_000_123,
        }
    }

    fn round_trip<E: Event + PartialEq + std::fmt::Debug>(event: E) {
        let bytes = encode(&event).unwrap();
        assert_eq!(bytes[0], 0);
        assert_eq!(schema_id(&bytes).unwrap(), E::SCHEMA_ID);
        assert_eq!(decode::<E>(&bytes).unwrap(), event);

        // The datum is plain Avro: a generic reader that knows only the .avsc reads it too.
        let schema = apache_avro::Schema::parse_str(E::schema_text()).unwrap();
        let value = apache_avro::from_avro_datum(&schema, &mut &bytes[HEADER_LEN..], None).unwrap();
        let Value::Record(fields) = value else {
            panic!("not a record")
        };
        let order_id = fields.iter().find(|(n, _)| n == "order_id").unwrap();
        assert_eq!(order_id.1, Value::String(event.order_id().to_string()));
    }

    #[test]
    fn an_account_event_round_trips_keyed_by_customer() {
        let event = crate::AccountVerificationRequested {
            event_id: "c1:verify:1".into(),
            customer_id: "c1".into(),
            email: "ada@example.com".into(),
            name: "Ada".into(),
            expires_at: 2,
            occurred_at: 1,
        };
        let bytes = encode(&event).unwrap();
        assert_eq!(
            schema_id(&bytes).unwrap(),
            crate::AccountVerificationRequested::SCHEMA_ID
        );
        assert_eq!(
            decode::<crate::AccountVerificationRequested>(&bytes).unwrap(),
            event
        );
        assert_eq!(event.key(), "c1");
    }

    #[test]
    fn every_event_round_trips_through_its_schema() {
        let mut a = accepted();
        round_trip(a.clone());
        a.shipping_address.line2 = Some("Flat 2".into());
        round_trip(a);
        round_trip(OrderValidated {
            event_id: "o1:validated".into(),
            order_id: "o1".into(),
            customer_id: "c1".into(),
            lines: lines(),
            currency: "USD".into(),
            subtotal_cents: 2500,
            tax_cents: 200,
            total_cents: 2700,
            payment: PaymentMethod {
                method: "card".into(),
            },
            occurred_at: 1,
            revision: 2,
        });
        round_trip(crate::OrderModified {
            event_id: crate::OrderModified::event_id_for("o1", 1),
            order_id: "o1".into(),
            customer_id: "c1".into(),
            revision: 1,
            items: vec![OrderItem {
                sku: "SKU-1".into(),
                quantity: 3,
            }],
            occurred_at: 2,
        });
        round_trip(OrderRejected {
            event_id: "o1:rejected".into(),
            order_id: "o1".into(),
            customer_id: "c1".into(),
            reason_code: "unknown_sku".into(),
            reason: "no such sku".into(),
            occurred_at: 2,
        });
        round_trip(OrderPaid {
            event_id: "o1:paid".into(),
            order_id: "o1".into(),
            customer_id: "c1".into(),
            payment_id: "pay_1".into(),
            lines: lines(),
            currency: "USD".into(),
            subtotal_cents: 2500,
            tax_cents: 200,
            total_cents: 2700,
            occurred_at: 3,
        });
        round_trip(PaymentFailed {
            event_id: "o1:payment_failed".into(),
            order_id: "o1".into(),
            customer_id: "c1".into(),
            amount_cents: 2700,
            currency: "USD".into(),
            reason: "declined".into(),
            occurred_at: 4,
        });
        round_trip(OrderInvoiced {
            event_id: "o1:invoiced".into(),
            order_id: "o1".into(),
            customer_id: "c1".into(),
            invoice_number: "INV-00000001".into(),
            lines: lines(),
            currency: "USD".into(),
            subtotal_cents: 2500,
            tax_cents: 200,
            total_cents: 2700,
            occurred_at: 5,
        });
    }

    #[test]
    fn bad_payloads_are_named_errors() {
        assert!(matches!(
            decode::<OrderAccepted>(b"{}"),
            Err(DecodeError::TooShort(2))
        ));
        assert!(matches!(
            decode::<OrderAccepted>(b"{\"order_id\": 1}"),
            Err(DecodeError::BadMagic(b'{'))
        ));
        let paid = encode(&OrderRejected {
            event_id: "e".into(),
            order_id: "o".into(),
            customer_id: "c".into(),
            reason_code: "x".into(),
            reason: "y".into(),
            occurred_at: 0,
        })
        .unwrap();
        assert!(matches!(
            decode::<OrderAccepted>(&paid),
            Err(DecodeError::WrongSchema {
                found: 3,
                expected: 1,
                ..
            })
        ));
        let mut truncated = encode(&accepted()).unwrap();
        truncated.truncate(truncated.len() - 10);
        assert!(matches!(
            decode::<OrderAccepted>(&truncated),
            Err(DecodeError::Avro { .. })
        ));
    }

    #[test]
    fn registry_ids_frame_and_older_versions_decode_into_the_current_type() {
        use crate::{registry::SchemaIds, TopicKind};
        // Registry ids 101..106, and a newer OrderRejected (one more field) as id 200.
        let current: Vec<_> = SchemaIds::builtin()
            .current()
            .into_iter()
            .map(|(kind, id)| (kind, id + 100))
            .collect();
        let mut v2: serde_json::Value = serde_json::from_str(OrderRejected::schema_text()).unwrap();
        v2["fields"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"name": "channel", "type": "string", "default": "web"}));
        let v2 = apache_avro::Schema::parse_str(&v2.to_string()).unwrap();
        let ids = SchemaIds::new(current, [(200, TopicKind::OrdersRejected, v2.clone())]).unwrap();

        let rejected = OrderRejected {
            event_id: "o:rejected".into(),
            order_id: "o".into(),
            customer_id: "c".into(),
            reason_code: "unknown_sku".into(),
            reason: "no such sku".into(),
            occurred_at: 7,
        };
        let framed = encode_with(&ids, &rejected).unwrap();
        assert_eq!(schema_id(&framed).unwrap(), 103);
        assert_eq!(
            decode_with::<OrderRejected>(&ids, &framed).unwrap(),
            rejected
        );
        // The built-in ids do not know 103.
        assert!(matches!(
            decode::<OrderRejected>(&framed),
            Err(DecodeError::UnknownSchema { found: 103, .. })
        ));
        assert!(matches!(
            decode_with::<OrderPaid>(&ids, &framed),
            Err(DecodeError::WrongSchema {
                found: 103,
                expected: 104,
                ..
            })
        ));

        // A message written with a newer version (id 200) reads into today's type.
        let mut value = apache_avro::to_value(&rejected).unwrap();
        if let Value::Record(fields) = &mut value {
            fields.push(("channel".into(), Value::String("app".into())));
        }
        let mut newer = vec![MAGIC];
        newer.extend_from_slice(&200u32.to_be_bytes());
        newer.extend(apache_avro::to_avro_datum(&v2, value).unwrap());
        assert_eq!(
            decode_with::<OrderRejected>(&ids, &newer).unwrap(),
            rejected
        );
    }

    #[test]
    fn an_order_validated_written_before_revisions_decodes_as_revision_zero() {
        use crate::{registry::SchemaIds, TopicKind};
        // The schema as it was before order modifications: no `revision` field (and the
        // card token still in `payment`).
        let mut v1: serde_json::Value =
            serde_json::from_str(OrderValidated::schema_text()).unwrap();
        v1["fields"]
            .as_array_mut()
            .unwrap()
            .retain(|f| f["name"] != "revision");
        with_old_field(&mut v1, "token");
        let v1 = apache_avro::Schema::parse_str(&v1.to_string()).unwrap();
        let ids = SchemaIds::new(
            SchemaIds::builtin().current(),
            [(300, TopicKind::OrdersValidated, v1.clone())],
        )
        .unwrap();
        let lines = Value::Array(vec![]);
        let payment = Value::Record(vec![
            ("method".into(), Value::String("card".into())),
            ("token".into(), Value::String("tok".into())),
        ]);
        let old = Value::Record(vec![
            ("event_id".into(), Value::String("o:validated".into())),
            ("order_id".into(), Value::String("o".into())),
            ("customer_id".into(), Value::String("c".into())),
            ("lines".into(), lines),
            ("currency".into(), Value::String("EUR".into())),
            ("subtotal_cents".into(), Value::Long(100)),
            ("tax_cents".into(), Value::Long(20)),
            ("total_cents".into(), Value::Long(120)),
            ("payment".into(), payment),
            ("occurred_at".into(), Value::TimestampMillis(5)),
        ]);
        let mut framed = vec![MAGIC];
        framed.extend_from_slice(&300u32.to_be_bytes());
        framed.extend(apache_avro::to_avro_datum(&v1, old).unwrap());
        let decoded = decode_with::<OrderValidated>(&ids, &framed).unwrap();
        assert_eq!(decoded.revision, 0);
        assert_eq!(decoded.total_cents, 120);
    }

    /// Puts back the string field `name` that earlier versions had: in the `payment` record
    /// (the card token), or at the top level (the verification code).
    fn with_old_field(schema: &mut serde_json::Value, name: &str) {
        let field = serde_json::json!({"name": name, "type": "string"});
        let fields = schema["fields"].as_array_mut().unwrap();
        match fields.iter_mut().find(|f| f["name"] == "payment") {
            Some(payment) => payment["type"]["fields"]
                .as_array_mut()
                .unwrap()
                .push(field),
            None => {
                let at = fields.len() - 2;
                fields.insert(at, field)
            }
        }
    }

    /// Frames `value` as written with `writer` under id 400, which `ids` knows as an older
    /// version of `E`'s schema.
    fn old_message<E: Event>(
        writer: &serde_json::Value,
        value: Value,
    ) -> (crate::registry::SchemaIds, Vec<u8>) {
        use crate::registry::SchemaIds;
        let writer = apache_avro::Schema::parse_str(&writer.to_string()).unwrap();
        let ids = SchemaIds::new(
            SchemaIds::builtin().current(),
            [(400, E::TOPIC, writer.clone())],
        )
        .unwrap();
        let value = value.resolve(&writer).unwrap();
        let mut framed = vec![MAGIC];
        framed.extend_from_slice(&400u32.to_be_bytes());
        framed.extend(apache_avro::to_avro_datum(&writer, value).unwrap());
        (ids, framed)
    }

    #[test]
    fn order_events_written_with_a_card_token_decode_without_it() {
        use crate::registry::Compatibility;
        for text in [OrderAccepted::schema_text(), OrderValidated::schema_text()] {
            let mut old: serde_json::Value = serde_json::from_str(text).unwrap();
            with_old_field(&mut old, "token");
            let old = apache_avro::Schema::parse_str(&old.to_string()).unwrap();
            let new = apache_avro::Schema::parse_str(text).unwrap();
            // The registry's default level (BACKWARD) lets the new schema follow the old one.
            assert!(Compatibility::Backward
                .violations(&new, &[(1, old)])
                .is_empty());
        }

        let mut v1: serde_json::Value = serde_json::from_str(OrderAccepted::schema_text()).unwrap();
        with_old_field(&mut v1, "token");
        let mut value = apache_avro::to_value(accepted()).unwrap();
        let Value::Record(fields) = &mut value else {
            panic!("not a record")
        };
        let payment = fields.iter_mut().find(|(n, _)| n == "payment").unwrap();
        payment.1 = Value::Record(vec![
            ("method".into(), Value::String("card".into())),
            ("token".into(), Value::String("tok_old_secret".into())),
        ]);
        let (ids, framed) = old_message::<OrderAccepted>(&v1, value);
        assert_eq!(
            decode_with::<OrderAccepted>(&ids, &framed).unwrap(),
            accepted()
        );
    }

    #[test]
    fn a_verification_event_written_with_its_code_decodes_without_it() {
        use crate::registry::Compatibility;
        let text = AccountVerificationRequested::schema_text();
        let mut v1: serde_json::Value = serde_json::from_str(text).unwrap();
        with_old_field(&mut v1, "code");
        assert_eq!(v1["fields"][4]["name"], "code");
        let old = apache_avro::Schema::parse_str(&v1.to_string()).unwrap();
        let new = apache_avro::Schema::parse_str(text).unwrap();
        assert!(Compatibility::Backward
            .violations(&new, &[(1, old)])
            .is_empty());

        let value = Value::Record(vec![
            ("event_id".into(), Value::String("c1:verify:1".into())),
            ("customer_id".into(), Value::String("c1".into())),
            ("email".into(), Value::String("ada@example.com".into())),
            ("name".into(), Value::String("Ada".into())),
            ("code".into(), Value::String("123456".into())),
            ("expires_at".into(), Value::TimestampMillis(2)),
            ("occurred_at".into(), Value::TimestampMillis(1)),
        ]);
        let (ids, framed) = old_message::<AccountVerificationRequested>(&v1, value);
        assert_eq!(
            decode_with::<AccountVerificationRequested>(&ids, &framed).unwrap(),
            AccountVerificationRequested {
                event_id: "c1:verify:1".into(),
                customer_id: "c1".into(),
                email: "ada@example.com".into(),
                name: "Ada".into(),
                expires_at: 2,
                occurred_at: 1,
            }
        );
    }

    #[test]
    fn catalogue_ids_are_unique_and_schemas_parse() {
        let rows = catalogue();
        let mut ids: Vec<u32> = rows.iter().map(|r| r.1).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), rows.len());
        for (name, _, _, text) in rows {
            let schema = apache_avro::Schema::parse_str(text).unwrap();
            let apache_avro::Schema::Record(record) = schema else {
                panic!("{name} is not a record")
            };
            assert_eq!(record.name.fullname(None), name);
        }
    }
}
