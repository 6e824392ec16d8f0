"""A real Flower deployment on loopback: `flower-superlink` with TLS and SuperNode
authentication, one `flower-supernode` per partner with its own node config, `flwr run`.

`LocalFederation` drives the processes (readiness waits, logs, teardown without orphans);
`simulations.deploy.commands` builds every command line, `simulations.deploy.demo` runs the demo.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common.data.scenarios import LENDER, PARTIES, export_partner_files, get_scenario
from common.data.vertical_spec import VerticalSpec
from common.errors import FederationError
from common.outputs import (
    COORDINATOR_RUN_DIR,
    DATA_DIR,
    DATA_SPEC_FILE,
    FLWR_HOME_DIR,
    HISTORY_FILE,
    LOGS_DIR,
    PKI_DIR,
    RECEIPTS_FILE,
    RESULT_FILE,
    deployed_ledger_name,
    deployed_odometer_name,
)
from common.privacy.audit import AuditResult, verify
from common.privacy.ledger import read_lines
from simulations.deploy.appsign import app_spec, free_port, sign_as_partners
from simulations.deploy.commands import (
    FEDERATION,
    HORIZONTAL,
    LATENCY_ENV,
    VERTICAL,
    FederationCommands,
    PartyTable,
    shell_line,
)
from simulations.deploy.federation import FederationLayout, init_federation
from simulations.deploy.keys import new_partner_keys, read_partner_keys

DEMO_MARK = "FEDCREDIT_LOCAL_FEDERATION"  # environment tag on every process we start
PARTNER_HOMES_DIR = "partners"
"""The demo workspace's stand-in for the partners' machines: `partners/<partner>/` is what a
partner keeps on its own machine (the keys it made, the CA certificate, its ledger)."""


VERTICAL_DEMO_LENDER_CONFIG = "release-evaluation=true"
"""The demo lender's opt-in to send the coordinator its pooled test AUC/KS per party combination
(a deployed lender's default is off: docs/vertical.md, "Who sees what")."""


@dataclass
class DemoOptions:
    """What `fedcredit federation demo` runs.

    `mode` "vertical" (or a vertical data `spec`, which implies it): the lender, the e-commerce
    platform and the bank hold different columns of the same customers (docs/vertical.md): each
    party's own table from `spec`, else the bundled credit_data_vertical written per party.
    `rounds` and `min_partners` do not apply to it, and SecAgg+ is refused (there are no model
    updates to sum).
    """

    rounds: int = 3
    epsilon: float = 3.0
    delta: float = 1e-5
    min_partners: int = 2
    superlink_port: int = 8000
    supernode_port: int = 9094  # partner i's SuperNode serves its ClientApp API on port + i
    timeout: float = 900.0
    seed: int = 0
    scenario: str = "credit_data"
    extra_run_config: str = ""
    secure_aggregation: bool = False
    partners: list[str] = field(default_factory=list)
    mode: str = HORIZONTAL
    spec: VerticalSpec | None = None
    registry_port: int = 0  # the coordinator's loopback app registry (0: any free port)

    @property
    def vertical(self) -> bool:
        """Whether the parties hold columns of the same customers (vertical mode)."""
        return self.mode == VERTICAL

    def __post_init__(self) -> None:
        if self.spec is not None and self.mode == HORIZONTAL:
            self.mode = VERTICAL  # a vertical data spec says so itself (mode = "vertical")
        if self.mode not in (HORIZONTAL, VERTICAL):
            raise ValueError(f"--mode must be {HORIZONTAL!r} or {VERTICAL!r}, got {self.mode!r}")
        if self.vertical:
            self._check_vertical()
        if not self.partners:
            self.partners = get_scenario(self.scenario).partners
        if self.rounds < 1:
            raise ValueError(f"--rounds must be >= 1, got {self.rounds}")
        if not 1 <= self.min_partners <= len(self.partners):
            raise ValueError(f"--min-partners must be in 1..{len(self.partners)}, "
                             f"got {self.min_partners}")
        for name, port in (("--superlink-port", self.superlink_port),
                           ("--supernode-port", self.supernode_port)):
            if not 1024 <= port <= 65535 - len(self.partners):
                raise ValueError(f"{name} must be in 1024..{65535 - len(self.partners)}, "
                                 f"got {port}")
        last = self.supernode_port + len(self.partners) - 1
        if self.supernode_port <= self.superlink_port <= last:
            raise ValueError(f"--superlink-port collides with the SuperNode ports "
                             f"{self.supernode_port}..{last}")

    def _check_vertical(self) -> None:
        if self.secure_aggregation:
            raise ValueError("--secure-aggregation does not apply to a vertical run: SecAgg+ "
                             "hides each partner's model update in their sum, and vertical "
                             "parties send no updates to sum (their payloads already travel "
                             "sealed end to end between the parties; docs/vertical.md)")
        if self.partners and sorted(self.partners) != sorted(PARTIES):
            raise ValueError(f"a vertical run has the parties {list(PARTIES)}, got "
                             f"{self.partners}")
        self.partners = list(PARTIES)


def project_root() -> Path:
    """The Flower App directory (`pyproject.toml` with [tool.flwr.app]) of this checkout."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise FederationError("cannot find the fedcredit Flower App (pyproject.toml); run from "
                              "a source checkout or pass --app")
    return root


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on host:port."""
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) != 0


