"""The private record index beside a lifetime odometer (`common.privacy.record_index`): which
records a data set has held, and whether a data file is a version of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.errors import DatasetNotRecognised, LedgerError
from common.privacy.record_index import RecordIndex, records_fingerprint

ODOMETER = Path("bank.odometer.jsonl")


def records(*values: int) -> np.ndarray:
    return np.array(values, dtype="<u8")


def never() -> str:
    raise AssertionError("the legacy fingerprint was computed")


def open_with(path: Path, digests: np.ndarray, recorded: str | None) -> str:
    """Resolve and commit, as `PrivacyOdometer.of_records` does once the odometer verifies."""
    with RecordIndex.locked(path) as index:
        dataset = index.resolve(digests, odometer=ODOMETER, recorded=recorded, legacy=never)
        index.commit()
    return dataset


def held(path: Path) -> list[int]:
    with RecordIndex.locked(path) as index:
        return index.digests.tolist()


def test_the_identity_of_a_data_set_is_its_first_versions_records_in_any_order() -> None:
    assert records_fingerprint(records(3, 1, 2, 2)) == records_fingerprint(records(1, 2, 3))
    assert records_fingerprint(records(1, 2)) != records_fingerprint(records(1, 2, 3))


def test_versions_that_share_a_record_are_one_data_set(tmp_path: Path) -> None:
    path = tmp_path / "index"
    dataset = open_with(path, records(1, 2, 3), None)
    assert dataset == records_fingerprint(records(1, 2, 3))
    assert open_with(path, records(3, 4), dataset) == dataset  # trimmed and grown
    assert open_with(path, records(4, 5), dataset) == dataset  # shares only a later record
    assert held(path) == [1, 2, 3, 4, 5]
    with pytest.raises(DatasetNotRecognised, match="shares none of its 2 records with the 5"):
        open_with(path, records(6, 7), dataset)
    assert held(path) == [1, 2, 3, 4, 5]


def test_a_digest_torn_by_a_crash_is_ignored_and_written_over(tmp_path: Path) -> None:
    path = tmp_path / "index"
    dataset = open_with(path, records(1, 2), None)
    with path.open("ab") as handle:
        handle.write(b"\x07\x00\x00")  # three bytes of a digest that never finished
    assert held(path) == [1, 2]
    open_with(path, records(2, 9), dataset)
    assert held(path) == [1, 2, 9]
    assert (path.stat().st_size - path.read_bytes().index(b"\n") - 1) == 3 * 8


def test_an_unreadable_index_of_a_used_odometer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "index"
    path.write_bytes(b"not an index\n" + records(1).tobytes())
    with pytest.raises(LedgerError, match="is unreadable") as info:
        open_with(path, records(1), "ab" * 32)
    assert not isinstance(info.value, DatasetNotRecognised)
    # Of an odometer that records nothing yet, nothing was spent: the index starts over.
    assert open_with(path, records(1), None) == records_fingerprint(records(1))
    assert held(path) == [1]
