//! Text the NATS source writes or reads exactly as today's Python code did: JSON strings
//! escaped as `json.dumps(..., ensure_ascii=True)` escapes them, `%g`, `repr()` of a string,
//! the creation times the checkpoint keeps, the metadata in a delivery's reply subject, and
//! whether two subject patterns overlap.
//!
//! Each function names the Python it stands for; the tests hold that Python's outputs.

use std::fmt::Write as _;

use time::{OffsetDateTime, UtcOffset};

/// Lowercase hex digits, as CPython's JSON encoder writes `\uXXXX`.
const HEX: &[u8; 16] = b"0123456789abcdef";

/// How many bytes [`push_json_string`] writes for `s` (quotes included).
pub fn json_string_len(s: &str) -> usize {
    2 + s
        .chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            ' '..='~' => 1,
            c if c.len_utf16() == 2 => 12,
            _ => 6,
        })
        .sum::<usize>()
}

/// Appends `s` as a JSON string, ASCII only, byte for byte as CPython's
/// `json.dumps(s, ensure_ascii=True)`: `"` and `\` escaped, `\n \r \t \b \f` in their short
/// forms, everything else outside space..`~` (other controls, DEL, non-ASCII) as `\u` and
/// four lowercase hex digits, a character beyond the BMP as its UTF-16 surrogate pair.
pub fn push_json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            // The range ends before DEL (0x7f), which CPython escapes.
            ' '..='~' => out.push(c as u8),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.extend_from_slice(b"\\u");
                    for shift in [12, 8, 4, 0] {
                        out.push(HEX[usize::from((*unit >> shift) & 0xf)]);
                    }
                }
            }
        }
    }
    out.push(b'"');
}

/// `s` as a JSON string (see [`push_json_string`]).
pub fn json_string(s: &str) -> String {
    let mut out = Vec::with_capacity(json_string_len(s));
    push_json_string(&mut out, s);
    // ASCII only, so each byte is its own char.
    out.into_iter().map(char::from).collect()
}

/// Python's `repr()` of a string, for messages that quote what they refuse: single quotes
/// unless the text holds one and no double quote; `\\`, `\n`, `\r`, `\t` and the quote
/// escaped, other ASCII controls and DEL as `\xNN`. Non-ASCII characters are kept, but
/// control ones (C1) as `\xNN`, other unprintable ones as `\uNNNN` or `\UNNNNNNNN`, which
/// covers Python's rule (`str.isprintable`) for the controls, not for every unassigned or
/// separator code point: a message, not a format.
pub fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() && u32::from(c) <= 0xff => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => {
                if u32::from(c) <= 0xffff {
                    let _ = write!(out, "\\u{:04x}", u32::from(c));
                } else {
                    let _ = write!(out, "\\U{:08x}", u32::from(c));
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `"%g" % x` (and `f"{x:g}"`): six significant digits, trailing zeros dropped,
/// scientific notation (`1e+06`, `1.5e-05`) when the exponent is below -4 or at least 6.
pub fn format_g(x: f64) -> String {
    const PRECISION: i32 = 6;
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    // Rounded to the significant digits first: the exponent is that of the rounded value
    // (999999.5 is 1e+06), as in Python. Rust and Python both round the exact binary value.
    let sci = format!("{:.*e}", (PRECISION - 1) as usize, x);
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if (-4..PRECISION).contains(&exponent) {
        let decimals = (PRECISION - 1 - exponent) as usize;
        strip_zeros(&format!("{x:.decimals$}")).to_string()
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!(
            "{}e{sign}{:02}",
            strip_zeros(mantissa),
            exponent.unsigned_abs()
        )
    }
}

/// `text` without the trailing zeros of its fraction (and without a bare point).
fn strip_zeros(text: &str) -> &str {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        text
    }
}

/// A stream's or consumer's creation time as the checkpoint keeps it: UTC, to the
/// microsecond, `2026-12-07T07:15:33.123400Z`. Today's Python code printed nats-py's
/// datetime (which keeps the first six digits of the server's fraction, truncated, and pads
/// them) with `%Y-%m-%dT%H:%M:%S.%fZ`: the same digits.
pub fn created(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond() / 1000
    )
}

/// What a JetStream delivery's reply subject says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The message's sequence in the stream.
    pub stream_seq: u64,
    /// How many times the consumer has delivered it (1: the first time).
    pub delivered: u64,
}

