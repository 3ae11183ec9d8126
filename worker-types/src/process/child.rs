//! A worker's process: starting it, killing it, reaping it.
//!
//! The process is started by the worker's own thread (`thread`), so that `PR_SET_PDEATHSIG`
//! (which fires when the *thread* that forked the child ends) kills it exactly when its manager is
//! gone. From the moment it exists it is registered in the worker's [`ChildSlot`], so that a kill
//! asked for at any time (even before it started) reaches it, and it is reaped exactly once
//! (invariant 2 of `sys`): a spawned child by us, a forkserver child by the server, which reports
//! its exit code on the worker's status pipe.

use std::{
    io::{self, Read},
    os::{
        fd::AsRawFd,
        unix::{net::UnixStream, process::ExitStatusExt},
    },
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
};

use super::{channel::Channel, forkserver, sys, Shared};

/// The Python source a worker process runs: the wire protocol's numbers, the shared loop, and
/// the process channel.
pub(super) const LOOP_SOURCE: &str = concat!(
    crate::protocol::python_constants!(),
    include_str!("../subinterpreter/worker_loop.py"),
    include_str!("process_loop.py")
);

/// `python -c` code that loads [`LOOP_SOURCE`] from the channel and serves. It keeps `__main__`
/// clean (jobs pickled as `__main__.f` must find the parent's script, not our names).
pub(super) const BOOTSTRAP: &str = r#"def _interpool_boot():
    import os, signal, sys
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    del globals()["_interpool_boot"]
    args = sys.argv[1:]
    fd = int(args[0])
    def read(n):
        data = b""
        while len(data) < n:
            chunk = os.read(fd, n - len(data))
            if not chunk:
                os._exit(0)
            data += chunk
        return data
    source = read(int.from_bytes(read(8), "little")).decode()
    module = type(sys)("_interpool_worker")
    module.__file__ = "<interpool worker loop>"
    sys.modules["_interpool_worker"] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    if args[1] == "worker":
        code = module.serve(fd)
    else:
        code = module.forkserver(fd, int(args[2]))
    module._flush()
    os._exit(code)
_interpool_boot()
"#;

/// The worker's process, as far as killing and reaping go (invariant 2 of `sys`).
#[derive(Debug)]
pub(super) enum ChildSlot {
    /// Not started yet; a kill asked for meanwhile is done as soon as it starts.
    Starting { kill_requested: bool },
    /// Our own child (spawn).
    Spawned(Child),
    /// A child of the forkserver; the server kills it on request and reports its exit.
    Forked {
        pid: u32,
        server: Arc<forkserver::Server>,
    },
    /// Gone: reaped, or never started.
    Reaped,
}

impl ChildSlot {
    pub(super) fn pid(&self) -> Option<u32> {
        match self {
            ChildSlot::Spawned(child) => Some(child.id()),
            ChildSlot::Forked { pid, .. } => Some(*pid),
            ChildSlot::Starting { .. } | ChildSlot::Reaped => None,
        }
    }

    pub(super) fn kill(&mut self) {
        match self {
            ChildSlot::Starting { kill_requested } => *kill_requested = true,
            // An error means it is already gone (ESRCH cannot happen before reaping, but a
            // failure to kill leaves nothing better to do).
            ChildSlot::Spawned(child) => drop(sys::kill(child.id())),
            ChildSlot::Forked { pid, server } => server.kill(*pid),
            ChildSlot::Reaped => {}
        }
    }
}

/// A running worker process, as its thread sees it.
#[derive(Debug)]
pub(super) struct Running {
    pub(super) channel: Channel,
    /// Forkserver children: the pipe on which the server reports the exit code.
    status: Option<UnixStream>,
}

/// Starts the process (in the worker's own thread: see the module docs) and registers it.
pub(super) fn launch(
    shared: &Shared,
    python: &PathBuf,
    forkserver: bool,
    setup: &[u8],
) -> io::Result<Running> {
    let (ours, theirs) = UnixStream::pair()?;
    // Everything that can fail before the process exists fails here: once it does, it must be
    // registered (and so killed and reaped) whatever happens next.
    let channel = Channel::new(ours)?;
    let (slot, status) = if forkserver {
        let (pid, status, server) = forkserver::fork(python, setup, &theirs)?;
        drop(theirs);
        (ChildSlot::Forked { pid, server }, Some(status))
    } else {
        let mut command = Command::new(python);
        command
            .arg("-c")
            .arg(BOOTSTRAP)
            .arg(theirs.as_raw_fd().to_string())
            .arg("worker")
            .stdin(Stdio::null());
        sys::prepare_command(&mut command, &[theirs.as_raw_fd()]);
        let child = command.spawn()?;
        drop(theirs);
        (ChildSlot::Spawned(child), None)
    };
    {
        let mut child = shared.child();
        let kill_requested = matches!(
            *child,
            ChildSlot::Starting {
                kill_requested: true
            }
        );
        *child = slot;
        if kill_requested {
            child.kill();
        }
    }
    Ok(Running { channel, status })
}

/// Waits for the process to end (killing it first if `kill`), reaps it, and returns its exit
/// code.
pub(super) fn reap(shared: &Shared, running: Option<&mut Running>, kill: bool) -> Option<i32> {
    let pid = {
        let mut child = shared.child();
        if kill {
            child.kill();
        }
        match &*child {
            ChildSlot::Spawned(child) => Some(child.id()),
            ChildSlot::Forked { .. } => None,
            ChildSlot::Starting { .. } | ChildSlot::Reaped => {
                *child = ChildSlot::Reaped;
                return None;
            }
        }
    };
    let code = if let Some(pid) = pid {
        // Not under the lock: a kill must stay possible while we wait (sys invariant 2).
        let _ = sys::wait_dead(pid);
        let mut child = shared.child();
        match std::mem::replace(&mut *child, ChildSlot::Reaped) {
            ChildSlot::Spawned(mut child) => child.wait().ok().and_then(exit_code),
            _ => None,
        }
    } else {
        let mut code = [0u8; 8];
        let status = running.and_then(|r| r.status.as_mut());
        let code = match status.map(|s| s.read_exact(&mut code)) {
            Some(Ok(())) => i32::try_from(i64::from_le_bytes(code)).ok(),
            _ => None,
        };
        *shared.child() = ChildSlot::Reaped;
        code
    };
    code
}

/// How a process ended, as an exit code or minus a signal.
fn exit_code(status: std::process::ExitStatus) -> Option<i32> {
    status.code().or_else(|| status.signal().map(|s| -s))
}

/// `exit code -11, SIGSEGV`, for messages.
pub fn describe_exit_code(code: Option<i32>) -> String {
    let Some(code) = code else {
        return "exit code unknown".to_owned();
    };
    let name = match -code {
        1 => "SIGHUP",
        2 => "SIGINT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => return format!("exit code {code}"),
    };
    format!("exit code {code}, {name}")
}
