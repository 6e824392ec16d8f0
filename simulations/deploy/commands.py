"""Every command line of a real deployment: SuperLink, SuperNodes, the signed app bundle,
`flwr run`, the audit.

The local demo (`simulations.deploy.local`), the tests and docs/partners.md use the same ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from common.outputs import (
    COORDINATOR_RUN_DIR,
    RECEIPTS_FILE,
    SUPERLINK_DB,
    deployed_ledger_name,
    deployed_odometer_name,
)

FEDERATION = "fedcredit"  # the SuperLink connection's name in $FLWR_HOME/config.toml
DEMO_LIFETIME_EPSILON = 10.0
"""Lifetime budget of a demo partner's data set (its odometer spans the demo's runs)."""
# Flower's own waits, set for a federation whose rounds take seconds (every process inherits them):
# the SuperExec that starts a ClientApp or ServerApp process for each task polls for tasks every
# second by default; the `flwr` CLI checks for updates in a thread each time it runs.
LATENCY_ENV = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1", "FLWR_DISABLE_UPDATE_CHECK": "1"}
HORIZONTAL, VERTICAL = "horizontal", "vertical"
FAB_FILE = "fedcredit.fab"  # the app bundle the coordinator builds and every partner signs
APP_KEY = "app-signing"  # a partner's Ed25519 app-signing key (and .pub) in its own folder
FAB_SIGNATURE = "fab-signature.json"  # a partner's signature of the bundle it reviewed
TRUSTED_ENTITIES = "trusted-entities.yaml"  # the keys a partner's SuperNode accepts a bundle by
APP_ID = "@fedcredit/fedcredit"  # `@<[tool.flwr.app] publisher>/<[project] name>`


def signed_app() -> str:
    """`flwr run`'s name for the signed bundle of the installed fedcredit release
    (`@fedcredit/fedcredit==x.y.z`); a path instead would send an unsigned bundle."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{APP_ID}=={version('fedcredit')}"
    except PackageNotFoundError:
        return f"{APP_ID}==<version>"
VERTICAL_ID_COLUMN = "customer_id"
"""The customer-ID column of a vertical party's table at `<data>/<party>.csv` (unless its
`PartyTable` names another)."""


@dataclass(frozen=True)
class PartyTable:
    """One party's own table as its node config names it: its CSV (`data-path`), its schema
    (`schema-path`) and, for a vertical party, its customer-ID column (`id-column`)."""

    data: str
    schema: str
    id_column: str = ""


