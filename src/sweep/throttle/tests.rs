//! The throttle's pace, floor and "behind", on tokio's paused clock: a
//! simulated Redis where each step costs a fixed time, and probes fed by
//! the test.

use std::sync::{Arc, Mutex};

use super::*;

/// The simulated network: a round trip's part that is not Redis's time.
const NETWORK: Duration = Duration::from_micros(200);

/// The simulated Redis: a key costs this much of its time.
const PER_KEY: Duration = Duration::from_micros(10);

/// Runs `throttle` for `secs` of paused time, a probe of `probe_rtt` (if
/// any) every 10 ms beside it; returns the steps and the keys scanned.
async fn run_for(
    throttle: &mut Throttle<'_>,
    probes: Option<&mpsc::Sender<Duration>>,
    probe_rtt: Duration,
    secs: u64,
) -> (u64, u64) {
    let stop = CancellationToken::new();
    let end = Instant::now() + Duration::from_secs(secs);
    let before = throttle.swept;
    let mut next_probe = Instant::now();
    let mut probed = 0u64;
    let mut steps = 0;
    while Instant::now() < end {
        while let (true, Some(probes)) = (next_probe <= Instant::now(), probes) {
            // One probe in ten finds Redis free, as on a Redis busy with
            // others: its round trip is the network's alone.
            probed += 1;
            let rtt = if probed.is_multiple_of(10) {
                NETWORK
            } else {
                probe_rtt
            };
            let _ = probes.try_send(rtt);
            next_probe += probe::PROBE_EVERY;
        }
        assert!(!throttle.wait(&stop).await);
        let piece = throttle.piece(Step::Scan);
        let sent = Instant::now();
        let units = u32::try_from(piece).unwrap_or(u32::MAX);
        tokio::time::advance(NETWORK + PER_KEY * units).await;
        throttle.worked(sent, Step::Scan, piece, piece);
        throttle.sweeping(piece);
        throttle.scanned(None);
        steps += 1;
    }
    (steps, throttle.swept - before)
}

fn settings() -> SweepSettings {
    SweepSettings {
        throttle_target: Duration::from_micros(500),
        throttle_max_share_percent: 50,
        throttle_floor: 2000,
        ..SweepSettings::default()
    }
}

fn readings() -> (SweepProgress, Arc<Mutex<Vec<ThrottleReading>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let progress = SweepProgress::default().on_throttle(move |r| {
        sink.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(r.clone());
    });
    (progress, seen)
}

fn last(seen: &Mutex<Vec<ThrottleReading>>) -> ThrottleReading {
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    seen.last()
        .cloned()
        .unwrap_or_else(|| panic!("no reading yet"))
}

#[tokio::test(start_paused = true)]
async fn it_slows_down_when_the_probe_slows_and_speeds_up_when_it_recovers() {
    let (progress, seen) = readings();
    let settings = settings();
    let (probes, samples) = mpsc::channel(1024);
    let mut throttle = Throttle::new("n:1", &settings, None, &progress, samples);
    let (steps, idle) = run_for(&mut throttle, Some(&probes), NETWORK, 5).await;
    let reading = last(&seen);
    assert_eq!(reading.state, ThrottleState::FullSpeed);
    assert_eq!(reading.signal, Some(NETWORK));
    // Half of Redis's time, 10 us a key: 50,000 keys a second once the
    // first window (measuring, nothing sent) is over, in pieces that grow
    // to the budget of half the 500 us target (25 keys).
    let rate = idle as f64 / 4.75;
    assert!((45_000.0..=50_500.0).contains(&rate), "{rate} keys/s");
    assert_eq!(throttle.piece(Step::Scan), 25);
    assert!(steps > 8_000, "{steps} steps");

    // Other clients now wait 3 ms: the sweep backs off to its floor.
    let (_, loaded) = run_for(&mut throttle, Some(&probes), Duration::from_millis(3), 5).await;
    let reading = last(&seen);
    assert_eq!(reading.state, ThrottleState::Floor);
    assert!(reading.newly_throttled > Duration::ZERO);
    assert!(loaded < idle / 4, "{loaded} keys loaded, {idle} idle");
    // ... but never below the floor of 2000 keys a second.
    assert!(loaded >= 5 * 2000, "{loaded} keys");

    // Quiet again: back to full speed.
    let (_, recovered) = run_for(&mut throttle, Some(&probes), NETWORK, 10).await;
    assert_eq!(last(&seen).state, ThrottleState::FullSpeed);
    assert!(recovered > loaded * 2, "{recovered} keys");
    let throttled = throttle.end();
    assert!(throttled >= Duration::from_secs(4), "{throttled:?}");
    assert!(last(&seen).ended);
}

