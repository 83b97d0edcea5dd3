//! Cutting a byte stream into records: whole lines in batches, oversized lines set apart.
//!
//! A record is one line; its size is its content without the newline. The work per chunk is
//! a constant number of `memchr` passes and no copy of the records: the chunk's own buffer
//! becomes the batch (its window of whole lines), preceded by the partial line carried over
//! from the chunk before. Lines longer than the limit come out as `Rejected` pieces (streamed
//! in parts when they do not fit in memory), after which an empty batch carries the offset past
//! them. Chunks with an oversized line take a slower path that copies; they are rare.

use std::fs::File;
use std::io::{self, Read};

use memchr::{memchr, memchr_iter, memrchr};

use crate::buffers::{self, Part};

/// What a chunk completes, in source order.
#[derive(Debug)]
pub enum Piece {
    /// Whole records (each ending with a newline) and the source offset just past them.
    Batch {
        /// The records' bytes, in order.
        parts: Vec<Part>,
        /// How many records.
        records: u64,
        /// Source offset just past the last record.
        end_offset: u64,
    },
    /// (Part of) a line over the limit, starting at source offset `offset`.
    Rejected {
        /// Where the line starts in the source.
        offset: u64,
        /// These bytes of it.
        data: Vec<u8>,
        /// Whether this is the line's first piece.
        first: bool,
        /// Whether this is the line's last piece.
        last: bool,
    },
}

/// The number of newlines in `data`.
pub fn count_newlines(data: &[u8]) -> u64 {
    memchr_iter(b'\n', data).count() as u64
}

/// `(start, end)` of each line in `data` (which ends with a newline) whose content is longer
/// than `limit`; `end` is just past its newline. A line longer than `limit` covers a whole
/// aligned window of `(limit + 1) / 2` bytes, so only windows without a newline need a closer
/// look: about two searches per `limit` bytes.
pub fn oversized_lines(data: &[u8], limit: u64) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    if data.len() as u64 <= limit.saturating_add(1) {
        return found;
    }
    let half = usize::try_from(limit.saturating_add(1) / 2)
        .unwrap_or(usize::MAX)
        .max(1);
    let mut pos = 0;
    while pos < data.len() {
        let window_end = pos.saturating_add(half).min(data.len());
        if memchr(b'\n', &data[pos..window_end]).is_some() {
            pos = window_end;
            continue;
        }
        let start = memrchr(b'\n', &data[..pos]).map_or(0, |i| i + 1);
        let end = memchr(b'\n', &data[pos..]).map_or(data.len(), |i| pos + i + 1);
        if (end - 1 - start) as u64 > limit {
            found.push((start, end));
        }
        pos = end.div_ceil(half).saturating_mul(half);
    }
    found
}

/// Reads up to `max` bytes from `file` at its position into a pooled buffer. An empty part
/// means the end of the file.
pub fn read_chunk(mut file: &File, max: usize) -> io::Result<Part> {
    let mut buf = buffers::take(max);
    loop {
        match file.read(&mut buf[..max]) {
            Ok(n) => return Ok(Part::window(buf, 0, n)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                buffers::give(buf);
                return Err(e);
            }
        }
    }
}

/// Cuts chunks at newlines, carrying a partial last line over to the next chunk.
#[derive(Debug)]
pub struct Splitter {
    offset: u64,
    limit: u64,
    /// The incomplete last line.
    carry: Vec<u8>,
    /// Source offset where the line being set apart (oversized, or asked for by
    /// [`Splitter::set_aside_line`]) began.
    rejecting: Option<u64>,
    rejected_len: u64,
    /// The line set apart by [`Splitter::set_aside_line`] has had no piece out yet: its first
    /// piece says `first`.
    first_pending: bool,
}

impl Splitter {
    /// A splitter whose first byte is at source offset `start_offset`.
    pub fn new(start_offset: u64, max_record_bytes: u64) -> Splitter {
        Splitter {
            offset: start_offset,
            limit: max_record_bytes,
            carry: Vec::new(),
            rejecting: None,
            rejected_len: 0,
            first_pending: false,
        }
    }