@dataclass(frozen=True)
class FederationCommands:
    """Every command line of a deployment, from the paths (or shell variables) of its files.

    `pki` is the `fedcredit federation init` directory as the coordinator keeps it (no partner's
    private key is ever in it), `partners` where each partner keeps its own folder `<partner>/`
    (the keys it made, the CA certificate, its ledger) on its own machine,
    `data` holds `<partner>.csv/.toml`, `work` the coordinator's run directory, `schema` (when
    set) the schema every partner's data follows, which the coordinator builds the model for
    (default: the bundled scenario's). The SuperLink
    listens on `listen_host` and partners reach it at `superlink_host`.

    `mode` "vertical" (docs/vertical.md): the parties hold different columns of the same
    customers; each node config then also names the party's customer-ID column and the
    federation's public keys (`federation-keys`, which check the parties' channel keys), the run
    config says `mode='vertical'`, and the auditor checks the ledgers alone (a vertical run has
    no coordinator receipts and no lifetime odometer yet).
    """

    pki: str
    data: str
    work: str
    partners: str
    superlink_host: str = "127.0.0.1"
    superlink_port: int = 8000
    listen_host: str = "127.0.0.1"
    schema: str = ""
    mode: str = HORIZONTAL
    registry_port: int = 8090

    @property
    def vertical(self) -> bool:
        """Whether the parties hold columns of the same customers (vertical mode)."""
        return self.mode == VERTICAL

    @property
    def federation_keys(self) -> str:
        """Every party's ledger public key `<party>.pub` (a vertical party's `federation-keys`:
        the same public keys the auditor holds)."""
        return f"{self.pki}/auditor/keys"

    def partner_dir(self, partner: str) -> str:
        """A partner's own folder: the keys it made (`keys_new`), the CA certificate the
        coordinator sent it, its ledger and odometer."""
        return f"{self.partners}/{partner}"

    def keys_new(self, partner: str) -> list[str]:
        """A partner makes its own keys in its own folder: its ledger key pair and its
        SuperNode authentication pair. It hands over only `<partner>.pub` and
        `supernode-auth.pub`."""
        return ["fedcredit", "keys", "new", "--partner", partner,
                "--out", self.partner_dir(partner), "--supernode-auth"]

    def public_keys(self, partners: Sequence[str], received: str = ""
                    ) -> tuple[list[str], list[str]]:
        """`init`'s `--partner-key` and `--supernode-key` values (NAME=PATH): the public keys
        each partner handed over, under `received/<partner>/` (default: the partners' own
        folders, which only the one-machine demo can read)."""
        folders = {p: f"{received}/{p}" if received else self.partner_dir(p) for p in partners}
        return ([f"{p}={folders[p]}/{p}.pub" for p in partners],
                [f"{p}={folders[p]}/supernode-auth.pub" for p in partners])

    def init(self, partners: Sequence[str], received: str = "") -> list[str]:
        """The coordinator's `fedcredit federation init` from the partners' public keys alone
        (see `public_keys`)."""
        ledger, supernode = self.public_keys(partners, received)
        args = ["fedcredit", "federation", "init", "--out", self.pki,
                "--superlink-host", self.superlink_host]
        for key, node_key in zip(ledger, supernode, strict=True):
            args += ["--partner-key", key, "--supernode-key", node_key]
        return args

    @property
    def superlink_address(self) -> str:
        """host:port the SuperNodes and the `flwr` CLI connect to."""
        return f"{self.superlink_host}:{self.superlink_port}"

    @property
    def fab(self) -> str:
        """The app bundle the coordinator builds, sends to every partner and serves."""
        return f"{self.work}/{FAB_FILE}"

    def app_build(self, app: str) -> list[str]:
        """Bundle the Flower App at `app` (as `flwr build` does, reproducibly: a partner who
        builds the same reviewed source gets the same SHA-256)."""
        return ["fedcredit", "app", "build", "--app", app, "--out", self.fab]

    def app_key(self, partner: str) -> list[str]:
        """A partner makes its own Ed25519 app-signing key (`app-signing`, `.pub`)."""
        return ["fedcredit", "app", "key", "--key-id", partner,
                "--out", f"{self.partner_dir(partner)}/{APP_KEY}"]

    def app_trust(self, partner: str) -> list[str]:
        """A partner's `--trusted-entities` file: here its own key alone, so its SuperNode runs
        only a bundle it signed itself (add `--entity NAME=PUB` for each key it also trusts)."""
        d = self.partner_dir(partner)
        return ["fedcredit", "app", "trust", "--entity", f"{partner}={d}/{APP_KEY}.pub",
                "--out", f"{d}/{TRUSTED_ENTITIES}"]

    def app_sign(self, partner: str, fab: str = "") -> list[str]:
        """A partner signs the bundle it reviewed (`fab`, default the coordinator's path);
        it sends back only the signature."""
        d = self.partner_dir(partner)
        return ["fedcredit", "app", "sign", fab or self.fab, "--key", f"{d}/{APP_KEY}",
                "--key-id", partner, "--out", f"{d}/{FAB_SIGNATURE}"]

    def app_serve(self, partners: Sequence[str], received: str = "") -> list[str]:
        """The coordinator serves the bundle and the partners' signatures (`received/<partner>/`,
        default their own folders) to its SuperLink on loopback."""
        args = ["fedcredit", "app", "serve", self.fab, "--port", str(self.registry_port)]
        for p in partners:
            folder = f"{received}/{p}" if received else self.partner_dir(p)
            args += ["--signature", f"{folder}/{FAB_SIGNATURE}"]
        return args

    def superlink(self) -> list[str]:
        """The coordinator's SuperLink: HTTPS with the federation's certificate, node auth on,
        app bundles (with their signatures) fetched from the loopback registry (`app_serve`)
        instead of Flower Hub."""
        s = f"{self.pki}/superlink"
        return ["env", f"FLWR_SUPERGRID_API_URL=http://127.0.0.1:{self.registry_port}",
                "flower-superlink", "--ssl-ca-certfile", f"{s}/ca.crt",
                "--ssl-certfile", f"{s}/server.crt", "--ssl-keyfile", f"{s}/server.key",
                "--enable-supernode-auth", "--database", f"{self.work}/{SUPERLINK_DB}",
                "--host", self.listen_host, "--port", str(self.superlink_port),
                "--disable-runtime-dependency-installation"]

    def flwr_config(self) -> str:
        """$FLWR_HOME/config.toml of the coordinator's `flwr` CLI."""
        return (f'[superlink]\ndefault = "{FEDERATION}"\n\n[superlink.{FEDERATION}]\n'
                f'address = "{self.superlink_address}"\n'
                f'root-certificates = "{self.pki}/superlink/ca.crt"\n')

    def register(self, partner: str) -> list[str]:
        """Admit one partner's SuperNode key (any other key is refused)."""
        return ["flwr", "supernode", "register",
                f"{self.pki}/partners/{partner}/supernode-auth.pub", FEDERATION]

    def node_config(self, partner: str, epsilon: float, delta: float,
                    table: PartyTable | None = None, extra: str = "") -> str:
        """The partner's own settings: who it is, its data (`table`, default
        `<data>/<partner>.csv` and `.toml`), its budget, its ledger, and its lifetime odometer
        (`DEMO_LIFETIME_EPSILON`, or the run budget if larger) or, vertical, its ID column and
        the federation's public keys; `extra` appends further node config keys."""
        d = self.partner_dir(partner)
        table = table or PartyTable(f"{self.data}/{partner}.csv", f"{self.data}/{partner}.toml",
                                    VERTICAL_ID_COLUMN if self.vertical else "")
        text = (f"partner='{partner}' epsilon={epsilon!r} delta={delta!r} "
                f"data-path='{table.data}' schema-path='{table.schema}' "
                + (f"id-column='{table.id_column}' " if table.id_column else "")
                + f"ledger-path='{d}/{deployed_ledger_name(partner)}' "
                f"signing-key='{d}/{partner}.key' ")
        if self.vertical:
            text += f"federation-keys='{self.federation_keys}'"
        else:
            lifetime = max(DEMO_LIFETIME_EPSILON, epsilon)
            text += (f"odometer-path='{d}/{deployed_odometer_name(partner)}' "
                     f"lifetime-epsilon={lifetime!r}")
        return f"{text} {extra}".strip()

    def supernode(self, partner: str, port: int, epsilon: float, delta: float,
                  table: PartyTable | None = None, extra: str = "") -> list[str]:
        """A partner's SuperNode: trusts only the federation CA, signs in with its auth key,
        runs only an app bundle signed by a key in its own trusted-entities file."""
        d = self.partner_dir(partner)
        return ["flower-supernode", "--superlink", self.superlink_address,
                "--root-certificates", f"{d}/ca.crt",
                "--auth-supernode-private-key", f"{d}/supernode-auth",
                "--trusted-entities", f"{d}/{TRUSTED_ENTITIES}",
                "--port", str(port), "--node-config",
                self.node_config(partner, epsilon, delta, table, extra)]

    def run_config(self, rounds: int, min_partners: int, extra: str = "") -> str:
        """The coordinator's run config: rounds, outputs, signed receipts; vertical: the mode
        and the outputs (a vertical run has no rounds and no receipts)."""
        run = f"{self.work}/{COORDINATOR_RUN_DIR}"
        if self.vertical:
            return f"mode='{VERTICAL}' out-dir='{run}' {extra}".strip()
        text = (f"num-server-rounds={rounds} min-partners={min_partners} "
                f"out-dir='{run}' receipts-path='{run}/{RECEIPTS_FILE}' "
                f"receipt-key='{self.pki}/coordinator/coordinator.key'")
        if self.schema:
            text += f" schema-path='{self.schema}'"
        return f"{text} {extra}".strip()

    def run(self, app: str, rounds: int, min_partners: int, extra: str = "") -> list[str]:
        """Start the federated run on the SuperLink and stream its log until it ends. `app` is
        the signed bundle's spec (`@fedcredit/fedcredit==x.y.z`, fetched from the registry with
        its signatures); a path instead sends an unsigned bundle every SuperNode refuses."""
        return ["flwr", "run", app, FEDERATION, "--stream",
                "--run-config", self.run_config(rounds, min_partners, extra)]

    def audit(self, partners: Sequence[str]) -> list[str]:
        """The auditor's check of every ledger against the coordinator's receipts and the
        partners' lifetime odometers (vertical: the ledgers alone)."""
        verify = ["fedcredit", "audit", "verify",
                  *(f"{self.partner_dir(p)}/{deployed_ledger_name(p)}" for p in partners),
                  "--keys", f"{self.pki}/auditor/keys"]
        if self.vertical:
            return verify
        return [*verify, "--receipts", f"{self.work}/{COORDINATOR_RUN_DIR}/{RECEIPTS_FILE}",
                *(arg for p in partners for arg in (
                    "--odometer", f"{self.partner_dir(p)}/{deployed_odometer_name(p)}"))]


def shell_line(args: Sequence[str]) -> str:
    """A command as a person types it: arguments with spaces or quotes in double quotes (so
    `$VARIABLES` in docs still expand)."""
    return " ".join(f'"{a}"' if any(c in a for c in " '") else a for a in args)
