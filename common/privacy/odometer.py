"""A partner's lifetime privacy odometer: every DP release of one data set, across runs and ledgers.

A ledger is per run and per file, so a partner restarted with a new `ledger-path` would spend its
whole run budget again. The odometer is the partner-held record that spans them: one signed,
hash-chained JSON Lines file (the ledger's format machinery: canonical encoding, Ed25519
signature, `prev_entry_sha256`, `seq`) with one entry per release of one data set, whatever run
or ledger it belongs to. Every release is recorded BEFORE it happens (a reservation: a crash
afterwards over-counts, never under-counts), and all of them compose into one lifetime ε at δ,
held to the lifetime budget, by `common.privacy.accounting`'s `ACCOUNTANT` (min of RDP and PRV:
a valid upper bound for any releases, whatever accountant the entries that recorded them were
written with).

A data set is its records, not its file's bytes (`PrivacyOdometer.of_records`): a lender's table
is re-saved, re-sorted and grows. A data file is a version of the odometer's data set when it
shares at least one record (the same values under the same column names) with the records its
earlier versions held, kept in a private index beside the odometer
(`common.privacy.record_index`); a file that shares none is refused (`DatasetNotRecognised`)
while the odometer holds releases. Every entry names the data set by one stable identity,
`dataset_sha256`: a keyed fingerprint of the records of the first version the odometer counted
(or, in an odometer written before records were indexed, the SHA-256 of that version's data and
schema bytes, `dataset_fingerprint`). The schema is not part of it: the same records under
another encoding are the same people, and a schema edit must not reset their lifetime budget.

What the odometer guarantees, for records that were added or removed:
Every record that any counted version of the data set held, whether it was there from the first
version, added in a later one or removed since, has taken part only in releases the odometer
recorded before they happened, so its lifetime privacy loss is at most the odometer's lifetime
ε at δ, which the partner holds to its lifetime budget. A record added in a later version is
charged every release recorded before it arrived, and a removed record every release recorded
after it left: the odometer over-counts for them, never under-counts. A record whose values or
column names change is another record to the odometer; the releases on both its old and its new
form are all recorded, so the bound still holds for the person behind it, as long as the changed
file shares an unchanged record with the data set's earlier versions. A file that shares none is
refused; giving it a new odometer starts a fresh lifetime budget that does not count what its
records spent under the old one, which only the partner can know is right (a genuinely new data
set). As everywhere in fedcredit, the bound is per record and covers the DP releases (the noisy
count, the training rounds), not the exact metrics a partner releases, unprotected, only with
`release-metrics=true`.

`check_odometer` is the one integrity check, used by the partner on open and by the auditor
(`common.privacy.audit.odometer`). The partner's file is locked while it is read and appended, so
two SuperNodes of one partner sharing an odometer cannot both spend what is left.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.errors import DatasetNotRecognised, LedgerError, LifetimeBudgetExceeded
from common.privacy.accounting import (
    ACCOUNTANT,
    ACCOUNTANT_NAME,
    CONVERSION,
    SubsampledGaussianEvent,
    check_budget,
    composed_epsilon,
    within_budget,
)
from common.privacy.crypto import fingerprint
from common.privacy.ledger import (
    GENESIS,
    Finding,
    canonical_bytes,
    entry_hash,
    ledger_event,
    mechanism_fields,
    read_lines,
    sign_entry,
    signed_link_problems,
    utc_now,
)
from common.privacy.record_index import RecordIndex, index_path

try:  # POSIX: serialise concurrent writers of one odometer (advisory lock on the file itself)
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: a single writer is assumed
    fcntl = None  # type: ignore[assignment]

ODOMETER_KIND = "fedcredit-privacy-odometer/1"
DATASET_DOMAIN = b"fedcredit-dataset/1"
"""Domain separation of `dataset_fingerprint` from every other SHA-256 in fedcredit."""
LEGACY_LOOKUP_LINE_BYTES = 1 << 20
"""At most this much of an odometer's first line is read to learn which data set it counts."""
RELEASE_DP_SGD = "dp-sgd"
RELEASE_COUNT = "count"
ODOMETER_FIELDS = {"kind", "seq", "partner", "dataset_sha256", "epsilon_lifetime_budget", "delta",
                   "run_id", "round", "release", "mechanism", "epsilon_lifetime_cumulative",
                   "accountant", "conversion", "ledger_path", "timestamp", "prev_entry_sha256",
                   "signature", "key_fingerprint"}
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "kind": str, "seq": int, "partner": str, "dataset_sha256": str,
    "epsilon_lifetime_budget": (int, float), "delta": (int, float), "run_id": str, "round": int,
    "release": str, "mechanism": dict, "epsilon_lifetime_cumulative": (int, float),
    "accountant": str, "conversion": str, "ledger_path": str, "timestamp": str,
    "prev_entry_sha256": str, "signature": str, "key_fingerprint": str}
