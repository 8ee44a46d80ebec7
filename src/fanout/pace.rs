//! Spreads one tenant's socket writes over time at its `deliveries_per_second` quota.
//!
//! The quota admits a write by what it will deliver (`functions::admit`), so over a second a
//! tenant delivers no more than its rate. Admitted, one event to a thousand subscribers is
//! still a thousand socket writes at once: on a shared core that burst is tens of
//! milliseconds during which another tenant's deliveries wait their turn. Paced, the same
//! thousand writes go out at the quota's rate, a few at a time, and take the core in slices
//! too small for anyone else to notice: a tenant's bursts cost others about what its average
//! does.
//!
//! The pace is a virtual clock (GCRA, as in `governor`): each frame moves it on by one
//! interval (a second over the rate), and a write may start once the clock is no more than
//! [`WINDOW`] ahead of now. A writer reserves its place before it waits, so writers waiting
//! together leave one after another, not all at once. A write of several queued frames is
//! charged for each.
//!
//! The pace spreads bursts; it is not the limit (admission is). Some frames reach sockets
//! without being charged to the quota (a join's snapshot, events from other nodes over Redis,
//! heartbeats), so the clock never runs further ahead than the quota's burst over its rate
//! (a second for a quota given as a plain number): past that, a frame waits that long and
//! no longer, and the frames go out as fast as they come.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// How far ahead of its rate a tenant may write: 10 ms of its quota, and after a pause as
/// much again of credit. Short enough that its writes stay slices of the core, long enough
/// that frames coming evenly at the rate do not wait.
pub const WINDOW: Duration = Duration::from_millis(10);
/// The window holds at least this many frames (a round of fan-out turns): at a low rate a
/// small burst goes at once, and the quota's own bucket is what limits it.
pub const MIN_WINDOW_FRAMES: u64 = 64;

/// One tenant's pace. Lock-free: every client socket of the tenant, on every runtime thread,
/// reserves on it once per write.
pub struct Pace {
    /// What the clock counts from.
    base: Instant,
    /// Nanoseconds one frame takes at the rate; 0: not paced.
    interval: AtomicU64,
    /// Nanoseconds the clock may run ahead of now and still let a frame go.
    window: AtomicU64,
    /// Nanoseconds the clock may run ahead of now.
    most_ahead: AtomicU64,
    /// The clock, in nanoseconds since `base`: the writes reserved so far have used the rate
    /// up to here.
    at: AtomicU64,
}

impl Default for Pace {
    fn default() -> Self {
        Pace {
            base: Instant::now(),
            interval: AtomicU64::new(0),
            window: AtomicU64::new(0),
            most_ahead: AtomicU64::new(0),
            at: AtomicU64::new(0),
        }
    }
}

impl Pace {
    /// Paces at `per_second` frames with the clock at most `burst` frames ahead, or not at
    /// all. A change starts the clock again from now: a backlog reserved at the old rate
    /// does not hold frames back at the new one.
    pub fn set(&self, rate: Option<(u32, u32)>) {
        let (interval, window, most_ahead) = match rate.filter(|(r, _)| *r > 0) {
            None => (0, 0, 0),
            Some((per_second, burst)) => {
                let interval = 1_000_000_000 / u64::from(per_second);
                let window = nanos(WINDOW).max(interval.saturating_mul(MIN_WINDOW_FRAMES));
                let most = interval.saturating_mul(u64::from(burst));
                (interval, window, most.max(window.saturating_mul(2)))
            }
        };
        let unchanged = self.interval.load(Ordering::Relaxed) == interval
            && self.window.load(Ordering::Relaxed) == window
            && self.most_ahead.load(Ordering::Relaxed) == most_ahead;
        if unchanged {
            return;
        }
        self.window.store(window, Ordering::Relaxed);
        self.most_ahead.store(most_ahead, Ordering::Relaxed);
        self.at.store(self.ns(Instant::now()), Ordering::Relaxed);
        self.interval.store(interval, Ordering::Relaxed);
    }

    /// Reserves one frame and returns when it may be written: None for now. The writer
    /// waits for that time without a turn, and reads and pings meanwhile.
    pub fn reserve(&self) -> Option<Instant> {
        if self.interval.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.reserve_at(Instant::now())
    }

