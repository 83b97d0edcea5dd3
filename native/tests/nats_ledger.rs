//! The native ledger against today's Python one on random operations: every line of
//! fixtures/nats_ledger_traces.jsonl is a trace of `Ledger` calls made on
//! shovel/sources/nats/ledger.py, with what each returned and the state it left (see
//! make_nats_ledger_traces.py there). The native ledger must return and leave the same.
// Helpers here are test code too: a bad fixture should panic loudly.
#![allow(clippy::expect_used)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shovel_native::nats::ledger::{Ledger, Listing};
use shovel_native::nats::ranges;

/// Trace times are whole seconds from 0, and may go a little below it.
fn at(s: i64) -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let secs = u64::try_from(s + 10).expect("time");
    *EPOCH.get_or_init(Instant::now) + Duration::from_secs(secs)
}

fn seconds(t: Instant) -> f64 {
    (t - at(0)).as_secs_f64()
}

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .expect("list")
        .iter()
        .map(|x| x.as_u64().expect("number"))
        .collect()
}

fn text(v: &Value) -> String {
    v.as_str().expect("text").to_string()
}

fn listing(v: &Value) -> Listing {
    Listing {
        unconfirmed: text(&v[0]),
        confirmed: text(&v[1]),
    }
}

fn state(ledger: &Ledger) -> Value {
    let c = ledger.counts();
    let d = ledger.durable_listing();
    json!([
        ledger.in_flight(),
        ledger.restored(),
        [c.pending, c.durable, c.restored],
        ranges::encode_sorted(ledger.seqs()),
        [d.unconfirmed, d.confirmed],
        ledger.records_handed(),
    ])
}

fn pairs(list: Vec<(u64, String)>) -> Value {
    json!(list
        .into_iter()
        .map(|(s, r)| json!([s, r]))
        .collect::<Vec<_>>())
}

#[test]
fn random_operations_return_and_leave_what_the_python_ledger_did() {
    let fixture = include_str!("fixtures/nats_ledger_traces.jsonl");
    let mut ops_checked = 0;
    for (n, line) in fixture.lines().enumerate() {
        let trace: Value = serde_json::from_str(line).expect("trace");
        let new = &trace["new"];
        let mut ledger = Ledger::new(
            u64s(&new[0]),
            u64s(&new[1]),
            usize::try_from(new[2].as_u64().expect("kept_max")).expect("kept_max"),
            listing(&new[3]),
        );
        assert_eq!(state(&ledger), new[4], "trace {n}: restored");
        for (i, op) in trace["ops"].as_array().expect("ops").iter().enumerate() {
            let (name, args, expected) = (op[0].as_str().expect("name"), &op[1], &op[2]);
            let max_chars = |v: &Value| usize::try_from(v.as_u64().expect("max")).expect("max");
            let result = match name {
                "known" => {
                    let entry = ledger.known(
                        args[0].as_u64().expect("seq"),
                        args[1].as_str().expect("reply"),
                    );
                    json!(entry.map(|e| e.durable))
                }
                "fits" => json!(ledger.fits(u64s(&args[0]), max_chars(&args[1]))),
                "listing" => {
                    let got = ledger.listing(max_chars(&args[0]));
                    json!([got.unconfirmed, got.confirmed])
                }
                "hand_over" => {
                    let batch = args[0]
                        .as_array()
                        .expect("batch")
                        .iter()
                        .map(|d| {
                            let t = d[2].as_f64().expect("time") as i64;
                            (d[0].as_u64().expect("seq"), text(&d[1]), at(t))
                        })
                        .collect();
                    let got = ledger.hand_over(batch, max_chars(&args[1]));
                    json!([got.unconfirmed, got.confirmed])
                }
                "made_durable" => {
                    ledger.made_durable(args[0].as_u64().expect("records"));
                    Value::Null
                }
                "confirmed" => {
                    let got = ledger.confirmed(args[0].as_u64().expect("seq"));
                    json!(got.map(|a| [a.fetched_at.map(seconds)]))
                }
                "ack_sent" => {
                    ledger.ack_sent(
                        args[0].as_u64().expect("seq"),
                        at(args[1].as_i64().expect("t")),
                    );
                    Value::Null
                }
                "unconfirmed" => pairs(ledger.unconfirmed(at(args[0].as_i64().expect("t")))),
                "not_confirmed" => json!(ledger.not_confirmed()),
                "below_floor" => {
                    let (dropped, acknowledged) =
                        ledger.below_floor(args[0].as_u64().expect("floor"));
                    let seqs: Vec<u64> = acknowledged.iter().map(|a| a.seq).collect();
                    json!([dropped, seqs])
                }
                "drop_restored" => json!(ledger.drop_restored()),
                "take_not_durable" => pairs(ledger.take_not_durable()),
                other => panic!("unknown operation {other}"),
            };
            assert_eq!(&result, expected, "trace {n}, op {i}: {name} {args}");
            assert_eq!(
                state(&ledger),
                op[3],
                "trace {n}, op {i}: {name} {args} left"
            );
            ops_checked += 1;
        }
    }
    assert!(ops_checked > 2000, "{ops_checked}");
}
