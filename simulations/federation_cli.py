"""`fedcredit federation init` and `fedcredit federation demo`: set up a real federation, and
run one on this machine (horizontal partners, or the vertical parties on their own tables)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from common.data.vertical_spec import VerticalSpec
from common.outputs import AUDIT_HTML, REPORT_MD
from simulations.options import DeltaOpt, EpsilonOpt, RoundsOpt, SeedOpt
from simulations.simulate.terminal import console

federation_app = typer.Typer(no_args_is_help=True,
                             help="Set up a real federation, or run one on this machine.")


@federation_app.command("init")
def federation_init(
    out: Annotated[Path, typer.Option(help="New directory for the coordinator's files.")],
    partner_key: Annotated[list[str] | None, typer.Option(
        "--partner-key", metavar="NAME=PATH",
        help="A partner's ledger PUBLIC key (<name>.pub from its own `fedcredit keys new`); "
             "once per partner, in partner order.")] = None,
    supernode_key: Annotated[list[str] | None, typer.Option(
        "--supernode-key", metavar="NAME=PATH",
        help="A partner's SuperNode authentication PUBLIC key (supernode-auth.pub from its "
             "`fedcredit keys new --supernode-auth`); once per partner.")] = None,
    superlink_host: Annotated[str, typer.Option(
        help="Host name or IP the partners use to reach the SuperLink.")] = "localhost",
) -> None:
    """Create the CA, the SuperLink's TLS certificate, the coordinator's receipt key and the
    public-key directory, from the public keys each partner made on its own machine. No
    partner's private key is ever written: whoever held one could sign as that partner."""
    from simulations.deploy.federation import init_federation
    from simulations.deploy.keys import read_partner_keys

    try:
        keys = read_partner_keys(partner_key or [], supernode_key or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        layout = init_federation(out, keys, superlink_host)
    except (ValueError, OSError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--out") from None
    # Plain text: commands hold [brackets] (TOML) and must stay on one line to be copied.
    Console().print(layout.instructions(), markup=False, highlight=False, soft_wrap=True)


@federation_app.command("demo")
def federation_demo(
    out: Annotated[Path, typer.Option(help="Workspace: keys, data, logs, model, ledgers.")] = (
        Path("runs/federation-demo")),
    rounds: RoundsOpt = 3,
    epsilon: EpsilonOpt = 3.0,
    delta: DeltaOpt = 1e-5,
    min_partners: Annotated[int, typer.Option(
        help="Fewest partners a round may aggregate before the run stops.")] = 2,
    superlink_port: Annotated[int, typer.Option(help="SuperLink HTTPS port.")] = 8000,
    supernode_port: Annotated[int, typer.Option(
        help="First partner SuperNode's ClientApp API port (the others follow).")] = 9094,
    seed: SeedOpt = 0,
    timeout: Annotated[float, typer.Option(help="Seconds the run may take.")] = 900.0,
    run_config: Annotated[str, typer.Option(
        help="Extra coordinator run config, e.g. \"local-epochs=2\".")] = "",
    secure_aggregation: Annotated[bool, typer.Option(
        help="Aggregate with Flower's SecAgg+: the coordinator sees only the sum.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier demo in --out.")] = False,
    mode: Annotated[str | None, typer.Option(
        help="horizontal (default: partners hold different customers) or vertical (lender, "
             "ecommerce and bank hold columns of the same customers: credit_data_vertical, or "
             "your tables with --spec).")] = None,
    spec: Annotated[Path | None, typer.Option(
        "--spec", help="Vertical mode on your own tables: a vertical data spec TOML (mode = "
                       "\"vertical\", each party's CSV, schema and id_column; docs/vertical.md)."
    )] = None,
) -> None:
    """Run a real federation on this machine: each partner makes its own keys (`keys new`, all
    on this machine only because it is a demo), `federation init` from their public keys,
    SuperLink with TLS and node authentication, one SuperNode per partner, `flwr run`, then
    audit the ledgers. Stops every process it started.

    With --mode vertical or a vertical --spec: the three vertical parties, each SuperNode on its
    own table, aligned by PSI on the customer IDs (docs/vertical.md)."""
    import signal

    from common.errors import FederationError
    from simulations.deploy.demo import run_demo
    from simulations.deploy.local import DemoOptions, LocalFederation

    vertical_spec = _demo_vertical_spec(spec, mode)
    vertical = mode == "vertical" or vertical_spec is not None
    if vertical:
        unused = [option for option, value, default in (
            ("--rounds", rounds, 3), ("--min-partners", min_partners, 2)) if value != default]
        if unused:
            raise typer.BadParameter(f"{', '.join(unused)} not used by a vertical run (it has "
                                     "no federated rounds: one PSI, one release per party)",
                                     param_hint=unused[0])
    try:
        options = DemoOptions(rounds=rounds, epsilon=epsilon, delta=delta,
                              min_partners=min_partners, superlink_port=superlink_port,
                              supernode_port=supernode_port, timeout=timeout, seed=seed,
                              extra_run_config=run_config,
                              secure_aggregation=secure_aggregation,
                              mode="vertical" if vertical else "horizontal",
                              spec=vertical_spec)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if vertical:
        from simulations.deploy.vertical import check_vertical_demo

        try:  # every table read, aligned and split, the releases calibrated: before any process
            check_vertical_demo(vertical_spec, epsilon=epsilon, delta=delta, seed=seed)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--spec" if spec else
                                     "--epsilon/--delta") from None
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise typer.BadParameter(f"{out} is not empty; choose another --out or pass "
                                     "--overwrite", param_hint="--out")
        shutil.rmtree(out)

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    fed = LocalFederation(out, options)
    try:
        rounds_column = TextColumn("" if vertical else "{task.completed}/{task.total} rounds")
        with Progress(TextColumn("{task.description}"), BarColumn(), rounds_column,
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("federation", total=None if vertical else rounds)
            report = run_demo(fed, lambda text: progress.console.print(f"- {text}"),
                              lambda done: progress.update(task, completed=done))
    except FederationError as exc:
        console.print(f"[red]local federation failed:[/red] {exc}")
        raise typer.Exit(code=1) from exc
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping every federation process[/yellow]")
        raise typer.Exit(code=130) from None
    finally:
        fed.close()
    out = fed.workspace
    if vertical:
        from simulations.deploy.demo import vertical_summary_line

        Console().print(vertical_summary_line(report), markup=False, highlight=False)
    Console().print(f"run {report['status']}"
                    + (f": {report['message']}" if report["message"] else "")
                    + f"; audit {'VERIFIED' if report['audit']['ok'] else 'FAILED'}; "
                    f"report {out / REPORT_MD}, audit {out / AUDIT_HTML}")
    if report["status"] != "completed" or not report["audit"]["ok"]:
        for finding in report["audit"]["findings"]:
            console.print(f"[red]{finding}[/red]")
        raise typer.Exit(code=2)


def _demo_vertical_spec(spec: Path | None, mode: str | None) -> VerticalSpec | None:
    """`federation demo --spec`: the vertical data spec, checked (exit 2 naming the file and key
    otherwise); None without --spec."""
    if mode not in (None, "horizontal", "vertical"):
        raise typer.BadParameter(f"must be 'horizontal' or 'vertical', got {mode!r}",
                                 param_hint="--mode")
    if spec is None:
        return None
    if mode == "horizontal":
        raise typer.BadParameter("--spec takes a vertical data spec; drop --mode horizontal",
                                 param_hint="--mode")
    import tomllib

    from common.data.spec import load_vertical_spec
    from common.data.vertical_spec import VERTICAL_MODE

    try:
        said = tomllib.loads(spec.read_text(encoding="utf-8")).get("mode")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        said = VERTICAL_MODE  # load_vertical_spec names what is wrong with the file
    if said != VERTICAL_MODE:
        raise typer.BadParameter(
            f"{spec} is not a vertical data spec (mode = \"vertical\", one [parties.<party>] "
            f"table each for lender, ecommerce and bank); `federation demo --spec` runs "
            f"vertical mode only (partners holding different customers: `fedcredit simulate "
            f"--spec`, and docs/partners.md for a real deployment)", param_hint="--spec")
    try:
        return load_vertical_spec(spec)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--spec") from None
