"""`fedcredit sweep`: the options, the progress display, the exit status (see simulations.sweep).

Exit status: 0 when every cell finished, 1 when some failed (the others are still written up),
2 for bad options or an --out the sweep may not use, 130 (143) on Ctrl-C (SIGTERM)."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from simulations.sweep import (
    Cell,
    CellResult,
    CellRunner,
    Spec,
    SweepError,
    SweepInterrupted,
    parse_epsilons,
    parse_seeds,
    plan_sweep,
    run_in_subprocess,
    run_sweep,
    sigterm_as_interrupt,
)

T = TypeVar("T")
console = Console(stderr=True)
VERTICAL_SCENARIO = "credit_data_vertical"


def parse_option(option: str, text: str, parse: Callable[[str], T]) -> T:
    """`parse(text)` or exit 2 naming `option`."""
    try:
        return parse(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def check_spec(spec: Spec, epsilons: list[float], seeds: list[int], out: Path) -> None:
    """Validate the spec for every ε as `fedcredit simulate` would (without the calibration,
    which each cell does); exit 2 naming the option."""
    if spec.scenario == VERTICAL_SCENARIO:
        raise typer.BadParameter("the sweep draws the horizontal settings' curve; "
                                 "credit_data_vertical is not swept (yet)",
                                 param_hint="--scenario")
    if spec.data_spec is not None:
        check_data_spec(spec.data_spec, seeds)
    from simulations.cli import CLI_OPTIONS  # here: simulations.cli imports this module

    renamed = {"--epsilon": "--epsilons", "--seed": "--seeds"}
    for epsilon in epsilons:
        try:
            spec.run_config(epsilon, seeds[0], out)
        except ValueError as exc:
            key = re.search(r"key '([a-z-]+)", str(exc))
            option = CLI_OPTIONS.get(key.group(1)) if key else None
            raise typer.BadParameter(str(exc), param_hint=renamed.get(option, option)) from None


def check_data_spec(path: Path, seeds: list[int]) -> None:
    """A horizontal data spec whose every partner's rows load and split (as simulate checks);
    exit 2 naming --spec."""
    from common.config import RunConfig
    from common.data.spec import load_spec

    try:
        spec = load_spec(path)
        for seed in seeds:
            spec.load_partners(seed=seed, test_fraction=RunConfig.test_fraction)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--spec") from None


def sweep(
    epsilons: Annotated[str, typer.Option(
        help="Budgets ε per partner, comma-separated, e.g. 0.5,1,2,3,5,8.")] = "0.5,1,2,3,5,8",
    seeds: Annotated[str, typer.Option(
        help="Seeds: a list and/or ranges, e.g. 0-4 or 0,2,7 or 0-2,9.")] = "0-4",
    out: Annotated[Path, typer.Option(
        help="Sweep directory: one eps<E>-seed<S>/ run per cell, logs/, sweep.csv/.md/.png."
    )] = Path("runs/sweep"),
    scenario: Annotated[str, typer.Option(
        help="Bundled horizontal scenario: credit_data or lending_club.")] = "credit_data",
    spec: Annotated[Path | None, typer.Option(
        "--spec", help="Your own data instead of --scenario: a horizontal data spec TOML (as "
        "for fedcredit simulate --spec).")] = None,
    rounds: Annotated[int, typer.Option(help="Federated rounds of every cell.")] = 20,
    split: Annotated[str, typer.Option(help="Partner split: natural, iid or dirichlet.")] = (
        "natural"),
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration (--split dirichlet).")] = (
        0.5),
    delta: Annotated[float, typer.Option(help="Privacy budget delta of every partner.")] = 1e-5,
    local_epochs: Annotated[float | None, typer.Option(help="Local epochs per round.")] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Expected DP batch size; 0: the plan rule (q = 0.1 of the noisy count).")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Initial learning rate.")] = None,
    hidden_layers: Annotated[str | None, typer.Option(
        help="MLP hidden widths, e.g. '16' or '32,16' ('' = logistic).")] = None,
    secure_aggregation: Annotated[bool, typer.Option(
        help="Federated settings aggregate with Flower's SecAgg+.")] = False,
) -> None:
    """Privacy-utility curve: simulate every ε × seed; DP vs non-private AUC/KS, CSV/MD/PNG.

    Each cell is a `fedcredit simulate` run in OUT/eps<E>-seed<S>/. A cell whose run completed
    is reused, so re-running the command (e.g. after Ctrl-C) runs only what is missing."""
    if spec is not None and (scenario != "credit_data" or split != "natural" or alpha != 0.5):
        raise typer.BadParameter("--scenario, --split and --alpha deal a bundled scenario's "
                                 "rows; with --spec each partner holds its own rows",
                                 param_hint="--spec")
    spec = Spec(scenario=scenario, data_spec=spec.resolve() if spec else None, rounds=rounds,
                split=split, alpha=alpha, delta=delta,
                local_epochs=local_epochs, batch_size=batch_size, learning_rate=learning_rate,
                hidden_layers=hidden_layers, secure_aggregation=secure_aggregation)
    run_sweep_cli(spec, parse_option("--epsilons", epsilons, parse_epsilons),
                  parse_option("--seeds", seeds, parse_seeds), out)


def run_sweep_cli(spec: Spec, epsilons: list[float], seeds: list[int], out: Path,
                  runner: CellRunner = run_in_subprocess) -> list[CellResult]:
    """Run the sweep with a progress bar, write its outputs, print the pooled summary; exit 1
    when a cell failed, 2 on a refusal, 130/143 on Ctrl-C/SIGTERM. Returns the cell results."""
    check_spec(spec, epsilons, seeds, out)
    try:
        states = plan_sweep(out, spec, epsilons, seeds)
    except SweepError as exc:
        raise typer.BadParameter(str(exc), param_hint=exc.option) from None
    reused = sum(state == "completed" for state in states.values())
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  MofNCompleteColumn(), TextColumn("cells"), TimeElapsedColumn(),
                  TextColumn("left"), TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task(f"reading {reused} finished cell(s)", total=len(states))

        def starting(cell: Cell) -> None:
            progress.update(task, description=f"simulating {cell.label()}")

        def done(result: CellResult, finished: int, total: int) -> None:
            progress.update(task, completed=finished)
            progress.console.print(describe(result), highlight=False, soft_wrap=True)

        try:
            with sigterm_as_interrupt():
                results = run_sweep(out, spec, states, runner, done, starting)
        except SweepError as exc:
            progress.stop()
            raise typer.BadParameter(str(exc), param_hint=exc.option) from None
        except (SweepInterrupted, KeyboardInterrupt) as exc:
            progress.stop()
            signum = exc.signum if isinstance(exc, SweepInterrupted) else signal.SIGINT
            console.print(f"[yellow]sweep interrupted: the cell being simulated is marked "
                          f"interrupted; run the same command again to resume ({out})[/yellow]")
            raise typer.Exit(code=128 + signum) from None
    return finish(results, spec, out)


def describe(result: CellResult) -> str:
    """One console line per finished cell."""
    if result.outcome == "failed":
        return f"[red]{result.cell.label()} failed:[/red] {result.message}"
    res = (result.report or {})["results"]
    line = (f"{result.cell.label()}: AUC DP {res['federated_dp']['pooled']['auc']:.4f}, "
            f"personalised {res['federated_dp_personalized']['pooled']['auc']:.4f}, "
            f"non-private {res['federated']['pooled']['auc']:.4f}")
    if result.outcome == "reused":
        return f"[dim]{line} (reused)[/dim]"
    note = f" [yellow]({result.message})[/yellow]" if result.message else ""
    return f"{line} ({result.seconds:.0f} s){note}"


def finish(results: list[CellResult], spec: Spec, out: Path) -> list[CellResult]:
    """Write sweep.csv/.md/.png from the finished cells, print where; exit 1 if any failed."""
    from simulations.sweep_report import write_outputs

    reports = {(r.cell.epsilon, r.cell.seed): r.report for r in results if r.report}
    failed = [r.cell.name for r in results if r.report is None]
    if not reports:
        console.print("[red]no cell finished: nothing to write[/red]")
        raise typer.Exit(code=1)
    title = spec.title
    line = " ".join(["fedcredit simulate", *spec.options(), "--epsilon E --seed S"])
    paths = write_outputs(out, reports, line, title, failed)
    Console().print((out / "sweep.md").read_text(encoding="utf-8").split("\n## Per partner")[0],
                    markup=False, highlight=False, soft_wrap=True)
    console.print("written: " + ", ".join(str(p) for p in paths))
    if failed:
        console.print(f"[red]{len(failed)} cell(s) did not finish:[/red] {', '.join(failed)}; "
                      f"their logs are in {out / 'logs'}; re-run the sweep to retry them")
        raise typer.Exit(code=1)
    return results


sweep_app = typer.Typer(add_completion=False, help=__doc__.splitlines()[0])
sweep_app.command()(sweep)
