//! The parent-side thread of a worker process.
//!
//! Each worker has one, like a subinterpreter worker: it starts the process (see `child` for why
//! this thread), hands it the loop and the setup, then serves through the mailbox's serve loop
//! ([`Mailbox::serve`](crate::mailbox::Mailbox::serve)): for each job it writes the frame, reads
//! the outcome (spinning briefly on a non-blocking read before it polls: waking a parked thread costs
//! far more than a short spin, see docs/architecture.md) and, after the outcome is out, the `retire` hook's verdict. At the end it closes
//! the channel and reaps the process.
//!
//! An interrupt claimed before a job's outcome settled means the caller kills (or has killed) the
//! process: this thread then reaps it and breaks the job, whatever the process sent, so a killed
//! process never serves another job.

use std::{
    path::PathBuf,
    sync::atomic::Ordering,
    sync::PoisonError,
    time::{Duration, Instant},
};

use super::{
    channel::Channel,
    child::{self, describe_exit_code, Running, LOOP_SOURCE},
    Shared,
};
use crate::{
    mailbox::{check_memory, Ran, Serve},
    protocol::{self, AfterJob, AFTER_JOB},
    Broken, Completion, Job, Stage, WorkerConfig,
};

/// How long the parent-side thread spins on a non-blocking read for an outcome before it polls.
const SPIN_FOR_OUTCOME: Duration = Duration::from_micros(50);

/// The body of a worker's thread: start the process, serve jobs until closed, idle, retired or
/// broken, then end and reap it.
pub(super) fn worker_thread(
    shared: &Shared,
    config: &WorkerConfig,
    python: &PathBuf,
    forkserver: bool,
) {
    shared.mailbox.register_worker_thread();
    let mut process = Process::start(shared, config, python, forkserver);
    shared.mailbox.serve(config, &mut process);
    process.end();
}

/// One worker process, as its thread drives it.
struct Process<'a> {
    shared: &'a Shared,
    running: Option<Running>,
    /// Why it cannot serve, if it did not start.
    startup: Result<(), Broken>,
    /// `Some(exit code)` once the process is reaped.
    reaped: Option<Option<i32>>,
}

impl<'a> Process<'a> {
    /// Starts the process and sends it the loop and the setup.
    fn start(
        shared: &'a Shared,
        config: &WorkerConfig,
        python: &PathBuf,
        forkserver: bool,
    ) -> Self {
        let mut process = Process {
            shared,
            running: None,
            startup: Ok(()),
            reaped: None,
        };
        process.startup = match child::launch(shared, python, forkserver, &config.setup) {
            Ok(running) => {
                let outcome = handshake(shared, &running, &config.setup, forkserver);
                process.running = Some(running);
                match outcome {
                    Ok(()) => Ok(()),
                    Err(Handshake::Failed(broken)) => Err(broken),
                    Err(Handshake::Died) => {
                        let code = process.reap(true);
                        Err(died(shared, "while starting", code))
                    }
                }
            }
            Err(e) => {
                // Kills and reaps a process that was started before the failure.
                process.reap(true);
                Err(Broken::new(
                    Stage::Start,
                    format!("could not start the worker process: {e}"),
                ))
            }
        };
        if let (Ok(()), Some(r)) = (&process.startup, &process.running) {
            *shared
                .channel
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(r.channel.sock.clone());
        }
        process
    }

    /// Reaps the process (killing it first if `kill`) and remembers its exit code.
    fn reap(&mut self, kill: bool) -> Option<i32> {
        let code = child::reap(self.shared, self.running.as_mut(), kill);
        self.reaped = Some(code);
        code
    }

    /// The job's outcome when the process is gone or must go: it is killed and reaped.
    fn died_during_job(&mut self) -> Ran {
        let code = self.reap(true);
        Ran::ending(died(self.shared, "during the job", code))
    }

    /// Ends the process (end of file tells it to exit; the grace period is the host's:
    /// `Worker::kill`), reaps it unless it is already, and marks the worker ended.
    fn end(mut self) {
        *self
            .shared
            .channel
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        let exit_code = match self.reaped {
            Some(code) => code,
            None => {
                if let Some(r) = &self.running {
                    let _ = r.channel.sock.shutdown(std::net::Shutdown::Both);
                }
                let killed = self.shared.killed.load(Ordering::Acquire);
                self.reap(killed)
            }
        };
        drop(self.running.take());
        self.shared.mailbox.mark_ended(exit_code);
    }
}

