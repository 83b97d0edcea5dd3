//! Lists of stream sequences as the checkpoint and the stop record write them: ascending
//! runs, `"A-B"` or `"A"`, joined by commas (`"1-3,7,9-10"`). The format of the Python
//! source's `encode_ranges`/`decode_ranges` (nats/ledger.py, gone with step 7 of issue 17),
//! byte for byte, so that directories written by either read the same.

use std::fmt;

use super::text::py_repr;

/// The most sequences a listing may hold; a longer one is not one shovel wrote (as
/// `MAX_LISTED` was in the Python source's nats/ledger.py).
pub const MAX_LISTED: usize = 10_000_000;

/// A listing that is not one shovel wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeError {
    /// The comma-separated part refused, as found.
    pub part: String,
}

impl fmt::Display for RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Python's wording: the part as repr() shows it.
        write!(f, "bad sequence range {}", py_repr(&self.part))
    }
}

impl std::error::Error for RangeError {}

/// Sequences in ascending order (repeats allowed) as `"A-B,C,..."`: consecutive runs
/// joined. A repeated sequence starts a new run, as in the Python code (`[1, 1, 2]` is
/// `"1,1-2"`); the ledger never repeats one.
pub fn encode_sorted(seqs: impl IntoIterator<Item = u64>) -> String {
    let mut out = String::new();
    let mut run: Option<(u64, u64)> = None;
    for seq in seqs {
        run = match run {
            Some((start, prev)) if prev.checked_add(1) == Some(seq) => Some((start, seq)),
            Some(done) => {
                push_run(&mut out, done);
                Some((seq, seq))
            }
            None => Some((seq, seq)),
        };
    }
    if let Some(done) = run {
        push_run(&mut out, done);
    }
    out
}

/// Sequences in any order as `"A-B,C,..."` (sorted first).
pub fn encode(seqs: impl IntoIterator<Item = u64>) -> String {
    let mut sorted: Vec<u64> = seqs.into_iter().collect();
    sorted.sort_unstable();
    encode_sorted(sorted)
}

/// How long [`encode`] of `seqs` is, without writing it: the ledger asks this of every batch
/// (does the listing fit?), and of several candidate listings to find the one that fits.
pub fn encoded_len(seqs: impl IntoIterator<Item = u64>) -> usize {
    let mut sorted: Vec<u64> = seqs.into_iter().collect();
    sorted.sort_unstable();
    let mut len = 0;
    let mut run: Option<(u64, u64)> = None;
    for seq in sorted {
        run = match run {
            Some((start, prev)) if prev.checked_add(1) == Some(seq) => Some((start, seq)),
            Some(done) => {
                len += run_len(done) + 1; // and its comma
                Some((seq, seq))
            }
            None => Some((seq, seq)),
        };
    }
    len + run.map_or(0, run_len)
}

/// How long a run is written (no comma).
fn run_len((start, last): (u64, u64)) -> usize {
    if start == last {
        decimal_len(start)
    } else {
        decimal_len(start) + 1 + decimal_len(last)
    }
}

/// How many decimal digits `n` has.
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

fn push_run(out: &mut String, (start, last): (u64, u64)) {
    if !out.is_empty() {
        out.push(',');
    }
    push_decimal(out, start);
    if start != last {
        out.push('-');
        push_decimal(out, last);
    }
}

/// Writes `n` in decimal: what `write!(out, "{n}")` writes, without the formatting machinery
/// (a listing is written for every batch, and is thousands of numbers long with replicas).
fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[at..].iter().map(|&d| char::from(d)));
}

/// The sequences of an [`encode`] text, in the order written. Refuses a part that is not
/// digits or digits-dash-digits, a run that goes down, and more than [`MAX_LISTED`]
/// sequences in all. Stricter than the Python code in two ways no shovel could meet: digits
/// are ASCII only (Python's `isdigit` took other scripts' digits too), and a sequence must
/// fit in 64 bits (as a stream sequence does).
pub fn decode(text: &str) -> Result<Vec<u64>, RangeError> {
    let mut seqs = Vec::new();
    if text.is_empty() {
        return Ok(seqs);
    }
    for part in text.split(',') {
        let bad = || RangeError {
            part: part.to_string(),
        };
        let (low, high) = match part.split_once('-') {
            Some((low, high)) => (low, Some(high)),
            None => (part, None),
        };
        let first = number(low).ok_or_else(bad)?;
        let last = match high {
            Some(high) => number(high).ok_or_else(bad)?,
            None => first,
        };
        let count = (last.checked_sub(first))
            .and_then(|n| usize::try_from(n).ok())
            .and_then(|n| n.checked_add(1))
            .ok_or_else(bad)?;
        if seqs.len().saturating_add(count) > MAX_LISTED {
            return Err(bad());
        }
        seqs.extend(first..=last);
    }
    Ok(seqs)
}

