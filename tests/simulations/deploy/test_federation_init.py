"""`fedcredit federation init`: certificates that chain to the CA, built from the public keys
each partner made itself (`fedcredit keys new`), keys Flower can load, 0600; anything but a
partner's public key is refused."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from typer.testing import CliRunner

from common.privacy.crypto import fingerprint, load_private_key, load_public_keys
from simulations.cli import app
from simulations.deploy.appsign import app_spec
from simulations.deploy.commands import FederationCommands, shell_line, signed_app
from simulations.deploy.demo import _commands
from simulations.deploy.local import DemoOptions, LocalFederation

RUNNER = CliRunner(env={"COLUMNS": "240"})


def _partner_keys(homes: Path, *partners: str) -> list[str]:
    """Each partner makes its own keys in its own folder (`fedcredit keys new
    --supernode-auth`); returns init's options naming only their public keys."""
    options = []
    for partner in partners:
        made = RUNNER.invoke(app, ["keys", "new", "--partner", partner,
                                   "--out", str(homes / partner), "--supernode-auth"])
        assert made.exit_code == 0, made.output
        options += ["--partner-key", f"{partner}={homes / partner / partner}.pub",
                    "--supernode-key", f"{partner}={homes / partner}/supernode-auth.pub"]
    return options


def _init(out: Path, *extra: str):
    return RUNNER.invoke(app, ["federation", "init", "--out", str(out), *extra])


def test_keys_new_makes_the_partners_own_supernode_key_pair_mode_0600(tmp_path: Path) -> None:
    made = RUNNER.invoke(app, ["keys", "new", "--partner", "bank", "--out", str(tmp_path),
                               "--supernode-auth"])
    assert made.exit_code == 0, made.output
    auth = load_ssh_private_key((tmp_path / "supernode-auth").read_bytes(), None)
    assert isinstance(auth, ec.EllipticCurvePrivateKey)
    assert isinstance(auth.curve, ec.SECP384R1)
    public = load_ssh_public_key((tmp_path / "supernode-auth.pub").read_bytes())
    assert public.public_numbers() == auth.public_key().public_numbers()
    load_private_key(tmp_path / "bank.key")
    for secret in ("bank.key", "supernode-auth"):
        assert stat.S_IMODE((tmp_path / secret).stat().st_mode) == 0o600
    (tmp_path / "bank.key").unlink()  # a lost ledger key: the existing auth key is kept
    again = RUNNER.invoke(app, ["keys", "new", "--partner", "bank", "--out", str(tmp_path),
                                "--supernode-auth"])
    assert again.exit_code == 2 and "refusing to overwrite" in again.output
    assert not (tmp_path / "bank.key").exists()


