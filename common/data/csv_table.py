"""Reading a partner's CSV file: UTF-8 text into a table of strings, with line numbers for
error messages. What the strings mean is the schema's business (`common.data.schema`)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from common.errors import DataValidationError, FedcreditError


def decode_text(data: bytes, path: str, error: type[FedcreditError]) -> str:
    """UTF-8 text (a leading byte-order mark, as spreadsheet software writes, is dropped); a
    file in another encoding raises `error` naming the file and the line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise error(f"{path}: line {line} is not UTF-8 text (byte {exc.start}); save the file "
                    f"as UTF-8") from None


@dataclass(frozen=True)
class RawTable:
    """A CSV read as strings: header, rows, and where it came from (for error messages)."""

    path: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]
    lines: list[int] = field(default_factory=list)

    def line(self, index: int) -> int:
        """CSV line number (header = line 1) of row `index`, for error messages."""
        return self.lines[index] if self.lines else index + 2

    def column(self, name: str) -> list[str]:
        """All values of column `name` as strings."""
        idx = self.header.index(name)
        return [row[idx] for row in self.rows]


CHUNK_ROWS = 100_000
"""Rows per chunk when a CSV is read in chunks (`read_csv_chunks`)."""


def read_csv(path: str | Path) -> RawTable:
    """Read a UTF-8 CSV file (with or without a byte-order mark) into strings, checking that
    header names are unique and every row has the header's width."""
    chunks = list(read_csv_chunks(path))
    return RawTable(path=str(path), header=chunks[0].header,
                    rows=[row for chunk in chunks for row in chunk.rows],
                    lines=[line for chunk in chunks for line in chunk.lines])


def read_csv_chunks(path: str | Path, chunk_rows: int = CHUNK_ROWS) -> Iterator[RawTable]:
    """`read_csv` in tables of at most `chunk_rows` rows (line numbers are the file's), so that a
    big file is never held as strings at once; a file with a header and no rows gives one empty
    table."""
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise DataValidationError(f"cannot read data file {path}: {exc}") from exc
    with handle:
        reader = csv.reader(_text_lines(handle, str(path)))
        try:
            header = tuple(h.strip() for h in next(reader, []))
            if not header:
                raise DataValidationError(f"{path}: file is empty (no header row)")
            repeated = sorted({h for h in header if header.count(h) > 1})
            if repeated:
                raise DataValidationError(f"{path}: line 1 (header) names column(s) {repeated} "
                                          f"more than once")
            rows: list[tuple[str, ...]] = []
            lines: list[int] = []
            sent = False
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataValidationError(
                        f"{path}: row {reader.line_num} has {len(row)} fields, header has "
                        f"{len(header)}")
                rows.append(tuple(v.strip() for v in row))
                lines.append(reader.line_num)
                if len(rows) == chunk_rows:
                    yield RawTable(path=str(path), header=header, rows=rows, lines=lines)
                    rows, lines, sent = [], [], True
        except csv.Error as exc:
            raise DataValidationError(f"{path}: line {reader.line_num} is not valid CSV: "
                                      f"{exc}") from None
        if rows or not sent:
            yield RawTable(path=str(path), header=header, rows=rows, lines=lines)


def _text_lines(handle: BinaryIO, path: str) -> Iterator[str]:
    """The file's lines as UTF-8 text (a leading byte-order mark dropped), one at a time; a line
    in another encoding raises DataValidationError naming the line and byte (a UTF-8 character
    never contains a newline byte, so decoding line by line is exact)."""
    offset = 0
    for number, raw in enumerate(handle, start=1):
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise DataValidationError(f"{path}: line {number} is not UTF-8 text (byte "
                                      f"{offset + exc.start}); save the file as UTF-8") from None
        offset += len(raw)
        yield from io.StringIO(text, newline="")  # a lone \r ends a line too, as in csv
