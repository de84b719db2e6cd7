"""Reads one of Orderflow's topics with kafka-python (a pure-Python Kafka client, no librdkafka),
in a consumer group from the start, until the message keyed by the order id it is given; decodes
its value as a downstream team would: the Confluent wire format's schema id, the writer's schema
from the registry (`GET /schemas/ids/{id}`), then Avro (fastavro).

Usage: kafka_python_consumer.py '<json>' with bootstrap, registry (URL), topic, key, group,
timeout_s. Prints one JSON object: topic, partition, offset, key, schema_id, record. Exits
non-zero when the message does not come in time.
"""

import datetime
import io
import json
import struct
import sys
import urllib.request

import fastavro
from kafka import KafkaConsumer


def millis(value):
    """A timestamp-millis field (fastavro reads it as a datetime) as its milliseconds."""
    if isinstance(value, datetime.datetime):
        return int(value.timestamp() * 1000)
    raise TypeError(f"{type(value).__name__} is not JSON")


def main() -> None:
    args = json.loads(sys.argv[1])
    consumer = KafkaConsumer(
        args["topic"],
        bootstrap_servers=args["bootstrap"],
        group_id=args["group"],
        auto_offset_reset="earliest",
        enable_auto_commit=True,
        consumer_timeout_ms=int(args["timeout_s"] * 1000),
    )
    try:
        for message in consumer:
            if message.key is None or message.key.decode() != args["key"]:
                continue
            magic, schema_id = struct.unpack(">bI", message.value[:5])
            if magic != 0:
                sys.exit(f"not the Confluent wire format: magic byte {magic}")
            with urllib.request.urlopen(f"{args['registry']}/schemas/ids/{schema_id}") as r:
                schema = fastavro.parse_schema(json.loads(json.load(r)["schema"]))
            record = fastavro.schemaless_reader(io.BytesIO(message.value[5:]), schema)
            consumer.commit()
            print(
                json.dumps(
                    {
                        "topic": message.topic,
                        "partition": message.partition,
                        "offset": message.offset,
                        "key": message.key.decode(),
                        "schema_id": schema_id,
                        "record": record,
                    },
                    default=millis,
                )
            )
            return
    finally:
        consumer.close()
    sys.exit(f"no message keyed {args['key']} on {args['topic']} in {args['timeout_s']} s")


if __name__ == "__main__":
    main()
