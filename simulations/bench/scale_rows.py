"""Benchmark: DP-SGD throughput (rows/s) and peak memory of one big SYNTHETIC partner.

For each size (10^4, 10^5, 10^6 rows by default) a SYNTHETIC credit_data-like partner
(`common.data.synthetic`, for scale tests only) is generated once, or reused, as memory-mapped
.npy files. Then, each in a fresh interpreter so that its peak memory is its own, one epoch of:

- DP-SGD with the partner's real plan: `calibrate_plan` under the default run config (noisy
  count, plan-rule expected batch q·ñ, σ for the whole planned run), one local epoch's steps;
- non-private minibatch training at the same (expected) batch size, for one epoch;

both through the one `train()`, on one intra-op thread: DP-SGD always runs on one
(`reproducible_cpu`), so non-private training gets the same for a fair comparison. One tiny
training call in the same mode runs first, so one-time library loading is not timed; the epoch
then runs `REPEATS` times from a fresh model and the median time counts (rows/s = training rows
/ seconds of one epoch). Figures are measured and printed, nothing is asserted (speed goals are
not tests).

    fedcredit bench --scale rows --sizes 10000,100000,1000000 --out runs/bench-scale
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config import RunConfig
from common.data.synthetic import export_csv, write_partner_arrays
from common.data.tables import Split, bundled_path
from common.learning.model import build_model
from common.learning.steps import num_steps, steps_per_epoch
from common.learning.training import evaluate, train
from common.partner import train_settings
from common.privacy.budget import PrivacyPlan, calibrate_plan

ROWS = (10_000, 100_000, 1_000_000)
MODES = ("dp", "non_private")
THREADS = 1
"""Intra-op threads of both modes (DP-SGD pins one for bit-reproducibility)."""
TARGET_DP_OVER_NON_PRIVATE = 0.4
TARGET_PEAK_RSS_MIB = 2048.0
WARM_UP_ROWS = 256
REPEATS = 5
"""Timed epochs per (size, mode), each from a fresh model; the median counts."""

_CSV_CHILD = """
import json, sys, time
from pathlib import Path
from common.data.tables import load_partner_csv
args = json.loads(sys.argv[1])
started = time.perf_counter()
data = load_partner_csv("synthetic", args["csv_path"], args["schema_path"], test_fraction=0.25,
                        split_key=b"scale benchmark")
from simulations.bench.scale_rows import peak_rss_mib
Path(sys.argv[2]).write_text(json.dumps({"seconds": time.perf_counter() - started,
                                         "train_rows": len(data.train),
                                         "peak_rss_mib": peak_rss_mib()}))
