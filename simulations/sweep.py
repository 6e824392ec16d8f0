"""`fedcredit sweep`: the privacy-utility curve, `fedcredit simulate` over budgets × seeds.

Each (ε, seed) cell is one `fedcredit simulate` run in its own process (Ray and Flower start fresh
for every cell) writing into `OUT/eps<E>-seed<S>/`. A cell whose manifest (`fedcredit-run.json`)
says `completed` with the sweep's spec is reused, so a re-run (or an interrupted sweep) runs only
what is missing; a cell left `running`, `failed` or `interrupted` is run again with
`--overwrite`. The results go to `OUT/sweep.csv` (one row per cell and setting), `OUT/sweep.md`
(mean ± standard deviation across seeds) and `OUT/sweep.png` (`simulations.sweep_report`).

A spec is the set of `fedcredit simulate` options every cell shares (`Spec`); the sweep varies
only `--epsilon` and `--seed`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any

from common.config import RunConfig
from common.outputs import REPORT_JSON, RUN_MANIFEST, RunLayout, read_manifest

LOGS_DIR = "logs"
"""`OUT/logs/eps<E>-seed<S>.log`: the console output of each cell's `fedcredit simulate`."""
SPEC_KEYS = ("scenario", "split", "dirichlet-alpha", "num-server-rounds", "sim-delta",
             "local-epochs", "batch-size", "learning-rate", "hidden-layers",
             "secure-aggregation")
"""The run config keys a reused cell's report must match (besides its ε and seed; with a data
spec, also the partners it names and their files)."""
BUNDLED_ONLY = ("scenario", "split", "alpha")
"""Spec fields that pick bundled data: not passed on with a data spec (simulate refuses them)."""
STOP_GRACE_SECONDS = 60.0
"""How long a cell's simulation may take to stop after Ctrl-C before it is killed."""


class SweepError(ValueError):
    """A sweep that cannot start as asked; `option` names the CLI option at fault."""

    def __init__(self, message: str, option: str) -> None:
        super().__init__(message)
        self.option = option


class SweepInterrupted(Exception):  # noqa: N818 - it is a stop, not an error
    """Ctrl-C (SIGINT) or SIGTERM stopped the sweep; `signum` is the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


@dataclass(frozen=True)
class Spec:
    """What every cell shares: `fedcredit simulate`'s options other than --epsilon and --seed
    (None: simulate's default)."""

    scenario: str = "credit_data"
    data_spec: Path | None = None
    rounds: int = 20
    split: str = "natural"
    alpha: float = 0.5
    delta: float = 1e-5
    local_epochs: float | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    hidden_layers: str | None = None
    secure_aggregation: bool = False

    def options(self) -> list[str]:
        """The spec as `fedcredit simulate` options (only those that are set)."""
        args: list[str] = []
        for field in fields(self):
            value = getattr(self, field.name)
            if self.data_spec is not None and field.name in BUNDLED_ONLY:
                continue
            flag = "--spec" if field.name == "data_spec" else "--" + field.name.replace("_", "-")
            if isinstance(value, bool):
                args += [flag] if value else []
            elif value is not None:
                args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
        return args

    @property
    def title(self) -> str:
        """How sweep.md and the console name what was swept."""
        data = (f"own data {self.data_spec} (" if self.data_spec is not None
                else f"{self.scenario} ({self.split} split, ")
        return f"{data}{self.rounds} rounds, δ={self.delta:g})"

    def run_config(self, epsilon: float, seed: int, out: Path) -> RunConfig:
        """The RunConfig `fedcredit simulate` builds for one cell; ValueError names the key."""
        overrides = {"local_epochs": self.local_epochs, "batch_size": self.batch_size,
                     "learning_rate": self.learning_rate, "hidden_layers": self.hidden_layers}
        if self.data_spec is not None:
            overrides["data_spec"] = str(self.data_spec)
        return RunConfig(scenario=self.scenario, sim_epsilon=epsilon, sim_delta=self.delta,
                         num_server_rounds=self.rounds, seed=seed, out_dir=str(out),
                         split=self.split, dirichlet_alpha=self.alpha,
                         secure_aggregation=self.secure_aggregation,
                         **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True, order=True)
class Cell:
    """One (ε, seed) simulation of the sweep."""

    epsilon: float
    seed: int

    @property
    def name(self) -> str:
        """The cell's folder name: `eps<E>-seed<S>`."""
        return f"eps{self.epsilon:g}-seed{self.seed}"

    def label(self) -> str:
        """How the console names the cell."""
        return f"ε={self.epsilon:g} seed={self.seed}"


def parse_epsilons(text: str) -> list[float]:
    """`0.5,1,2` → sorted distinct finite budgets > 0; ValueError says what is wrong."""
    values = []
    for item in _items(text):
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"{item!r} is not a number") from None
        if not (0 < value < math.inf):
            raise ValueError(f"{item!r}: every ε must be a finite number > 0")
        values.append(value)
    return sorted(set(values))


