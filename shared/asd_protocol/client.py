"""AsdClient: the one client of the backend, used by the Blender add-on, the CLI and the tests.

It never blocks unless asked to: `poll()` returns whatever has arrived (possibly nothing) and does
the heartbeat bookkeeping, so Blender can call it from a timer on the main thread. `wait_for()` is
the blocking convenience the CLI and tests use.
"""

from __future__ import annotations

import ipaddress
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import zmq

from . import errors
from .errors import ProtocolError
from .frames import DEFAULT_LIMITS, FrameLimits, decode, encode
from .messages import (
    PROTOCOL_VERSION,
    SERVER,
    Attach,
    Cancel,
    Error,
    Heartbeat,
    Hello,
    ListJobs,
    Message,
    Resume,
    Submit,
    Welcome,
)

CONNECTING = "connecting"
CONNECTED = "connected"
LOST = "lost"
CLOSED = "closed"

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
MAX_OUTBOX = 256


ARRAY_FIELDS = ("vertices", "faces", "uvs", "texture")


class AsdClient:
    """A DEALER socket speaking the protocol (asd_protocol.PROTOCOL_VERSION) to an `asd serve` ROUTER.

    `server_public_key` (Z85 text) turns on CURVE; then `client_secret_key` and `client_public_key`
    are this client's keypair (generated for the session if omitted, which only works against a
    server that allows any key). States: connecting → connected ⇄ lost → closed.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        client_name: str = "asd-client",
        server_public_key: str | bytes | None = None,
        client_secret_key: str | bytes | None = None,
        client_public_key: str | bytes | None = None,
        heartbeat_interval: float = 2.0,
        dead_after: float = 10.0,
        limits: FrameLimits = DEFAULT_LIMITS,
        context: zmq.Context | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(address, str) or "://" not in address:
            raise ValueError(f"server address {address!r} must look like tcp://HOST:PORT")
        self.address = address
        self.client_name = client_name
        self.heartbeat_interval = heartbeat_interval
        self.dead_after = dead_after
        self.limits = limits
        self.clock = clock
        self.state = CONNECTING
        self.welcome: Welcome | None = None
        self._unread: deque[Message] = deque()
        self._outbox: deque[list] = deque()
        self._ctx = context or zmq.Context.instance()
        self._socket = self._ctx.socket(zmq.DEALER)
        # A stable identity lets the server keep routing a job's stream to us across reconnects.
        self.identity = f"c-{uuid.uuid4().hex}"
        self._socket.setsockopt(zmq.ROUTING_ID, self.identity.encode())
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RECONNECT_IVL, 200)
        self._socket.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        self._socket.setsockopt(zmq.MAXMSGSIZE, limits.max_message_bytes)
        # Queue only to a live connection: a request must never wait in a dead connection's pipe and
        # reach a restarted server that nobody asked (ZeroMQ would deliver it on reconnect).
        self._socket.setsockopt(zmq.IMMEDIATE, 1)
        if server_public_key is not None:
            if client_secret_key is None or client_public_key is None:
                client_public_key, client_secret_key = zmq.curve_keypair()
            self._socket.curve_serverkey = _key(server_public_key)
            self._socket.curve_publickey = _key(client_public_key)
            self._socket.curve_secretkey = _key(client_secret_key)
        # Handshake failures (a refused CURVE key, a plaintext/CURVE mismatch) arrive only as socket events.
        self.handshake_error: str | None = None
        self.revoked: str | None = None  # set when the server says this key was removed from its allow-list
        self._monitor = self._socket.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self._socket.connect(address)
        now = self.clock()
        self._started = now
        self._last_seen = now
        self._last_sent = now
        self._last_hello = now
        self.not_sent = 0  # requests refused or dropped because no backend was answering (never sent later)
        # Until the connection completes a hello cannot leave; it is retried on every poll until it does.
        self._hello_pending = not self._send_hello()
        self._asked = not self._hello_pending  # has any hello reached a connection yet

    # -- sending ----------------------------------------------------------------------------

    @property
    def stale_after(self) -> float:
        """Seconds of silence after which a backend is not trusted with a request: the same silence that
        declares it lost (a busy server may miss a heartbeat or two; a dead one's connection is gone at
        once, and ZMQ_IMMEDIATE then refuses the send)."""
        return self.dead_after

    def send(self, msg: Message) -> str:
        """Validate and send a message; returns its msg_id (replies carry it as parent_id).

        Never blocks, and never sends later to a backend that did not answer now: to a connected backend
        heard from within `stale_after` the message goes at once, or not at all (ConnectionError saying
        why); before the first welcome it waits in a small outbox for that welcome, and is dropped (and
        counted in `not_sent`) if the backend is declared lost first.
        """
        if self.state == CLOSED:
            raise RuntimeError("this client is closed; create a new AsdClient")
        frames = encode(msg)
        self._unread.extend(self.poll())  # hear the backend first: its latest word decides
        silent = self.clock() - self._last_seen
        if self.state == LOST or (self.state == CONNECTED and silent > self.stale_after):
            self.not_sent += 1
            reason = self.lost_reason() if self.state == LOST else (
                f"the backend at {self.address} has not answered for {silent:.0f} s")
            raise ConnectionError(f"not sent: {reason}. Nothing will be sent later; try again once it answers")
        if self.state == CONNECTED:
            try:
                self._socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self.not_sent += 1
                raise ConnectionError(f"not sent: the connection to {self.address} is down right now (the "
                                      "backend may have stopped). Nothing will be sent later") from None
            self._last_sent = self.clock()
            return msg.msg_id
        if len(self._outbox) >= MAX_OUTBOX:
            raise ConnectionError(f"{MAX_OUTBOX} messages are waiting for the backend at {self.address}: "
                                  f"{self.lost_reason()}")
        self._outbox.append(frames)
        self._flush()
        return msg.msg_id

    def _flush(self) -> None:
        while self._outbox:
            try:
                self._socket.send_multipart(self._outbox[0], flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._outbox.popleft()
            self._last_sent = self.clock()

    def _send_hello(self) -> bool:
        return self._send_control(Hello(client=self.client_name, protocol_version=PROTOCOL_VERSION))

    def _send_control(self, msg: Message) -> bool:
        """Hello and heartbeat: worth sending only now; dropped if the connection cannot take them."""
        try:
            self._socket.send_multipart(encode(msg), flags=zmq.NOBLOCK, copy=False)
            self._last_sent = self.clock()
            return True
        except zmq.Again:
            return False

    def submit(self, spec: Mapping[str, Any], **arrays: Any) -> str:
        """Send a job; the `accepted` (or `error`) reply has this call's return value as parent_id.

        `spec` is a partial job spec, the one request form: `{"prompt": "a red mug", "kind": "generate",
        "preset": "preview", "guidance": {"cfg": 30}}`; what it leaves out the server fills from the preset.
        `partial_from_options` makes one from flat settings named as the CLI names them (cfg=…, steps=…).
        An edit job's arrays (vertices, faces, uvs, texture) go beside it.
        """
        unknown = sorted(set(arrays) - set(ARRAY_FIELDS))
        if unknown:
            raise TypeError(f"submit() takes the spec and the arrays {', '.join(ARRAY_FIELDS)}; got {unknown}: "
                            "settings go in the spec (partial_from_options makes one from flat settings)")
        return self.send(Submit(spec=dict(spec), **arrays))

    def cancel(self, job_id: str) -> str:
        return self.send(Cancel(job_id=job_id))

    def attach(self, job_id: str) -> str:
        return self.send(Attach(job_id=job_id))

    def resume(self, job_id: str) -> str:
        """Queue a failed, cancelled or interrupted generate job again, from its last checkpoint."""
        return self.send(Resume(job_id=job_id))

    def list_jobs(self, limit: int = 100) -> str:
        return self.send(ListJobs(limit=limit))

    # -- receiving --------------------------------------------------------------------------

    def poll(self, timeout: float = 0.0, max_messages: int = 1000) -> list[Message]:
        """Return the messages that have arrived, waiting at most `timeout` seconds for the first.

        Never raises for what the server sends: an undecodable message comes back as a local
        `Error` (code bad_frames and so on) so a UI can show it and go on.
        """
        if self.state == CLOSED:
            return []
        out: list[Message] = list(self._unread)
        self._unread.clear()
        wait_ms = int(timeout * 1000)
        while len(out) < max_messages and self._socket.poll(wait_ms if not out else 0, zmq.POLLIN):
            frames = self._socket.recv_multipart(copy=False)
            self._last_seen = self.clock()
            try:
                msg = decode(frames, limits=self.limits, expect_sender=SERVER)
            except ProtocolError as exc:
                out.append(Error.from_exception(exc))
                continue
            if isinstance(msg, Welcome):
                self.welcome = msg
                self.heartbeat_interval = msg.heartbeat_interval
            if isinstance(msg, Heartbeat):
                self._mark_alive()
                continue
            if isinstance(msg, Error) and msg.code == errors.ACCESS_REVOKED:
                # The server refuses this key from now on: say so instead of waiting for silence.
                self.revoked = f"the backend at {self.address} no longer allows this client's key: {msg.hint}"
                self.state = LOST
                out.append(msg)
                continue
            self.revoked = None
            self._mark_alive()
            out.append(msg)
            wait_ms = 0
        self._tick()
        return out

    def wait_for(self, predicate: Callable[[Message], bool], timeout: float = 30.0,
                 on_message: Callable[[Message], None] | None = None) -> Message:
        """Block until a message satisfies `predicate`; others go to `on_message`. For CLI and tests."""
        deadline = self.clock() + timeout
        while True:
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise TimeoutError(f"no matching message from {self.address} within {timeout:g} s")
            batch = self.poll(timeout=min(remaining, 0.5))
            for i, msg in enumerate(batch):
                if predicate(msg):
                    self._unread.extend(batch[i + 1:])  # the next poll() or wait_for() gets these
                    return msg
                if on_message is not None:
                    on_message(msg)
            if self.state == LOST:
                raise ConnectionError(self.lost_reason())

    def _read_monitor(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor.poll(0):
            evt = recv_monitor_message(self._monitor)["event"]
            if evt == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.handshake_error = None
            elif evt == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.handshake_error = "auth"
            else:
                self.handshake_error = "protocol"

    def lost_reason(self) -> str:
        if self.revoked:
            return self.revoked
        if self.handshake_error == "auth":
            return (f"the backend at {self.address} refused this client's CURVE key: ask its admin to allow your "
                    "public key (asd keys allow), and check the server public key you entered")
        if self.handshake_error == "protocol":
            return (f"the security handshake with {self.address} failed: one side uses CURVE keys and the other "
                    "does not, or the server public key is wrong")
        if self.welcome is None:
            return (f"no answer from a backend at {self.address} after {self.dead_after:g} s: is `asd serve` "
                    "running there, is the address right, and (for a remote box) do the CURVE keys match?")
        return f"the backend at {self.address} stopped answering (silent for {self.dead_after:g} s)"

    # -- liveness ---------------------------------------------------------------------------

    def _mark_alive(self) -> None:
        if self.state in (CONNECTING, LOST) and self.welcome is not None:
            self.state = CONNECTED

    def _tick(self) -> None:
        self._read_monitor()
        self._flush()
        now = self.clock()
        if not self._asked and self._send_hello():
            # The first hello leaves only now (the connection may have been made while nobody polled): the
            # backend's silence counts from here, not from when this client was created.
            self._asked, self._hello_pending = True, False
            self._last_hello = self._last_seen = now
        if now - self._last_seen > self.dead_after and self.state != LOST:
            self.state = LOST
            self.not_sent += len(self._outbox)  # never delivered later, to a backend nobody asked
            self._outbox.clear()
        if self._asked and (self.welcome is None or self.state == LOST):
            # Until the server greets us (it may have restarted), keep saying hello.
            if self._hello_pending or now - self._last_hello >= self.heartbeat_interval:
                self._last_hello = now
                self._hello_pending = not self._send_hello()
        elif now - self._last_sent >= self.heartbeat_interval:
            self._send_control(Heartbeat())

    def close(self) -> None:
        if self.state != CLOSED:
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._socket.close(linger=0)
            self.state = CLOSED

    def __enter__(self) -> AsdClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def is_loopback(address: str) -> bool:
    """True for tcp://127.x, tcp://localhost, tcp://[::1], ipc:// and inproc:// endpoints.

    Shared by the server (loopback needs no CURVE) and the add-on (Blender's online-access rule).
    """
    if address.startswith(("ipc://", "inproc://")):
        return True
    host = urlsplit(address).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', an interface name or a host name: not loopback


def load_keypair(path: str | Path) -> tuple[str, str]:
    """(public, secret) Z85 keys from a `zmq.auth` secret key file (`*.key_secret`)."""
    from zmq.auth import load_certificate

    public, secret = load_certificate(str(Path(path).expanduser()))
    if secret is None:
        raise ValueError(f"{path} holds no secret key; give the *.key_secret file of the client keypair")
    return public.decode("ascii"), secret.decode("ascii")


def _key(value: str | bytes) -> bytes:
    """A Z85 CURVE key given as text or bytes, or the path of a public key file from `zmq.auth`."""
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    value = value.strip()
    if len(value) == 40:
        return value.encode("ascii")
    path = Path(value).expanduser()
    if path.is_file():
        from zmq.auth import load_certificate

        public, _secret = load_certificate(str(path))
        return public
    raise ValueError(f"{value[:60]!r} is neither a 40-character Z85 CURVE key nor a key file")


__all__ = ["CLOSED", "CONNECTED", "CONNECTING", "DEFAULT_ADDRESS", "LOST", "AsdClient", "errors", "is_loopback",
           "load_keypair"]
