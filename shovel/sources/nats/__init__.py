"""The NATS JetStream source: its URL, the ledger of what is stored and acknowledged, and the
consumer itself."""
