"""`fedcredit bench --scale`: run the scaling benchmarks, print their tables, write JSON + PNG."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

SCALES = ("partners", "rows", "accounting", "utility")
PARTNER_ROUNDS = 10  # the acceptance point: 100 partners x 10 rounds
ACCOUNTING_ROUNDS = (10, 30, 100, 300, 1000)
console = Console(stderr=True)


MIN_SIZE = 1_000
"""Fewest rows per synthetic partner (`--sizes`): both splits then hold bad rows."""


def _numbers(text: str, option: str, minimum: int) -> tuple[int, ...]:
    """'3,10,1e6' -> (3, 10, 1000000): whole numbers >= `minimum`, or an error naming the
    option."""
    try:
        numbers = [float(part) for part in re.split(r"[,\s]+", text.strip()) if part]
    except ValueError:
        numbers = []
    if not numbers or not all(n.is_integer() and n >= minimum for n in numbers):
        raise typer.BadParameter(f"expected comma-separated whole numbers >= {minimum}, got "
                                 f"{text!r}", param_hint=option)
    return tuple(int(n) for n in numbers)


def _check_counts(counts: tuple[int, ...]) -> None:
    """Every partner count can deal lending_club's rows (before anything runs)."""
    from common.data.spec import load_run_partners
    from common.errors import DataValidationError
    from simulations.bench.scale import partner_scaling_run

    for count in counts:
        try:
            load_run_partners(partner_scaling_run(count))
        except (ValueError, DataValidationError) as exc:
            raise typer.BadParameter(f"{count} partners: {exc}", param_hint="--counts") from None


def _write(out: Path, name: str, figures: dict[str, Any], plot) -> None:
    (out / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    plot(figures, out / f"{name}.png")
    console.print(f"figures: {out / f'{name}.json'}, plot: {out / f'{name}.png'}")


def bench_scale(scale: str, out: Path, *, counts: str, sizes: str, rounds: int,
                epsilon: float, seed: int, overwrite: bool) -> None:
    """Run the `scale` benchmark(s) into `out` (see `SCALES`)."""
    if scale not in (*SCALES, "all"):
        raise typer.BadParameter(f"choose one of {', '.join(SCALES)} or all, got {scale!r}",
                                 param_hint="--scale")
    chosen = SCALES if scale == "all" else (scale,)
    partner_counts = _numbers(counts, "--counts", 2) if "partners" in chosen else ()
    rows = _numbers(sizes, "--sizes", MIN_SIZE) if {"rows", "utility"} & set(chosen) else ()
    if partner_counts:
        _check_counts(partner_counts)
    existing = [out / f"{name}.json" for name in chosen if (out / f"{name}.json").exists()]
    if existing and not overwrite:
        raise typer.BadParameter(f"{existing[0]} exists; pass --overwrite to replace it",
                                 param_hint="--out")
    out.mkdir(parents=True, exist_ok=True)
    if "partners" in chosen:
        from simulations.bench.scale import measure_partner_scaling, plot_partner_scaling

        figures = measure_partner_scaling(partner_counts, rounds=min(rounds, PARTNER_ROUNDS),
                                          epsilon=epsilon, seed=seed, step=console.print)
        _write(out, "partners", figures, plot_partner_scaling)
    if "rows" in chosen:
        from simulations.bench.scale_rows import format_table, measure_throughput, plot_throughput

        figures = measure_throughput(rows, epsilon=epsilon, seed=seed, workdir=out / "synthetic")
        console.print(format_table(figures))
        _write(out, "rows", figures, plot_throughput)
    if "accounting" in chosen:
        from simulations.bench.accounting import format_table as accounting_table
        from simulations.bench.accounting import measure_accounting, plot_accounting

        figures = measure_accounting(ACCOUNTING_ROUNDS)
        console.print(accounting_table(figures))
        _write(out, "accounting", figures, plot_accounting)
    if "utility" in chosen:
        from simulations.bench.scale_utility import measure_utility_vs_size, plot_utility_vs_size

        figures = measure_utility_vs_size(tuple(sorted({1_000, *rows})),
                                          workdir=out / "synthetic",
                                          seeds=(seed, seed + 1, seed + 2),
                                          rounds=min(rounds, PARTNER_ROUNDS),
                                          step=console.print)
        _write(out, "utility", figures, plot_utility_vs_size)
