# --- process workers (appended to worker_loop.py when it runs in a worker process) ------------
#
# A worker process talks to its parent over one socket (never stdin/stdout, so ``print`` works):
#   parent -> worker: frames ``<Q length`` + bytes: the setup, then one job per frame;
#   worker -> parent: ``<BBQQ`` (kind, retire, len(data), len(retire_error)) + data + retire_error,
#                     first once for the setup (kind SETUP_OK, SETUP_FAILED or INIT_FAILED), then
#                     once per job;
#                     a job's ``retire`` is KEEP, or RETIRE_PENDING: the ``retire`` hook runs
#                     after the outcome is sent, and its verdict follows as one more message
#                     (kind AFTER_JOB, retire KEEP, RETIRE or RETIRE_FAILED with the records).
# End of file from the parent means "end": the worker exits 0. A worker also exits after a job
# whose retire verdict is not KEEP, and after a failed setup.
# Out-of-band buffers (see process/channel.rs) are copied by the parent straight from and into
# this process's memory when it can (PEER_MEMORY in every job frame's length), else they travel in
# memfds. Peer memory: a job frame with HAS_BUFFERS is followed by ``<Q count`` and one ``<Q`` size
# per buffer (WHOLE_BYTES set for a ``bytes``); the worker makes each buffer, answers
# BUFFER_ADDRESSES with their addresses, and reads the payload once the parent has written them.
# A value with buffers is kind VALUE_BUFFERS, its header followed by ``<Q count`` and ``<QQ``
# (address, length | WHOLE_BYTES) per buffer; the worker keeps them until the parent's RELEASE
# frame (bit 60, no payload). Memfds: a job frame with HAS_BUFFERS (bit 63) is followed by one
# byte carrying their descriptors (SCM_RIGHTS), then the payload; a value's header by such a byte.
# The numbers and header formats are the wire protocol's (worker-types/src/protocol.rs), put in
# front of this source.
# A frame whose length has bit 62 set (NUDGE) is a nudge, with no payload: the parent expects a
# job soon, and the worker spins for its next frame for the microseconds in the low 32 bits.

_SPIN_SECONDS = 50e-6
# Where a ``bytes`` object's data starts, from its address (``id``): the offset of ``ob_sval``.
_BYTES_DATA = bytes.__basicsize__ - 1
_PROBE = PEER_PROBE.encode()


def _probe():
    """SETUP_OK's data: where the parent finds PEER_PROBE in this process's memory."""
    return (id(_PROBE) + _BYTES_DATA).to_bytes(8, "little") + len(_PROBE).to_bytes(8, "little")


def _address(buffer):
    """The address of a buffer's first byte: a ``bytes``'s from its ``id``, any other contiguous
    buffer's from the buffer protocol (ctypes, imported on the first use)."""
    if type(buffer) is bytes:
        return id(buffer) + _BYTES_DATA
    import ctypes

    view = (ctypes.c_char * 128)()  # room for a Py_buffer, whose first field is the address
    ctypes.pythonapi.PyObject_GetBuffer(ctypes.py_object(buffer), ctypes.byref(view), 0)
    try:
        return ctypes.c_void_p.from_buffer(view).value or 0
    finally:
        ctypes.pythonapi.PyBuffer_Release(ctypes.byref(view))


