//! The stored record of a NATS message: one line of ASCII JSON,
//!
//! ```text
//! {"seq":STREAM_SEQUENCE,"subject":"SUBJECT","id":"NATS-MSG-ID","data":"BASE64"}
//! ```
//!
//! byte for byte what today's Python source stores (`record_of` in nats/source.py:
//! `json.dumps(..., separators=(",", ":"), ensure_ascii=True)` plus a newline), so that an
//! output directory goes on in the same format. Keys in that order; `id` only when the
//! message's `Nats-Msg-Id` header is there and not empty; `data` the payload in standard
//! base64 with padding. No float is written, so no float formatting can differ.
//!
//! The length of a line is known before it is written ([`Record::line_len`]): a batch's records are
//! written into one buffer of exactly their size.

use async_nats::HeaderMap;
use base64::Engine as _;

use super::text::{json_string_len, push_json_string};

/// The header whose value is stored as `id`.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// The `id` of a message with these headers: the last `Nats-Msg-Id` value, as nats-py's dict
/// of headers kept the last one (the name matched case-sensitively, as there). `None` when
/// there is none or it is empty.
///
/// Where the two clients read a header block differently, an id can differ: nats-py stripped
/// ASCII whitespace and decoded bad UTF-8 as U+FFFD; async-nats trims Unicode whitespace and
/// joins folded lines. Ids with a leading or trailing non-ASCII space, or folded over lines,
/// are stored as async-nats reads them.
pub fn msg_id(headers: Option<&HeaderMap>) -> Option<&str> {
    let value = headers?.get_last(MSG_ID_HEADER)?.as_str();
    (!value.is_empty()).then_some(value)
}

/// One message as it is stored.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Its sequence in the stream (the source offset).
    pub seq: u64,
    /// The subject it was published on.
    pub subject: &'a str,
    /// Its `Nats-Msg-Id` (see [`msg_id`]); an empty one is not written.
    pub id: Option<&'a str>,
    /// The payload, any bytes.
    pub data: &'a [u8],
}

