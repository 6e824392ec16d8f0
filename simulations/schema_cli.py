"""`fedcredit schema check`: a partner validates its CSV against its schema before joining.

Exit status: 0 when the schema and every row are valid (and, with `--against`, the encoded
feature layout is identical to the run's); 2 otherwise, with the file and the line, column or key
named, and no traceback. Nothing leaves the machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

schema_app = typer.Typer(no_args_is_help=True, add_completion=False,
                         help="Partner data: check a CSV against its schema before joining.")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


@schema_app.command("check")
def check(
    data: Annotated[Path, typer.Argument(help="The partner's CSV file.", show_default=False)],
    schema: Annotated[Path, typer.Argument(help="Its schema TOML.", show_default=False)],
    against: Annotated[Path | None, typer.Option(
        help="The run's schema (from the coordinator): the encoded feature layouts must be "
             "identical.")] = None,
) -> None:
    """Validate SCHEMA and every row of DATA against it; print what the partner would train on
    and its encoded feature layout's hash (compare it with the coordinator's)."""
    from common.data.schema import encode_table, load_schema, read_csv
    from common.errors import FedcreditError

    try:
        spec = load_schema(schema)
        table = read_csv(data)
        features, labels = encode_table(table, spec)
        run = None if against is None else load_schema(against)
    except FedcreditError as exc:
        raise _fail(str(exc)) from None
    used = {spec.label, *(c.name for c in spec.columns)}
    ignored = [h for h in table.header if h not in used]
    layout = spec.layout()
    typer.echo(f"data:     {data}\nschema:   {schema} ({spec.name!r})\n"
               f"rows:     {len(labels)}\n"
               f"columns:  {len(used)} used of {len(table.header)}"
               + (f" (ignored: {', '.join(ignored)})" if ignored else "") + "\n"
               f"bad rate: {labels.mean():.2%} ({spec.label!r} = {spec.bad_value!r})\n"
               f"features: {features.shape[1]} encoded\n"
               f"layout:   sha256 {layout.sha256}")
    if run is None:
        return
    differences = layout.differences(run.layout())
    if differences:
        raise _fail(f"the encoded feature layout of {schema} differs from the run's schema "
                    f"{against} (this vs the run's):\n  " + "\n  ".join(differences))
    typer.echo(f"layout identical to the run's schema {against}")
