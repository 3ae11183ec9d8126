//! Whether a core is free: the one reading of the system's runnable-thread count behind every
//! decision to spend a second core on the way to a result (the prewake alarm's last-stretch spin
//! and the workers' spin for a due job, `prewake.rs`; a large copy's helper thread,
//! `large_copy.rs`). On a machine whose cores are all
//! busy, a second thread only takes time from someone else, so both then do without it.

use std::{
    sync::{Mutex, OnceLock, PoisonError},
    time::{Duration, Instant},
};

/// Whether the system's runnable threads (the asking one included), less this process's
/// spinners (`prewake::Spinning`: each yields its core at every check), and `extra` more fit in
/// its cores. The runnable count is read at most once per `READ_EVERY` (reading `/proc` costs
/// more than a short job's whole wake-up); true where it cannot be read.
pub(crate) fn fit(extra: usize) -> bool {
    static CORES: OnceLock<usize> = OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let spinners = crate::prewake::spinning_threads();
    runnable().is_none_or(|running| running.saturating_sub(spinners) + extra <= cores)
}

/// The system's runnable threads, as last read (see [`fit`]).
fn runnable() -> Option<usize> {
    const READ_EVERY: Duration = Duration::from_millis(1);
    static LAST: Mutex<Option<(Instant, Option<usize>)>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(PoisonError::into_inner);
    let now = Instant::now();
    match *last {
        Some((at, running)) if now.saturating_duration_since(at) < READ_EVERY => running,
        _ => {
            let running = read_runnable();
            *last = Some((now, running));
            running
        }
    }
}

/// `/proc/loadavg`'s instantaneous count of runnable threads.
fn read_runnable() -> Option<usize> {
    let loadavg = std::fs::read_to_string("/proc/loadavg").ok()?;
    // "0.52 0.58 0.59 3/467 12345": the fourth field is runnable/total.
    loadavg
        .split_whitespace()
        .nth(3)?
        .split('/')
        .next()?
        .parse()
        .ok()
}
