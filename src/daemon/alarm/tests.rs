//! The alarm against tokio-cron-scheduler: the real scheduler, over a job
//! store that can refuse or never answer, to see what the loop is told.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use tokio::sync::{mpsc, watch};
use tokio_cron_scheduler::job::job_data::{JobAndNextTick, JobStoredData};
use tokio_cron_scheduler::store::{DataStore, InitStore};
use tokio_cron_scheduler::{JobScheduler, JobSchedulerError};
use uuid::Uuid;

use super::{one_shot_delay, Alarm};
use crate::daemon::readiness::publish_schedule;
use crate::daemon::testing::{at, once_at};
use crate::daemon::ticker::{Ticker, MAX_SLEEP};
use crate::metrics::Metrics;

#[test]
fn a_one_shot_delay_never_makes_the_scheduler_fire_before_the_tick() {
    // The scheduler's due time: the current whole second plus the
    // delay's whole seconds.
    let due = |tick: &str, now: &str| {
        let now = at(now);
        let delay = one_shot_delay(at(tick), now);
        now.trunc_subsecs(0) + chrono::Duration::seconds(delay.as_secs() as i64)
    };
    assert_eq!(
        due("2030-01-01T10:00:05Z", "2030-01-01T10:00:03.900Z"),
        at("2030-01-01T10:00:05Z"),
        "a plain delay (1.1 s) would be due at :04"
    );
    assert_eq!(
        due("2030-01-01T10:00:05Z", "2030-01-01T10:00:03Z"),
        at("2030-01-01T10:00:05Z")
    );
    assert_eq!(
        due("2030-01-01T10:00:05.500Z", "2030-01-01T10:00:03.200Z"),
        at("2030-01-01T10:00:06Z")
    );
    assert_eq!(
        one_shot_delay(at("2030-01-01T10:00:05Z"), at("2030-01-01T10:00:07Z")),
        Duration::ZERO,
        "a tick already past: at once"
    );
}

/// What the scheduler asked of [`TestStore`], and how it should answer.
#[derive(Clone, Default)]
struct Probe {
    refuse: Arc<std::sync::atomic::AtomicBool>,
    hang: Arc<std::sync::atomic::AtomicBool>,
    ops: Arc<std::sync::Mutex<Vec<(&'static str, Uuid)>>>,
}

impl Probe {
    fn ops(&self) -> Vec<(&'static str, Uuid)> {
        self.ops.lock().unwrap().clone()
    }

    fn adds(&self) -> usize {
        self.ops().iter().filter(|(op, _)| *op == "add").count()
    }

