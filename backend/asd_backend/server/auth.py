"""Who may talk to the server: loopback by default, CURVE keys for anything else.

Layout of a CURVE folder (`asd keys init`, default ~/.config/asd-studio/curve):
    server.key / server.key_secret     the server's keypair (zmq.auth certificate files)
    authorized_clients/*.key           public keys of the clients allowed in (`asd keys allow FILE`), each
                                       naming its user (metadata `user`) and, for admins, `role = "admin"`
    client.key / client.key_secret     a keypair for a client on this machine (`asd keys client`)
The allow-list is re-read whenever it changes, so keys can be added (and removed: the front end then
refuses that key's open connection) while the server runs. Folders are 0700 and secret keys 0600 from
the moment they exist; the server refuses to start on keys others could change.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from pathlib import Path

import zmq
import zmq.auth
import zmq.utils.z85
from zmq.auth.thread import ThreadAuthenticator

from ..artifacts import atomic_path
from ..errors import AsdError, MissingFileError, UsageError

log = logging.getLogger("asd.server")

DEFAULT_CURVE_DIR = Path(os.environ.get("ASD_CURVE_DIR", Path.home() / ".config" / "asd-studio" / "curve"))
AUTHORIZED = "authorized_clients"


RECHECK_SECONDS = 0.5
USER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class UnsafeKeys(AsdError):
    """A key file or folder others could change or read; the message says the chmod that fixes it."""


def _private_dir(path: Path) -> Path:
    """A folder only its owner can enter (0700), whatever the umask; created so, never widened first."""
    path = Path(path)
    for parent in reversed([path, *path.parents]):
        if not parent.exists():
            os.mkdir(parent, 0o700)  # the mode is applied at creation (umask can only narrow it)
    os.chmod(path, 0o700)
    return path


def _write_certificate(path: Path, public: bytes, secret: bytes | None = None,
                       metadata: dict[str, str] | None = None) -> Path:
    """A zmq.auth certificate file, written whole (artifacts.atomic_path); a secret one is 0600 from its
    creation: no moment exists when another user could read it."""
    lines = ["#   ZeroMQ CURVE " + ("**Secret** Certificate" if secret else "Public Certificate"),
             "#   written by asd-studio" + ("; DO NOT give this file to anyone" if secret else ""), "",
             "metadata"]
    lines += [f'    {key} = "{value}"' for key, value in (metadata or {}).items()]
    lines += ["curve", f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    with atomic_path(path, durable=True) as tmp:
        # Created with its final mode (umask can only narrow it): never readable by others, even briefly.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret is not None else 0o644)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")
    return path


def _keypair(folder: Path, name: str) -> tuple[Path, Path]:
    public, secret = zmq.curve_keypair()
    return (_write_certificate(folder / f"{name}.key", public),
            _write_certificate(folder / f"{name}.key_secret", public, secret))


def init_keys(curve_dir: Path = DEFAULT_CURVE_DIR, force: bool = False) -> Path:
    """Create the server keypair and the allow-list folder (both private); returns the public key file."""
    _private_dir(curve_dir)
    _private_dir(curve_dir / AUTHORIZED)
    public = curve_dir / "server.key"
    if public.exists() and not force:
        return public
    return _keypair(curve_dir, "server")[0]


def create_client_keys(folder: Path, name: str = "client") -> tuple[Path, Path]:
    _private_dir(folder)
    return _keypair(folder, name)


def allow_client(curve_dir: Path, key: str, name: str | None = None, admin: bool = False) -> Path:
    """Allow a client: `key` is a public key file (zmq.auth format) or its 40-character Z85 text. `name`
    (default: the file's stem) is the user its jobs belong to; `admin` lets it see and cancel every job."""
    target_dir = _private_dir(curve_dir / AUTHORIZED)
    path = Path(key).expanduser()
    if path.is_file():
        public, _ = zmq.auth.load_certificate(str(path))
        if public is None:
            raise UsageError(f"{path} holds no public key")
        user = name or path.stem
    else:
        text = key.strip()
        if len(text) != 40:
            raise UsageError(f"{key!r} is neither a key file nor a 40-character Z85 public key")
        try:
            zmq.utils.z85.decode(text)
        except (ValueError, KeyError):
            raise UsageError(f"{key!r} is not a Z85 public key") from None
        public, user = text.encode(), name or "client-" + text[:8].replace("/", "_")
    if not USER_PATTERN.fullmatch(user):
        raise UsageError(f"user name {user!r}: use letters, digits, '_', '-' and '.' (at most 64), e.g. --name alice")
    return _write_certificate(target_dir / f"{user}.key", public,
                              metadata={"user": user, **({"role": "admin"} if admin else {})})


def check_permissions(curve_dir: Path) -> None:
    """Refuse keys others could change: a writable allow-list lets anyone add a key; a readable secret
    key lets anyone impersonate the server."""
    if os.name != "posix":
        return
    secret = curve_dir / "server.key_secret"
    checks = [(curve_dir, 0o022, "700"), (curve_dir / AUTHORIZED, 0o022, "700"), (secret, 0o077, "600")]
    checks += [(f, 0o022, "644") for f in allowed_key_files(curve_dir / AUTHORIZED)]
    for path, forbidden, fix in checks:
        if path.exists() and path.stat().st_mode & forbidden:
            mode = oct(path.stat().st_mode & 0o777)[2:]
            raise UnsafeKeys(f"{path} has mode {mode}: other users could "
                             f"{'read' if path == secret else 'change'} it; run `chmod {fix} {path}`")


def allowed_key_files(folder: Path) -> list[Path]:
    """The allow-list's key files; hidden ones are files being written (artifacts.atomic_path)."""
    return sorted(f for f in folder.glob("*.key") if not f.name.startswith(".")) if folder.exists() else []


@dataclasses.dataclass(frozen=True)
class AllowedClient:
    user: str
    admin: bool = False


class AllowList:
    """zmq.auth credentials provider: accept the public keys in authorized_clients/ (re-read on change),
    and tell the front end who a key belongs to (its file's `user`, or the file's name) and its role."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._stamp: tuple | None = None
        self._checked = 0.0
        self._keys: dict[bytes, AllowedClient] = {}

    def _reload(self) -> None:
        now = time.monotonic()
        if self._stamp is not None and now - self._checked < RECHECK_SECONDS:
            return  # every message asks; the folder is looked at twice a second at most
        self._checked = now
        files = allowed_key_files(self.folder)
        try:  # the folder's mtime sees files come and go; each file's sees an edited role
            stamp = tuple((f.name, f.stat().st_mtime_ns) for f in files)
        except OSError:
            stamp = None
        if stamp is not None and stamp == self._stamp:
            return
        keys = {}
        for f in files:
            try:
                public, _ = zmq.auth.load_certificate(str(f))
                meta = _metadata(f)
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable client key %s: %s", f, exc)
                continue
            user = meta.get("user", f.stem)
            if not USER_PATTERN.fullmatch(user):
                log.warning("ignoring client key %s: its user name %r is not valid", f, user)
                continue
            keys[public] = AllowedClient(user=user, admin=meta.get("role") == "admin")
        self._keys, self._stamp = keys, stamp

    def lookup(self, key: bytes | str) -> AllowedClient | None:
        """Who a Z85 public key (the socket's User-Id) belongs to now; None once its file is removed."""
        self._reload()
        return self._keys.get(key.encode() if isinstance(key, str) else key)

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = self.lookup(key) is not None
        if not allowed:
            log.warning('{"event": "auth_refused", "client_key": "%s"}', key.decode(errors="replace"))
        return allowed


def _metadata(path: Path) -> dict[str, str]:
    """The `metadata` section of a zmq.auth certificate file (zmq.auth reads only the keys)."""
    out, section = {}, None
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            section = line.strip()
            continue
        if section == "metadata" and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip().strip('"')
    return out


def secure_socket(ctx: zmq.Context, socket: zmq.Socket, curve_dir: Path) -> tuple[ThreadAuthenticator, AllowList]:
    """Make `socket` a CURVE server that admits allow-listed clients only. Call before bind."""
    secret = curve_dir / "server.key_secret"
    if not secret.is_file():
        raise MissingFileError(f"no server key in {curve_dir}: run `asd keys init` first (or pass --curve-dir)")
    check_permissions(curve_dir)
    allow = AllowList(curve_dir / AUTHORIZED)
    authenticator = ThreadAuthenticator(ctx)
    authenticator.start()
    authenticator.configure_curve_callback(domain="*", credentials_provider=allow)
    public, secret_key = zmq.auth.load_certificate(str(secret))
    socket.curve_secretkey = secret_key
    socket.curve_publickey = public
    socket.curve_server = True
    return authenticator, allow
