//! `backupctl schedule --daemon`: run the scheduled jobs in the foreground until SIGTERM or SIGINT.
//!
//! One tokio task owns the schedule and the jobs record; each job runs on its own thread (jobs block on their
//! own runtime, as the CLI commands do) and reports back over a channel. systemd integration follows
//! sd_notify(3): `READY=1` once the schedule is loaded, `STATUS=` lines, `WATCHDOG=1` at half of
//! `WATCHDOG_USEC` when the unit sets `WatchdogSec=`, and `STOPPING=1` on a stop request.
//!
//! Shutdown: on SIGTERM (or SIGINT) no new job starts; running jobs get `[schedule] grace_period` to finish.
//! After that they are abandoned: the abandon flag is set (a drill stops its server and removes its directory),
//! the daemon waits a little for them to return, records them as abandoned and exits. A base backup abandoned
//! this way never wrote its manifest, so it is not listed; its PostgreSQL session ends with the process (the
//! server then aborts the backup), its lease is stale at once (same host, dead pid) and gc reclaims its objects.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::{Job, Schedule, jobs, next_slot};
use crate::Error;
use crate::config::Config;
use crate::state::{self, JobsState, Outcome, StateDir};

/// The lock (`<spool>/state/scheduler.lock`) a running daemon holds, so that a second one refuses to start.
const SCHEDULER_LOCK: &str = "scheduler";
/// How long an abandoned drill gets to stop its server and remove its directory before the daemon exits anyway.
const ABANDON_WAIT: Duration = Duration::from_secs(20);
/// The longest the loop sleeps without looking at the clock again (a stepped clock is noticed within this).
const MAX_NAP: Duration = Duration::from_secs(30);

/// A finished run, as the job's thread reports it.
struct Finished {
    job: Job,
    started: jiff::Timestamp,
    elapsed: Duration,
    result: Result<String, String>,
    /// It failed because another base backup holds the lock.
    locked: bool,
    /// The alert condition's reason (for check: the failed checks' names).
    reason: String,
}

/// A run in progress.
struct Running {
    job: Job,
    slot: jiff::Timestamp,
    abandon: Arc<AtomicBool>,
}

/// Run the daemon with a loaded configuration until SIGTERM/SIGINT; `config_path` is the file it came from.
///
/// Errors before the loop starts: `Error::Usage` when `[schedule]` names no job, ownership errors when run by a
/// user who may not write the spool or a `file://` repository, `Error::SchedulerRunning` when another daemon
/// holds `<spool>/state/scheduler.lock`, `Error::State` when the jobs record is damaged. SIGHUP is logged and
/// ignored.
/// Once running, job failures are recorded, logged and alerted, never returned.
pub fn run(rt: &tokio::runtime::Runtime, config: Config, config_path: PathBuf) -> Result<(), Error> {
    let schedule = Schedule::from_config(&config.schedule).map_err(Error::Usage)?;
    if schedule.entries.is_empty() {
        return Err(Error::Usage(
            "[schedule] names no job: set at least one of full_backup, incremental_backup, prune, verify, check, drill"
                .to_owned(),
        ));
    }
    // Run as the PostgreSQL OS user, as the commands it runs must be.
    use crate::storage::fs::owner;
    owner::check_writer(&config.spool.path, owner::Role::Spool)?;
    crate::cli::check_repository_writer(&config.repository.url)?;
    let state = StateDir::new(&config.spool.path);
    // One daemon per spool: a second one would run every slot again (the jobs record cannot stop two processes
    // that both start a slot) and flip shared alerts. Held until this function returns.
    let _instance = state.lock(SCHEDULER_LOCK, Duration::ZERO).map_err(|e| match e {
        state::Error::Spool(crate::spool::Error::Locked { path, holder }) => {
            Error::SchedulerRunning { spool: config.spool.path.clone(), path, holder }
        }
        other => other.into(),
    })?;
    let record: JobsState = state.load(state::JOBS)?;
    let alerter = crate::alert::Alerter::new(&config);
    let health_busy = Arc::new(AtomicBool::new(false));
    let daemon = Daemon { config: Arc::new(config), config_path, schedule, state, record, alerter, health_busy };
    rt.block_on(daemon.main_loop())
}

