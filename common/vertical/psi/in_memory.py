"""Drive the PSI's parties in one process, every message crossing as a record."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.errors import PsiError
from common.vertical.psi.ids import new_run_id
from common.vertical.psi.messages import PsiMessage, message_from_record, message_to_record
from common.vertical.psi.parties import LenderParty, PassiveParty


@dataclass
class PsiRun:
    """Outcome of `run_psi_in_memory`: each party's rows in aligned order, the lender's view of
    the intersection, every record sent (in order), and wall time per step in seconds."""

    run_id: str
    aligned_rows: dict[str, list[int]]
    intersection: list[str]
    transcript: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def run_psi_in_memory(ids_by_party: Mapping[str, Sequence[str]], *, lender: str = "lender",
                      run_id: str | None = None) -> PsiRun:
    """Run the PSI among `ids_by_party` (the lender and its partners) in this process.

    Every message crosses as a record (`message_to_record` -> `message_from_record`), as it
    would through Flower, and the records are kept in the transcript.
    """
    if lender not in ids_by_party:
        raise PsiError(f"lender {lender!r} is not among the parties {list(ids_by_party)}")
    run_id = new_run_id() if run_id is None else run_id
    partners = [name for name in ids_by_party if name != lender]
    timings: dict[str, float] = {}
    transcript: list[dict[str, Any]] = []

    def timed(label: str, step: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = step()
        timings[label] = time.perf_counter() - start
        return result

    def send(message: PsiMessage) -> PsiMessage:
        record = message_to_record(message)
        transcript.append(record)
        return message_from_record(record)

    the_lender = LenderParty(lender, ids_by_party[lender], run_id=run_id, partners=partners)
    passives = {name: PassiveParty(name, ids_by_party[name], run_id=run_id, lender=lender)
                for name in partners}
    timed(f"{lender}.hash", the_lender.prepare)
    for name, party in passives.items():
        timed(f"{name}.hash", party.prepare)
    for name, party in passives.items():
        opening = timed(f"{lender}.open[{name}]", lambda n=name: the_lender.open_session(n))
        received = send(opening)
        reply = timed(f"{name}.respond", lambda p=party, m=received: p.respond(m))
        answered = send(reply)
        timed(f"{lender}.receive[{name}]", lambda m=answered: the_lender.receive(m))
    alignments = timed(f"{lender}.finish", the_lender.finish)
    for alignment in alignments:
        message = send(alignment)
        timed(f"{alignment.recipient}.align", lambda m=message: passives[m.recipient].align(m))
    aligned = {lender: the_lender.aligned_rows or []}
    aligned.update({name: party.aligned_rows or [] for name, party in passives.items()})
    return PsiRun(run_id=run_id, aligned_rows=aligned, intersection=the_lender.intersection or [],
                  transcript=transcript, timings=timings)
