// Reads one of Orderflow's topics with kafkajs (a pure-JavaScript Kafka client), in a consumer
// group from the start, until the message keyed by the order id it is given.
//
// Usage: node kafkajs_consumer.js '<json>' with bootstrap, topic, key, group, timeout_s.
// Prints one JSON object: topic, partition, offset, key, magic (the value's first byte),
// value_hex. Exits non-zero when the message does not come in time.

const { Kafka, logLevel } = require('kafkajs');

async function main() {
  const args = JSON.parse(process.argv[2]);
  const kafka = new Kafka({
    clientId: 'orderflow-kafkajs-test',
    brokers: [args.bootstrap],
    logLevel: logLevel.WARN,
  });
  const consumer = kafka.consumer({ groupId: args.group });
  await consumer.connect();
  await consumer.subscribe({ topic: args.topic, fromBeginning: true });
  const found = await new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`no message keyed ${args.key} on ${args.topic} in ${args.timeout_s} s`)),
      args.timeout_s * 1000,
    );
    consumer
      .run({
        eachMessage: async ({ topic, partition, message }) => {
          if (message.key && message.key.toString() === args.key) {
            clearTimeout(timer);
            resolve({
              topic,
              partition,
              offset: Number(message.offset),
              key: message.key.toString(),
              magic: message.value[0],
              value_hex: message.value.toString('hex'),
            });
          }
        },
      })
      .catch(reject);
  });
  await consumer.disconnect();
  console.log(JSON.stringify(found));
}

main().catch((e) => {
  console.error(`kafkajs_consumer.js: ${e.stack || e}`);
  process.exit(1);
});
