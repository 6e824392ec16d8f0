"""The private record index beside a lifetime odometer: which records its data set has held.

An odometer counts one data set, and a lender's data set is a table that is re-saved, re-sorted
and grown: its identity cannot be its file's bytes. The index holds, for every record any
version of the data set has held (the union over versions), its `record_digest`: 8 bytes of an
HMAC of the record under the partner's secret split key (`common.data.tables.record_hmac`), so
it tells no one without that key which records they are. It lives beside the odometer
(`<odometer-path>.records`, mode 0600), is never sent, and takes 8 bytes a record: one JSON
header line (kind, the data set's identity) then the digests, appended as the data set grows.

The rule (`RecordIndex.resolve`): a data file is a version of the odometer's data set when it
shares at least one record with the index; its records are then added to the index and its
releases count in the same odometer. A file that shares none is refused with
`DatasetNotRecognised` while the odometer holds releases (a new data set needs its own
odometer); with none recorded, nothing was spent and the index starts over. A false match (two
different records with one 64-bit digest) can only join a file to an odometer, which over-counts;
no error can make a version of the data set look new.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from common.data.tables import RECORD_DTYPE
from common.errors import DatasetNotRecognised, LedgerError

try:  # POSIX: one SuperNode at a time reads and extends the index
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: a single writer is assumed
    fcntl = None  # type: ignore[assignment]

INDEX_KIND = "fedcredit-odometer-records/1"
INDEX_SUFFIX = ".records"
RECORDS_DOMAIN = b"fedcredit-dataset-records/1"
"""Domain separation of `records_fingerprint` from every other SHA-256 in fedcredit."""


def index_path(odometer_path: Path | str) -> Path:
    """Where the record index of an odometer lives: beside it, `<odometer-path>.records`."""
    path = Path(odometer_path)
    return path.with_name(path.name + INDEX_SUFFIX)


def records_fingerprint(records: np.ndarray) -> str:
    """The identity of a data set whose odometer starts now: SHA-256 (hex) of its records'
    digests, sorted and unique, under a domain tag. Keyed digests: it names the data set without
    telling an auditor, who sees it in every odometer entry, anything about its records."""
    return hashlib.sha256(RECORDS_DOMAIN + b"\0" + sorted_unique(records).tobytes()).hexdigest()


def sorted_unique(digests: np.ndarray) -> np.ndarray:
    """The distinct digests, ascending (a sort and a comparison: `np.unique`'s hashing is
    several times slower on a million of them)."""
    ordered = np.sort(np.asarray(digests, dtype=RECORD_DTYPE))
    keep = np.ones(len(ordered), dtype=bool)
    keep[1:] = ordered[1:] != ordered[:-1]
    return ordered[keep]


class RecordIndex:
    """An odometer's record index, read under an exclusive lock (`RecordIndex.locked`)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd
        self.dataset_sha256: str | None = None
        self.digests = np.empty(0, dtype=RECORD_DTYPE)
        self.problem = ""
        self._body_start = 0
        self._pending: tuple[bool, np.ndarray] | None = None  # (start over, digests to write)
        self._read()

    @classmethod
    @contextmanager
    def locked(cls, path: Path) -> Iterator[RecordIndex]:
        """The index at `path`, created empty (mode 0600) if missing, locked while in use."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise LedgerError(f"cannot open the odometer's record index {path}: {exc}") from exc
        try:
            os.fchmod(fd, 0o600)  # private: the partner's records, however it was created
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield cls(path, fd)
        finally:
            os.close(fd)  # releases the lock

    def resolve(
        self,
        records: np.ndarray,
        *,
        odometer: Path,
        recorded: str | None,
        legacy: Callable[[], str],
    ) -> str:
        """The identity of the data set `records` belong to, for the odometer whose first entry
        names `recorded` (None: it records nothing yet). `legacy()`: the identity an odometer
        written before records were indexed gave this file (its bytes). Raises
        DatasetNotRecognised, or LedgerError if the index cannot be this odometer's."""
        records = sorted_unique(records)
        where = f"odometer {odometer}"
        if self.problem and recorded is not None:
            raise LedgerError(
                f"the record index {self.path} of {where} is unreadable "
                f"({self.problem}): which records its data set holds is unknown"
            )
        if self.dataset_sha256 is None or self.problem:
            if recorded is None:
                return self._start(records)
            try:
                legacy_dataset = legacy()
            except OSError as exc:
                raise LedgerError(f"cannot read the data or schema file: {exc}") from exc
            if legacy_dataset == recorded:  # an odometer of the file's bytes, that file: index it
                self._pending, self.dataset_sha256 = (True, records), recorded
                return recorded
            raise DatasetNotRecognised(
                f"{where} has no record index ({self.path}): it was written before fedcredit "
                f"identified a data set by its records, by the bytes of its data and schema "
                f"files, and they changed since (or its index was lost). Run once on the files "
                f"it was written with (its index is then built from them), or give a new data "
                f"set its own odometer (node config key 'odometer-path')"
            )
        if recorded is not None and recorded != self.dataset_sha256:
            raise LedgerError(
                f"the record index {self.path} is data set "
                f"{self.dataset_sha256[:16]}...'s, but {where} counts data set "
                f"{recorded[:16]}...: an index belongs to the odometer it was "
                f"written beside"
            )
        shared = int(np.isin(records, self.digests, assume_unique=True).sum())
        if shared:
            self._pending = (False, np.setdiff1d(records, self.digests, assume_unique=True))
            return self.dataset_sha256
        if recorded is None:  # nothing spent yet: another data set may take the odometer
            return self._start(records)
        raise DatasetNotRecognised(
            f"the data file shares none of its {len(records)} records with the "
            f"{len(self.digests)} records {where} has counted (data set "
            f"{self.dataset_sha256[:16]}...): a re-saved, re-sorted, grown or trimmed version of "
            f"that data set shares its unchanged rows, so this is another data set. Give a new "
            f"data set its own odometer (node config key 'odometer-path'); the same people with "
            f"changed values or columns are not new, and a new odometer would not count what "
            f"they have spent"
        )

    def commit(self) -> None:
        """Write what `resolve` decided: the file's records added (or the index started)."""
        if self._pending is None:
            return
        start, digests = self._pending
        body = np.asarray(digests, dtype=RECORD_DTYPE).tobytes()
        if start:
            header = (
                json.dumps(
                    {"kind": INDEX_KIND, "dataset_sha256": self.dataset_sha256}, sort_keys=True
                ).encode("ascii")
                + b"\n"
            )
            os.ftruncate(self._fd, 0)
            self._write(header + body, 0)
        elif body:
            size = os.fstat(self._fd).st_size
            aligned = size - (size - self._body_start) % RECORD_DTYPE.itemsize
            os.ftruncate(self._fd, aligned)  # drop a digest torn by a crash mid-write
            self._write(body, aligned)
        os.fsync(self._fd)
        self._pending = None

    # ------------------------------------------------------------------ internals

    def _write(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written

    def _start(self, records: np.ndarray) -> str:
        self.dataset_sha256 = records_fingerprint(records)
        self._pending = (True, records)
        return self.dataset_sha256

    def _read(self) -> None:
        size = os.fstat(self._fd).st_size
        raw = os.pread(self._fd, size, 0) if size else b""
        if not raw:
            return
        head, newline, body = raw.partition(b"\n")
        try:
            header = json.loads(head) if newline else None
        except ValueError:
            header = None
        if (
            not isinstance(header, dict)
            or header.get("kind") != INDEX_KIND
            or not isinstance(header.get("dataset_sha256"), str)
        ):
            self.problem = f"not a {INDEX_KIND} file"
            return
        self._body_start = len(head) + 1
        whole = len(body) - len(body) % RECORD_DTYPE.itemsize  # a torn last digest is ignored
        self.dataset_sha256 = header["dataset_sha256"]
        self.digests = sorted_unique(np.frombuffer(body[:whole], dtype=RECORD_DTYPE))
