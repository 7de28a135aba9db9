"""Entry point of an agent process: warm up once, then serve calls — one at a time, or up to
``max_concurrency`` at once on an event loop and a thread pool.

Each reply echoes the id of the call it answers. While a call runs, a heartbeat thread (if the
pool asked for one in INIT) shows the pool that the agent is alive.

Started as ``python _agent_main.py CMD_FD RESULT_FD LIFELINE_FD PARENT_PID`` by the process
backend. It deliberately imports nothing of shoal (only ``_wire``, beside it) so that a cold start
costs the interpreter, the user's imports and the user's setup, and nothing more.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import sys
import threading
import time
import traceback
from collections import OrderedDict, deque
from typing import Any

try:
    import _wire  # type: ignore[import-not-found]  # beside this file: sys.path[0] when run by path
except ImportError:  # imported as part of shoal (the Ray backend's actors do)
    from shoal.backends import _wire

EXIT_PARENT_GONE = 70
_READ_SIZE = 1 << 16
_FUNCTION_CACHE = 256  # functions kept by key; an evicted one is simply sent again
_loop: Any = None
_PID = os.getpid()  # a forked copy of this agent sees another pid, and must not answer


def _exit_if_forked() -> None:
    """End a copy of the agent that a call made with ``os.fork()`` and let return here: it
    shares the agent's channel, and any frame it wrote would be taken for the agent's."""
    if os.getpid() != _PID:
        os._exit(0)


class Heartbeat:
    """A thread that sends a HEARTBEAT frame every ``interval`` seconds while a call runs.

    It costs the main loop two attribute writes per call and no system call: the thread wakes
    every ``interval`` and beats only if the call it saw running at its previous wake-up still
    runs (so a call shorter than ``interval`` is never beaten for). When it finds the agent idle
    it parks on an event, and the next call to start wakes it (one system call then, none for
    the calls after it while it is awake).
    """

    def __init__(
        self, interval: float, res_fd: int, lock: threading.Lock, every_wake: bool = False
    ) -> None:
        self.interval = interval
        # Beat at every wake-up while busy (calls overlap: there is no single call to follow).
        self.every_wake = every_wake
        self.res_fd = res_fd
        self.lock = lock  # every write to res_fd, from any thread, holds it
        self.calls = 0  # calls started so far
        self.busy = False
        self.parked = False
        self._wake = threading.Event()
        threading.Thread(target=self._run, name="shoal-heartbeat", daemon=True).start()

    def begin(self) -> None:
        """A call starts (main thread)."""
        self.calls += 1
        self.busy = True
        if self.parked:
            self.parked = False
            self._wake.set()

    def _run(self) -> None:
        seen = -1
        while True:
            time.sleep(self.interval)
            _exit_if_forked()
            calls, busy = self.calls, self.busy
            if busy and (calls == seen or self.every_wake):
                with self.lock:
                    _wire.send(self.res_fd, _wire.HEARTBEAT_MSG)
            elif not busy:
                self.parked = True
                if not self.busy:  # begin() may have run between the two reads
                    self._wake.wait()
                    self._wake.clear()
                self.parked = False
                calls = self.calls
            seen = calls


def _die_with_parent(lifeline_fd: int, parent_pid: int) -> None:
    """Exit as soon as the pool's process is gone, even if it was SIGKILLed mid-call.

    ``parent_pid`` 0 means the pool is not our parent (a container): the lifeline alone tells.
    """
    if parent_pid and sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if parent_pid and os.getppid() != parent_pid:
        os._exit(EXIT_PARENT_GONE)

    def watch() -> None:
        # The parent holds the only write end: a read returns (EOF) only when it is gone.
        try:
            os.read(lifeline_fd, 1)
        finally:
            os._exit(EXIT_PARENT_GONE)

    threading.Thread(target=watch, name="shoal-lifeline", daemon=True).start()


def _no_interrupt(signum: int, frame: Any) -> None:
    """SIGINT does nothing to an agent (and, unlike SIG_IGN, is not inherited across exec)."""


def _adopt_descendants() -> None:
    """Become the child subreaper of what our calls start, and end it all when we exit.

    A step's subprocess that daemonises (double fork, setsid) leaves the agent's process
    group; as a subreaper (Linux) the agent still becomes its parent, so on the agent's way out
    every process still below it is killed and reaped, as many generations deep as there are.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_child_subreaper = 36
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1)
    import atexit

    atexit.register(_kill_descendants, os.getpid())


