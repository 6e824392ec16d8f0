"""`fedcredit audit`: verify partners' privacy ledgers, the coordinator's receipts and partners'
lifetime privacy odometers; run an empirical privacy audit and sign its result.

Exit status: 0 when everything verifies, 1 when there are findings (for `report`, also an
--empirical result whose signature does not verify or that is a finding, and a --replay result
that does not verify, is a mismatch or is not of an audited ledger), 2 for usage errors (a
missing ledger, receipts file or keys directory, no usable public key, an unreadable result).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from common.errors import AuditInputError
from common.outputs import format_number

if TYPE_CHECKING:  # the audit (dp_accounting, scipy) loads when a command runs, not for --help
    from common.privacy.audit import AuditResult

audit_app = typer.Typer(no_args_is_help=True, add_completion=False,
                        help="Auditor's tools: verify signed privacy ledgers and receipts, "
                             "recompute epsilon independently, write an HTML report.")

LedgersArg = Annotated[list[Path], typer.Argument(
    exists=True, dir_okay=False, readable=True, show_default=False,
    help="Partner ledger files (JSON Lines), one per partner.")]
KeysOpt = Annotated[Path, typer.Option(
    "--keys", exists=True, file_okay=False, show_default=False,
    help="Directory of public keys: <partner>.pub for each partner, coordinator.pub.")]
ReceiptsOpt = Annotated[Path | None, typer.Option(
    "--receipts", exists=True, dir_okay=False, readable=True,
    help="The coordinator's receipts log (ties ledger entries to accepted updates).")]
OdometerOpt = Annotated[list[Path] | None, typer.Option(
    "--odometer", exists=True, dir_okay=False, readable=True, show_default=False,
    help="A partner's lifetime privacy odometer (repeat the option, one per partner and data "
         "set): verified, its lifetime epsilon recomputed, and every release in the given "
         "ledgers must be reserved in it.")]


def _run(ledgers: list[Path], keys: Path, receipts: Path | None,
         odometers: list[Path] | None = None) -> AuditResult:
    """verify(), with input problems turned into exit status 2."""
    from common.privacy.audit import verify

    try:
        return verify(ledgers, keys, receipts, odometer_paths=odometers or [])
    except AuditInputError as exc:
        Console(stderr=True).print(Text(f"error: {exc}", style="red"))
        raise typer.Exit(code=2) from exc


def _usage_error(message: str) -> NoReturn:
    """Print `message` (no traceback) and exit with status 2."""
    Console(stderr=True).print(Text(f"error: {message}", style="red"), soft_wrap=True)
    raise typer.Exit(code=2)


def show_result(result: AuditResult, console: Console) -> None:
    """Per-partner table (budget vs claimed vs recomputed), every finding, then the verdict."""
    from common.privacy.audit import EPSILON_TOLERANCE

    table = Table(title=f"privacy ledgers of run {result.run_id} (epsilon: budget, claimed, "
                        f"recomputed)", box=box.SIMPLE_HEAD, padding=(0, 1),
                  collapse_padding=True, show_edge=False)
    for column in ("partner", "rounds", "refused", "budget", "delta", "accountant", "claimed",
                   "independent", "tolerance", "RDP", "PLD", "findings"):
        table.add_column(column, justify="left" if column == "partner" else "right",
                         no_wrap=True)
    per_ledger = {p.ledger: 0 for p in result.partners}
    for finding in result.findings:
        if finding.path in per_ledger:
            per_ledger[finding.path] += 1
    for p in result.partners:
        n = per_ledger[p.ledger]
        table.add_row(Text(p.partner), str(p.rounds_trained), str(p.refusals),
                      format_number(p.epsilon_budget, 6, style="g"),
                      format_number(p.delta, 6, style="g"), Text(p.accountant),
                      format_number(p.epsilon_claimed), format_number(p.epsilon_independent),
                      format_number(p.epsilon_tolerance, 3, style="g"),
                      format_number(p.epsilon_rdp), format_number(p.epsilon_pld),
                      Text(str(n), style="red" if n else "green"))
    console.print(table)
    console.print(Text(f"recomputed with {result.accountant['rdp']} and {result.accountant['pld']}"
                       f" ({result.accountant['library']}); {result.accountant['tight']}; "
                       f"receipts: {result.receipts or 'none given'}", style="dim"),
                  soft_wrap=True)
    if result.odometers:
        show_odometers(result, console)
    for finding in result.findings:
        console.print(Text(str(finding), style="red"), soft_wrap=True)
    entries = sum(len(p.entries) for p in result.partners)
    if result.ok:
        receipts = (f", {result.receipts_checked} receipts match one to one"
                    if result.receipts else ", no receipts given")
        if result.odometers:
            receipts += (f"; {len(result.odometers)} odometer(s) verify, within their lifetime "
                         f"budgets, and reserve every release of the ledgers they cover")
        console.print(Text(f"OK: {len(result.partners)} ledgers, {entries} entries verify{receipts}"
                           f"; every claimed epsilon at least its independent recomputation "
                           f"less the tolerance (prv: PLD's discretisation; rdp: "
                           f"{EPSILON_TOLERANCE:.0%} of RDP), within budget",
                           style="bold green"),
                      soft_wrap=True)
    else:
        console.print(Text(f"FAILED: {len(result.findings)} findings", style="bold red"),
                      soft_wrap=True)


def show_odometers(result: AuditResult, console: Console) -> None:
    """Per-odometer table (lifetime budget vs claimed vs recomputed, ledgers it covers)."""
    table = Table(title="lifetime privacy odometers (epsilon over every run of the data set)",
                  box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True, show_edge=False)
    for column in ("partner", "data set", "runs", "releases", "lifetime budget", "delta",
                   "claimed", "RDP", "PLD", "ledgers covered", "findings"):
        table.add_column(column, justify="left" if column in ("partner", "data set") else "right",
                         no_wrap=True)
    for o in result.odometers:
        n = sum(f.path == o.path for f in result.findings)
        table.add_row(Text(str(o.partner)), Text(str(o.dataset_sha256 or "n/a")[:12]),
                      str(len(o.runs)), str(len(o.entries)),
                      format_number(o.epsilon_lifetime_budget, 6, style="g"),
                      format_number(o.delta, 6, style="g"), format_number(o.epsilon_claimed),
                      format_number(o.epsilon_rdp), format_number(o.epsilon_pld),
                      str(len(o.ledgers_checked)), Text(str(n), style="red" if n else "green"))
    console.print(table)
    covered = {ledger for o in result.odometers for ledger in o.ledgers_checked}
    uncovered = [p.partner for p in result.partners if p.ledger not in covered]
    if uncovered:
        console.print(Text(f"no odometer given for: {', '.join(uncovered)} (their ledgers are "
                           f"not checked against a lifetime budget)", style="yellow"),
                      soft_wrap=True)


@audit_app.command("verify")
def verify_command(
    ledgers: LedgersArg,
    keys: KeysOpt,
    receipts: ReceiptsOpt = None,
    odometers: OdometerOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Verify ledgers (and receipts, odometers): signatures, chains, order, recomputed epsilon,
    budgets."""
    result = _run(ledgers, keys, receipts, odometers)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2, allow_nan=False))
    else:
        show_result(result, Console())
    raise typer.Exit(code=0 if result.ok else 1)


