"""`fedcredit simulate` on one's own CSVs: resolve `--spec` or `--data/--partner-column/--schema`
into a checked `DataSpec` before anything trains, and the run config that carries it.

The simulated partners run in Ray workers, so the spec travels as a file: the run config key
`data-spec` names `<out>/data-spec.toml` (absolute paths), which the ClientApps, the ServerApp
and the baselines all read (`common.data.spec.load_run_partners`). A vertical spec
(`mode = "vertical"`: each party's own CSV, schema and customer-ID column) is checked here the
same way, its parties' tables loaded and aligned on their IDs, and runs as the vertical
simulation (`simulations.simulate.vertical`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import typer

from common.config import RunConfig, parse_budgets
from common.data.spec import DataSpec, load_any_spec, spec_from_options
from common.data.vertical_spec import VerticalSpec
from common.outputs import DATA_SPEC_FILE


def resolve_spec(scenario: str | None, *, data: list[str], partner_column: str,
                 schema: Path | None, spec: Path | None, split: str, alpha: float,
                 seed: int) -> DataSpec | VerticalSpec | None:
    """The run's data spec (None: a bundled scenario), every partner's rows loaded and split
    once to check them (a vertical spec: every party's table loaded, aligned on the customer IDs
    and split as the lender will); a bad spec raises typer.BadParameter naming the option and
    file."""
    if spec is None and not data:
        stray = [opt for opt, value in (("--partner-column", partner_column),
                                        ("--schema", schema)) if value]
        if stray:
            raise typer.BadParameter(f"{' and '.join(stray)} need --data (your own CSVs)",
                                     param_hint=stray[0])
        return None
    given = "--spec" if spec is not None else "--data"
    if scenario is not None:
        raise typer.BadParameter(f"--scenario picks bundled data and {given} your own; give one "
                                 f"of them", param_hint="--scenario")
    if spec is not None and (data or partner_column or schema):
        raise typer.BadParameter("the --spec file names the partners' CSVs and schema; give "
                                 "either --spec or --data/--schema", param_hint="--spec")
    if split != "natural" or alpha != 0.5:
        raise typer.BadParameter(f"--split and --alpha deal a bundled scenario's rows; with "
                                 f"{given} each partner holds its own rows", param_hint="--split")
    try:
        data_spec = (load_any_spec(spec) if spec is not None
                     else spec_from_options(data, str(schema or ""), partner_column))
        if isinstance(data_spec, VerticalSpec):
            from common.vertical.parties import load_vertical_scenario

            load_vertical_scenario(seed, test_fraction=RunConfig.test_fraction, spec=data_spec)
        else:
            data_spec.load_partners(seed=seed, test_fraction=RunConfig.test_fraction)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=given) from None
    return data_spec


def spec_run_config(spec: DataSpec, out: Path, budgets: str,
                    build: Callable[..., RunConfig], claim: Callable[[], None]) -> RunConfig:
    """Validate the run over `spec` with `build` (the CLI's options plus these keys), `claim`
    the output directory, and write the spec into it as the run's `data-spec`. The spec's own
    budgets come first, so `--budget` overrides them."""
    merged = ",".join(b for b in (spec.budgets_text(), budgets) if b)
    try:
        unknown = sorted(set(parse_budgets(budgets, 0.0)) - set(spec.partner_names))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--budget") from None
    if unknown:
        raise typer.BadParameter(f"names no partner of {spec.source or 'your data'}: {unknown}; "
                                 f"partners are {spec.partner_names}", param_hint="--budget")
    with tempfile.TemporaryDirectory(prefix="fedcredit-spec-") as folder:
        draft = Path(folder) / DATA_SPEC_FILE
        draft.write_text(spec.to_toml(), encoding="utf-8")
        run = build(data_spec=str(draft), schema_path=str(spec.schema.resolve()),
                    budgets=merged)
        claim()
    final = (out / DATA_SPEC_FILE).resolve()
    final.write_text(spec.to_toml(), encoding="utf-8")
    return replace(run, data_spec=str(final))