"""
_CHILD = """
import json, sys
from pathlib import Path
from simulations.bench.scale_rows import train_one_epoch
args = json.loads(sys.argv[1])
result = train_one_epoch(Path(args.pop("data_dir")), **args)
Path(sys.argv[2]).write_text(json.dumps(result))  # its peak_rss_mib: this process's VmHWM
"""


@lru_cache(maxsize=16)
def partner_plan(train_rows: int, *, epsilon: float, seed: int) -> tuple[RunConfig, PrivacyPlan]:
    """The default run config at budget `epsilon`, and the plan a partner of `train_rows`
    training rows calibrates for it (noisy count, plan-rule q, σ; calibrated once per process).
    """
    run = replace(RunConfig(), sim_epsilon=epsilon, seed=seed)
    plan = calibrate_plan(epsilon=epsilon, delta=run.sim_delta, num_train_rows=train_rows,
                          batch_size=run.batch_size, local_epochs=run.local_epochs,
                          planned_rounds=run.num_server_rounds, max_grad_norm=run.clip_norm,
                          seed=seed)
    return run, plan


def partner_dir(workdir: Path, rows: int, seed: int) -> Path:
    """Where the synthetic partner of `rows` rows is cached."""
    return Path(workdir) / f"synthetic-seed{seed}-rows{rows}"


def train_one_epoch(data_dir: Path, rows: int, *, mode: str, epsilon: float, seed: int,
                    repeats: int = REPEATS) -> dict[str, float]:
    """In this process: one epoch of `mode` ("dp" or "non_private") on the synthetic partner in
    `data_dir` (written there if absent), `repeats` times from a fresh model (the median time
    counts), then the last model's test evaluation; seconds, rows/s and this process's peak RSS.
    """
    if mode not in MODES or repeats < 1:
        raise ValueError(f"mode must be one of {MODES} and repeats >= 1, got {mode!r} and "
                         f"{repeats}")
    torch.set_num_threads(THREADS)
    data = write_partner_arrays(data_dir, rows, seed=seed)
    run, plan = partner_plan(len(data.train), epsilon=epsilon, seed=seed)
    event = plan.round_event
    one_epoch = replace(event, steps=num_steps(1.0, steps_per_epoch(
        plan.released_rows, sample_rate=event.sample_rate)))
    settings = replace(train_settings(run, {}), epochs=1.0, batch_size=plan.expected_batch_size)
    width = data.train.features.shape[1]
    # Untimed warm-up step: loads Opacus and what torch loads lazily on a first optimiser step.
    warm_up = Split(np.array(data.train.features[:WARM_UP_ROWS]),
                    np.array(data.train.labels[:WARM_UP_ROWS]))
    train(build_model(width, run.hidden, seed), warm_up, settings, seed=seed,
          dp=replace(one_epoch, steps=1) if mode == "dp" else None,
          expected_batch_size=plan.expected_batch_size)
    times = []
    for repeat in range(repeats):
        model = build_model(width, run.hidden, seed)
        started = time.perf_counter()
        outcome = train(model, data.train, settings, seed=seed + repeat,
                        dp=one_epoch if mode == "dp" else None,
                        expected_batch_size=plan.expected_batch_size)
        times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    started = time.perf_counter()
    metrics = evaluate(model, data.test)
    return {"steps": outcome.steps, "seconds": seconds,
            "rows_per_second": len(data.train) / seconds,
            "eval_seconds": time.perf_counter() - started, "test_auc": metrics["auc"],
            "peak_rss_mib": peak_rss_mib()}


def peak_rss_mib() -> float:
    """This process's peak resident memory since it started (VmHWM, per address space: unlike
    getrusage's ru_maxrss it does not count the parent's pages a forked child held before exec).
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _in_fresh_process(data_dir: Path, rows: int, *, mode: str, epsilon: float, seed: int,
                      repeats: int = REPEATS) -> dict[str, float]:
    """`train_one_epoch` in a new interpreter; its peak RSS is that process's own (VmHWM)."""
    args = {"data_dir": str(data_dir), "rows": rows, "mode": mode, "epsilon": epsilon,
            "seed": seed, "repeats": repeats}
    return _run_child(_CHILD, args, f"{mode}, {rows} rows")


def load_csv_in_fresh_process(csv_path: Path, rows: int) -> dict[str, float]:
    """Seconds and peak RSS of a partner loading `csv_path` (`load_partner_csv`: read, encode
    and split in chunks) in a new interpreter."""
    args = {"csv_path": str(csv_path), "schema_path": str(bundled_path("credit_data")[1])}
    result = _run_child(_CSV_CHILD, args, f"CSV load, {rows} rows")
    result["rows_per_second"] = rows / result["seconds"]
    return result


def _run_child(code: str, args: dict[str, Any], label: str) -> dict[str, float]:
    """Run `code` with (JSON args, result path) in a new interpreter; its result (with its own
    `peak_rss_mib`)."""
    with tempfile.TemporaryDirectory() as tmp:
        result_file, log_file = Path(tmp) / "result.json", Path(tmp) / "stderr.txt"
        with log_file.open("w") as log:
            child = subprocess.Popen([sys.executable, "-c", code, json.dumps(args),
                                      str(result_file)], stdout=subprocess.DEVNULL, stderr=log)
            child.wait()
        if child.returncode != 0:
            tail = log_file.read_text()[-2000:]
            raise RuntimeError(f"scale benchmark ({label}) failed with exit code "
                               f"{child.returncode}:\n{tail}")
        return json.loads(result_file.read_text())


