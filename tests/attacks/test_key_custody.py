"""A hostile coordinator holding exactly the files `fedcredit federation init` wrote.

Every partner makes its own keys on its own machine (`fedcredit keys new`) and hands over only
the public halves. The coordinator then holds no partner's private key, so a channel key or a
ledger entry it signs as a partner, with any key it does hold, fails the checks the parties and
the auditor run against that partner's registered public key.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from typer.testing import CliRunner

from common.data.scenarios import LENDER, PARTIES
from common.errors import ChannelError
from common.privacy.accounting import composed_epsilon
from common.privacy.audit import verify
from common.privacy.crypto import load_public_key, public_key_bytes, sha256_hex
from common.privacy.ledger import PartnerLedger
from common.vertical.channel import (
    ChannelKeys,
    load_channel_keys,
    signed_public_key,
    verified_public_key,
)
from simulations.cli import app
from simulations.deploy.commands import FederationCommands
from tests.audit_fixtures import make_plans

RUNNER = CliRunner(env={"COLUMNS": "240"})
RUN_ID = "run-custody"
SIGNATURE_FINDINGS = {"unknown-key", "foreign-key", "bad-signature"}


def _invoke(args: list[str]) -> None:
    """Run one `fedcredit` command line in process; it must succeed."""
    assert args[0] == "fedcredit", args
    result = RUNNER.invoke(app, args[1:])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FederationCommands]:
    """Each vertical party runs `fedcredit keys new` in its own folder, then the coordinator
    runs `fedcredit federation init` with their public keys: the command lines of
    docs/partners.md."""
    root = tmp_path_factory.mktemp("custody")
    commands = FederationCommands(
        pki=str(root / "fed"),
        data=str(root / "data"),
        work=str(root / "work"),
        partners=str(root / "homes"),
    )
    for party in PARTIES:
        _invoke(commands.keys_new(party))
    _invoke(commands.init(PARTIES))
    return root / "fed", commands


def _private_keys(folder: Path) -> dict[Path, object]:
    """Every private key of any kind (PEM or OpenSSH) in any file under `folder`."""
    found = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for load in (serialization.load_pem_private_key, serialization.load_ssh_private_key):
            try:
                found[path] = load(data, None)
                break
            except (ValueError, TypeError):
                continue
    return found


def _signing_keys(folder: Path) -> list[Ed25519PrivateKey]:
    """Every Ed25519 key the coordinator could sign a ledger entry or a channel key with."""
    keys = [k for k in _private_keys(folder).values() if isinstance(k, Ed25519PrivateKey)]
    assert keys, "the coordinator holds its own receipt key: nothing was tried"
    return keys


def _public_raw(key: object) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER,  # type: ignore[attr-defined]
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )


def test_init_writes_no_private_key_of_a_partner(federation) -> None:
    fed, commands = federation
    partner_publics = set()
    for party in PARTIES:
        home = Path(commands.partner_dir(party))
        for name in (f"{party}.key", "supernode-auth"):
            partner_publics.add(_public_raw(_private_keys(home)[home / name]))
    held = _private_keys(fed)
    assert sorted(str(p.relative_to(fed)) for p in held) == [
        "ca/ca.key",
        "coordinator/coordinator.key",
        "superlink/server.key",
    ]
    assert not partner_publics & {_public_raw(key) for key in held.values()}


def test_a_channel_key_the_coordinator_signs_as_a_party_does_not_verify(federation) -> None:
    fed, commands = federation
    keys = fed / "auditor" / "keys"
    lender = load_channel_keys(
        LENDER, f"{commands.partner_dir(LENDER)}/{LENDER}.key", str(keys), PARTIES
    )
    for party in PARTIES:
        if party == LENDER:
            continue
        genuine = load_channel_keys(
            party, f"{commands.partner_dir(party)}/{party}.key", str(keys), PARTIES
        )
        honest = signed_public_key(X25519PrivateKey.generate(), run_id=RUN_ID, keys=genuine)
        verified_public_key(honest, party=party, run_id=RUN_ID, keys=lender)  # control
        for key in _signing_keys(fed):
            forger = ChannelKeys(party, key, lender.trusted)
            forged = signed_public_key(X25519PrivateKey.generate(), run_id=RUN_ID, keys=forger)
            with pytest.raises(ChannelError, match="not signed by"):
                verified_public_key(forged, party=party, run_id=RUN_ID, keys=lender)


def _ledger(path: Path, key: Ed25519PrivateKey, partner: str) -> Path:
    plan = make_plans()["bank"]
    PartnerLedger(path, key, partner, RUN_ID).append_count(
        server_round=1,
        plan=plan,
        model_received_sha256=sha256_hex(b"global model 1"),
        epsilon_cumulative=composed_epsilon([plan.count_event], delta=plan.delta),
    )
    return path


def test_a_ledger_the_coordinator_signs_as_a_partner_fails_the_audit(
    federation, tmp_path: Path
) -> None:
    fed, commands = federation
    keys = fed / "auditor" / "keys"
    bank = load_public_key(keys / "bank.pub")
    genuine_key = load_channel_keys(
        "bank", f"{commands.partner_dir('bank')}/bank.key", str(keys), PARTIES
    ).signing_key
    assert public_key_bytes(genuine_key.public_key()) == public_key_bytes(bank)
    genuine = verify([_ledger(tmp_path / "genuine.jsonl", genuine_key, "bank")], keys)
    assert genuine.ok, genuine.findings
    for number, key in enumerate(_signing_keys(fed)):
        forged = verify([_ledger(tmp_path / f"forged-{number}.jsonl", key, "bank")], keys)
        assert {f.code for f in forged.findings} & SIGNATURE_FINDINGS, forged.findings
        assert not forged.ok
