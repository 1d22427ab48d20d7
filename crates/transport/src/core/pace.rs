//! Pacing of submissions: one pacer per client, shared by its clones, spacing new tasks at the
//! configured rate and slowing all of them when the service pushes back. It reads no clock: every
//! call takes `now`.
//!
//! The scheme is AIMD over a GCRA-style schedule, as TCP paces a connection: a submission goes
//! when its turn comes, `interval` after the previous one (it asks again until then; nothing is
//! booked ahead, so a slowdown reaches every submission still waiting); a 429 with `Retry-After` holds
//! every slot until then, and a bare 429 cuts the rate to two thirds, once a round
//! (multiplicative decrease; a 429 at the configured rate also lowers that ceiling, by 5% and
//! then by steps that double while such 429s keep coming, up to 20%, so the pacer learns a
//! limit set too high within a few rounds); each accepted submission adds a tenth of the ceiling back
//! (additive increase), up to the ceiling, or, with none configured, until the pacer stops
//! pacing at all. A learned ceiling is not for ever: each submission accepted at it raises it
//! by 1.5% back toward the configured rate, so a limit that was lowered for a while, or 429s that
//! come whatever the rate (a service busy elsewhere), cost a while, never the rest of the
//! client's life; and it is never slower than one submission a minute.
//!
//! What a server says is bounded before it gets here: a `Retry-After` is clamped to the retry
//! policy's longest by the caller, and every instant is computed with [`later`], so no answer
//! can make the pacer panic or hold submissions longer than the policy allows.

use std::time::{Duration, Instant};

use super::later;
use crate::config::Rate;

/// The slowest pace a pushed-back client falls to: one submission a minute.
const SLOWEST: Duration = Duration::from_secs(60);
/// The interval the first bare 429 sets when no rate was configured.
const FIRST_INTERVAL: Duration = Duration::from_secs(1);
/// With no configured rate, pacing stops once it recovers past this many submissions a second.
const UNPACED_ABOVE: f64 = 50.0;
/// How much a bare 429 stretches the interval (the rate falls to 2/3, as TCP CUBIC's β ≈ 0.7).
const DECREASE: f64 = 1.5;
/// How much the first bare 429 at the configured rate stretches the ceiling: it learns the true
/// limit. Each further one before the ceiling holds doubles the step, up to `CEILING_STEP_MAX`,
/// so a rate set twice too high is learned in 8 steps instead of 15, and the ceiling never lands
/// more than one step under the limit.
const CEILING_STEP: f64 = 0.05;
const CEILING_STEP_MAX: f64 = 0.2;
/// Accepted submissions at the ceiling after which it is known to hold, and the step starts small
/// again.
const CEILING_HOLDS_AFTER: u32 = 4;
/// How much each submission accepted at a learned ceiling raises it back toward the configured
/// rate (1.5%: about 50 acceptances double it).
const CEILING_RECOVERY: f64 = 0.015;

/// How hard the service is pushing back, for progress displays.
///
/// ```
/// # #[cfg(feature = "async")] {
/// let client = gptimage_transport::Client::builder().api_key("sk-x").build().unwrap();
/// let pacing = client.pacing();
/// assert_eq!(pacing.pushbacks, 0);
/// assert_eq!(pacing.per_second, None); // no rate configured, none learned
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Pacing {
    /// The submissions a second the client allows itself now (`None`: unpaced).
    pub per_second: Option<f64>,
    /// The service's 429 answers to submissions so far.
    pub pushbacks: u64,
}

/// The pacer's state.
#[derive(Debug)]
pub(crate) struct Pacer {
    /// The configured interval, which a learned ceiling recovers toward.
    configured: Option<Duration>,
    /// The fastest the pacer goes now: the configured interval, or a slower one learned from
    /// 429s at it.
    ceiling: Option<Duration>,
    /// The interval now (`None`: unpaced).
    interval: Option<Duration>,
    /// The earliest start of the next submission.
    next: Option<Instant>,
    /// When the rate was last halved: 429s within one interval of it answer submissions sent
    /// before, and do not halve it again (as TCP halves once per round trip).
    decreased: Option<Instant>,
    /// The next stretch of the ceiling, and the submissions accepted at the ceiling since the
    /// last one.
    ceiling_step: f64,
    at_ceiling: u32,
    pushbacks: u64,
}

