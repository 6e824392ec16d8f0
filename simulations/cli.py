"""The `fedcredit` command line: simulate a federation, benchmark it."""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.status import Status
from rich.table import Table

from common.config import RunConfig
from common.data.vertical_spec import VerticalSpec
from common.errors import OutputDirError
from simulations.audit.cli import audit_app
from simulations.federation_cli import app_app, federation_app
from simulations.options import DeltaOpt, EpsilonOpt, RoundsOpt, SeedOpt
from simulations.schema_cli import schema_app
from simulations.simulate.rundir import finish_run_dir, prepare_run_dir
from simulations.simulate.terminal import (
    console,
    guard_run,
    quiet_libraries,
    settings_progress,
    show_summary,
    show_vertical_summary,
)
from simulations.sweep_cli import sweep

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="fedcredit: federated credit-risk modelling with partner-owned DP budgets.")


@app.callback()
def _commands() -> None:
    """fedcredit: federated credit-risk modelling with partner-owned DP budgets."""


def build_run_config(*, scenario: str, epsilon: float, delta: float, rounds: int, seed: int,
                     out: Path, split: str, alpha: float, budgets: str, check: bool = True,
                     data_spec: str = "", **overrides: object) -> RunConfig:
    """Validate CLI options into a RunConfig before anything trains, and (`check`) that every
    simulated partner can carry out its plan; errors name the option and the config key."""
    try:
        run = RunConfig(scenario=scenario, sim_epsilon=epsilon, sim_delta=delta,
                        num_server_rounds=rounds, seed=seed, out_dir=str(out), split=split,
                        dirichlet_alpha=alpha, sim_budgets=budgets, data_spec=data_spec)
        run = replace(run, **{k: v for k, v in overrides.items() if v is not None})
        if check:
            from simulations.simulate.plan import check_plan

            with console.status(f"checking each partner's DP plan ({len(run.partners)} "
                                "partners)"):
                check_plan(run)
        return run
    except ValueError as exc:
        key = re.search(r"key '([a-z-]+)", str(exc))
        option = CLI_OPTIONS.get(key.group(1)) if key else None
        raise typer.BadParameter(str(exc), param_hint=option) from exc


CLI_OPTIONS = {"sim-epsilon": "--epsilon", "sim-delta": "--delta", "num-server-rounds": "--rounds",
               "scenario": "--scenario", "sim-budgets": "--budget", "split": "--split",
               "dirichlet-alpha": "--alpha", "local-epochs": "--local-epochs",
               "batch-size": "--batch-size", "learning-rate": "--learning-rate",
               "hidden-layers": "--hidden-layers", "seed": "--seed", "out-dir": "--out",
               "data-spec": "--spec/--data", "num-partners": "--partners",
               "fraction-train": "--fraction-train"}
BenchScenarioOpt = Annotated[str, typer.Option(
    "--scenario", help="Bundled horizontal scenario: credit_data or lending_club.")]
SplitOpt = Annotated[str, typer.Option(help="Partner split: natural, iid or dirichlet.")]
AlphaOpt = Annotated[float, typer.Option(help="Dirichlet concentration for --split dirichlet.")]
BudgetOpt = Annotated[str, typer.Option(
    "--budget", help="Per-partner budgets overriding --epsilon, e.g. 'bank=1,lender=3:1e-6'.")]
ScenarioOpt = Annotated[str | None, typer.Option(
    help="Bundled scenario: credit_data (default), lending_club, lending_club_states (one "
         "partner per US state), or credit_data_vertical.")]
DataOpt = Annotated[list[str] | None, typer.Option(
    "--data", help="Your own data instead of --scenario: NAME=CSV once per partner, or one CSV "
                   "with --partner-column.")]
PartnerColumnOpt = Annotated[str, typer.Option(
    "--partner-column", help="With one --data CSV: the column naming each row's partner.")]
SchemaOpt = Annotated[Path | None, typer.Option(
    "--schema", help="With --data: the schema TOML of the CSVs (`fedcredit schema draft`).")]
PartnersOpt = Annotated[int | None, typer.Option(
    "--partners", help="With --split iid or dirichlet: deal the rows to N partners named p001, "
                       "p002, ... instead of the scenario's own.")]