struct Daemon {
    config: Arc<Config>,
    config_path: PathBuf,
    schedule: Schedule,
    state: StateDir,
    /// The jobs record as loaded at start (for `last_slot`); updates go through [`StateDir::update`].
    record: JobsState,
    /// Alerts (`[alerts]`); sends happen on their own tasks, never in a job's way.
    alerter: crate::alert::Alerter,
    /// A health evaluation is in progress (a slow repository must not pile them up).
    health_busy: Arc<AtomicBool>,
}

impl Daemon {
    async fn main_loop(self) -> Result<(), Error> {
        let mut sigterm = signal(SignalKind::terminate()).map_err(|e| Error::Task(format!("SIGTERM handler: {e}")))?;
        let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::Task(format!("SIGINT handler: {e}")))?;
        // SIGHUP would end the process by default (abandoning running jobs at once): the configuration is read at
        // start only, so say that and go on.
        let mut sighup = signal(SignalKind::hangup()).map_err(|e| Error::Task(format!("SIGHUP handler: {e}")))?;
        let (tx, mut rx) = mpsc::channel::<Finished>(16);
        let mut running: BTreeMap<&'static str, Running> = BTreeMap::new();

        let now = self.schedule.now();
        let mut next: BTreeMap<Job, jiff::ZonedDateTime> = BTreeMap::new();
        for (job, expr) in &self.schedule.entries {
            let last = self.record.jobs.get(job.name()).and_then(|r| r.last_slot);
            match next_slot(expr, &now, last) {
                Some(at) => {
                    tracing::info!(job = job.name(), schedule = expr.text(), next = %at, "scheduled");
                    next.insert(*job, at);
                }
                None => tracing::warn!(job = job.name(), schedule = expr.text(), "the expression never matches"),
            }
        }
        let (stop_metrics, metrics) = self.serve_metrics().await?;
        let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
        let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
        let mut health_tick = tokio::time::interval(self.config.schedule.health_interval.0);
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&format!("{} jobs scheduled", next.len())),
        ]);
        tracing::info!(jobs = next.len(), "scheduler started");

        loop {
            let now = jiff::Timestamp::now();
            let nap = next.values().map(|at| duration_until(now, at.timestamp())).min().unwrap_or(MAX_NAP).min(MAX_NAP);
            tokio::select! {
                _ = tokio::time::sleep(nap) => {
                    let now = self.schedule.now();
                    for (job, expr) in &self.schedule.entries {
                        let Some(at) = next.get(job).cloned() else { continue };
                        if at.timestamp() > now.timestamp() {
                            continue;
                        }
                        let slot = at.timestamp();
                        match running.get(job.lane()) {
                            Some(busy) => self.missed(*job, slot, busy),
                            None => {
                                let run = self.start(*job, slot, tx.clone());
                                running.insert(job.lane(), run);
                            }
                        }
                        match next_slot(expr, &now, Some(slot)) {
                            Some(n) => { next.insert(*job, n); }
                            None => { next.remove(job); }
                        }
                    }
                }
                Some(done) = rx.recv() => {
                    running.remove(done.job.lane());
                    self.finished(done);
                }
                _ = health_tick.tick() => self.health(),
                _ = watchdog_tick.tick(), if watchdog.is_some() => notify(&[sd_notify::NotifyState::Watchdog]),
                _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break; }
                _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break; }
                _ = sighup.recv() => tracing::warn!("SIGHUP ignored: the configuration is read at start; restart the daemon to apply changes"),
            }
        }
        self.shutdown(running, rx, watchdog).await;
        let _ = stop_metrics.send(());
        if let Some(task) = metrics {
            match task.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "the metrics endpoint failed"),
                Err(e) => tracing::warn!(error = %e, "the metrics endpoint panicked"),
                Ok(Ok(())) => {}
            }
        }
        Ok(())
    }

    /// Bind `[metrics] listen` (unless it is empty) and serve `/metrics` until the returned sender fires. Binding
    /// happens before READY=1: an address in use stops the daemon at start, with the address in the error.
    async fn serve_metrics(
        &self,
    ) -> Result<(tokio::sync::oneshot::Sender<()>, Option<tokio::task::JoinHandle<Result<(), Error>>>), Error> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let Some(addr) = self.config.metrics.listen_addr() else { return Ok((stop, None)) };
        if !addr.ip().is_loopback() && !self.config.metrics.allow_remote {
            return Err(crate::metrics::Error::Remote { addr }.into());
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::from(crate::metrics::Error::Listen { addr, source }))?;
        let shutdown = async move {
            let _ = stopped.await;
        };
        Ok((stop, Some(tokio::spawn(crate::metrics::serve_on(listener, self.config.clone(), shutdown)))))
    }

    /// Start `job` for `slot` on its own thread; the slot is recorded first, so it never runs twice.
    fn start(&self, job: Job, slot: jiff::Timestamp, tx: mpsc::Sender<Finished>) -> Running {
        let started = jiff::Timestamp::now();
        self.record(job, |r| {
            r.last_slot = Some(slot);
            r.last_started = Some(started);
        });
        tracing::info!(job = job.name(), %slot, "job started");
        let abandon = Arc::new(AtomicBool::new(false));
        let (config, path, flag) = (self.config.clone(), self.config_path.clone(), abandon.clone());
        let spawned = std::thread::Builder::new().name(job.name().to_owned()).spawn(move || {
            let span = tracing::info_span!("job", job = job.name());
            let _enter = span.enter();
            let clock = Instant::now();
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| jobs::run(job, &config, &path, &flag)));
            let locked = matches!(outcome, Ok(Err(Error::BackupLocked { .. })));
            let reason = match &outcome {
                Ok(Err(Error::ChecksFailed { failed, .. })) => crate::alert::check_reason(failed),
                _ => String::new(),
            };
            let result = match outcome {
                Ok(Ok(summary)) => Ok(summary),
                Ok(Err(e)) => Err(e.to_string()),
                Err(panic) => Err(format!("the job panicked: {}", panic_text(panic.as_ref()))),
            };
            let _ = tx.blocking_send(Finished { job, started, elapsed: clock.elapsed(), result, locked, reason });
        });
        if let Err(e) = spawned {
            tracing::error!(job = job.name(), error = %e, "cannot start a thread for the job");
        }
        Running { job, slot, abandon }
    }

    /// A slot came while the lane's previous run is still going: skip it, log it, count it.
    fn missed(&self, job: Job, slot: jiff::Timestamp, busy: &Running) {
        tracing::warn!(
            job = job.name(),
            %slot,
            running = busy.job.name(),
            running_slot = %busy.slot,
            "slot skipped: {} is still running",
            busy.job.name()
        );
        self.record(job, |r| {
            r.last_slot = Some(slot);
            r.missed_total += 1;
        });
    }

    /// Record a finished run, log it, and alert on it.
    fn finished(&self, done: Finished) {
        let Finished { job, started, elapsed, result, locked, reason } = done;
        let finished = jiff::Timestamp::now();
        let seconds = elapsed.as_secs_f64();
        // Another base backup holding the lock (one started by hand) makes a skipped slot, not a failure: the next
        // slot tries again; there is no retry loop.
        self.record(job, |r| {
            r.last_started = Some(started);
            r.last_finished = Some(finished);
            r.last_duration_seconds = Some(seconds);
            match &result {
                Ok(_) => {
                    r.last_outcome = Some(Outcome::Succeeded);
                    r.last_error = None;
                    r.last_success = Some(finished);
                    r.succeeded_total += 1;
                }
                Err(_) if locked => r.missed_total += 1,
                Err(e) => {
                    r.last_outcome = Some(Outcome::Failed);
                    r.last_error = Some(e.clone());
                    r.failed_total += 1;
                }
            }
        });
        match &result {
            Ok(summary) => tracing::info!(job = job.name(), seconds, "job succeeded: {summary}"),
            Err(e) if locked => tracing::warn!(job = job.name(), "slot skipped: {e}"),
            Err(e) => tracing::error!(job = job.name(), seconds, "job failed: {e}"),
        }
        if !locked {
            self.alert_outcome(job, &result, reason);
        }
    }

    /// Update the job's record; a record that cannot be written is logged, never fatal to the daemon.
    fn record(&self, job: Job, change: impl FnOnce(&mut state::JobRecord)) {
        let updated = self
            .state
            .update(state::JOBS, |s: &mut JobsState| change(s.jobs.entry(job.name().to_owned()).or_default()));
        if let Err(e) = updated {
            tracing::error!(job = job.name(), error = %e, "cannot update the jobs record");
        }
    }

    /// Raise or clear the job's alert condition (and, with `[alerts] notify_success`, report a success), on a
    /// task of its own: a receiver that is slow or down delays nothing.
    fn alert_outcome(&self, job: Job, result: &Result<String, String>, reason: String) {
        if !self.alerter.is_configured() {
            return;
        }
        let (firing, summary, detail) = match result {
            Ok(summary) => (false, format!("scheduled job {job} succeeded"), summary.clone()),
            Err(e) => (true, format!("scheduled job {job} failed"), e.clone()),
        };
        let condition =
            crate::alert::Condition { key: job.alert_key(), firing, summary: summary.clone(), detail, reason };
        let success = !firing && self.alerter.notify_success();
        let alerter = self.alerter.clone();
        tokio::spawn(async move {
            alerter.update(std::slice::from_ref(&condition), jiff::Timestamp::now()).await;
            if success {
                alerter.event(&condition.key, &summary, &condition.detail).await;
            }
        });
    }

    /// Evaluate the health conditions (wal-push failing, the archive behind, the newest backup too old) and
    /// alert on them, on a task of its own; skipped while the previous evaluation still runs.
    fn health(&self) {
        if !self.alerter.is_configured() || self.health_busy.swap(true, Ordering::SeqCst) {
            return;
        }
        let (config, alerter, busy) = (self.config.clone(), self.alerter.clone(), self.health_busy.clone());
        tokio::spawn(async move {
            match crate::alert::health::current(&config).await {
                Ok(conditions) => {
                    alerter.update(&conditions, jiff::Timestamp::now()).await;
                }
                // Unreachable storage is what check and verify report; the backup-age condition keeps its state.
                Err(e) => tracing::warn!(error = %e, "health alerts: cannot list the backups"),
            }
            busy.store(false, Ordering::SeqCst);
        });
    }

    /// Stop: let running jobs finish within the grace period, then abandon them.
    async fn shutdown(
        &self,
        mut running: BTreeMap<&'static str, Running>,
        mut rx: mpsc::Receiver<Finished>,
        watchdog: Option<Duration>,
    ) {
        let grace = self.config.schedule.grace_period.0;
        notify(&[sd_notify::NotifyState::Stopping]);
        if !running.is_empty() {
            let names: Vec<&str> = running.values().map(|r| r.job.name()).collect();
            tracing::info!(jobs = ?names, grace_seconds = grace.as_secs(), "waiting for running jobs to finish");
        }
        let deadline = tokio::time::Instant::now() + grace;
        let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
        while !running.is_empty() {
            tokio::select! {
                Some(done) = rx.recv() => { running.remove(done.job.lane()); self.finished(done); }
                _ = tokio::time::sleep_until(deadline) => break,
                _ = watchdog_tick.tick(), if watchdog.is_some() => notify(&[sd_notify::NotifyState::Watchdog]),
            }
        }
        if running.is_empty() {
            tracing::info!("scheduler stopped");
            return;
        }
        for r in running.values() {
            r.abandon.store(true, Ordering::SeqCst);
        }
        // Only a drill has something to undo (its server, its directory); the others end with the process.
        let wait = if running.values().any(|r| r.job == Job::Drill) { ABANDON_WAIT } else { Duration::ZERO };
        let cleanup = tokio::time::Instant::now() + wait;
        while !running.is_empty() {
            tokio::select! {
                Some(done) = rx.recv() => {
                    running.remove(done.job.lane());
                    if done.result.is_ok() {
                        // It finished in the moment between the grace period's end and now: a real success.
                        self.finished(done);
                    } else {
                        tracing::warn!(job = done.job.name(), "job stopped after the grace period");
                        self.abandoned(done.job, done.started);
                    }
                }
                _ = tokio::time::sleep_until(cleanup) => break,
            }
        }
        for r in running.values() {
            tracing::warn!(job = r.job.name(), slot = %r.slot, grace_seconds = grace.as_secs(), "job abandoned: it did not finish within the grace period");
            self.abandoned(r.job, r.slot);
        }
        tracing::info!("scheduler stopped");
    }

    fn abandoned(&self, job: Job, started: jiff::Timestamp) {
        let now = jiff::Timestamp::now();
        self.record(job, |r| {
            r.last_outcome = Some(Outcome::Abandoned);
            r.last_finished = Some(now);
            r.last_error = Some(format!("abandoned at shutdown (started {started})"));
        });
    }
}

/// Time from `now` until `at`, zero if it has passed.
fn duration_until(now: jiff::Timestamp, at: jiff::Timestamp) -> Duration {
    let d = at.duration_since(now);
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}