@audit_app.command("report")
def report_command(
    ledgers: LedgersArg,
    keys: KeysOpt,
    out: Annotated[Path, typer.Option("--out", dir_okay=False, show_default=False,
                                      help="HTML report to write.")],
    receipts: ReceiptsOpt = None,
    odometers: OdometerOpt = None,
    empirical: Annotated[list[Path] | None, typer.Option(
        "--empirical", exists=True, dir_okay=False, readable=True, show_default=False,
        help="A signed result of `fedcredit audit empirical --out` (repeat the option, e.g. one "
             "per partner): shown beside the ledgers with its signature status.")] = None,
    empirical_key: Annotated[Path | None, typer.Option(
        "--empirical-key", exists=True, dir_okay=False, readable=True, show_default=False,
        help="Public key of whoever ran the empirical audits (default: the key in --keys whose "
             "fingerprint a result names).")] = None,
    replay: Annotated[list[Path] | None, typer.Option(
        "--replay", exists=True, dir_okay=False, readable=True, show_default=False,
        help="A signed result of `fedcredit audit replay --out` (repeat the option, one per "
             "replayed round): shown under its partner, checked against the audited ledger.")
    ] = None,
    replay_key: Annotated[Path | None, typer.Option(
        "--replay-key", exists=True, dir_okay=False, readable=True, show_default=False,
        help="Public key of whoever ran the replays (default: the key in --keys whose "
             "fingerprint a result names).")] = None,
) -> None:
    """Verify, then write a self-contained HTML report an auditor can read. Exit 1 also when an
    --empirical result does not verify or is a finding, or a --replay result does not verify, is
    a mismatch or does not belong to an audited ledger."""
    from common.privacy.audit.empirical_result import EMPIRICAL
    from common.privacy.audit.replay import replay_kind
    from simulations.audit.html import render_audit_html
    from simulations.audit.replay_html import place_replays, show_replays

    if out.parent.exists() and not out.parent.is_dir():
        _usage_error(f"--out {out}: {out.parent} is a file, not a directory")
    checked = _check_signed(empirical or [], empirical_key, keys, EMPIRICAL, "--empirical-key")
    replays = _check_signed(replay or [], replay_key, keys, replay_kind(), "--replay-key")
    result = _run(ledgers, keys, receipts, odometers)
    placed = place_replays(result, replays)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_audit_html(result, empirical=checked, replays=placed),
                       encoding="utf-8")
    except OSError as exc:
        _usage_error(f"--out {out}: cannot write the report ({exc.filename or out}: "
                     f"{exc.strerror or exc})")
    console = Console()
    show_result(result, console)
    problems = show_empirical(checked, console) + show_replays(placed, console)
    console.print(Text(f"report: {out}"), soft_wrap=True)
    raise typer.Exit(code=0 if result.ok and not problems else 1)