impl Pacer {
    /// A pacer at `rate`, or unpaced until the service pushes back.
    pub(crate) fn new(rate: Option<Rate>) -> Self {
        let ceiling = rate.map(|r| r.interval());
        Self {
            configured: ceiling,
            ceiling,
            interval: ceiling,
            next: None,
            decreased: None,
            ceiling_step: CEILING_STEP,
            at_ceiling: 0,
            pushbacks: 0,
        }
    }

    /// Whether a submission may go at `now`: `Ok` takes the slot; `Err(t)` means ask again at
    /// `t`. Nothing is booked ahead, so a slowdown reaches every submission still waiting.
    pub(crate) fn reserve(&mut self, now: Instant) -> Result<(), Instant> {
        match self.next {
            Some(next) if next > now => Err(next),
            _ => {
                self.next = Some(later(now, self.interval.unwrap_or_default()));
                Ok(())
            }
        }
    }

    /// A submission was answered 429 at `now`: every later one waits. The caller clamps
    /// `retry_after` to what its policy honours.
    pub(crate) fn refused(&mut self, now: Instant, retry_after: Option<Duration>) {
        self.pushbacks += 1;
        let hold = match retry_after {
            // The service said how long: everyone waits that long, at the same rate.
            Some(asked) => asked,
            // It did not: slow down by a third, once a round. Refused at the configured rate,
            // that rate was too fast for this service: the ceiling itself comes down a step.
            None => {
                let recent = match (self.decreased, self.interval) {
                    (Some(at), Some(interval)) => now < later(at, interval),
                    _ => false,
                };
                if !recent {
                    if let (Some(ceiling), Some(interval)) = (self.ceiling, self.interval)
                        && interval <= ceiling.mul_f64(1.01)
                    {
                        // Never a ceiling slower than the slowest pace: the pacer always goes.
                        let lowered = ceiling.mul_f64(1.0 + self.ceiling_step).min(SLOWEST);
                        self.ceiling = Some(lowered);
                        self.ceiling_step = (self.ceiling_step * 2.0).min(CEILING_STEP_MAX);
                        self.at_ceiling = 0;
                    }
                    let slower = self
                        .interval
                        .map_or(FIRST_INTERVAL, |i| i.mul_f64(DECREASE))
                        .min(SLOWEST);
                    self.interval = Some(slower);
                    self.decreased = Some(now);
                }
                self.interval.unwrap_or(FIRST_INTERVAL)
            }
        };
        let until = later(now, hold);
        self.next = Some(self.next.map_or(until, |next| next.max(until)));
    }

    /// A submission was accepted: the rate recovers by a step.
    pub(crate) fn accepted(&mut self) {
        let Some(interval) = self.interval else {
            return;
        };
        let rate = 1.0 / interval.as_secs_f64().max(1e-6);
        let step = self
            .ceiling
            .map_or(0.1, |c| 0.1 / c.as_secs_f64().max(1e-6));
        let faster = rate + step;
        if let Some(ceiling) = self.ceiling
            && interval <= ceiling.mul_f64(1.01)
        {
            // Accepted at the ceiling: after a few in a row it is known to hold, and the next
            // 429 there steps it by 5% again; and each probes the ceiling a little back toward
            // the configured rate, so that 429s that come whatever the rate (a service busy
            // elsewhere) cannot ratchet the pace down for good.
            self.at_ceiling += 1;
            if self.at_ceiling >= CEILING_HOLDS_AFTER {
                self.ceiling_step = CEILING_STEP;
            }
            if let Some(configured) = self.configured {
                self.ceiling = Some(ceiling.div_f64(1.0 + CEILING_RECOVERY).max(configured));
            }
        }
        let faster = Duration::try_from_secs_f64(1.0 / faster).unwrap_or(SLOWEST);
        self.interval = match self.ceiling {
            Some(ceiling) => Some(faster.max(ceiling).min(SLOWEST)),
            None if faster < Duration::from_secs_f64(1.0 / UNPACED_ABOVE) => None,
            None => Some(faster.min(SLOWEST)),
        };
    }

