"""Where a partner's message time goes, for `fedcredit bench --deployment`.

Flower 1.41 starts a fresh ClientApp process for every message. With the environment variable
`FEDCREDIT_TIMING_LOG` set to a file, each process appends one JSON line: the message type, how
long the process had been running when its handler started (interpreter and import start-up) and
how long the handler took. Without it nothing is measured or written. The file is the partner's
own; nothing of it is sent.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

TIMING_LOG_ENV = "FEDCREDIT_TIMING_LOG"


def process_age() -> float | None:
    """Seconds since this process started (Linux `/proc`); None where that is not readable."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def timing_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Record this message's start-up and handler time when `FEDCREDIT_TIMING_LOG` is set."""
    path = os.environ.get(TIMING_LOG_ENV)
    if not path:
        return call_next(msg, context)
    age, started = process_age(), time.perf_counter()
    try:
        return call_next(msg, context)
    finally:
        record = {"message_type": msg.metadata.message_type, "node_id": context.node_id,
                  "pid": os.getpid(), "startup_seconds": age,
                  "handler_seconds": time.perf_counter() - started, "finished": time.time()}
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
