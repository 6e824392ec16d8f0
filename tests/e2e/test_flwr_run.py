"""`flwr run .` works on this project as a Flower App (local simulation SuperLink)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
PROJECT = Path(__file__).parents[2]


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids


def test_flwr_run_trains_and_writes_the_model(tmp_path: Path) -> None:
    flwr = Path(sys.executable).parent / "flwr"
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text('[superlink]\ndefault = "local"\n\n'
                                      '[superlink.local]\naddress = ":local:"\n')
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "PATH": f"{flwr.parent}:{os.environ.get('PATH', '')}"}
    out = tmp_path / "out"
    try:
        done = subprocess.run(
            [str(flwr), "run", ".", "local", "--stream",
             "--federation-config", "num-supernodes=3 client-resources-num-cpus=1",
             "--run-config", f"out-dir='{out}' num-server-rounds=2"],
            cwd=PROJECT, env=env, capture_output=True, text=True, timeout=400)
        deadline = time.time() + 60
        while not (out / "history.json").exists() and time.time() < deadline:
            time.sleep(1)
    finally:
        for pid in _processes_mentioning(str(home)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    assert (out / "history.json").exists(), done.stdout[-3000:] + done.stderr[-3000:]
    history = json.loads((out / "history.json").read_text())
    assert history["status"] == "completed"
    assert len(history["rounds"]) == 2
    assert all(sorted(r["accepted"]) == ["bank", "ecommerce", "lender"]
               for r in history["rounds"])
    state = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values())
    meta = json.loads((out / "model.json").read_text())
    assert all(0 < p["epsilon-spent"] <= 3.0 for p in meta["privacy"].values())