IDENTITY_FIELDS = ("partner", "dataset_sha256", "epsilon_lifetime_budget", "delta")
"""What every entry of one odometer shares: whose, which data set, which lifetime budget."""


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_fingerprint(data_path: Path | str, schema_path: Path | str) -> str:
    """SHA-256 (hex) of a data file's and its schema's bytes, each hashed, under a fedcredit
    domain tag (OSError if either cannot be read): how odometers written before records were
    indexed identified their data set, kept to recognise them (`PrivacyOdometer.of_records`)."""
    parts = [DATASET_DOMAIN, b"data", _file_sha256(Path(data_path)).encode("ascii"),
             b"schema", _file_sha256(Path(schema_path)).encode("ascii")]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()


def well_formed(entry: dict[str, Any]) -> bool:
    """Whether an entry has exactly the odometer's fields, of their types, and its kind."""
    return (set(entry) == ODOMETER_FIELDS and entry.get("kind") == ODOMETER_KIND
            and all(isinstance(entry[k], t) and not isinstance(entry[k], bool)
                    for k, t in _FIELD_TYPES.items()))


def check_odometer(path: Path, entries: list[tuple[int, dict[str, Any]]],
                   keys: dict[str, tuple[str, Ed25519PublicKey]]) -> list[Finding]:
    """Integrity of an odometer: fields, signatures (by the key of the entry's partner), chain,
    seq, and one partner, data set and lifetime budget throughout. `keys`: fingerprint ->
    (name, public key)."""
    findings: list[Finding] = []
    previous_hash, first = GENESIS, None
    for position, (line, entry) in enumerate(entries):
        def problem(code: str, message: str, line: int = line) -> None:
            findings.append(Finding(str(path), line, code, message))

        if not well_formed(entry):
            missing = sorted(ODOMETER_FIELDS - set(entry))
            extra = sorted(set(entry) - ODOMETER_FIELDS)
            problem("fields", f"not a {ODOMETER_KIND} entry of the right field types (missing "
                              f"{missing}, unexpected {extra})")
            previous_hash = entry_hash(entry)
            continue
        for code, message in signed_link_problems(entry, keys, entry["partner"], position,
                                                  previous_hash):
            problem(code, message)
        first = first or entry
        changed = [k for k in IDENTITY_FIELDS if entry[k] != first[k]]
        if changed:
            problem("identity-changed", f"{', '.join(changed)} differ from the odometer's first "
                                        f"entry: one odometer counts one partner's data set "
                                        f"under one lifetime budget")
        previous_hash = entry_hash(entry)
    return findings


@dataclass(frozen=True)
class LifetimeDecision:
    """Whether planned releases fit what is left of the lifetime budget, and the ε they reach."""

    allowed: bool
    epsilon_spent: float
    epsilon_after: float
    epsilon_lifetime_budget: float
    reason: str = ""


