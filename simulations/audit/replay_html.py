"""The replay part of audit.html: per partner, a "Replayed rounds" table of the signed replay
results given (`fedcredit audit report --replay`), each checked against the AUDITED ledger (its
`entry_sha256` must be the hash of the ledger's train entry at that round), with its outcome and
whether its signature verified. A result that does not verify, is a mismatch, or names an entry
the audited ledgers do not hold is a problem (the report exits 1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from common.privacy.audit import AuditResult
from common.privacy.audit.empirical_result import CheckedResult
from common.privacy.ledger import entry_hash, read_lines
from simulations.audit.empirical_html import signature_tag


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "n/a"


def replay_fields(document: dict[str, Any]) -> dict[str, Any]:
    """The fields of a replay result document, type-checked (the document is untrusted input)."""
    replay = document.get("replay")
    replay = replay if isinstance(replay, dict) else {}
    out = {name: _text(replay.get(name)) for name in (
        "ledger", "partner", "run_id", "entry_sha256", "failed_check", "message",
        "update_logged", "update_replayed")}
    number = replay.get("round")
    out["round"] = number if isinstance(number, int) and not isinstance(number, bool) else None
    for name in ("match", "receipt_matched"):
        value = replay.get(name)
        out[name] = value if isinstance(value, bool) else None
    out.update({name: _text(document.get(name)) for name in (
        "created_utc", "fedcredit_version", "signer")})
    return out


@dataclass(frozen=True)
class PlacedReplay:
    """A checked replay result placed against the audited ledgers: `ledger` is the audited
    ledger whose train entry at `fields["round"]` has the result's entry hash (`belongs`), else
    the ledger of the audited partner of the same name, else None."""

    item: CheckedResult
    fields: dict[str, Any]
    ledger: str | None
    belongs: bool

    @property
    def problem(self) -> bool:
        return not self.item.verified or not self.belongs or self.fields["match"] is not True


def _train_entry_hashes(ledger: str) -> dict[int, str]:
    """{round: entry hash} of the ledger's train entries (the last one of a round, as replayed)."""
    try:
        lines, _ = read_lines(Path(ledger))
    except OSError:
        return {}
    return {e["round"]: entry_hash(e) for _, e in lines
            if e.get("event") == "train" and isinstance(e.get("round"), int)}


def place_replays(result: AuditResult,
                  checked: Sequence[CheckedResult]) -> list[PlacedReplay]:
    """Each replay result beside the audited ledger entry it replays, if any."""
    if not checked:
        return []
    index = {(digest, server_round): p.ledger for p in result.partners
             for server_round, digest in _train_entry_hashes(p.ledger).items()}
    by_name = {}
    for p in result.partners:
        by_name.setdefault(p.partner, p.ledger)
    placed = []
    for item in checked:
        fields = replay_fields(item.document)
        ledger = index.get((fields["entry_sha256"], fields["round"]))
        placed.append(PlacedReplay(item, fields, ledger or by_name.get(fields["partner"]),
                                   ledger is not None))
    return placed


def _outcome(fields: dict[str, Any]) -> str:
    if fields["match"] is True:
        return '<span class="tag ok">match</span>'
    if fields["match"] is False:
        return f'<span class="tag bad">MISMATCH ({escape(fields["failed_check"])})</span>'
    return '<span class="tag bad">unreadable</span>'


def _receipt(fields: dict[str, Any]) -> str:
    return {True: "matched", False: '<span class="tag bad">mismatch</span>',
            None: "not checked"}[fields["receipt_matched"]]


