//! When the key agent renews, and how it waits when the keyserver does not answer.
//!
//! A certificate is renewed when what remains of it reaches a margin: a third of its
//! life, or the outage budget if that is longer (30-day certificates and a 10-day budget:
//! renewed at day 20, so the keyserver may be away for ten days before anything expires).
//! The deadline moves by up to a tenth of that third either way, from a per-node seed, so a
//! fleet enrolled in one hour does not come back in one minute (the kubelet renews between
//! 70 and 90 % of a certificate's life, SPIRE at half ±10 %).
//!
//! Times are Unix seconds on the wall clock, never a monotonic clock: a node suspended for a
//! week must see a week gone. The agent sleeps at most [`MAX_SLEEP`] between looks.
//! Failures back off exponentially from [`BACKOFF_BASE`] to [`BACKOFF_CAP`] with full jitter.

use rand_core::RngCore;

/// The longest the agent sleeps before it looks at the clock and its certificates again.
pub const MAX_SLEEP: u64 = 5 * 60;
/// The first retry delay after a failure, before jitter.
pub const BACKOFF_BASE: u64 = 2;
/// The longest retry delay.
pub const BACKOFF_CAP: u64 = 5 * 60;

/// A certificate's validity, in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Not valid before.
    pub not_before: u64,
    /// Not valid after.
    pub not_after: u64,
}

impl Validity {
    /// Seconds from `not_before` to `not_after` (0 for a backwards validity).
    pub fn lifetime(&self) -> u64 {
        self.not_after.saturating_sub(self.not_before)
    }
}

/// When to renew a certificate of validity `v`, with an outage budget of `budget` seconds
/// and a jitter seed (any value; the same seed gives the same deadline).
///
/// The result lies in `[not_before, not_after]`.
pub fn renew_at(v: Validity, budget: u64, seed: u64) -> u64 {
    let life = v.lifetime();
    if life == 0 {
        return v.not_after;
    }
    let third = life / 3;
    let margin = third.max(budget).min(life);
    let base = v.not_after - margin;
    // A tenth of a third, either way: seed → [-spread, +spread].
    let spread = third / 10;
    let jitter = if spread == 0 {
        0
    } else {
        (seed % (2 * spread + 1)) as i128 - spread as i128
    };
    let at = base as i128 + jitter;
    at.clamp(v.not_before as i128, v.not_after as i128) as u64
}

/// What the agent should do about one certificate at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing until this time.
    At(u64),
    /// Renew now.
    Now,
    /// Renew now: the certificate has expired (or is not valid yet, after the clock moved
    /// back further than any backdate).
    Invalid,
}

/// Whether a certificate is due at `now`.
pub fn due(v: Validity, budget: u64, seed: u64, now: u64) -> Due {
    if now >= v.not_after || now < v.not_before {
        return Due::Invalid;
    }
    let at = renew_at(v, budget, seed);
    if now >= at {
        Due::Now
    } else {
        Due::At(at)
    }
}

/// When to wake next, given the earliest renewal deadline: never later than
/// [`MAX_SLEEP`] from now, so a clock that jumped (suspend, NTP) is noticed.
pub fn next_wake(now: u64, deadline: u64) -> u64 {
    deadline.clamp(now, now + MAX_SLEEP)
}

