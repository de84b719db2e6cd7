"""The client side and the reconciliation of scripts/crash-test.sh.

  crash_test.py setup ARGS_JSON      creates the product every order buys (`sku`, `stock` units)
  crash_test.py load ARGS_JSON       posts orders until the stop file appears, then finishes
                                     what it started; one JSON line per order the API accepted
  crash_test.py reconcile ARGS_JSON  waits until the pipeline settles, checks every record of
                                     what happened, prints the figures; its last line is
                                     `kills=K orders=N lost=L duplicates=D`

The load generator is a well-behaved client: every order has its own Idempotency-Key, and a
request that got no answer (connection refused or cut, a timeout) or a 5xx or 409 is sent again
with the same key and body until the API answers 202. An order counts as accepted once the
client saw its 202.

The reconciliation reads the pipeline's records as their consumers would: the API (each order's
status, timeline and invoice number, the stock), every topic from its beginning (decoded with the
schemas in schemas/avro), the SQS queues and SES's sent emails in moto, and the file sink's
notification lines. `lost` counts what is missing: an accepted order without a terminal status,
an invoice, SQS message, email or notification line that is due but absent, a gap in the invoice
numbers, stock given back that was sold. `duplicates` counts what happened twice: an order with
two terminal outcomes or two invoice numbers, an invoice number used twice, stock taken twice,
a message on the FIFO queue delivered twice. An event id that comes again on a topic is the
pipeline's at-least-once transport (every consumer deduplicates it by event id), reported as
`redelivered`; a standard-queue message, email or notification line sent again after a kill is
what those sinks promise (at least once, README "Delivery guarantees", each copy carrying the
event id), reported as `repeated`. With `strict` (crash-test.sh --strict) those repeats count as
duplicates too.
"""

import collections
import io
import json
import os
import random
import sys
import threading
import time
import uuid

import boto3
import fastavro
import requests
from confluent_kafka import Consumer, TopicPartition

TERMINAL = ("invoiced", "payment_failed", "rejected")
# Every topic with its schema in schemas/avro.
TOPICS = {
    "orders.accepted": "order_accepted",
    "orders.validated": "order_validated",
    "orders.rejected": "order_rejected",
    "orders.paid": "order_paid",
    "orders.payment-failed": "payment_failed",
    "orders.invoiced": "order_invoiced",
    "orders.cancelled": "order_cancelled",
    "orders.shipped": "order_shipped",
    "orders.refunded": "payment_refunded",
    "orders.modified": "order_modified",
}
ADDRESS = {"name": "Ada Lovelace", "line1": "1 Main St", "city": "Berlin",
           "postal_code": "10115", "country": "DE"}


def log(message):
    print(f"crash-test: {message}", file=sys.stderr, flush=True)


class Api:
    """The HTTP API as one account, logging in again when its token expires."""

    def __init__(self, url, email, password):
        self.url, self.email, self.password = url, email, password
        self.session = requests.Session()
        self.token = None

    def login(self, deadline):
        while True:
            try:
                r = self.session.post(f"{self.url}/v1/auth/login", timeout=10,
                                      json={"email": self.email, "password": self.password})
                if r.status_code == 200:
                    self.token = r.json()["access_token"]
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"cannot log in at {self.url} as {self.email}")
            time.sleep(0.5)

    def request(self, method, path, deadline, **kwargs):
        """Sends until an answer that is not a 5xx (or a 401, answered by logging in again);
        None when `deadline` passes first."""
        while time.monotonic() < deadline:
            if self.token is None:
                self.login(deadline)
            headers = {"authorization": f"Bearer {self.token}"}
            try:
                r = self.session.request(method, f"{self.url}{path}", headers=headers,
                                         timeout=35, **kwargs)
            except requests.RequestException:
                r = None
            if r is not None and r.status_code == 401:
                self.token = None
                continue
            if r is not None and r.status_code < 500:
                return r
            time.sleep(0.3)
        return None