FractionTrainOpt = Annotated[float | None, typer.Option(
    "--fraction-train", help="Share of the partners drawn to train each round (seeded); a "
                             "partner not drawn spends no privacy budget in that round.")]
SpecOpt = Annotated[Path | None, typer.Option(
    "--spec", help="Your own data instead of --scenario: a data spec TOML (partners' CSVs, "
                   "schema, budgets; see the README).")]


@app.command()
def simulate(
    scenario: ScenarioOpt = None,
    epsilon: EpsilonOpt = 3.0,
    delta: DeltaOpt = 1e-5,
    rounds: RoundsOpt = 20,
    seed: SeedOpt = 0,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("runs/latest"),
    split: SplitOpt = "natural",
    alpha: AlphaOpt = 0.5,
    budgets: BudgetOpt = "",
    partners: PartnersOpt = None,
    fraction_train: FractionTrainOpt = None,
    local_epochs: Annotated[float | None, typer.Option(help="Local epochs per round.")] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Expected DP batch size; 0: the plan rule (q = 0.1 of the noisy count).")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Initial learning rate.")] = None,
    hidden_layers: Annotated[str | None, typer.Option(
        help="MLP hidden widths, e.g. '16' or '32,16' ('' = logistic).")] = None,
    secure_aggregation: Annotated[bool, typer.Option(
        help="Federated settings aggregate with Flower's SecAgg+ (coordinator sees only the "
             "sum).")] = False,
    verbose: Annotated[bool, typer.Option(help="Show Flower and Ray logs.")] = False,
    overwrite: Annotated[bool, typer.Option(
        help="Replace an earlier fedcredit run in --out: only the files its manifest lists "
             "(fedcredit-run.json); never a file fedcredit did not write.")] = False,
    data: DataOpt = None,
    partner_column: PartnerColumnOpt = "",
    schema: SchemaOpt = None,
    spec: SpecOpt = None,
) -> None:
    """Simulate lender, e-commerce and bank: federated+DP vs federated, local-only, centralized.

    With --scenario credit_data_vertical: the same customers seen from three sides (vertical
    mode), every party combination with and without DP. With --spec or --data/--schema: your
    own CSVs, one partner each (or one CSV and --partner-column). Ctrl-C stops the run within
    seconds (exit 130) and marks --out interrupted."""
    from simulations.simulate.own_data import resolve_spec

    data_spec = resolve_spec(scenario, data=data or [], partner_column=partner_column,
                             schema=schema, spec=spec, split=split, alpha=alpha, seed=seed)
    vertical_spec = data_spec if isinstance(data_spec, VerticalSpec) else None
    scenario = scenario or ("credit_data_vertical" if vertical_spec else "credit_data")
    if scenario == "credit_data_vertical":
        unused = [option for option, value, default in (
            ("--rounds", rounds, 20), ("--split", split, "natural"), ("--alpha", alpha, 0.5),
            ("--budget", budgets, ""), ("--local-epochs", local_epochs, None),
            ("--partners", partners, None), ("--fraction-train", fraction_train, None),
            ("--batch-size", batch_size, None), ("--learning-rate", learning_rate, None),
            ("--hidden-layers", hidden_layers, None),
            ("--secure-aggregation", secure_aggregation, False)) if value != default]
        if unused:
            raise typer.BadParameter(f"{', '.join(unused)} not used by the vertical scenario "
                                     "(it takes --epsilon, --delta, --seed, --out)",
                                     param_hint="--scenario")
        simulate_vertical_cli(out=out, epsilon=epsilon, delta=delta, seed=seed,
                              overwrite=overwrite, verbose=verbose, spec=vertical_spec)
        return
    options = dict(scenario=scenario, epsilon=epsilon, delta=delta, rounds=rounds, seed=seed,
                   out=out, split=split, alpha=alpha, budgets=budgets, local_epochs=local_epochs,
                   batch_size=batch_size, learning_rate=learning_rate,
                   hidden_layers=hidden_layers, secure_aggregation=secure_aggregation or None,
                   num_partners=partners, fraction_train=fraction_train)
    if data_spec is None:
        run = build_run_config(**options)
        prepare_out_dir(out, overwrite)  # only once every option is valid: nothing lost on a typo
    else:
        from simulations.simulate.own_data import spec_run_config

        run = spec_run_config(data_spec, out, budgets, lambda **extra: build_run_config(
            **{**options, **extra}), lambda: prepare_out_dir(out, overwrite))
    displays: list[Progress] = []
    report = guard_run(out, lambda: run_horizontal(run, out, verbose, displays),
                       lambda: [display.stop() for display in displays])
    stopped = {name: history["message"] for name, history in report["history"].items()
               if history and history["status"] != "completed"}
    show_summary(report, out)
    for name, message in stopped.items():
        console.print(f"[red]{name} ended before its last round:[/red] {message}",
                      soft_wrap=True)
    if stopped:
        raise typer.Exit(code=2)


