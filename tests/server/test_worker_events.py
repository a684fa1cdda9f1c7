"""A worker's job events as protocol messages (server/worker.py), with a transport that keeps them."""

from asd_backend.server.worker import Worker, _WorkerEvents
from asd_backend.train.presets import resolve_spec
from asd_protocol import Progress


class KeptWorker(Worker):
    """The Worker's own job handling; `emit` (a subclass's business) keeps the messages."""

    def __init__(self, results) -> None:
        super().__init__(0, "cpu", results)
        self.sent = []

    def emit(self, msg) -> None:
        self.sent.append(msg)


def test_a_resumed_jobs_eta_counts_only_this_runs_steps(tmp_path):
    """Resumed at step 600, the loop's clock starts again: 100 steps in 10 s leave 500 steps, 50 s. The ETA
    was elapsed / step × remaining (7 s here), then jumped as the run went on."""
    worker = KeptWorker(tmp_path)
    events = _WorkerEvents(worker, "job", resolve_spec({"prompt": "a teapot", "preset": "smoke"}))
    events.progress(601, 1200, {"seconds": 0.1, "loss": 1.0})
    events.last_progress = 0.0  # the next report is due (they are at most every PROGRESS_INTERVAL)
    events.progress(700, 1200, {"seconds": 10.0, "loss": 1.0})
    last = [m for m in worker.sent if isinstance(m, Progress)][-1]
    assert last.step == 700 and abs(last.eta_seconds - 10.0 / 100 * 500) < 1e-6
