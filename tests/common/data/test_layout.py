"""The encoded feature layout (issue 12 item 2): what each model input unit means, from the schema
alone; a permuted schema of the same width has another layout, and a partner refuses it."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.data.layout import FeatureLayout, announcement, refusal
from common.data.schema import load_schema
from common.errors import SchemaError
from common.protocol import FEATURE_LAYOUT, FEATURE_LAYOUT_SHA256, LAYOUT_NOT_ANNOUNCED
from tests.conftest import TINY_SCHEMA


def _schema(tmp_path: Path, text: str, name: str = "schema"):
    path = tmp_path / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return load_schema(path)


def test_same_categories_in_another_order_is_another_layout(tmp_path: Path) -> None:
    """The issue's case: same width, so nothing failed, yet 'home=rent' became 'home=owner'."""
    run = _schema(tmp_path, TINY_SCHEMA, "run")
    swapped = TINY_SCHEMA.replace('["rent", "owner"]', '["owner", "rent"]')
    partner = _schema(tmp_path, swapped, "partner")
    assert partner.num_features == run.num_features
    assert partner.layout_sha256 != run.layout_sha256
    assert partner.layout().differences(run.layout()) == [
        "column 'home': categories ['owner', 'rent'] vs ['rent', 'owner']"]
    reason = refusal(partner.layout(), announcement(run.layout()), required=False)
    assert "column 'home': categories ['owner', 'rent'] vs ['rent', 'owner']" in reason
    # A deployed partner names what differs, not its schema's values (a drafted schema may have
    # learned them from its data): the review of issue 21.
    deployed = refusal(partner.layout(), announcement(run.layout()), required=True)
    assert "column 'home': categories differs from the run's" in deployed
    assert "owner" not in deployed


def test_layout_ignores_how_the_toml_is_written_and_non_feature_columns(tmp_path: Path) -> None:
    run = _schema(tmp_path, TINY_SCHEMA, "run")
    rewritten = "# a comment\n" + TINY_SCHEMA.replace("clip = [18, 80]", "clip = [18.0, 80.0]")
    extra = TINY_SCHEMA + '\n[[columns]]\nname = "region"\ntype = "categorical"\n' \
        'categories = ["north"]\nfeature = false\n'
    for text, name in ((rewritten, "rewritten"), (extra, "extra")):
        other = _schema(tmp_path, text, name)
        assert other.source_hash != run.source_hash
        assert other.layout_sha256 == run.layout_sha256


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("clip = [18, 80]", "clip = [18, 90]", "column 'age': clip [18, 90] vs [18, 80]"),
    ('transform = "log1p"\n', "", "column 'income': transform 'none' vs 'log1p'"),
    ("fill = 100", "fill = 50", "column 'income': fill 50 vs 100"),
    ("missing_indicator = true", "missing_indicator = false",
     "column 'income': missing indicator false vs true"),
    ('unknown = "bucket"\n', "", "column 'home': unknown bucket false vs true"),
    ('categories = ["A", "B", "C"]', 'categories = ["C", "B", "A"]',
     "column 'grade': levels ['C', 'B', 'A'] vs ['A', 'B', 'C']"),
    ('name = "grade"\ntype = "ordinal"', 'name = "grade"\ntype = "categorical"',
     "column 'grade': encoding 'categorical' vs 'ordinal'"),
    ('name = "age"', 'name = "years"', "column 'age': not a feature column of this partner's"),
])
def test_every_declared_encoding_parameter_is_in_the_layout(tmp_path: Path, old: str, new: str,
                                                            expected: str) -> None:
    run = _schema(tmp_path, TINY_SCHEMA, "run")
    assert old in TINY_SCHEMA
    partner = _schema(tmp_path, TINY_SCHEMA.replace(old, new, 1), "partner")
    assert partner.layout_sha256 != run.layout_sha256
    assert any(d.startswith(expected) for d in partner.layout().differences(run.layout()))


def test_column_order_is_in_the_layout(tmp_path: Path) -> None:
    head, *blocks = TINY_SCHEMA.split("[[columns]]")
    run = _schema(tmp_path, TINY_SCHEMA, "run")
    partner = _schema(tmp_path, head + "[[columns]]".join(["", blocks[1], blocks[0],
                                                           *blocks[2:]]), "partner")
    assert partner.layout().differences(run.layout()) == [
        "column order ['age', 'income', 'home', 'job', 'grade'] vs "
        "['income', 'age', 'home', 'job', 'grade']"]


def test_refusal_of_missing_tampered_or_identical_announcements(tmp_path: Path) -> None:
    own = _schema(tmp_path, TINY_SCHEMA).layout()
    assert refusal(own, announcement(own), required=True) == ""
    assert refusal(own, {}, required=True) == LAYOUT_NOT_ANNOUNCED
    assert refusal(own, {}, required=False) == ""  # a simulated partner, by hand-built messages
    other = FeatureLayout.of(())
    tampered = {FEATURE_LAYOUT: other.text, FEATURE_LAYOUT_SHA256: "0" * 64}
    assert "does not match its announced sha256" in refusal(own, tampered, required=False)
    garbage = {FEATURE_LAYOUT: "{not json", FEATURE_LAYOUT_SHA256: "0" * 64}
    assert "not a fedcredit feature layout" in refusal(own, garbage, required=False)
    with pytest.raises(SchemaError):
        FeatureLayout.from_json('{"version": 1, "columns": [{"name": 3}]}')
    assert FeatureLayout.from_json(own.text) == own
