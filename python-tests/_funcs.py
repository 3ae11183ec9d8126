"""Job, init and retire functions run inside interpool workers by the tests.

Workers are subinterpreters of the test process, so they unpickle these
functions by reference and import this module themselves (they inherit the
parent's ``sys.path``, which holds this folder). Keep it stdlib-only: a worker
must not need trio, pytest or interpool to import it.

Module globals are per interpreter, but file descriptors are shared by the
whole process; the tests synchronise with workers through ``os.pipe()`` fds
passed as arguments. A "started" signal is the worker's interpreter id as 8
bytes (see ``signal_started``), so the parent also learns which interpreter
picked the job up.
"""

import importlib
import os
import struct
import sys
import threading
import time

STARTED_FORMAT = "<q"
STARTED_SIZE = struct.calcsize(STARTED_FORMAT)
# What ``signal_started`` sends: the worker's ``worker_id()``.
WORKER_ID_FORMAT = "<qq"
WORKER_ID_SIZE = struct.calcsize(WORKER_ID_FORMAT)


class _Opened:
    """An fd given to a job (an ``os.pipe()`` end: subinterpreters share the test's fds), or a
    FIFO's path (``_helpers.Fifo``: any worker type), opened for the ``with`` block."""

    def __init__(self, target, flags):
        self.target, self.flags, self.fd = target, flags, None

    def __enter__(self):
        if isinstance(self.target, int):
            return self.target
        self.fd = os.open(self.target, self.flags)
        return self.fd

    def __exit__(self, *exc_info):
        if self.fd is not None:
            os.close(self.fd)


def writing(target):
    return _Opened(target, os.O_WRONLY)


def reading(source):
    return _Opened(source, os.O_RDONLY)


def interpreter_id():
    """The id of the interpreter running this code (0 is the main one)."""
    import _interpreters  # CPython >= 3.13

    return _interpreters.get_current()[0]


def worker_id():
    """Which worker runs this, on any worker type: ``(pid, interpreter id)``."""
    try:
        import _interpreters  # CPython >= 3.13
    except ImportError:
        return os.getpid(), 0
    return os.getpid(), _interpreters.get_current()[0]


def signal_started(started_w):
    with writing(started_w) as fd:
        os.write(fd, struct.pack(WORKER_ID_FORMAT, *worker_id()))


# --- plain jobs -------------------------------------------------------------


def add(a, b):
    return a + b


def identity(x):
    return x


