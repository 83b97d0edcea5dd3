//! What the sink says to JetStream and how it reads the answers: the headers of each message,
//! the publish acknowledgement, which errors can pass and which end the run, the last message
//! on the subject read back, and subject matching.
//!
//! Each record is one message. Records go out in atomic batches (ADR-50, nats-server 2.12+,
//! `allow_atomic` on the stream): every message carries `Nats-Batch-Id` and
//! `Nats-Batch-Sequence` (from 1), the last one `Nats-Batch-Commit: 1`, and the server stores
//! the whole batch or none of it. The first message carries
//! `Nats-Expected-Last-Subject-Sequence`: the stream sequence of the last message on the
//! subject, which the writer knows from the previous commit (or from the read-back at start).
//! The server refuses a batch that does not follow it, so nothing can be stored after a gap,
//! and a second writer on the subject is refused at its next batch.
//!
//! Our own headers: `Shovel-Offset` on every message (the source offset after its record),
//! `Shovel-Source` (the source descriptor) and `Shovel-Writer` (this run's id) on the last
//! message of each batch, and `Nats-Msg-Id` (`<source id>:<offset>`; the duplicate window is
//! not relied upon, see writer.rs). The last message on the subject is thus always the end of
//! a committed batch, and its headers are the resume point: the stream holds the checkpoint.

use async_nats::HeaderMap;
use serde::Deserialize;

use crate::nats::consumer::ApiError;

/// The source offset after a record.
pub const OFFSET: &str = "Shovel-Offset";
/// The source descriptor, on the last message of each batch.
pub const SOURCE: &str = "Shovel-Source";
/// The id of the run that stored the batch, on its last message.
pub const WRITER: &str = "Shovel-Writer";
/// The most messages the server takes in one atomic batch.
pub const MAX_BATCH: usize = 1000;

/// The headers of message `index` (from 0) of a batch of `count`.
#[allow(clippy::too_many_arguments)]
pub fn headers(
    batch_id: Option<&str>,
    index: usize,
    count: usize,
    expected_last: u64,
    offset: u64,
    msg_id: &str,
    source: &str,
    writer: &str,
) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(id) = batch_id {
        h.insert("Nats-Batch-Id", id);
        h.insert("Nats-Batch-Sequence", (index + 1).to_string().as_str());
        if index + 1 == count {
            h.insert("Nats-Batch-Commit", "1");
        }
    }
    if index == 0 {
        h.insert(
            "Nats-Expected-Last-Subject-Sequence",
            expected_last.to_string().as_str(),
        );
    }
    h.insert("Nats-Msg-Id", msg_id);
    h.insert(OFFSET, offset.to_string().as_str());
    if index + 1 == count {
        h.insert(SOURCE, source);
        h.insert(WRITER, writer);
    }
    h
}

/// A publish acknowledgement (a batch's: `batch` and `count` set).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct PubAck {
    /// The stream that stored it.
    pub stream: String,
    /// The stream sequence of the (last) message stored.
    pub seq: u64,
    /// The batch's id.
    #[serde(default)]
    pub batch: Option<String>,
    /// How many messages the batch stored.
    #[serde(default)]
    pub count: Option<u64>,
    /// Whether the server had it already (by `Nats-Msg-Id`).
    #[serde(default)]
    pub duplicate: bool,
}

/// What to do after a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Stored, up to this stream sequence.
    Stored(u64),
    /// Not stored, and nothing was (the reason): send again after a pause.
    Retry(String),
    /// Maybe stored (the reason): read the subject back to know.
    Unsure(String),
    /// The server had these message ids already (the reason): stored by this run before, or
    /// (if the subject does not show them) before the subject was emptied, within the
    /// stream's duplicate window.
    Duplicate(String),
    /// Ends the run (the reason, for the user).
    Fatal(String),
}

/// The answer to a commit (or to a single publish), for a batch of `count` with `batch_id`.
pub fn verdict(payload: &[u8], stream: &str, batch_id: Option<&str>, count: usize) -> Verdict {
    #[derive(Deserialize)]
    struct ErrorPart {
        #[serde(default)]
        error: Option<ApiError>,
    }
    match serde_json::from_slice::<ErrorPart>(payload) {
        Ok(ErrorPart { error: Some(e) }) => return api_error(&e, stream),
        Ok(_) => {}
        Err(e) => return Verdict::Unsure(format!("an answer that cannot be read ({e})")),
    }
    match serde_json::from_slice::<PubAck>(payload) {
        Ok(ack) if ack.stream != stream => Verdict::Fatal(format!(
            "the subject is stored by stream {:?}, not {stream:?}",
            ack.stream
        )),
        Ok(ack) if ack.duplicate => Verdict::Duplicate(format!(
            "the stream had this message id already (stream sequence {})",
            ack.seq
        )),
        Ok(ack) => match batch_id {
            Some(id) if ack.batch.as_deref() != Some(id) || ack.count != Some(count as u64) => {
                Verdict::Unsure(format!(
                    "the acknowledgement names batch {:?} of {:?} messages, not {id:?} of {count}",
                    ack.batch, ack.count
                ))
            }
            _ => Verdict::Stored(ack.seq),
        },
        Err(e) => Verdict::Unsure(format!("an acknowledgement that cannot be read ({e})")),
    }
}