    /// How hard the service is pushing back.
    pub(crate) fn pacing(&self) -> Pacing {
        Pacing {
            per_second: self.interval.map(|i| 1.0 / i.as_secs_f64().max(1e-6)),
            pushbacks: self.pushbacks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, seconds: f64) -> Instant {
        start + Duration::from_secs_f64(seconds)
    }

    #[test]
    fn a_configured_rate_spaces_submissions() {
        let start = Instant::now();
        let mut pacer = Pacer::new(Some(Rate::new(4, Duration::from_secs(2))));
        assert_eq!(pacer.reserve(start), Ok(()));
        assert_eq!(pacer.reserve(start), Err(at(start, 0.5)), "the next turn");
        assert_eq!(
            pacer.reserve(at(start, 0.2)),
            Err(at(start, 0.5)),
            "nothing booked ahead"
        );
        assert_eq!(pacer.reserve(at(start, 0.5)), Ok(()));
        assert_eq!(pacer.reserve(at(start, 0.5)), Err(at(start, 1.0)));
        // An idle pacer does not bank turns: a late submission goes at once, and only one.
        assert_eq!(pacer.reserve(at(start, 10.0)), Ok(()));
        assert_eq!(pacer.reserve(at(start, 10.0)), Err(at(start, 10.5)));
    }

    #[test]
    fn a_bare_429_slows_the_rate_learns_the_ceiling_and_successes_win_it_back() {
        let start = Instant::now();
        let mut pacer = Pacer::new(Some(Rate::new(2, Duration::from_secs(1))));
        assert_eq!(pacer.reserve(start), Ok(()));
        pacer.refused(start, None);
        let rate = pacer.pacing().per_second.unwrap();
        assert!((rate - 2.0 / 1.5).abs() < 1e-9, "{rate}");
        assert_eq!(
            pacer.reserve(start),
            Err(at(start, 0.75)),
            "everyone waits an interval"
        );
        // Back up to the learned ceiling (5% under the configured rate) in a few acceptances,
        // and from there, as they keep coming, to the configured rate.
        for _ in 0..5 {
            pacer.accepted();
        }
        let rate = pacer.pacing().per_second.unwrap();
        assert!(
            rate > 2.0 / 1.06 && rate < 2.0,
            "at the learned ceiling: {rate}"
        );
        for _ in 0..10 {
            pacer.accepted();
        }
        assert!((pacer.pacing().per_second.unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(pacer.pacing().pushbacks, 1);
    }

    /// Submissions one after another at the pacer's pace, from `now`, each answered as
    /// `answer(n, at)` says (`true`: a bare 429); the time after the last.
    fn drive(
        pacer: &mut Pacer,
        mut now: Instant,
        count: u32,
        mut refused: impl FnMut(u32, Instant) -> bool,
    ) -> Instant {
        for n in 0..count {
            if let Err(turn) = pacer.reserve(now) {
                now = turn;
                pacer.reserve(now).unwrap();
            }
            if refused(n, now) {
                pacer.refused(now, None);
            } else {
                pacer.accepted();
            }
        }
        now
    }

    #[test]
    fn the_ceiling_learns_a_limit_below_the_configured_rate() {
        // The service takes at most one submission a second; the rate configured is 4 a second.
        let start = Instant::now();
        let mut pacer = Pacer::new(Some(Rate::new(4, Duration::from_secs(1))));
        let mut last_taken = None::<Instant>;
        let mut refusals = Vec::new();
        let now = drive(&mut pacer, start, 600, |_, at| {
            let refused = last_taken.is_some_and(|t| at < t + Duration::from_secs(1));
            if !refused {
                last_taken = Some(at);
            }
            refusals.push(refused);
            refused
        });
        let rate = pacer.pacing().per_second.unwrap();
        let late = refusals[400..].iter().filter(|r| **r).count();
        assert!(rate > 0.6 && rate < 2.0, "near the true limit: {rate}");
        assert!(late < 100, "{late} of the last 200 refused");
        assert!(now > start + Duration::from_secs(300), "it took its time");
    }

    #[test]
    fn rate_independent_429s_never_ratchet_the_pace_down_for_good() {
        // One submission in ten refused, whatever the rate (the service is busy elsewhere).
        let start = Instant::now();
        let mut pacer = Pacer::new(Some(Rate::new(2, Duration::from_secs(1))));
        let now = drive(&mut pacer, start, 500, |n, _| n % 10 == 9);
        let during = pacer.pacing().per_second.unwrap();
        assert!(during >= 1.0, "within half the configured rate: {during}");
        drive(&mut pacer, now, 200, |_, _| false);
        let after = pacer.pacing().per_second.unwrap();
        assert!((after - 2.0).abs() < 1e-9, "{after}");
        // Even a service that refuses half of everything leaves it going at least once a
        // minute.
        let mut pacer = Pacer::new(Some(Rate::new(2, Duration::from_secs(1))));
        drive(&mut pacer, start, 2000, |n, _| n % 2 == 0);
        let slowest = pacer.pacing().per_second.unwrap();
        assert!(slowest >= 1.0 / 60.0 - 1e-9, "{slowest}");
    }

    #[test]
    fn a_learned_ceiling_recovers_the_configured_rate_once_429s_stop() {
        let start = Instant::now();
        let mut pacer = Pacer::new(Some(Rate::new(10, Duration::from_secs(1))));
        // Refused at each turn for a while: the ceiling comes down in growing steps.
        let now = drive(&mut pacer, start, 40, |n, _| n % 2 == 0);
        let learned = pacer.pacing().per_second.unwrap();
        assert!(learned < 5.0, "a limit was learned: {learned}");
        // No 429 for a while: back at the configured rate, and never past it.
        drive(&mut pacer, now, 3000, |_, _| false);
        let rate = pacer.pacing().per_second.unwrap();
        assert!((rate - 10.0).abs() < 1e-6, "{rate}");
    }

    #[test]
    fn no_retry_after_can_make_the_pacer_panic() {
        let start = Instant::now();
        for asked in [
            Duration::MAX,
            Duration::from_secs(10_000_000_000_000_000_000),
            Duration::from_secs(u64::MAX / 2),
        ] {
            let mut pacer = Pacer::new(Some(Rate::new(1, Duration::from_secs(1))));
            pacer.refused(start, Some(asked));
            let held = pacer.reserve(start).unwrap_err();
            assert!(
                held > at(start, 365.0 * 24.0 * 3600.0),
                "held until far away"
            );
            // And the pacer still works after it.
            pacer.refused(start, None);
            assert!(pacer.reserve(held).is_ok());
        }
    }

    #[test]
    fn a_burst_of_429s_slows_the_rate_once() {
        let start = Instant::now();
        let mut pacer = Pacer::new(None);
        for _ in 0..4 {
            pacer.refused(start, None);
        }
        assert_eq!(
            pacer.pacing().per_second,
            Some(1.0),
            "four answers to one round"
        );
        pacer.refused(at(start, 1.5), None);
        let rate = pacer.pacing().per_second.unwrap();
        assert!(
            (rate - 1.0 / 1.5).abs() < 1e-9,
            "a later round slows it again: {rate}"
        );
    }

    #[test]
    fn retry_after_holds_every_submission() {
        let start = Instant::now();
        let mut pacer = Pacer::new(None);
        assert_eq!(pacer.reserve(start), Ok(()), "unpaced");
        assert_eq!(pacer.reserve(start), Ok(()), "unpaced, again");
        pacer.refused(start, Some(Duration::from_secs(3)));
        assert_eq!(pacer.reserve(at(start, 1.0)), Err(at(start, 3.0)));
        assert_eq!(pacer.reserve(at(start, 3.0)), Ok(()));
        assert_eq!(
            pacer.reserve(at(start, 3.0)),
            Ok(()),
            "the same (unpaced) rate as before"
        );
        assert_eq!(pacer.pacing().per_second, None);
    }

    #[test]
    fn an_unconfigured_pacer_learns_and_then_lets_go() {
        let start = Instant::now();
        let mut pacer = Pacer::new(None);
        pacer.refused(start, None);
        assert_eq!(pacer.pacing().per_second, Some(1.0));
        for _ in 0..600 {
            pacer.accepted();
        }
        assert_eq!(
            pacer.pacing().per_second,
            None,
            "recovered past any limit seen"
        );
        for round in 0..20 {
            pacer.refused(at(start, 100.0 * f64::from(round)), None);
        }
        assert_eq!(
            pacer.pacing().per_second,
            Some(1.0 / 60.0),
            "never slower than one a minute"
        );
    }
}
