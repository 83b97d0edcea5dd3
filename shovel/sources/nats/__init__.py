"""The NATS JetStream source: its URL, the Python side of the consumer (the native one,
native/src/nats/, does the work), and its metrics."""