    /// Source offset just past the last byte handed out (in a batch or as rejected).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Counts `n` bytes consumed between two lines without being fed (a newline that ends a
    /// line stored before). False, and nothing moves, in the middle of a line.
    pub fn skip(&mut self, n: u64) -> bool {
        if !self.carry.is_empty() || self.rejecting.is_some() {
            return false;
        }
        self.offset += n;
        true
    }

    /// Sets the next line (from the current offset up to and including its newline) apart as
    /// a rejected line, whatever its length: it is not a record of its own (the end of a line
    /// stored before without it). False, and nothing changes, in the middle of a line.
    pub fn set_aside_line(&mut self) -> bool {
        if !self.carry.is_empty() || self.rejecting.is_some() {
            return false;
        }
        self.rejecting = Some(self.offset);
        self.rejected_len = 0;
        self.first_pending = true;
        true
    }

    /// Bytes of an incomplete record held back.
    pub fn carried(&self) -> usize {
        self.carry.len()
    }

    /// Whether an oversized line is being streamed out (its end not seen yet).
    pub fn rejecting_line(&self) -> bool {
        self.rejecting.is_some()
    }

    /// Adds a chunk; returns the pieces it completes, in source order.
    pub fn feed(&mut self, chunk: Part) -> Vec<Piece> {
        let mut pieces = Vec::new();
        let mut chunk = chunk;
        if let Some(line_start) = self.rejecting {
            let Some(nl) = memchr(b'\n', chunk.as_slice()) else {
                self.rejected_len += chunk.len() as u64;
                pieces.push(Piece::Rejected {
                    offset: line_start,
                    data: chunk.as_slice().to_vec(),
                    first: std::mem::take(&mut self.first_pending),
                    last: false,
                });
                chunk.recycle();
                return pieces;
            };
            pieces.push(Piece::Rejected {
                offset: line_start,
                data: chunk.as_slice()[..=nl].to_vec(),
                first: std::mem::take(&mut self.first_pending),
                last: true,
            });
            self.offset = line_start + self.rejected_len + nl as u64 + 1;
            self.rejecting = None;
            pieces.push(empty_batch(self.offset));
            chunk = chunk.skip(nl + 1);
        }
        match memrchr(b'\n', chunk.as_slice()) {
            None => {
                self.carry.extend_from_slice(chunk.as_slice());
                chunk.recycle();
            }
            Some(last) => {
                let rest = chunk.as_slice()[last + 1..].to_vec();
                let carry = std::mem::replace(&mut self.carry, rest);
                self.cut(carry, chunk.keep(last + 1), &mut pieces);
            }
        }
        if self.carry.len() as u64 > self.limit {
            self.rejecting = Some(self.offset);
            self.rejected_len = self.carry.len() as u64;
            pieces.push(Piece::Rejected {
                offset: self.offset,
                data: std::mem::take(&mut self.carry),
                first: true,
                last: false,
            });
        }
        pieces
    }

    /// The records `carry` + `lines` (which ends with a newline) as pieces.
    fn cut(&mut self, carry: Vec<u8>, lines: Part, pieces: &mut Vec<Piece>) {
        let base = self.offset;
        let len = (carry.len() + lines.len()) as u64;
        let bytes = lines.as_slice();
        // The first line may begin in the carry; every later one lies in `lines`.
        let first_end = memchr(b'\n', bytes).map_or(bytes.len(), |i| i + 1);
        let fits = (carry.len() + first_end - 1) as u64 <= self.limit
            && oversized_lines(&bytes[first_end..], self.limit).is_empty();
        if fits {
            let records = count_newlines(bytes);
            let mut parts = Vec::with_capacity(2);
            if !carry.is_empty() {
                parts.push(Part::whole(carry));
            }
            parts.push(lines);
            pieces.push(Piece::Batch {
                parts,
                records,
                end_offset: base + len,
            });
        } else {
            let mut data = carry;
            data.extend_from_slice(bytes);
            lines.recycle();
            self.cut_oversized(&data, pieces);
        }
        self.offset = base + len;
    }

