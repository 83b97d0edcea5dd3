//! Fault injection for the crash and fault tests: abort, fail or stall at a named point.
//!
//! Compiled in only with the `fault-injection` feature (development builds); release wheels
//! have no hooks and `hit` is an empty inline function. Rules come from the environment
//! variable `SHOVEL_FAULTS`, read once when the first store opens:
//!
//! ```text
//! SHOVEL_FAULTS = rule[,rule...]
//! rule          = point "=" action ["@" first_hit] ["*" hits]
//! action        = "abort" | "panic" | "fail:" errno | "delay:" milliseconds
//! point         = before-write | before-fsync | after-fsync | mid-checkpoint
//!                 | after-checkpoint | mid-rollover
//! ```
//!
//! `@N` starts at the Nth time the point is reached (default 1); `*K` acts K times (default:
//! once for `abort` and `panic`, every time for `fail` and `delay`). `abort` ends the process at
//! once, as a crash or SIGKILL would; `panic` panics on the storage thread.

use std::fmt;

/// A place in the write path where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Before a batch is appended to the segment.
    BeforeWrite,
    /// Before a segment is fsynced.
    BeforeFsync,
    /// After a segment fsync, before the checkpoint is written.
    AfterFsync,
    /// After the temp checkpoint is written and fsynced, before it is renamed into place.
    MidCheckpoint,
    /// After the checkpoint is renamed and its directory fsynced.
    AfterCheckpoint,
    /// After the old segment is sealed and the next one created, before the checkpoint.
    MidRollover,
}

impl Point {
    /// Every point, with its name in `SHOVEL_FAULTS`.
    pub const ALL: [(Point, &'static str); 6] = [
        (Point::BeforeWrite, "before-write"),
        (Point::BeforeFsync, "before-fsync"),
        (Point::AfterFsync, "after-fsync"),
        (Point::MidCheckpoint, "mid-checkpoint"),
        (Point::AfterCheckpoint, "after-checkpoint"),
        (Point::MidRollover, "mid-rollover"),
    ];

    fn name(self) -> &'static str {
        Point::ALL
            .iter()
            .find(|(p, _)| *p == self)
            .map_or("?", |(_, n)| n)
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(feature = "fault-injection")]
mod imp {
    use super::Point;
    use std::io;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::Duration;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Action {
        Abort,
        Panic,
        Fail(i32),
        Delay(u64),
    }

    #[derive(Debug)]
    pub struct Rule {
        pub point: Point,
        pub action: Action,
        pub first: u64,
        pub count: Option<u64>,
        hits: AtomicU64,
    }

    static RULES: OnceLock<Result<Vec<Rule>, String>> = OnceLock::new();

    fn parse_rule(text: &str) -> Result<Rule, String> {
        let bad = || format!("bad SHOVEL_FAULTS rule {text:?}");
        let (point_name, rest) = text.split_once('=').ok_or_else(bad)?;
        let point = Point::ALL
            .iter()
            .find(|(_, n)| *n == point_name.trim())
            .map(|(p, _)| *p)
            .ok_or_else(|| format!("unknown fault point {point_name:?} in SHOVEL_FAULTS"))?;
        let (rest, count) = match rest.split_once('*') {
            Some((r, k)) => (r, Some(k.parse::<u64>().map_err(|_| bad())?)),
            None => (rest, None),
        };
        let (action_text, first) = match rest.split_once('@') {
            Some((a, n)) => (a, n.parse::<u64>().map_err(|_| bad())?.max(1)),
            None => (rest, 1),
        };
        let action = match action_text.split_once(':') {
            None if action_text == "abort" => Action::Abort,
            None if action_text == "panic" => Action::Panic,
            Some(("fail", errno)) => Action::Fail(errno.parse().map_err(|_| bad())?),
            Some(("delay", ms)) => Action::Delay(ms.parse().map_err(|_| bad())?),
            _ => return Err(bad()),
        };
        let once = matches!(action, Action::Abort | Action::Panic);
        let count = count.or(if once { Some(1) } else { None });
        Ok(Rule {
            point,
            action,
            first,
            count,
            hits: AtomicU64::new(0),
        })
    }

    pub fn parse(spec: &str) -> Result<Vec<Rule>, String> {
        spec.split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(parse_rule)
            .collect()
    }

    fn rules() -> &'static Result<Vec<Rule>, String> {
        RULES.get_or_init(|| parse(&std::env::var("SHOVEL_FAULTS").unwrap_or_default()))
    }

    pub fn init() -> Result<(), String> {
        rules().as_ref().map(|_| ()).map_err(Clone::clone)
    }

    pub fn hit(point: Point) -> io::Result<()> {
        let Ok(rules) = rules() else { return Ok(()) };
        for rule in rules.iter().filter(|r| r.point == point) {
            let n = rule.hits.fetch_add(1, Ordering::AcqRel) + 1;
            let active = n >= rule.first && rule.count.is_none_or(|k| n < rule.first + k);
            if !active {
                continue;
            }
            match rule.action {
                Action::Abort => {
                    eprintln!("shovel fault injection: abort at {point} (hit {n})");
                    std::process::abort();
                }
                Action::Panic => panic!("shovel fault injection: panic at {point} (hit {n})"),
                Action::Fail(errno) => return Err(io::Error::from_raw_os_error(errno)),
                Action::Delay(ms) => std::thread::sleep(Duration::from_millis(ms)),
            }
        }
        Ok(())
    }
}

/// Whether this build has fault injection.
pub const ENABLED: bool = cfg!(feature = "fault-injection");

/// Checks `SHOVEL_FAULTS` (a no-op without the feature).
pub fn init() -> Result<(), String> {
    #[cfg(feature = "fault-injection")]
    return imp::init();
    #[cfg(not(feature = "fault-injection"))]
    Ok(())
}

/// Called at `point`: may abort, stall, or return the injected error. Blocking: call it only
/// on a blocking thread.
#[inline]
pub fn hit(point: Point) -> std::io::Result<()> {
    #[cfg(feature = "fault-injection")]
    return imp::hit(point);
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = point;
        Ok(())
    }
}

#[cfg(all(test, feature = "fault-injection"))]
mod tests {
    use super::imp::{parse, Action};
    use super::Point;

    #[test]
    fn parses_rules() {
        let rules = parse("before-fsync=abort@3, before-write=fail:5*2,mid-rollover=delay:10")
            .expect("valid");
        assert_eq!(rules.len(), 3);
        assert_eq!(
            (
                rules[0].point,
                rules[0].action,
                rules[0].first,
                rules[0].count
            ),
            (Point::BeforeFsync, Action::Abort, 3, Some(1))
        );
        assert_eq!(
            (rules[1].action, rules[1].count),
            (Action::Fail(libc::EIO), Some(2))
        );
        assert_eq!((rules[2].action, rules[2].count), (Action::Delay(10), None));
        assert!(parse("nowhere=abort").is_err());
        assert!(parse("before-write=explode").is_err());
    }
}
