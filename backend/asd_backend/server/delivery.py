"""Delivery to peers: who follows which job, and what waits to go out to each client.

- requests' answers, `done`, errors, final meshes and images: reliable, in order, per client;
- preview meshes, preview images, progress and heartbeats: latest wins per (job, kind) slot, so a
  slow client gets the newest, never a backlog.

Nothing here blocks: `flush()` sends what each client's socket takes now and keeps the rest. What is
kept is bounded per peer (count and bytes of reliable messages) and in total over every peer (routing
ids are free without CURVE, so a per-peer bound alone grows with their number): a client that stops
reading, or the largest backlog when the total is reached, has its backlog dropped and is told so
(`backlog_dropped`), instead of growing the server without end.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable

import zmq

from asd_protocol import Error, Heartbeat, Message, encode
from asd_protocol import errors as codes

PEER_TIMEOUT = 600.0  # forget a silent client once none of the jobs it follows is active


@dataclasses.dataclass
class Peer:
    identity: bytes
    user: str  # whose jobs it sees: the allow-list's name for its CURVE key, or the one local user
    last_seen: float
    admin: bool = False  # sees and cancels every user's jobs
    key: str | None = None  # its CURVE public key (Z85), checked against the allow-list while it stays
    subscriptions: set[str] = dataclasses.field(default_factory=set)
    reliable: deque = dataclasses.field(default_factory=deque)  # frames lists, in order
    reliable_bytes: int = 0
    latest: dict[tuple[str, str], list] = dataclasses.field(default_factory=dict)  # (job, kind) -> frames


def _size(frames: list) -> int:
    return sum(len(f) for f in frames)


class Delivery:
    def __init__(self, socket: zmq.Socket, max_pending: int = 1000, max_pending_bytes: int = 64 << 20,
                 max_total_bytes: int = 256 << 20) -> None:
        self.socket = socket
        self.peers: dict[bytes, Peer] = {}
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.max_total_bytes = max_total_bytes
        self.total_bytes = 0  # reliable bytes waiting, over every peer

    def _set_backlog(self, peer: Peer, frames: deque, size: int) -> None:
        self.total_bytes += size - peer.reliable_bytes
        peer.reliable, peer.reliable_bytes = frames, size

    def peer(self, identity: bytes, user: str, admin: bool = False, key: str | None = None) -> Peer:
        """The peer behind a routing id (new ones are remembered), marked as just heard from."""
        peer = self.peers.get(identity)
        if peer is None or peer.key != key:  # a new key on a handed-over routing id is a new peer
            if peer is not None:
                self.total_bytes -= peer.reliable_bytes
            peer = self.peers[identity] = Peer(identity, user, time.monotonic(), admin=admin, key=key)
        peer.user, peer.admin = user, admin
        peer.last_seen = time.monotonic()
        return peer

    def forget(self, identity: bytes) -> None:
        peer = self.peers.pop(identity, None)
        if peer is not None:
            self.total_bytes -= peer.reliable_bytes

    def publish(self, job_id: str, frames: list, latest: str | None = None) -> None:
        """To every peer following the job: reliably, or in the `latest` slot of that kind."""
        for peer in self.peers.values():
            if job_id in peer.subscriptions:
                self.send_frames(peer, frames, reliable=latest is None, latest=latest, job_id=job_id)

    def drop_latest(self, job_id: str, kind: str) -> None:
        for peer in self.peers.values():
            peer.latest.pop((job_id, kind), None)

    def send(self, peer: Peer, msg: Message, reliable: bool = False) -> None:
        self.send_frames(peer, encode(msg), reliable=reliable, latest=None if reliable else "progress",
                         job_id=msg.job_id or "")

    def send_frames(self, peer: Peer, frames: list, reliable: bool, latest: str | None = None,
                    job_id: str = "") -> None:
        if reliable:
            size = _size(frames)
            if (len(peer.reliable) >= self.max_pending
                    or (peer.reliable and peer.reliable_bytes + size > self.max_pending_bytes)):
                self._drop_backlog(peer)
            while self.total_bytes + size > self.max_total_bytes:
                largest = max(self.peers.values(), key=lambda p: p.reliable_bytes, default=None)
                if largest is None or largest.reliable_bytes <= 1024:  # only notices left: nothing to drop
                    break
                self._drop_backlog(largest)
            peer.reliable.append(frames)
            peer.reliable_bytes += size
            self.total_bytes += size
        else:
            peer.latest[(job_id, latest or "progress")] = frames

    def _drop_backlog(self, peer: Peer) -> None:
        """The peer stopped reading: forget what waits for it, and say so first thing when it reads again."""
        count = len(peer.reliable)
        notice = encode(Error(code=codes.BACKLOG_DROPPED, message=f"{count} replies waited unread and were dropped "
                              f"(the server keeps at most {self.max_pending} or {self.max_pending_bytes >> 20} MiB "
                              f"per client, {self.max_total_bytes >> 20} MiB for all)",
                              hint="read replies as they come; list jobs and attach again to catch "
                              "up (attach sends a job's state and newest results)"))
        self._set_backlog(peer, deque([notice]), _size(notice))

    def flush(self) -> None:
        for identity, peer in list(self.peers.items()):
            try:
                while peer.reliable:
                    self.socket.send_multipart([identity, *peer.reliable[0]], zmq.NOBLOCK, copy=False)
                    size = _size(peer.reliable.popleft())
                    peer.reliable_bytes -= size
                    self.total_bytes -= size
                for key in list(peer.latest):
                    self.socket.send_multipart([identity, *peer.latest[key]], zmq.NOBLOCK, copy=False)
                    del peer.latest[key]
            except zmq.Again:
                continue  # this client is slow: what is left waits (latest-wins slots get overwritten)
            except zmq.ZMQError as exc:
                if exc.errno == zmq.EHOSTUNREACH:  # gone; it may come back (same identity) and re-attach
                    self._set_backlog(peer, deque(), 0)
                    peer.latest.clear()
                else:
                    raise

    def heartbeat(self, now: float, is_active: Callable[[str], bool]) -> None:
        """A heartbeat to every peer; forget those silent for long that follow no active job."""
        for identity, peer in list(self.peers.items()):
            if now - peer.last_seen > PEER_TIMEOUT and not any(is_active(j) for j in peer.subscriptions):
                self.forget(identity)  # it can attach again to anything it followed
                continue
            self.send_frames(peer, encode(Heartbeat()), reliable=False, latest="heartbeat")
