//! The NATS source as one object, free of Python: what `_native.NatsSource` wraps, and what
//! the cargo tests drive end to end.
//!
//! Its steps follow the source lifecycle (shovel/sources/api.py): [`Source::new`] (cheap: no
//! thread, no I/O); [`Source::restore`] (the checkpoint's listing and the last stop's
//! record); [`Source::start_open`] then [`Source::open_result`] (the runtime thread, the
//! connection, the consumer, the subscriptions; the acknowledging tasks start here);
//! [`Source::start_reading`] then [`Source::take_batch`] (non-blocking, woken through
//! [`Source::notify_fd`]); [`Source::made_durable`]; [`Source::take_tail`];
//! [`Source::finish`] (blocking: the stop protocol of [`super::finish`], then the runtime
//! stops); [`Source::close`] for a run that never started. Log lines wait in
//! [`Source::take_events`].

use std::collections::HashSet;
use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::{Client, Subscriber};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::acker::{self, Acker};
use super::connect::{Link, NatsConfig, OpenError};
use super::consumer::{self, seconds, ConsumerSpec, Restored, DEFAULT_ACK_WAIT};
use super::core::{Batch, Core, Names, Shared, RESTORED_MARGIN};
use super::events::{Events, Level};
use super::finish::{self, FinishReport, Parts};
use super::ledger::{Ledger, Listing};
use super::reader::{self, Reader};
use super::{ranges, stoprecord};
use crate::notify::Notifier;
use crate::runtime::{Io, RuntimeThread};

/// How long the Python source gives a connection that never started reading to close
/// (source.py's CLOSE_S): what [`Source::close`] is usually given.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Everything the source is told when made.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// The connection.
    pub config: NatsConfig,
    /// The consumer.
    pub spec: ConsumerSpec,
    /// Messages asked for per pull request.
    pub batch: usize,
    /// The most messages this replica holds fetched and not confirmed acknowledged.
    pub max_unacked: usize,
    /// Where the stop record goes (`None`: nowhere).
    pub output_dir: Option<PathBuf>,
}

/// What the checkpoint says of the NATS source (its descriptor's fields).
#[derive(Debug, Clone, Default)]
pub struct CheckpointNats {
    /// Stored sequences not confirmed acknowledged (ranges text).
    pub stored: String,
    /// Stored sequences known acknowledged (ranges text).
    pub acked: String,
    /// When the stream was created.
    pub created: String,
    /// When the consumer was created.
    pub consumer_created: String,
}

/// What [`Source::restore`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restore {
    /// Stored messages that may await acknowledgement.
    pub restored: usize,
    /// Their states come from the last stop's record.
    pub from_stop: bool,
    /// A stop record that could not be used, said.
    pub warning: Option<String>,
}

/// What the open task leaves for reading.
#[derive(Debug)]
struct Opened {
    /// The client.
    client: Client,
    /// The pull inbox and its subscription.
    inbox: String,
    /// Its subscription.
    subscription: Subscriber,
    /// The acknowledging task.
    acker_task: JoinHandle<()>,
    /// Its settings.
    acker: Acker,
}

/// The open task's outcome.
#[derive(Debug, Default)]
struct OpenSlot {
    /// The start line's phrase, or why opening failed.
    outcome: Option<Result<String, OpenError>>,
    /// What reading needs, once open.
    opened: Option<Opened>,
}

/// What a run holds, by stage.
#[derive(Debug, Default)]
struct Run {
    /// The runtime thread, from `start_open` until stopped.
    runtime: Option<RuntimeThread>,
    /// The open task.
    open_task: Option<JoinHandle<()>>,
    /// The open task's outcome.
    slot: Arc<Mutex<OpenSlot>>,
    /// The client and the acknowledging task, once reading started.
    reading: Option<(Client, Acker, JoinHandle<()>)>,
    /// The reader task and its drain signal.
    reader: Option<(JoinHandle<()>, oneshot::Sender<()>)>,
    /// From `restore`: the checkpoint's names, for the open's checks.
    restored: Option<Restored>,
    /// From `restore`: its states come from the last stop's record.
    from_stop: bool,
    /// Finished or closed.
    done: bool,
}

impl Run {
    /// What the open task left for reading, taken.
    fn take_opened(&self) -> Option<Opened> {
        self.slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .opened
            .take()
    }
}

/// See the module doc.
#[derive(Debug)]
pub struct Source {
    /// As made.
    settings: SourceSettings,
    /// Shared with the tasks.
    shared: Arc<Shared>,
    /// The run's stages.
    run: Mutex<Run>,
}