def _check_signed(paths: list[Path], key_path: Path | None, keys_dir: Path, spec,
                  key_option: str) -> list:
    """Each signed result of kind `spec` (--empirical, --replay) with its signature status, under
    the key at `key_path` (`key_option`) or the one in --keys its signer names; unreadable inputs
    exit 2."""
    from common.errors import CryptoError
    from common.privacy.audit.empirical_result import check_result
    from common.privacy.crypto import load_public_key, load_public_keys

    if not paths:
        return []
    key = None
    known = {}
    try:
        if key_path is not None:
            key = load_public_key(key_path)
        else:
            known = load_public_keys(keys_dir)
    except CryptoError as exc:
        _usage_error(f"{key_option}: {exc}" if key_path else f"--keys: {exc}")
    try:
        return [check_result(path, key=key, key_name=key_path.name if key_path else None,
                             known_keys=known, spec=spec) for path in paths]
    except AuditInputError as exc:
        _usage_error(str(exc))


def show_empirical(checked: list, console: Console) -> int:
    """One line per empirical result (signature status, bound vs accounted epsilon); returns
    how many are problems (not verified, or a finding)."""
    from simulations.audit.empirical_html import empirical_fields

    problems = 0
    for item in checked:
        fields = empirical_fields(item.document)
        finding = fields["finding"] is not False
        problems += (not item.verified) or finding
        status = {"verified": "signature verifies", "invalid": "SIGNATURE DOES NOT VERIFY",
                  "unverified": "NOT VERIFIED"}[item.status]
        console.print(Text(
            f"empirical audit {item.path} ({fields['partner']}): {status} ({item.detail}); "
            f"lower bound {format_number(fields['epsilon_lower_bound'], 2)} vs accounted "
            f"{format_number(fields['epsilon_accounted'], 3)}"
            f"{'; FINDING' if fields['finding'] else ''}",
            style="green" if item.verified and not finding else "bold red"), soft_wrap=True)
    return problems


def _result_signer(out: Path | None, signing_key: Path | None):
    """The private key that signs a written result (`--out` with `--signing-key`), or None when
    nothing is written; exit 2 when only one is given, `--out` is no file path, or the key is
    unreadable."""
    from common.errors import CryptoError
    from common.privacy.crypto import load_private_key

    if (out is None) != (signing_key is None):
        _usage_error("--out and --signing-key go together: a written result is always signed")
    if out is None or signing_key is None:
        return None
    if out.is_dir() or (out.parent.exists() and not out.parent.is_dir()):
        _usage_error(f"--out {out}: not a file path in a directory")
    try:
        return load_private_key(signing_key)
    except CryptoError as exc:
        _usage_error(f"--signing-key: {exc}")