#[tokio::test(start_paused = true)]
async fn with_no_probe_answering_it_keeps_to_the_floor_and_finishes() {
    let (progress, seen) = readings();
    let settings = settings();
    let (probes, samples) = mpsc::channel(1);
    // The probe connection is gone: no sample ever arrives.
    drop(probes);
    let mut throttle = Throttle::new("n:1", &settings, None, &progress, samples);
    // Backing off from the start takes a few windows.
    run_for(&mut throttle, None, Duration::ZERO, 5).await;
    let (_, keys) = run_for(&mut throttle, None, Duration::ZERO, 10).await;
    assert_eq!(last(&seen).state, ThrottleState::Floor);
    let rate = keys as f64 / 10.0;
    assert!((2000.0..=2100.0).contains(&rate), "{rate} keys/s");
}

#[tokio::test(start_paused = true)]
async fn max_keys_per_second_caps_it_even_above_the_floor() {
    let (progress, _seen) = readings();
    let settings = SweepSettings {
        max_keys_per_second: 500,
        ..settings()
    };
    let (_probes, samples) = mpsc::channel(1);
    let mut throttle = Throttle::new("n:1", &settings, None, &progress, samples);
    let (_, keys) = run_for(&mut throttle, None, Duration::ZERO, 10).await;
    let rate = keys as f64 / 10.0;
    assert!((450.0..=520.0).contains(&rate), "{rate} keys/s");
}

#[tokio::test(start_paused = true)]
async fn it_reports_falling_behind_by_projection_and_by_running_late() {
    let (progress, seen) = readings();
    let settings = settings();
    let (_probes, samples) = mpsc::channel(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut throttle = Throttle::new("n:1", &settings, Some(deadline), &progress, samples);
    let stop = CancellationToken::new();
    // A tenth of the keyspace in 2 s: done in 20 s, past the 10 s period.
    tokio::time::advance(Duration::from_secs(2)).await;
    throttle.scanned(Some(0.1));
    assert!(!throttle.wait(&stop).await);
    assert!(last(&seen).behind);
    // Half in 2 s: done in 4 s, in time.
    throttle.scanned(Some(0.5));
    tokio::time::advance(Duration::from_millis(300)).await;
    assert!(!throttle.wait(&stop).await);
    assert!(!last(&seen).behind);
    // Still running at the end of the period: behind, also as it ends.
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(!throttle.wait(&stop).await);
    assert!(last(&seen).behind);
    throttle.end();
    let end = last(&seen);
    assert!(end.behind && end.ended);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_sweep_stops_waiting() {
    let (progress, _seen) = readings();
    let settings = SweepSettings {
        max_keys_per_second: 1,
        ..settings()
    };
    let (_probes, samples) = mpsc::channel(1);
    let mut throttle = Throttle::new("n:1", &settings, None, &progress, samples);
    throttle.sweeping(1_000_000);
    let stop = CancellationToken::new();
    stop.cancel();
    assert!(throttle.wait(&stop).await);
}

#[test]
fn the_cursor_says_how_far_a_scan_is() {
    assert_eq!(covered_by(0), 1.0);
    // Table of 8 buckets: cursors 0, 4, 2, 6, 1, 5, 3, 7 in that order.
    let order = [4u64, 2, 6, 1, 5, 3, 7];
    let covered: Vec<f64> = order.iter().map(|&c| covered_by(c)).collect();
    assert!(covered.windows(2).all(|w| w[0] < w[1]), "{covered:?}");
    assert_eq!(covered_by(4), 1.0 / 8.0);
    assert_eq!(covered_by(7), 7.0 / 8.0);
}
