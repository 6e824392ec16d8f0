"""A real Flower deployment on loopback: `flower-superlink` with TLS and SuperNode
authentication, one `flower-supernode` per partner with its own node config, `flwr run`.

`LocalFederation` drives the processes (readiness waits, logs, teardown without orphans);
`FederationCommands` builds every command line, so the demo, the tests and docs/partners.md
use the same ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common.data.scenarios import export_partner_files, get_scenario
from common.errors import FederationError
from common.privacy.audit import AuditResult, verify
from common.privacy.ledger import read_lines
from simulations.deploy.federation import init_federation

FEDERATION = "fedcredit"  # the SuperLink connection's name in $FLWR_HOME/config.toml
DEMO_MARK = "FEDCREDIT_LOCAL_FEDERATION"  # environment tag on every process we start



@dataclass(frozen=True)
class FederationCommands:
    """Every command line of a deployment, from the paths (or shell variables) of its files.

    `pki` is the `fedcredit federation init` directory as the coordinator keeps it, `partners`
    where each partner's folder of it lies on the partner's machine (default `pki/partners`),
    `data` holds `<partner>.csv/.toml`, `work` the coordinator's run directory. The SuperLink
    listens on `listen_host` and partners reach it at `superlink_host`.
    """

    pki: str
    data: str
    work: str
    superlink_host: str = "127.0.0.1"
    superlink_port: int = 8000
    listen_host: str = "127.0.0.1"
    partners: str = ""

    def partner_dir(self, partner: str) -> str:
        """A partner's own folder: its CA certificate, auth key, ledger key and ledger."""
        return f"{self.partners or self.pki + '/partners'}/{partner}"

    @property
    def superlink_address(self) -> str:
        """host:port the SuperNodes and the `flwr` CLI connect to."""
        return f"{self.superlink_host}:{self.superlink_port}"

    def superlink(self) -> list[str]:
        """The coordinator's SuperLink: HTTPS with the federation's certificate, node auth on."""
        s = f"{self.pki}/superlink"
        return ["flower-superlink", "--ssl-ca-certfile", f"{s}/ca.crt",
                "--ssl-certfile", f"{s}/server.crt", "--ssl-keyfile", f"{s}/server.key",
                "--enable-supernode-auth", "--database", f"{self.work}/superlink.db",
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

    def node_config(self, partner: str, epsilon: float, delta: float) -> str:
        """The partner's own settings: who it is, its data, its budget, its ledger."""
        d = self.partner_dir(partner)
        return (f"partner='{partner}' epsilon={epsilon!r} delta={delta!r} "
                f"data-path='{self.data}/{partner}.csv' schema-path='{self.data}/{partner}.toml' "
                f"ledger-path='{d}/{partner}.ledger.jsonl' signing-key='{d}/{partner}.key'")

    def supernode(self, partner: str, port: int, epsilon: float, delta: float) -> list[str]:
        """A partner's SuperNode: trusts only the federation CA, signs in with its auth key."""
        d = self.partner_dir(partner)
        return ["flower-supernode", "--superlink", self.superlink_address,
                "--root-certificates", f"{d}/ca.crt",
                "--auth-supernode-private-key", f"{d}/supernode-auth",
                "--port", str(port), "--node-config", self.node_config(partner, epsilon, delta)]

    def run_config(self, rounds: int, min_partners: int, extra: str = "") -> str:
        """The coordinator's run config: rounds, outputs, signed receipts."""
        text = (f"num-server-rounds={rounds} min-partners={min_partners} "
                f"out-dir='{self.work}/run' receipts-path='{self.work}/run/receipts.jsonl' "
                f"receipt-key='{self.pki}/coordinator/coordinator.key'")
        return f"{text} {extra}".strip()

    def run(self, app: str, rounds: int, min_partners: int, extra: str = "") -> list[str]:
        """Start the federated run on the SuperLink and stream its log until it ends."""
        return ["flwr", "run", app, FEDERATION, "--stream",
                "--run-config", self.run_config(rounds, min_partners, extra)]

    def audit(self, partners: Sequence[str]) -> list[str]:
        """The auditor's check of every ledger against the coordinator's receipts."""
        return ["fedcredit", "audit", "verify",
                *(f"{self.partner_dir(p)}/{p}.ledger.jsonl" for p in partners),
                "--keys", f"{self.pki}/auditor/keys", "--receipts",
                f"{self.work}/run/receipts.jsonl"]


def shell_line(args: Sequence[str]) -> str:
    """A command as a person types it: arguments with spaces or quotes in double quotes (so
    `$VARIABLES` in docs still expand)."""
    return " ".join(f'"{a}"' if any(c in a for c in " '") else a for a in args)


@dataclass
class DemoOptions:
    """What `fedcredit federation demo` runs."""

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

    def __post_init__(self) -> None:
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
        self.pki = self.workspace / "pki"
        self.commands = FederationCommands(pki=str(self.pki), data=str(self.workspace / "data"),
                                           work=str(self.workspace),
                                           superlink_port=options.superlink_port)
        self.logs = self.workspace / "logs"
        self.mark = uuid.uuid4().hex
        self.processes: dict[str, subprocess.Popen] = {}
        bin_dir = str(Path(sys.executable).parent)
        self.env = {**os.environ, "FLWR_HOME": str(self.workspace / "flwr-home"),
                    "FLWR_TELEMETRY_ENABLED": "0", DEMO_MARK: self.mark,
                    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                    "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}

    # -- set-up -------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Keys and certificates, each partner's data file, the `flwr` CLI's connection."""
        if self.workspace.exists() and any(self.workspace.iterdir()):
            raise FederationError(f"{self.workspace} exists and is not empty; choose another "
                                  "--out or pass --overwrite")
        init_federation(self.pki, self.options.partners, "localhost")
        export_partner_files(self.options.scenario, self.workspace / "data",
                             seed=self.options.seed)
        home = Path(self.env["FLWR_HOME"])
        home.mkdir(parents=True)
        (home / "config.toml").write_text(self.commands.flwr_config())
        self.logs.mkdir()
        (self.workspace / "run").mkdir()
        busy = [p for p in self.ports() if not port_is_free(p)]
        if busy:
            raise FederationError(f"ports already in use: {busy}; choose --superlink-port / "
                                  "--supernode-port")

    def ports(self) -> list[int]:
        """Every port the federation listens on."""
        first = self.options.supernode_port
        return [self.options.superlink_port,
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
        """Start the SuperLink and wait until it accepts connections."""
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

    def start_supernode(self, partner: str, *, args: list[str] | None = None) -> None:
        """Start one partner's SuperNode (its own node config, its own ClientApp port)."""
        port = self.options.supernode_port + self.options.partners.index(partner)
        self._spawn(partner, args or self.commands.supernode(
            partner, port, self.options.epsilon, self.options.delta))

    def restart_supernode(self, partner: str, timeout: float = 180) -> None:
        """Start a killed partner's SuperNode again with the same key and node config, and
        wait until every partner is online.

        The SuperLink refuses a second activation of a key until the old node's heartbeat has
        expired (about a minute in Flower 1.41); the refused SuperNode exits, so this retries.
        """
        deadline = time.monotonic() + timeout
        everyone = len(self.options.partners)
        self._wait(f"the SuperLink to see {partner}'s old SuperNode offline",
                   lambda: self.online_nodes() < everyone, timeout)
        while True:
            self.start_supernode(partner)
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

    def start_run(self, extra_run_config: str = "") -> subprocess.Popen:
        """Submit the run with `flwr run` (streams its log to logs/flwr-run.log)."""
        o = self.options
        extra = (f"seed={o.seed} sim-pooled-eval=true "
                 f"secure-aggregation={str(o.secure_aggregation).lower()} "
                 f"{o.extra_run_config} {extra_run_config}")
        return self._spawn("flwr-run", self.commands.run(str(self.app), o.rounds,
                                                         o.min_partners, extra.strip()))

    def wait_run(self, process: subprocess.Popen, progress: Callable[[int], None] | None = None
                 ) -> dict:
        """Wait for the run to end; return the coordinator's history.json."""
        history = self.workspace / "run" / "history.json"
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
                    raise FederationError("the run ended without writing history.json; "
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
        receipts = self.workspace / "run" / "receipts.jsonl"
        if not receipts.exists():
            return 0
        try:
            return len({entry.get("round") for _, entry in read_lines(receipts)[0]})
        except Exception:  # noqa: BLE001 - a half-written line: count it next time
            return 0

    def ledger_paths(self) -> list[Path]:
        """Each partner's ledger (on its own machine in a real deployment)."""
        return [self.pki / "partners" / p / f"{p}.ledger.jsonl" for p in self.options.partners]

    def audit(self) -> AuditResult:
        """What the auditor's `fedcredit audit verify` finds on the ledgers and receipts."""
        return verify([p for p in self.ledger_paths() if p.exists()],
                      self.pki / "auditor" / "keys",
                      self.workspace / "run" / "receipts.jsonl")

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


REPORT_FILE, REPORT_JSON, AUDIT_HTML = "report.md", "report.json", "audit.html"


def run_demo(fed: LocalFederation, step: Callable[[str], None],
             progress: Callable[[int], None] | None = None) -> dict:
    """The whole local federation: set up, start, register, run, audit, report. The caller
    closes `fed` (tears everything down) whatever happens."""
    from simulations.audit.html import render_audit_html

    started = time.monotonic()
    o = fed.options
    step(f"writing keys, certificates and partner data to {fed.workspace}")
    fed.prepare()
    step(f"starting flower-superlink on 127.0.0.1:{o.superlink_port} (TLS, node auth)")
    fed.start_superlink()
    for partner in o.partners:
        step(f"registering {partner}'s SuperNode key")
        fed.register(partner)
    for partner in o.partners:
        step(f"starting {partner}'s flower-supernode (eps={o.epsilon:g}, delta={o.delta:g})")
        fed.start_supernode(partner)
    fed.wait_online(len(o.partners))
    step(f"flwr run: {o.rounds} rounds"
         + (" with SecAgg+ secure aggregation" if o.secure_aggregation else "")
         + " (each ClientApp starts in its own process)")
    history = fed.wait_run(fed.start_run(), progress)
    step("auditing the partners' ledgers against the coordinator's receipts")
    audit = fed.audit()
    (fed.workspace / AUDIT_HTML).write_text(render_audit_html(audit))
    report = demo_report(fed, history, audit, time.monotonic() - started)
    (fed.workspace / REPORT_JSON).write_text(json.dumps(report, indent=2, sort_keys=True))
    (fed.workspace / REPORT_FILE).write_text(render_demo_report(report))
    return report


def demo_report(fed: LocalFederation, history: dict, audit: AuditResult,
                wall_seconds: float) -> dict:
    """What the local federation produced, where, and whether it verifies."""
    run_dir = fed.workspace / "run"
    pooled = next((r["pooled"] for r in reversed(history["rounds"]) if r["pooled"]), {})
    evaluation = next((r["evaluation"] for r in reversed(history["rounds"])
                       if r["evaluation"]), {})
    return {
        "status": history["status"], "message": history["message"],
        "run_id": history["run_id"], "wall_seconds": wall_seconds,
        "secure_aggregation": fed.options.secure_aggregation,
        "rounds": [{"round": r["round"], "accepted": sorted(r["accepted"]),
                    "refused": r["refused"], "rejected": r["rejected"], "failed": r["failed"]}
                   for r in history["rounds"]],
        "pooled_test_metrics": pooled, "partner_evaluation": evaluation,
        "privacy": {p.partner: {"epsilon_budget": p.epsilon_budget, "delta": p.delta,
                                "epsilon_claimed": p.epsilon_claimed,
                                "epsilon_rdp_recomputed": p.epsilon_rdp,
                                "rounds_trained": p.rounds_trained, "refusals": p.refusals}
                    for p in audit.partners},
        "audit": {"ok": audit.ok, "findings": [str(f) for f in audit.findings],
                  "receipts_checked": audit.receipts_checked, "report": AUDIT_HTML},
        "files": {"model": str(run_dir / "model.pt"), "model_meta": str(run_dir / "model.json"),
                  "history": str(run_dir / "history.json"),
                  "receipts": str(run_dir / "receipts.jsonl"),
                  "ledgers": [str(p) for p in fed.ledger_paths()], "logs": str(fed.logs)},
        "commands": [shell_line(c) for c in (
            fed.commands.superlink(), *map(fed.commands.register, fed.options.partners),
            *(fed.commands.supernode(p, fed.options.supernode_port + i, fed.options.epsilon,
                                     fed.options.delta)
              for i, p in enumerate(fed.options.partners)),
            fed.commands.run(str(fed.app), fed.options.rounds, fed.options.min_partners),
            fed.commands.audit(fed.options.partners))],
    }


def render_demo_report(report: dict) -> str:
    """report.md of a local federation run."""
    lines = [f"# Local federation over TLS: {report['status']}", ""]
    if report["message"]:
        lines += [f"**{report['message']}**", ""]
    lines += [f"Run {report['run_id']}, {len(report['rounds'])} rounds, "
              f"{report['wall_seconds']:.0f} s wall, secure aggregation "
              f"{'on (SecAgg+)' if report['secure_aggregation'] else 'off'}.", "",
              "| round | accepted | not accepted |", "|---|---|---|"]
    for r in report["rounds"]:
        missing = {**r["refused"], **r["rejected"], **r["failed"]}
        lines.append(f"| {r['round']} | {', '.join(r['accepted'])} | "
                     + "; ".join(f"{p}: {why}" for p, why in missing.items()) + " |")
    metrics = report["pooled_test_metrics"]
    if metrics:
        lines += ["", "Final model on the partners' pooled test rows (demo only: a real "
                  "coordinator holds no data): "
                  + ", ".join(f"{k} {metrics[k]:.4f}" for k in ("auc", "ks", "brier")
                              if k in metrics)]
    lines += ["", "| partner | ε budget | δ | ε spent (ledger) | ε recomputed (RDP) | rounds |",
              "|---|---|---|---|---|---|"]
    for partner, p in report["privacy"].items():
        lines.append(f"| {partner} | {p['epsilon_budget']} | {p['delta']} | "
                     f"{p['epsilon_claimed']:.4f} | {p['epsilon_rdp_recomputed']:.4f} | "
                     f"{p['rounds_trained']} |")
    audit = report["audit"]
    verdict = ("VERIFIED: no findings" if audit["ok"] else
               f"{len(audit['findings'])} finding(s):\n" + "\n".join(
                   f"- {f}" for f in audit["findings"]))
    lines += ["", f"Audit ({audit['receipts_checked']} receipts, [{audit['report']}]"
              f"({audit['report']})): {verdict}", "", "Files:", ""]
    files = report["files"]
    lines += [f"- {name}: `{path}`" for name, path in files.items() if name != "ledgers"]
    lines += [f"- ledger: `{path}`" for path in files["ledgers"]]
    lines += ["", "Commands run (see docs/partners.md):", "", "```sh", *report["commands"],
              "```", ""]
    return "\n".join(lines)
