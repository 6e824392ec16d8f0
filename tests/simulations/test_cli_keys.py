"""`fedcredit keys new`: an Ed25519 key pair, private key mode 0600, never overwritten."""

from __future__ import annotations

import stat
from pathlib import Path

from typer.testing import CliRunner

from common.privacy.crypto import fingerprint, load_private_key, load_public_key, sign, verify
from simulations.cli import app

RUNNER = CliRunner(env={"COLUMNS": "240"})


def test_keys_new_writes_a_private_key_only_its_owner_can_read(tmp_path: Path) -> None:
    result = RUNNER.invoke(app, ["keys", "new", "--partner", "bank", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    private, public = tmp_path / "bank.key", tmp_path / "bank.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key, pub = load_private_key(private), load_public_key(public)
    verify(pub, sign(key, b"entry"), b"entry")
    assert fingerprint(pub) in result.output


def test_keys_new_refuses_to_overwrite_a_private_key(tmp_path: Path) -> None:
    RUNNER.invoke(app, ["keys", "new", "--partner", "bank", "--out", str(tmp_path)])
    before = (tmp_path / "bank.key").read_bytes()
    again = RUNNER.invoke(app, ["keys", "new", "--partner", "bank", "--out", str(tmp_path)])
    assert again.exit_code != 0
    assert "refusing to overwrite" in again.output
    assert (tmp_path / "bank.key").read_bytes() == before