class PrivacyOdometer:
    """A partner's lifetime odometer of one data set: verified on open, appended durably under a
    file lock, every release recorded before it happens.

    Raises LedgerError on open when the file fails verification, or belongs to another partner,
    data set or lifetime budget (a lifetime budget cannot change once releases count against it).
    """

    def __init__(self, path: Path | str, key: Ed25519PrivateKey, partner: str,
                 dataset_sha256: str, lifetime_epsilon: float, delta: float) -> None:
        check_budget(lifetime_epsilon, delta, keys=("lifetime-epsilon", "delta"))
        self.path, self.key, self.partner = Path(path), key, partner
        self.dataset_sha256 = dataset_sha256
        self.lifetime_epsilon, self.delta = float(lifetime_epsilon), float(delta)
        self.fingerprint = fingerprint(key.public_key())
        self.entries: list[dict[str, Any]] = []
        with self._locked(exclusive=False):
            self._reload()

    @classmethod
    def of_records(
        cls,
        path: Path | str,
        key: Ed25519PrivateKey,
        partner: str,
        records: np.ndarray,
        lifetime_epsilon: float,
        delta: float,
        *,
        files: tuple[Path | str, Path | str],
    ) -> PrivacyOdometer:
        """The odometer at `path`, of the data set the data file whose `record_digest`s are
        `records` belongs to (the module's rule), verified; its record index then holds them.
        `files`: that data file and its schema, whose `dataset_fingerprint` is computed only
        for an odometer without an index (one written before records were indexed). Raises
        DatasetNotRecognised when the file is not a version of the data set the odometer
        counts, LedgerError when the odometer or its index fails verification."""
        path = Path(path)
        with RecordIndex.locked(index_path(path)) as index:
            dataset = index.resolve(
                records,
                odometer=path,
                recorded=_recorded_dataset(path),
                legacy=lambda: dataset_fingerprint(*files),
            )
            odometer = cls(path, key, partner, dataset, lifetime_epsilon, delta)
            index.commit()  # only once the odometer verifies as this data set's
        return odometer

    # ------------------------------------------------------------------ reading

    @property
    def last_hash(self) -> str:
        """Hash of the last entry (GENESIS when empty)."""
        return entry_hash(self.entries[-1]) if self.entries else GENESIS

    def events(self) -> list[SubsampledGaussianEvent]:
        """Every release recorded, in order."""
        return [ledger_event(entry) for entry in self.entries]

    def spent(self) -> float:
        """Lifetime ε at δ of every recorded release composed (0 when none)."""
        return self._epsilon(self.events())

    def fits(self, planned: Sequence[SubsampledGaussianEvent]) -> LifetimeDecision:
        """Whether every recorded release plus `planned` stays within the lifetime budget (the
        file is re-read first: another process may have recorded releases since)."""
        with self._locked(exclusive=False):
            self._reload()
        return self._decide(planned)

    # ------------------------------------------------------------------ writing

    def record(self, *, run_id: str, server_round: int, release: str,
               event: SubsampledGaussianEvent, ledger_path: str) -> dict[str, Any]:
        """Reserve one release BEFORE it happens: sign and durably append its entry.

        Raises LifetimeBudgetExceeded (appending nothing) if it would take the lifetime ε over
        the budget, LedgerError if the file no longer verifies.
        """
        if not run_id or not release:
            raise ValueError("a release needs a run id and a release name")
        if event.steps < 1:
            raise ValueError(f"a release runs at least one step, got {event.steps}")
        if int(server_round) < 0:
            raise ValueError(f"round must be >= 0, got {server_round}")
        with self._locked(exclusive=True) as handle:
            self._reload()
            decision = self._decide([event])
            if not decision.allowed:
                raise LifetimeBudgetExceeded(decision.reason)
            body = {"kind": ODOMETER_KIND, "seq": len(self.entries), "partner": self.partner,
                    "dataset_sha256": self.dataset_sha256,
                    "epsilon_lifetime_budget": self.lifetime_epsilon, "delta": self.delta,
                    "run_id": run_id, "round": int(server_round), "release": release,
                    "mechanism": mechanism_fields(event),
                    "epsilon_lifetime_cumulative": float(decision.epsilon_after),
                    "accountant": ACCOUNTANT_NAME, "conversion": CONVERSION,
                    "ledger_path": str(ledger_path), "timestamp": utc_now(),
                    "key_fingerprint": self.fingerprint, "prev_entry_sha256": self.last_hash}
            entry = sign_entry(body, self.key)
            assert handle is not None
            handle.write(canonical_bytes(entry) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.entries.append(entry)
        return entry

    # ------------------------------------------------------------------ internals

    def _epsilon(self, events: Sequence[SubsampledGaussianEvent]) -> float:
        return (composed_epsilon(events, delta=self.delta, accountant=ACCOUNTANT) if events
                else 0.0)

    def _decide(self, planned: Sequence[SubsampledGaussianEvent]) -> LifetimeDecision:
        recorded = self.events()
        before = self._epsilon(recorded)
        after = self._epsilon([*recorded, *planned])
        if within_budget(after, self.lifetime_epsilon):
            return LifetimeDecision(True, before, after, self.lifetime_epsilon)
        after_text = "inf" if math.isinf(after) else f"{after:.4f}"
        reason = (f"lifetime privacy budget of data set {self.dataset_sha256[:12]} exhausted: "
                  f"{len(planned)} planned release(s) would raise its lifetime epsilon from "
                  f"{before:.4f} ({len(recorded)} release(s) recorded across runs) to "
                  f"{after_text}, over the lifetime budget {self.lifetime_epsilon:g} "
                  f"(delta={self.delta:g}, {ACCOUNTANT_NAME})")
        return LifetimeDecision(False, before, after, self.lifetime_epsilon, reason)

    @contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[IO[bytes] | None]:
        """The file locked (exclusive: opened for appending, created if missing)."""
        if not exclusive and not self.path.exists():
            yield None
            return
        if exclusive:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab" if exclusive else "rb") as handle:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield handle  # closing the file releases the lock

    def _reload(self) -> None:
        """Read and verify the whole file; it must extend what this object already read."""
        lines, findings = read_lines(self.path) if self.path.exists() else ([], [])
        if lines and well_formed(lines[0][1]):
            self._check_identity(lines[0][1])  # the clearest refusal first, verified or not
        findings += check_odometer(self.path, lines,
                                   {self.fingerprint: (self.partner, self.key.public_key())})
        if findings:
            raise LedgerError(f"odometer {self.path} failed verification; refusing to release "
                              f"rather than under-count lifetime privacy spent: "
                              + "; ".join(str(f) for f in findings[:5]))
        entries = [entry for _, entry in lines]
        known = len(self.entries)
        if len(entries) < known or (known and entry_hash(entries[known - 1]) != self.last_hash):
            raise LedgerError(f"odometer {self.path} holds {len(entries)} entries but {known} "
                              f"were read before: it was truncated or replaced")
        self.entries = entries

    def _check_identity(self, first: dict[str, Any]) -> None:
        """Refuse an odometer of another partner, data set or lifetime budget."""
        where = f"odometer {self.path}"
        if first["partner"] != self.partner:
            raise LedgerError(f"{where} is partner {first['partner']!r}'s, this node is "
                              f"{self.partner!r}")
        if first["dataset_sha256"] != self.dataset_sha256:
            raise DatasetNotRecognised(f"{where} counts data set "
                                       f"{first['dataset_sha256'][:16]}..., but this node's data "
                                       f"is data set {self.dataset_sha256[:16]}...: one odometer "
                                       f"counts one data set")
        if (first["epsilon_lifetime_budget"], first["delta"]) != (self.lifetime_epsilon,
                                                                 self.delta):
            raise LedgerError(f"{where} counts against lifetime budget epsilon="
                              f"{first['epsilon_lifetime_budget']:g}, delta={first['delta']:g}, "
                              f"but the node config says lifetime-epsilon="
                              f"{self.lifetime_epsilon:g}, delta={self.delta:g}: a lifetime "
                              f"budget cannot change once releases count against it")


def _recorded_dataset(path: Path) -> str | None:
    """The data set an odometer's first entry names (None when it has no entry); unverified:
    the odometer is verified, against the identity this leads to, before anything is trusted."""
    try:
        with path.open("rb") as handle:
            first = handle.readline(LEGACY_LOOKUP_LINE_BYTES)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LedgerError(f"cannot read odometer {path}: {exc}") from exc
    if not first.strip():
        return None
    try:
        entry = json.loads(first)
    except ValueError:
        entry = None
    value = entry.get("dataset_sha256") if isinstance(entry, dict) else None
    if not isinstance(value, str):
        raise LedgerError(
            f"odometer {path} failed verification: its first line is not an "
            f"odometer entry naming its data set"
        )
    return value