def parse_seeds(text: str) -> list[int]:
    """`0-4` or `0,2,5` or `0-2,7` → sorted distinct seeds ≥ 0; ValueError says what is wrong."""
    values: set[int] = set()
    for item in _items(text):
        low, dash, high = item.partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise ValueError(f"{item!r} is neither a seed nor a range like 0-4 "
                             "(seeds are integers >= 0)") from None
        if first > last:
            raise ValueError(f"{item!r}: a range runs from low to high, e.g. 0-4")
        values.update(range(first, last + 1))
    return sorted(values)


def _items(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not any(items) or not all(items):
        raise ValueError(f"{text!r} is not a comma-separated list (e.g. 0.5,1,2 or 0-4)")
    return items


def cell_dir(out: Path, cell: Cell) -> Path:
    """Where one cell's simulation writes."""
    return out / cell.name


def cell_state(out: Path, cell: Cell, spec: Spec) -> str:
    """`completed` (reuse it), `new` (nothing there) or `rerun` (an unfinished run to replace).

    Raises SweepError (naming --out) for a folder fedcredit did not write and for a completed
    run made with another spec, which the sweep must not mix in."""
    where = cell_dir(out, cell)
    if where.exists() and not where.is_dir():
        raise SweepError(f"{where} exists and is not a directory", "--out")
    try:
        manifest = read_manifest(where)
    except ValueError as exc:
        raise SweepError(f"{exc}; choose another --out", "--out") from None
    if manifest is None:
        present = RunLayout(where).outputs_present()
        if present:
            raise SweepError(f"{where} holds {', '.join(present)} but no {RUN_MANIFEST}: no "
                             "fedcredit run that the sweep could reuse or replace; choose "
                             "another --out or move it", "--out")
        return "new"
    if manifest["status"] != "completed":
        return "rerun"
    report = read_report(where)
    if report is None:
        return "rerun"
    expected = spec.run_config(cell.epsilon, cell.seed, where).to_flower()
    found = report.get("config", {})
    keys = [k for k in (*SPEC_KEYS, "sim-epsilon", "seed")
            if spec.data_spec is None or k not in ("scenario", "split", "dirichlet-alpha")]
    differ = [f"{key} {found.get(key)!r} (this sweep: {expected[key]!r})"
              for key in keys if found.get(key) != expected[key]]
    if spec.data_spec is not None and not same_data(found.get("data-spec"), spec.data_spec):
        differ.append(f"data-spec {found.get('data-spec')!r} (this sweep: {spec.data_spec})")
    if differ:
        raise SweepError(f"{where} holds a completed run of another spec: {', '.join(differ)}; "
                         "choose another --out to sweep this spec", "--out")
    return "completed"


def same_data(copied: object, data_spec: Path) -> bool:
    """Whether a cell's copy of its data spec names the same partners, files and schema as
    `data_spec` (the copy holds absolute paths, so the texts differ)."""
    from dataclasses import replace

    from common.data.spec import load_spec

    try:
        ours, theirs = load_spec(data_spec), load_spec(str(copied))
    except (ValueError, OSError):
        return False
    return replace(ours, source="") == replace(theirs, source="")


def read_report(where: Path) -> dict[str, Any] | None:
    """The cell's report.json, or None when it is missing or unreadable."""
    try:
        report = json.loads((where / REPORT_JSON).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return report if isinstance(report, dict) and "results" in report else None


def simulate_args(spec: Spec, cell: Cell, out: Path, overwrite: bool) -> list[str]:
    """The `fedcredit simulate` arguments of one cell."""
    return ["simulate", *spec.options(), "--epsilon", f"{cell.epsilon:g}", "--seed",
            str(cell.seed), "--out", str(cell_dir(out, cell)),
            *(["--overwrite"] if overwrite else [])]


CellRunner = Callable[[list[str], IO[str]], int]
"""Runs `fedcredit <args>` with its console output going to the log; returns the exit status.
Raises SweepInterrupted when Ctrl-C or SIGTERM stopped it."""


def run_in_subprocess(args: list[str], log: IO[str]) -> int:
    """`python -m simulations.cli <args>` in a fresh process. On Ctrl-C (or SIGTERM) the child,
    which gets the terminal's SIGINT too, marks its run interrupted and stops; it is sent the
    signal as well, and killed if it has not ended after `STOP_GRACE_SECONDS`."""
    child = subprocess.Popen([sys.executable, "-m", "simulations.cli", *args],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             env={**os.environ, "COLUMNS": "120"})
    try:
        with sigterm_as_interrupt():
            return child.wait()
    except SweepInterrupted as stop:
        _stop_child(child, stop.signum)
        raise
    except KeyboardInterrupt:
        _stop_child(child, signal.SIGINT)
        raise SweepInterrupted(signal.SIGINT) from None


def _stop_child(child: subprocess.Popen[bytes], signum: int) -> None:
    """Let `child` stop on `signum` (it marks its run interrupted), killing it after the grace."""
    with contextlib.suppress(OSError):
        child.send_signal(signum)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while child.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C: still let it finish
            time.sleep(0.1)
    if child.poll() is None:
        child.kill()
        child.wait()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block (main thread only), SIGTERM raises SweepInterrupted(SIGTERM)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: object) -> None:
        raise SweepInterrupted(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class CellResult:
    """How a cell ended: `reused`, `completed`, `failed`; its report when it has one."""

    cell: Cell
    outcome: str
    report: dict[str, Any] | None = None
    seconds: float = 0.0
    message: str = ""


def run_cell(out: Path, spec: Spec, cell: Cell, state: str, runner: CellRunner) -> CellResult:
    """Run one cell (`state` from `cell_state`; a completed one is only read back)."""
    where = cell_dir(out, cell)
    if state == "completed":
        return CellResult(cell, "reused", read_report(where))
    (out / LOGS_DIR).mkdir(parents=True, exist_ok=True)
    log_path = out / LOGS_DIR / f"{cell.name}.log"
    started = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        code = runner(simulate_args(spec, cell, out, overwrite=state == "rerun"), log)
    seconds = time.perf_counter() - started
    try:
        manifest = read_manifest(where) or {}
    except ValueError:
        manifest = {}
    report = read_report(where) if manifest.get("status") == "completed" else None
    if report is None:
        return CellResult(cell, "failed", None, seconds,
                          f"exit status {code}: {last_line(log_path)} (log: {log_path})")
    return CellResult(cell, "completed", report, seconds, manifest.get("message", ""))


def last_line(path: Path) -> str:
    """The last non-empty line of a log (what a failed simulate said last)."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    except OSError:
        return "no log"
    lines = [line.strip("│ ") for line in lines if line and not set(line) <= set("─│╭╮╰╯ ")]
    return lines[-1] if lines else "no output"


Progress = Callable[[CellResult, int, int], None]
"""Called after each cell with its result, the cells done and the cells in all."""


def plan_sweep(out: Path, spec: Spec, epsilons: list[float],
               seeds: list[int]) -> dict[Cell, str]:
    """Every cell's state (`cell_state`), checked before anything runs; SweepError names the
    option at fault."""
    if out.exists() and not out.is_dir():
        raise SweepError(f"{out} exists and is not a directory", "--out")
    return {cell: cell_state(out, cell, spec)
            for cell in (Cell(epsilon, seed) for epsilon in epsilons for seed in seeds)}


def run_sweep(out: Path, spec: Spec, states: dict[Cell, str],
              runner: CellRunner = run_in_subprocess,
              progress: Progress = lambda result, done, total: None,
              starting: Callable[[Cell], None] = lambda cell: None) -> list[CellResult]:
    """Reuse or run every cell of `plan_sweep` in turn (reused ones first); the results in
    (ε, seed) order. SweepInterrupted propagates (the cell it stopped is marked interrupted by
    simulate and run again next time)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SweepError(f"cannot create {out}: {exc.strerror or exc}", "--out") from None
    results = []
    for cell in sorted(states, key=lambda c: (states[c] != "completed", c)):
        if states[cell] != "completed":
            starting(cell)
        results.append(run_cell(out, spec, cell, states[cell], runner))
        progress(results[-1], len(results), len(states))
    return sorted(results, key=lambda r: r.cell)