def run_horizontal(run: RunConfig, out: Path, verbose: bool, displays: list[Progress]) -> dict:
    """Every setting of `run` with a progress bar (kept in `displays`), the report written and
    the run directory marked completed; returns the report."""
    started = time.perf_counter()
    quiet_libraries(verbose)
    from simulations.simulate.horizontal import SETTINGS, run_all
    from simulations.simulate.reports import write_report

    with settings_progress(SETTINGS) as progress:
        displays.append(progress)
        tasks = {name: progress.add_task(name, total=run.num_server_rounds
                                         if name in ("federated_dp", "federated") else 1)
                 for name in SETTINGS}

        def advance(label: str, done: int, total: int) -> None:
            progress.update(tasks[label], completed=done, total=total)

        body = run_all(run, advance)
    own = {"scenario": "own data", "split": "partner", "data_spec": run.data_spec}
    report = {"scenario": run.scenario, "split": run.split, "seed": run.seed,
              "epsilon": run.sim_epsilon, "delta": run.sim_delta,
              "rounds": run.num_server_rounds, **(own if run.data_spec else {}), **body}
    report["timing"]["wall_seconds"] = time.perf_counter() - started
    write_report(out, report)
    finish_run_dir(out, "completed", "; ".join(
        f"{name} ended before its last round: {history['message']}"
        for name, history in report["history"].items()
        if history and history["status"] != "completed"))
    return report


def simulate_vertical_cli(*, out: Path, epsilon: float, delta: float, seed: int,
                          overwrite: bool, verbose: bool,
                          spec: VerticalSpec | None = None) -> None:
    """The vertical scenario: validate, run, print the summary (report.md in `out`)."""
    from common.vertical.settings import VerticalSettings

    try:
        RunConfig(scenario="credit_data_vertical", mode="vertical", seed=seed,
                  sim_epsilon=epsilon, sim_delta=delta, out_dir=str(out))
        settings = VerticalSettings(epsilon=epsilon, delta=delta)
        from simulations.simulate.plan import check_vertical_plan

        check_vertical_plan(settings, seed, spec)
    except ValueError as exc:
        key = re.search(r"key '([a-z-]+)", str(exc))
        raise typer.BadParameter(str(exc), param_hint=CLI_OPTIONS.get(
            key.group(1) if key else "", "--epsilon/--delta")) from exc
    prepare_out_dir(out, overwrite)

    def work(status: Status) -> dict:
        quiet_libraries(verbose)
        from simulations.simulate.vertical import simulate_vertical

        report = simulate_vertical(out, seed=seed, settings=settings, spec=spec)
        status.stop()
        finish_run_dir(out, "completed", "" if report["audit"]["ok"] else "audit failed")
        return report

    with console.status("vertical credit_data: PSI, DP releases, top models, scoring "
                        "(about a minute)") as status:
        report = guard_run(out, lambda: work(status), status.stop)
    show_vertical_summary(report, out)
    if not report["audit"]["ok"]:
        raise typer.Exit(code=2)


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Claim `out` for a new run (see `simulations.simulate.rundir`): refuse a file, a directory
    that cannot be written, files fedcredit did not write, and an earlier run unless
    `overwrite`, which then removes exactly that run's files."""
    try:
        prepare_run_dir(out, overwrite=overwrite, command="simulate")
    except OutputDirError as exc:
        raise typer.BadParameter(str(exc), param_hint="--out") from exc