impl Record<'_> {
    /// The id, if it is written.
    fn written_id(&self) -> Option<&str> {
        self.id.filter(|id| !id.is_empty())
    }

    /// How many bytes [`Record::push_to`] writes (the newline included).
    pub fn line_len(&self) -> usize {
        let id = self
            .written_id()
            .map_or(0, |id| r#","id":"#.len() + json_string_len(id));
        r#"{"seq":"#.len()
            + decimal_len(self.seq)
            + r#","subject":"#.len()
            + json_string_len(self.subject)
            + id
            + r#","data":""#.len()
            + base64_len(self.data.len())
            + "\"}\n".len()
    }

    /// Appends the line, newline included, to `out`.
    pub fn push_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"seq":"#);
        out.extend_from_slice(self.seq.to_string().as_bytes());
        out.extend_from_slice(br#","subject":"#);
        push_json_string(out, self.subject);
        if let Some(id) = self.written_id() {
            out.extend_from_slice(br#","id":"#);
            push_json_string(out, id);
        }
        out.extend_from_slice(br#","data":""#);
        let start = out.len();
        out.resize(start + base64_len(self.data.len()), 0);
        // The slice is exactly the encoded length, so this cannot fail; were it ever to, the
        // line would hold zero bytes where the payload goes, never a short or long line.
        let _ =
            base64::engine::general_purpose::STANDARD.encode_slice(self.data, &mut out[start..]);
        out.extend_from_slice(b"\"}\n");
    }

    /// The line as a new buffer (for tests and one-off uses; batches use [`Record::push_to`]).
    pub fn to_line(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.line_len());
        self.push_to(&mut out);
        out
    }
}

/// Digits of `n` in decimal.
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// Length of `n` bytes in padded base64.
fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(seq, subject, id, data, the line today's Python stores)`, the expected lines made by
    /// `record_of` (nats/source.py) from a nats-py `Msg` with these fields and
    /// `{"Nats-Msg-Id": id}` as headers (none for `None`).
    type Case = (
        u64,
        &'static str,
        Option<&'static str>,
        &'static [u8],
        &'static str,
    );

    const CASES: &[Case] = &[
        (
            42,
            "ORDERS.eu",
            Some("id-\u{e9}"),
            b"",
            r#"{"seq":42,"subject":"ORDERS.eu","id":"id-\u00e9","data":""}"#,
        ),
        (
            42,
            "ORDERS.eu",
            Some("id-\u{e9}"),
            b"plain",
            r#"{"seq":42,"subject":"ORDERS.eu","id":"id-\u00e9","data":"cGxhaW4="}"#,
        ),
        (
            42,
            "ORDERS.eu",
            Some("id-\u{e9}"),
            b"two\nlines\r\n",
            r#"{"seq":42,"subject":"ORDERS.eu","id":"id-\u00e9","data":"dHdvCmxpbmVzDQo="}"#,
        ),
        (
            7,
            "ORDERS.eu",
            None,
            b"x",
            r#"{"seq":7,"subject":"ORDERS.eu","data":"eA=="}"#,
        ),
        (
            7,
            "ORDERS.eu",
            Some(""),
            b"xy",
            r#"{"seq":7,"subject":"ORDERS.eu","data":"eHk="}"#,
        ),
        (
            0,
            "S",
            Some("a"),
            b"xyz",
            r#"{"seq":0,"subject":"S","id":"a","data":"eHl6"}"#,
        ),
        (
            u64::MAX,
            "S.>",
            Some("id"),
            b"\x00\xff\xfe",
            r#"{"seq":18446744073709551615,"subject":"S.>","id":"id","data":"AP/+"}"#,
        ),
        (
            1,
            "quote\" back\\ slash/ del\u{7f} us\u{1f} nul\u{0} tab\t nl\n cr\r bs\u{8} ff\u{c}",
            Some("e\u{e9} \u{ff} \u{100} \u{2028} \u{d7ff} \u{fffd} \u{1f600} \u{1d11e}"),
            b"\r\n",
            concat!(
                r#"{"seq":1,"subject":"quote\" back\\ slash/ del\u007f us\u001f nul\u0000 "#,
                r#"tab\t nl\n cr\r bs\b ff\f","id":"e\u00e9 \u00ff \u0100 \u2028 \ud7ff "#,
                r#"\ufffd \ud83d\ude00 \ud834\udd1e","data":"DQo="}"#
            ),
        ),
        (
            3,
            "caf\u{e9}.\u{65e5}\u{672c}",
            Some("\u{1}~\u{80}\u{9f}"),
            b"\n\n\n\n\n\n\n",
            r#"{"seq":3,"subject":"caf\u00e9.\u65e5\u672c","id":"\u0001~\u0080\u009f","data":"CgoKCgoKCg=="}"#,
        ),
    ];

    #[test]
    fn lines_are_what_the_python_source_stores() {
        for &(seq, subject, id, data, expected) in CASES {
            let record = Record {
                seq,
                subject,
                id,
                data,
            };
            let line = record.to_line();
            let mut want = expected.as_bytes().to_vec();
            want.push(b'\n');
            assert_eq!(
                String::from_utf8_lossy(&line),
                String::from_utf8_lossy(&want)
            );
            assert_eq!(line, want);
            assert_eq!(record.line_len(), line.len(), "{expected}");
        }
    }

    #[test]
    fn every_byte_value_survives_in_data() {
        let data: Vec<u8> = (0..=255).collect();
        let record = Record {
            seq: 42,
            subject: "ORDERS.eu",
            id: Some("id-\u{e9}"),
            data: &data,
        };
        // The tail of record_of's line for bytes(range(256)), as Python gave it.
        let b64 = concat!(
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0",
            "+P0BBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWltcXV5fYGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6e3",
            "x9fn+AgYKDhIWGh4iJiouMjY6PkJGSk5SVlpeYmZqbnJ2en6ChoqOkpaanqKmqq6ytrq+wsbKztLW2t7i5u",
            "ru8vb6/wMHCw8TFxsfIycrLzM3Oz9DR0tPU1dbX2Nna29zd3t/g4eLj5OXm5+jp6uvs7e7v8PHy8/T19vf4",
            "+fr7/P3+/w=="
        );
        let expected =
            format!(r#"{{"seq":42,"subject":"ORDERS.eu","id":"id-\u00e9","data":"{b64}"}}"#) + "\n";
        assert_eq!(record.to_line(), expected.as_bytes());
        assert_eq!(record.line_len(), expected.len());
    }

    #[test]
    fn lines_of_a_batch_go_into_one_buffer_of_their_size() {
        let records: Vec<Record<'_>> = CASES
            .iter()
            .map(|&(seq, subject, id, data, _)| Record {
                seq,
                subject,
                id,
                data,
            })
            .collect();
        let size: usize = records.iter().map(Record::line_len).sum();
        let mut buf = Vec::with_capacity(size);
        for record in &records {
            record.push_to(&mut buf);
        }
        assert_eq!(buf.len(), size);
        assert_eq!(buf.capacity(), size, "no reallocation");
        assert!(buf.is_ascii());
        assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), records.len());
    }

    #[test]
    fn payload_lengths_pad_as_python_does() {
        for n in 0..64 {
            let data = vec![0xa5u8; n];
            let record = Record {
                seq: 1,
                subject: "s",
                id: None,
                data: &data,
            };
            let line = record.to_line();
            assert_eq!(line.len(), record.line_len(), "{n}");
            let text = String::from_utf8_lossy(&line).into_owned();
            let b64 = text
                .split(r#""data":""#)
                .nth(1)
                .and_then(|t| t.strip_suffix("\"}\n"))
                .expect("data");
            assert_eq!(b64.len() % 4, 0);
            let back = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("base64");
            assert_eq!(back, data);
        }
    }

    #[test]
    fn the_id_is_the_last_nats_msg_id_value_if_not_empty() {
        assert_eq!(msg_id(None), None);
        let mut headers = HeaderMap::new();
        assert_eq!(msg_id(Some(&headers)), None);
        headers.insert("Other", "x");
        assert_eq!(msg_id(Some(&headers)), None);
        headers.insert(MSG_ID_HEADER, "first");
        assert_eq!(msg_id(Some(&headers)), Some("first"));
        headers.append(MSG_ID_HEADER, "second");
        assert_eq!(msg_id(Some(&headers)), Some("second"));
        // Names are matched as written: nats-py's dict did not fold case either.
        let mut other_case = HeaderMap::new();
        other_case.insert("nats-msg-id", "lower");
        assert_eq!(msg_id(Some(&other_case)), None);
        let mut empty = HeaderMap::new();
        empty.insert(MSG_ID_HEADER, "");
        assert_eq!(msg_id(Some(&empty)), None);
    }
}