@audit_app.command("empirical")
def empirical_command(
    scenario: Annotated[str, typer.Option(
        "--scenario", help="Bundled horizontal scenario: credit_data or lending_club.")
    ] = "credit_data",
    partner: Annotated[str, typer.Option(
        "--partner", help="The partner whose training rows and mechanism are audited.")] = "bank",
    epsilon: Annotated[float, typer.Option(
        "--epsilon", help="The partner's budget epsilon (its plan is calibrated to it).")] = 3.0,
    delta: Annotated[float, typer.Option("--delta", help="The partner's budget delta.")] = 1e-5,
    canaries: Annotated[int, typer.Option(
        "--canaries", help="Canary records, each included with probability 1/2.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of inclusion, model and run.")] = 0,
    rounds: Annotated[int, typer.Option(
        "--rounds", help="Server rounds of the audited run (the partner's planned rounds).")] = 20,
    local_epochs: Annotated[float, typer.Option(
        "--local-epochs", help="Local epochs per round of the audited run.")] = 3.0,
    broken: Annotated[str, typer.Option(
        "--broken", help="TEST/DEMONSTRATION ONLY: run a broken DP-SGD while accounting the "
                         "claimed one: none, no-noise, noise-div-10.")] = "none",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", dir_okay=False, show_default=False,
        help="Write the result, signed with --signing-key, to this JSON file (for `audit "
             "report --empirical`).")] = None,
    signing_key: Annotated[Path | None, typer.Option(
        "--signing-key", dir_okay=False, show_default=False,
        help="The auditor's Ed25519 private key (`fedcredit keys new`) that signs --out.")] = None,
) -> None:
    """One-run canary audit (Steinke, Nasr, Jagielski 2023): an empirical lower bound on epsilon
    at 95% confidence, next to the accounted epsilon, and a loss-threshold membership-inference
    figure against the DP ceiling. Exit 1 when the bound exceeds the accounted epsilon."""
    from common.config import RunConfig
    from common.data.scenarios import SCENARIOS
    from common.privacy.audit.empirical import (
        DEFAULT_BETA,
        MECHANISM_OVERRIDES,
        audit_partner,
        reading,
    )
    from common.privacy.audit.empirical_result import sign_result, write_result

    if scenario not in SCENARIOS:
        _usage_error(f"--scenario {scenario!r}: choose from {sorted(SCENARIOS)}")
    if partner not in SCENARIOS[scenario].partners:
        _usage_error(f"--partner {partner!r}: scenario {scenario} has partners "
                     f"{', '.join(SCENARIOS[scenario].partners)}")
    if broken not in MECHANISM_OVERRIDES:
        _usage_error(f"--broken {broken!r}: choose from {', '.join(MECHANISM_OVERRIDES)}")
    if not 2 <= canaries <= 100_000:
        _usage_error(f"--canaries {canaries}: must be between 2 and 100000")
    if not 1 <= rounds <= 100_000:
        _usage_error(f"--rounds {rounds}: must be between 1 and 100000")
    if not (0 < local_epochs <= 10_000):
        _usage_error(f"--local-epochs {local_epochs}: must be in (0, 10000]")
    key = _result_signer(out, signing_key)
    run = RunConfig(scenario=scenario, seed=seed, num_server_rounds=rounds,
                    local_epochs=local_epochs)
    try:
        result = audit_partner(scenario, partner, epsilon=epsilon, delta=delta,
                               canaries=canaries, seed=seed, mechanism_override=broken, run=run)
    except ValueError as exc:
        _usage_error(str(exc))
    if out is not None and key is not None:
        parameters = {
            "command": "fedcredit audit empirical", "scenario": scenario, "partner": partner,
            "epsilon": epsilon, "delta": delta, "canaries": canaries, "seed": seed,
            "beta": DEFAULT_BETA, "broken": broken,
            "run": {name: getattr(run, name) for name in (
                "num_server_rounds", "local_epochs", "batch_size", "learning_rate",
                "lr_schedule", "optimizer", "clip_norm", "hidden_layers", "split",
                "test_fraction", "dirichlet_alpha")}}
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            write_result(out, sign_result(result, key, parameters))
        except OSError as exc:
            _usage_error(f"--out {out}: cannot write the result ({exc.filename or out}: "
                         f"{exc.strerror or exc})")
    if as_json:
        typer.echo(json.dumps({**result.to_dict(), "reading": reading(result)}, indent=2,
                              allow_nan=False))
    else:
        console = Console()
        if broken != "none":
            console.print(Text(f"DEMONSTRATION: DP-SGD ran with sigma="
                               f"{result.noise_multiplier_used:.4g} ({broken}) while sigma="
                               f"{result.noise_multiplier_claimed:.4g} is accounted",
                               style="yellow"), soft_wrap=True)
        console.print(Text(
            f"{scenario}/{partner}: accounted epsilon {result.epsilon_accounted:.3f} "
            f"(delta={result.delta:g}, budget {result.epsilon_budget:g}); empirical lower bound "
            f"{result.epsilon_lower_bound:.2f} at {result.confidence:.0%} confidence "
            f"({result.correct}/{result.guesses} guesses right at k={result.k}, "
            f"{result.canaries} canaries, {result.canaries_included} included, "
            f"{result.steps} DP-SGD steps)"), soft_wrap=True)
        mia = result.membership
        if mia is not None:
            figures = "; ".join(f"TPR {p.tpr:.2%} at FPR {p.fpr:.1%} (DP ceiling {p.ceiling:.2%}"
                                f"{', ABOVE' if p.above_ceiling else ''})" for p in mia.points)
            console.print(Text(
                f"membership inference ({mia.attack}, {mia.members} training rows vs "
                f"{mia.non_members} test rows): AUC {mia.auc:.3f}; {figures}"), soft_wrap=True)
        console.print(Text(reading(result), style="bold red" if result.finding else "green"),
                      soft_wrap=True)
        if out is not None:
            console.print(Text(f"signed result: {out}"), soft_wrap=True)
    raise typer.Exit(code=1 if result.finding else 0)


