//! The wire protocol between the host and the worker loop, written once.
//!
//! Every worker runs the same Python loop (`subinterpreter/worker_loop.py`): a subinterpreter
//! worker calls its functions and reads the tuples they return, a process worker's loop
//! (`process/process_loop.py`) sends the same values in frames over its channel. Either way a
//! job's reply is `(kind, retire verdict, data, buffers)`, and [`job_reply`] alone turns it into
//! a [`Finished`]; [`setup_reply`] and [`after_job_reply`] read the two other replies the same
//! way for both kinds.
//!
//! The numbers are defined here and nowhere else. The Python side has no copy of its own that
//! could drift: the host puts [`PYTHON_CONSTANTS`] (generated from the same table as the Rust
//! constants) in front of the loop's source before it runs it, in both kinds of worker. The front
//! end's outcome kinds are the job kinds plus [`BROKEN`]; the extension module hands them and the
//! [`Stage`] codes to `interpool/_outcome.py` (`src/python/mod.rs`), so the caller side reads
//! them from here too.

use crate::{Broken, Buffer, Finished, Outcome, Retire, Stage};

/// Defines each constant in Rust and, with the same name and value, in [`PYTHON_CONSTANTS`].
macro_rules! wire_constants {
    ($($(#[$doc:meta])* $name:ident: $ty:ty = $value:expr;)*) => {
        $($(#[$doc])* pub const $name: $ty = $value;)*
        /// Python source assigning every wire constant (`VALUE = 0`, ...), a literal for
        /// `concat!`: the hosts put it in front of the worker loop's source.
        macro_rules! python_constants {
            () => { concat!($(stringify!($name), " = ", stringify!($value), "\n",)*) };
        }
        pub(crate) use python_constants;
        /// Python source assigning every wire constant (`VALUE = 0`, ...), as the worker loops
        /// receive them.
        pub const PYTHON_CONSTANTS: &str = python_constants!();
        /// Every constant's name, for the test that the loops define none of their own.
        #[cfg(test)]
        const NAMES: &[&str] = &[$(stringify!($name),)*];
    };
}

wire_constants! {
    /// A job's kind: the callable returned; data is the pickled value.
    VALUE: u8 = 0;
    /// The callable raised (or its value could not be pickled); data is the exception records.
    RAISED: u8 = 1;
    /// The job did not load in the worker (or a module refused to load while it ran); data is
    /// the exception records.
    LOAD_ERROR: u8 = 2;
    /// Front end only (no worker sends it): the worker broke, see [`Stage`].
    BROKEN: u8 = 3;
    /// The callable returned a value with out-of-band buffers: data is its pickle, the buffers
    /// follow (a process: as memfds after the message's header).
    VALUE_BUFFERS: u8 = 4;
    /// The setup's reply: the worker serves jobs.
    SETUP_OK: u8 = 10;
    /// The setup's reply: preparing the interpreter failed (unpickling the configuration, `init`
    /// or `retire`); data is the reason, then the exception records.
    SETUP_FAILED: u8 = 11;
    /// The setup's reply: `init` raised; data as for [`SETUP_FAILED`].
    INIT_FAILED: u8 = 12;
    /// A process worker's message with the verdict of its `retire` hook, after a job whose
    /// verdict was [`RETIRE_PENDING`].
    AFTER_JOB: u8 = 13;
    /// A verdict: the worker stays.
    KEEP: u8 = 0;
    /// A verdict of the `retire` hook: the worker ends.
    RETIRE: u8 = 1;
    /// A verdict of the `retire` hook: it raised (its exception records come with it); the
    /// worker ends.
    RETIRE_FAILED: u8 = 2;
    /// A job's verdict: the `retire` hook runs once the outcome is delivered, and its verdict
    /// follows.
    RETIRE_PENDING: u8 = 3;
    /// Buffers of at least this many bytes travel out of band (`_outcome.py` and the loop).
    BUFFER_THRESHOLD: usize = 256 * 1024;
    /// At most this many out-of-band buffers per job or value (the rest stay in band).
    MAX_BUFFERS: usize = 64;
    /// Set in a process frame's length when memfds of out-of-band buffers follow its header.
    HAS_BUFFERS: u64 = 1 << 63;
    /// Set in a process frame's length for a *nudge*, which has no payload: the parent expects a
    /// job soon, and the worker spins for its next frame for as many microseconds as the length's
    /// low 32 bits say before it polls (see `mailbox`, the worker's wait).
    NUDGE: u64 = 1 << 62;
    /// Set in a process job frame's length by a parent that reads and writes the worker's memory
    /// itself (`process_vm_readv`/`process_vm_writev`: see `process/channel.rs`): with
    /// [`HAS_BUFFERS`], the buffers' sizes follow the header instead of memfds, and the worker
    /// answers with their addresses ([`BUFFER_ADDRESSES`]) before the payload comes; a value's
    /// buffers go back as addresses too, held until [`RELEASE`].
    PEER_MEMORY: u64 = 1 << 61;
    /// Set in a process frame's length for a *release*, which has no payload: the parent has
    /// read the buffers of the worker's last value, which the worker may now free.
    RELEASE: u64 = 1 << 60;
    /// Set in a buffer's size or length on the wire (peer memory): it is a whole `bytes`.
    WHOLE_BYTES: u64 = 1 << 63;
    /// A process worker's answer to a job frame with [`PEER_MEMORY`] buffers: data is one `<Q`
    /// address per buffer, where the parent writes it.
    BUFFER_ADDRESSES: u8 = 14;
    /// What a process worker's `SETUP_OK` points at (data: `<QQ` address, length): the parent
    /// reads it there to learn whether it can reach the worker's memory.
    PEER_PROBE: &str = "interpool peer memory probe";
    /// The `struct` format of a process worker's message header: kind, verdict, `len(data)`,
    /// `len(records)`.
    MESSAGE_HEADER: &str = "<BBQQ";
}

/// The size of a [`MESSAGE_HEADER`].
pub(crate) const MESSAGE_HEADER_LEN: usize = 18;

/// Reads a [`MESSAGE_HEADER`]: `(kind, verdict, len(data), len(records))`.
pub(crate) fn parse_message_header(header: &[u8; MESSAGE_HEADER_LEN]) -> (u8, u8, u64, u64) {
    let [kind, verdict, rest @ ..] = *header;
    let (data_len, records_len) = rest.split_at(8);
    let len = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    (kind, verdict, len(data_len), len(records_len))
}

/// Turns a job's reply into its [`Finished`] (the worker's fate as known now: [`Retire::Keep`]),
/// and whether the `retire` hook runs after it ([`RETIRE_PENDING`]). `None`: the reply is
/// malformed.
pub(crate) fn job_reply(
    kind: u8,
    verdict: u8,
    data: Vec<u8>,
    buffers: Vec<Buffer>,
) -> Option<(Finished, bool)> {
    let outcome = match kind {
        VALUE if buffers.is_empty() => Outcome::Value(data),
        VALUE_BUFFERS if !buffers.is_empty() => Outcome::ValueWithBuffers(data, buffers),
        RAISED if buffers.is_empty() => Outcome::Raised(data),
        LOAD_ERROR if buffers.is_empty() => Outcome::LoadError(data),
        _ => return None,
    };
    let after_job = match verdict {
        KEEP => false,
        RETIRE_PENDING => true,
        _ => return None,
    };
    let retire = Retire::Keep;
    Some((Finished { outcome, retire }, after_job))
}

/// Turns the setup's reply into whether the worker serves; `None`: the reply is malformed.
pub(crate) fn setup_reply(kind: u8, reason: &[u8], records: Vec<u8>) -> Option<Result<(), Broken>> {
    let stage = match kind {
        SETUP_OK => return Some(Ok(())),
        SETUP_FAILED => Stage::Setup,
        INIT_FAILED => Stage::Init,
        _ => return None,
    };
    let mut broken = Broken::new(stage, String::from_utf8_lossy(reason));
    broken.exception = Some(records);
    Some(Err(broken))
}

/// What the `retire` hook decided after a job.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AfterJob {
    /// The worker stays.
    Keep,
    /// The worker ends.
    Retire,
    /// The hook raised: its exception records; the worker ends.
    Failed(Vec<u8>),
}

/// Turns the `retire` hook's verdict into an [`AfterJob`]; `None`: it is malformed.
pub(crate) fn after_job_reply(verdict: u8, records: Vec<u8>) -> Option<AfterJob> {
    match verdict {
        KEEP => Some(AfterJob::Keep),
        RETIRE => Some(AfterJob::Retire),
        RETIRE_FAILED => Some(AfterJob::Failed(records)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_python_constants_are_the_rust_ones() {
        assert!(PYTHON_CONSTANTS.contains("VALUE = 0\n"));
        assert!(PYTHON_CONSTANTS.contains("RETIRE_PENDING = 3\n"));
        assert!(PYTHON_CONSTANTS.contains("HAS_BUFFERS = 1 << 63\n"));
        assert!(PYTHON_CONSTANTS.contains("MESSAGE_HEADER = \"<BBQQ\"\n"));
        assert_eq!(PYTHON_CONSTANTS.lines().count(), NAMES.len());
    }

    #[test]
    fn the_worker_loops_define_no_wire_constant_of_their_own() {
        // They read the prepended PYTHON_CONSTANTS; a number of their own could drift.
        let sources = [
            include_str!("subinterpreter/worker_loop.py"),
            include_str!("process/process_loop.py"),
        ];
        for source in sources {
            for line in source.lines() {
                let assigned = line.split('=').next().unwrap_or("");
                for name in assigned
                    .split(',')
                    .map(|n| n.trim().trim_start_matches('_'))
                {
                    assert!(
                        !NAMES.contains(&name) || !line.contains('='),
                        "a worker loop assigns the wire constant {name}: {line:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_message_header_length_matches_its_format() {
        let size: usize = MESSAGE_HEADER[1..]
            .chars()
            .map(|c| match c {
                'B' => 1,
                'Q' => 8,
                other => panic!("unexpected format character {other}"),
            })
            .sum();
        assert_eq!(size, MESSAGE_HEADER_LEN);
    }

    #[test]
    fn a_job_reply_becomes_its_outcome() {
        let (finished, after_job) = job_reply(VALUE, KEEP, b"v".to_vec(), Vec::new()).unwrap();
        assert_eq!(finished.outcome, Outcome::Value(b"v".to_vec()));
        assert_eq!(finished.retire, Retire::Keep);
        assert!(!after_job);
        let (finished, after_job) =
            job_reply(RAISED, RETIRE_PENDING, b"r".to_vec(), Vec::new()).unwrap();
        assert_eq!(finished.outcome, Outcome::Raised(b"r".to_vec()));
        assert!(after_job);
        let (finished, _) = job_reply(LOAD_ERROR, KEEP, b"l".to_vec(), Vec::new()).unwrap();
        assert_eq!(finished.outcome, Outcome::LoadError(b"l".to_vec()));
    }

    #[test]
    fn a_malformed_job_reply_is_refused() {
        assert!(job_reply(BROKEN, KEEP, Vec::new(), Vec::new()).is_none());
        assert!(job_reply(VALUE, RETIRE, Vec::new(), Vec::new()).is_none());
        assert!(job_reply(VALUE_BUFFERS, KEEP, Vec::new(), Vec::new()).is_none());
        assert!(job_reply(SETUP_OK, KEEP, Vec::new(), Vec::new()).is_none());
    }

    #[test]
    fn every_stage_comes_back_from_its_code() {
        for stage in Stage::ALL {
            assert_eq!(Stage::from_code(stage.code()), Some(stage));
        }
        assert_eq!(Stage::from_code(Stage::ALL.len() as u8), None);
    }

    #[test]
    fn a_setup_reply_says_which_stage_failed() {
        assert_eq!(setup_reply(SETUP_OK, b"", Vec::new()), Some(Ok(())));
        let Some(Err(broken)) = setup_reply(INIT_FAILED, b"init raised", b"rec".to_vec()) else {
            panic!("init failed")
        };
        assert_eq!(broken.stage, Stage::Init);
        assert_eq!(broken.reason, "init raised");
        assert_eq!(broken.exception.as_deref(), Some(&b"rec"[..]));
        let Some(Err(broken)) = setup_reply(SETUP_FAILED, b"x", Vec::new()) else {
            panic!("setup failed")
        };
        assert_eq!(broken.stage, Stage::Setup);
        assert_eq!(setup_reply(VALUE, b"", Vec::new()), None);
    }

    #[test]
    fn a_retire_verdict_becomes_what_the_worker_does() {
        assert_eq!(after_job_reply(KEEP, Vec::new()), Some(AfterJob::Keep));
        assert_eq!(after_job_reply(RETIRE, Vec::new()), Some(AfterJob::Retire));
        assert_eq!(
            after_job_reply(RETIRE_FAILED, b"r".to_vec()),
            Some(AfterJob::Failed(b"r".to_vec()))
        );
        assert_eq!(after_job_reply(RETIRE_PENDING, Vec::new()), None);
    }
}
