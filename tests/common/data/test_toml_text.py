"""`common/data/toml_text.py`: what it writes, tomllib reads back unchanged."""

from __future__ import annotations

import tomllib

import pytest

from common.data.toml_text import toml_string, toml_value


@pytest.mark.parametrize("text", ['plain', 'a "quoted" word', "back\\slash", "line\nbreak\ttab",
                                  "C:\\data\\bank.csv", "café ünïcode", "\x01control"])
def test_a_string_reads_back_unchanged(text: str) -> None:
    assert tomllib.loads(f"key = {toml_string(text)}")["key"] == text


def test_values_read_back_with_their_types() -> None:
    value = [True, 3, 0.25, "owner", ["rent", "priv"]]
    assert tomllib.loads(f"key = {toml_value(value)}")["key"] == value