def _kill_descendants(me: int) -> None:
    if os.getpid() != me:  # a forked child of a call, exiting normally: not ours to clean
        return
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        children = _children(me)
        if not children:
            return
        for pid in children:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in children:
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)


def _children(me: int) -> list[int]:
    """Our child processes, from /proc (empty where there is no /proc)."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with (
                    contextlib.suppress(OSError, IndexError, ValueError),
                    open(f"/proc/{entry}/stat", "rb") as f,
                ):
                    if int(f.read().rsplit(b")", 1)[1].split()[1]) == me:
                        found.append(int(entry))
    return found


def _dumps(obj: Any) -> bytes:
    try:
        return pickle.dumps(obj, _wire.PROTOCOL)
    except Exception:
        import cloudpickle

        by_value: bytes = cloudpickle.dumps(obj, _wire.PROTOCOL)
        return by_value


def _exception_message(kind: int, exc: BaseException) -> bytes:
    try:
        tb = "".join(traceback.format_exception(exc))
    except Exception:
        tb = f"{type(exc).__qualname__} (its traceback could not be formatted)\n"
    try:
        text = str(exc)
    except Exception:
        text = f"<{type(exc).__qualname__} that cannot be printed>"
    blob: bytes | None
    try:
        # cloudpickle when needed: an exception class from the user's script goes back by
        # value, and cloudpickle maps it onto the caller's own class again.
        blob = _dumps(exc)
        pickle.loads(blob)  # an exception that cannot be rebuilt travels as text only
    except Exception:
        blob = None
    return _dumps((kind, blob, type(exc).__qualname__, text, tb))


def _await(result: Any) -> Any:
    """Run a coroutine returned by a call on this agent's own long-lived event loop."""
    global _loop
    if _loop is None:
        import asyncio

        _loop = asyncio.new_event_loop()
    return _loop.run_until_complete(result)


def _call(fn: Any, args: Any, kwargs: Any) -> Any:
    result = fn(*args, **kwargs)
    if hasattr(type(result), "__await__"):
        result = _await(result)
    return result


class _Spin:
    """When polling for the next call pays, learned from the calls themselves.

    A poll pays when the next call arrives while the agent is still awake (the parent's write
    then costs ~2 µs instead of a cross-core wake-up of ~12) and the CPU it burns was free.
    It does not when the next call comes too late (the agent burned its budget for nothing),
    or when every core is wanted: on two cores an agent that polls takes the CPU the
    controller needs to send the next call. So an agent polls only when the machine has a
    core to spare — Linux's count of runnable threads (``/proc/loadavg``, this one included)
    below the cores this process may use — and backs off after each poll that ran out (skips
    the next 1, 2, 4 ... 64 calls, reset by a poll that found its call).
    """

    __slots__ = ("cpus", "fd", "misses", "skip")

    def __init__(self) -> None:
        self.misses = 0
        self.skip = 0
        try:
            self.cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            self.cpus = os.cpu_count() or 1
        try:
            self.fd = os.open("/proc/loadavg", os.O_RDONLY)
        except OSError:
            self.fd = -1

    def core_to_spare(self) -> bool:
        """Fewer threads runnable than cores (unknown: yes)."""
        if self.fd < 0:
            return True
        try:
            running = int(os.pread(self.fd, 64, 0).split()[3].split(b"/")[0])
        except (OSError, ValueError, IndexError):
            return True
        return running < self.cpus

    def paid(self, hit: bool) -> None:
        if hit:
            self.misses = 0
        else:
            self.misses = min(self.misses + 1, 6)
            self.skip = 1 << (self.misses - 1)


