"""Delivery to peers: who follows which job, and what waits to go out to each client.

- requests' answers, `done`, errors, final meshes and images: reliable, in order, per client;
- preview meshes, preview images, progress and heartbeats: latest wins per (job, kind) slot, so a
  slow client gets the newest, never a backlog.

Nothing here blocks: `flush()` sends what each client's socket takes now and keeps the rest.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable

import zmq

from asd_protocol import Heartbeat, Message, encode

PEER_TIMEOUT = 600.0  # forget a silent client once none of the jobs it follows is active


@dataclasses.dataclass
class Peer:
    identity: bytes
    user: str
    last_seen: float
    subscriptions: set[str] = dataclasses.field(default_factory=set)
    reliable: deque = dataclasses.field(default_factory=deque)  # frames lists, in order
    latest: dict[tuple[str, str], list] = dataclasses.field(default_factory=dict)  # (job, kind) -> frames


class Delivery:
    def __init__(self, socket: zmq.Socket) -> None:
        self.socket = socket
        self.peers: dict[bytes, Peer] = {}

    def peer(self, identity: bytes, user: str | None) -> Peer:
        """The peer behind a routing id (new ones are remembered), marked as just heard from."""
        peer = self.peers.get(identity)
        if peer is None:
            peer = self.peers[identity] = Peer(identity, user or identity.hex()[:32], time.monotonic())
        peer.last_seen = time.monotonic()
        return peer

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
            peer.reliable.append(frames)
        else:
            peer.latest[(job_id, latest or "progress")] = frames

    def flush(self) -> None:
        for identity, peer in list(self.peers.items()):
            try:
                while peer.reliable:
                    self.socket.send_multipart([identity, *peer.reliable[0]], zmq.NOBLOCK, copy=False)
                    peer.reliable.popleft()
                for key in list(peer.latest):
                    self.socket.send_multipart([identity, *peer.latest[key]], zmq.NOBLOCK, copy=False)
                    del peer.latest[key]
            except zmq.Again:
                continue  # this client is slow: what is left waits (latest-wins slots get overwritten)
            except zmq.ZMQError as exc:
                if exc.errno == zmq.EHOSTUNREACH:  # gone; it may come back (same identity) and re-attach
                    peer.reliable.clear()
                    peer.latest.clear()
                else:
                    raise

    def heartbeat(self, now: float, is_active: Callable[[str], bool]) -> None:
        """A heartbeat to every peer; forget those silent for long that follow no active job."""
        for identity, peer in list(self.peers.items()):
            if now - peer.last_seen > PEER_TIMEOUT and not any(is_active(j) for j in peer.subscriptions):
                del self.peers[identity]  # it can attach again to anything it followed
                continue
            self.send_frames(peer, encode(Heartbeat()), reliable=False, latest="heartbeat")
