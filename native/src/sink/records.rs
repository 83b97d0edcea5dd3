//! A batch handed to the sink, cut into the messages it publishes: one per record, its payload
//! the record without its newline (the newline is the framing of stored records, not data),
//! with the source offset after it.
//!
//! What an offset is depends on the source ([`OffsetUnit`]): a position in the bytes read (a
//! file, a followed file, stdin), a record number (the generator), or a point that only batch
//! ends carry (a NATS stream's sequences, which have gaps). A message's offset is where a
//! restart resumes once that message is the last one the stream holds on the subject, so it
//! must be exact for every message that can end an atomic batch; with the batch unit only the
//! last record of a handed batch can, and the writer cuts there (see writer.rs).

use std::sync::Arc;

use bytes::Bytes;

/// What a source's offsets count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetUnit {
    /// Bytes of the input: a record ends its length after the one before.
    Bytes,
    /// Records: each record is one more.
    Records,
    /// Only a batch's end offset is known: every record of a batch carries it, and an atomic
    /// batch ends only where a handed batch ends.
    Batch,
}

impl OffsetUnit {
    /// The unit named `name` ("bytes", "records", "batch").
    pub fn parse(name: &str) -> Result<OffsetUnit, String> {
        match name {
            "bytes" => Ok(OffsetUnit::Bytes),
            "records" => Ok(OffsetUnit::Records),
            "batch" => Ok(OffsetUnit::Batch),
            other => Err(format!(
                "unknown offset unit {other:?} (bytes, records or batch)"
            )),
        }
    }
}

/// One record to publish.
#[derive(Debug, Clone)]
pub struct Message {
    /// The record without its newline.
    pub payload: Bytes,
    /// The source offset after this record.
    pub offset: u64,
    /// The source descriptor in effect for this record (kept with the batch that ends here).
    pub source: Arc<str>,
    /// The handed batch it came in (numbered from 1).
    pub submission: u64,
    /// Whether it is the last record of that batch.
    pub ends_submission: bool,
    /// Its place in that batch (from 0).
    pub index: u32,
}

impl Message {
    /// The bytes this record counts for (its newline included), as the local store counts.
    pub fn stored_len(&self) -> usize {
        self.payload.len() + 1
    }
}

/// Cuts `parts` (the batch's bytes in order; a line may be cut across two) into `records` messages ending at
/// `end_offset`. Refuses data that is not `records` whole lines, or offsets that would go below
/// zero: a bug in the caller, said before anything is published.
pub fn cut(
    parts: Vec<Bytes>,
    records: u64,
    end_offset: u64,
    unit: OffsetUnit,
    source: &Arc<str>,
    submission: u64,
) -> Result<Vec<Message>, String> {
    let mut messages = Vec::with_capacity(usize::try_from(records).unwrap_or(0));
    // A line cut across two parts (a read chunk's end) is joined: the one copy here.
    let mut carry: Vec<u8> = Vec::new();
    let push = |payload: Bytes, messages: &mut Vec<Message>| {
        messages.push(Message {
            payload,
            offset: 0,
            source: source.clone(),
            submission,
            ends_submission: false,
            index: u32::try_from(messages.len()).unwrap_or(u32::MAX),
        });
    };
    for part in parts {
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', &part) {
            let payload = if carry.is_empty() {
                part.slice(start..end)
            } else {
                carry.extend_from_slice(&part[start..end]);
                Bytes::from(std::mem::take(&mut carry))
            };
            push(payload, &mut messages);
            start = end + 1;
        }
        carry.extend_from_slice(&part[start..]);
    }
    if !carry.is_empty() {
        return Err("a batch handed to the sink does not end with a newline".into());
    }
    if messages.len() as u64 != records {
        return Err(format!(
            "a batch handed to the sink holds {} lines, not the {records} records it claims",
            messages.len()
        ));
    }
    let mut after = end_offset;
    for (i, message) in messages.iter_mut().enumerate().rev() {
        message.offset = after;
        let step = match unit {
            OffsetUnit::Bytes => message.stored_len() as u64,
            OffsetUnit::Records => 1,
            OffsetUnit::Batch => 0,
        };
        if i > 0 {
            after = after.checked_sub(step).ok_or_else(|| {
                format!(
                    "a batch handed to the sink ends at offset {end_offset}, before its records"
                )
            })?;
        }
    }
    if let Some(last) = messages.last_mut() {
        last.ends_submission = true;
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Arc<str> {
        Arc::from("{\"kind\":\"t\"}")
    }

    fn offsets(m: &[Message]) -> Vec<u64> {
        m.iter().map(|m| m.offset).collect()
    }

    #[test]
    fn bytes_count_each_record_and_its_newline() {
        let parts = vec![
            Bytes::from_static(b"ab\nc\n"),
            Bytes::from_static(b"\ndef\n"),
        ];
        let m = cut(parts, 4, 110, OffsetUnit::Bytes, &source(), 7).expect("cut");
        let payloads: Vec<&[u8]> = m.iter().map(|m| m.payload.as_ref()).collect();
        assert_eq!(payloads, vec![&b"ab"[..], b"c", b"", b"def"]);
        assert_eq!(
            offsets(&m),
            [100, 102, 103, 107]
                .iter()
                .map(|o| o + 3)
                .collect::<Vec<_>>()
        );
        assert_eq!(m.iter().filter(|m| m.ends_submission).count(), 1);
        assert!(m[3].ends_submission);
        assert!(m.iter().all(|m| m.submission == 7));
    }

    #[test]
    fn records_count_one_each_and_batches_only_their_end() {
        let parts = vec![Bytes::from_static(b"a\nb\nc\n")];
        let m = cut(parts.clone(), 3, 10, OffsetUnit::Records, &source(), 1).expect("cut");
        assert_eq!(offsets(&m), vec![8, 9, 10]);
        let m = cut(parts, 3, 10, OffsetUnit::Batch, &source(), 1).expect("cut");
        assert_eq!(offsets(&m), vec![10, 10, 10]);
    }

    #[test]
    fn joins_a_line_cut_across_parts() {
        let parts = vec![
            Bytes::from_static(b"ab\ncd"),
            Bytes::from_static(b"ef"),
            Bytes::from_static(b"g\nh\n"),
        ];
        let m = cut(parts, 3, 11, OffsetUnit::Bytes, &source(), 1).expect("cut");
        let payloads: Vec<&[u8]> = m.iter().map(|m| m.payload.as_ref()).collect();
        assert_eq!(payloads, vec![&b"ab"[..], b"cdefg", b"h"]);
        assert_eq!(offsets(&m), vec![3, 9, 11]);
    }

    #[test]
    fn refuses_what_is_not_whole_lines() {
        let err = cut(
            vec![Bytes::from_static(b"a\nb")],
            2,
            3,
            OffsetUnit::Bytes,
            &source(),
            1,
        )
        .expect_err("torn");
        assert!(err.contains("newline"), "{err}");
        let err = cut(
            vec![Bytes::from_static(b"a\nb\n")],
            3,
            4,
            OffsetUnit::Bytes,
            &source(),
            1,
        )
        .expect_err("count");
        assert!(err.contains("2 lines"), "{err}");
        let err = cut(
            vec![Bytes::from_static(b"a\nb\n")],
            2,
            1,
            OffsetUnit::Bytes,
            &source(),
            1,
        )
        .expect_err("offset");
        assert!(err.contains("before its records"), "{err}");
    }
}