def setup(args):
    """Creates the product the orders buy, with `stock` units (once: a 409 means it exists)."""
    api = Api(args["url"], args["email"], args["password"])
    deadline = time.monotonic() + 120
    product = {"sku": args["sku"], "name": "Crash test sticker", "price_cents": 100,
               "currency": "EUR", "stock": args["stock"]}
    r = api.request("POST", "/v1/products", deadline, json=product)
    if r is None or r.status_code not in (201, 409):
        raise SystemExit(f"cannot create {args['sku']}: {r and r.status_code} {r and r.text}")


def load(args):
    """Posts orders from `clients` threads at about `rate` a second in all until `stop_file`
    exists, then finishes the orders it started; appends what the API accepted to `out`."""
    stop_file, out = args["stop_file"], args["out"]
    lock = threading.Lock()
    seen = collections.Counter()
    interval = args["clients"] / max(args["rate"], 0.1)

    def client(n):
        api = Api(args["url"], args["email"], args["password"])
        rng = random.Random(n)
        while not os.path.exists(stop_file):
            started = time.monotonic()
            key = str(uuid.uuid4())
            quantity = rng.randint(1, 3)
            token = "tok_decline" if rng.random() < args["decline_share"] else "tok_visa"
            body = {"items": [{"sku": args["sku"], "quantity": quantity}], "shipping_address": ADDRESS,
                    "payment": {"method": "card", "token": token}}
            attempts = 0
            # Once started, an order is sent until the API takes it (or the finish deadline).
            deadline = None
            while True:
                attempts += 1
                status = None
                try:
                    if api.token is None:
                        api.login(time.monotonic() + 120)
                    r = api.session.post(f"{args['url']}/v1/orders", json=body, timeout=35,
                                         headers={"authorization": f"Bearer {api.token}",
                                                  "idempotency-key": key})
                    status = r.status_code
                except requests.RequestException as e:
                    status = type(e).__name__
                with lock:
                    seen[str(status)] += 1
                if status == 202:
                    record = {"key": key, "order_id": r.json()["order_id"],
                              "quantity": quantity, "token": token, "attempts": attempts}
                    with lock, open(out, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    break
                if status == 401:
                    api.token = None
                elif isinstance(status, int) and status < 500 and status != 409:
                    log(f"order refused with {status}: {r.text[:200]}")
                    break
                if os.path.exists(stop_file):
                    deadline = deadline or time.monotonic() + args["finish_s"]
                    if time.monotonic() > deadline:
                        log(f"gave up on Idempotency-Key {key} after {attempts} attempts")
                        with lock:
                            seen["given_up"] += 1
                        break
                time.sleep(0.3)
            time.sleep(max(0.0, interval - (time.monotonic() - started)))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(args["clients"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"answers": dict(seen)}), flush=True)


def read_topic(bootstrap, topic, schema):
    """Every record of `topic` from its beginning to its current end, decoded."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"crash-{uuid.uuid4()}",
                         "enable.auto.commit": False, "broker.address.family": "v4"})
    metadata = consumer.list_topics(topic, timeout=30)
    partitions = sorted(metadata.topics[topic].partitions) if topic in metadata.topics else []
    ends = {}
    for p in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
        if high > low:
            ends[p] = high
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    records, done = [], {p: False for p in ends}
    deadline = time.monotonic() + 120
    while not all(done.values()):
        if time.monotonic() > deadline:
            raise SystemExit(f"{topic}: could not read to its end")
        m = consumer.poll(0.5)
        if m is None or m.error():
            continue
        payload = m.value()
        records.append(fastavro.schemaless_reader(io.BytesIO(payload[5:]), schema))
        if m.offset() + 1 >= ends[m.partition()]:
            done[m.partition()] = True
    consumer.close()
    return records


def lag(bootstrap, prefix):
    """How far each stage's consumer group is behind, per topic it reads."""
    groups = {"validation": "orders.accepted", "payment": "orders.validated",
              "invoicing": "orders.paid"}
    out = {}
    for stage, topic in groups.items():
        topic = f"{prefix}{topic}"
        consumer = Consumer({"bootstrap.servers": bootstrap, "broker.address.family": "v4",
                             "group.id": f"{prefix}orderflow-{stage}",
                             "enable.auto.commit": False})
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=30)
        behind = {}
        for tp in committed:
            _, high = consumer.get_watermark_offsets(tp, timeout=30)
            behind[tp.partition] = high - tp.offset if tp.offset >= 0 else f"none/{high}"
        out[stage] = behind
        consumer.close()
    return out