    /// The slow path of `cut`: `data` holds at least one line over the limit.
    fn cut_oversized(&self, data: &[u8], pieces: &mut Vec<Piece>) {
        let base = self.offset;
        let end_offset = base + data.len() as u64;
        let mut pos = 0;
        for (start, end) in oversized_lines(data, self.limit) {
            if start > pos {
                pieces.push(batch_of(&data[pos..start], base + start as u64));
            }
            pieces.push(Piece::Rejected {
                offset: base + start as u64,
                data: data[start..end].to_vec(),
                first: true,
                last: true,
            });
            pos = end;
        }
        if pos < data.len() {
            pieces.push(batch_of(&data[pos..], end_offset));
        } else {
            pieces.push(empty_batch(end_offset));
        }
    }

    /// At the end of the input: an unterminated last line becomes a record (a newline is
    /// added), or ends the oversized line being streamed.
    pub fn finish(&mut self) -> Vec<Piece> {
        if let Some(line_start) = self.rejecting.take() {
            self.offset = line_start + self.rejected_len;
            return vec![
                Piece::Rejected {
                    offset: line_start,
                    data: Vec::new(),
                    first: std::mem::take(&mut self.first_pending),
                    last: true,
                },
                empty_batch(self.offset),
            ];
        }
        if self.carry.is_empty() {
            return Vec::new();
        }
        self.offset += self.carry.len() as u64;
        let mut data = std::mem::take(&mut self.carry);
        // Within the limit here: a longer carry would have been rejected in feed().
        data.push(b'\n');
        vec![Piece::Batch {
            parts: vec![Part::whole(data)],
            records: 1,
            end_offset: self.offset,
        }]
    }
}

fn empty_batch(end_offset: u64) -> Piece {
    Piece::Batch {
        parts: Vec::new(),
        records: 0,
        end_offset,
    }
}

