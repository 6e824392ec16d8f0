"""Stop a simulation on Ctrl-C (SIGINT) or SIGTERM within seconds, whatever it is doing.

Flower's Simulation Engine runs the ServerApp in a thread and the partners in Ray processes that
block SIGINT: a KeyboardInterrupt in the main thread leaves the federation running. Here the
signal wakes a watcher thread instead (through `signal.set_wakeup_fd`, written by the C-level
handler even while the main thread is busy in native code), which records the interruption,
stops every process this one started (Ray's included) and exits with 128 + the signal number.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOPPING = threading.Event()
"""Set once a signal began stopping the process: whatever the main thread meets from then on
(a library's own SIGTERM handler raising SystemExit, a federation failing as its processes die)
is a consequence of the stop, which ends the process itself."""


def wait_for_stop() -> None:
    """When a stop is under way, let it finish the process (never returns); else return."""
    while STOPPING.is_set():
        time.sleep(1.0)


def descendants(root: int) -> list[int]:
    """Every live process below `root` (children first, then theirs), from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, frontier = [], [root]
    while frontier:
        nxt = [child for pid in frontier for child in children.get(pid, [])]
        found += nxt
        frontier = nxt
    return found


def stop_descendants(grace: float = 2.0) -> None:
    """SIGTERM every process below this one, then SIGKILL whatever is left after `grace` s."""
    me = os.getpid()
    targets = descendants(me)
    for pid in targets:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and descendants(me):
        time.sleep(0.1)
    for pid in [*targets, *descendants(me)]:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def stop_on_signal(on_stop: Callable[[int], None],
                   on_stopped: Callable[[int], None] | None = None) -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM call `on_stop(signum)` (say what happens), stop every
    process below this one, call `on_stopped(signum)` (record it: nothing this process runs
    afterwards can add files), then `os._exit(128 + signum)`. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)

    def watch() -> None:
        try:
            data = reader.recv(1)
        except OSError:
            return
        if not data:
            return
        signum = data[0]
        STOPPING.set()
        for step in (lambda: on_stop(signum), stop_descendants,
                     lambda: on_stopped(signum) if on_stopped else None):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - leaving is what matters now
                print(f"while stopping: {exc}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(128 + signum)

    for signum in SIGNALS:  # a Python-level handler makes the C handler write the wakeup fd
        signal.signal(signum, lambda *_: None)
    watcher = threading.Thread(target=watch, name="fedcredit-stop-on-signal", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        with contextlib.suppress(OSError):
            writer.shutdown(socket.SHUT_RDWR)
        writer.close()
        watcher.join(timeout=1.0)
        reader.close()
