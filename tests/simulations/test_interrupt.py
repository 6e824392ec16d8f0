"""Ctrl-C during `fedcredit simulate` (issue 12 item 3): the process and everything it started
(Ray's helpers included) are gone within seconds, exit status 130, and the run directory is
marked interrupted. Before, SIGINT left the federation running with a frozen progress bar."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from common.outputs import RUN_MANIFEST

PROJECT = Path(__file__).resolve().parents[2]


def live_group_members(pgid: int) -> list[str]:
    """`pid command` of every process in group `pgid` that is not a zombie."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                head, tail = handle.read().rsplit(")", 1)
        except OSError:
            continue
        fields = tail.split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(f"{entry} {head.split('(', 1)[1]}")
    return members


def wait_gone(pgid: int, seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := live_group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def interrupt(child: subprocess.Popen, started: float) -> tuple[int, float]:
    """SIGINT to the child's process group, as Ctrl-C in a terminal; (exit status, seconds)."""
    os.killpg(child.pid, signal.SIGINT)
    sent = time.monotonic()
    try:
        code = child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        pytest.fail(f"still running 10 s after SIGINT ({sent - started:.0f} s into the run)")
    return code, time.monotonic() - sent


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_stop_on_signal_ends_a_busy_process_and_its_children(tmp_path: Path) -> None:
    """The mechanism alone, in a second: the main thread is busy, a child sleeps."""
    script = textwrap.dedent("""
        import subprocess, sys, time
        from simulations.simulate.interrupt import stop_on_signal
        with stop_on_signal(lambda s: print("stopping", s, flush=True),
                            lambda s: open(sys.argv[1], "w").write("marked")):
            subprocess.Popen(["sleep", "60"])
            print("ready", flush=True)
            time.sleep(60)
        """)
    marker = tmp_path / "marker"
    child = subprocess.Popen([sys.executable, "-c", script, str(marker)], cwd=PROJECT,
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    code, seconds = interrupt(child, time.monotonic())
    assert code == 130 and seconds < 5
    assert marker.read_text() == "marked"
    assert wait_gone(child.pid, 2.0) == []


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_sigint_during_simulate_stops_everything_and_marks_the_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    log = (tmp_path / "simulate.log").open("w")
    started = time.monotonic()
    child = subprocess.Popen([sys.executable, "-m", "simulations.cli", "simulate", "--rounds",
                              "50", "--out", str(out)], cwd=tmp_path, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True,
                             env={**os.environ, "PYTHONPATH": str(PROJECT)})
    try:
        ledgers = out / "federated_dp" / "ledgers"
        while not (ledgers.is_dir() and any(ledgers.iterdir())):  # round 1 is training
            assert child.poll() is None, (tmp_path / "simulate.log").read_text()
            assert time.monotonic() - started < 120, "no round started within 120 s"
            time.sleep(0.2)
        code, seconds = interrupt(child, started)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        log.close()
    said = (tmp_path / "simulate.log").read_text()
    assert code == 130, said
    assert seconds < 10
    assert "interrupted" in said and "Traceback" not in said
    assert wait_gone(child.pid, 3.0) == []
    manifest = json.loads((out / RUN_MANIFEST).read_text())
    assert manifest["status"] == "interrupted"
    assert any(name.startswith("federated_dp/ledgers/") for name in manifest["files"])
