"""`fedcredit federation init`: every file each party of a real federation needs, and the
commands each party runs next. Private keys are written with mode 0600."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from common.outputs import RECEIPTS_FILE, deployed_ledger_name, deployed_odometer_name
from common.privacy.crypto import generate_signing_key, write_key_pair
from simulations.deploy.pki import (
    create_ca,
    create_server_certificate,
    write_certificate,
    write_supernode_auth_keys,
    write_tls_key,
)

SUPERLINK_PORT = 8000  # Flower 1.41 serves the Fleet, Control and Runtime APIs over HTTPS here
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class FederationLayout:
    """Where `init_federation` put everything."""

    root: Path
    partners: list[str]
    superlink_host: str

    @property
    def superlink(self) -> Path:
        """The coordinator's TLS material."""
        return self.root / "superlink"

    def partner_dir(self, partner: str) -> Path:
        """Everything one partner installs on its own machine."""
        return self.root / "partners" / partner

    @property
    def auditor_keys(self) -> Path:
        """Public keys an auditor needs for `fedcredit audit verify --keys`."""
        return self.root / "auditor" / "keys"

    def instructions(self) -> str:
        """The next command each party runs."""
        s, host = self.superlink, self.superlink_host
        lines = [f"Federation files written to {self.root}", "",
                 "Coordinator (SuperLink host):",
                 f"  flower-superlink --host 0.0.0.0 --port {SUPERLINK_PORT} --ssl-ca-certfile "
                 f"{s}/ca.crt --ssl-certfile {s}/server.crt --ssl-keyfile {s}/server.key "
                 "--enable-supernode-auth",
                 "  then register each partner's SuperNode key (a SuperNode whose key is not "
                 "registered is refused):"]
        lines += [f"  flwr supernode register {self.partner_dir(p)}/supernode-auth.pub"
                  for p in self.partners]
        lines += ["  receipts key for the ServerApp: --run-config "
                  f"\"receipts-path='{RECEIPTS_FILE}'"
                  f" receipt-key='{self.root}/coordinator/coordinator.key'\"", ""]
        for p in self.partners:
            d = self.partner_dir(p)
            lines += [f"Partner {p} (copy {d} to its machine; keep the .key files private):",
                      f"  flower-supernode --superlink {host}:{SUPERLINK_PORT} --root-certificates "
                      f"{d}/ca.crt --auth-supernode-private-key {d}/supernode-auth "
                      f"--node-config \"partner='{p}' epsilon=3.0 delta=1e-5 "
                      f"data-path='/path/to/{p}.csv' schema-path='/path/to/{p}.toml' "
                      f"ledger-path='{d}/{deployed_ledger_name(p)}' "
                      f"signing-key='{d}/{p}.key' "
                      f"odometer-path='{d}/{deployed_odometer_name(p)}' "
                      f"lifetime-epsilon=10.0\"", ""]
        lines += ["Auditor:",
                  f"  fedcredit audit verify LEDGER... --keys {self.auditor_keys} "
                  f"--receipts {RECEIPTS_FILE} --odometer ODOMETER...",
                  "", f"Keep {self.root}/ca/ca.key offline: it can issue certificates."]
        return "\n".join(lines)


def init_federation(root: Path, partners: list[str], superlink_host: str) -> FederationLayout:
    """Write the CA, SuperLink certificate, per-partner SuperNode auth and ledger keys, the
    coordinator's receipt key and the auditor's public keys under `root` (must not exist)."""
    if not partners:
        raise ValueError("at least one partner is needed (--partners)")
    bad = [p for p in partners if not _NAME.match(p) or p == "coordinator"]
    if bad or len(set(partners)) != len(partners):
        raise ValueError(f"partner names must be unique, lower-case [a-z0-9_-] and not "
                         f"'coordinator'; got {partners}")
    if not superlink_host:
        raise ValueError("--superlink-host must not be empty")
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} exists and is not empty; refusing to overwrite keys")
    layout = FederationLayout(root, partners, superlink_host)
    ca_key, ca_cert = create_ca("fedcredit federation CA")
    write_tls_key(root / "ca" / "ca.key", ca_key)
    server_key, server_cert = create_server_certificate(ca_key, ca_cert, superlink_host)
    for folder in [root / "ca", layout.superlink, root / "coordinator",
                   *map(layout.partner_dir, partners)]:
        write_certificate(folder / "ca.crt", ca_cert)
    write_certificate(layout.superlink / "server.crt", server_cert)
    write_tls_key(layout.superlink / "server.key", server_key)
    coordinator = generate_signing_key()
    write_key_pair(coordinator, root / "coordinator", "coordinator")
    layout.auditor_keys.mkdir(parents=True, exist_ok=True)
    (layout.auditor_keys / "coordinator.pub").write_bytes(
        (root / "coordinator" / "coordinator.pub").read_bytes())
    for partner in partners:
        folder = layout.partner_dir(partner)
        write_supernode_auth_keys(folder / "supernode-auth", folder / "supernode-auth.pub")
        write_key_pair(generate_signing_key(), folder, partner)
        (layout.auditor_keys / f"{partner}.pub").write_bytes(
            (folder / f"{partner}.pub").read_bytes())
    return layout
