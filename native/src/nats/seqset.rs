//! A set of stream sequences kept as runs of consecutive ones: the sequences stored here
//! that left the ledger. One replica alone stores one run; replicas on one consumer store
//! runs about a pull request long, so the set grows with the stream as the deliveries
//! interleave: it keeps at most [`MAX_RUNS`], the lowest sequences forgotten first.

use std::collections::BTreeMap;

/// The most runs kept: about 3 MiB at most (a run is two `u64` in a B-tree node); with three
/// replicas of 256-message pulls, the last ~50 million messages of the stream.
pub const MAX_RUNS: usize = 65_536;

/// Stream sequences, as runs `start..=end`, by start; runs neither overlap nor touch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqSet {
    runs: BTreeMap<u64, u64>,
}

impl SeqSet {
    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        self.runs
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &end)| seq <= end)
    }

    /// Adds `seq`, joining the runs it touches.
    pub fn insert(&mut self, seq: u64) {
        let before = self.runs.range(..=seq).next_back().map(|(&s, &e)| (s, e));
        let mut start = seq;
        if let Some((s, e)) = before {
            if seq <= e {
                return;
            }
            if e + 1 == seq {
                start = s;
            }
        }
        let mut end = seq;
        if let Some(next) = seq.checked_add(1) {
            if let Some(next_end) = self.runs.remove(&next) {
                end = next_end;
            }
        }
        self.runs.insert(start, end);
        if self.runs.len() > MAX_RUNS {
            self.runs.pop_first();
        }
    }

    /// How many runs it holds.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_join_where_they_touch() {
        let mut set = SeqSet::default();
        for seq in [5, 7, 6, 1, 3, 2, 10, u64::MAX, u64::MAX - 1, 5] {
            set.insert(seq);
        }
        let runs: Vec<(u64, u64)> = set.runs.iter().map(|(&s, &e)| (s, e)).collect();
        assert_eq!(
            runs,
            vec![(1, 3), (5, 7), (10, 10), (u64::MAX - 1, u64::MAX)]
        );
        assert_eq!(set.runs(), 4);
        for (seq, inside) in [
            (0, false),
            (1, true),
            (3, true),
            (4, false),
            (6, true),
            (8, false),
            (10, true),
            (11, false),
            (u64::MAX, true),
        ] {
            assert_eq!(set.contains(seq), inside, "{seq}");
        }
    }

    #[test]
    fn the_lowest_runs_are_forgotten_first() {
        let mut set = SeqSet::default();
        for run in 0..=MAX_RUNS as u64 {
            set.insert(run * 2);
        }
        assert_eq!(set.runs(), MAX_RUNS);
        assert!(!set.contains(0));
        assert!(set.contains(2) && set.contains(MAX_RUNS as u64 * 2));
    }

    #[test]
    fn a_stream_stored_in_order_is_one_run() {
        let mut set = SeqSet::default();
        for seq in 1..=100_000 {
            set.insert(seq);
        }
        assert_eq!(set.runs(), 1);
        assert!(set.contains(1) && set.contains(100_000) && !set.contains(100_001));
    }
}
