"""Build small, honest federations of signed ledgers + receipts, and tamper with them."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.privacy.accounting import SubsampledGaussianEvent, composed_epsilon
from common.privacy.budget import PrivacyPlan, calibrate_plan
from common.privacy.crypto import fingerprint, generate_signing_key, sha256_hex, write_key_pair
from common.privacy.ledger import (
    GENESIS,
    PartnerLedger,
    ReceiptLog,
    canonical_bytes,
    entry_hash,
    sign_entry,
)

DELTA = 1e-5
BATCH = 64
# name -> (training rows, epsilon budget, local epochs): q = 64/rows in 0.04..0.08.
PARTNERS: dict[str, tuple[int, float, float]] = {
    "bank": (1600, 1.0, 1.0),
    "lender": (1000, 0.8, 1.0),
    "ecommerce": (800, 0.6, 1.0),
}
PLANNED_ROUNDS = 3


@dataclass
class Federation:
    """Where a built federation lies, and the private keys to forge with."""

    root: Path
    run_id: str
    keys_dir: Path
    ledgers: dict[str, Path]
    receipts: Path
    keys: dict[str, Ed25519PrivateKey]
    plans: dict[str, PrivacyPlan]
    entries: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def ledger_paths(self) -> list[Path]:
        """Every ledger, in partner order."""
        return list(self.ledgers.values())

    def copy_to(self, root: Path) -> Federation:
        """The same federation's files in another directory (to tamper with freely)."""
        shutil.copytree(self.root, root)
        return Federation(root, self.run_id, root / "keys",
                          {p: root / path.name for p, path in self.ledgers.items()},
                          root / self.receipts.name, self.keys, self.plans, self.entries)


def make_keys() -> dict[str, Ed25519PrivateKey]:
    """Fresh signing keys of every partner and of the coordinator."""
    return {name: generate_signing_key() for name in [*PARTNERS, "coordinator"]}


def make_plans() -> dict[str, PrivacyPlan]:
    """Each partner's calibrated plan (σ from its budget over the planned rounds)."""
    return {name: calibrate_plan(epsilon=budget, delta=DELTA, num_train_rows=rows,
                                 batch_size=BATCH, local_epochs=epochs,
                                 planned_rounds=PLANNED_ROUNDS, max_grad_norm=1.0, seed=index)
            for index, (name, (rows, budget, epochs)) in enumerate(PARTNERS.items())}


def build_federation(root: Path, *, keys: dict[str, Ed25519PrivateKey],
                     plans: dict[str, PrivacyPlan], run_id: str = "run-A",
                     rounds: dict[str, int] | None = None,
                     claim_scale: dict[str, float] | None = None,
                     skip_receipts: frozenset[tuple[str, int]] = frozenset(),
                     refuse_after_budget: bool = True) -> Federation:
    """Write keys/, <partner>.jsonl ledgers and receipts.jsonl as honest partners would.

    Each partner logs its noisy count (before round 1), then trains `rounds[partner]` rounds
    (default: the planned 3, then one more it refuses because it would exceed the budget),
    claiming the honest ε (the partners' accountant) times `claim_scale[partner]`. The
    coordinator receipts every trained round except `skip_receipts`.
    With `refuse_after_budget=False` a partner trains past its budget instead of refusing.
    """
    rounds = rounds or {}
    claim_scale = claim_scale or {}
    keys_dir, secrets = root / "keys", root / "secrets"
    for name, key in keys.items():
        write_key_pair(key, secrets, name)
        keys_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(secrets / f"{name}.pub", keys_dir / f"{name}.pub")
    receipts = ReceiptLog(root / "receipts.jsonl", keys["coordinator"], run_id)
    ledgers = {name: PartnerLedger(root / f"{name}.jsonl", keys[name], name, run_id)
               for name in PARTNERS}
    events: dict[str, list[SubsampledGaussianEvent]] = {name: [] for name in PARTNERS}
    for name, ledger in ledgers.items():
        plan = plans[name]
        events[name].append(plan.count_event)
        ledger.append_count(server_round=1, plan=plan, model_received_sha256=sha256_hex(
            f"{run_id}/global/1".encode()), epsilon_cumulative=composed_epsilon(
            events[name], delta=DELTA) * claim_scale.get(name, 1.0))
    total_rounds = max([PLANNED_ROUNDS + 1, *rounds.values()])
    for server_round in range(1, total_rounds + 1):
        model = sha256_hex(f"{run_id}/global/{server_round}".encode())
        for name, ledger in ledgers.items():
            if server_round > rounds.get(name, PLANNED_ROUNDS + 1):
                continue
            plan = plans[name]
            event = plan.round_event
            before = composed_epsilon(events[name], delta=DELTA)
            after = composed_epsilon([*events[name], event], delta=DELTA)
            if refuse_after_budget and after > plan.epsilon_budget * (1 + 1e-9):
                ledger.append(server_round=server_round, plan=plan, steps=0,
                              epsilon_cumulative=before * claim_scale.get(name, 1.0),
                              model_received_sha256=model, update_sent_sha256=None,
                              refusal_reason=f"privacy budget exhausted: epsilon {after:.4f} "
                                             f"> {plan.epsilon_budget}")
                continue
            events[name].append(event)
            update = sha256_hex(f"{run_id}/{name}/{server_round}".encode())
            entry = ledger.append(server_round=server_round, plan=plan,
                                  steps=event.steps,
                                  epsilon_cumulative=after * claim_scale.get(name, 1.0),
                                  model_received_sha256=model, update_sent_sha256=update)
            if (name, server_round) not in skip_receipts:
                receipts.append(server_round=server_round, partner=name,
                                ledger_entry_sha256=entry_hash(entry), update_sha256=update)
    return Federation(root, run_id, keys_dir, {n: lg.path for n, lg in ledgers.items()},
                      receipts.path, keys, plans, {n: lg.entries for n, lg in ledgers.items()})


def read_entries(path: Path) -> list[bytes]:
    """The lines of a log, without newlines."""
    return path.read_bytes().rstrip(b"\n").split(b"\n")


def write_entries(path: Path, lines: list[bytes]) -> None:
    """Write lines back, newline-terminated."""
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def resign_and_rechain(entries: list[dict[str, Any]], keys: list[Ed25519PrivateKey],
                       start: int) -> list[dict[str, Any]]:
    """Re-sign entries[start:] (each with its key), re-linking the hash chain from `start`.

    What a signer rewriting its own log after the fact would do: the log verifies on its own.
    """
    out = list(entries[:start])
    for entry, key in zip(entries[start:], keys[start:], strict=True):
        body = {**entry, "key_fingerprint": fingerprint(key.public_key()),
                "prev_entry_sha256": entry_hash(out[-1]) if out else GENESIS}
        out.append(sign_entry(body, key))
    return out


def dump(entries: list[dict[str, Any]]) -> list[bytes]:
    """Canonical lines of entries."""
    return [canonical_bytes(e) for e in entries]
