"""`fedcredit federation init`: certificates that chain to the CA, keys Flower can load, 0600."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from typer.testing import CliRunner

from common.privacy.crypto import load_private_key, load_public_keys
from simulations.cli import app
from simulations.deploy.commands import FederationCommands, shell_line

RUNNER = CliRunner(env={"COLUMNS": "240"})


def _init(out: Path, *extra: str):
    return RUNNER.invoke(app, ["federation", "init", "--out", str(out), *extra])


def test_init_writes_a_verifiable_pki_and_private_keys_mode_0600(tmp_path: Path) -> None:
    out = tmp_path / "fed"
    result = _init(out, "--partners", "lender,bank", "--superlink-host", "10.1.2.3")
    assert result.exit_code == 0, result.output
    ca = x509.load_pem_x509_certificate((out / "ca" / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((out / "superlink" / "server.crt").read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("127.0.0.1")}
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    for partner in ("lender", "bank"):
        folder = out / "partners" / partner
        auth = load_ssh_private_key((folder / "supernode-auth").read_bytes(), None)
        assert isinstance(auth, ec.EllipticCurvePrivateKey)
        assert isinstance(auth.curve, ec.SECP384R1)
        public = load_ssh_public_key((folder / "supernode-auth.pub").read_bytes())
        assert public.public_numbers() == auth.public_key().public_numbers()
        load_private_key(folder / f"{partner}.key")
        assert (folder / "ca.crt").read_bytes() == (out / "ca" / "ca.crt").read_bytes()
        assert f"partner='{partner}'" in result.output
    secrets = [out / "ca" / "ca.key", out / "superlink" / "server.key",
               out / "coordinator" / "coordinator.key",
               *[out / "partners" / p / n for p in ("lender", "bank")
                 for n in ("supernode-auth", f"{p}.key")]]
    for path in secrets:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    auditor = {name for name, _ in load_public_keys(out / "auditor" / "keys").values()}
    assert auditor == {"lender", "bank", "coordinator"}
    assert "flower-superlink" in result.output and "flower-supernode" in result.output


def test_init_refuses_bad_names_and_an_existing_directory(tmp_path: Path) -> None:
    bad = _init(tmp_path / "a", "--partners", "lender,lender")
    assert bad.exit_code != 0 and "unique" in bad.output
    assert _init(tmp_path / "b", "--partners", "coordinator").exit_code != 0
    assert _init(tmp_path / "c").exit_code == 0
    again = _init(tmp_path / "c")
    assert again.exit_code != 0 and "refusing to overwrite" in again.output


def test_init_prints_the_commands_the_guide_and_the_demo_use(tmp_path: Path) -> None:
    """One source for every command: before, `federation init` printed its own variants (no
    --database, no connection name on register, no --port, no schema-path on `flwr run`)."""
    out = tmp_path / "fed"
    result = RUNNER.invoke(app, ["federation", "init", "--out", str(out), "--partners",
                                 "lender,bank", "--superlink-host", "10.1.2.3"],
                           env={"COLUMNS": "2000"})
    assert result.exit_code == 0, result.output
    commands = FederationCommands(pki=str(out), data="$DATA", work="$WORK",
                                  superlink_host="10.1.2.3", listen_host="0.0.0.0",
                                  schema="$DATA/schema.toml")
    printed = "\n".join(line.strip() for line in result.output.splitlines())
    expected = [commands.superlink(), commands.register("lender"), commands.register("bank"),
                commands.run(".", 3, 2), commands.supernode("lender", 9094, 3.0, 1e-5),
                commands.supernode("bank", 9094, 3.0, 1e-5),
                commands.audit(["lender", "bank"])]
    for args in expected:
        assert shell_line(args) in printed, shell_line(args)
    assert "schema-path='$DATA/schema.toml'" in shell_line(commands.run(".", 3, 2))
    for line in commands.flwr_config().splitlines():
        assert line.strip() in printed