impl Source {
    /// A source, not connected: no thread, no I/O.
    pub fn new(settings: SourceSettings) -> io::Result<Source> {
        let python = Arc::new(Notifier::new()?);
        let link = Link::new(Arc::new(Events::new(Some(python.clone()))));
        let mut core = Core::default();
        core.names = Names {
            stream: settings.spec.stream.clone(),
            consumer: settings.spec.consumer.clone(),
            ..Names::default()
        };
        let shared = Arc::new(Shared::new(
            core,
            link,
            python,
            settings.max_unacked,
            settings.batch,
        ));
        Ok(Source {
            settings,
            shared,
            run: Mutex::new(Run::default()),
        })
    }

    fn run(&self) -> std::sync::MutexGuard<'_, Run> {
        self.run.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Restores the ledger from the checkpoint (`None`: none, or from another source), as
    /// the Python source's `resume()`: the last stop's record, when it was written about this
    /// checkpoint, says which listed messages were confirmed since. Errs with the reason when
    /// the checkpoint's listing cannot be read.
    pub fn restore(
        &self,
        committed_offset: u64,
        checkpoint: Option<&CheckpointNats>,
    ) -> Result<Restore, String> {
        let mut found = Restore::default();
        let mut ledger = Ledger::new([], [], self.settings.max_unacked, Listing::default());
        if let Some(cp) = checkpoint {
            let on_disk = Listing {
                unconfirmed: cp.stored.clone(),
                confirmed: cp.acked.clone(),
            };
            let bad =
                |e: ranges::RangeError| format!("the checkpoint's list of stored messages: {e}");
            let mut unconfirmed = ranges::decode(&cp.stored).map_err(bad)?;
            let mut confirmed = ranges::decode(&cp.acked).map_err(bad)?;
            if let Some(dir) = &self.settings.output_dir {
                match stoprecord::read(dir) {
                    Ok(Some(record)) if record.listing == on_disk => {
                        if let Ok(still) = ranges::decode(&record.not_confirmed) {
                            let still: HashSet<u64> = still.into_iter().collect();
                            let listed: Vec<u64> =
                                unconfirmed.iter().chain(&confirmed).copied().collect();
                            (unconfirmed, confirmed) =
                                listed.into_iter().partition(|s| still.contains(s));
                            found.from_stop = true;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        found.warning = Some(format!(
                            "ignoring {}: {e} (the stored messages the checkpoint lists as not \
                             confirmed are counted as such)",
                            dir.join(stoprecord::STOP_RECORD_FILE).display()
                        ))
                    }
                }
            }
            ledger = Ledger::new(unconfirmed, confirmed, self.settings.max_unacked, on_disk);
            let mut run = self.run();
            run.restored = Some(Restored {
                created: cp.created.clone(),
                consumer_created: cp.consumer_created.clone(),
            });
            run.from_stop = found.from_stop;
        }
        found.restored = ledger.restored();
        let mut core = self.shared.lock();
        core.ledger = ledger;
        core.offset = committed_offset;
        Ok(found)
    }

    /// Starts the runtime thread and the open task; [`Source::open_result`] says when it is
    /// done.
    pub fn start_open(&self) -> io::Result<()> {
        let mut run = self.run();
        if run.runtime.is_some() || run.done {
            return Ok(());
        }
        let runtime = RuntimeThread::start("shovel-nats", Io::On)?;
        let task = runtime.handle().spawn(open_task(
            self.shared.clone(),
            self.settings.clone(),
            run.restored.clone(),
            run.from_stop,
            run.slot.clone(),
        ));
        run.open_task = Some(task);
        run.runtime = Some(runtime);
        Ok(())
    }

    /// `None` while opening; then the start line's phrase, or why it failed.
    pub fn open_result(&self) -> Option<Result<String, OpenError>> {
        let run = self.run();
        let slot = run.slot.lock().unwrap_or_else(PoisonError::into_inner);
        slot.outcome.clone()
    }

    /// Starts the reader (after a successful open).
    pub fn start_reading(&self, start_offset: u64) -> Result<(), String> {
        let mut run = self.run();
        let opened = run.take_opened().ok_or("the NATS source was not opened")?;
        let Some(runtime) = &run.runtime else {
            return Err("the NATS source was not opened".into());
        };
        {
            let mut core = self.shared.lock();
            core.offset = core.offset.max(start_offset);
        }
        let (drain_tx, drain_rx) = oneshot::channel();
        let reader = Reader {
            client: opened.client.clone(),
            inbox: opened.inbox,
            subscription: opened.subscription,
            pull_subject: format!(
                "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
                self.settings.spec.stream, self.settings.spec.consumer
            ),
            drain: drain_rx,
        };
        let task = runtime.handle().spawn(reader::run(
            self.shared.clone(),
            self.settings.spec.consumer.clone(),
            reader,
        ));
        run.reader = Some((task, drain_tx));
        run.reading = Some((opened.client, opened.acker, opened.acker_task));
        Ok(())
    }

    /// The next batch, if one is ready; errs once the consumer is gone.
    pub fn take_batch(&self) -> Result<Option<Batch>, String> {
        let mut core = self.shared.lock();
        if let Some(why) = &core.fatal {
            return Err(why.clone());
        }
        if core.take_arrived(&self.shared.stats) {
            self.shared.durable.notify_one();
        }
        let batch = core.batch();
        let listing_wait = batch.is_none() && core.holds();
        if listing_wait {
            // The listing is full of this replica's unconfirmed messages: the acknowledging
            // task looks at the consumer sooner.
            core.listing_full = true;
            self.shared.durable.notify_one();
        }
        if core.listing_wait != listing_wait {
            // The reader times the wait.
            core.listing_wait = listing_wait;
            self.shared.room.notify_one();
        }
        Ok(batch)
    }

    /// At a stop, before storage is closed: everything held, in batches that fit.
    pub fn take_tail(&self) -> Vec<Batch> {
        let mut core = self.shared.lock();
        core.stopping = true;
        core.take_arrived(&self.shared.stats);
        std::iter::from_fn(|| core.batch()).collect()
    }

    /// Storage made `records_durable` records of this run durable: their messages are
    /// acknowledged.
    pub fn made_durable(&self, records_durable: u64) {
        self.shared.lock().records_durable = records_durable;
        self.shared.durable.notify_one();
    }

    /// The stop (see [`super::finish`]); then the runtime stops. Blocking. `None` when the
    /// source never opened (or finished already).
    pub fn finish(&self, records_durable: u64, time: Duration) -> Option<FinishReport> {
        let (runtime, parts) = {
            let mut run = self.run();
            if run.done {
                return None;
            }
            run.done = true;
            let runtime = run.runtime.take()?;
            let Some((client, acker, acker_task)) = run.reading.take() else {
                drop(run);
                self.close_runtime(runtime, time);
                return None;
            };
            let parts = Parts {
                client,
                acker,
                acker_task: Some(acker_task),
                reader: run.reader.take(),
                output_dir: self.settings.output_dir.clone(),
            };
            (runtime, parts)
        };
        let (tx, rx) = oneshot::channel();
        let shared = self.shared.clone();
        runtime.handle().spawn(async move {
            let report = finish::finish(shared, parts, records_durable, time).await;
            let _ = tx.send(report);
        });
        let report = rx.blocking_recv().ok();
        runtime.stop_and_join();
        report
    }

    /// A run that never started reading: the open stops, the connection closes (within
    /// `wait`), the runtime stops. Blocking; idempotent.
    pub fn close(&self, wait: Duration) {
        let runtime = {
            let mut run = self.run();
            run.done = true;
            run.runtime.take()
        };
        if let Some(runtime) = runtime {
            self.close_runtime(runtime, wait);
        }
    }

    /// Stops the open task, closes whatever client there is (within `wait`), stops the
    /// runtime.
    fn close_runtime(&self, runtime: RuntimeThread, wait: Duration) {
        let (open_task, client) = {
            let mut run = self.run();
            let client = match (run.take_opened(), run.reading.take()) {
                (Some(opened), _) => {
                    opened.acker_task.abort();
                    Some(opened.client)
                }
                (None, Some((client, _, task))) => {
                    task.abort();
                    Some(client)
                }
                (None, None) => None,
            };
            if let Some((task, _)) = run.reader.take() {
                task.abort();
            }
            (run.open_task.take(), client)
        };
        let link = self.shared.link.clone();
        let (tx, rx) = oneshot::channel();
        runtime.handle().spawn(async move {
            if let Some(task) = open_task {
                task.abort();
            }
            if let Some(client) = client {
                link.closing();
                let mut state = link.watch();
                let _ = tokio::time::timeout(wait, async {
                    let _ = client.drain().await;
                    let _ = state.wait_for(|s| s.closed).await;
                })
                .await;
            }
            let _ = tx.send(());
        });
        let _ = rx.blocking_recv();
        runtime.stop_and_join();
    }

    /// The log lines said since the last call.
    pub fn take_events(&self) -> Vec<(Level, String)> {
        self.shared.link.events().take()
    }

    /// The descriptor to watch for wake-ups.
    pub fn notify_fd(&self) -> RawFd {
        self.shared.python.fd()
    }

    /// Consumes pending wake-ups.
    pub fn drain_notifications(&self) -> usize {
        self.shared.python.drain()
    }

    /// The counters.
    pub fn stats(&self) -> &super::core::Stats {
        &self.shared.stats
    }

    /// How long the reader has waited for room (zero when it does not wait).
    pub fn stalled(&self) -> Duration {
        self.shared
            .lock()
            .stall_started
            .map_or(Duration::ZERO, |t| t.elapsed())
    }
}

impl Drop for Source {
    /// Never blocks: a runtime still running (neither finished nor closed) is told to stop,
    /// and its thread exits on its own.
    fn drop(&mut self) {
        if let Some(runtime) = self.run().runtime.take() {
            runtime.stop_token().cancel();
        }
    }
}

/// The restored entries' phrase in the start line.
fn restored_phrase(restored: usize, from_stop: bool) -> String {
    if from_stop {
        format!("{restored} stored messages await acknowledgement (not confirmed at the last stop)")
    } else {
        format!(
            "{restored} stored messages may await acknowledgement (not confirmed when the last \
             checkpoint was written, and no stop recorded their acknowledgement since)"
        )
    }
}

/// Connects, binds, subscribes, starts the acknowledging tasks; leaves the outcome in `slot`
/// and wakes Python.
async fn open_task(
    shared: Arc<Shared>,
    settings: SourceSettings,
    restored: Option<Restored>,
    from_stop: bool,
    slot: Arc<Mutex<OpenSlot>>,
) {
    let outcome = open(&shared, &settings, restored.as_ref(), from_stop).await;
    let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
    slot.outcome = Some(outcome.map(|(phrase, opened)| {
        slot.opened = Some(opened);
        phrase
    }));
    drop(slot);
    shared.python.notify();
}

async fn open(
    shared: &Arc<Shared>,
    settings: &SourceSettings,
    restored: Option<&Restored>,
    from_stop: bool,
) -> Result<(String, Opened), OpenError> {
    let spec = &settings.spec;
    let (client, bound) = consumer::open(&settings.config, spec, restored, &shared.link).await?;
    let unavailable =
        |e: async_nats::SubscribeError| OpenError::Unavailable(format!("cannot subscribe: {e}"));
    let inbox = client.new_inbox();
    let ack_inbox = client.new_inbox();
    let subscription = client.subscribe(inbox.clone()).await.map_err(unavailable)?;
    let confirmations = client
        .subscribe(format!("{ack_inbox}.*"))
        .await
        .map_err(unavailable)?;
    let info = &bound.info;
    shared.stats.consumer(info);
    let ack_wait = if info.config.ack_wait.is_zero() {
        DEFAULT_ACK_WAIT
    } else {
        info.config.ack_wait
    };
    // The longest a message may wait for its next delivery (a backoff overrides ack_wait).
    let redelivery = info
        .config
        .backoff
        .iter()
        .copied()
        .fold(ack_wait, Duration::max);
    let restored_count = {
        let mut core = shared.lock();
        core.names.created = bound.stream_created.clone();
        core.names.consumer_created = bound.consumer_created.clone();
        core.ledger.below_floor(info.ack_floor.stream_sequence);
        core.restored_until = Some(Instant::now() + redelivery + RESTORED_MARGIN);
        core.ledger.restored()
    };
    let acker = Acker {
        client: client.clone(),
        ack_inbox,
        stream: spec.stream.clone(),
        consumer: spec.consumer.clone(),
    };
    tokio::spawn(acker::run_confirmations(shared.clone(), confirmations));
    let acker_task = tokio::spawn(acker::run(shared.clone(), acker.clone()));
    let mut phrase = format!(
        "consumer {}: ack_wait {}s, max_ack_pending {}, {} messages pending",
        spec.consumer,
        seconds(info.config.ack_wait),
        info.config.max_ack_pending,
        info.num_pending
    );
    if restored_count > 0 {
        phrase = format!("{phrase}; {}", restored_phrase(restored_count, from_stop));
    }
    Ok((
        phrase,
        Opened {
            client,
            inbox,
            subscription,
            acker_task,
            acker,
        },
    ))
}
