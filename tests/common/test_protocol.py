"""The wire contract lives in `common/protocol.py` only: `server/` and `clients/` never spell a
wire string themselves, and the contract is plain data (no Flower)."""

from __future__ import annotations

import ast
from pathlib import Path

import common.protocol as protocol

ROOT = Path(__file__).resolve().parents[2]
APP_PACKAGES = ("server", "clients")
_SENTINEL = "\x00"


def wire_values() -> frozenset[str]:
    """Every public str constant of the protocol and every str in its public tuples and sets."""
    values: set[str] = set()
    for name, value in vars(protocol).items():
        if name.startswith("_"):
            continue
        if isinstance(value, str):
            values.add(value)
        elif isinstance(value, tuple | frozenset):
            values.update(v for v in value if isinstance(v, str))
    return frozenset(values)


def helper_pieces() -> tuple[frozenset[str], frozenset[str]]:
    """(leading pieces, other pieces) of the names the protocol's helpers build, e.g. `psi.` of
    `party_record(PSI, party)` and `/` of `setting_metric(setting, metric)`."""
    built = [protocol.party_record(prefix, _SENTINEL) for prefix in protocol.PARTY_RECORD_PREFIXES]
    built += [protocol.non_private_state(_SENTINEL), protocol.evaluation_step(_SENTINEL),
              protocol.setting_metric(_SENTINEL, _SENTINEL)]
    leading = {name.split(_SENTINEL)[0] for name in built} - {""}
    inner = {piece for name in built for piece in name.split(_SENTINEL)[1:]} - {""}
    return frozenset(leading), frozenset(inner)


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes of a module, its classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                found.add(id(body[0].value))
    return found


def wire_literals(source: str, filename: str = "<source>") -> list[str]:
    """`file:line: 'text'` for each string in `source` (f-string parts included, docstrings
    excluded) equal to a wire value or to a fixed part of a name the protocol's helpers build."""
    values = wire_values()
    leading, inner = helper_pieces()
    tree = ast.parse(source)
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in skip:
            continue
        text = node.value
        if text in values or text in inner or any(text.startswith(p) for p in leading):
            found.append(f"{filename}:{node.lineno}: {text!r}")
    return sorted(found)


def test_server_and_clients_spell_no_wire_string() -> None:
    found = [hit for package in APP_PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
             for hit in wire_literals(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == [], "use the names of common/protocol.py:\n" + "\n".join(found)


def test_the_checker_flags_a_reintroduced_literal() -> None:
    source = '''"""A docstring may say "query.vfl_hello"."""
def reply(p, content):
    """So may this one: "metrics"."""
    content["metrics"] = 1
    record = f"psi.{p}"
    state = "vfl.np." + p
    key = f"{p}/{content}"
    return "query.vfl_hello", {"epsilon-spent": 0.0}, record, state, key, "psi.bank"
'''
    assert wire_literals(source) == [
        "<source>:4: 'metrics'", "<source>:5: 'psi.'", "<source>:6: 'vfl.np.'",
        "<source>:7: '/'", "<source>:8: 'epsilon-spent'", "<source>:8: 'psi.bank'",
        "<source>:8: 'query.vfl_hello'"]


def test_the_protocol_is_plain_data() -> None:
    tree = ast.parse((ROOT / "common" / "protocol.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert "flwr" not in imported
    assert imported <= {"__future__"}


def test_helpers_build_the_names_on_the_wire() -> None:
    assert protocol.party_record(protocol.PSI, "bank") == "psi.bank"
    assert protocol.party_record(protocol.TRAIN_ROWS, "bank") == "train.bank"
    assert protocol.non_private_state("lender+bank") == "vfl.np.lender+bank"
    assert protocol.evaluation_step(protocol.NON_PRIVATE) == "evaluate-non-private"
    key = protocol.setting_metric("lender+ecommerce+bank", "auc")
    assert key == "lender+ecommerce+bank/auc"
    assert protocol.split_setting_metric(key) == ("lender+ecommerce+bank", "auc")


def test_the_vertical_wire_names_are_unchanged() -> None:
    """What both sides spelled before the contract moved here (a deployed party of an older
    version must still understand the coordinator)."""
    assert protocol.VERTICAL_MESSAGE_TYPES == (
        "query.vfl_hello", "query.psi_open", "query.psi_respond", "query.psi_finish",
        "query.psi_align", "query.vfl_split", "query.vfl_labels", "train.vfl_bottom",
        "query.vfl_embed", "train.vfl_top", "train.vfl_finetune", "evaluate.vfl_score",
        "query.vfl_score")
    records = (protocol.LABELS, protocol.EMBEDDINGS, protocol.PSI, protocol.SPLIT,
               protocol.GRADS, protocol.NOISE_STD, protocol.PARTY_RECORD_PREFIXES)
    assert records == ("labels", "embeddings", "psi", "split", "grads", "noise-std",
                       ("psi", "train", "test", "grads", "customer"))
    assert (protocol.MODE, protocol.DP, protocol.NON_PRIVATE) == ("mode", "dp", "non-private")
    assert (protocol.SECURE_REFUSAL_CODE, protocol.VERTICAL_REFUSAL_CODE) == (4030, 4031)


def test_every_vertical_message_type_has_a_party_handler() -> None:
    from clients.vertical.registry import HANDLERS

    assert set(HANDLERS) == set(protocol.VERTICAL_MESSAGE_TYPES)
