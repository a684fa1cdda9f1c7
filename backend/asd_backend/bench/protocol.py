"""`asd bench protocol`: mesh-frame throughput over a real ROUTER/DEALER pair on loopback.

The sender runs in its own thread (pyzmq releases the GIL while it copies), the receiver decodes and
validates every message exactly as the add-on does. Throughput counts the array bytes delivered.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import numpy as np
import zmq

from asd_protocol import MeshSnapshot, decode, encode

from ..errors import UsageError


def run(triangles: int = 1_000_000, messages: int = 40, warmup: int = 3) -> dict[str, Any]:
    """Send `messages` meshes of `triangles` faces server→client and time their decoded arrival."""
    if triangles < 1 or messages < 1:
        raise UsageError("triangles and messages must be at least 1")
    rng = np.random.default_rng(0)
    n_vertices = triangles // 2 + 2
    mesh = MeshSnapshot(
        job_id="bench",
        vertices=rng.normal(size=(n_vertices, 3)).astype(np.float32),
        faces=rng.integers(0, n_vertices, size=(triangles, 3), dtype=np.uint32),
        colors=rng.integers(0, 256, size=(n_vertices, 4), dtype=np.uint8),
    )
    frames = encode(mesh)
    payload = sum(memoryview(f).nbytes for f in frames)

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind("tcp://127.0.0.1:*")  # any free port
    address = router.getsockopt_string(zmq.LAST_ENDPOINT)
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(address)
    for s in (router, dealer):
        s.setsockopt(zmq.LINGER, 0)
    try:
        dealer.send(b"ready")
        identity, _ = router.recv_multipart()
        total = warmup + messages

        def send_all() -> None:
            for _ in range(total):
                router.send_multipart([identity, *frames], copy=False)

        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        for _ in range(warmup):
            decode(dealer.recv_multipart(copy=False))
        start = time.perf_counter()
        for _ in range(messages):
            got = decode(dealer.recv_multipart(copy=False))
        seconds = time.perf_counter() - start
        sender.join()
        intact = bool(np.array_equal(got.faces, mesh.faces) and np.array_equal(got.vertices, mesh.vertices))
    finally:
        ctx.destroy(linger=0)
    return {
        "benchmark": "protocol",
        "transport": "tcp loopback, ROUTER -> DEALER, zero-copy send, decode + validate on receipt",
        "triangles": triangles,
        "vertices": n_vertices,
        "message_bytes": payload,
        "messages": messages,
        "seconds": round(seconds, 4),
        "gb_per_s": round(payload * messages / seconds / 1e9, 3),
        "messages_per_s": round(messages / seconds, 2),
        "ms_per_message": round(1000 * seconds / messages, 3),
        "intact": intact,
        "goal_gb_per_s": 1.0,
    }


# -- the command line ------------------------------------------------------------------------------------

@dataclasses.dataclass
class ProtocolBenchConfig:
    triangles: int = 1_000_000
    """Triangles in each mesh frame."""
    messages: int = 40
    """Mesh messages timed."""


def _command(args: Any) -> int:
    import json

    from ..dataclass_flags import dataclass_from_args

    cfg = dataclass_from_args(ProtocolBenchConfig, args)
    print(json.dumps(run(triangles=cfg.triangles, messages=cfg.messages), indent=2))
    return 0


def add_cli(kinds: Any) -> None:
    from ..dataclass_flags import add_dataclass_flags

    p = kinds.add_parser("protocol", help="mesh-frame throughput over loopback ZeroMQ")
    add_dataclass_flags(p, ProtocolBenchConfig)
    p.set_defaults(handler=_command)
