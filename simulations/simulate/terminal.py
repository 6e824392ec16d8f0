"""What `fedcredit simulate` shows and how it ends: library logging kept off the console unless
--verbose, the progress bar, the summary tables, and the run guard that marks the run directory
`completed`, `failed` or `interrupted` and stops every process on Ctrl-C."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from common.errors import SimulationFailed
from common.outputs import PARTNERS_CSV, RUN_MANIFEST, RunLayout
from simulations.simulate.interrupt import stop_on_signal, wait_for_stop
from simulations.simulate.many_partners import is_many, partner_records, spread
from simulations.simulate.rundir import finish_run_dir

T = TypeVar("T")
console = Console(stderr=True)


def _not_from_libraries(record: logging.LogRecord) -> bool:
    """Flower prints through its own console handler; Ray's records stay below ERROR."""
    return not record.name.startswith("flwr") and (
        record.levelno >= logging.ERROR or not record.name.startswith("ray"))


def quiet_libraries(verbose: bool) -> None:
    """Keep Flower's and Ray's per-round logging (and Flower's deprecation warning) off the
    console unless `verbose`; errors still show."""
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # Importing Flower sets its logger to DEBUG and its console handler to INFO: import it
    # first, then set both, or the setting is undone by the first federation.
    from flwr.common.logger import FLOWER_LOGGER, console_handler

    FLOWER_LOGGER.setLevel(logging.DEBUG if verbose else logging.ERROR)
    console_handler.setLevel(logging.INFO if verbose else logging.ERROR)
    for name in ("ray", "opacus"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    for handler in logging.getLogger().handlers:  # Opacus installs a root handler at import
        handler.setLevel(level)
        if _not_from_libraries not in handler.filters:
            handler.addFilter(_not_from_libraries)


def settings_progress(settings: tuple[str, ...]) -> Progress:
    """One bar per setting, each labelled with its whole name."""
    width = max(len(name) for name in settings)
    return Progress(TextColumn(f"{{task.description:<{width}}}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                    console=console)


def guard_run(out: Path, work: Callable[[], T],
              stop_display: Callable[[], None] = lambda: None) -> T:
    """Run `work` for the run in `out`. Ctrl-C (or SIGTERM) stops it within seconds: every
    process it started ends, the manifest says `interrupted`, exit status 130 (143). A run whose
    federation trained nothing ends `failed` with its partners' errors, exit status 1; any other
    error ends `failed` too and is raised."""
    def on_stop(signum: int) -> None:
        logging.disable(logging.CRITICAL)  # the federation's errors about its own ending
        stop_display()
        console.print(f"[yellow]interrupted ({signal.Signals(signum).name}): stopping every "
                      "simulation process[/yellow]")

    def on_stopped(signum: int) -> None:
        finish_run_dir(out, "interrupted", f"stopped by {signal.Signals(signum).name}")
        console.print(f"run directory {out} marked interrupted ({RUN_MANIFEST}); it holds a "
                      "partial run")

    with stop_on_signal(on_stop, on_stopped):
        try:
            return work()
        except BaseException as exc:
            wait_for_stop()  # what failed because a signal is stopping everything
            stop_display()
            expected = isinstance(exc, SimulationFailed)
            finish_run_dir(out, "failed", str(exc) if expected else f"{type(exc).__name__}: {exc}")
            if not expected:
                raise
            console.print(f"[red]simulation failed:[/red] {exc}", soft_wrap=True)
            raise typer.Exit(code=1) from None


def show_summary(report: dict[str, Any], out: Path) -> None:
    """Print the pooled comparison and privacy spent as tables."""
    table = Table(title=f"{report['scenario']}: pooled test metrics")
    for column in ("setting", "AUC", "KS", "Gini", "Brier"):
        table.add_column(column)
    for setting, result in report["results"].items():
        m = result["pooled"]
        table.add_row(setting, *(f"{m[k]:.4f}" for k in ("auc", "ks", "gini", "brier")))
    Console().print(table)
    layout = RunLayout(out)
    if is_many(report):
        records = partner_records(report)
        spent = [float(r["epsilon_spent"]) for r in records]
        trained = [int(r["rounds_trained"]) for r in records]
        Console().print(f"privacy spent (federated_dp), {len(report['partners'])} partners: eps "
                        f"{spread(spent)}; rounds trained {spread(trained)}; every partner: "
                        f"{layout.root / PARTNERS_CSV}")
        Console().print(f"report: {layout.report_md}  (json: {layout.report_json}), "
                        f"{report['timing']['wall_seconds']:.1f} s")
        return
    privacy = Table(title="privacy spent (federated_dp)")
    for column in ("partner", "eps spent", "eps budget", "delta", "sigma", "rounds"):
        privacy.add_column(column)
    for partner, f in report["privacy"].items():
        privacy.add_row(partner, f"{f['epsilon_spent']:.4f}", f"{f['epsilon_budget']:g}",
                        f"{f['delta']:g}", f"{f['noise_multiplier']:.3f}",
                        str(f["rounds_trained"]))
    Console().print(privacy)
    Console().print(f"report: {layout.report_md}  (json: {layout.report_json}), "
                    f"{report['timing']['wall_seconds']:.1f} s")


def show_vertical_summary(report: dict[str, Any], out: Path) -> None:
    """Print the vertical scenario's metrics per party combination and the ε spent."""
    table = Table(title="credit_data_vertical: lender's pooled test metrics")
    for column in ("setting", "AUC (DP)", "KS (DP)", "AUC (no DP)", "KS (no DP)"):
        table.add_column(column)
    for name, modes in report["results"].items():
        table.add_row(name, *(f"{modes[m][k]:.4f}" for m in ("dp", "non_private")
                              for k in ("auc", "ks")))
    Console().print(table)
    Console().print("eps spent: " + ", ".join(f"{p} {f['epsilon_spent']:.4f}/"
                                              f"{f['epsilon_budget']:g}"
                                              for p, f in report["privacy"].items())
                    + f"; audit {'verified' if report['audit']['ok'] else 'FAILED'}; "
                    f"report {RunLayout(out).report_md}")
