//! The checkpoint's source descriptor for a NATS stream: one line of ASCII JSON, byte for byte
//! what `identity.encode(NatsOrigin(...))` writes (shovel/sources/identity.py), which also
//! reads it back (`identity.decode`): the stream and the consumer, when each was created, and
//! the ledger's listing of stored sequences.
//!
//! ```text
//! {"v":1,"kind":"nats","stream":S,"consumer":C,"created":T,"stored":R[,"consumer_created":T][,"acked":R]}
//! ```
//!
//! The optional keys are written only when not empty, as there.

use super::text::push_json_string;

/// The descriptor's version (must match `_VERSION` in shovel/sources/identity.py).
pub const VERSION: u32 = 1;

/// What a checkpoint records of a NATS stream (Python's `NatsOrigin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatsDescriptor<'a> {
    /// The stream's name.
    pub stream: &'a str,
    /// The durable consumer's name.
    pub consumer: &'a str,
    /// When the stream was created ([`super::text::created`]).
    pub created: &'a str,
    /// The stored sequences not confirmed acknowledged ([`super::ranges`] text).
    pub stored: &'a str,
    /// When the consumer was created; empty: not written.
    pub consumer_created: &'a str,
    /// Stored sequences known acknowledged, as room allows; empty: not written.
    pub acked: &'a str,
}

impl NatsDescriptor<'_> {
    /// The one-line text stored in the checkpoint.
    pub fn encode(&self) -> String {
        let mut out = Vec::with_capacity(
            96 + self.stream.len()
                + self.consumer.len()
                + self.created.len()
                + self.stored.len()
                + self.consumer_created.len()
                + self.acked.len(),
        );
        out.extend_from_slice(format!(r#"{{"v":{VERSION},"kind":"nats""#).as_bytes());
        let fields = [
            ("stream", self.stream, true),
            ("consumer", self.consumer, true),
            ("created", self.created, true),
            ("stored", self.stored, true),
            ("consumer_created", self.consumer_created, false),
            ("acked", self.acked, false),
        ];
        for (key, value, always) in fields {
            if always || !value.is_empty() {
                out.push(b',');
                push_json_string(&mut out, key);
                out.push(b':');
                push_json_string(&mut out, value);
            }
        }
        out.push(b'}');
        // ASCII only, so each byte is its own char.
        out.into_iter().map(char::from).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each descriptor beside what `identity.encode` wrote for the same `NatsOrigin`.
    #[test]
    fn encodes_as_identity_encode() {
        let d = |stream, consumer, created, stored, consumer_created, acked| NatsDescriptor {
            stream,
            consumer,
            created,
            stored,
            consumer_created,
            acked,
        };
        for (descriptor, expected) in [
            (
                d(
                    "ORDERS",
                    "shovel",
                    "2026-01-01T00:00:00.000001Z",
                    "1-5,9",
                    "",
                    "",
                ),
                r#"{"v":1,"kind":"nats","stream":"ORDERS","consumer":"shovel","created":"2026-01-01T00:00:00.000001Z","stored":"1-5,9"}"#,
            ),
            (
                d(
                    "ORDERS",
                    "shovel",
                    "2026-01-01T00:00:00.000001Z",
                    "",
                    "",
                    "",
                ),
                r#"{"v":1,"kind":"nats","stream":"ORDERS","consumer":"shovel","created":"2026-01-01T00:00:00.000001Z","stored":""}"#,
            ),
            (
                d(
                    "S",
                    "c",
                    "2026-12-07T07:15:33.123400Z",
                    "1-3,7",
                    "2026-12-07T07:16:00.000000Z",
                    "4-6",
                ),
                r#"{"v":1,"kind":"nats","stream":"S","consumer":"c","created":"2026-12-07T07:15:33.123400Z","stored":"1-3,7","consumer_created":"2026-12-07T07:16:00.000000Z","acked":"4-6"}"#,
            ),
            (
                d("S", "c", "x", "", "", "10"),
                r#"{"v":1,"kind":"nats","stream":"S","consumer":"c","created":"x","stored":"","acked":"10"}"#,
            ),
            // Never written by shovel (names are [A-Za-z0-9_-]), escaped all the same.
            (
                d("S\u{e9}\"", "c\\", "\u{1}", "", "\u{2028}", ""),
                r#"{"v":1,"kind":"nats","stream":"S\u00e9\"","consumer":"c\\","created":"\u0001","stored":"","consumer_created":"\u2028"}"#,
            ),
        ] {
            assert_eq!(descriptor.encode(), expected);
        }
    }
}
