"""One member of a Kafka consumer group, as its own process (tests/it/consumer_groups.rs kills it
with SIGKILL, so that it never leaves the group): confluent-kafka's consumer, librdkafka as
Orderflow's stages use it.

Usage: group_member.py '<json>' where the JSON has
  bootstrap: Kafka bootstrap servers
  group:     the consumer group
  topic:     the topic it subscribes to
  kafka:     optional, more consumer properties (session.timeout.ms, ...)

Reads from the earliest offset and commits nothing. Prints one JSON object a line, flushed:
{"assigned": [partitions]} after each assignment (the whole assignment), {"revoked": [...]}, and
{"record": {"partition": p, "offset": o, "value": "..."}} for each record read. Runs until it
is killed or its standard input closes.
"""

import json
import sys
import threading

from confluent_kafka import Consumer


def say(what):
    print(json.dumps(what), flush=True)


def main():
    args = json.loads(sys.argv[1])
    config = {
        "bootstrap.servers": args["bootstrap"],
        "group.id": args["group"],
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    config.update(args.get("kafka", {}))
    consumer = Consumer(config)

    def on_assign(_consumer, partitions):
        say({"assigned": sorted(p.partition for p in partitions)})

    def on_revoke(_consumer, partitions):
        say({"revoked": sorted(p.partition for p in partitions)})

    consumer.subscribe([args["topic"]], on_assign=on_assign, on_revoke=on_revoke)

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    while not stop.is_set():
        message = consumer.poll(0.2)
        if message is None:
            continue
        if message.error():
            say({"error": str(message.error())})
            continue
        say(
            {
                "record": {
                    "partition": message.partition(),
                    "offset": message.offset(),
                    "value": (message.value() or b"").decode(),
                }
            }
        )
    consumer.close()


if __name__ == "__main__":
    main()
