"""Start-up cost: Flower starts a fresh ClientApp process for every message, and the CLI should
answer `--help` at once, so neither may load a heavy library it does not need yet."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("opacus", "sklearn", "scipy", "dp_accounting", "matplotlib")


def loaded_after_import(module: str, candidates: tuple[str, ...]) -> list[str]:
    """Which of `candidates` a fresh interpreter has loaded after `import module`."""
    code = (f"import sys, json, {module}; "
            f"print(json.dumps([m for m in {list(candidates)!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_checker_sees_a_loaded_library() -> None:
    assert loaded_after_import("json", ("json", "sklearn")) == ["json"]


def test_the_client_app_loads_no_torch_training_evaluation_or_audit_library_at_import() -> None:
    assert loaded_after_import("clients.app", ("torch", *HEAVY)) == []


@pytest.mark.parametrize("module", ["simulations.cli", "common.config"])
def test_the_cli_and_the_config_load_neither_torch_nor_flower(module: str) -> None:
    assert loaded_after_import(module, ("torch", "flwr", *HEAVY)) == []


def test_a_partner_evaluating_its_test_rows_loads_no_sklearn_or_scipy() -> None:
    """Evaluation rides on the train message: its metrics must not add sklearn's import to
    every partner's train process."""
    code = ("import sys, json, numpy as np; from common.learning.metrics import credit_metrics; "
            "credit_metrics(np.array([0., 1, 0, 1]), np.array([.1, .9, .4, .3])); "
            "print(json.dumps([m for m in ('sklearn', 'scipy') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
