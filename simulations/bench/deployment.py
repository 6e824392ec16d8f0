"""`fedcredit bench --deployment`: how long a real deployed round takes, and where the time goes.

Runs the local TLS federation (`fedcredit federation demo`: SuperLink with TLS and node
authentication, one SuperNode per partner, `flwr run`, audit) twice on loopback, plain FedAvg and
SecAgg+, and measures:

- ClientApp cold start: `import clients.app` in a fresh interpreter, next to `import torch` in
  the same run (Flower starts a fresh ClientApp process for every message);
- seconds per round (the coordinator's history: time since the previous round ended), the median
  over rounds 2.. (round 1 includes the start of the ServerApp), and the whole demo's wall time
  from set-up to teardown;
- the share of a round a partner spends starting its ClientApp processes (interpreter and
  imports), in its handlers (training, evaluation, SecAgg+ stages), and waiting (Flower's polling,
  transfers, the coordinator, the other partners), from each ClientApp process's own timing
  (`clients/timing.py`).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from clients.timing import TIMING_LOG_ENV
from simulations.deploy.demo import run_demo
from simulations.deploy.local import DemoOptions, LocalFederation

COLD_START_REPEATS = 3


def import_seconds(module: str) -> float:
    """Wall seconds of `import module` in a fresh interpreter (the import alone)."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True)
    return float(done.stdout.strip().splitlines()[-1])


def cold_start(repeats: int = COLD_START_REPEATS) -> dict[str, float]:
    """Median import time of torch and of the ClientApp module, measured alternately."""
    torch_s, app_s = [], []
    for _ in range(repeats):
        torch_s.append(import_seconds("torch"))
        app_s.append(import_seconds("clients.app"))
    torch_median, app_median = statistics.median(torch_s), statistics.median(app_s)
    return {"import_torch_seconds": torch_median, "import_client_app_seconds": app_median,
            "client_app_over_torch": app_median / torch_median}


def time_shares(timings: list[dict], rounds_seconds: float, nodes: int) -> dict[str, float]:
    """Per partner, the share of the rounds' wall time spent in ClientApp start-up, in handlers,
    and the rest (waiting); averaged over partners."""
    startup, handler = defaultdict(float), defaultdict(float)
    for record in timings:
        startup[record["node_id"]] += record["startup_seconds"] or 0.0
        handler[record["node_id"]] += record["handler_seconds"]
    partners = max(nodes, 1)
    startup_share = sum(startup.values()) / partners / rounds_seconds
    handler_share = sum(handler.values()) / partners / rounds_seconds
    return {"startup_share": startup_share, "handler_share": handler_share,
            "waiting_share": max(0.0, 1.0 - startup_share - handler_share),
            "messages_per_partner": len(timings) / partners}


def run_federation(workspace: Path, options: DemoOptions) -> dict[str, float]:
    """One demo run with per-message timing; its round and wall figures."""
    started = time.monotonic()
    workspace = workspace.resolve()  # the ClientApps run elsewhere: the timing log's path
    fed = LocalFederation(workspace, options)
    timing_log = workspace.parent / f"{workspace.name}-timing.jsonl"
    fed.env[TIMING_LOG_ENV] = str(timing_log)
    try:
        report = run_demo(fed, step=lambda _: None)
    finally:
        fed.close()
    wall = time.monotonic() - started
    if report["status"] != "completed":
        raise RuntimeError(f"the benchmark federation did not complete: {report['message']}")
    history = json.loads((fed.run_dir / "history.json").read_text())
    seconds = [r["seconds"] for r in history["rounds"]]
    timings = [json.loads(line) for line in timing_log.read_text().splitlines() if line]
    return {"rounds": len(seconds), "round_seconds": seconds,
            "median_round_seconds": statistics.median(seconds[1:] or seconds),
            "wall_seconds": wall, "run_seconds": history["wall_seconds"],
            **time_shares(timings, sum(seconds), len(options.partners))}


def run_deployment_benchmark(workspace: Path, *, plain_rounds: int = 5, secure_rounds: int = 3,
                             superlink_port: int = 18800, supernode_port: int = 18810,
                             step: Callable[[str], None] = print) -> dict[str, dict]:
    """Cold start, then a plain and a SecAgg+ federation on loopback."""
    step("measuring ClientApp cold start")
    figures: dict[str, dict] = {"cold_start": cold_start()}
    for offset, (name, rounds, secure) in enumerate((("plain", plain_rounds, False),
                                                     ("secure", secure_rounds, True))):
        step(f"running the {name} federation ({rounds} rounds, TLS + node auth"
             + (", SecAgg+" if secure else "") + ")")
        options = DemoOptions(rounds=rounds, superlink_port=superlink_port + 100 * offset,
                              supernode_port=supernode_port + 100 * offset,
                              secure_aggregation=secure)
        figures[name] = run_federation(workspace / name, options)
    return figures
