//! AUTO's ranking: which available worker type serves a call, by capability and by latency.
//!
//! This module knows no Python front end. It holds two things:
//!
//! - [`LatencyEstimate`]: a running estimate (EWMA) of one worker type's dispatch latency, fed by
//!   the worker cache from real calls. Only *quick* calls feed it (the front end reports a call
//!   whose outcome was in before it stopped spinning, within twice its spin budget of the hand-over:
//!   [`crate::Lease::observe_quick_return`]), so a long job measures nothing and cannot make its type look slow: what is left is the cost of handing
//!   a job to a warm worker and getting a trivial outcome back. A type whose calls never come back
//!   that fast keeps its prior.
//! - [`rank`]: orders the candidate types for a call: types lacking a required capability are
//!   dropped, the rest sorted by their estimate, or by their prior
//!   ([`WorkerType::latency_prior`]) while they have none. The priors encode the expected order
//!   subinterpreter < forkserver < spawn.
//!
//! What AUTO remembers (routes, pins, fallbacks) is [`crate::auto`]'s; it asks for a ranking only
//! when something changed, never per call.
//!
//! [`WorkerType::latency_prior`]: interpool_worker_types::WorkerType::latency_prior

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Weight of a new sample in the estimate, as `1 / 2^EWMA_SHIFT` (1/8).
const EWMA_SHIFT: u32 = 3;

/// A running estimate of a worker type's dispatch latency; lock-free, shared by callers.
#[derive(Debug, Default)]
pub struct LatencyEstimate {
    /// Nanoseconds; 0: no sample yet.
    nanos: AtomicU64,
}

impl LatencyEstimate {
    /// Folds one sample in (the first sample is taken as is). Concurrent updates may lose a
    /// sample, which an estimate can afford.
    pub fn observe(&self, sample: Duration) {
        let sample = u64::try_from(sample.as_nanos()).unwrap_or(u64::MAX).max(1);
        let old = self.nanos.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            // old + (sample - old) / 8, in signed arithmetic.
            let delta = (i128::from(sample) - i128::from(old)) >> EWMA_SHIFT;
            u64::try_from(i128::from(old) + delta).unwrap_or(1).max(1)
        };
        self.nanos.store(new, Ordering::Relaxed);
    }

    /// The estimate, or `None` before the first sample.
    pub fn get(&self) -> Option<Duration> {
        match self.nanos.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        }
    }
}

/// One worker type as [`rank`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The type's name (`"subinterpreter"`, `"forkserver"`, `"spawn"`).
    pub name: String,
    /// Whether it can run here at all.
    pub available: bool,
    /// Whether a running job can be stopped whatever it does.
    pub hard_kill: bool,
    /// Whether AUTO may use it for this call (false: routed away, e.g. a module that refuses
    /// subinterpreters).
    pub allowed: bool,
    /// The measured dispatch latency, if any call measured it.
    pub estimate: Option<Duration>,
    /// The latency expected before any call measured it (the type's
    /// [`latency_prior`](interpool_worker_types::WorkerType::latency_prior)).
    pub prior: Duration,
}

impl Candidate {
    /// The latency the ranking uses: the estimate, or the prior.
    pub fn latency(&self) -> Duration {
        self.estimate.unwrap_or(self.prior)
    }
}

/// The names of the candidates able to run a call, fastest first. `need_hard_kill`: the call was
/// made with `kill_on_cancel=True`. Ties keep the order given.
pub fn rank(candidates: &[Candidate], need_hard_kill: bool) -> Vec<String> {
    let mut able: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.available && c.allowed && (c.hard_kill || !need_hard_kill))
        .collect();
    able.sort_by_key(|c| c.latency());
    able.into_iter().map(|c| c.name.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(name: &str, hard_kill: bool, estimate_us: Option<u64>) -> Candidate {
        let prior_us = match name {
            "subinterpreter" => 15,
            "forkserver" => 60,
            _ => 80,
        };
        Candidate {
            prior: Duration::from_micros(prior_us),
            name: name.into(),
            available: true,
            hard_kill,
            allowed: true,
            estimate: estimate_us.map(Duration::from_micros),
        }
    }

    fn three(sub: Option<u64>, fork: Option<u64>, spawn: Option<u64>) -> Vec<Candidate> {
        vec![
            candidate("spawn", true, spawn),
            candidate("forkserver", true, fork),
            candidate("subinterpreter", false, sub),
        ]
    }

    #[test]
    fn without_measurements_the_expected_order_holds() {
        assert_eq!(
            rank(&three(None, None, None), false),
            ["subinterpreter", "forkserver", "spawn"]
        );
    }

    #[test]
    fn measured_latencies_reorder() {
        // This machine forks slowly and spawns fast: the ranking follows.
        assert_eq!(
            rank(&three(Some(12), Some(90), Some(40)), false),
            ["subinterpreter", "spawn", "forkserver"]
        );
        // Subinterpreters measured slower than a process type.
        assert_eq!(
            rank(&three(Some(70), Some(30), None), false),
            ["forkserver", "subinterpreter", "spawn"]
        );
    }

    #[test]
    fn an_unmeasured_type_keeps_its_prior_place() {
        // Forkserver unmeasured (prior 60 µs) sits between a 20 µs and a 100 µs type.
        assert_eq!(
            rank(&three(Some(20), None, Some(100)), false),
            ["subinterpreter", "forkserver", "spawn"]
        );
    }

    #[test]
    fn hard_kill_drops_types_that_cannot_be_killed() {
        assert_eq!(
            rank(&three(Some(1), Some(90), Some(40)), true),
            ["spawn", "forkserver"]
        );
        assert_eq!(
            rank(&three(None, None, None), true),
            ["forkserver", "spawn"]
        );
    }

    #[test]
    fn unavailable_and_routed_away_types_are_skipped() {
        let mut c = three(None, None, None);
        c[2].available = false; // 3.11: no subinterpreters
        assert_eq!(rank(&c, false), ["forkserver", "spawn"]);
        let mut c = three(Some(5), Some(200), Some(100));
        c[2].allowed = false; // the callable's module refuses subinterpreters
        assert_eq!(rank(&c, false), ["spawn", "forkserver"]);
        for c in &mut c {
            c.available = false;
        }
        assert!(rank(&c, false).is_empty());
    }

    #[test]
    fn estimate_starts_at_the_first_sample_then_moves_an_eighth() {
        let e = LatencyEstimate::default();
        assert_eq!(e.get(), None);
        e.observe(Duration::from_micros(80));
        assert_eq!(e.get(), Some(Duration::from_micros(80)));
        e.observe(Duration::from_micros(0)); // counts as 1 ns
        let after = e.get().unwrap().as_nanos();
        assert_eq!(after, 80_000 - (80_000 - 1) / 8 - 1);
        for _ in 0..200 {
            e.observe(Duration::from_micros(10));
        }
        let settled = e.get().unwrap();
        assert!(settled >= Duration::from_micros(10) && settled < Duration::from_micros(11));
    }
}
