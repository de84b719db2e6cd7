//! The Confluent wire format: byte 0 is the magic byte `0`, bytes 1..5 the schema id (big
//! endian), the rest the Avro binary datum. Standard Avro deserializers (Confluent's, Redpanda's,
//! `fastavro` with a registry) read it given the schema for the id.

use crate::events::Event;

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

/// Frames an event: header + Avro datum.
pub fn encode<E: Event>(event: &E) -> Result<Vec<u8>, EncodeError> {
    let mut buf = Vec::with_capacity(256);
    buf.push(MAGIC);
    buf.extend_from_slice(&E::SCHEMA_ID.to_be_bytes());
    apache_avro::write_avro_datum_ref(E::schema(), event, &mut buf).map_err(|e| EncodeError {
        name: E::NAME,
        message: e.to_string(),
    })?;
    Ok(buf)
}

/// Reads a framed event of type `E`.
pub fn decode<E: Event>(payload: &[u8]) -> Result<E, DecodeError> {
    let found = schema_id(payload)?;
    if found != E::SCHEMA_ID {
        return Err(DecodeError::WrongSchema {
            found,
            expected: E::SCHEMA_ID,
            name: E::NAME,
        });
    }
    let mut datum = &payload[HEADER_LEN..];
    let avro = |e: apache_avro::Error| DecodeError::Avro {
        name: E::NAME,
        message: e.to_string(),
    };
    let value = apache_avro::from_avro_datum(E::schema(), &mut datum, None).map_err(avro)?;
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
                token: "tok_visa".into(),
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
                token: "tok".into(),
            },
            occurred_at: 1,
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
