"""Who may talk to the server: loopback by default, CURVE keys for anything else.

Layout of a CURVE folder (`asd keys init`, default ~/.config/asd-studio/curve):
    server.key / server.key_secret     the server's keypair (zmq.auth certificate files)
    authorized_clients/*.key           public keys of the clients allowed in (`asd keys allow FILE`)
    client.key / client.key_secret     a keypair for a client on this machine (`asd keys client`)
The allow-list is re-read whenever the folder changes, so keys can be added while the server runs.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("asd.server")

DEFAULT_CURVE_DIR = Path(os.environ.get("ASD_CURVE_DIR", Path.home() / ".config" / "asd-studio" / "curve"))
AUTHORIZED = "authorized_clients"


def init_keys(curve_dir: Path = DEFAULT_CURVE_DIR, force: bool = False) -> Path:
    """Create the server keypair and the allow-list folder; returns the public key file."""
    curve_dir.mkdir(parents=True, exist_ok=True)
    (curve_dir / AUTHORIZED).mkdir(exist_ok=True)
    public = curve_dir / "server.key"
    if public.exists() and not force:
        return public
    public_file, secret_file = zmq.auth.create_certificates(str(curve_dir), "server")
    os.chmod(secret_file, 0o600)
    return Path(public_file)


def create_client_keys(folder: Path, name: str = "client") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = zmq.auth.create_certificates(str(folder), name)
    os.chmod(secret_file, 0o600)
    return Path(public_file), Path(secret_file)


def allow_client(curve_dir: Path, key: str, name: str | None = None) -> Path:
    """Allow a client: `key` is a public key file (zmq.auth format) or its 40-character Z85 text."""
    target_dir = curve_dir / AUTHORIZED
    target_dir.mkdir(parents=True, exist_ok=True)
    path = Path(key).expanduser()
    if path.is_file():
        public, _ = zmq.auth.load_certificate(str(path))
        dest = target_dir / f"{name or path.stem}.key"
        if public is None:
            raise ValueError(f"{path} holds no public key")
        shutil.copyfile(path, dest)
        return dest
    text = key.strip()
    if len(text) != 40:
        raise ValueError(f"{key!r} is neither a key file nor a 40-character Z85 public key")
    dest = target_dir / f"{name or 'client-' + text[:8].replace('/', '_')}.key"
    dest.write_text(f'metadata\ncurve\n    public-key = "{text}"\n')
    zmq.auth.load_certificate(str(dest))  # validates the text
    return dest


class AllowList:
    """zmq.auth credentials provider: accept the public keys in authorized_clients/ (re-read on change)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._mtime: float | None = None
        self._keys: set[bytes] = set()

    def _reload(self) -> None:
        mtime = self.folder.stat().st_mtime if self.folder.exists() else 0.0
        if mtime == self._mtime:
            return
        keys = set()
        for f in self.folder.glob("*.key"):
            try:
                public, _ = zmq.auth.load_certificate(str(f))
                keys.add(public)
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable client key %s: %s", f, exc)
        self._keys, self._mtime = keys, mtime

    def callback(self, domain: str, key: bytes) -> bool:
        self._reload()
        allowed = key in self._keys
        if not allowed:
            log.warning('{"event": "auth_refused", "client_key": "%s"}', key.decode(errors="replace"))
        return allowed


def secure_socket(ctx: zmq.Context, socket: zmq.Socket, curve_dir: Path) -> ThreadAuthenticator:
    """Make `socket` a CURVE server that admits allow-listed clients only. Call before bind."""
    secret = curve_dir / "server.key_secret"
    if not secret.is_file():
        raise FileNotFoundError(f"no server key in {curve_dir}: run `asd keys init` first (or pass --curve-dir)")
    authenticator = ThreadAuthenticator(ctx)
    authenticator.start()
    authenticator.configure_curve_callback(domain="*", credentials_provider=AllowList(curve_dir / AUTHORIZED))
    public, secret_key = zmq.auth.load_certificate(str(secret))
    socket.curve_secretkey = secret_key
    socket.curve_publickey = public
    socket.curve_server = True
    return authenticator