    fn reserve_at(&self, now: Instant) -> Option<Instant> {
        let interval = self.interval.load(Ordering::Relaxed);
        if interval == 0 {
            return None;
        }
        let now = self.ns(now);
        let window = self.window.load(Ordering::Relaxed);
        let most = now.saturating_add(self.most_ahead.load(Ordering::Relaxed));
        let mut start = 0;
        let _ = self
            .at
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |at| {
                // An idle tenant earns at most a window of credit.
                let at = at.max(now.saturating_sub(window));
                start = at.saturating_sub(window);
                Some(at.saturating_add(interval).min(most))
            });
        (start > now).then(|| self.base + Duration::from_nanos(start))
    }

    /// Counts `n` more frames written than were reserved.
    pub fn spent(&self, n: usize) {
        if n > 0 && self.interval.load(Ordering::Relaxed) != 0 {
            self.spent_at(n, Instant::now());
        }
    }

    fn spent_at(&self, n: usize, now: Instant) {
        let interval = self.interval.load(Ordering::Relaxed);
        let most = self
            .ns(now)
            .saturating_add(self.most_ahead.load(Ordering::Relaxed));
        let cost = interval.saturating_mul(n as u64);
        let _ = self
            .at
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |at| {
                Some(at.saturating_add(cost).min(most.max(at)))
            });
    }

    fn ns(&self, t: Instant) -> u64 {
        nanos(t.saturating_duration_since(self.base))
    }
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reserves `n` frames at `now` and returns how many may go at once.
    fn at_once(pace: &Pace, now: Instant, n: usize) -> usize {
        (0..n).filter(|_| pace.reserve_at(now).is_none()).count()
    }

    /// A second from now: later than the clock's start, as a socket's `now` always is.
    fn later() -> Instant {
        Instant::now() + Duration::from_secs(1)
    }

    /// Frames that go at once from idle: the credit and the window, a window's frames each,
    /// and the one exactly a window ahead.
    fn idle_burst(window_frames: usize) -> usize {
        2 * window_frames + 1
    }

    #[test]
    fn no_quota_never_waits() {
        let pace = Pace::default();
        assert_eq!(at_once(&pace, later(), 100_000), 100_000);
        pace.set(Some((1000, 1000)));
        pace.set(None);
        assert_eq!(at_once(&pace, later(), 100_000), 100_000);
    }

    #[test]
    fn a_burst_goes_a_window_at_a_time() {
        let pace = Pace::default();
        // 10,000 a second: 10 ms is 100 frames, more than the least window.
        pace.set(Some((10_000, 10_000)));
        let now = later();
        assert_eq!(at_once(&pace, now, idle_burst(100)), idle_burst(100));
        let next = pace.reserve_at(now).expect("one past the window waits");
        assert_eq!(next - now, Duration::from_micros(100));
        // The thousandth frame of the burst goes at the rate after the first 201.
        let last = (0..798)
            .filter_map(|_| pace.reserve_at(now))
            .last()
            .unwrap();
        assert_eq!(last - now, Duration::from_micros(100 * 799));
    }

    #[test]
    fn at_a_low_rate_the_window_is_a_round_of_turns() {
        let pace = Pace::default();
        // 1,000 a second: 10 ms would be 10 frames; the window holds 64.
        pace.set(Some((1000, 1000)));
        let now = later();
        assert_eq!(at_once(&pace, now, idle_burst(64)), idle_burst(64));
        assert!(pace.reserve_at(now).is_some());
    }

    #[test]
    fn waiting_writers_leave_one_interval_apart() {
        let pace = Pace::default();
        pace.set(Some((1000, 1000)));
        let now = later();
        at_once(&pace, now, idle_burst(64));
        let starts: Vec<_> = (0..3).map(|_| pace.reserve_at(now).unwrap()).collect();
        assert_eq!(starts[0] - now, Duration::from_millis(1));
        assert_eq!(starts[1] - starts[0], Duration::from_millis(1));
        assert_eq!(starts[2] - starts[1], Duration::from_millis(1));
    }

    #[test]
    fn frames_written_beyond_the_reservation_count() {
        let pace = Pace::default();
        pace.set(Some((1000, 1000)));
        let now = later();
        // One reservation carried a batch of 128: only one more goes now, the last of the
        // idle burst.
        assert!(pace.reserve_at(now).is_none());
        pace.spent_at(127, now);
        assert!(
            pace.reserve_at(now).is_none(),
            "the idle burst's last frame"
        );
        assert!(pace.reserve_at(now).is_some());
    }

    #[test]
    fn no_frame_waits_longer_than_the_burst() {
        let pace = Pace::default();
        // 1,000 a second, bursts of 1,000: the clock runs at most a second ahead, and a
        // frame waits at most that less the window (64 ms).
        pace.set(Some((1000, 1000)));
        let now = later();
        let waits: Vec<_> = (0..2000).filter_map(|_| pace.reserve_at(now)).collect();
        let longest = waits.iter().map(|at| *at - now).max().unwrap();
        assert_eq!(longest, Duration::from_millis(1000 - 64));
        // Frame 1,064 (from 0) is the first to wait that long; all after it wait no longer.
        let first_waiting = idle_burst(64);
        assert_eq!(waits[1064 - first_waiting] - now, longest);
        assert!(waits[1063 - first_waiting] - now < longest);
        assert_eq!(waits.len(), 2000 - first_waiting);
    }

    #[test]
    fn a_new_rate_starts_the_clock_again() {
        let pace = Pace::default();
        pace.set(Some((10, 10)));
        let now = Instant::now();
        assert!((0..300).filter_map(|_| pace.reserve_at(now)).count() > 100);
        // Raised: the backlog reserved at 10 a second no longer holds frames back.
        pace.set(Some((1000, 1000)));
        assert!(pace.reserve_at(Instant::now()).is_none());
        // The same rate set again changes nothing.
        (0..200).for_each(|_| {
            let _ = pace.reserve_at(Instant::now());
        });
        pace.set(Some((1000, 1000)));
        assert!(pace.reserve_at(Instant::now()).is_some());
    }

    #[test]
    fn a_tenant_at_its_rate_does_not_wait() {
        let pace = Pace::default();
        pace.set(Some((1000, 1000)));
        let start = later();
        // One frame every millisecond for a second, then the rate halved: no waits, and the
        // new interval applies from the next frame (the 200th of a burst at 2 ms: 142 ms).
        for ms in 0..1000 {
            assert!(pace.reserve_at(start + Duration::from_millis(ms)).is_none());
        }
        pace.set(Some((500, 500)));
        let now = start + Duration::from_millis(1000);
        let waited = (0..200)
            .filter_map(|_| pace.reserve_at(now))
            .last()
            .unwrap();
        assert_eq!(waited - now, Duration::from_millis(142));
    }
}