def _rows(placed: Sequence[PlacedReplay]) -> str:
    rows = []
    for r in placed:
        f = r.fields
        entry = (f'<span class="tag ok">matches the ledger\'s entry at round {f["round"]}</span>'
                 if r.belongs else '<span class="tag bad">does not belong to this ledger</span>')
        cells = [escape(str(f["round"] if f["round"] is not None else "n/a")),
                 f'{entry} <span class="code" title="{escape(f["entry_sha256"])}">'
                 f'{escape(f["entry_sha256"][:16])}</span>',
                 _outcome(f) + f'<br><small>{escape(f["message"][:300])}</small>',
                 f'<span class="code" title="{escape(f["update_replayed"])}">'
                 f'{escape(f["update_replayed"][:16]) or "-"}</span> vs '
                 f'<span class="code" title="{escape(f["update_logged"])}">'
                 f'{escape(f["update_logged"][:16])}</span>',
                 _receipt(f), signature_tag(r.item),
                 f'{escape(f["created_utc"])}, fedcredit {escape(f["fedcredit_version"])}<br>'
                 f'<span class="path">{escape(r.item.path)}</span>']
        css = "bad" if r.problem else ""
        rows.append(f'<tr class="{css}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = ("round", "ledger entry", "replay", "update replayed vs logged", "receipt",
            "signature", "signed at / file")
    return ('<div class="scroll"><table><tr>' + "".join(f"<th>{h}</th>" for h in head)
            + f"</tr>{''.join(rows)}</table></div>")


def replay_partner_table(ledger: str, placed: Sequence[PlacedReplay]) -> str:
    """The "Replayed rounds" table of one audited ledger ('' when none was replayed)."""
    mine = sorted((r for r in placed if r.ledger == ledger),
                  key=lambda r: (r.fields["round"] is None, r.fields["round"] or 0))
    if not mine:
        return ""
    return (f"<h3>Replayed rounds</h3>{_rows(mine)}"
            '<p class="meta">Each row is a signed result of <span class="code">fedcredit audit '
            "replay</span>: the round re-run on the partner's premises from its opening with the "
            "mechanism this ledger logs. Its entry hash is checked here against this ledger's "
            "train entry at that round; a match shows that the update sent is what the logged "
            "mechanism produces from the committed rows and randomness.</p>")


def replay_orphans(placed: Sequence[PlacedReplay]) -> str:
    """Replay results naming no audited partner."""
    orphans = [r for r in placed if r.ledger is None]
    if not orphans:
        return ""
    return ('<h2>Replay results for no audited ledger</h2><div class="card">'
            f"{_rows(orphans)}</div>")


def replay_verdict(placed: Sequence[PlacedReplay]) -> str:
    if not placed:
        return ""
    unverified = sum(not r.item.verified for r in placed)
    foreign = sum(not r.belongs for r in placed)
    mismatches = sum(r.fields["match"] is not True for r in placed)
    scope = f"{len(placed)} replay result(s)"
    if not unverified and not foreign and not mismatches:
        return (f'<div class="verdict pass">REPLAYED ROUNDS: every replay matches<small>{scope}:'
                " every signature verifies, every result replays an entry of the audited "
                "ledgers and hashes to its logged update.</small></div>")
    problems = [f"{mismatches} MISMATCH (or unreadable)" if mismatches else "",
                f"{unverified} not verified (tampered, signed by another key, or no key)"
                if unverified else "",
                f"{foreign} not of the audited ledgers" if foreign else ""]
    summary = escape("; ".join(p for p in problems if p))
    return (f'<div class="verdict fail">REPLAYED ROUNDS: {summary}'
            f"<small>{scope}. See Replayed rounds under each partner.</small></div>")


def show_replays(placed: Sequence[PlacedReplay], console: Console) -> int:
    """One console line per replay result; returns how many are problems."""
    for r in placed:
        f = r.fields
        status = {"verified": "signature verifies", "invalid": "SIGNATURE DOES NOT VERIFY",
                  "unverified": "NOT VERIFIED"}[r.item.status]
        outcome = ("match" if f["match"] is True else
                   f"MISMATCH [{f['failed_check']}]" if f["match"] is False else "unreadable")
        where = ("" if r.belongs else "; DOES NOT BELONG to the audited ledgers")
        console.print(Text(f"replay {r.item.path} ({f['partner']} round {f['round']}): {status} "
                           f"({r.item.detail}); {outcome}{where}",
                           style="bold red" if r.problem else "green"), soft_wrap=True)
    return sum(r.problem for r in placed)