def measure_throughput(rows_list: tuple[int, ...] = ROWS, *, epsilon: float = 3.0,
                       seed: int = 0, workdir: Path, repeats: int = REPEATS,
                       fresh_process: bool = True) -> dict[str, Any]:
    """DP-SGD vs non-private throughput and peak memory of one synthetic partner per size in
    `rows_list` (data cached under `workdir`). `fresh_process=False` trains in this process
    (for tests: its peak RSS is then this whole process's)."""
    sizes = []
    for rows in rows_list:
        data_dir = partner_dir(workdir, rows, seed)
        data = write_partner_arrays(data_dir, rows, seed=seed)
        _, plan = partner_plan(len(data.train), epsilon=epsilon, seed=seed)
        runner = _in_fresh_process if fresh_process else train_one_epoch
        modes = {mode: runner(data_dir, rows, mode=mode, epsilon=epsilon, seed=seed,
                              repeats=repeats) for mode in MODES}
        if fresh_process:  # the same rows as a partner's own CSV, loaded in chunks
            csv_path = data_dir / "partner.csv"
            if not csv_path.exists():
                export_csv(csv_path, rows, seed=seed)
            modes["csv_load"] = load_csv_in_fresh_process(csv_path, rows)
        sizes.append({"rows": rows, "train_rows": len(data.train),
                      "batch_size": plan.expected_batch_size,
                      "sample_rate": plan.round_event.sample_rate,
                      "noise_multiplier": plan.round_event.noise_multiplier, **modes,
                      "dp_over_non_private": (modes["dp"]["rows_per_second"]
                                              / modes["non_private"]["rows_per_second"])})
    return {"data": "synthetic (common.data.synthetic; scale tests only)", "epsilon": epsilon,
            "seed": seed, "threads": THREADS, "repeats": repeats, "fresh_process": fresh_process,
            "targets": {"dp_over_non_private": TARGET_DP_OVER_NON_PRIVATE,
                        "peak_rss_mib": TARGET_PEAK_RSS_MIB},
            "sizes": sizes}


def plot_throughput(figures: dict[str, Any], path: Path) -> Path:
    """Throughput (rows/s) against rows, DP-SGD and non-private, and peak memory, log x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [size["rows"] for size in figures["sizes"]]
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, label in (("dp", "DP-SGD"), ("non_private", "non-private")):
        speed.plot(rows, [s[mode]["rows_per_second"] for s in figures["sizes"]], "o-",
                   label=label)
        memory.plot(rows, [s[mode]["peak_rss_mib"] for s in figures["sizes"]], "o-",
                    label=label)
    memory.axhline(figures["targets"]["peak_rss_mib"], color="grey", linestyle="--",
                   label="2 GiB target")
    speed.set(xscale="log", yscale="log", xlabel="partner rows", ylabel="rows / s (one epoch)",
              title=f"Throughput, {figures['threads']} intra-op thread(s)")
    memory.set(xscale="log", xlabel="partner rows", ylabel="peak RSS (MiB)",
               title="Peak memory of the training process")
    for axis in (speed, memory):
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    fig.suptitle(f"Synthetic partner, epsilon = {figures['epsilon']:g}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_table(figures: dict[str, Any]) -> str:
    """The figures as a plain-text table."""
    lines = [f"{'rows':>9} {'batch':>6} {'steps':>5} {'DP rows/s':>10} {'plain rows/s':>12} "
             f"{'DP/plain':>8} {'DP MiB':>7} {'plain MiB':>9} {'CSV load s':>10} "
             f"{'CSV MiB':>8}"]
    for size in figures["sizes"]:
        dp, plain = size["dp"], size["non_private"]
        lines.append(f"{size['rows']:>9} {size['batch_size']:>6} {dp['steps']:>5} "
                     f"{dp['rows_per_second']:>10.0f} {plain['rows_per_second']:>12.0f} "
                     f"{size['dp_over_non_private']:>8.2f} {dp['peak_rss_mib']:>7.0f} "
                     f"{plain['peak_rss_mib']:>9.0f} "
                     + (f"{size['csv_load']['seconds']:>10.1f} "
                        f"{size['csv_load']['peak_rss_mib']:>8.0f}" if "csv_load" in size
                        else f"{'-':>10} {'-':>8}"))
    return "\n".join(lines)