def sqs_messages(sqs, queue):
    """Every message in `queue`, received once each (kept invisible for the rest of the run)."""
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    messages, empty = [], 0
    while empty < 3:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=3600,
                                  MessageAttributeNames=["All"], AttributeNames=["All"],
                                  WaitTimeSeconds=0)
        batch = got.get("Messages", [])
        empty = 0 if batch else empty + 1
        messages.extend(batch)
    return messages


def repeats(counter):
    return sum(n - 1 for n in counter.values() if n > 1)


def reconcile(args):
    schemas_dir = args["schemas"]
    accepted = [json.loads(line) for line in open(args["orders"]) if line.strip()]
    by_order = {o["order_id"]: o for o in accepted}
    api = Api(args["url"], args["email"], args["password"])
    lost = collections.Counter()
    duplicates = collections.Counter()
    notes = []

    # 1. Every accepted order reaches a terminal status (waiting while the pipeline catches up).
    deadline = time.monotonic() + args["settle_s"]
    api.login(deadline)
    orders, pending = {}, set(by_order)
    while pending and time.monotonic() < deadline:
        for order_id in sorted(pending):
            r = api.request("GET", f"/v1/orders/{order_id}", deadline)
            if r is not None and r.status_code == 200 and r.json()["status"] in TERMINAL:
                orders[order_id] = r.json()
                pending.discard(order_id)
        if pending:
            time.sleep(1)
    stuck = collections.Counter()
    for order_id in sorted(pending):
        lost["no terminal status"] += 1
        r = api.request("GET", f"/v1/orders/{order_id}", time.monotonic() + 10)
        status = r.json()["status"] if r is not None and r.status_code == 200 else r and r.status_code
        stuck[status] += 1
        notes.append(f"order {order_id} ({by_order[order_id]['key']}) is {status}")
    if stuck:
        notes.insert(0, "unsettled orders by status: " + ", ".join(
            f"{k}={v}" for k, v in stuck.items()))
        notes.insert(1, "stage lag (end - committed offset, per topic): " + json.dumps(
            lag(args["bootstrap"], args["topic_prefix"])))
    for order_id, o in orders.items():
        steps = [t["status"] for t in o.get("timeline", []) if t.get("status") in TERMINAL]
        if len(steps) > 1:
            duplicates["terminal status twice in a timeline"] += 1
            notes.append(f"order {order_id}: terminal steps {steps}")
        expected = "payment_failed" if by_order[order_id]["token"] == "tok_decline" else "invoiced"
        if o["status"] != expected:
            notes.append(f"order {order_id} is {o['status']}, expected {expected}")

    # 2. The topics: every event of every order, as their consumers read them.
    events = {}
    redelivered = collections.Counter()
    for topic, name in TOPICS.items():
        schema = fastavro.schema.load_schema(os.path.join(schemas_dir, f"{name}.avsc"))
        records = read_topic(args["bootstrap"], f"{args['topic_prefix']}{topic}", schema)
        ids = collections.Counter(r["event_id"] for r in records)
        redelivered[topic] = repeats(ids)
        events[topic] = records
    invoiced_numbers = {}
    for r in events["orders.invoiced"]:
        invoiced_numbers.setdefault(r["order_id"], set()).add(r["invoice_number"])
    outcomes = collections.defaultdict(set)
    for topic in ("orders.invoiced", "orders.payment-failed", "orders.rejected"):
        for r in events[topic]:
            outcomes[r["order_id"]].add(topic)
    for order_id in by_order:
        if len(outcomes[order_id]) > 1:
            duplicates["two terminal events"] += 1
            notes.append(f"order {order_id}: terminal events on {sorted(outcomes[order_id])}")
        if len(invoiced_numbers.get(order_id, ())) > 1:
            duplicates["two invoice numbers for one order"] += 1
            notes.append(f"order {order_id}: invoices {sorted(invoiced_numbers[order_id])}")
    accepted_on_topic = {r["order_id"] for r in events["orders.accepted"]}
    for order_id in by_order:
        if order_id not in accepted_on_topic:
            lost["accepted order never announced"] += 1
            notes.append(f"order {order_id}: no OrderAccepted on the topic")

    # 3. Invoice numbers: one per invoiced order, unique and gapless (every order the pipeline
    # invoiced, including any a client never heard of).
    number_owner = collections.defaultdict(set)
    for order_id, numbers in invoiced_numbers.items():
        for n in numbers:
            number_owner[n].add(order_id)
    for n, owners in number_owner.items():
        if len(owners) > 1:
            duplicates["invoice number used twice"] += 1
            notes.append(f"{n} names orders {sorted(owners)}")
    for order_id, o in orders.items():
        if o["status"] == "invoiced":
            number = o.get("invoice_number")
            if not number or number not in invoiced_numbers.get(order_id, set()):
                lost["invoice missing"] += 1
                notes.append(f"order {order_id}: invoice {number} not on orders.invoiced")
    numbers = sorted(int(n.split("-")[1]) for n in number_owner)
    gaps = [n for n in range(1, (numbers[-1] if numbers else 0) + 1) if n not in set(numbers)]
    if gaps:
        lost["invoice number gap"] += len(gaps)
        notes.append(f"invoice numbers missing: {gaps[:20]}")

    # 4. Stock: the initial stock less what the orders hold: every validated order reserved its
    # items, a failed payment gave them back; invoiced orders are sold, paid ones about to be.
    sku = args["sku"]
    quantities = {r["order_id"]: sum(i["quantity"] for i in r["items"] if i["sku"] == sku)
                  for r in events["orders.accepted"]}
    released = {r["order_id"] for r in events["orders.payment-failed"]}
    held = {r["order_id"] for r in events["orders.validated"]} - released
    sold = sum(quantities.get(order_id, 0) for order_id in held)
    products = api.request("GET", "/v1/products", time.monotonic() + 60).json()["products"]
    stock = next(p["stock"] for p in products if p["sku"] == sku)
    expected_stock = args["stock"] - sold
    if stock < expected_stock:
        duplicates["stock taken twice (units)"] += expected_stock - stock
    elif stock > expected_stock:
        lost["reserved stock back on the shelf (units)"] += stock - expected_stock
    if stock != expected_stock:
        notes.append(f"stock {stock}, expected {args['stock']} - {sold} = {expected_stock}")

    paid = {r["order_id"] for r in events["orders.paid"]}
    invoiced = set(invoiced_numbers)
    failed = {r["order_id"] for r in events["orders.payment-failed"]}
    validated = {r["order_id"] for r in events["orders.validated"]}
    everything = set(accepted_on_topic) | set(by_order)

    # 5. The sinks: SQS (created orders, standard queue; paid orders, FIFO), SES, the file. The
    # bridge may still be catching up: wait until everything due is there (or the deadline),
    # then look once more for late repeats.
    due_emails = {f"Your order {o} is confirmed": o for o in validated}
    due_emails.update({f"Payment for your order {o} failed": o for o in failed})
    due_emails.update({f"Invoice {min(invoiced_numbers[o])} for your order {o}": o
                       for o in invoiced})
    due_lines = {f"{o}:validated": o for o in validated}
    due_lines.update({f"{o}:invoiced": o for o in invoiced})
    due_lines.update({f"{o}:payment_failed": o for o in failed})
    created, paid_messages = collections.Counter(), collections.Counter()
    sent_at = collections.defaultdict(list)
    subjects, ids = collections.Counter(), collections.Counter()
    if args.get("moto"):
        session = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test",
                                        region_name="us-east-1")
        sqs = session.client("sqs", endpoint_url=args["moto"])

    def collect():
        if args.get("moto"):
            for queue, counter in ((args["queue_created"], created),
                                   (args["queue_paid"], paid_messages)):
                for m in sqs_messages(sqs, queue):
                    order_id = m["MessageAttributes"]["order_id"]["StringValue"]
                    counter[order_id] += 1
                    sent_at[queue, order_id].append(int(m["Attributes"]["SentTimestamp"]))
            data = requests.get(f"{args['moto']}/moto-api/data.json", timeout=60).json()
            subjects.clear()
            subjects.update(e.get("subject") for e in data.get("ses", {}).get("Message", []))
        ids.clear()
        with open(args["notifications"]) as f:
            ids.update(json.loads(line)["id"] for line in f if line.strip())

    def complete():
        return (all(ids[i] for i in due_lines) and (not args.get("moto") or (
            all(created[o] for o in everything) and all(paid_messages[o] for o in paid)
            and all(subjects[s] for s in due_emails))))

    deadline = time.monotonic() + args["settle_s"]
    collect()
    while not complete() and time.monotonic() < deadline:
        time.sleep(1)
        collect()
    time.sleep(2)
    collect()

    repeated = collections.Counter()

    def check(what, delivered, due, queue=None, at_least_once=True):
        """`delivered`: a Counter of deliveries by key; `due`: {key: order id} owed one each.
        A repeat at a sink whose guarantee is at least once (README, "Delivery guarantees")
        counts as a duplicate only with `strict`."""
        for key, n in delivered.items():
            if n > 1:
                if at_least_once and not args.get("strict"):
                    repeated[what] += n - 1
                else:
                    duplicates[f"{what} twice"] += n - 1
                when = ", ".join(time.strftime("%H:%M:%S", time.gmtime(t / 1000)) + f".{t % 1000:03}"
                                 for t in sorted(sent_at.get((queue, key), [])))
                notes.append(f"{what} {key} delivered {n} times" + (f" (sent {when})" if when else ""))
        for key, order_id in due.items():
            if delivered[key] == 0:
                lost[f"{what} missing"] += 1
                notes.append(f"{what} {key} (order {order_id}) missing")

    if args.get("moto"):
        check("SQS created-order message", created, {o: o for o in everything},
              args["queue_created"])
        check("SQS paid-order message", paid_messages, {o: o for o in paid}, args["queue_paid"],
              at_least_once=False)
        check("email", subjects, due_emails)
    check("notification", ids, due_lines)
    email_count = sum(subjects.values())
    lines = list(ids.elements())

    for note in notes[:50]:
        log(note)
    if len(notes) > 50:
        log(f"... and {len(notes) - 50} more")
    settled = collections.Counter(o["status"] for o in orders.values())
    print(f"orders accepted by the API: {len(by_order)} "
          f"(+{len(everything) - len(by_order)} the pipeline has that no client heard of)")
    print("terminal statuses: " + ", ".join(f"{k}={v}" for k, v in sorted(settled.items())))
    print(f"invoices: {len(numbers)} (INV-{numbers[0] if numbers else 0:08} .. "
          f"INV-{numbers[-1] if numbers else 0:08}); stock {stock} = "
          f"{args['stock']} - {sold} reserved or sold: {'yes' if stock == expected_stock else 'NO'}")
    print(f"deliveries: {len(lines)} notification lines, {email_count} emails")
    again = ", ".join(f"{t}={n}" for t, n in redelivered.items() if n) or "none"
    print(f"redelivered on topics (same event id again, deduplicated by consumers): {again}")
    again = ", ".join(f"{what}={n}" for what, n in sorted(repeated.items())) or "none"
    print(f"repeated by at-least-once sinks after a kill (same event id): {again}")
    for what, n in sorted(lost.items()):
        print(f"lost: {what}: {n}")
    for what, n in sorted(duplicates.items()):
        print(f"duplicate: {what}: {n}")
    print(f"kills={args['kills']} orders={len(by_order)} lost={sum(lost.values())} "
          f"duplicates={sum(duplicates.values())}", flush=True)


def main():
    command, args = sys.argv[1], json.loads(sys.argv[2])
    {"setup": setup, "load": load, "reconcile": reconcile}[command](args)


if __name__ == "__main__":
    main()