_spin = _Spin()


def _spin_for_command(poller: select.poll, spin_s: float) -> None:
    """Poll for the next command for up to ``spin_s`` before blocking on it, when that pays
    (see :class:`_Spin`).

    Under load the next call arrives within microseconds of the last reply; an agent that is
    still awake then saves the parent a cross-core wake-up on every call. Yielding between
    polls hands the core to anyone runnable.
    """
    spin = _spin
    if spin.skip:
        spin.skip -= 1
        return
    if poller.poll(0):
        spin.paid(True)
        return
    if not spin.core_to_spare():
        return
    clock = time.perf_counter
    deadline = clock() + spin_s
    while not poller.poll(0):
        if clock() >= deadline:
            spin.paid(False)
            return
        os.sched_yield()
    spin.paid(True)


# True while this agent unpickles what the pool sent, which may import the user's modules. A
# module that starts a pool when imported (no `if __name__ == "__main__":` guard) would then
# start agents that import it again, without end: the pool refuses to start meanwhile.
SHOAL_AGENT_LOADING = False


def _load(blob: bytes) -> Any:
    global SHOAL_AGENT_LOADING
    SHOAL_AGENT_LOADING = True
    try:
        return pickle.loads(blob)
    finally:
        SHOAL_AGENT_LOADING = False


def warm_up(setup_blob: bytes) -> bytes | None:
    """Run the pool's setup; None when it went well, else the START_FAILED reply."""
    try:
        setup = _load(setup_blob)
        if setup is not None:
            _call(setup, (), {})
    except BaseException as exc:
        return _exception_message(_wire.START_FAILED, exc)
    return None


def decode(body: bytes, functions: OrderedDict[int, Any]) -> tuple[Any, Any, Any] | bytes:
    """A pickled CALL as ``(fn, args, kwargs)``, or the reply to send if it cannot run."""
    try:
        msg = _load(body)
    except Exception as exc:
        return _dumps((_wire.UNPICKLABLE, "the call", f"{type(exc).__name__}: {exc}"))
    _, key, fn_blob, args, kwargs = msg
    if fn_blob is None and key not in functions:
        return _dumps((_wire.UNKNOWN_FN, key))
    try:
        if fn_blob is None:
            fn = functions[key]
            functions.move_to_end(key)
        else:
            fn = _load(fn_blob)
            if key is not None:
                functions[key] = fn
                if len(functions) > _FUNCTION_CACHE:
                    functions.popitem(last=False)
    except BaseException as exc:
        return _exception_message(_wire.RAISED, exc)
    return fn, args, kwargs


def result_message(result: Any) -> bytes:
    try:
        return _dumps((_wire.OK, result))
    except Exception as exc:
        detail = f"{type(result).__qualname__} object: {exc}"
        return _dumps((_wire.UNPICKLABLE, "the result", detail))


def serve(body: bytes, functions: OrderedDict[int, Any]) -> bytes:
    """Run one pickled CALL and return the pickled reply. Never raises."""
    call = decode(body, functions)
    if isinstance(call, bytes):
        return call
    fn, args, kwargs = call
    try:
        result = _call(fn, args, kwargs)
    except BaseException as exc:
        return _exception_message(_wire.RAISED, exc)
    return result_message(result)


def _is_async(fn: Any) -> bool:
    """True for a coroutine function, or a shoal step/mapreduce wrapper around one: it may be
    called on the event loop itself, which then runs the coroutine with the others."""
    import inspect

    return inspect.iscoroutinefunction(fn) or bool(getattr(fn, "shoal_async", False))


