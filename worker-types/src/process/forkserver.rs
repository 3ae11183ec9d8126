//! The forkserver: one Python process per host that forks the `forkserver` workers.
//!
//! Started lazily by the first worker, on a thread of its own that lives exactly as long as the
//! server (it waits for it and reaps it), so that the server's `PR_SET_PDEATHSIG` fires only when
//! the host dies. The server gets two fds: a boot socket (the loop source, the first worker's setup
//! for `sys.path` and the main script, and the modules to preload) and a `SOCK_SEQPACKET` control
//! socket. Per worker the host sends `b"F"` with two fds attached (SCM_RIGHTS, as
//! `multiprocessing`'s forkserver does): the worker's channel and a status socket on which the
//! server writes the worker's pid, then its exit code once it reaps it. Kills go through the
//! server (`b"K"` + pid), which knows, single-threaded, whether that pid is still its child.

use std::{
    io::{self, Read},
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::net::UnixStream,
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex, PoisonError,
    },
};

use super::{
    channel::Channel,
    child::{BOOTSTRAP, LOOP_SOURCE},
    sys,
};

static PRELOAD: Mutex<Vec<String>> = Mutex::new(Vec::new());
static SERVER: Mutex<Option<Arc<Server>>> = Mutex::new(None);

/// Sets the modules the forkserver imports before it forks workers. It applies when the server
/// next starts; returns false if one is running now (then nothing changes).
pub fn set_forkserver_preload(modules: Vec<String>) -> bool {
    let server = SERVER.lock().unwrap_or_else(PoisonError::into_inner);
    if server.as_ref().is_some_and(|s| s.is_alive()) {
        return false;
    }
    *PRELOAD.lock().unwrap_or_else(PoisonError::into_inner) = modules;
    true
}

/// Whether this host's forkserver is running.
pub fn forkserver_running() -> bool {
    SERVER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .is_some_and(|s| s.is_alive())
}

/// The host's side of the server.
#[derive(Debug)]
pub(crate) struct Server {
    control: Mutex<OwnedFd>,
    alive: AtomicBool,
}

impl Server {
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    fn send(&self, message: &[u8], fds: &[i32]) -> io::Result<()> {
        let control = self.control.lock().unwrap_or_else(PoisonError::into_inner);
        sys::send_with_fds(control.as_fd(), message, fds)
    }

    /// Forks a worker that serves `channel`; returns its pid and the socket on which the server
    /// reports its exit code.
    fn fork(&self, channel: &UnixStream) -> io::Result<(u32, UnixStream)> {
        let (mut status, status_theirs) = UnixStream::pair()?;
        self.send(b"F", &[channel.as_raw_fd(), status_theirs.as_raw_fd()])?;
        drop(status_theirs);
        let mut pid = [0u8; 8];
        status.read_exact(&mut pid).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("the forkserver did not fork a worker: {e}"),
            )
        })?;
        let pid = u32::try_from(i64::from_le_bytes(pid))
            .map_err(|_| io::Error::other("the forkserver sent a bad pid"))?;
        Ok((pid, status))
    }

    /// Asks the server to SIGKILL its child `pid` (ignored if it was reaped meanwhile).
    pub(crate) fn kill(&self, pid: u32) {
        let mut message = vec![b'K'];
        message.extend_from_slice(&i64::from(pid).to_le_bytes());
        // A dead server has killed its children already (PR_SET_PDEATHSIG).
        let _ = self.send(&message, &[]);
    }
}

/// Forks a worker that serves `channel` from the running server (started now if needed, with
/// `setup`): its pid, the socket on which the server reports its exit code, and the server.
/// A server that died since it started (killed, out of memory) is replaced, once.
pub(crate) fn fork(
    python: &Path,
    setup: &[u8],
    channel: &UnixStream,
) -> io::Result<(u32, UnixStream, Arc<Server>)> {
    let server = server(python, setup).map_err(io::Error::other)?;
    match server.fork(channel) {
        Ok((pid, status)) => Ok((pid, status, server)),
        Err(_) => {
            server.alive.store(false, Ordering::Release);
            let server = self::server(python, setup).map_err(io::Error::other)?;
            let (pid, status) = server.fork(channel)?;
            Ok((pid, status, server))
        }
    }
}

/// The running server, started now if needed with `setup` (a worker setup payload: its
/// `sys.path` and main script are the server's).
fn server(python: &Path, setup: &[u8]) -> Result<Arc<Server>, String> {
    let mut current = SERVER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(server) = current.as_ref().filter(|s| s.is_alive()) {
        return Ok(server.clone());
    }
    let preload = PRELOAD
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .join("\n");
    let server = start(python.to_owned(), setup, preload.as_bytes())
        .map_err(|e| format!("could not start the forkserver: {e}"))?;
    *current = Some(server.clone());
    Ok(server)
}

fn start(python: PathBuf, setup: &[u8], preload: &[u8]) -> io::Result<Arc<Server>> {
    let (boot, boot_theirs) = UnixStream::pair()?;
    let (control, control_theirs) = sys::seqpacket_pair()?;
    let server = Arc::new(Server {
        control: Mutex::new(control),
        alive: AtomicBool::new(true),
    });
    let (started_tx, started_rx) = mpsc::channel();
    let keeper_server = server.clone();
    std::thread::Builder::new()
        .name("interpool-forkserver".to_owned())
        .spawn(move || {
            let mut command = Command::new(python);
            let fds = [boot_theirs.as_raw_fd(), control_theirs.as_raw_fd()];
            command
                .arg("-c")
                .arg(BOOTSTRAP)
                .arg(fds[0].to_string())
                .arg("forkserver")
                .arg(fds[1].to_string())
                .stdin(Stdio::null());
            sys::prepare_command(&mut command, &fds);
            let spawned = command.spawn();
            drop((boot_theirs, control_theirs));
            match spawned {
                Ok(mut child) => {
                    let _ = started_tx.send(Ok(()));
                    // This thread must outlive the server (PR_SET_PDEATHSIG): it waits here.
                    let _ = child.wait();
                }
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                }
            }
            keeper_server.alive.store(false, Ordering::Release);
        })?;
    started_rx
        .recv()
        .map_err(|_| io::Error::other("the forkserver thread ended"))??;
    let boot = Channel::new(boot)?;
    boot.send_frame(LOOP_SOURCE.as_bytes())?;
    boot.send_frame(setup)?;
    boot.send_frame(preload)?;
    Ok(server)
}