def claim(directory, i):
    """Create ``directory/i`` and return ``i``: a job run twice raises FileExistsError, so the
    files left say which jobs ran, each at most once."""
    os.close(os.open(os.path.join(directory, str(i)), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    return i


def pid_and_interpreter():
    return os.getpid(), interpreter_id()


def write_file(path, text):
    with open(path, "w") as f:
        f.write(text)
    return text


def print_hello():
    # No flush: the worker must flush stdout after each job itself.
    print("hello from worker")
    return "printed"


def get_sys_path():
    return list(sys.path)


def make_lock():
    return threading.Lock()


async def async_job():
    return 1


def returns_coroutine():
    # A sync function whose result is a coroutine object.
    return async_job()


# --- exceptions -------------------------------------------------------------


class CustomError(Exception):
    pass


class CustomBaseError(BaseException):
    pass


def raise_value_error(msg):
    raise ValueError(msg)


def raise_custom_error(payload):
    raise CustomError(payload, 42)


def raise_with_cause():
    try:
        raise ValueError("the cause")
    except ValueError as exc:
        raise KeyError("the effect") from exc


def raise_from_unraised_cause():
    raise KeyError("effect") from ValueError("never raised")


def raise_with_context():
    try:
        raise ValueError("the context")
    except ValueError:
        raise KeyError("during handling")  # noqa: B904 - tests the implicit __context__


def raise_from_none():
    try:
        raise ValueError("hidden")
    except ValueError:
        raise KeyError("suppressed") from None


def raise_system_exit(code):
    sys.exit(code)


def raise_custom_base_error(payload):
    raise CustomBaseError(payload)


def raise_unpicklable_exception():
    raise ValueError(threading.Lock())


def raise_keyboard_interrupt():
    raise KeyboardInterrupt


# --- jobs synchronised through pipes ----------------------------------------


def signal_and_block(started_w, release_r, value):
    """Signal "started", block in C code (os.read) until released, return value."""
    with reading(release_r) as fd:
        signal_started(started_w)
        os.read(fd, 1)
    return value


def signal_and_ignore_interrupts(started_w, release_r, finished_w):
    """A job that does not stop when interrupted: it swallows every
    KeyboardInterrupt, wherever it lands. Signals "started", blocks in os.read
    until EOF on release_r, then signals "finished" (the parent keeps release_r
    open until then). A KeyboardInterrupt landing between a call and the
    bookkeeping after it only repeats a harmless step."""
    state = {"started": False, "eof": False}
    with reading(release_r) as release, writing(finished_w) as finished:
        while True:
            try:
                if not state["started"]:
                    signal_started(started_w)
                    state["started"] = True
                if not state["eof"]:
                    if os.read(release, 1) == b"":
                        state["eof"] = True
                    continue
                os.write(finished, b"f")
                return "finished"
            except KeyboardInterrupt:
                pass


def signal_and_spin(started_w):
    """Signal "started", then spin in pure Python forever."""
    signal_started(started_w)
    while True:
        pass


def rendezvous_and_spin(my_started_w, other_started_r, iterations):
    """Meet the other job (so both provably run at once), then burn CPU.

    Returns (pid, interpreter id, start, end, GIL setting of this interpreter).
    """
    import _interpreters

    os.write(my_started_w, b"s")
    if os.read(other_started_r, 1) != b"s":
        raise RuntimeError("the other job never started")
    start = time.monotonic()
    total = 0
    for i in range(iterations):
        total += i * i
    end = time.monotonic()
    own_id = _interpreters.get_current()[0]
    gil = _interpreters.get_config(own_id).gil
    return os.getpid(), own_id, start, end, gil


# --- init / retire hooks ----------------------------------------------------

init_count = 0


def counting_init():
    global init_count
    init_count += 1


def get_init_count():
    return init_count


def failing_init():
    raise ValueError("init failed")


def always_true():
    return True


def failing_retire():
    raise ValueError("retire failed")


def call_interpool_inside_worker():
    """``import interpool`` works in a worker, but its API refuses to run there."""
    import interpool

    try:
        interpool.run_sync(abs, -1)
    except RuntimeError as error:
        return str(error)
    return "no error"


# --- map helpers --------------------------------------------------------------


def dispatch(name, *args):
    """Call the function of this module named ``name``: one callable for astarmap items that
    each do something different."""
    return globals()[name](*args)


def block_then_return(release_r, value):
    with reading(release_r) as fd:
        os.read(fd, 1)
    return value


def raise_if_seven(x):
    if x == 7:
        raise ValueError(x)
    return x * 10


def value_and_interpreter(x):
    return x, interpreter_id()


# --- process workers (test_process.py) ---------------------------------------
# A worker process inherits none of the test's pipes, so these jobs synchronise through FIFOs
# named by path (see test_process.Fifo).


def signal_started_at(path):
    """Write this process's pid to the FIFO ``path``."""
    with open(path, "wb", buffering=0) as f:
        f.write(struct.pack(STARTED_FORMAT, os.getpid()))


def spin_after_signal(path):
    signal_started_at(path)
    while True:
        pass


def block_after_signal(path, release_path):
    """Signal "started", then block in C code until the parent writes to ``release_path``."""
    signal_started_at(path)
    with open(release_path, "rb", buffering=0) as f:
        return f.read(1)


def segfault():
    import ctypes

    ctypes.string_at(0)


def in_a_worker():
    return "_interpool_worker" in sys.modules


def interpool_modules(also_import=None):
    """The interpool modules imported in this interpreter, after importing ``also_import``."""
    if also_import is not None:
        importlib.import_module(also_import)
    return sorted(m for m in sys.modules if m == "interpool" or m.startswith("interpool."))


def raise_in_worker(message):
    if in_a_worker():
        raise ValueError(message)


def raise_outside_worker(message):
    if not in_a_worker():
        raise ValueError(message)


class LoadFailsInWorker:
    """Pickles in the parent; unpickling it in a worker raises ValueError."""

    def __reduce__(self):
        return raise_in_worker, ("unpickling in the worker failed",)


def raise_in_worker_naming_pid(message):
    if in_a_worker():
        raise ValueError(f"{message} (pid {os.getpid()})")


class LoadFailsInWorkerNamingPid:
    """Unpickling it in any worker raises ValueError naming the worker's pid."""

    def __reduce__(self):
        return raise_in_worker_naming_pid, ("unpickling in the worker failed",)


class LoadFailsInParent:
    """Pickles in a worker; unpickling it in the parent raises ValueError."""

    def __reduce__(self):
        return raise_outside_worker, ("unpickling in the parent failed",)


def return_load_fails_in_parent():
    return LoadFailsInParent()


def module_loaded(name):
    return name in sys.modules


# --- AUTO (test_auto.py) ------------------------------------------------------


def numpy_sum(array):
    """Takes a numpy array: unpickling the arguments imports numpy."""
    return int(array.sum()), os.getpid()


def import_numpy():
    """An init that imports a module refusing subinterpreters."""
    import numpy  # noqa: F401


def raise_refusal_lookalike():
    """A user function raising the very error a refusing module gives: never retried."""
    raise ImportError(f"module fake does not support loading in subinterpreters ({os.getpid()})")


def pid():
    return os.getpid()


def modules_loaded(names):
    """Which of ``names`` this interpreter has imported."""
    return [name for name in names if name in sys.modules]


def use_manager_proxies(event, queue, shared):
    """Uses ``multiprocessing.Manager()`` proxies: each connects to the manager with this
    worker's authkey, which must be the parent's."""
    event.set()
    queue.put("from the worker")
    shared["key"] = "value"
    return os.getpid()


def module_imported(name):
    return name in sys.modules


# --- out-of-band buffers (test_buffers.py) ----------------------------------------------------


def make_buffer(kind, size):
    """A buffer of ``kind`` holding ``size`` bytes of a known pattern, made in the worker."""
    from array import array

    data = bytes(i % 251 for i in range(size))
    if kind == "bytes":
        return data
    if kind == "bytearray":
        return bytearray(data)
    if kind == "memoryview":
        return memoryview(bytearray(data))
    if kind == "array":
        return array("B", data)
    if kind == "numpy":
        import numpy

        return numpy.frombuffer(bytearray(data), dtype=numpy.uint8)
    if kind == "picklebuffer":
        return Blob(bytearray(data))
    raise ValueError(kind)


_KEPT = []


def make_kept_bytes(size):
    """``make_buffer("bytes", size)``, also kept by the worker (a global), which therefore cannot
    give it to the caller; ``release_kept`` lets go of it."""
    _KEPT.append(make_buffer("bytes", size))
    return _KEPT[-1]


def release_kept():
    _KEPT.clear()


def describe(value):
    """``(type name, contents as bytes)`` of a buffer of any kind."""
    if isinstance(value, Blob):
        return "Blob", bytes(value.data)
    return type(value).__name__, bytes(memoryview(value).cast("B"))


def view_from(data, start):
    """A view of a copy of ``data`` from ``start`` on: a result whose memory starts unaligned."""
    return memoryview(bytearray(data))[start:]


def exporter_of(view):
    """The type name of the object exporting ``view``'s memory: how an argument arrived."""
    return type(view.obj).__name__


class Blob:
    """A user type that exposes its data as a ``PickleBuffer`` (as numpy arrays do)."""

    def __init__(self, data):
        self.data = data

    def __reduce_ex__(self, protocol):
        import pickle

        if protocol >= 5:
            return Blob, (pickle.PickleBuffer(self.data),)
        return Blob, (bytes(self.data),)


def memfds_mapped_with(buffer):
    """How many of interpool's memfds this worker has mapped while ``buffer`` (an argument) is
    alive: how the argument arrived in a process worker (0: written by the parent itself)."""
    with open("/proc/self/maps") as maps:
        return sum("/memfd:interpool" in line for line in maps)


_OVERWRITTEN = []


def view_overwritten_on_retire(size):
    """A view of a ``size``-byte ``bytearray`` of ``b"k"`` kept here; ``overwrite_on_retire``, a
    ``retire`` hook, overwrites it with ``b"X"`` once the job is over."""
    _OVERWRITTEN[:] = [bytearray(b"k" * size)]
    return memoryview(_OVERWRITTEN[0])


def overwrite_on_retire():
    for kept in _OVERWRITTEN:
        kept[:] = b"X" * len(kept)
    return False


def spin_with_buffer_after_signal(path, buffer):
    signal_started_at(path)
    while True:
        pass


# --- reliability (test_reliability.py) ----------------------------------------


def busy_identity(x, iterations):
    """``x``, after ``iterations`` of pure-Python work (interruptible anywhere)."""
    for _ in range(iterations):
        pass
    return x


def keep_once_released(release_path):
    """A ``retire`` hook that blocks in C code until the parent writes a byte to the FIFO
    ``release_path``, then keeps the worker."""
    with open(release_path, "rb", buffering=0) as f:
        f.read(1)
    return False


class BlockWhileLoaded:
    """An argument whose unpickling, in the worker, signals "started" and blocks until released:
    a job that is still being loaded."""

    def __init__(self, started_w, release_r):
        self.fds = started_w, release_r

    def __reduce__(self):
        return signal_and_block, (*self.fds, "loaded")


# --- learned run times (the prewake) ------------------------------------------


def learned_job(mode, *args):
    """One callable (one learned run time) whose calls run as long as the test needs: "busy"
    busy-waits ``args[0]`` seconds; "block" signals ``args[0]`` and blocks until ``args[1]`` is
    released, then returns ``args[2]``; "spin" signals ``args[0]`` and spins forever."""
    if mode == "busy":
        end = time.perf_counter() + args[0]
        while time.perf_counter() < end:
            pass
        return "busy"
    if mode == "block":
        return signal_and_block(*args)
    signal_and_spin(*args)


def out_of_band_buffers(kind, size):
    """How many out-of-band buffers the worker loop makes of a ``make_buffer(kind, size)`` value
    (0: in band), asked of the loop itself (``_interpool_worker`` in this worker)."""
    _, buffers = sys.modules["_interpool_worker"]._dumps_value(make_buffer(kind, size))
    return 0 if buffers is None else len(buffers)