/// Reads a delivery's reply subject, as nats-py's `Msg.metadata` did:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>` (9
/// tokens) or, from servers that add domain and account, `$JS.ACK.<domain>.<account hash>.`
/// followed by those seven (11 tokens, or more). `None` for anything else, including a
/// number field that is not a number (nats-py raised ValueError there).
pub fn parse_reply(reply: &str) -> Option<Delivery> {
    let tokens: Vec<&str> = reply.split('.').collect();
    if tokens.len() < 2 || tokens[0] != "$JS" || tokens[1] != "ACK" {
        return None;
    }
    // Where <delivered> is; the four numbers after it follow.
    let at = match tokens.len() {
        9 => 4,
        n if n >= 11 => 6,
        _ => return None,
    };
    let number = |i: usize| -> Option<u64> {
        let t = tokens.get(i)?;
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let delivered = number(at)?;
    let stream_seq = number(at + 1)?;
    // Read (not kept) as nats-py read them: one that is not a number is no delivery.
    number(at + 2)?;
    number(at + 3)?;
    number(at + 4)?;
    Some(Delivery {
        stream_seq,
        delivered,
    })
}

/// Whether some subject matches both patterns (`*` one token, `>` one or more at the end).
pub fn subjects_overlap(a: &str, b: &str) -> bool {
    let (ta, tb): (Vec<&str>, Vec<&str>) = (a.split('.').collect(), b.split('.').collect());
    for (x, y) in ta.iter().zip(&tb) {
        if *x == ">" || *y == ">" {
            return true;
        }
        if x != y && *x != "*" && *y != "*" {
            return false;
        }
    }
    ta.len() == tb.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::format_description::well_known::Rfc3339;

    // Expected values in these tests are what today's Python code gave for the same input
    // (CPython 3.11, nats-py 2.16, shovel/sources/nats/source.py): see the commit message.

    #[test]
    fn json_strings_are_escaped_as_cpython_ensure_ascii() {
        for (text, expected) in [
            ("ORDERS.eu", r#""ORDERS.eu""#),
            ("", r#""""#),
            ("id-\u{e9}", r#""id-\u00e9""#),
            ("quote\" back\\ slash/", r#""quote\" back\\ slash/""#),
            (
                "del\u{7f} us\u{1f} nul\u{0}",
                r#""del\u007f us\u001f nul\u0000""#,
            ),
            (
                "tab\t nl\n cr\r bs\u{8} ff\u{c} vt\u{b}",
                r#""tab\t nl\n cr\r bs\b ff\f vt\u000b""#,
            ),
            (
                "\u{ff} \u{100} \u{2028} \u{d7ff} \u{fffd} \u{65e5}",
                r#""\u00ff \u0100 \u2028 \ud7ff \ufffd \u65e5""#,
            ),
            ("\u{1f600}\u{1d11e}", r#""\ud83d\ude00\ud834\udd1e""#),
            ("\u{1}~\u{80}\u{9f}", r#""\u0001~\u0080\u009f""#),
        ] {
            assert_eq!(json_string(text), expected, "{text:?}");
            assert_eq!(json_string_len(text), expected.len(), "{text:?}");
        }
    }

    #[test]
    fn every_code_point_escapes_to_its_computed_length() {
        let all: String = (0..=0x10ffff_u32).filter_map(char::from_u32).collect();
        let mut out = Vec::new();
        push_json_string(&mut out, &all);
        assert_eq!(out.len(), json_string_len(&all));
        assert!(out.is_ascii());
    }

    #[test]
    fn repr_quotes_as_python() {
        for (text, expected) in [
            ("x", "'x'"),
            ("1-99999999999", "'1-99999999999'"),
            ("", "''"),
            ("it's", "\"it's\""),
            ("a\"b'c", "'a\"b\\'c'"),
            ("\t\n\r\\", "'\\t\\n\\r\\\\'"),
            ("\u{1}\u{7f}\u{85}", "'\\x01\\x7f\\x85'"),
            ("\u{e9}\u{2028}", "'\u{e9}\\u2028'"),
        ] {
            assert_eq!(py_repr(text), expected, "{text:?}");
        }
    }

    #[test]
    fn percent_g_is_pythons() {
        for (x, expected) in [
            (30.0_f64, "30"),
            (0.5, "0.5"),
            (45.0, "45"),
            (3600.0, "3600"),
            (1e-05, "1e-05"),
            (123456789.0, "1.23457e+08"),
            (1234565.0, "1.23456e+06"),
            (1234575.0, "1.23458e+06"),
            (1e+16, "1e+16"),
            (0.0001, "0.0001"),
            (1.234e-05, "1.234e-05"),
            (1.5, "1.5"),
            (2.0000001, "2"),
            (1e+100, "1e+100"),
            (-0.0, "-0"),
            (0.0, "0"),
            (100000.0, "100000"),
            (999999.0, "999999"),
            (999999.5, "1e+06"),
            (0.1 + 0.2, "0.3"),
            (3.0, "3"),
            (7.25, "7.25"),
            (-2.5, "-2.5"),
            (1e-310, "1e-310"),
            (f64::MAX, "1.79769e+308"),
            (12345.678, "12345.7"),
            (2.5e-05, "2.5e-05"),
            (1e6, "1e+06"),
            (99999.95, "99999.9"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "nan"),
        ] {
            assert_eq!(format_g(x), expected, "{x:?}");
        }
    }

    #[test]
    fn creation_times_keep_six_digits_truncated() {
        for (server, kept) in [
            ("2026-12-07T07:15:33.1234Z", "2026-12-07T07:15:33.123400Z"),
            ("2026-12-07T07:15:33Z", "2026-12-07T07:15:33.000000Z"),
            (
                "2026-12-07T07:15:33.9999999Z",
                "2026-12-07T07:15:33.999999Z",
            ),
            (
                "2026-12-07T07:15:33.123456789Z",
                "2026-12-07T07:15:33.123456Z",
            ),
            (
                "2026-12-07T07:15:33.000000001Z",
                "2026-12-07T07:15:33.000000Z",
            ),
            ("1999-01-02T03:04:05.5Z", "1999-01-02T03:04:05.500000Z"),
            (
                "2026-02-28T23:59:59.999999999Z",
                "2026-02-28T23:59:59.999999Z",
            ),
            // Not what a server sends, but kept in UTC all the same.
            ("2026-12-07T09:15:33.5+02:00", "2026-12-07T07:15:33.500000Z"),
        ] {
            let t = OffsetDateTime::parse(server, &Rfc3339).expect("rfc3339");
            assert_eq!(created(t), kept, "{server}");
        }
    }

    #[test]
    fn reply_subjects_give_sequence_and_deliveries_as_nats_py_read_them() {
        for (reply, expected) in [
            ("$JS.ACK.S.c.1.42.42.1700000000000000000.0", Some((42, 1))),
            (
                "$JS.ACK.S.c.3.4586.12.1700000000000000000.7",
                Some((4586, 3)),
            ),
            (
                "$JS.ACK._.HASH.S.c.2.99.5.1700000000000000000.3",
                Some((99, 2)),
            ),
            (
                "$JS.ACK._.HASH.S.c.2.99.5.1700000000000000000.3.tok",
                Some((99, 2)),
            ),
            (
                "$JS.ACK.dom.HASH.S.c.2.99.5.1700000000000000000.3.tok.more",
                Some((99, 2)),
            ),
            ("$JS.ACK.S.c.1.42.42.17", None),
            ("$JS.ACK.S.c.1.42.42.1700000000000000000.0.x", None),
            ("$JS.NAK.S.c.1.42.42.1.0", None),
            ("_INBOX.x.y", None),
            ("", None),
            ("$JS.ACK.S.c.x.42.42.1.0", None),
            ("$JS.ACK.S.c.1.42.42.1.", None),
        ] {
            let got = parse_reply(reply).map(|d| (d.stream_seq, d.delivered));
            assert_eq!(got, expected, "{reply}");
        }
    }

    #[test]
    fn subject_overlap_table() {
        for (a, b, overlap) in [
            ("S.orders", "S.>", true),
            ("S.>", "S.orders.eu", true),
            ("S.*", "S.orders", true),
            ("S.*.eu", "S.orders.*", true),
            ("S.orders", "S.orders", true),
            ("S", "S.>", false),
            ("OTHER.x", "S.>", false),
            ("S.orders", "S.orders.eu", false),
            ("S.*", "S.a.b", false),
            (">", "a", true),
            ("a.b", "a.c", false),
            ("*", "a.b", false),
            ("a.>", "a", false),
            ("a.x>", "a.b", false),
        ] {
            assert_eq!(subjects_overlap(a, b), overlap, "{a} ~ {b}");
            assert_eq!(subjects_overlap(b, a), overlap, "{b} ~ {a}");
        }
    }
}
