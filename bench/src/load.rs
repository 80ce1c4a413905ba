//! The two shapes of load every measure uses, whatever it sends: a closed loop (a number of
//! clients, each sending its next request once the last is answered: throughput) and an open
//! loop (one request every `1/rate` s whatever the answers do: latency at an offered rate).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// p50 and p99 of latencies in milliseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Percentiles {
    pub p50: f64,
    pub p99: f64,
}

pub(crate) fn percentiles(mut samples: Vec<f64>) -> Option<Percentiles> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Some(Percentiles {
        p50: at(0.50),
        p99: at(0.99),
    })
}

/// What an open loop measured: the latencies of the requests sent after the warm-up that
/// succeeded, and how many of them completed per second.
#[derive(Debug, Clone, Default)]
pub(crate) struct Latency {
    pub(crate) percentiles: Option<Percentiles>,
    pub(crate) offered_per_s: u32,
    pub(crate) completed_per_s: f64,
    /// The p99 of the requests sent in each second of the measure, in order (`None`: none of
    /// that second's was answered): whether the tail is spread over the run or made by a few
    /// moments (a snapshot, a pause).
    pub(crate) p99_by_second: Vec<Option<f64>>,
}

/// The p99 of each of the first `seconds` seconds' latencies, `samples` being (seconds into the
/// measure the request was sent, its latency in ms). A request sent after the last second (the
/// loop's last tick may fall just past it) is left out rather than make a second of its own.
pub(crate) fn p99_by_second(samples: &[(f64, f64)], seconds: usize) -> Vec<Option<f64>> {
    let mut by_second: Vec<Vec<f64>> = vec![Vec::new(); seconds];
    for &(at, ms) in samples {
        if let Some(second) = by_second.get_mut(at.max(0.0) as usize) {
            second.push(ms);
        }
    }
    by_second
        .into_iter()
        .map(|second| percentiles(second).map(|p| p.p99))
        .collect()
}

/// `clients` concurrent clients for `duration`, each calling `request(client, n)` (its `n`th
/// request) again as soon as the last one returned. Successes per second, and the failures.
pub(crate) async fn closed_loop<F, Fut>(
    clients: usize,
    duration: Duration,
    request: F,
) -> anyhow::Result<(f64, usize)>
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let succeeded = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (request, succeeded, failed) = (request.clone(), succeeded.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while started.elapsed() < duration {
                let counter = if request(client, n).await {
                    &succeeded
                } else {
                    &failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok((
        succeeded.load(Ordering::Relaxed) as f64 / elapsed,
        failed.load(Ordering::Relaxed),
    ))
}

/// Open loop: `request(n)` every `1/rate` s for `warm_up + duration`, each in a task of its own
/// (a slow answer never delays the next request). Only requests sent after `warm_up` are
/// measured, from just before `request(n)` (which may send at once, or only when its future
/// runs) until its future returned `true`.
pub(crate) async fn open_loop<F, Fut>(
    rate: u32,
    warm_up: Duration,
    duration: Duration,
    request: F,
) -> anyhow::Result<Latency>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let began = Instant::now();
    let measured_from = began + warm_up;
    let mut tasks = Vec::new();
    let mut n = 0usize;
    while began.elapsed() < warm_up + duration {
        ticker.tick().await;
        let sent = Instant::now();
        let measured = sent >= measured_from;
        let answered = request(n);
        n += 1;
        tasks.push(tokio::spawn(async move {
            let at = sent.saturating_duration_since(measured_from).as_secs_f64();
            (answered.await && measured).then(|| (at, sent.elapsed().as_secs_f64() * 1000.0))
        }));
    }
    let mut samples = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Some(sample) = task.await? {
            samples.push(sample);
        }
    }
    let completed_per_s = samples.len() as f64 / measured_from.elapsed().as_secs_f64();
    Ok(Latency {
        p99_by_second: p99_by_second(&samples, duration.as_secs_f64().ceil() as usize),
        percentiles: percentiles(samples.into_iter().map(|(_, ms)| ms).collect()),
        offered_per_s: rate,
        completed_per_s,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{closed_loop, open_loop, p99_by_second, percentiles};

    #[test]
    fn percentiles_are_read_from_the_sorted_samples() {
        let samples = (1..=100).rev().map(f64::from).collect();
        let p = percentiles(samples).unwrap();
        assert_eq!((p.p50, p.p99), (51.0, 99.0));
        assert!(percentiles(Vec::new()).is_none());
    }

    #[test]
    fn the_tail_of_each_second_is_its_own() {
        let mut samples: Vec<(f64, f64)> = (0..100).map(|n| (f64::from(n) / 100.0, 1.0)).collect();
        samples.extend([(2.5, 200.0), (2.7, 200.0)]);
        samples.extend((0..98).map(|n| (2.0 + f64::from(n) / 100.0, 2.0)));
        // Second 1 answered nothing; a request sent as the measure ended counts in none.
        samples.push((3.0, 900.0));
        assert_eq!(
            p99_by_second(&samples, 3),
            vec![Some(1.0), None, Some(200.0)]
        );
        assert_eq!(p99_by_second(&[], 2), vec![None, None]);
    }

    #[tokio::test]
    async fn a_closed_loop_counts_failed_requests_apart_from_answered_ones() {
        let (per_s, failed) = closed_loop(2, Duration::from_millis(50), |_, n| async move {
            tokio::task::yield_now().await;
            n % 2 == 1
        })
        .await
        .unwrap();
        assert!(per_s > 0.0 && failed > 0, "{per_s} {failed}");
    }

    #[tokio::test]
    async fn an_open_loop_measures_only_answered_requests() {
        let failing = open_loop(1000, Duration::ZERO, Duration::from_millis(30), |_| async {
            false
        })
        .await
        .unwrap();
        assert!(failing.percentiles.is_none());
        assert_eq!(failing.completed_per_s, 0.0);
    }
}