    fn position(&self, op: (&'static str, Uuid)) -> Option<usize> {
        self.ops().iter().position(|o| *o == op)
    }

    /// Waits (bounded) for the scheduler to delete `job`.
    async fn deleted(&self, job: Uuid) -> usize {
        for _ in 0..100 {
            if let Some(at) = self.position(("delete", job)) {
                return at;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{job} never deleted: {:?}", self.ops());
    }
}

/// The scheduler's own in-memory store, except that it can refuse or
/// never answer an add, as a failing store does: the scheduler's real
/// `add` then fails or hangs.
struct TestStore {
    inner: tokio_cron_scheduler::SimpleMetadataStore,
    probe: Probe,
}

type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, JobSchedulerError>> + Send>>;

impl DataStore<JobStoredData> for TestStore {
    fn get(&mut self, id: Uuid) -> StoreFuture<Option<JobStoredData>> {
        self.inner.get(id)
    }

    fn add_or_update(&mut self, data: JobStoredData) -> StoreFuture<()> {
        let id: Uuid = data.id.as_ref().unwrap().into();
        self.probe.ops.lock().unwrap().push(("add", id));
        if self.probe.hang.load(std::sync::atomic::Ordering::SeqCst) {
            return Box::pin(std::future::pending());
        }
        if self.probe.refuse.load(std::sync::atomic::Ordering::SeqCst) {
            return Box::pin(std::future::ready(Err(JobSchedulerError::SaveJob)));
        }
        self.inner.add_or_update(data)
    }

    fn delete(&mut self, guid: Uuid) -> StoreFuture<()> {
        self.probe.ops.lock().unwrap().push(("delete", guid));
        self.inner.delete(guid)
    }
}

impl InitStore for TestStore {
    fn init(&mut self) -> StoreFuture<()> {
        self.inner.init()
    }

    fn inited(&mut self) -> StoreFuture<bool> {
        self.inner.inited()
    }
}

impl tokio_cron_scheduler::MetaDataStorage for TestStore {
    fn list_next_ticks(&mut self) -> StoreFuture<Vec<JobAndNextTick>> {
        self.inner.list_next_ticks()
    }

    fn set_next_and_last_tick(
        &mut self,
        guid: Uuid,
        next_tick: Option<DateTime<Utc>>,
        last_tick: Option<DateTime<Utc>>,
    ) -> StoreFuture<()> {
        self.inner
            .set_next_and_last_tick(guid, next_tick, last_tick)
    }

    fn time_till_next_job(&mut self) -> StoreFuture<Option<Duration>> {
        self.inner.time_till_next_job()
    }
}

async fn alarm_on(probe: &Probe, timeout: Duration) -> Alarm {
    let scheduler = JobScheduler::new_with_storage_and_code(
        Box::new(TestStore {
            inner: tokio_cron_scheduler::SimpleMetadataStore::default(),
            probe: probe.clone(),
        }),
        Box::<tokio_cron_scheduler::SimpleNotificationStore>::default(),
        Box::<tokio_cron_scheduler::SimpleJobCode>::default(),
        Box::<tokio_cron_scheduler::SimpleNotificationCode>::default(),
        200,
    )
    .await
    .unwrap();
    // Alarms for far-off ticks never ring in these tests.
    let (rings, _) = mpsc::channel(8);
    Alarm::start(scheduler, rings, timeout).await.unwrap()
}

#[tokio::test]
async fn a_new_alarm_is_added_before_the_old_one_is_removed() {
    let probe = Probe::default();
    let mut alarm = alarm_on(&probe, Duration::from_secs(5)).await;
    let first_tick = at("2099-01-01T00:00:00Z");
    let second_tick = at("2099-01-02T00:00:00Z");
    alarm.follow(Some(first_tick), Instant::now()).await;
    let first = alarm.set.unwrap().job;
    assert!(alarm.is_set_for(Some(first_tick)));
    // The same plan again: nothing to do.
    alarm.follow(Some(first_tick), Instant::now()).await;
    assert_eq!(probe.adds(), 1);

    alarm.follow(Some(second_tick), Instant::now()).await;
    let second = alarm.set.unwrap().job;
    assert!(alarm.is_set_for(Some(second_tick)));
    let removed = probe.deleted(first).await;
    assert!(
        probe.position(("add", second)).unwrap() < removed,
        "{:?}",
        probe.ops()
    );
    assert_eq!(
        probe.ops(),
        [("add", first), ("add", second), ("delete", first)]
    );

    // No next tick: the alarm goes.
    alarm.follow(None, Instant::now()).await;
    assert!(!alarm.is_set_for(Some(second_tick)));
    probe.deleted(second).await;
}

#[tokio::test]
async fn a_refused_alarm_keeps_the_old_one_is_reported_and_retried_with_backoff() {
    let probe = Probe::default();
    let mut alarm = alarm_on(&probe, Duration::from_secs(5)).await;
    let metrics = Metrics::new().unwrap();
    let (unscheduled_tx, unscheduled) = watch::channel(None);
    let armed = |metrics: &Metrics| {
        metrics.render().lines().find_map(|line| {
            line.strip_prefix("token_sweeper_schedule_armed ")
                .map(|value| value.parse::<f64>().unwrap())
        })
    };
    let mut ticker = Ticker::new(once_at("2099-01-01T00:00:00Z"), Utc::now());
    let start = Instant::now();
    alarm.follow(ticker.next(), start).await;
    let old = alarm.set.unwrap().job;
    publish_schedule(&ticker, &alarm, &metrics, &unscheduled_tx, None);
    assert_eq!(armed(&metrics), Some(1.0));

    // A reload to a new schedule; the scheduler refuses its alarm.
    probe
        .refuse
        .store(true, std::sync::atomic::Ordering::SeqCst);
    ticker
        .reschedule(once_at("2099-01-02T00:00:00Z"), Utc::now())
        .unwrap();
    alarm.follow(ticker.next(), start).await;
    assert!(!alarm.is_set_for(ticker.next()));
    assert_eq!(alarm.set.unwrap().job, old, "the old alarm is kept");
    publish_schedule(&ticker, &alarm, &metrics, &unscheduled_tx, None);
    assert_eq!(armed(&metrics), Some(0.0));
    let reason = unscheduled.borrow().clone().unwrap();
    assert!(
        reason.starts_with(
            "the scheduler did not take the alarm for the tick at 2099-01-02 00:00:00 UTC: SaveJob;"
        ),
        "{reason}"
    );
    assert_eq!(probe.adds(), 2);

    // Tried again after 1 s, then 2 s, 4 s ... at most a minute apart.
    let mut now = start;
    for backoff in [1, 2, 4, 8, 16, 32, 60, 60] {
        let retry_at = now + Duration::from_secs(backoff);
        let adds = probe.adds();
        alarm
            .follow(ticker.next(), retry_at - Duration::from_millis(1))
            .await;
        assert_eq!(probe.adds(), adds, "not before {backoff} s");
        alarm.follow(ticker.next(), retry_at).await;
        assert_eq!(probe.adds(), adds + 1, "after {backoff} s");
        now = retry_at;
    }
    assert!(probe.position(("delete", old)).is_none());

    // The scheduler takes it again: set, reported, the old one removed.
    probe
        .refuse
        .store(false, std::sync::atomic::Ordering::SeqCst);
    alarm
        .follow(ticker.next(), now + Duration::from_secs(60))
        .await;
    assert!(alarm.is_set_for(ticker.next()));
    let new = alarm.set.unwrap().job;
    publish_schedule(&ticker, &alarm, &metrics, &unscheduled_tx, None);
    assert_eq!(armed(&metrics), Some(1.0));
    assert_eq!(*unscheduled.borrow(), None);
    let removed = probe.deleted(old).await;
    assert!(probe.position(("add", new)).unwrap() < removed);
}

#[tokio::test]
async fn an_add_the_scheduler_never_answers_does_not_hold_up_the_loop() {
    let probe = Probe::default();
    probe.hang.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut alarm = alarm_on(&probe, Duration::from_millis(200)).await;
    let tick = at("2099-01-01T00:00:00Z");
    tokio::time::timeout(
        Duration::from_secs(10),
        alarm.follow(Some(tick), Instant::now()),
    )
    .await
    .expect("follow returns though the scheduler never answers");
    assert!(!alarm.is_set_for(Some(tick)));
    let reason = alarm.failure_reason().unwrap();
    assert!(reason.contains(": no answer within 200ms;"), "{reason}");
}

#[tokio::test]
async fn the_scheduler_rings_the_alarm_at_its_tick_never_before() {
    let (rings, mut rung) = mpsc::channel(8);
    let mut alarm = Alarm::start(JobScheduler::new().await.unwrap(), rings, MAX_SLEEP)
        .await
        .unwrap();
    // Two seconds after the start of this second: a plain delay would
    // be due a second early.
    let tick = Utc::now().trunc_subsecs(0) + chrono::Duration::seconds(2);
    alarm.follow(Some(tick), Instant::now()).await;
    let job = alarm.set.unwrap().job;
    let rang = tokio::time::timeout(Duration::from_secs(10), rung.recv())
        .await
        .expect("the alarm rings")
        .unwrap();
    let now = Utc::now();
    assert_eq!(rang, job);
    assert!(now >= tick, "rang at {now}, before its tick {tick}");
    alarm.rang(job);
    assert!(!alarm.is_set_for(Some(tick)), "spent once it rang");
    alarm.stop().await;
}
