"""Reads Orderflow's topics the way a downstream team would: confluent-kafka's consumer, its
SchemaRegistryClient and AvroDeserializer (fastavro), pointed at a schema registry URL.

Usage: registry_consumer.py '<json>' where the JSON has
  bootstrap: Kafka bootstrap servers
  registry:  the schema registry URL
  wanted:    {topic: order id}: read each topic until the message keyed by that order id
  timeout_s: give up after this many seconds
  kafka:     optional, more consumer properties (security.protocol, ssl.ca.location, ...)
  incompatible: {"subject": ..., "schema": ...}: a schema to check and try to register, first
                without a token, then with `token` (an access token, as a bearer token)
  token:     an admin's access token for the registry's write endpoints

Prints one JSON object: the decoded records, what the registry lists, and what it said about
the incompatible schema. Exits non-zero on any failure.
"""

import datetime
import json
import sys
import time
import uuid

from confluent_kafka import Consumer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext


def plain(value):
    """JSON-friendly: timestamp-millis come back as datetimes; give them as epoch ms."""
    if isinstance(value, datetime.datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def main():
    args = json.loads(sys.argv[1])
    registry = SchemaRegistryClient({"url": args["registry"]})
    deserializer = AvroDeserializer(registry)
    deadline = time.monotonic() + args["timeout_s"]
    records = []
    for topic, order_id in args["wanted"].items():
        consumer = Consumer({
            "bootstrap.servers": args["bootstrap"],
            "group.id": f"registry-consumer-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "broker.address.family": "v4",
            **args.get("kafka", {}),
        })
        consumer.subscribe([topic])
        found = None
        while found is None:
            if time.monotonic() > deadline:
                raise SystemExit(f"{topic}: no message keyed {order_id} within the timeout")
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            if message.key() != order_id.encode():
                continue
            value = message.value()
            record = deserializer(value, SerializationContext(topic, MessageField.VALUE))
            found = {
                "topic": topic,
                "key": order_id,
                "schema_id": int.from_bytes(value[1:5], "big"),
                "record": plain(record),
            }
        consumer.close()
        records.append(found)

    subjects = sorted(registry.get_subjects())
    latest = {}
    for subject in subjects:
        registered = registry.get_latest_version(subject)
        by_version = registry.get_version(subject, registered.version)
        assert by_version.schema_id == registered.schema_id, subject
        latest[subject] = {"id": registered.schema_id, "version": registered.version}

    out = {"records": records, "subjects": subjects, "latest": latest}
    incompatible = args.get("incompatible")
    if incompatible:
        schema = Schema(incompatible["schema"], "AVRO")
        compatible = registry.test_compatibility(incompatible["subject"], schema)
        admin = SchemaRegistryClient({
            "url": args["registry"],
            "bearer.auth.credentials.source": "STATIC_TOKEN",
            "bearer.auth.token": args["token"],
            # Confluent Cloud's routing headers, required by the client; ignored by Orderflow.
            "bearer.auth.logical.cluster": "lsrc-orderflow",
            "bearer.auth.identity.pool.id": "pool-orderflow",
        })
        errors = []
        for client in (registry, admin):
            try:
                client.register_schema(incompatible["subject"], schema)
                errors.append(None)
            except SchemaRegistryError as e:
                errors.append({"status": e.http_status_code, "error_code": e.error_code,
                               "message": e.error_message})
        out["incompatible"] = {"compatible": compatible, "anonymous_error": errors[0],
                               "register_error": errors[1]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