/// Retry delays after consecutive failures: `BACKOFF_BASE · 2ⁿ` capped at [`BACKOFF_CAP`],
/// each drawn uniformly from zero to that ceiling ("full jitter"), never below one second.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The ceiling of the next delay.
    pub fn ceiling(&self) -> u64 {
        // Past 2^16 the cap has long been reached; shifting further would lose the bits.
        if self.failures >= 16 {
            return BACKOFF_CAP;
        }
        (BACKOFF_BASE << self.failures).min(BACKOFF_CAP)
    }

    /// Record a failure and return the delay before the next try, in seconds.
    pub fn fail(&mut self, rng: &mut dyn RngCore) -> u64 {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        (rng.next_u64() % (ceiling + 1)).max(1)
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A success: the next failure starts from the base again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::tests::TestRng;

    const DAY: u64 = 86_400;
    const T0: u64 = 1_800_000_000;

    fn month() -> Validity {
        Validity {
            not_before: T0,
            not_after: T0 + 30 * DAY,
        }
    }

    #[test]
    fn a_month_long_certificate_is_renewed_ten_days_before_it_ends() {
        // Seed at the middle of the jitter range: no jitter.
        let spread = 10 * DAY / 10;
        assert_eq!(renew_at(month(), 10 * DAY, spread), T0 + 20 * DAY);
        // A longer outage budget moves the deadline earlier; a shorter one does not
        // move it later than two thirds of the life.
        assert_eq!(renew_at(month(), 15 * DAY, spread), T0 + 15 * DAY);
        assert_eq!(renew_at(month(), DAY, spread), T0 + 20 * DAY);
        // A budget longer than the life renews at once.
        assert_eq!(renew_at(month(), 90 * DAY, spread), T0);
    }

    #[test]
    fn jitter_stays_within_a_tenth_of_a_third() {
        let mut rng = TestRng(7);
        let (mut lo, mut hi) = (u64::MAX, 0);
        for _ in 0..10_000 {
            let at = renew_at(month(), 10 * DAY, rng.next_u64());
            lo = lo.min(at);
            hi = hi.max(at);
        }
        assert!(lo >= T0 + 19 * DAY && hi <= T0 + 21 * DAY, "{lo} {hi}");
        // The seeds spread the fleet over most of the window.
        assert!(hi - lo > 19 * DAY / 10, "{}", hi - lo);
    }

    #[test]
    fn short_and_odd_validities_stay_inside_them() {
        for (nb, na) in [(T0, T0), (T0, T0 + 1), (T0, T0 + 9), (T0 + 5, T0)] {
            let v = Validity {
                not_before: nb,
                not_after: na,
            };
            for seed in [0, 1, 5, u64::MAX] {
                let at = renew_at(v, 10 * DAY, seed);
                assert!(at >= nb.min(na) && at <= na.max(nb), "{v:?} {seed}: {at}");
            }
        }
    }

    #[test]
    fn due_says_when() {
        let seed = DAY; // no jitter
        assert_eq!(due(month(), 10 * DAY, seed, T0 + DAY), Due::At(T0 + 20 * DAY));
        assert_eq!(due(month(), 10 * DAY, seed, T0 + 20 * DAY), Due::Now);
        assert_eq!(due(month(), 10 * DAY, seed, T0 + 30 * DAY), Due::Invalid);
        assert_eq!(due(month(), 10 * DAY, seed, T0 - 1), Due::Invalid);
    }

    #[test]
    fn the_agent_never_sleeps_past_five_minutes() {
        assert_eq!(next_wake(T0, T0 + 20 * DAY), T0 + MAX_SLEEP);
        assert_eq!(next_wake(T0, T0 + 60), T0 + 60);
        assert_eq!(next_wake(T0, T0 - 60), T0, "an overdue deadline wakes now");
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_full_jitter() {
        let mut b = Backoff::default();
        let ceilings: Vec<u64> = (0..10)
            .map(|_| {
                let c = b.ceiling();
                b.failures += 1;
                c
            })
            .collect();
        assert_eq!(ceilings, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        let mut rng = TestRng(99);
        let mut b = Backoff::default();
        for n in 0..200u32 {
            let ceiling = b.ceiling();
            let d = b.fail(&mut rng);
            assert!((1..=ceiling).contains(&d), "failure {n}: {d} > {ceiling}");
        }
        assert_eq!(b.failures(), 200);
        assert_eq!(b.ceiling(), BACKOFF_CAP, "no overflow after many failures");
        b.reset();
        assert_eq!(b.ceiling(), BACKOFF_BASE);
    }
}