class LocalFederation:
    """Coordinator and partners as real processes on this machine, torn down on exit."""

    def __init__(self, workspace: Path, options: DemoOptions, *, app: Path | None = None
                 ) -> None:
        self.workspace = workspace.resolve()
        self.options = options
        self.app = (app or project_root()).resolve()
        self.pki = self.workspace / PKI_DIR
        self.partner_homes = self.workspace / PARTNER_HOMES_DIR
        self.commands = FederationCommands(pki=str(self.pki), data=str(self.workspace / DATA_DIR),
                                           work=str(self.workspace),
                                           partners=str(self.partner_homes),
                                           superlink_port=options.superlink_port,
                                           mode=options.mode,
                                           registry_port=options.registry_port or free_port())
        self.pki_layout = FederationLayout(self.pki, options.partners,
                                           self.commands.superlink_host)
        self.tables: dict[str, PartyTable] = {}  # a party's own files, where not under data/
        if options.spec is not None:
            from simulations.deploy.vertical import spec_tables

            self.tables = spec_tables(options.spec)
        self.logs = self.workspace / LOGS_DIR
        self.run_dir = self.workspace / COORDINATOR_RUN_DIR  # the coordinator's outputs
        self.mark = uuid.uuid4().hex
        self.processes: dict[str, subprocess.Popen] = {}
        bin_dir = str(Path(sys.executable).parent)
        self.env = {**os.environ, "FLWR_HOME": str(self.workspace / FLWR_HOME_DIR),
                    "FLWR_TELEMETRY_ENABLED": "0", DEMO_MARK: self.mark,
                    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", **LATENCY_ENV,
                    "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}

    # -- set-up -------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Keys and certificates, each partner's data file, the `flwr` CLI's connection."""
        if self.workspace.exists() and any(self.workspace.iterdir()):
            raise FederationError(f"{self.workspace} exists and is not empty; choose another "
                                  "--out or pass --overwrite")
        self.make_keys()
        sign_as_partners(self.commands, self.app, self.options.partners)
        self._write_data(self.workspace / DATA_DIR)
        home = Path(self.env["FLWR_HOME"])
        home.mkdir(parents=True)
        (home / "config.toml").write_text(self.commands.flwr_config())
        self.logs.mkdir()
        self.run_dir.mkdir()
        busy = [p for p in self.ports() if not port_is_free(p)]
        if busy:
            raise FederationError(f"ports already in use: {busy}; choose --superlink-port / "
                                  "--supernode-port")

    def make_keys(self) -> None:
        """The key ceremony, played on one machine only because this is a demo: each partner
        makes its own keys in its own folder (`fedcredit keys new`, the `keys_new` command
        line), the coordinator runs `federation init` with their public keys alone (`init`),
        and each partner copies the CA certificate it is sent into its folder. In a real
        federation each partner does its steps on its own machine (docs/partners.md)."""
        for partner in self.options.partners:
            new_partner_keys(partner, Path(self.commands.partner_dir(partner)),
                             supernode_auth=True)
        ledger, supernode = self.commands.public_keys(self.options.partners)
        init_federation(self.pki, read_partner_keys(ledger, supernode),
                        self.pki_layout.superlink_host)
        for partner in self.options.partners:
            shutil.copy(self.pki_layout.partner_files(partner) / "ca.crt",
                        Path(self.commands.partner_dir(partner)) / "ca.crt")

    def _write_data(self, folder: Path) -> None:
        """Each partner's data: the bundled scenario's rows per partner (horizontal), the
        bundled credit_data_vertical's columns per party, or (a vertical data spec) a record of
        the spec: each party then reads its own files where they are."""
        if not self.options.vertical:
            export_partner_files(self.options.scenario, folder, seed=self.options.seed)
            return
        from simulations.deploy.vertical import export_vertical_party_files

        if self.options.spec is None:
            export_vertical_party_files(folder, seed=self.options.seed)
        else:
            folder.mkdir(parents=True)
            (folder / DATA_SPEC_FILE).write_text(self.options.spec.to_toml(), encoding="utf-8")

    def ports(self) -> list[int]:
        """Every port the federation listens on."""
        first = self.options.supernode_port
        return [self.options.superlink_port, self.commands.registry_port,
                *range(first, first + len(self.options.partners))]

    # -- processes ----------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log_file = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT,
                                   env=self.env, cwd=self.workspace, start_new_session=True)
        log_file.close()
        self.processes[name] = process
        return process

    def log_tail(self, name: str, lines: int = 25) -> str:
        """The end of one process's log (for error messages)."""
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float,
              watch: Sequence[str] = ()) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name in watch:
                if self.processes[name].poll() is not None:
                    raise FederationError(f"{name} exited ({self.processes[name].returncode}) "
                                          f"while waiting for {what}; {self.logs}/{name}.log "
                                          f"ends:\n{self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise FederationError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.2)

    def flwr(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a `flwr` CLI command against the SuperLink. One that runs past `timeout` is
        killed and comes back as a failure (returncode 124, stderr says so), like any other
        failed command, so callers retry or give up instead of raising TimeoutExpired."""
        try:
            return subprocess.run(args, env=self.env, capture_output=True, text=True,
                                  timeout=timeout, cwd=self.workspace)
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(
                args, 124, stdout=_text(exc.stdout),
                stderr=f"{_text(exc.stderr)}`{shell_line(args)}` timed out after {timeout:g} s\n")

    def start_superlink(self, timeout: float = 60) -> None:
        """Start the app registry, then the SuperLink; wait until both accept connections."""
        self._spawn("app-registry", self.commands.app_serve(self.options.partners))
        self._wait("the app registry to listen", lambda: not port_is_free(
            self.commands.registry_port), timeout, watch=["app-registry"])
        self._spawn("superlink", self.commands.superlink())
        self._wait("the SuperLink to listen", lambda: not port_is_free(
            self.options.superlink_port), timeout, watch=["superlink"])

    def register(self, partner: str, timeout: float = 60) -> None:
        """Register a partner's SuperNode public key with the SuperLink."""
        deadline = time.monotonic() + timeout
        while True:
            done = self.flwr(self.commands.register(partner))
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise FederationError(f"registering {partner}'s SuperNode key failed:\n"
                                      f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
            time.sleep(1)

    def supernode_command(self, partner: str) -> list[str]:
        """One partner's `flower-supernode` command: its own node config (its own table and,
        vertical, its ID column; the demo lender releases its evaluation), its own port."""
        o = self.options
        extra = VERTICAL_DEMO_LENDER_CONFIG if o.vertical and partner == LENDER else ""
        return self.commands.supernode(partner, o.supernode_port + o.partners.index(partner),
                                       o.epsilon, o.delta, self.tables.get(partner), extra)

    def start_supernode(self, partner: str, *, args: list[str] | None = None) -> None:
        """Start one partner's SuperNode (its own node config, its own ClientApp port)."""
        self._spawn(partner, args or self.supernode_command(partner))

    def restart_supernode(self, partner: str, timeout: float = 180, *,
                          args: list[str] | None = None) -> None:
        """Start a killed partner's SuperNode again with the same key and node config, and
        wait until every partner is online.

        The SuperLink refuses a second activation of a key until the old node's heartbeat has
        expired (about a minute in Flower 1.41); the refused SuperNode exits, so this retries.
        `args`: the SuperNode's command, as for `start_supernode`.
        """
        deadline = time.monotonic() + timeout
        everyone = len(self.options.partners)
        self._wait(f"the SuperLink to see {partner}'s old SuperNode offline",
                   lambda: self.online_nodes() < everyone, timeout)
        while True:
            self.start_supernode(partner, args=args)
            process = self.processes[partner]
            while process.poll() is None:
                if self.online_nodes() >= everyone:
                    return
                if time.monotonic() > deadline:
                    raise FederationError(f"{partner}'s SuperNode did not come back online "
                                          f"within {timeout:.0f} s")
                time.sleep(1)
            if time.monotonic() > deadline:
                raise FederationError(f"{partner}'s SuperNode keeps exiting; "
                                      f"{self.logs}/{partner}.log ends:\n"
                                      f"{self.log_tail(partner)}")
            time.sleep(3)

    def online_nodes(self) -> int:
        """How many SuperNodes the SuperLink counts as online."""
        done = self.flwr(["flwr", "supernode", "list", FEDERATION, "--format", "json"])
        if done.returncode != 0:
            return 0
        try:
            nodes = json.loads(done.stdout).get("nodes", [])
        except json.JSONDecodeError:
            return 0
        return sum(1 for n in nodes if str(n.get("status", "")).lower() == "online")

    def wait_online(self, count: int, timeout: float = 120) -> None:
        """Wait until `count` SuperNodes are online."""
        self._wait(f"{count} SuperNodes online", lambda: self.online_nodes() >= count, timeout,
                   watch=["superlink", *(p for p in self.options.partners
                                         if p in self.processes)])

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to one process group (a SuperNode and its ClientApp processes)."""
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)

    def run_command(self, extra_run_config: str = "") -> list[str]:
        """The coordinator's `flwr run` command with the demo's run config."""
        o = self.options
        extra = (f"seed={o.seed} " if o.vertical else
                 f"seed={o.seed} sim-pooled-eval=true "
                 f"secure-aggregation={str(o.secure_aggregation).lower()} ")
        extra += f"{o.extra_run_config} {extra_run_config}"
        return self.commands.run(app_spec(self.app), o.rounds, o.min_partners, extra.strip())

    def start_run(self, extra_run_config: str = "") -> subprocess.Popen:
        """Submit the run with `flwr run` (streams its log to logs/flwr-run.log)."""
        return self._spawn("flwr-run", self.run_command(extra_run_config))

    @property
    def result_file(self) -> Path:
        """What the coordinator writes when the run ends: history.json, vertical: its result
        summary vertical.json."""
        return self.run_dir / (RESULT_FILE if self.options.vertical else HISTORY_FILE)

    def wait_run(self, process: subprocess.Popen, progress: Callable[[int], None] | None = None
                 ) -> dict:
        """Wait for the run to end; return the coordinator's history.json (vertical: its
        vertical.json)."""
        history = self.result_file
        deadline = time.monotonic() + self.options.timeout
        while not history.exists():
            if progress is not None:
                progress(self.rounds_done())
            if process.poll() is not None and not history.exists():
                # `flwr run --stream` may return before the ServerApp's last write lands.
                grace = time.monotonic() + 30
                while not history.exists() and time.monotonic() < grace:
                    time.sleep(0.5)
                if not history.exists():
                    raise FederationError(f"the run ended without writing {history.name}; "
                                          f"{self.logs}/flwr-run.log ends:\n"
                                          f"{self.log_tail('flwr-run')}")
            if time.monotonic() > deadline:
                raise FederationError(f"the run did not finish within {self.options.timeout:.0f}"
                                      f" s (--timeout); see {self.logs}")
            time.sleep(0.5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        if progress is not None:
            progress(self.rounds_done())
        return json.loads(history.read_text())

    def rounds_done(self) -> int:
        """Rounds the coordinator has issued receipts for so far."""
        receipts = self.run_dir / RECEIPTS_FILE
        if not receipts.exists():
            return 0
        try:
            return len({entry.get("round") for _, entry in read_lines(receipts)[0]})
        except Exception:  # noqa: BLE001 - a half-written line: count it next time
            return 0

    def ledger_paths(self) -> list[Path]:
        """Each partner's ledger (on its own machine in a real deployment)."""
        return [self.partner_homes / p / deployed_ledger_name(p) for p in self.options.partners]

    def audit(self) -> AuditResult | None:
        """What the auditor's `fedcredit audit verify` finds on the ledgers and receipts; None
        when no partner wrote a ledger (a run that failed before any round). Receipts are
        checked when the coordinator wrote any (a failed run may have accepted none)."""
        ledgers = [p for p in self.ledger_paths() if p.exists()]
        if not ledgers:
            return None
        receipts = self.run_dir / RECEIPTS_FILE
        odometers = [self.partner_homes / p / deployed_odometer_name(p)
                     for p in self.options.partners]
        return verify(ledgers, self.pki_layout.auditor_keys,
                      receipts if receipts.exists() else None,
                      odometer_paths=[p for p in odometers if p.exists()])

    # -- teardown ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop every process this federation started, then any process left carrying its
        mark (ServerApp/ClientApp processes the SuperLink and SuperNodes spawned)."""
        for process in self.processes.values():  # a group may outlive its leader
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        deadline = time.monotonic() + 15
        while (left := processes_marked(self.mark)) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _text(output: str | bytes | None) -> str:
    """Captured output of a timed-out command (bytes or None on some platforms) as text."""
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def processes_marked(mark: str, proc: Path = Path("/proc")) -> list[int]:
    """Running processes whose environment carries this federation's mark (zombies, already
    dead and only waiting for their parent to collect them, do not count). None where `proc`
    cannot be listed (no procfs): the process-group kill is then all the teardown there is."""
    needle = f"{DEMO_MARK}={mark}".encode()
    found = []
    try:
        entries = list(proc.iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state not in "ZX" and needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return found
