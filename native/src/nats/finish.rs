//! The stop: after storage is closed (everything drained is fsynced), acknowledge what is
//! durable, give back what is not, close the connection, record what stays unconfirmed; all
//! within the deadline, in the order and with the budget of the Python source's `finish()`:
//!
//! 1. settle: acknowledgements of what is durable go first; then the messages held and those
//!    handed over and not made durable are given back (`-NAK`), so that another replica
//!    takes them at once, or, while this replica's last pull request is open, as soon as it
//!    is over (see [`give_back_word`]);
//! 2. if connected: the pull inbox is drained (no more deliveries; what the last request
//!    still brings is given back too), for at most a quarter of the time left, and settled.
//!    A message the last request brings (a new one) is given back like the others; each
//!    message is counted once, in the report and in the `nacked` counter;
//! 3. the confirmations of every acknowledgement sent are awaited, at most 2 s;
//! 4. the connection is drained and closed: `Client::drain` sends the unsubscriptions and a
//!    PING and closes on the PONG, the round trip that says the server has everything sent
//!    (`flush` only empties the socket buffer);
//! 5. the stored messages whose acknowledgement is not confirmed are recorded beside the
//!    checkpoint (the stop record), at most 1 s.
//!
//! With no server connected nothing is sent: the server redelivers it all after ack_wait (a
//! restart here acknowledges what is stored without storing it again). Every await is bounded
//! by the deadline; one that the deadline has already passed still gets [`LAST_WORD`].

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

use super::acker::{self, send_acks, Acker};
use super::core::Shared;
use super::ledger::Listing;
use super::ranges;
use super::stoprecord::{self, StopRecord, STOP_RECORD_FILE};

/// How long the stop waits for the last acknowledgements to be confirmed.
pub const CONFIRM_WAIT: Duration = Duration::from_secs(2);
/// The share of the time left given to receiving what the last pull request still brings.
pub const INBOX_DRAIN_SHARE: f64 = 0.25;
/// The longest stop taken as given (a longer one is this long; settings allow an hour).
pub const MAX_TIME: Duration = Duration::from_secs(86_400);
/// A step the deadline has already passed still gets this long.
pub const LAST_WORD: Duration = Duration::from_millis(100);
/// What a delayed give-back adds to the time the last pull request stays open: the
/// server's expiry timer starts when the request reaches it, after ours.
pub const GIVE_BACK_MARGIN: Duration = Duration::from_millis(250);
/// How long the stop may take to write its record beside the checkpoint.
pub const STOP_RECORD_WAIT: Duration = Duration::from_secs(1);

/// What a stop did, for its log lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishReport {
    /// A server was connected when the stop began (the acknowledgements could go out).
    pub connected: bool,
    /// Deliveries the server holds acknowledged, over the whole run.
    pub acked: u64,
    /// Stored messages whose acknowledgement is not confirmed.
    pub not_confirmed: usize,
    /// Negative acknowledgements sent at the stop.
    pub given_back: u64,
    /// Messages that were due to be given back (sent or not).
    pub due_back: usize,
    /// How long the stop took.
    pub took: Duration,
    /// Why the stop record could not be written, if it could not.
    pub stop_record_error: Option<String>,
}

/// What the stop takes over from the running source.
#[derive(Debug)]
pub struct Parts {
    /// The client.
    pub client: Client,
    /// Where acknowledgements go.
    pub acker: Acker,
    /// The acknowledging task (aborted: the stop sends the last ones itself).
    pub acker_task: Option<JoinHandle<()>>,
    /// The reader task and its drain signal (none if reading never started).
    pub reader: Option<(JoinHandle<()>, oneshot::Sender<()>)>,
    /// Where the stop record goes (`None`: nowhere).
    pub output_dir: Option<PathBuf>,
}

/// Time left before `deadline`, at least [`LAST_WORD`].
fn left(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(LAST_WORD)
}

/// Steps 1 and 2: acknowledges what is durable and gives back the rest; records in `due` the
/// messages due to be given back and in `sent` those given back.
async fn settle(shared: &Shared, acker: &Acker, due: &mut HashSet<u64>, sent: &mut HashSet<u64>) {
    // Redeliveries of stored messages are acknowledged by send_acks below.
    shared.lock().take_arrived(&shared.stats);
    send_acks(shared, acker).await;
    let (back, open_until) = {
        let mut core = shared.lock();
        (core.take_back(), core.request_open_until)
    };
    let now = std::time::Instant::now();
    let nak = give_back_word(open_until.map(|t| t.saturating_duration_since(now)));
    let connected = shared.link.state().connected;
    for (seq, reply) in back {
        due.insert(seq);
        if connected && acker.client.publish(reply, nak.clone()).await.is_ok() && sent.insert(seq) {
            acker::nacked(&shared.stats);
        }
    }
}

