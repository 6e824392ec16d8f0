"""Benchmark: wall time of the full DP simulation, DP-SGD cost, round time, peak memory.

Figures are measured here and printed; nothing is asserted (speed goals are not tests).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

from common.config import RunConfig
from common.data.scenarios import load_scenario
from common.learning.model import build_model
from common.learning.steps import num_steps, steps_per_epoch
from common.learning.training import train
from common.outputs import COORDINATOR_RUN_DIR, KEYS_DIR, LEDGER_DIR, RECEIPTS_FILE
from common.partner import train_settings
from common.privacy.audit import COORDINATOR
from common.privacy.budget import calibrate_plan
from simulations.simulate.interrupt import descendants

_CHILD = """
import json, sys, time
from common.config import RunConfig
from common.data.spec import load_run_partners
from simulations.simulate.horizontal import create_run_keys, privacy_summary, run_federation
marks = []
run = RunConfig.from_flower(json.loads(sys.argv[1]))
partners = load_run_partners(run)
create_run_keys(run.sim_keys_dir, [p.partner for p in partners])
result = run_federation(run, partners,
                        progress=lambda label, done, total: marks.append(time.time()))
json.dump({"round_ends": marks, "status": result.history["status"],
           "privacy": privacy_summary(run, result.history)}, open(sys.argv[2], "w"))
"""


def _tree_rss_bytes(root: int) -> int:
    """Resident memory of `root` and all its descendants (Ray's workers included), from /proc."""
    total = 0
    for pid in [root, *descendants(root)]:
        try:
            with open(f"/proc/{pid}/status") as handle:
                total += sum(int(line.split()[1]) * 1024 for line in handle
                             if line.startswith("VmRSS:"))
        except OSError:
            continue
    return total


def full_simulation(run: RunConfig) -> dict[str, float]:
    """Run the 3-partner DP federation (ledgers and receipts on) in a fresh interpreter; time it
    and sample its memory."""
    with tempfile.TemporaryDirectory() as tmp:
        marks_file = Path(tmp) / "marks.json"
        keys = Path(tmp) / KEYS_DIR
        config = replace(run, out_dir=str(Path(tmp) / COORDINATOR_RUN_DIR), sim_dp=True,
                         sim_ledger_dir=str(Path(tmp) / LEDGER_DIR), sim_keys_dir=str(keys),
                         receipts_path=str(Path(tmp) / RECEIPTS_FILE),
                         receipt_key=str(keys / f"{COORDINATOR}.key")).to_flower()
        started = time.time()
        child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(config),
                                  str(marks_file)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        peak = 0

        def sample() -> None:
            nonlocal peak
            while child.poll() is None:
                peak = max(peak, _tree_rss_bytes(child.pid))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = child.wait()
        wall = time.time() - started
        sampler.join()
        if code != 0:
            raise RuntimeError(f"benchmark simulation failed with exit code {code}")
        outcome = json.loads(marks_file.read_text())
    marks = outcome["round_ends"]
    gaps = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    return {"wall_seconds": wall, "startup_to_round1_seconds": marks[0] - started,
            "steady_round_seconds": statistics.median(gaps) if gaps else float("nan"),
            "round_seconds": [marks[0] - started, *gaps], "peak_rss_mib": peak / 2**20,
            "status": outcome["status"], "privacy": outcome["privacy"]}


def epoch_times(run: RunConfig, repeats: int = 5) -> dict[str, float]:
    """Median seconds of one local epoch on the largest partner: DP-SGD vs non-private."""
    torch.set_num_threads(1)
    partner = max(load_scenario(run.scenario, seed=run.seed), key=lambda p: len(p.train))
    plan = calibrate_plan(epsilon=run.sim_epsilon, delta=run.sim_delta,
                          num_train_rows=len(partner.train), batch_size=run.batch_size,
                          local_epochs=run.local_epochs, planned_rounds=run.num_server_rounds,
                          max_grad_norm=run.clip_norm, seed=run.seed)
    settings = replace(train_settings(run, {}), epochs=1.0)
    one_epoch = replace(plan.round_event, steps=num_steps(1.0, steps_per_epoch(
        len(partner.train), sample_rate=plan.round_event.sample_rate)))
    timings: dict[str, list[float]] = {"dp": [], "plain": []}
    for repeat in range(repeats + 1):  # the first repeat warms up
        for kind in ("dp", "plain"):
            model = build_model(partner.train.features.shape[1], run.hidden, run.seed)
            started = time.perf_counter()
            train(model, partner.train, settings, seed=repeat,
                  dp=one_epoch if kind == "dp" else None)
            if repeat:
                timings[kind].append(time.perf_counter() - started)
    dp, plain = statistics.median(timings["dp"]), statistics.median(timings["plain"])
    round_compute = statistics.median(timings["dp"]) * run.local_epochs
    return {"partner_rows": len(partner.train), "dp_epoch_seconds": dp,
            "plain_epoch_seconds": plain, "dp_over_plain": dp / plain,
            "largest_partner_round_compute_seconds": round_compute}


def run_benchmark(run: RunConfig) -> dict[str, dict[str, float]]:
    """All figures, for `fedcredit bench`."""
    epochs = epoch_times(run)
    simulation = full_simulation(run)
    simulation["round_overhead_seconds"] = (simulation["steady_round_seconds"]
                                            - epochs["largest_partner_round_compute_seconds"])
    return {"epoch": epochs, "simulation": simulation}
