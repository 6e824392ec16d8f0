"""Signed app bundles, offline: a SuperNode that runs only the fedcredit FAB its partner signed.

Flower 1.41's `flower-supernode --trusted-entities FILE` refuses every run whose FAB does not
carry an Ed25519 signature, by a key in FILE, over `signed_at` (8 bytes, big-endian) followed by
SHA-256(FAB) (`flwr.supernode.start_client_internal._verify_fab`). The SuperLink attaches
signatures only to an app it fetched from an app registry (`flwr run @publisher/name==x.y.z`;
`control_handlers._get_remote_fab`, which POSTs to `$FLWR_SUPERGRID_API_URL/hub/fetch-fab`, by
default Flower Hub). A FAB sent with `flwr run <path>` carries none and is refused.

So everything here runs without a network: `build_fab` bundles the app the way `flwr build` does
(deterministically: same files, same bytes, same hash), each partner signs the bundle it reviewed
with its own key (`sign_fab`) and trusts only the keys it chose (`trusted_entities_yaml`), and
the coordinator serves the bundle with the signatures it was sent on loopback (`AppRegistry`),
in the format the SuperLink reads from Flower Hub, for its SuperLink started with
`FLWR_SUPERGRID_API_URL` pointing at it. The registry and the SuperLink are the coordinator's
and are not trusted: the signature check happens on the partner's SuperNode.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import time
import tomllib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from simulations.deploy.commands import APP_KEY, FAB_SIGNATURE, TRUSTED_ENTITIES, FederationCommands
from simulations.deploy.pki import write_private

FETCH_PATH = "/hub/fetch-fab"  # what Flower 1.41's SuperLink asks the registry
REGISTRY_ENV = "FLWR_SUPERGRID_API_URL"  # where the SuperLink looks for that registry
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")


class AppSigningError(ValueError):
    """A bundle, key, signature or trusted-entities file that cannot be used; says which."""


@dataclass(frozen=True)
class FabInfo:
    """A built bundle: its bytes, its SHA-256 and the app spec `flwr run` names it by."""

    content: bytes
    sha256: str
    app_id: str  # "@publisher/name"
    version: str

    @property
    def spec(self) -> str:
        """`flwr run`'s app argument for this exact version (`@publisher/name==x.y.z`)."""
        return f"{self.app_id}=={self.version}"


def fab_info(content: bytes) -> FabInfo:
    """Read a FAB's identity from its own pyproject.toml (what the SuperLink checks too)."""
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(content)) as fab:
            config = tomllib.loads(fab.read("pyproject.toml").decode("utf-8"))
        publisher = config["tool"]["flwr"]["app"]["publisher"]
        name, version = config["project"]["name"], config["project"]["version"]
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AppSigningError(f"not a Flower app bundle (FAB): {exc}") from None
    return FabInfo(content, hashlib.sha256(content).hexdigest(), f"@{publisher}/{name}",
                   str(version))


def app_spec(app: Path) -> str:
    """`@publisher/name==version` of the Flower App at `app`, from its pyproject.toml (the
    spec `flwr run` fetches the signed bundle by)."""
    try:
        config = tomllib.loads((app / "pyproject.toml").read_text(encoding="utf-8"))
        return (f"@{config['tool']['flwr']['app']['publisher']}/{config['project']['name']}"
                f"=={config['project']['version']}")
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise AppSigningError(f"{app} is not a Flower App (pyproject.toml: {exc})") from None


def build_fab(app: Path) -> FabInfo:
    """Bundle the Flower App at `app` exactly as `flwr build` and `flwr run <path>` do (fixed
    dates, sorted files): whoever builds the same reviewed source gets the same hash."""
    from flwr.cli.build import build_fab_from_disk

    if not (app / "pyproject.toml").is_file():
        raise AppSigningError(f"{app} has no pyproject.toml: not a Flower App directory")
    try:
        return fab_info(build_fab_from_disk(app))
    except (ValueError, OSError) as exc:
        raise AppSigningError(f"cannot bundle {app}: {exc}") from None


