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
    id_column: Annotated[str | None, typer.Option(
        help="Vertical mode: the party's customer-ID column (every row one ID, none twice); "
             "a passive party's schema then declares no label.")] = None,
) -> None:
    """Validate SCHEMA and every row of DATA against it; print what the partner would train on
    and its encoded feature layout's hash (compare it with the coordinator's)."""
    from common.data.csv_table import read_csv
    from common.data.schema import encode_features, encode_table, load_schema
    from common.errors import FedcreditError
    from common.vertical.parties import party_ids

    try:
        spec = load_schema(schema)
        table = read_csv(data)
        if spec.has_label:
            features, labels = encode_table(table, spec)
        elif id_column is None:
            raise _fail(f"{schema}: schema {spec.name!r} declares no label: it describes a "
                        f"vertical passive party's table; pass that party's --id-column")
        else:
            features, labels = encode_features(table, spec), None
        ids = None if id_column is None else party_ids(table, id_column,
                                                       missing=spec.missing_values)
        if id_column is not None and id_column in {spec.label, *(c.name for c in spec.columns)}:
            raise _fail(f"{schema}: the customer-ID column {id_column!r} is also declared in "
                        f"schema {spec.name!r}; leave it out of the schema (it is no feature)")
        run = None if against is None else load_schema(against)
    except FedcreditError as exc:
        raise _fail(str(exc)) from None
    used = {spec.label, *(c.name for c in spec.columns), id_column} - {"", None}
    ignored = [h for h in table.header if h not in used]
    layout = spec.layout()
    outcome = (f"bad rate: {labels.mean():.2%} ({spec.label!r} = {spec.bad_value!r})"
               if labels is not None else "label:    none (a vertical passive party's table)")
    typer.echo(f"data:     {data}\nschema:   {schema} ({spec.name!r})\n"
               f"rows:     {len(table.rows)}\n"
               + (f"ids:      {len(ids)} distinct in {id_column!r}\n" if ids is not None else "")
               + f"columns:  {len(used)} used of {len(table.header)}"
               + (f" (ignored: {', '.join(ignored)})" if ignored else "") + "\n"
               f"{outcome}\n"
               f"features: {features.shape[1]} encoded\n"
               f"layout:   sha256 {layout.sha256}")
    if run is None:
        return
    differences = layout.differences(run.layout())
    if differences:
        raise _fail(f"the encoded feature layout of {schema} differs from the run's schema "
                    f"{against} (this vs the run's):\n  " + "\n  ".join(differences))
    typer.echo(f"layout identical to the run's schema {against}")


@schema_app.command("draft")
def draft(
    data: Annotated[Path, typer.Argument(help="The CSV to draft a schema for.",
                                         show_default=False)],
    label: Annotated[str, typer.Option(help="The outcome column (0/1 target).",
                                       show_default=False)],
    bad_value: Annotated[str | None, typer.Option(
        help="The label value that means 'bad' (default: the rarer one).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Write the draft here (refuses an existing file); default: print it.")] = None,
    name: Annotated[str, typer.Option(help="The data set's name in the schema.")] = "my_data",
) -> None:
    """Draft a schema for DATA to review: column types and missing-value handling decided,
    every bound and category read from the data marked LEARNED (replace them before deploying:
    a schema is shared, and values learned from private rows leak them)."""
    from common.data.csv_table import read_csv
    from common.data.draft import draft_schema
    from common.data.schema import encode_table, load_schema
    from common.errors import FedcreditError

    if out is not None and out.exists():
        raise _fail(f"--out {out} exists; refusing to overwrite it (choose another path)")
    try:
        table = read_csv(data)
        drafted = draft_schema(table, label=label, bad_value=bad_value, name=name)
    except FedcreditError as exc:
        raise _fail(str(exc)) from None
    if out is None:
        typer.echo(drafted.toml, nl=False)
    else:
        try:
            out.write_text(drafted.toml, encoding="utf-8")
        except OSError as exc:
            raise _fail(f"cannot write --out {out}: {exc.strerror or exc}") from None
        try:  # the draft must describe the file it came from
            encode_table(table, load_schema(out))
        except FedcreditError as exc:
            raise _fail(f"the draft written to {out} does not fit {data} (please report this "
                        f"as a bug): {exc}") from None
        typer.echo(f"draft schema written to {out}")
    typer.echo(f"WARNING: {len(drafted.learned)} value(s) were learned from the data and are "
               f"marked LEARNED in the draft; replace each before deploying:\n  "
               + "\n  ".join(drafted.learned), err=True)