app.add_typer(audit_app, name="audit")
app.add_typer(schema_app, name="schema")
app.command("sweep")(sweep)
keys_app = typer.Typer(no_args_is_help=True, help="Signing keys for ledgers and receipts.")
app.add_typer(keys_app, name="keys")
app.add_typer(federation_app, name="federation")
app.add_typer(app_app, name="app")


@keys_app.command("new")
def keys_new(
    partner: Annotated[str, typer.Option(help="Key owner: a partner name or 'coordinator'.")],
    out: Annotated[Path, typer.Option(help="Directory for <partner>.key and <partner>.pub.")],
    supernode_auth: Annotated[bool, typer.Option(
        help="Also write the SuperNode authentication key pair (supernode-auth, "
             "supernode-auth.pub) a partner's flower-supernode signs in with.")] = False,
) -> None:
    """Create your own Ed25519 signing key pair on your own machine: <out>/<partner>.key (mode
    0600) and .pub; hand over only the public keys (docs/partners.md)."""
    from common.privacy.crypto import CryptoError
    from simulations.deploy.keys import new_partner_keys, public_key_lines

    if not partner or "/" in partner or partner.startswith("."):
        raise typer.BadParameter(f"invalid partner name {partner!r}", param_hint="--partner")
    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} exists and is not a directory", param_hint="--out")
    try:
        written = new_partner_keys(partner, out, supernode_auth=supernode_auth)
    except CryptoError as exc:
        raise typer.BadParameter(str(exc), param_hint="--out") from exc
    except OSError as exc:
        raise typer.BadParameter(f"cannot write into {out} ({exc.filename or out}: "
                                 f"{exc.strerror or exc})", param_hint="--out") from exc
    Console().print("\n".join(public_key_lines(written)), markup=False, highlight=False,
                    soft_wrap=True)