fn batch_of(lines: &[u8], end_offset: u64) -> Piece {
    Piece::Batch {
        parts: vec![Part::copy_of(lines)],
        records: count_newlines(lines),
        end_offset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stored bytes, records, rejected lines with their offsets, batch end offsets.
    type Outcome = (Vec<u8>, u64, Vec<(u64, Vec<u8>)>, Vec<u64>);

    /// Feeds `data` in chunks of `size` and finishes.
    fn run(data: &[u8], size: usize, limit: u64, start: u64) -> Outcome {
        run_from(Splitter::new(start, limit), data, size)
    }

    /// The same with a splitter set up by the caller.
    fn run_from(mut s: Splitter, data: &[u8], size: usize) -> Outcome {
        let mut pieces = Vec::new();
        for chunk in data.chunks(size.max(1)) {
            pieces.extend(s.feed(Part::copy_of(chunk)));
        }
        pieces.extend(s.finish());
        let (mut stored, mut records, mut rejected, mut ends) = (vec![], 0, vec![], vec![]);
        for p in pieces {
            match p {
                Piece::Batch {
                    parts,
                    records: n,
                    end_offset,
                } => {
                    for part in &parts {
                        stored.extend_from_slice(part.as_slice());
                    }
                    records += n;
                    ends.push(end_offset);
                }
                Piece::Rejected {
                    offset,
                    data,
                    first,
                    ..
                } => {
                    if first {
                        rejected.push((offset, Vec::new()));
                    }
                    if let Some(last) = rejected.last_mut() {
                        last.1.extend_from_slice(&data);
                    }
                }
            }
        }
        (stored, records, rejected, ends)
    }

    #[test]
    fn lines_are_kept_whole_across_chunks() {
        let data = b"alpha\nbeta\ngamma\ndelta";
        for size in 1..data.len() + 2 {
            let (stored, records, rejected, ends) = run(data, size, 100, 7);
            assert_eq!(stored, b"alpha\nbeta\ngamma\ndelta\n", "chunk size {size}");
            assert_eq!(records, 4);
            assert!(rejected.is_empty());
            assert_eq!(ends.last().copied(), Some(7 + data.len() as u64));
            assert!(ends.windows(2).all(|w| w[0] <= w[1]));
        }
    }

    #[test]
    fn long_lines_are_set_apart_at_their_offsets() {
        let data = b"ok\nthis-is-too-long\nfine\nxxxxxxxxxxxxxxxxxxxxxxxx\nend\n";
        for size in 1..data.len() + 2 {
            let (stored, records, rejected, ends) = run(data, size, 5, 0);
            assert_eq!(stored, b"ok\nfine\nend\n", "chunk size {size}");
            assert_eq!(records, 3);
            assert_eq!(
                rejected,
                vec![
                    (3, b"this-is-too-long\n".to_vec()),
                    (25, b"xxxxxxxxxxxxxxxxxxxxxxxx\n".to_vec())
                ]
            );
            assert_eq!(ends.last().copied(), Some(data.len() as u64));
        }
    }

    #[test]
    fn a_line_exactly_at_the_limit_is_a_record() {
        let (stored, records, rejected, _) = run(b"12345\n123456\n", 3, 5, 0);
        assert_eq!(stored, b"12345\n");
        assert_eq!(records, 1);
        assert_eq!(rejected, vec![(6, b"123456\n".to_vec())]);
    }

    #[test]
    fn an_unterminated_long_last_line_is_rejected_whole() {
        let (stored, _, rejected, ends) = run(b"a\nbbbbbbbbbb", 4, 3, 0);
        assert_eq!(stored, b"a\n");
        assert_eq!(rejected, vec![(2, b"bbbbbbbbbb".to_vec())]);
        assert_eq!(ends.last().copied(), Some(12));
    }

    #[test]
    fn a_line_set_aside_is_rejected_whatever_its_length_and_the_rest_stored() {
        let data = b"the end of a line\nnext\nlast\n";
        for size in 1..data.len() + 2 {
            let mut s = Splitter::new(100, 1000);
            assert!(s.set_aside_line());
            let (stored, records, rejected, ends) = run_from(s, data, size);
            assert_eq!(
                rejected,
                vec![(100, b"the end of a line\n".to_vec())],
                "size {size}"
            );
            assert_eq!(stored, b"next\nlast\n", "size {size}");
            assert_eq!(records, 2);
            assert_eq!(ends.last().copied(), Some(100 + data.len() as u64));
        }
    }

    #[test]
    fn a_line_set_aside_without_its_newline_is_rejected_at_the_end() {
        let mut s = Splitter::new(7, 1000);
        assert!(s.set_aside_line());
        let (stored, _, rejected, ends) = run_from(s, b"no newline", 3);
        assert!(stored.is_empty());
        assert_eq!(rejected, vec![(7, b"no newline".to_vec())]);
        assert_eq!(ends.last().copied(), Some(17));
    }

    #[test]
    fn a_line_cannot_be_set_aside_from_its_middle() {
        let mut s = Splitter::new(0, 1000);
        s.feed(Part::copy_of(b"partial"));
        assert!(!s.set_aside_line());
        assert_eq!(s.carried(), 7);
    }

    #[test]
    fn oversized_lines_finds_long_lines_only() {
        let data = b"short\nxxxxxxxxxxxxxxxxxxxxxx\nok\nyyyyyyyyyyyy\n";
        assert_eq!(oversized_lines(data, 10), vec![(6, 29), (32, 45)]);
        assert!(oversized_lines(b"xxxxxxxxxx\n", 10).is_empty());
    }

    #[test]
    fn the_common_case_stores_the_chunk_buffer_itself() {
        let mut s = Splitter::new(0, 1000);
        let pieces = s.feed(Part::copy_of(b"ab"));
        assert!(pieces.is_empty());
        let pieces = s.feed(Part::copy_of(b"c\nde\nf"));
        let [Piece::Batch {
            parts,
            records,
            end_offset,
        }] = &pieces[..]
        else {
            panic!("one batch expected, got {pieces:?}");
        };
        assert_eq!((parts.len(), *records, *end_offset), (2, 2, 7));
        assert_eq!(parts[0].as_slice(), b"ab");
        assert_eq!(parts[1].as_slice(), b"c\nde\n");
        assert_eq!(s.carried(), 1);
    }
}