def read_fab(path: Path) -> FabInfo:
    """A FAB file as `fab_info`; a missing or broken file is a clear error."""
    try:
        return fab_info(path.read_bytes())
    except OSError as exc:
        raise AppSigningError(f"cannot read {path}: {exc.strerror or exc}") from None


def check_key_id(key_id: str) -> str:
    """A signer's name as it appears in signatures and trusted-entities files."""
    if not KEY_ID_PATTERN.match(key_id):
        raise AppSigningError(f"invalid key id {key_id!r}: use letters, digits, '_', '.', '-'")
    return key_id


def new_signing_key(path: Path, key_id: str) -> str:
    """Write an Ed25519 app-signing key: `path` (OpenSSH private key, mode 0600, never leaves
    its owner) and `path`.pub (the `ssh-ed25519 ...` line others put in their trusted
    entities). Returns the public line."""
    check_key_id(key_id)
    public = path.with_name(path.name + ".pub")
    for existing in (path, public):
        if existing.exists():
            raise AppSigningError(f"{existing} already exists; not overwriting a key")
    key = ed25519.Ed25519PrivateKey.generate()
    write_private(path, key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()
    public.write_text(f"{line} {key_id}\n")
    return line


def _load_private_key(path: Path) -> ed25519.Ed25519PrivateKey:
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise AppSigningError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise AppSigningError(f"{path} is not an unencrypted OpenSSH private key: {exc}"
                              ) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise AppSigningError(f"{path} is not an Ed25519 key (Flower verifies Ed25519 only)")
    return key


def load_public_line(path: Path) -> str:
    """The `ssh-ed25519 AAAA...` line of a public key file, checked to be Ed25519."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise AppSigningError(f"cannot read {path}: {exc}") from None
    line = " ".join(text.split()[:2])
    try:
        key = serialization.load_ssh_public_key(line.encode())
    except (ValueError, TypeError) as exc:
        raise AppSigningError(f"{path} is not an OpenSSH public key: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise AppSigningError(f"{path} is not an Ed25519 public key")
    return line


def _message(sha256: str, signed_at: int) -> bytes:
    """What Flower signs and checks (`asymmetric_ed25519.create_message_to_sign`)."""
    return signed_at.to_bytes(8, byteorder="big") + bytes.fromhex(sha256)


def sign_fab(fab: FabInfo, key_path: Path, key_id: str) -> dict:
    """Sign one exact bundle: a signature record naming the app, its hash and the signer."""
    key = _load_private_key(key_path)
    signed_at = int(time.time())
    signature = key.sign(_message(fab.sha256, signed_at))
    return {"app": fab.spec, "fab_sha256": fab.sha256, "public_key_id": check_key_id(key_id),
            "signature": base64.urlsafe_b64encode(signature).rstrip(b"=").decode("ascii"),
            "signed_at": signed_at}


def read_signature(path: Path) -> dict:
    """A signature record written by `fedcredit app sign`, with its fields checked."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AppSigningError(f"cannot read signature {path}: {exc}") from None
    fields = {"app": str, "fab_sha256": str, "public_key_id": str, "signature": str,
              "signed_at": int}
    if not isinstance(record, dict) or any(not isinstance(record.get(k), t)
                                           for k, t in fields.items()):
        raise AppSigningError(f"{path} is not a fedcredit app signature (needs "
                              f"{', '.join(fields)})")
    check_key_id(record["public_key_id"])
    return record


def verify_signature(fab: FabInfo, record: dict, public_line: str) -> bool:
    """Whether `record` is a valid signature of this bundle by the key `public_line`."""
    key = serialization.load_ssh_public_key(public_line.encode())
    if not isinstance(key, ed25519.Ed25519PublicKey):
        return False
    raw = record["signature"]
    try:
        signature = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        key.verify(signature, _message(fab.sha256, record["signed_at"]))
    except Exception:  # noqa: BLE001 - any decoding or signature failure is "not valid"
        return False
    return True


def trusted_entities_yaml(entities: dict[str, str]) -> str:
    """The `--trusted-entities` file: key id -> `ssh-ed25519 ...` public key, one a line."""
    if not entities:
        raise AppSigningError("a trusted-entities file needs at least one key")
    lines = ["# Keys whose signature on an app bundle this SuperNode accepts (Flower "
             "--trusted-entities)."]
    for key_id, line in entities.items():
        lines.append(f"{check_key_id(key_id)}: \"{line}\"")
    return "\n".join(lines) + "\n"


def registry_response(fab: FabInfo, signatures: list[dict], base_url: str) -> dict:
    """What Flower Hub's fetch-fab answers: where to download the bundle, and its signatures
    (`public_key_id`, `signature`, `signed_at`) as the SuperLink passes them to SuperNodes."""
    return {"fab_url": f"{base_url}/fab/{fab.sha256}.fab",
            "verifications": [{"public_key_id": s["public_key_id"], "signature": s["signature"],
                               "signed_at": s["signed_at"]} for s in signatures]}


def check_signatures_match(fab: FabInfo, signatures: list[dict]) -> None:
    """Refuse to serve a signature made on another bundle (an honest coordinator's mistake
    that every SuperNode would refuse anyway, found before the run starts)."""
    for s in signatures:
        if s["fab_sha256"] != fab.sha256:
            raise AppSigningError(f"{s['public_key_id']}'s signature is for bundle "
                                  f"{s['fab_sha256'][:12]}, not {fab.sha256[:12]} ({fab.spec})")


def free_port() -> int:
    """A loopback port nothing listens on now (the OS's pick), for the demo's registry."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sign_as_partners(commands: FederationCommands, app: Path, partners: list[str]) -> FabInfo:
    """The demo's app-signing steps, on one machine only because it is a demo: the coordinator
    builds the bundle (`app_build`); each partner makes its key (`app_key`), writes its
    trusted-entities file with its own key alone (`app_trust`) and signs the bundle
    (`app_sign`). A real partner reviews the bundle, or rebuilds the reviewed source and
    compares the SHA-256, before it signs."""
    fab = build_fab(app)
    Path(commands.fab).write_bytes(fab.content)
    for partner in partners:
        folder = Path(commands.partner_dir(partner))
        public = new_signing_key(folder / APP_KEY, partner)
        (folder / TRUSTED_ENTITIES).write_text(trusted_entities_yaml({partner: public}))
        record = sign_fab(fab, folder / APP_KEY, partner)
        (folder / FAB_SIGNATURE).write_text(json.dumps(record, indent=2) + "\n")
    return fab


class AppRegistry:
    """The coordinator's loopback stand-in for Flower Hub: one bundle and its signatures."""

    def __init__(self, fab: FabInfo, signatures: list[dict], host: str = "127.0.0.1",
                 port: int = 0) -> None:
        check_signatures_match(fab, signatures)
        self.fab, self.signatures = fab, signatures
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                if self.path != FETCH_PATH:
                    return self._reply(404, {"detail": f"no such endpoint {self.path}"})
                try:
                    size = int(self.headers.get("Content-Length", "0"))
                    body = json.loads(self.rfile.read(size) or b"{}")
                except (ValueError, json.JSONDecodeError):
                    return self._reply(400, {"detail": "invalid JSON request"})
                if (body.get("app_id") != registry.fab.app_id
                        or body.get("app_version") not in (None, registry.fab.version)):
                    return self._reply(404, {"detail": f"only {registry.fab.spec} is served"})
                return self._reply(200, registry_response(registry.fab, registry.signatures,
                                                          registry.url))

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path != f"/fab/{registry.fab.sha256}.fab":
                    return self._reply(404, {"detail": "no such bundle"})
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(registry.fab.content)))
                self.end_headers()
                self.wfile.write(registry.fab.content)
                return None

            def _reply(self, code: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                print(f"app registry: {format % args}", flush=True)

        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise AppSigningError(f"cannot listen on {host}:{port}: {exc.strerror or exc}"
                                  ) from None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The registry's base URL: the SuperLink's `FLWR_SUPERGRID_API_URL`."""
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        """Serve until interrupted (the `fedcredit app serve` process)."""
        self.server.serve_forever(poll_interval=0.2)

    def start(self) -> AppRegistry:
        """Serve from a background thread (tests)."""
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        if self.thread is not None:
            self.server.shutdown()
            self.thread.join(timeout=5)
        self.server.server_close()
