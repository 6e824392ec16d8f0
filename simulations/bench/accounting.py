"""Benchmark: how privacy accounting time grows with the number of rounds.

One partner's plan (default: the default scenario's `bank` at the run config's ε, δ, local
epochs and rounds) is composed over R rounds; for each R, from cold caches, this times:

- `epsilon.rdp`, `epsilon.prv`: ε of the noisy count and R rounds as a partner computes it
  (`composed_epsilon` by `rdp`, and by `prv` = min(RDP, PRV), the partners' accountant);
- `epsilon.pld`: dp_accounting's PLD ε of the same events, at the auditor's interval;
- `calibrate.prv`: `calibrate_plan` for R planned rounds; `calibrate.rdp`: its DP-SGD σ by `rdp`;
- `audit.cumulative`, `audit.prv_claims`: the auditor's recomputation of a ledger of the count
  and R round entries (`IndependentAccountant.cumulative`, then also `.tight`: what
  `ledgers.recompute` runs for `prv` claims).

Each runs in a forked process, abandoned past `--cap` ("skipped: > CAP s", and at every larger
R); one under `FAST_S` is repeated and its median kept.

    fedcredit bench --scale accounting --out runs/bench-scale
"""

from __future__ import annotations

import math
import multiprocessing
import statistics
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.privacy.budget import PrivacyPlan

ROUNDS: tuple[int, ...] = (10, 30, 100, 300, 1000)
CAP_S = 60.0  # default cap on one measurement (all its repeats), in seconds
REPEATS, FAST_S = 3, 1.0
"""A measurement faster than `FAST_S` seconds is repeated `REPEATS` times (median kept)."""
KINDS = ("epsilon.rdp", "epsilon.prv", "epsilon.pld", "calibrate.prv", "calibrate.rdp",
         "audit.cumulative", "audit.prv_claims")


def default_plan(partner: str = "bank") -> dict[str, Any]:
    """`partner`'s budget, rows and plan settings in the default run config's scenario."""
    from common.config import PartnerConfig, RunConfig
    from common.data.spec import load_run_partners
    from common.partner import round_seed

    run = RunConfig()
    rows = {data.partner: len(data.train) for data in load_run_partners(run)}
    if partner not in rows:
        raise ValueError(f"no partner {partner!r} in scenario {run.scenario} ({sorted(rows)})")
    config = PartnerConfig.from_node_config({"partition-id": list(rows).index(partner)}, run)
    return {"partner": partner, "scenario": run.scenario, "epsilon": config.epsilon,
            "delta": config.delta, "local_epochs": run.local_epochs, "rows": rows[partner],
            "planned_rounds": run.num_server_rounds, "max_grad_norm": run.clip_norm,
            "batch_size": run.batch_size, "count_epsilon_share": config.count_epsilon_share,
            "seed": round_seed(run.seed, config, 0)}


def _clear_caches() -> None:
    """Empty every memo of the partners' and the auditor's accountants (cold measurements)."""
    from common.privacy import accounting
    from common.privacy.audit import accountant

    for cached in (accounting._rdp_per_step, accounting._prv_epsilon, accounting._calibrate,
                   accountant.subsampled_gaussian_rdp):
        cached.cache_clear()


def _calibrate(setup: dict[str, Any], rounds: int) -> PrivacyPlan:
    """The partner's plan (`setup`) calibrated for `rounds` planned rounds."""
    from common.privacy.budget import calibrate_plan

    return calibrate_plan(epsilon=setup["epsilon"], delta=setup["delta"],
                          num_train_rows=setup["rows"], batch_size=setup["batch_size"],
                          local_epochs=setup["local_epochs"], planned_rounds=rounds,
                          max_grad_norm=setup["max_grad_norm"], seed=setup["seed"],
                          count_epsilon_share=setup["count_epsilon_share"])


def _task(kind: str, setup: dict[str, Any], plan: PrivacyPlan,
          rounds: int) -> Callable[[], float]:
    """The timed call of `kind` for `rounds` rounds of `plan`; it returns ε (or σ)."""
    from dp_accounting import pld

    from common.privacy.accounting import calibrate_noise_multiplier, composed_epsilon
    from common.privacy.audit import IndependentAccountant

    delta, event, count = plan.delta, plan.round_event, plan.count_event
    events, deltas = [count, *[event] * rounds], [delta] * (rounds + 1)
    ledger = [(e.sample_rate, e.noise_multiplier, e.steps) for e in events]
    interval = IndependentAccountant()._interval_for(  # the auditor's, for this RDP ε
        composed_epsilon(events, delta=delta, accountant="rdp"))

    def pld_epsilon() -> float:
        accountant = pld.PLDAccountant(value_discretization_interval=interval)
        for q, sigma, steps in ledger:
            accountant.compose(IndependentAccountant.event(q, sigma, steps))
        return float(accountant.get_epsilon(delta))

    def audit(tight: bool) -> float:
        auditor = IndependentAccountant()
        final = auditor.cumulative(ledger, deltas)[-1][0]
        fine = auditor.tight(ledger, deltas)[-1][0] if tight else None
        return final if fine is None else fine

    tasks: dict[str, Callable[[], float]] = {
        "epsilon.rdp": lambda: composed_epsilon(events, delta=delta, accountant="rdp"),
        "epsilon.prv": lambda: composed_epsilon(events, delta=delta, accountant="prv"),
        "epsilon.pld": pld_epsilon,
        "calibrate.prv": lambda: _calibrate(setup, rounds).round_event.noise_multiplier,
        "calibrate.rdp": lambda: calibrate_noise_multiplier(
            target_epsilon=plan.epsilon_budget, delta=delta, sample_rate=event.sample_rate,
            steps=event.steps * rounds, prior=[count], accountant="rdp"),
        "audit.cumulative": lambda: audit(False),
        "audit.prv_claims": lambda: audit(True),
    }
    return tasks[kind]