class _Channel:
    """One non-blocking socket fd: spin briefly for the next frame, then poll."""

    def __init__(self, fd):
        import os
        import select

        self.fd, self._os = fd, os
        # Whether the last job frame said PEER_MEMORY, and the last value's buffers until the
        # parent's RELEASE.
        self.peer, self._lent = False, None
        os.set_blocking(fd, False)
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._out = select.poll()
        self._out.register(fd, select.POLLOUT)

    def _readinto(self, view, spin):
        """Fills ``view``, spinning up to ``spin`` seconds (0: none) before it polls."""
        os, fd = self._os, self.fd
        pos, deadline = 0, None
        while pos < len(view):
            try:
                n = os.readv(fd, [view[pos:]])
            except ConnectionResetError:  # the parent died with data unread: end of file
                return False
            except BlockingIOError:
                if spin:
                    import time

                    now = time.perf_counter()
                    if deadline is None:
                        deadline = now + spin
                    if now < deadline:
                        os.sched_yield()
                        continue
                self._poll.poll()
                continue
            if n == 0:
                return False
            pos += n
        return True

    def _socket(self):
        import socket

        self._sock = socket.fromfd(self.fd, socket.AF_UNIX, socket.SOCK_STREAM)
        return self._sock

    def _receive_buffers(self):
        """The memfds on the next byte, as memoryviews of private (copy-on-write) mappings."""
        import mmap
        import socket

        sock = getattr(self, "_sock", None) or self._socket()
        space = socket.CMSG_SPACE(MAX_BUFFERS * 4)
        while True:
            try:
                byte, ancdata, _flags, _addr = sock.recvmsg(1, space)
                break
            except BlockingIOError:
                self._poll.poll()
        if not byte:
            return None
        fds = []
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += memoryview(data[: len(data) - len(data) % 4]).cast("i")
        views = []
        for fd in fds:
            try:
                size = self._os.fstat(fd).st_size
                views.append(
                    memoryview(mmap.mmap(fd, size, access=mmap.ACCESS_COPY) if size else b"")
                )
            finally:
                self._os.close(fd)
        return views

    def _receive_peer_buffers(self):
        """The job's buffers after a PEER_MEMORY header: made here, written by the parent. A
        ``bytes`` starts as zeros it never touches (a large one is fresh memory, paged in as the
        parent writes it), any other buffer is a private anonymous mapping."""
        import mmap

        count = bytearray(8)
        if not self._readinto(memoryview(count), 0):
            return None
        sizes = bytearray(8 * int.from_bytes(count, "little"))
        if not self._readinto(memoryview(sizes), 0):
            return None
        buffers, addresses = [], bytearray()
        for size in memoryview(sizes).cast("Q"):
            length = size & ~WHOLE_BYTES
            if size & WHOLE_BYTES:
                buffer = bytes(length)
            else:
                buffer = memoryview(mmap.mmap(-1, length) if length else bytearray())
            buffers.append(buffer)
            addresses += _address(buffer).to_bytes(8, "little")
        self.send(BUFFER_ADDRESSES, KEEP, addresses)
        return buffers

    def receive(self):
        """The next frame as ``(bytearray, buffers | None)``, or None at end of file."""
        header = bytearray(8)  # "<Q"
        spin = _SPIN_SECONDS
        while True:
            if not self._readinto(memoryview(header), spin):
                return None
            size, buffers = int.from_bytes(header, "little"), None
            if size & RELEASE:
                self._lent = None
                continue
            if not size & NUDGE:
                break
            spin = (size & 0xFFFFFFFF) / 1e6
        self.peer = bool(size & PEER_MEMORY)
        if size & HAS_BUFFERS:
            buffers = self._receive_peer_buffers() if self.peer else self._receive_buffers()
            if buffers is None:
                return None
        data = bytearray(size & ~(HAS_BUFFERS | PEER_MEMORY))
        if not self._readinto(memoryview(data), 0):
            return None
        return data, buffers

    def wait_released(self):
        """Waits for the parent's RELEASE of the last value's buffers; False at end of file or if
        another frame comes first."""
        header = bytearray(8)
        while self._lent is not None:
            if not self._readinto(memoryview(header), 0):
                return False
            if not int.from_bytes(header, "little") & RELEASE:
                return False
            self._lent = None
        return True

    def _send_buffers(self, buffers):
        """Sends ``buffers`` as fresh memfds on one byte (the worker's descriptors are closed).
        The memfd of a whole ``bytes`` is sealed against writes: the parent then makes the
        caller's ``bytes`` itself (process/channel.rs)."""
        import fcntl
        import socket
        from array import array

        os = self._os
        fds = []
        try:
            for buffer in buffers:
                whole_bytes = type(buffer) is bytes
                flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if whole_bytes else 0)
                fd = os.memfd_create("interpool-value", flags)
                fds.append(fd)
                view = memoryview(buffer).cast("B")
                while view:
                    view = view[os.write(fd, view) :]
                if whole_bytes:
                    seals = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            sock = getattr(self, "_sock", None) or self._socket()
            ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds))]
            while True:
                try:
                    sock.sendmsg([b"\0"], ancdata)
                    return
                except BlockingIOError:
                    self._out.poll()
        finally:
            for fd in fds:
                os.close(fd)

    def send(self, kind, retire, data, retire_error=b"", buffers=None):
        import struct

        header = struct.pack(MESSAGE_HEADER, kind, retire, len(data), len(retire_error))
        if buffers and self.peer:
            described = bytearray(len(buffers).to_bytes(8, "little"))
            for buffer in buffers:
                whole = type(buffer) is bytes
                length = len(buffer) | WHOLE_BYTES if whole else memoryview(buffer).nbytes
                described += struct.pack("<QQ", _address(buffer), length)
            self._lent = buffers
            self._write([header, described, data, retire_error])
            return
        if buffers:
            self._write([header])
            self._send_buffers(buffers)
            header = b""
        self._write([header, data, retire_error])

    def _write(self, parts):
        os, fd = self._os, self.fd
        chunks = [memoryview(c) for c in parts if c]
        while chunks:
            try:
                n = os.writev(fd, chunks)
            except BlockingIOError:
                self._out.poll()
                continue
            while n:
                if n >= len(chunks[0]):
                    n -= len(chunks.pop(0))
                else:
                    chunks[0] = memoryview(chunks[0])[n:]
                    n = 0


