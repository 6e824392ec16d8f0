"""Signed app bundles against Flower 1.41's own code, in process: the registry answers the
SuperLink's Hub request (`_get_remote_fab`, real HTTP on loopback) and the SuperNode's own
check (`_try_obtain_trusted_entities`, `_verify_fab`) accepts only what the partner's key signed.
The e2e deploy test shows real SuperNodes running the signed bundle and refusing an unsigned one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.supercore.fab import Fab
from flwr.superlink.servicer.control import control_handlers
from flwr.supernode.cli.flower_supernode import (
    _try_obtain_trusted_entities,
    _validate_public_keys_ed25519,
)
from flwr.supernode.start_client_internal import _verify_fab
from typer.testing import CliRunner

from simulations.cli import app
from simulations.deploy.appsign import (
    AppRegistry,
    AppSigningError,
    app_spec,
    build_fab,
    fab_info,
    new_signing_key,
    sign_fab,
    trusted_entities_yaml,
    verify_signature,
)
from simulations.deploy.commands import FederationCommands

PROJECT = Path(__file__).parents[3]


@pytest.fixture(scope="module")
def fab():  # noqa: ANN201 - a FabInfo
    return build_fab(PROJECT)


def _supernode_accepts(fab_bytes: bytes, verifications: dict, trusted: Path) -> bool:
    """What a `flower-supernode --trusted-entities trusted` decides for this FAB."""
    entities = _try_obtain_trusted_entities(trusted)
    _validate_public_keys_ed25519(entities)
    if not verifications.get("valid_license"):
        return False  # "App verification is not supported by the connected SuperLink"
    return _verify_fab(Fab("", fab_bytes, verifications), entities)


def test_the_bundle_is_reproducible_and_named_by_its_spec(fab) -> None:
    assert build_fab(PROJECT).sha256 == fab.sha256
    assert fab.spec == app_spec(PROJECT) == "@fedcredit/fedcredit==0.1.0"
    with pytest.raises(AppSigningError, match="not a Flower app bundle"):
        fab_info(b"not a zip")


def test_supernode_accepts_only_its_partners_signature(fab, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    lender = new_signing_key(tmp_path / "lender", "lender")
    new_signing_key(tmp_path / "coordinator", "coordinator")
    trusted = tmp_path / "trusted-entities.yaml"
    trusted.write_text(trusted_entities_yaml({"lender": lender}))
    signed = sign_fab(fab, tmp_path / "lender", "lender")
    assert verify_signature(fab, signed, lender)

    def fetched(signatures: list[dict]) -> tuple[bytes, dict]:
        registry = AppRegistry(fab, signatures).start()
        try:
            monkeypatch.setattr(control_handlers, "FLWR_SUPERGRID_API_URL", registry.url)
            content, verifications, _ = control_handlers._get_remote_fab(None, fab.spec)
        finally:
            registry.close()
        assert content == fab.content
        return content, verifications

    # The partner's own signature, served by the registry, fetched by the SuperLink: runs.
    assert _supernode_accepts(*fetched([signed]), trusted)
    # The coordinator's key, under its own name or the partner's: refused.
    by_coordinator = sign_fab(fab, tmp_path / "coordinator", "coordinator")
    assert not _supernode_accepts(*fetched([by_coordinator]), trusted)
    impostor = {**by_coordinator, "public_key_id": "lender"}
    assert not _supernode_accepts(*fetched([impostor]), trusted)
    # No signature at all (the registry answers with an empty list): refused.
    assert not _supernode_accepts(*fetched([]), trusted)
    # The partner's signature on another bundle (the coordinator's changed code): refused.
    _, verifications = fetched([signed])
    assert not _supernode_accepts(fab.content + b"\0", verifications, trusted)
    # A bundle sent as a path (`flwr run <dir>`) carries no verifications at all: refused.
    assert not _supernode_accepts(fab.content, {}, trusted)


def test_registry_serves_only_its_bundle_with_matching_signatures(fab, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    new_signing_key(tmp_path / "k", "bank")
    stale = {**sign_fab(fab, tmp_path / "k", "bank"), "fab_sha256": "0" * 64}
    with pytest.raises(AppSigningError, match="bank's signature is for bundle 000000000000"):
        AppRegistry(fab, [stale])
    registry = AppRegistry(fab, []).start()
    try:
        monkeypatch.setattr(control_handlers, "FLWR_SUPERGRID_API_URL", registry.url)
        with pytest.raises(Exception, match="Failed to request FAB download link") as refused:
            control_handlers._get_remote_fab(None, "@fedcredit/other==0.1.0")
        assert "not found" in str(refused.value.__cause__)
    finally:
        registry.close()


def test_app_commands_make_a_working_key_trust_file_and_signature(fab, tmp_path: Path) -> None:
    """The command lines the guide and the demo use, run through the CLI."""
    runner = CliRunner()
    commands = FederationCommands(pki=str(tmp_path / "pki"), data="", work=str(tmp_path),
                                  partners=str(tmp_path / "partners"))
    for args in (commands.app_build(str(PROJECT)), commands.app_key("bank"),
                 commands.app_trust("bank"), commands.app_sign("bank")):
        done = runner.invoke(app, args[1:])
        assert done.exit_code == 0, done.output
    folder = Path(commands.partner_dir("bank"))
    assert (folder / "app-signing").stat().st_mode & 0o777 == 0o600
    record = json.loads((folder / "fab-signature.json").read_text())
    assert record["fab_sha256"] == fab.sha256 and record["app"] == fab.spec
    verifications = control_handlers._format_verification([
        {k: record[k] for k in ("public_key_id", "signature", "signed_at")}])
    assert _supernode_accepts(fab.content, verifications, folder / "trusted-entities.yaml")
    serve = commands.app_serve(["bank"])
    assert serve[serve.index("--signature") + 1] == str(folder / "fab-signature.json")
    assert "FLWR_SUPERGRID_API_URL=http://127.0.0.1:8090" in commands.superlink()


@pytest.mark.parametrize("args, message", [
    (["app", "key", "--out", "{tmp}/k", "--key-id", "a b"], "invalid key id"),
    (["app", "trust", "--entity", "bank", "--out", "{tmp}/t.yaml"], "wants NAME=PUB"),
    (["app", "trust", "--entity", "bank={tmp}/missing.pub", "--out", "{tmp}/t.yaml"],
     "cannot read"),
    (["app", "sign", "{tmp}/missing.fab", "--key", "{tmp}/k", "--key-id", "bank", "--out",
      "{tmp}/s.json"], "cannot read"),
    (["app", "build", "--app", "{tmp}", "--out", "{tmp}/x.fab"], "no pyproject.toml"),
    (["app", "serve", "{tmp}/missing.fab", "--signature", "{tmp}/s.json"], "cannot read"),
])
def test_app_commands_explain_bad_input_without_a_traceback(args: list[str], message: str,
                                                            tmp_path: Path) -> None:
    done = CliRunner().invoke(app, [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert done.exit_code == 2, done.output
    text = " ".join(done.output.replace("│", " ").split())  # the error box wraps long paths
    assert message in text and "Traceback" not in text
