"""`fedcredit federation init`: the coordinator's own files of a real federation (CA, SuperLink
certificate, receipt key) and the public-key directory of everyone, from the public keys the
partners made themselves (`simulations.deploy.keys`), and the commands each party runs next.
It never writes a partner's private key. Private keys are written with mode 0600."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.privacy.crypto import generate_signing_key, write_key_pair
from simulations.deploy.commands import FAB_FILE, FederationCommands, shell_line, signed_app
from simulations.deploy.keys import (
    NAME,
    SUPERNODE_AUTH,
    PartnerPublicKeys,
    load_ledger_public_key,
    load_supernode_public_key,
)
from simulations.deploy.pki import (
    create_ca,
    create_server_certificate,
    write_certificate,
    write_tls_key,
)


@dataclass(frozen=True)
class FederationLayout:
    """Where `init_federation` put everything (all of it the coordinator's)."""

    root: Path
    partners: list[str]
    superlink_host: str

    @property
    def superlink(self) -> Path:
        """The coordinator's TLS material."""
        return self.root / "superlink"

    def partner_files(self, partner: str) -> Path:
        """What the coordinator keeps for one partner, all of it public: the CA certificate it
        sends the partner and the partner's SuperNode public key it registers."""
        return self.root / "partners" / partner

    @property
    def auditor_keys(self) -> Path:
        """Every party's public key: the auditor's `fedcredit audit verify --keys`, and a
        vertical party's `federation-keys`."""
        return self.root / "auditor" / "keys"

    def fingerprints(self, partner: str) -> str:
        """The fingerprints of the public keys registered for `partner`, which it confirms
        out of band: whoever registered a key of its own under the partner's name could sign
        as the partner."""
        return PartnerPublicKeys(
            load_ledger_public_key(self.auditor_keys / f"{partner}.pub"),
            load_supernode_public_key(self.partner_files(partner) / f"{SUPERNODE_AUTH}.pub"),
        ).fingerprints()

    def commands(self) -> FederationCommands:
        """The deployment's command lines for this federation's files: the same ones
        docs/partners.md explains and the demo runs, with `$DATA` (each party's CSVs and
        schemas, and the shared `schema.toml`), `$WORK` (the coordinator's working folder) and
        `$PARTNER_HOME` (where each partner keeps its own folder) left for each party to set."""
        return FederationCommands(pki=str(self.root), data="$DATA", work="$WORK",
                                  superlink_host=self.superlink_host, listen_host="0.0.0.0",
                                  partners="$PARTNER_HOME", schema="$DATA/schema.toml")

    def instructions(self) -> str:
        """The next commands each party runs (docs/partners.md explains each)."""
        c = self.commands()
        lines = [f"Federation files written to {self.root} (no partner's private key: each "
                 f"partner made its own)", "",
                 "Set $DATA (your CSV and schema folder), $PARTNER_HOME (where a partner keeps "
                 "its own folder) and $WORK (the coordinator's working folder) first; "
                 "docs/partners.md explains every step.", "",
                 "Coordinator (SuperLink host): build the app bundle and send it to every "
                 "partner, serve it with the signatures they send back (leave it running), "
                 "start the SuperLink:",
                 "  " + shell_line(c.app_build(".")),
                 "  " + shell_line(c.app_serve(self.partners, "$RECEIVED")),
                 "  " + shell_line(c.superlink()),
                 "  $FLWR_HOME/config.toml of its flwr CLI (write the real host and path):",
                 *(f"    {line}" for line in c.flwr_config().splitlines()),
                 "  admit each partner's SuperNode key (any other key is refused):",
                 *(f"  {shell_line(c.register(p))}" for p in self.partners),
                 "  when the SuperNodes are online, run the signed bundle (the global model is "
                 "built for $DATA/schema.toml, the schema every partner's data follows):",
                 "  " + shell_line(c.run(signed_app(), 3, 2)), ""]
        for p in self.partners:
            lines += [f"Partner {p}: confirm with the coordinator, out of band, that it "
                      f"registered your keys: {self.fingerprints(p)}.",
                      f"  Copy {self.partner_files(p)}/ca.crt into {c.partner_dir(p)}/ (beside "
                      f"the keys you made there with `{shell_line(c.keys_new(p))}`); set your "
                      f"own budget, lifetime budget and paths:",
                      f"  fedcredit schema check $DATA/{p}.csv $DATA/{p}.toml",
                      "  your app-signing key and the keys your SuperNode accepts a bundle from; "
                      "review the bundle the coordinator sends you, sign it, send back the "
                      "signature:",
                      *(f"  {shell_line(cmd)}" for cmd in (
                          c.app_key(p), c.app_trust(p),
                          c.app_sign(p, f"{c.partner_dir(p)}/{FAB_FILE}"))),
                      "  " + shell_line(c.supernode(p, 9094, 3.0, 1e-5)), ""]
        lines += ["Auditor (with a copy of " + str(self.auditor_keys) + ", whose fingerprints "
                  "it confirms with each party):", "  " + shell_line(c.audit(self.partners)),
                  "", f"Keep {self.root}/ca/ca.key offline: it can issue certificates."]
        return "\n".join(lines)


def init_federation(root: Path, partners: Mapping[str, PartnerPublicKeys],
                    superlink_host: str) -> FederationLayout:
    """Write the CA, the SuperLink certificate, the coordinator's receipt key, each partner's
    CA certificate and registered SuperNode public key, and every party's public key for the
    auditor under `root` (must not exist or be empty). `partners` are the public keys each
    partner made on its own machine: no partner's private key is ever written here."""
    names = list(partners)
    if not names:
        raise ValueError("at least one partner is needed (--partner-key, --supernode-key)")
    bad = [p for p in names if not NAME.match(p) or p == "coordinator"]
    if bad:
        raise ValueError(f"partner names must be lower-case [a-z0-9_-] and not 'coordinator'; "
                         f"got {bad}")
    if not superlink_host:
        raise ValueError("--superlink-host must not be empty")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(f"{root} exists and is not an empty directory; refusing to overwrite "
                         f"keys")
    layout = FederationLayout(root, names, superlink_host)
    ca_key, ca_cert = create_ca("fedcredit federation CA")
    write_tls_key(root / "ca" / "ca.key", ca_key)
    server_key, server_cert = create_server_certificate(ca_key, ca_cert, superlink_host)
    for folder in [root / "ca", layout.superlink, root / "coordinator",
                   *map(layout.partner_files, names)]:
        write_certificate(folder / "ca.crt", ca_cert)
    write_certificate(layout.superlink / "server.crt", server_cert)
    write_tls_key(layout.superlink / "server.key", server_key)
    coordinator = generate_signing_key()
    write_key_pair(coordinator, root / "coordinator", "coordinator")
    layout.auditor_keys.mkdir(parents=True, exist_ok=True)
    (layout.auditor_keys / "coordinator.pub").write_bytes(
        (root / "coordinator" / "coordinator.pub").read_bytes())
    for name, keys in partners.items():
        (layout.partner_files(name) / f"{SUPERNODE_AUTH}.pub").write_bytes(
            keys.supernode_openssh())
        (layout.auditor_keys / f"{name}.pub").write_bytes(keys.ledger_pem())
    return layout