impl Serve for Process<'_> {
    fn run(&mut self, job: Job, completion: &Completion) -> Ran {
        let (Ok(()), Some(r)) = (&self.startup, &self.running) else {
            let broken = self
                .startup
                .clone()
                .err()
                .unwrap_or_else(|| Broken::new(Stage::Start, "no worker process"));
            return Ran::ending(broken);
        };
        let sent = r.channel.send_job(&job);
        // The worker has its own copy of everything now: the caller's buffers are free.
        drop(job);
        let reply = sent
            .and_then(|()| {
                r.channel
                    .receive(SPIN_FOR_OUTCOME, &|| completion.expected())
            })
            .ok()
            .and_then(|(kind, verdict, data, _, buffers)| {
                protocol::job_reply(kind, verdict, data, buffers)
            });
        match reply {
            Some((finished, after_job)) => Ran {
                finished,
                after_job,
            },
            None => self.died_during_job(),
        }
    }

    fn interrupted(&mut self, _ran: Ran) -> Ran {
        self.died_during_job()
    }

    fn must_end(&self) -> bool {
        self.shared.killed.load(Ordering::Acquire)
    }

    fn expect_job(&mut self, until: Instant) {
        // The child spins too, so that the job's frame finds it awake. A failed write means the
        // process is gone, and the job's own write will find that out.
        if let (Ok(()), Some(r)) = (&self.startup, &self.running) {
            let _ = r.channel.send_nudge(until);
        }
    }

    fn after_job(&mut self, hook: bool, _ending: bool, max_memory: Option<u64>) -> AfterJob {
        let after = match &self.running {
            Some(r) if hook => receive_retire_verdict(&r.channel),
            _ => Some(AfterJob::Keep),
        };
        let Some(after) = after else {
            // The process died or sent garbage (nobody's job broke: its outcome was delivered).
            self.reap(true);
            return AfterJob::Retire;
        };
        check_memory(after, max_memory, || self.shared.rss())
    }
}

/// The loop's source (spawned workers load it; forkserver children have it) and the worker's
/// setup, sent and acknowledged; then the probe of the worker's memory (see `channel`).
fn handshake(
    shared: &Shared,
    running: &Running,
    setup: &[u8],
    forkserver: bool,
) -> std::result::Result<(), Handshake> {
    if !forkserver {
        running
            .channel
            .send_frame(LOOP_SOURCE.as_bytes())
            .map_err(|_| Handshake::Died)?;
    }
    running
        .channel
        .send_frame(setup)
        .map_err(|_| Handshake::Died)?;
    let Ok((kind, _, data, records, _)) = running.channel.receive(Duration::ZERO, &|| None) else {
        return Err(Handshake::Died);
    };
    match protocol::setup_reply(kind, &data, records) {
        Some(Ok(())) => {
            // SETUP_OK's data is where the probe lies.
            if let Some(pid) = shared.child().pid() {
                running.channel.probe_peer_memory(pid, &data);
            }
            Ok(())
        }
        Some(Err(broken)) => Err(Handshake::Failed(broken)),
        None => Err(Handshake::Died),
    }
}

enum Handshake {
    /// The setup raised (e.g. `init`): the worker reported it and exits.
    Failed(Broken),
    /// The process died, or the channel broke or carried garbage.
    Died,
}

/// Why the channel broke, with the exit code.
fn died(shared: &Shared, during: &str, code: Option<i32>) -> Broken {
    let mut broken = if shared.killed.load(Ordering::Acquire) {
        let reason = format!(
            "the job was interrupted: its worker process was killed ({})",
            describe_exit_code(code)
        );
        Broken::new(Stage::Interrupted, reason)
    } else {
        let reason = format!(
            "the worker process died unexpectedly {during} ({})",
            describe_exit_code(code)
        );
        Broken::new(Stage::Died, reason)
    };
    broken.exit_code = code;
    broken
}

/// Reads the retire verdict that follows a `RETIRE_PENDING` outcome; `None` if the process died
/// or sent garbage.
fn receive_retire_verdict(channel: &Channel) -> Option<AfterJob> {
    match channel.receive(Duration::ZERO, &|| None) {
        Ok((AFTER_JOB, verdict, _, records, _)) => protocol::after_job_reply(verdict, records),
        Ok(_) | Err(_) => None,
    }
}