/// What a JetStream error means for the writer.
pub fn api_error(e: &ApiError, stream: &str) -> Verdict {
    let said = format!("{} (error {})", e.description, e.err_code);
    match e.err_code {
        // Wrong last sequence: someone else wrote, or our last commit went through unseen.
        10071 => Verdict::Unsure(said),
        10059 => Verdict::Fatal(format!("stream {stream} does not exist: {said}")),
        10174 => Verdict::Fatal(format!(
            "stream {stream} does not allow atomic batches (allow_atomic): {said}"
        )),
        10198 => Verdict::Fatal(format!("stream {stream} is a mirror: {said}")),
        10109 => Verdict::Fatal(format!("stream {stream} is sealed: {said}")),
        10054 | 10097 => {
            Verdict::Fatal(format!("a record is too large for stream {stream}: {said}"))
        }
        10177 | 10179 | 10199 | 10200 => {
            Verdict::Fatal(format!("the server refused the batch: {said}"))
        }
        // Duplicates by Nats-Msg-Id: maybe our own batch, stored before.
        10201 => Verdict::Duplicate(said),
        // The same ids being stored right now (a clustered stream): maybe ours, resent.
        10158 => Verdict::Unsure(said),
        // Too many requests: later.
        10167 => Verdict::Retry(said),
        // A cluster electing, a batch the server dropped, too many batches in flight, storage
        // that failed for now, the expected sequence not ready: all can pass.
        _ if e.code >= 500 => Verdict::Retry(said),
        10006..=10009 | 10023 | 10077 | 10122 | 10163 | 10164 | 10175 | 10176 | 10193 | 10210 => {
            Verdict::Retry(said)
        }
        _ => Verdict::Fatal(format!("the server refused the publish: {said}")),
    }
}

/// The last message stored on the subject, as read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Last {
    /// Its stream sequence.
    pub seq: u64,
    /// `Shovel-Offset`, if present and a number.
    pub offset: Option<u64>,
    /// `Shovel-Source`, if present.
    pub source: Option<String>,
    /// `Shovel-Writer`, if present.
    pub writer: Option<String>,
}

/// The answer to `STREAM.MSG.GET` (its `message`).
#[derive(Debug, Deserialize)]
pub struct GotMessage {
    /// The stored message.
    pub message: StoredMessage,
}

/// A stored message as `STREAM.MSG.GET` returns it.
#[derive(Debug, Deserialize)]
pub struct StoredMessage {
    /// Its stream sequence.
    pub seq: u64,
    /// Its header block, base64 (absent without headers).
    #[serde(default)]
    pub hdrs: Option<String>,
}

impl StoredMessage {
    /// What the sink needs of it.
    pub fn last(&self) -> Result<Last, String> {
        use base64::Engine as _;
        let mut last = Last {
            seq: self.seq,
            ..Last::default()
        };
        let Some(encoded) = &self.hdrs else {
            return Ok(last);
        };
        let block = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| format!("its headers cannot be decoded: {e}"))?;
        let text = String::from_utf8_lossy(&block);
        for line in text.split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case(OFFSET) {
                last.offset = value.parse().ok();
            } else if name.eq_ignore_ascii_case(SOURCE) {
                last.source = Some(value.to_string());
            } else if name.eq_ignore_ascii_case(WRITER) {
                last.writer = Some(value.to_string());
            }
        }
        Ok(last)
    }
}