def serve(fd):
    """Serves jobs on ``fd`` until end of file or retirement. Returns the exit code."""
    try:
        return _serve(_Channel(fd))
    except (BrokenPipeError, ConnectionResetError):
        return 1  # the parent is gone: nobody to tell


def _serve(channel):
    config = channel.receive()
    if config is None:
        return 0
    failed = setup(bytes(config[0]))
    if failed is not None:
        kind, reason, records = failed
        channel.send(kind, KEEP, reason.encode("utf-8", "replace"), records)
        return 0
    channel.send(SETUP_OK, KEEP, _probe())
    config = None
    while True:
        frame = channel.receive()
        if frame is None:
            return 0
        kind, data, retire, buffers = run(*frame)
        frame = None
        channel.send(kind, retire, data, b"", buffers)
        data = buffers = None
        if retire == RETIRE_PENDING:
            # The hook must not touch a value the parent is still reading.
            if not channel.wait_released():
                return 0
            retire, records = after_job()
            channel.send(AFTER_JOB, retire, b"", records or b"")
            if retire != KEEP:
                return 0


def _set_parent_death_signal():
    """Linux: SIGKILL this process when its parent dies. The forkserver's children need it from
    Python; spawned workers get it from the parent before exec."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)


def forkserver(boot, control):
    """The forkserver: preloads modules, then forks one worker per request on ``control``.

    ``boot`` carries two frames (the first worker's setup, for the parent's sys.path and main
    script; the modules to preload, one per line), then closes. ``control`` is a SOCK_SEQPACKET
    socket: ``b"F"`` with two fds attached (the worker's channel, and a status pipe to which the
    server writes the worker's pid, then its exit code when it is reaped), or ``b"K" + <q pid``
    (SIGKILL that worker, if it is still ours). End of file on ``control``: the parent is gone.
    """
    import os
    import signal
    import socket
    import struct

    _set_parent_death_signal()
    channel = _Channel(boot)
    config, preload = (frame and frame[0] for frame in (channel.receive(), channel.receive()))
    os.close(boot)
    if config is not None:
        try:
            sys_path, argv, main_kind, main_ref, _init, _retire = pickle.loads(config)
            if sys_path is not None:
                sys.path[:] = sys_path
            if argv is not None:
                sys.argv[:] = argv
        except Exception:
            main_kind = None
    for name in bytes(preload or b"").decode().split():
        try:
            __import__(name)
        except Exception as exc:
            print(f"interpool forkserver: cannot preload {name!r}: {exc!r}", file=sys.stderr)
    if config is not None and main_kind is not None:
        try:
            _ParentMain(main_kind, main_ref).load()
        except BaseException:
            # Each worker loads it again and reports the error to the call that needs it.
            sys.modules.pop("__mp_main__", None)
    _flush()

    sock = socket.socket(fileno=control)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children = {}  # pid -> status fd
    server_pid = os.getpid()
    import select

    def reap():
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            status_fd = children.pop(pid, None)
            if status_fd is not None:
                try:
                    os.write(status_fd, struct.pack("<q", os.waitstatus_to_exitcode(status)))
                except OSError:
                    pass
                os.close(status_fd)

    while True:
        ready, _, _ = select.select([sock, wake_r], [], [])
        if wake_r in ready:
            try:
                while os.read(wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
            reap()
        if sock not in ready:
            continue
        try:
            message, ancdata, _flags, _addr = sock.recvmsg(64, socket.CMSG_SPACE(8))
        except InterruptedError:
            continue
        if not message:
            break
        fds = []
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += struct.unpack(f"{len(data) // 4}i", data[: len(data) - len(data) % 4])
        if message[:1] == b"K":
            (pid,) = struct.unpack("<q", message[1:9])
            if pid in children:
                os.kill(pid, signal.SIGKILL)
            continue
        if message[:1] != b"F" or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            continue
        worker_fd, status_fd = fds
        try:
            pid = os.fork()
        except OSError as exc:  # e.g. EAGAIN: the parent reads end of file on the status socket
            print(f"interpool forkserver: cannot fork a worker: {exc!r}", file=sys.stderr)
            os.close(worker_fd)
            os.close(status_fd)
            continue
        if pid == 0:
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                sock.close()
                for fd in (wake_r, wake_w, status_fd, *children.values()):
                    os.close(fd)
                children.clear()
                _set_parent_death_signal()
                if os.getppid() != server_pid:  # the server died before the prctl
                    os._exit(1)
                code = serve(worker_fd)
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                _flush()
                os._exit(code)
        os.close(worker_fd)
        children[pid] = status_fd
        try:
            os.write(status_fd, struct.pack("<q", pid))
        except OSError:
            pass
    for pid in list(children):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return 0
