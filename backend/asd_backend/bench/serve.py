"""`asd bench serve`: many clients following one streaming job on a real server over loopback.

A server subprocess runs a tiny-teacher job that streams a preview mesh every few steps; N clients
(one submits, the others attach) poll their own DEALER sockets round-robin, as N Blenders would.
Latency is arrival time minus the message's header timestamp (same machine, same clock): for
`progress` messages, and for `mesh` snapshots (preview and final).

`time_to_first_mesh` is what an artist waits after pressing Generate: from the submit to the first
mesh in the client, for a `preview` job, cold (the server's first job: the worker loads the
teacher) and warm (the next one, teacher loaded); each is cancelled once its first mesh is in.
"""

from __future__ import annotations

import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from asd_protocol import Accepted, Done, MeshSnapshot, Progress
from asd_protocol.client import AsdClient

from ..loopback import free_port


def _age_ms(timestamp: str) -> float:
    sent = datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
    return 1000 * (time.time() - sent)


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    return {"count": len(values), "p50_ms": round(statistics.median(ordered), 2),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
            "max_ms": round(ordered[-1], 2)}


def _time_to_first_mesh(client: AsdClient, timeout: float = 300.0) -> float:
    """Seconds from submitting a `preview` job to its first mesh at this client; the job is then cancelled."""
    started = time.monotonic()
    request = client.submit("a first-mesh teapot", preset="preview")
    accepted = client.wait_for(lambda m: m.parent_id == request and isinstance(m, Accepted), 30)
    client.wait_for(lambda m: m.job_id == accepted.job_id and isinstance(m, MeshSnapshot), timeout)
    seconds = time.monotonic() - started
    client.cancel(accepted.job_id)
    client.wait_for(lambda m: m.job_id == accepted.job_id and isinstance(m, Done), 120)
    return round(seconds, 2)


def run(clients: int = 20, steps: int = 60, mesh_every: int = 5, timeout: float = 600.0) -> dict[str, Any]:
    if clients < 1:
        raise ValueError("clients must be at least 1")
    address = f"tcp://127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory(prefix="asd-bench-serve-") as tmp:
        log = Path(tmp) / "server.log"
        with open(log, "wb") as handle:
            server = subprocess.Popen([sys.executable, "-m", "asd_backend.cli", "serve", "--bind", address,
                                       "--results", str(Path(tmp) / "results"), "--teacher", "tiny",
                                       "--device", "cpu"], stdout=handle, stderr=subprocess.STDOUT)
        followers = [AsdClient(address, client_name=f"bench-{i}", dead_after=60.0) for i in range(clients)]
        try:
            deadline = time.monotonic() + 120
            while any(c.welcome is None for c in followers):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the server did not greet every client:\n{log.read_text()[-2000:]}")
                for c in followers:
                    c.poll(timeout=0.01)
            first_mesh = {"cold": _time_to_first_mesh(followers[0])}
            request = followers[0].submit("a benchmark teapot", preset="smoke", steps=steps, mesh_every=mesh_every)
            accepted = followers[0].wait_for(lambda m: m.parent_id == request and isinstance(m, Accepted), 30)
            job = accepted.job_id
            for c in followers[1:]:
                c.attach(job)
            progress_ms: list[float] = []
            mesh_ms: list[float] = []
            snapshots_seen = [set() for _ in followers]
            done = [False] * clients
            started = time.monotonic()
            while not all(done):
                if time.monotonic() - started > timeout:
                    raise TimeoutError("the job did not finish in time")
                for i, c in enumerate(followers):
                    for msg in c.poll(timeout=0.0 if i else 0.005):
                        if msg.job_id != job:
                            continue
                        if isinstance(msg, Progress):
                            progress_ms.append(_age_ms(msg.timestamp))
                        elif isinstance(msg, MeshSnapshot):
                            mesh_ms.append(_age_ms(msg.timestamp))
                            snapshots_seen[i].add(msg.snapshot)
                        elif isinstance(msg, Done):
                            done[i] = True
            seconds = time.monotonic() - started
            first_mesh["warm"] = _time_to_first_mesh(followers[0])
        finally:
            for c in followers:
                c.close()
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
    per_client = [len(s) for s in snapshots_seen]
    return {"benchmark": "serve", "clients": clients, "steps": steps, "mesh_every": mesh_every,
            "job_seconds": round(seconds, 2), "progress_latency": _summary(progress_ms),
            "mesh_latency": _summary(mesh_ms), "snapshots_per_client": {"min": min(per_client),
                                                                       "max": max(per_client)},
            "time_to_first_mesh_seconds": first_mesh,
            "note": "latency = arrival minus the header timestamp (set where the message was made: the worker)"}

