//! The NATS record line against today's Python source on random messages: every line of
//! fixtures/nats_records.jsonl was written by `record_of` (see make_nats_records.py there).
// Helpers here are test code too: a bad fixture should panic loudly.
#![allow(clippy::expect_used)]

use serde_json::Value;
use shovel_native::nats::record::Record;

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn random_messages_are_stored_byte_for_byte_as_the_python_source_stored_them() {
    let fixture = include_str!("fixtures/nats_records.jsonl");
    let mut checked = 0;
    for (n, line) in fixture.lines().enumerate() {
        let case: Value = serde_json::from_str(line).expect("fixture line");
        let data = hex(case["data"].as_str().expect("data"));
        let record = Record {
            seq: case["seq"].as_u64().expect("seq"),
            subject: case["subject"].as_str().expect("subject"),
            id: case["id"].as_str(),
            data: &data,
        };
        let expected = case["line"].as_str().expect("line");
        let got = record.to_line();
        assert_eq!(
            String::from_utf8_lossy(&got),
            expected,
            "fixture line {}",
            n + 1
        );
        assert_eq!(record.line_len(), expected.len(), "fixture line {}", n + 1);
        checked += 1;
    }
    assert_eq!(checked, 300);
}