@audit_app.command("replay")
def replay_command(
    ledger: Annotated[Path, typer.Argument(
        dir_okay=False, show_default=False, help="The partner's ledger (JSON Lines).")],
    server_round: Annotated[int, typer.Option(
        "--round", show_default=False, help="The round to replay (a train entry).")],
    data: Annotated[Path, typer.Option(
        "--data", dir_okay=False, show_default=False, help="The partner's data CSV.")],
    schema: Annotated[Path, typer.Option(
        "--schema", dir_okay=False, show_default=False, help="The partner's schema TOML.")],
    opening: Annotated[Path, typer.Option(
        "--opening", dir_okay=False, show_default=False,
        help="The partner's openings file (<ledger>.openings, kept on its premises).")],
    keys: Annotated[Path | None, typer.Option(
        "--keys", file_okay=False, show_default=False,
        help="Directory of public keys: verify the ledger's signatures and chain first.")] = None,
    global_model: Annotated[Path | None, typer.Option(
        "--global-model", dir_okay=False, show_default=False,
        help="The global model the round started from (.npz; default: the partner's copy in "
             "<ledger>.replay/).")] = None,
    signing_key: Annotated[Path | None, typer.Option(
        "--signing-key", dir_okay=False, show_default=False,
        help="Ed25519 private key of whoever runs the replay; signs --out (the two go "
             "together).")] = None,
    receipts: Annotated[Path | None, typer.Option(
        "--receipts", dir_okay=False, show_default=False,
        help="The coordinator's receipts: the replayed update must be the one it accepted.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", dir_okay=False, show_default=False,
        help="Write the outcome, signed with --signing-key, to this JSON file (for `audit "
             "report --replay`).")] = None,
    split_key: Annotated[Path | None, typer.Option(
        "--split-key", dir_okay=False, show_default=False,
        help="The partner's private key, when its train/test split derives from it (a "
             "deployed partner's does; the replay runs on its premises).")] = None,
) -> None:
    """Re-run one round from its opening with the ledger's logged mechanism and check the update
    hashes to the ledger's update_sent_sha256. Exit 0 match, 1 mismatch, 2 bad input."""
    from common.privacy.audit.empirical_result import write_result
    from common.privacy.audit.replay import (
        find_opening,
        ledger_round,
        load_replay_rows,
        replay_round,
        sign_replay,
    )

    key = _result_signer(out, signing_key)
    try:
        entry, _ = ledger_round(ledger, server_round, None)
        found = find_opening(opening, str(entry["run_id"]), server_round,
                             str(entry["replay_commitment"]))
        rows = load_replay_rows(data, schema, found, split_key)
        result = replay_round(ledger, server_round, rows, opening, keys_dir=keys,
                              global_model=global_model, receipts_path=receipts)
    except AuditInputError as exc:
        _usage_error(str(exc))
    if out is not None and key is not None:
        parameters = {"command": "fedcredit audit replay", "round": server_round,
                      **{name: None if path is None else str(path) for name, path in (
                          ("ledger", ledger), ("data", data), ("schema", schema),
                          ("opening", opening), ("keys", keys), ("global_model", global_model),
                          ("receipts", receipts))}}
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            write_result(out, sign_replay(result, key, parameters))
        except OSError as exc:
            _usage_error(f"--out {out}: cannot write the result ({exc.filename or out}: "
                         f"{exc.strerror or exc})")
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2, allow_nan=False))
    else:
        checked = "signatures checked" if result.signatures_checked else "signatures NOT checked"
        console = Console()
        console.print(Text(f"{result.partner} round {result.round} ({checked}): "
                           f"{'MATCH' if result.ok else 'MISMATCH [' + result.reason + ']'}: "
                           f"{result.message}",
                           style="green" if result.ok else "bold red"), soft_wrap=True)
        if out is not None:
            console.print(Text(f"signed result: {out}"), soft_wrap=True)
    raise typer.Exit(code=0 if result.ok else 1)