/// A whole number of ASCII digits (no sign, no space), if it fits in 64 bits.
fn number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected texts are what today's encode_ranges/decode_ranges gave for the same input.

    #[test]
    fn encodes_as_the_python_code() {
        let cases: [(&[u64], &str); 10] = [
            (&[1, 2, 3, 7, 9, 10, 100], "1-3,7,9-10,100"),
            (&[3, 1, 2], "1-3"),
            (&[], ""),
            (&[0], "0"),
            (&[5], "5"),
            (&[1, 1, 2], "1,1-2"),
            (&[2, 2], "2,2"),
            (&[1, 3, 5], "1,3,5"),
            (
                &[18446744073709551614, 18446744073709551615],
                "18446744073709551614-18446744073709551615",
            ),
            (&[10, 9, 8, 1], "1,8-10"),
        ];
        for (seqs, text) in cases {
            assert_eq!(encode(seqs.iter().copied()), text, "{seqs:?}");
            assert_eq!(encoded_len(seqs.iter().copied()), text.len(), "{seqs:?}");
        }
    }

    #[test]
    fn measures_and_writes_numbers_as_formatting_does() {
        // Every number of digits, and each side of each power of ten.
        let mut numbers = vec![0, u64::MAX];
        for power in 1..20 {
            let p = 10u64.pow(power);
            numbers.extend([p - 1, p, p + 1]);
        }
        for n in numbers {
            let mut written = String::new();
            push_decimal(&mut written, n);
            assert_eq!(written, n.to_string());
            assert_eq!(decimal_len(n), written.len(), "{n}");
        }
        // Scattered listings, as three replicas on one consumer make them.
        let seqs: Vec<u64> = (0..5000u64)
            .filter(|s| (s / 256) % 3 == 1 || s % 7 == 0)
            .map(|s| s * 3 + 999_990)
            .collect();
        assert_eq!(encoded_len(seqs.clone()), encode(seqs).len());
    }

    #[test]
    fn decodes_what_it_encodes() {
        let seqs = vec![1, 2, 3, 7, 9, 10, 100];
        assert_eq!(decode("1-3,7,9-10,100"), Ok(seqs.clone()));
        assert_eq!(decode(&encode(seqs.iter().copied())), Ok(seqs));
        assert_eq!(decode(""), Ok(vec![]));
        assert_eq!(decode("007"), Ok(vec![7]));
        assert_eq!(decode("0-9999999").map(|s| s.len()), Ok(MAX_LISTED));
    }

    #[test]
    fn refuses_what_the_python_code_refused_with_its_message() {
        for (text, message) in [
            ("x", "bad sequence range 'x'"),
            ("3-1", "bad sequence range '3-1'"),
            ("1-", "bad sequence range '1-'"),
            ("-1", "bad sequence range '-1'"),
            ("1,,2", "bad sequence range ''"),
            ("1-99999999999", "bad sequence range '1-99999999999'"),
            (",", "bad sequence range ''"),
            ("1,", "bad sequence range ''"),
            ("1-2-3", "bad sequence range '1-2-3'"),
            ("+1", "bad sequence range '+1'"),
            (" 1", "bad sequence range ' 1'"),
            ("1 ", "bad sequence range '1 '"),
            ("it's", "bad sequence range \"it's\""),
            ("0-10000000", "bad sequence range '0-10000000'"),
            // Past what Python refused: beyond 64 bits, and digits of other scripts.
            (
                "18446744073709551616",
                "bad sequence range '18446744073709551616'",
            ),
            ("\u{663}", "bad sequence range '\u{663}'"),
        ] {
            let err = decode(text).expect_err(text);
            assert_eq!(err.to_string(), message, "{text:?}");
        }
    }
}