def serve_concurrently(
    cmd_fd: int,
    res_fd: int,
    functions: OrderedDict[int, Any],
    slots: int,
    lock: threading.Lock,
    beat: Heartbeat | None,
) -> None:
    """Serve calls ``slots`` at a time: coroutines run together on this thread's event loop,
    plain functions in a pool of ``slots`` threads. Replies go out as calls finish."""
    import asyncio
    import functools
    from concurrent.futures import ThreadPoolExecutor

    global _loop
    loop = _loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    threads = ThreadPoolExecutor(slots, thread_name_prefix="shoal-call")
    reader = _wire.FrameReader()
    tasks: set[asyncio.Task[None]] = set()
    ended: asyncio.Future[None] = loop.create_future()
    running = [0]

    def reply(call_id: int, payload: bytes) -> None:
        _exit_if_forked()
        with lock:
            _wire.send(res_fd, payload, call_id)

    async def run(call_id: int, body: bytes) -> None:
        running[0] += 1
        if beat is not None:
            beat.begin()
        try:
            call = decode(body, functions)
            if isinstance(call, bytes):
                reply(call_id, call)
                return
            fn, args, kwargs = call
            try:
                if _is_async(fn):
                    result = fn(*args, **kwargs)
                else:
                    result = await loop.run_in_executor(
                        threads, functools.partial(fn, *args, **kwargs)
                    )
                if hasattr(type(result), "__await__"):
                    result = await result
            except BaseException as exc:
                reply(call_id, _exception_message(_wire.RAISED, exc))
                return
            reply(call_id, result_message(result))
        finally:
            running[0] -= 1
            if beat is not None and not running[0]:
                beat.busy = False

    def on_command() -> None:
        try:
            data = os.read(cmd_fd, 1 << 18)
        except BlockingIOError:
            return
        if not data:
            if not ended.done():
                ended.set_result(None)
            return
        for call_id, body in reader.feed(data):
            if call_id:
                task = loop.create_task(run(call_id, body))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            elif body == _wire.PING_MSG:
                with lock:
                    _wire.send(res_fd, _wire.PONG_MSG)
            elif body == _wire.STOP_MSG and not ended.done():
                ended.set_result(None)

    os.set_blocking(cmd_fd, False)
    loop.add_reader(cmd_fd, on_command)
    loop.run_until_complete(ended)
    threads.shutdown(wait=False, cancel_futures=True)


def _forward_logs(res_fd: int, lock: threading.Lock, level: int) -> None:
    """Send every log record at ``level`` or above to the pool's process, which logs it there
    (so ``ctx.logger`` in a step logs as if the step ran in the controller)."""
    import logging

    class Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                message = record.getMessage()
                if record.exc_info:
                    message += "\n" + "".join(traceback.format_exception(*record.exc_info))
                payload = _dumps((record.name, record.levelno, message, record.created))
                _exit_if_forked()
                with lock:
                    _wire.send(res_fd, payload, _wire.LOG)
            except Exception:
                self.handleError(record)

    root = logging.getLogger()
    root.addHandler(Forward(level))
    root.setLevel(level)


def _connect(path: str) -> tuple[int, int, int, int]:
    """In a container: reach the pool through the Unix socket mounted at ``path``.

    The first connection carries calls both ways; the second is the lifeline.
    """
    import socket

    conns = []
    for _ in range(2):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(path)
        conns.append(conn)
    chan, life = (c.detach() for c in conns)
    return chan, chan, life, 0


