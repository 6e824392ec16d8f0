"""LocalFederation's failure paths that need no real federation: `flwr` CLI timeouts, teardown
where /proc cannot be listed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import simulations.deploy.local as lf
from common.errors import FederationError
from simulations.deploy.local import DEMO_MARK, DemoOptions, LocalFederation, processes_marked


@pytest.fixture
def fed(tmp_path: Path) -> LocalFederation:
    return LocalFederation(tmp_path / "w", DemoOptions())  # starts nothing


@pytest.fixture
def hanging_flwr(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every `flwr` command runs past its timeout."""
    calls: list[list[str]] = []

    def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        calls.append(args)
        raise subprocess.TimeoutExpired(args, float(kwargs["timeout"]), output=b"partial")

    monkeypatch.setattr(lf.subprocess, "run", run)
    return calls


def test_flwr_timeout_is_a_failed_result_not_an_exception(fed: LocalFederation,
                                                          hanging_flwr: list) -> None:
    done = fed.flwr(["flwr", "supernode", "list"], timeout=7)
    assert done.returncode != 0
    assert "timed out after 7 s" in done.stderr and done.stdout == "partial"


def test_online_nodes_counts_a_timed_out_listing_as_none_online(fed: LocalFederation,
                                                                hanging_flwr: list) -> None:
    assert fed.online_nodes() == 0
    assert hanging_flwr and hanging_flwr[0][:3] == ["flwr", "supernode", "list"]


def test_register_retries_a_timed_out_command_then_raises(fed: LocalFederation,
                                                          hanging_flwr: list,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lf.time, "sleep", lambda _: None)
    with pytest.raises(FederationError, match="timed out"):
        fed.register(fed.options.partners[0], timeout=0.05)
    assert len(hanging_flwr) >= 2  # retried before giving up


def _fake_process(proc: Path, pid: int, state: str, environ: dict[str, str]) -> None:
    entry = proc / str(pid)
    entry.mkdir(parents=True)
    (entry / "stat").write_text(f"{pid} (python (x)) {state} 1 2 3\n")
    (entry / "environ").write_bytes(b"\0".join(f"{k}={v}".encode() for k, v in environ.items())
                                    + b"\0")


def test_processes_marked_finds_live_processes_with_the_mark(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    _fake_process(proc, 101, "S", {"PATH": "/bin", DEMO_MARK: "abc"})
    _fake_process(proc, 102, "Z", {DEMO_MARK: "abc"})  # zombie: already dead
    _fake_process(proc, 103, "R", {DEMO_MARK: "other"})
    _fake_process(proc, 104, "S", {DEMO_MARK: "abcd"})  # a prefix is not the mark
    (proc / "105").mkdir()  # vanished mid-scan: no stat
    (proc / "self").mkdir()
    assert processes_marked("abc", proc) == [101]


def test_processes_marked_without_procfs_finds_nothing(tmp_path: Path) -> None:
    assert processes_marked("abc", tmp_path / "no-proc") == []
    (tmp_path / "file").write_text("")
    assert processes_marked("abc", tmp_path / "file") == []


def test_close_does_not_raise_where_proc_cannot_be_listed(fed: LocalFederation,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(self: Path) -> object:
        raise FileNotFoundError(2, "No such file or directory", str(self))

    with monkeypatch.context() as patch:
        patch.setattr(Path, "iterdir", missing)
        assert processes_marked(fed.mark) == []
        with pytest.raises(ValueError, match="original"), fed:
            raise ValueError("original")  # __exit__ -> close() must not hide it