def _repeat(task: Callable[[], float], repeats: int) -> tuple[float, float]:
    """(median seconds, value) of `task` from cold caches; repeated only while it is fast."""
    times, value = [], float("nan")
    for _ in range(max(1, repeats)):
        _clear_caches()
        start = time.perf_counter()
        value = float(task())
        times.append(time.perf_counter() - start)
        if times[0] >= FAST_S:
            break
    return statistics.median(times), value


def _child(connection: Connection, task: Callable[[], float], repeats: int) -> None:
    """Send `_repeat(task, repeats)` (or the error it raised) to the parent."""
    try:
        connection.send(("ok", *_repeat(task, repeats)))
    except BaseException as exc:  # reported to the parent, which records it
        connection.send(("error", f"{type(exc).__name__}: {exc}", None))
    finally:
        connection.close()


def _measure(task: Callable[[], float], repeats: int, cap_s: float) -> dict[str, Any]:
    """Time `task` in a forked process (POSIX), killed after `cap_s` seconds."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, task, repeats), daemon=True)
    process.start()
    sender.close()
    result = receiver.recv() if receiver.poll(cap_s) else None
    process.kill()
    process.join()
    if result is None:
        return {"skipped": f"> {cap_s:g} s"}
    status, first, second = result
    return {"seconds": first, "value": second} if status == "ok" else {"error": first}


def measure_accounting(rounds: Sequence[int] = ROUNDS, *, kinds: Sequence[str] = KINDS,
                       plan: dict[str, Any] | None = None, repeats: int = REPEATS,
                       cap_s: float = CAP_S) -> dict[str, Any]:
    """Seconds and value (ε; σ for calibrations) of each `kind` at each number of rounds, for
    one partner plan (`default_plan()` unless given): {"plan", "rounds", "cap_s", "repeats",
    "results": {kind: [{"rounds", "seconds" and "value" | "skipped" | "error"}]}}."""
    if unknown := [k for k in kinds if k not in KINDS]:
        raise ValueError(f"unknown kinds {unknown}; known: {KINDS}")
    rounds = sorted({int(r) for r in rounds})
    if not rounds or rounds[0] < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    from common.privacy.accounting import prv_epsilon
    setup = plan or default_plan()
    reference = _calibrate(setup, setup["planned_rounds"])  # the partner's fixed mechanism
    _task("epsilon.prv", setup, reference, 1)()  # loads Opacus' analysis and dp_accounting
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    for kind in kinds:
        for count in rounds:
            earlier = results[kind][-1] if results[kind] else {}
            if "skipped" in earlier:
                row = {"skipped": earlier["skipped"]}
            else:
                row = _measure(_task(kind, setup, reference, count), repeats, cap_s)
                if kind == "epsilon.prv" and "seconds" in row:  # PRV ran, or fell back to RDP
                    events = [reference.count_event, *[reference.round_event] * count]
                    row["note"] = ("min(rdp, prv)" if math.isfinite(prv_epsilon(
                        events, delta=reference.delta)) else "prv beyond PRV_MAX_POINTS: rdp only")
            results[kind].append({"rounds": count, **row})
    event = reference.round_event
    plan_out = {**setup, "released_rows": reference.released_rows,
                "sample_rate": event.sample_rate, "steps_per_round": event.steps,
                "noise_multiplier": event.noise_multiplier,
                "count_noise_multiplier": reference.count_event.noise_multiplier}
    return {"plan": plan_out, "rounds": rounds, "cap_s": cap_s, "repeats": repeats,
            "results": results}


def format_table(figures: dict[str, Any]) -> str:
    """The plan, then seconds and values (ε; σ for calibrate.*) per kind (rows) and rounds."""
    plan, results = figures["plan"], figures["results"]
    head = f"{'kind':<18}" + "".join(f"{r:>12}" for r in figures["rounds"])
    lines = [f"{plan['partner']} ({plan['scenario']}): {plan['rows']} rows, q="
             f"{plan['sample_rate']:.4g}, {plan['steps_per_round']} steps/round, sigma="
             f"{plan['noise_multiplier']:.4g} (eps={plan['epsilon']:g}, delta={plan['delta']:g} "
             f"over {plan['planned_rounds']} rounds)"]
    for key in ("seconds", "value"):
        lines += ["", key, head] + [f"{kind:<18}" + "".join(
            f"{r[key]:>12.4g}" if key in r else f"{'skipped' if 'skipped' in r else 'error':>12}"
            for r in rows) for kind, rows in results.items()]
    return "\n".join(lines + [f"{kind} at {r['rounds']} rounds: {text}"
                               for kind, rows in results.items() for r in rows
                               if (text := r.get("skipped") or r.get("error") or
                                   ("rdp only" in r.get("note", "") and r["note"]))])


def plot_accounting(figures: dict[str, Any], path: Path) -> Path:
    """Log-log seconds vs rounds, one line per kind (skipped points left out); Agg, no pyplot."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="tight")
    ax = fig.subplots()
    for kind, rows in figures["results"].items():
        if points := [(r["rounds"], r["seconds"]) for r in rows if r.get("seconds", 0) > 0]:
            ax.plot(*zip(*points, strict=True), marker="o", label=kind)
    plan = figures["plan"]
    ax.set(xscale="log", yscale="log", xlabel="rounds", ylabel="seconds",
           title=f"accounting time, {plan['partner']}: q={plan['sample_rate']:.3g}, "
                 f"{plan['steps_per_round']} steps/round, eps={plan['epsilon']:g}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    (path := Path(path)).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