def main() -> None:
    if sys.argv[1] == "--socket":
        cmd_fd, res_fd, lifeline_fd, parent_pid = _connect(sys.argv[2])
    else:
        cmd_fd, res_fd, lifeline_fd, parent_pid = (int(a) for a in sys.argv[1:5])
    # The pool decides what happens to in-flight calls, so an agent never dies of the user's
    # interrupt. A handler rather than SIG_IGN: an ignored signal stays ignored across exec,
    # and the programs a step starts must get Ctrl-C's default meaning back.
    signal.signal(signal.SIGINT, _no_interrupt)
    _adopt_descendants()
    # The pool relays our output line by line, prefixed with our id: let lines out as printed.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    _die_with_parent(lifeline_fd, parent_pid)
    send = _wire.send

    init = _wire.recv_message(cmd_fd)
    if init is None:
        return
    _, sys_path, setup_blob, spin_s, heartbeat_s, slots, log_level = init
    sys.path[:] = sys_path
    lock = threading.Lock()
    _forward_logs(res_fd, lock, log_level)
    failed = warm_up(setup_blob)
    if failed is not None:
        with lock:  # every write to the result channel holds it: log records come from any thread
            send(res_fd, failed)
        return
    beat = Heartbeat(heartbeat_s, res_fd, lock, every_wake=slots > 1) if heartbeat_s else None
    with lock:
        send(res_fd, _dumps((_wire.READY, os.getpid())))

    functions: OrderedDict[int, Any] = OrderedDict()  # most recently used last
    if slots > 1:
        serve_concurrently(cmd_fd, res_fd, functions, slots, lock, beat)
        return
    poller = select.poll()
    poller.register(cmd_fd, select.POLLIN)
    # Frames read but not yet served: the pool may write the next calls while this one runs
    # (prefetch), and then a CANCEL of one, which must be seen before it starts.
    inbox = Inbox(cmd_fd, poller)
    backlog = inbox.frames
    while True:
        if not backlog:
            if spin_s:
                _spin_for_command(poller, spin_s)
            if not inbox.read():
                return
            continue
        call_id, body = backlog.popleft()
        if call_id:
            if not inbox.read_waiting():
                return
            if backlog and _cancelled(backlog, call_id):
                with lock:
                    send(res_fd, _wire.NOT_STARTED_MSG, call_id)
                continue
            if beat is None:
                reply = serve(body, functions)
                _exit_if_forked()
                with lock:
                    send(res_fd, reply, call_id)
            else:
                beat.begin()
                reply = serve(body, functions)
                _exit_if_forked()
                beat.busy = False
                with lock:
                    send(res_fd, reply, call_id)
        elif body == _wire.PING_MSG:
            with lock:
                send(res_fd, _wire.PONG_MSG)
        elif body == _wire.STOP_MSG:
            return
        # Anything else is a CANCEL of a call that has run already: nothing to do.


class Inbox:
    """The frames from the pool, read in as large pieces as are waiting (one system call for
    several frames when the pool wrote several calls together). ``cmd_fd`` stays blocking: in
    a container it is the same socket the replies are written to."""

    __slots__ = ("fd", "frames", "poller", "reader")

    def __init__(self, fd: int, poller: select.poll) -> None:
        self.fd = fd
        self.poller = poller
        self.reader = _wire.FrameReader()
        self.frames: deque[tuple[int, bytes]] = deque()

    def read(self) -> bool:
        """Wait for bytes and take in what has arrived (maybe part of a frame only); False at
        end of file."""
        data = os.read(self.fd, _READ_SIZE)
        if not data:
            return False
        self.frames.extend(self.reader.feed(data))
        return True

    def read_waiting(self) -> bool:
        """Take in every byte already waiting, without blocking; False at end of file."""
        while self.poller.poll(0):
            if not self.read():
                return False
        return True


def _cancelled(backlog: deque[tuple[int, bytes]], call_id: int) -> bool:
    """Whether a CANCEL of ``call_id`` waits in ``backlog`` (it is then removed)."""
    for i, (cid, body) in enumerate(backlog):
        if cid == _wire.CONTROL and body not in (_wire.PING_MSG, _wire.STOP_MSG):
            msg = pickle.loads(body)
            if msg[0] == _wire.CANCEL and msg[1] == call_id:
                del backlog[i]
                return True
    return False


if __name__ == "__main__":
    main()
