"""Reading a partner's CSV file: UTF-8 text into a table of strings, with line numbers for
error messages. What the strings mean is the schema's business (`common.data.schema`)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

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


def read_csv(path: str | Path) -> RawTable:
    """Read a UTF-8 CSV file (with or without a byte-order mark) into strings, checking that
    header names are unique and every row has the header's width."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataValidationError(f"cannot read data file {path}: {exc}") from exc
    reader = csv.reader(io.StringIO(decode_text(data, str(path), DataValidationError), newline=""))
    try:
        header = tuple(h.strip() for h in next(reader, []))
        repeated = sorted({h for h in header if header.count(h) > 1})
        if repeated:
            raise DataValidationError(f"{path}: line 1 (header) names column(s) {repeated} more "
                                      f"than once")
        rows, lines = [], []
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise DataValidationError(
                    f"{path}: row {reader.line_num} has {len(row)} fields, header has "
                    f"{len(header)}")
            rows.append(tuple(v.strip() for v in row))
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise DataValidationError(f"{path}: line {reader.line_num} is not valid CSV: "
                                  f"{exc}") from None
    if not header:
        raise DataValidationError(f"{path}: file is empty (no header row)")
    return RawTable(path=str(path), header=header, rows=rows, lines=lines)