def test_init_writes_a_verifiable_pki_from_the_partners_public_keys(tmp_path: Path) -> None:
    out, homes = tmp_path / "fed", tmp_path / "homes"
    result = _init(out, "--superlink-host", "10.1.2.3", *_partner_keys(homes, "lender", "bank"))
    assert result.exit_code == 0, result.output
    ca = x509.load_pem_x509_certificate((out / "ca" / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((out / "superlink" / "server.crt").read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("127.0.0.1")}
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    auditor = load_public_keys(out / "auditor" / "keys")
    assert {name for name, _ in auditor.values()} == {"lender", "bank", "coordinator"}
    for partner in ("lender", "bank"):
        folder, home = out / "partners" / partner, homes / partner
        assert sorted(p.name for p in folder.iterdir()) == ["ca.crt", "supernode-auth.pub"]
        registered = load_ssh_public_key((folder / "supernode-auth.pub").read_bytes())
        own = load_ssh_private_key((home / "supernode-auth").read_bytes(), None)
        assert registered.public_numbers() == own.public_key().public_numbers()
        ledger = fingerprint(load_private_key(home / f"{partner}.key").public_key())
        assert auditor[ledger][0] == partner
        assert (folder / "ca.crt").read_bytes() == (out / "ca" / "ca.crt").read_bytes()
        assert f"partner='{partner}'" in result.output
        assert ledger in result.output  # the fingerprint the partner confirms
    secrets = [out / "ca" / "ca.key", out / "superlink" / "server.key",
               out / "coordinator" / "coordinator.key"]
    for path in secrets:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert "flower-superlink" in result.output and "flower-supernode" in result.output


def test_init_refuses_bad_names_and_an_existing_directory(tmp_path: Path) -> None:
    keys = _partner_keys(tmp_path / "homes", "lender")
    twice = _init(tmp_path / "a", *keys, *keys)
    assert twice.exit_code == 2 and "names 'lender' twice" in twice.output
    named = [k.replace("lender=", "coordinator=") for k in keys]
    assert _init(tmp_path / "b", *named).exit_code == 2
    assert _init(tmp_path / "c", *keys).exit_code == 0
    again = _init(tmp_path / "c", *keys)
    assert again.exit_code == 2 and "refusing to overwrite" in again.output


def _refused(out: Path, *args: str) -> str:
    result = _init(out, *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not out.exists()
    return " ".join(result.output.replace("│", "").split())


def test_init_refuses_a_private_missing_or_malformed_key_and_writes_nothing(
        tmp_path: Path) -> None:
    homes = tmp_path / "homes"
    _partner_keys(homes, "bank", "lender")
    bank, lender, out = homes / "bank", homes / "lender", tmp_path / "fed"
    (tmp_path / "garbage.pub").write_text("not a key\n")

    def keys(ledger: Path, node: Path) -> list[str]:
        return ["--partner-key", f"bank={ledger}", "--supernode-key", f"bank={node}"]

    private = _refused(out, *keys(bank / "bank.key", bank / "supernode-auth.pub"))
    assert "--partner-key bank" in private and "holds a PRIVATE key" in private
    private = _refused(out, *keys(bank / "bank.pub", bank / "supernode-auth"))
    assert "--supernode-key bank" in private and "holds a PRIVATE key" in private
    assert "cannot read" in _refused(out, *keys(bank / "nope.pub", bank / "supernode-auth.pub"))
    assert "is not a PEM public key" in _refused(
        out, *keys(tmp_path / "garbage.pub", bank / "supernode-auth.pub"))
    assert "is not a PEM public key" in _refused(  # the two keys swapped
        out, *keys(bank / "supernode-auth.pub", bank / "bank.pub"))
    assert "is not an OpenSSH public key" in _refused(
        out, *keys(bank / "bank.pub", tmp_path / "garbage.pub"))
    assert "no --supernode-key for bank" in _refused(
        out, "--partner-key", f"bank={bank / 'bank.pub'}")
    assert "at least one partner" in _refused(out)
    assert "takes NAME=PATH" in _refused(out, "--partner-key", str(bank / "bank.pub"))
    shared = _refused(out, *keys(bank / "bank.pub", bank / "supernode-auth.pub"),
                      "--partner-key", f"lender={bank / 'bank.pub'}",
                      "--supernode-key", f"lender={lender / 'supernode-auth.pub'}")
    assert "bank and lender hand over the same public key" in shared


def test_init_prints_the_commands_the_guide_and_the_demo_use(tmp_path: Path) -> None:
    """One source for every command: before, `federation init` printed its own variants (no
    --database, no connection name on register, no --port, no schema-path on `flwr run`)."""
    out = tmp_path / "fed"
    keys = _partner_keys(tmp_path / "homes", "lender", "bank")
    result = RUNNER.invoke(app, ["federation", "init", "--out", str(out), *keys,
                                 "--superlink-host", "10.1.2.3"], env={"COLUMNS": "2000"})
    assert result.exit_code == 0, result.output
    commands = FederationCommands(pki=str(out), data="$DATA", work="$WORK",
                                  superlink_host="10.1.2.3", listen_host="0.0.0.0",
                                  partners="$PARTNER_HOME", schema="$DATA/schema.toml")
    printed = "\n".join(line.strip() for line in result.output.splitlines())
    expected = [commands.keys_new("lender"), commands.keys_new("bank"),
                commands.superlink(), commands.register("lender"), commands.register("bank"),
                commands.run(signed_app(), 3, 2), commands.supernode("lender", 9094, 3.0, 1e-5),
                commands.supernode("bank", 9094, 3.0, 1e-5),
                commands.audit(["lender", "bank"]), commands.app_build("."),
                commands.app_serve(["lender", "bank"], "$RECEIVED"), commands.app_key("bank"),
                commands.app_trust("bank"), commands.app_sign("bank", "$PARTNER_HOME/bank/"
                                                              "fedcredit.fab")]
    for args in expected:
        assert shell_line(args) in printed, shell_line(args)
    assert "schema-path='$DATA/schema.toml'" in shell_line(commands.run(signed_app(), 3, 2))
    assert signed_app() == app_spec(Path(__file__).parents[3])  # the bundle `app build` makes
    for line in commands.flwr_config().splitlines():
        assert line.strip() in printed


def test_the_demo_plays_each_partner_making_its_own_keys(tmp_path: Path) -> None:
    """The one-machine demo runs the same ceremony: the partners' keys are made in their own
    folders, and its `pki/` (what `federation init` wrote) holds none of them."""
    fed = LocalFederation(tmp_path / "demo", DemoOptions(superlink_port=19200,
                                                         supernode_port=19201))
    fed.make_keys()
    coordinator = {p.relative_to(fed.pki).as_posix() for p in fed.pki.rglob("*")
                   if p.is_file() and b"PRIVATE KEY" in p.read_bytes()}
    assert coordinator == {"ca/ca.key", "superlink/server.key", "coordinator/coordinator.key"}
    auditor = load_public_keys(fed.pki_layout.auditor_keys)
    for partner in fed.options.partners:
        home = fed.partner_homes / partner
        assert sorted(p.name for p in home.iterdir()) == sorted(
            ["ca.crt", f"{partner}.key", f"{partner}.pub", "supernode-auth",
             "supernode-auth.pub"])
        own = fingerprint(load_private_key(home / f"{partner}.key").public_key())
        assert auditor[own][0] == partner
        args = fed.supernode_command(partner)
        assert args[args.index("--auth-supernode-private-key") + 1] == str(
            home / "supernode-auth")
    assert _commands(fed)[:4] == [shell_line(fed.commands.keys_new(p))
                                  for p in fed.options.partners] + [
        shell_line(fed.commands.init(fed.options.partners))]
