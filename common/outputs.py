"""Run outputs written by the coordinator: the final model, its metadata, the round history."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

MODEL_FILE = "model.pt"
MODEL_META_FILE = "model.json"
HISTORY_FILE = "history.json"


def json_safe(value: Any) -> Any:
    """Replace NaN/Inf by None recursively so the result is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, payload: Any) -> None:
    """Write strict, indented JSON atomically (temp file then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(json_safe(payload), indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def save_model(out_dir: Path, model: nn.Module, metadata: dict[str, Any]) -> None:
    """Save the state_dict (`model.pt`) and JSON metadata (`model.json`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_dir / MODEL_FILE)
    write_json(out_dir / MODEL_META_FILE, metadata)
