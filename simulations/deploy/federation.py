"""`fedcredit federation init`: every file each party of a real federation needs, and the
commands each party runs next. Private keys are written with mode 0600."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from common.privacy.crypto import generate_signing_key, write_key_pair
from simulations.deploy.commands import FederationCommands, shell_line
from simulations.deploy.pki import (
    create_ca,
    create_server_certificate,
    write_certificate,
    write_supernode_auth_keys,
    write_tls_key,
)

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

    def commands(self) -> FederationCommands:
        """The deployment's command lines for this federation's files: the same ones
        docs/partners.md explains and the demo runs, with `$DATA` (each party's CSVs and
        schemas, and the shared `schema.toml`) and `$WORK` (the coordinator's working folder)
        left for each party to set."""
        return FederationCommands(pki=str(self.root), data="$DATA", work="$WORK",
                                  superlink_host=self.superlink_host, listen_host="0.0.0.0",
                                  schema="$DATA/schema.toml")

    def instructions(self) -> str:
        """The next commands each party runs (docs/partners.md explains each)."""
        c = self.commands()
        lines = [f"Federation files written to {self.root}", "",
                 "Set $DATA (your CSV and schema folder) and $WORK (the coordinator's working "
                 "folder) first; docs/partners.md explains every step.", "",
                 "Coordinator (SuperLink host):", "  " + shell_line(c.superlink()),
                 "  $FLWR_HOME/config.toml of its flwr CLI (write the real host and path):",
                 *(f"    {line}" for line in c.flwr_config().splitlines()),
                 "  admit each partner's SuperNode key (any other key is refused):",
                 *(f"  {shell_line(c.register(p))}" for p in self.partners),
                 "  when the SuperNodes are online, from the fedcredit checkout (the global model "
                 "is built for $DATA/schema.toml, the schema every partner's data follows):",
                 "  " + shell_line(c.run(".", 3, 2)), ""]
        for p in self.partners:
            lines += [f"Partner {p} (copy {c.partner_dir(p)} to its machine; keep the .key files "
                      f"private; set your own budget, lifetime budget and paths):",
                      f"  fedcredit schema check $DATA/{p}.csv $DATA/{p}.toml",
                      "  " + shell_line(c.supernode(p, 9094, 3.0, 1e-5)), ""]
        lines += ["Auditor:", "  " + shell_line(c.audit(self.partners)), "",
                  f"Keep {self.root}/ca/ca.key offline: it can issue certificates."]
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