@app.command()
def bench(
    scenario: BenchScenarioOpt = "credit_data",
    epsilon: EpsilonOpt = 3.0,
    rounds: RoundsOpt = 20,
    seed: SeedOpt = 0,
    deployment: Annotated[bool, typer.Option(
        "--deployment", help="Instead: run the TLS federation on loopback (plain, then SecAgg+) "
                             "and measure ClientApp cold start and seconds per deployed round."
    )] = False,
    plain_rounds: Annotated[int, typer.Option(
        min=2, help="With --deployment: rounds of the plain federation.")] = 5,
    secure_rounds: Annotated[int, typer.Option(
        min=2, help="With --deployment: rounds of the SecAgg+ federation.")] = 3,
    out: Annotated[Path | None, typer.Option(
        help="With --deployment: workspace of the benchmark federations (default "
             "runs/bench-deployment); with --scale: figures, plots and synthetic data (default "
             "runs/bench-scale).")] = None,
    overwrite: Annotated[bool, typer.Option(
        help="With --deployment or --scale: replace an earlier benchmark in --out.")] = False,
    scale: Annotated[str | None, typer.Option(
        help="Instead of the above: how cost grows (docs/scale.md). partners: round time and "
             "memory of the DP federation vs --counts (lending_club dealt iid, --epsilon, "
             "min(--rounds, 10) rounds); rows: DP-SGD vs non-private throughput and memory of "
             "one synthetic partner per --sizes (--epsilon); accounting: time vs 10-1000 "
             "rounds (the bank's plan at eps 3); utility: pooled AUC at eps 1 and 3 vs "
             "non-private for 1,000 and --sizes rows per synthetic partner (seeds --seed to "
             "--seed+2, min(--rounds, 10) rounds); or all.")] = None,
    counts: Annotated[str, typer.Option(
        help="With --scale partners: partner counts (each >= 2).")] = "3,10,30,100,200",
    sizes: Annotated[str, typer.Option(
        help="With --scale rows/utility: rows per synthetic partner (each >= 1000)."
    )] = "10000,100000,1000000",
) -> None:
    """Measure: full DP simulation wall time, DP/non-private epoch time, round time, memory;
    with --deployment, real deployed rounds on loopback; with --scale, scaling curves."""
    if scale is not None:
        from simulations.bench.scale_cli import bench_scale

        if deployment:
            raise typer.BadParameter("give --scale or --deployment, not both",
                                     param_hint="--scale")

        bench_scale(scale, out or Path("runs/bench-scale"), counts=counts, sizes=sizes,
                    rounds=rounds, epsilon=epsilon, seed=seed, overwrite=overwrite)
        return
    if deployment:
        bench_deployment(out or Path("runs/bench-deployment"), plain_rounds=plain_rounds,
                         secure_rounds=secure_rounds, overwrite=overwrite)
        return
    from simulations.bench.horizontal import run_benchmark

    if scenario == "credit_data_vertical":
        raise typer.BadParameter("bench measures the horizontal federation; for vertical mode "
                                 "run `python -m simulations.bench.vertical`",
                                 param_hint="--scenario")
    run = build_run_config(scenario=scenario, epsilon=epsilon, delta=1e-5, rounds=rounds,
                           seed=seed, out=Path("runs/bench"), split="natural", alpha=0.5,
                           budgets="")
    console.print(f"benchmarking {scenario}, {rounds} rounds, eps={epsilon} (takes a minute)")
    figures = run_benchmark(run)
    table = Table(title="fedcredit benchmark")
    table.add_column("figure")
    table.add_column("value", justify="right")
    e, s = figures["epoch"], figures["simulation"]
    rows = [
        (f"full {rounds}-round 3-partner DP simulation, wall (incl. start-up)",
         f"{s['wall_seconds']:.1f} s"),
        ("  start-up until round 1 done", f"{s['startup_to_round1_seconds']:.1f} s"),
        ("steady-state seconds per round (median)", f"{s['steady_round_seconds']:.3f} s"),
        ("  of which largest partner's DP compute",
         f"{e['largest_partner_round_compute_seconds']:.3f} s"),
        ("  round overhead (round - compute)", f"{s['round_overhead_seconds']:.3f} s"),
        (f"DP-SGD epoch ({e['partner_rows']} rows)", f"{e['dp_epoch_seconds'] * 1000:.1f} ms"),
        ("non-private epoch", f"{e['plain_epoch_seconds'] * 1000:.1f} ms"),
        ("DP / non-private epoch time", f"{e['dp_over_plain']:.2f}x"),
        ("peak memory, whole process tree (RSS)", f"{s['peak_rss_mib']:.0f} MiB"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


def bench_deployment(out: Path, *, plain_rounds: int, secure_rounds: int,
                     overwrite: bool) -> None:
    """`fedcredit bench --deployment`: print cold start, seconds per round and time shares."""
    from simulations.bench.deployment import run_deployment_benchmark

    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise typer.BadParameter(f"{out} is not empty; pass --overwrite to replace it",
                                     param_hint="--out")
        shutil.rmtree(out)
    quiet_libraries(verbose=False)
    figures = run_deployment_benchmark(out, plain_rounds=plain_rounds,
                                       secure_rounds=secure_rounds, step=console.print)
    (out / "bench.json").write_text(json.dumps(figures, indent=2))
    cold = figures["cold_start"]
    table = Table(title="fedcredit deployed rounds (loopback, TLS + node auth, 3 partners)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("import clients.app (fresh interpreter, median)",
                  f"{cold['import_client_app_seconds']:.2f} s")
    table.add_row("import torch (same run, median)", f"{cold['import_torch_seconds']:.2f} s")
    table.add_row("  ratio", f"{cold['client_app_over_torch']:.2f}x")
    for name, title in (("plain", "plain FedAvg"), ("secure", "SecAgg+")):
        f = figures[name]
        table.add_row(f"{title}: seconds per round (median of rounds 2-{f['rounds']})",
                      f"{f['median_round_seconds']:.1f} s")
        table.add_row("  every round", ", ".join(f"{s:.1f}" for s in f["round_seconds"]))
        table.add_row(f"  demo wall, set-up to teardown ({f['rounds']} rounds)",
                      f"{f['wall_seconds']:.1f} s")
        table.add_row("  partner's share: ClientApp start-up / handlers / waiting",
                      f"{f['startup_share']:.0%} / {f['handler_share']:.0%} / "
                      f"{f['waiting_share']:.0%}")
        table.add_row("  ClientApp processes per partner", f"{f['messages_per_partner']:.0f}")
    Console().print(table)
    console.print(f"figures: {out / 'bench.json'}")


def main() -> None:
    """Entry point for `python -m simulations.cli`."""
    app()


if __name__ == "__main__":
    main()
