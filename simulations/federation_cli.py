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


app_app = typer.Typer(no_args_is_help=True, help=(
    "Signed app bundles: SuperNodes that run only the fedcredit bundle their partner signed "
    "(Flower's --trusted-entities), with no network or Flower Hub."))


def _app_error(exc: Exception, hint: str | None = None) -> typer.BadParameter:
    return typer.BadParameter(str(exc), param_hint=hint)


@app_app.command("build")
def app_build(
    out: Annotated[Path, typer.Option(help="Where to write the bundle (.fab).")],
    app: Annotated[Path, typer.Option(help="The Flower App directory (pyproject.toml).")] = (
        Path(".")),
) -> None:
    """Bundle the app as `flwr build` does. The bundle is reproducible: a partner who builds
    the source it reviewed gets the same SHA-256, so it can sign its own build."""
    from simulations.deploy.appsign import AppSigningError, build_fab

    try:
        fab = build_fab(app.resolve())
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(fab.content)
    except AppSigningError as exc:
        raise _app_error(exc, "--app") from None
    except OSError as exc:
        raise _app_error(exc, "--out") from None
    Console().print(f"{out}\n  app: {fab.spec}\n  sha256: {fab.sha256}", markup=False,
                    highlight=False, soft_wrap=True)


@app_app.command("key")
def app_key(
    out: Annotated[Path, typer.Option(help="Private key file to create (mode 0600); the "
                                           "public key goes to <out>.pub.")],
    key_id: Annotated[str, typer.Option(help="The name this key signs under (the partner's "
                                              "name).")],
) -> None:
    """Create your own Ed25519 app-signing key (OpenSSH format, as Flower reads it). Keep the
    private key; give the .pub line only to those who should trust your signature."""
    from simulations.deploy.appsign import AppSigningError, new_signing_key

    try:
        line = new_signing_key(out, key_id)
    except AppSigningError as exc:
        raise _app_error(exc) from None
    except OSError as exc:
        raise _app_error(f"cannot write {out}: {exc.strerror or exc}", "--out") from None
    Console().print(f"{line} {key_id}", markup=False, highlight=False, soft_wrap=True)


@app_app.command("trust")
def app_trust(
    out: Annotated[Path, typer.Option(help="The trusted-entities YAML to write.")],
    entity: Annotated[list[str], typer.Option(
        "--entity", metavar="NAME=PUB",
        help="A key whose signature your SuperNode accepts: its name and its .pub file.")],
) -> None:
    """Write your SuperNode's `--trusted-entities` file from the public keys you chose."""
    from simulations.deploy.appsign import (
        AppSigningError,
        load_public_line,
        trusted_entities_yaml,
    )

    entities: dict[str, str] = {}
    try:
        for item in entity:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise AppSigningError(f"--entity wants NAME=PUB, got {item!r}")
            entities[name] = load_public_line(Path(path))
        text = trusted_entities_yaml(entities)
    except AppSigningError as exc:
        raise _app_error(exc, "--entity") from None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise _app_error(f"cannot write {out}: {exc.strerror or exc}", "--out") from None
    Console().print(f"{out}: trusts {', '.join(entities)}", markup=False, highlight=False)


@app_app.command("sign")
def app_sign(
    fab: Annotated[Path, typer.Argument(help="The bundle you reviewed (.fab).")],
    key: Annotated[Path, typer.Option(help="Your app-signing private key.")],
    key_id: Annotated[str, typer.Option(help="The name your key signs under.")],
    out: Annotated[Path, typer.Option(help="The signature file to write (send it back).")],
) -> None:
    """Sign one exact bundle (its SHA-256). Sign only what you reviewed: your SuperNode will run
    whatever bundle carries your signature."""
    import json

    from simulations.deploy.appsign import AppSigningError, read_fab, sign_fab

    try:
        record = sign_fab(read_fab(fab), key, key_id)
    except AppSigningError as exc:
        raise _app_error(exc) from None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise _app_error(f"cannot write {out}: {exc.strerror or exc}", "--out") from None
    Console().print(f"{out}: {key_id} signed {record['app']} sha256 {record['fab_sha256']}",
                    markup=False, highlight=False, soft_wrap=True)


@app_app.command("serve")
def app_serve(
    fab: Annotated[Path, typer.Argument(help="The bundle the partners signed (.fab).")],
    signature: Annotated[list[str], typer.Option(
        "--signature", metavar="FILE", help="A partner's signature file; once per partner.")],
    port: Annotated[int, typer.Option(help="Loopback port; the SuperLink's "
                                           "FLWR_SUPERGRID_API_URL names it.")] = 8090,
    host: Annotated[str, typer.Option(help="Address to listen on (the SuperLink's host).")] = (
        "127.0.0.1"),
) -> None:
    """Serve the bundle and its signatures to this machine's SuperLink, in the form it reads
    from Flower Hub, until interrupted. Nothing here is trusted: each SuperNode checks the
    signatures against its own trusted-entities file."""
    from simulations.deploy.appsign import AppRegistry, AppSigningError, read_fab, read_signature

    try:
        bundle = read_fab(fab)
        registry = AppRegistry(bundle, [read_signature(Path(s)) for s in signature], host, port)
    except AppSigningError as exc:
        raise _app_error(exc) from None
    Console().print(f"serving {bundle.spec} (sha256 {bundle.sha256}) with "
                    f"{len(signature)} signature(s) at {registry.url}; run it with "
                    f"`flwr run {bundle.spec} ...`", markup=False, highlight=False,
                    soft_wrap=True)
    try:
        registry.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        registry.close()