/// Whether `subject` (no wildcards) is matched by the stream subject `filter`.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A short, stable id of a source descriptor on a subject (the first 16 hex digits of their
/// FNV-1a hash), for `Nats-Msg-Id`: the server takes ids as the stream's, so the subject is
/// in it.
pub fn source_id(subject: &str, descriptor: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in subject.bytes().chain([b'\n']).chain(descriptor.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn batch_headers_mark_first_and_last() {
        let first = headers(Some("b1"), 0, 3, 41, 10, "id:10", "{}", "w");
        assert_eq!(
            first
                .get("Nats-Expected-Last-Subject-Sequence")
                .map(|v| v.as_str()),
            Some("41")
        );
        assert_eq!(
            first.get("Nats-Batch-Sequence").map(|v| v.as_str()),
            Some("1")
        );
        assert!(first.get("Nats-Batch-Commit").is_none());
        assert!(first.get(SOURCE).is_none());
        let last = headers(Some("b1"), 2, 3, 41, 12, "id:12", "{}", "w");
        assert!(last.get("Nats-Expected-Last-Subject-Sequence").is_none());
        assert_eq!(last.get("Nats-Batch-Commit").map(|v| v.as_str()), Some("1"));
        assert_eq!(last.get(OFFSET).map(|v| v.as_str()), Some("12"));
        assert_eq!(last.get(WRITER).map(|v| v.as_str()), Some("w"));
        let single = headers(None, 0, 1, 0, 5, "id:5", "{}", "w");
        assert!(single.get("Nats-Batch-Id").is_none());
        assert_eq!(
            single
                .get("Nats-Expected-Last-Subject-Sequence")
                .map(|v| v.as_str()),
            Some("0")
        );
        assert_eq!(single.get(SOURCE).map(|v| v.as_str()), Some("{}"));
    }

    #[test]
    fn verdicts() {
        let ok = br#"{"stream":"S","seq":9,"batch":"b","count":3}"#;
        assert_eq!(verdict(ok, "S", Some("b"), 3), Verdict::Stored(9));
        assert!(matches!(verdict(ok, "S", Some("b"), 4), Verdict::Unsure(_)));
        assert!(matches!(verdict(ok, "T", Some("b"), 3), Verdict::Fatal(_)));
        let single = br#"{"stream":"S","seq":4}"#;
        assert_eq!(verdict(single, "S", None, 1), Verdict::Stored(4));
        let wrong =
            br#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 7"}}"#;
        assert!(matches!(verdict(wrong, "S", None, 1), Verdict::Unsure(_)));
        let gone = br#"{"error":{"code":404,"err_code":10059,"description":"stream not found"}}"#;
        assert!(
            matches!(verdict(gone, "S", None, 1), Verdict::Fatal(m) if m.contains("does not exist"))
        );
        let busy = br#"{"error":{"code":503,"err_code":10008,"description":"JetStream cluster not available"}}"#;
        assert!(matches!(verdict(busy, "S", None, 1), Verdict::Retry(_)));
        let many = br#"{"error":{"code":400,"err_code":10210,"description":"too many inflight"}}"#;
        assert!(matches!(verdict(many, "S", None, 1), Verdict::Retry(_)));
        assert!(matches!(verdict(b"nope", "S", None, 1), Verdict::Unsure(_)));
        let dup = br#"{"stream":"S","seq":4,"duplicate":true}"#;
        assert!(matches!(verdict(dup, "S", None, 1), Verdict::Duplicate(_)));
        let again = br#"{"error":{"code":400,"err_code":10201,"description":"duplicate"}}"#;
        assert!(matches!(
            verdict(again, "S", Some("b"), 3),
            Verdict::Duplicate(_)
        ));
        let busy = br#"{"error":{"code":409,"err_code":10158,"description":"in process"}}"#;
        assert!(matches!(verdict(busy, "S", None, 1), Verdict::Unsure(_)));
    }

    #[test]
    fn reads_the_last_message_headers() {
        let block = "NATS/1.0\r\nNats-Msg-Id: a:3\r\nShovel-Offset: 3\r\nShovel-Source: {\"k\":1}\r\nShovel-Writer: w1\r\n\r\n";
        let m = StoredMessage {
            seq: 12,
            hdrs: Some(base64::engine::general_purpose::STANDARD.encode(block)),
        };
        let last = m.last().expect("read");
        assert_eq!(
            last,
            Last {
                seq: 12,
                offset: Some(3),
                source: Some("{\"k\":1}".into()),
                writer: Some("w1".into()),
            }
        );
        let bare = StoredMessage { seq: 2, hdrs: None }.last().expect("read");
        assert_eq!(bare.offset, None);
    }

    #[test]
    fn subjects() {
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(subject_matches("a.*.c", "a.b.c"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.c"));
    }

    #[test]
    fn source_ids_are_stable_and_short() {
        assert_eq!(source_id("s", "x"), source_id("s", "x"));
        assert_ne!(source_id("s", "x"), source_id("s", "y"));
        assert_ne!(source_id("s", "x"), source_id("t", "x"));
        assert_eq!(source_id("", "").len(), 16);
    }
}