/// The negative acknowledgement that gives a message back while this replica's last pull
/// request may stay open for `open_for` more: a plain `-NAK` when none is open; otherwise
/// one that asks the server to redeliver only after the request is over
/// (`-NAK {"delay": ns}`), with [`GIVE_BACK_MARGIN`] for the request's way to the server.
/// The server fills open requests first: a message given back at once would come back on
/// this replica's request, to an inbox about to go, and stay out until ack_wait, or be given
/// back again behind the others (redelivered out of order). With the delay, the server
/// redelivers them together when it falls due, in stream order.
pub fn give_back_word(open_for: Option<Duration>) -> Bytes {
    match open_for {
        Some(d) if !d.is_zero() => {
            let delay = d + GIVE_BACK_MARGIN;
            Bytes::from(format!(r#"-NAK {{"delay":{}}}"#, delay.as_nanos()))
        }
        _ => Bytes::from_static(b"-NAK"),
    }
}

/// The stop protocol (see the module doc).
pub async fn finish(
    shared: Arc<Shared>,
    parts: Parts,
    records_durable: u64,
    time: Duration,
) -> FinishReport {
    let started = Instant::now();
    let deadline = started + time.min(MAX_TIME);
    if let Some(task) = &parts.acker_task {
        task.abort();
    }
    {
        let mut core = shared.lock();
        core.records_durable = records_durable;
        // (Set by take_tail already, unless the run ends without one.)
        core.stopping = true;
    }
    shared.room.notify_one();
    let connected = shared.link.state().connected;
    // Messages due to be given back, and given back: each counted once, though one given
    // back while the last pull request is open may come back on it and be given back again.
    let (mut due, mut sent) = (HashSet::new(), HashSet::new());
    // 1. What matters most goes first: acknowledgements of what is durable; then what is not
    // durable is given back, so that another replica takes it at once.
    // A send waits for room in the client's command queue, which nothing empties while the
    // client reconnects: bounded, as every step.
    let _ = timeout(
        left(deadline),
        settle(&shared, &parts.acker, &mut due, &mut sent),
    )
    .await;
    // 2. No more deliveries; what the last pull request still brings is given back too.
    if let Some((task, drain)) = parts.reader {
        if shared.link.state().connected && drain.send(()).is_ok() {
            let share = left(deadline).mul_f64(INBOX_DRAIN_SHARE);
            let abort = task.abort_handle();
            if timeout(share, task).await.is_err() {
                abort.abort();
            }
            // Settled again.
            let _ = timeout(
                left(deadline),
                settle(&shared, &parts.acker, &mut due, &mut sent),
            )
            .await;
        } else {
            task.abort();
        }
    }
    let (due_back, given_back) = (due.len(), sent.len() as u64);
    // 3. The confirmations of what was sent.
    if shared.link.state().connected {
        let wait = CONFIRM_WAIT.min(deadline.saturating_duration_since(Instant::now()));
        let _ = timeout(wait, async {
            loop {
                let notified = shared.confirmations.notified();
                if shared.lock().ledger.awaiting_confirmation().is_empty() {
                    break;
                }
                notified.await;
            }
        })
        .await;
    }
    // 4. A round trip, then the connection closes.
    shared.link.closing();
    if timeout(left(deadline), parts.client.drain()).await.is_ok() {
        let mut state = shared.link.watch();
        let _ = timeout(left(deadline), state.wait_for(|s| s.closed)).await;
    }
    // 5. Taken once the connection is closed, with every confirmation that came.
    let (not_confirmed, listing) = {
        let core = shared.lock();
        (
            core.ledger.not_confirmed(),
            core.ledger.durable_listing().clone(),
        )
    };
    let stop_record_error = match &parts.output_dir {
        Some(dir) => record_stop(dir.clone(), listing, &not_confirmed, deadline).await,
        None => None,
    };
    FinishReport {
        connected,
        acked: shared
            .stats
            .acked
            .load(std::sync::atomic::Ordering::Relaxed),
        not_confirmed: not_confirmed.len(),
        given_back,
        due_back,
        took: started.elapsed(),
        stop_record_error,
    }
}

/// Writes the stop record, bounded in time; says why it could not.
async fn record_stop(
    dir: PathBuf,
    listing: Listing,
    not_confirmed: &[u64],
    deadline: Instant,
) -> Option<String> {
    let record = StopRecord {
        listing,
        not_confirmed: ranges::encode(not_confirmed.iter().copied()),
    };
    let path = dir.join(STOP_RECORD_FILE);
    let limit = STOP_RECORD_WAIT.min(left(deadline));
    let job = tokio::task::spawn_blocking(move || stoprecord::write(&dir, &record));
    match timeout(limit, job).await {
        Ok(Ok(Ok(()))) => None,
        Ok(Ok(Err(e))) => Some(format!("cannot write {}: {e}", path.display())),
        Ok(Err(e)) => Some(format!("cannot write {}: {e}", path.display())),
        Err(_) => Some(format!(
            "writing {} took over {}s",
            path.display(),
            super::text::format_g(limit.as_secs_f64())
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_give_back_waits_for_the_open_request() {
        assert_eq!(give_back_word(None), Bytes::from_static(b"-NAK"));
        assert_eq!(
            give_back_word(Some(Duration::ZERO)),
            Bytes::from_static(b"-NAK")
        );
        assert_eq!(
            give_back_word(Some(Duration::from_millis(1500))),
            Bytes::from_static(br#"-NAK {"delay":1750000000}"#)
        );
    }
}
