"""Start a real `asd serve` subprocess on loopback and talk to it with the real AsdClient."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from asd_protocol.client import AsdClient
from asd_protocol.job_spec import merge, partial_from_options


def partial_spec(prompt: str, kind: str = "generate", spec: dict | None = None, **settings) -> dict:
    """The partial spec a test submits: flat settings named as the CLI names them, over a nested partial."""
    return merge(spec or {}, partial_from_options(kind, prompt=prompt, **settings))


class LiveServer:
    def __init__(self, address: str, process: subprocess.Popen, log: Path, results: Path) -> None:
        self.address, self.process, self.log, self.results = address, process, log, results

    def client(self, **kwargs) -> AsdClient:
        return AsdClient(self.address, client_name="tests", **kwargs)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def worker_pids(self) -> list[int]:
        import json

        pids = []
        for line in self.log_text().splitlines():
            if '"worker_started"' in line:
                pids.append(json.loads(line)["pid"])
        return pids


def start_server(results: Path, port: int, *extra: str, wait: bool = True) -> LiveServer:
    log = results.parent / f"server-{port}-{time.time_ns()}.log"
    address = f"tcp://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "asd_backend.cli", "serve", "--bind", address, "--results", str(results),
           "--teacher", "tiny", "--device", "cpu", *extra]
    with open(log, "w") as handle:
        process = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=os.environ.copy())
    server = LiveServer(address, process, log, results)
    if wait:
        wait_until_serving(server)
    return server


def wait_until_serving(server: LiveServer, timeout: float = 90.0) -> None:
    """Until the server says it listens (it prints that after binding and starting its workers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"asd serve exited with {server.process.returncode}:\n{server.log_text()}")
        if "asd serve: listening on" in server.log_text():
            return
        time.sleep(0.1)
    raise TimeoutError(f"asd serve did not start within {timeout} s:\n{server.log_text()}")


def stop_server(server: LiveServer, sig: int = signal.SIGINT) -> None:
    if server.process.poll() is None:
        server.process.send_signal(sig)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@contextlib.contextmanager
def running_server(results: Path, port: int, *extra: str):
    server = start_server(results, port, *extra)
    try:
        yield server
    finally:
        stop_server(server)
