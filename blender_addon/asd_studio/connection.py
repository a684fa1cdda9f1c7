"""The timer tick around the session: the only place streamed data reaches Blender.

`tick()` runs on the main thread from `bpy.app.timers` (every 0.1 s while a session exists) and
never blocks: it polls the socket, then applies meshes, images and job states. Tests call it
directly, since timers do not fire in background mode.
"""

from __future__ import annotations

import atexit
import dataclasses
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bpy

from . import preferences, properties, protocol, scene, texture_edit
from .session import (
    ImageUpdate,
    JobUpdate,
    MeshUpdate,
    Notice,
    Session,
    batch_text,
    progress_text,
    status_text,
)

TICK_INTERVAL = 0.1
TEST_TIMEOUT = 5.0

@dataclasses.dataclass
class ConnectionState:
    """Everything this Blender holds about its backend, in one place (`state`); shutdown() resets it."""

    session: Session | None = None
    session_key: tuple = ()  # the address and keys `session` was made for
    test: tuple[Session, float] | None = None  # a connection test's probe and its deadline
    targets: dict[str, dict] = dataclasses.field(default_factory=dict)
    """Submit request id -> where its object goes: scene name, 3D-cursor location."""
    edits: dict[str, dict] = dataclasses.field(default_factory=dict)
    """Submit request id -> the object whose texture it edits."""
    backend: subprocess.Popen | None = None  # the local backend this Blender started
    messages: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    """(level, text) of recent notices, newest last."""
    last_state: str = ""  # the session's connection state at the previous tick
    batch: list[str] = dataclasses.field(default_factory=list)
    """Submit request ids the panel follows together (an edit of several selected objects); empty: one job."""


state = ConnectionState()


def session(context: bpy.types.Context | None = None) -> Session:
    """The session for the preferences' address, (re)connecting when the address or keys changed."""
    prefs = preferences.get(context)
    wanted = (prefs.address, prefs.server_public_key, prefs.client_public_key, prefs.client_secret_key)
    if state.session is not None and state.session_key != wanted:
        state.session.close()
        state.session = None
    if state.session is None:
        state.session = Session(prefs.address, online_access=bpy.app.online_access,
                                server_public_key=prefs.server_public_key, client_public_key=prefs.client_public_key,
                                client_secret_key=prefs.client_secret_key)
        state.session_key = wanted
        start_timer()
    return state.session


def connected_session(context: bpy.types.Context | None = None) -> Session:
    """The session, if its backend has answered; otherwise start connecting and raise RuntimeError
    with what to do. Jobs are only submitted to a backend that answered, so a click made while none
    does is never sent later, when one appears."""
    current = session(context)  # the tick (every 0.1 s) follows the handshake
    if current.connected:
        return current
    raise RuntimeError(f"No backend has answered at {current.address} yet ({current.status}): start one "
                       "(Start Local Backend, or `asd serve` on the GPU box), then press the button again "
                       "once the status says connected")


def has_running_job(context: bpy.types.Context | None = None) -> bool:
    """Whether a job this Blender follows is queued or running (what Cancel can act on)."""
    if state.session is None:
        return False
    props = properties.get(context)
    job = state.session.jobs.get(props.active_job)
    if job is not None and not job.finished:
        return True
    if any(not j.finished for j in batch_jobs()):
        return True
    return any(item.status in ("queued", "running") for item in props.jobs)


def start_timer() -> None:
    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=TICK_INTERVAL, persistent=True)


def remember_target(request_id: str, context: bpy.types.Context) -> None:
    """Where the object of the job submitted by `request_id` goes: this scene, at the 3D cursor."""
    clear_errors()
    state.targets[request_id] = {"scene": context.scene.name, "location": tuple(context.scene.cursor.location)}


def follow_batch(request_ids: list[str]) -> None:
    """The panel follows these jobs together (one per selected object) instead of only the last one."""
    state.batch = list(request_ids) if len(request_ids) > 1 else []


def batch_jobs(current: Session | None = None) -> list:
    """The jobs of the batch the panel follows that the backend has accepted (JobViews)."""
    current = current or state.session
    if current is None or not state.batch:
        return []
    return [j for j in current.jobs.values() if j.request_id and j.request_id in state.batch]


def remember_edit(request_id: str, object_name: str, prompt: str, prepared: dict) -> None:
    """What the edit submitted by `request_id` applies to: the object, its image node, the look it replaces."""
    clear_errors()
    state.edits[request_id] = {"object": object_name, "prompt": prompt, "original": prepared["original"],
                          "node": prepared["node"], "before": prepared["before"]}


def recent_messages() -> list[tuple[str, str]]:
    return list(state.messages[-5:])


def _notice(level: str, text: str) -> None:
    state.messages.append((level, text))
    del state.messages[:-20]
    print(f"ASD Studio: {level}: {text}", file=sys.stderr)


def tick() -> float | None:
    """Poll, apply, return when to run again (None stops the timer when there is nothing to follow)."""
    _tick_test()
    if state.session is None:
        return TICK_INTERVAL if state.test is not None else None
    props = properties.get()
    for update in state.session.poll():
        if isinstance(update, JobUpdate):
            _apply_job(props, update)
        elif isinstance(update, MeshUpdate):
            _apply_mesh(props, update)
        elif isinstance(update, ImageUpdate) and update.role == "texture":
            _apply_texture(update)
        elif isinstance(update, ImageUpdate):
            scene.update_preview(update.pixels, update.width, update.height)
            _apply_job_preview(props, update)
        elif isinstance(update, Notice):
            _notice(update.level, update.text)
            if update.level == "ERROR" and (update.job_id is None or update.job_id == props.active_job):
                set_status(props, update.text, error=True)
    _show_state(props, state.session)
    _redraw()
    return TICK_INTERVAL


def set_status(props, text: str, error: bool = False) -> None:
    """The panel's status line; errors are drawn as errors."""
    props.status, props.status_error = text, error


def clear_errors() -> None:
    """Forget the notices of errors and warnings: a new job starts, or the connection came back."""
    state.messages[:] = [m for m in state.messages if m[0] == "INFO"]


def _show_state(props, current: Session) -> None:
    """Status line and progress bar from the session's state, every tick: a lost connection first,
    then the job the panel follows (its phase is always the current one), else the connection. An
    error stays until its cause is gone: the connection is (back) up, or the next job starts."""
    now, was = current.client.state, state.last_state
    state.last_state = now
    if now == "lost":
        set_status(props, current.status, error=True)
        return
    if now == "connected" and was != "connected":
        clear_errors()
        set_status(props, current.status)
    if state.batch:  # several objects edited at once: the panel follows them all
        jobs = batch_jobs(current)
        props.progress = sum(1.0 if j.status == "completed" else j.fraction for j in jobs) / len(state.batch)
        props.progress_text = batch_text(jobs, len(state.batch))
        failed = [j for j in jobs if j.status == "failed"]
        if failed:
            set_status(props, f"{len(failed)} of {len(state.batch)} failed: {failed[0].error or 'see the backend log'}",
                       error=True)
        else:
            set_status(props, props.progress_text)
        return
    job = current.jobs.get(props.active_job) if props.active_job else None
    if job is not None:
        props.progress = 1.0 if job.status == "completed" else job.fraction
        props.progress_text = progress_text(job)
        set_status(props, *status_text(job))
    elif now == "connecting" and not props.status_error:
        set_status(props, current.status)


def _apply_job_preview(props, update: ImageUpdate) -> None:
    """The job's own preview image, for its row in the job list."""
    name = scene.JOB_PREVIEW.format(job_id=update.job.job_id)
    image = scene.update_preview(update.pixels, update.width, update.height, name=name)
    if update.final:
        # Saved inside the .blend: the job list keeps its pictures when the file is reopened (a row names
        # its image, which is no user of it: without a fake user Blender would not save it at all).
        image.use_fake_user = True
        image.pack()
    for item in props.jobs:
        if item.job_id == update.job.job_id:
            item.preview = name


def _apply_job(props, update: JobUpdate) -> None:
    job = update.job
    if job.request_id and job.request_id == props.active_request:
        props.active_job = job.job_id  # the job this panel just submitted has its id now
    item = next((i for i in props.jobs if i.job_id == job.job_id), None)
    if item is None:
        item = props.jobs.add()
        item.job_id = job.job_id
    item.prompt, item.kind, item.status, item.step, item.total = job.prompt, job.kind, job.status, job.step, job.total


def _apply_mesh(props, update: MeshUpdate) -> None:
    job = update.job
    target = state.targets.get(job.request_id, {})
    scn = bpy.data.scenes.get(target.get("scene", "")) or bpy.context.scene
    location = target.get("location", tuple(scn.cursor.location))
    settings = {"prompt": job.prompt, "seed": job.spec.get("seed"),
                "method": job.spec.get("guidance", {}).get("method"), "server": state.session.address}
    obj = scene.ensure_object(job.job_id, job.prompt or job.job_id, scn, location, settings)
    scene.apply_mesh(obj, update.buffers, smooth=update.final)
    scene.stand_on(obj, location, update.buffers)
    for item in props.jobs:
        if item.job_id == job.job_id:
            item.object_name = obj.name
    if update.final:
        try:
            folder = scene.output_folder(preferences.get().output_dir)
            path = scene.export_glb(obj, folder / f"{obj.name.replace(' ', '_')}_{job.job_id}.glb")
            obj["asd_file"] = str(path)
            _notice("INFO", f"saved {path}")
        except (OSError, RuntimeError) as exc:
            _notice("WARNING", f"could not save the final mesh: {exc}")
        bpy.ops.ed.undo_push(message=f"ASD Studio: {obj.name}")


def _apply_texture(update: ImageUpdate) -> None:
    edit = state.edits.get(update.job.request_id)
    obj = bpy.data.objects.get(edit["object"]) if edit else None
    if obj is None:
        return
    image = texture_edit.apply_edit(obj, update.pixels, update.width, update.height, edit, update.job.job_id)
    if update.final:
        try:
            path = texture_edit.save_png(image, scene.output_folder(preferences.get().output_dir))
            _notice("INFO", f"saved {path}")
        except (OSError, RuntimeError) as exc:
            _notice("WARNING", f"could not save the edited texture: {exc}")
        bpy.ops.ed.undo_push(message=f"ASD Studio: edit {obj.name}")


def _redraw() -> None:
    for window in getattr(bpy.context.window_manager, "windows", []):
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


# -- test connection --------------------------------------------------------------------------


def start_test(context: bpy.types.Context) -> None:
    """Begin a non-blocking connection test; the tick reports its outcome in the status line."""
    prefs = preferences.get(context)
    if state.test is not None:
        state.test[0].close()
    probe = Session(prefs.address, online_access=bpy.app.online_access, client_name="asd-studio-blender-test",
                    server_public_key=prefs.server_public_key, client_public_key=prefs.client_public_key,
                    client_secret_key=prefs.client_secret_key, dead_after=TEST_TIMEOUT)
    state.test = (probe, time.monotonic() + TEST_TIMEOUT)
    properties.get(context).status = f"testing {prefs.address}…"
    start_timer()


def _tick_test() -> None:
    if state.test is None:
        return
    probe, deadline = state.test
    updates = probe.poll()
    props = properties.get()
    errors = [u for u in updates if isinstance(u, Notice) and u.level == "ERROR"]
    if probe.welcome is not None:
        set_status(props, probe.status)
        _notice("INFO", probe.status)
    elif errors:
        set_status(props, errors[0].text, error=True)
        _notice("ERROR", errors[0].text)
    elif time.monotonic() > deadline:
        set_status(props, probe.client.lost_reason(), error=True)
        _notice("ERROR", props.status)
    else:
        return
    probe.close()
    state.test = None


# -- local backend ------------------------------------------------------------------------------


def start_backend(context: bpy.types.Context) -> str:
    """Spawn `asd serve` on loopback with the Python from the preferences; stopped when Blender quits."""
    prefs = preferences.get(context)
    python = bpy.path.abspath(prefs.backend_python) if prefs.backend_python else ""
    if not python or not Path(python).is_file():
        raise ValueError("set Preferences ▸ Add-ons ▸ ASD Studio ▸ Backend Python to a Python that has the backend "
                         "installed (for example the project's .venv/bin/python)")
    if not protocol.is_loopback(prefs.address):
        raise ValueError("a local backend listens on loopback: set the backend address to tcp://127.0.0.1:PORT")
    if state.backend is not None and state.backend.poll() is None:
        return f"a local backend is already running (pid {state.backend.pid})"
    results = bpy.path.abspath(prefs.backend_results) if prefs.backend_results else str(
        Path(tempfile.gettempdir()) / "asd-studio-results")
    log = Path(results) / "server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:
        state.backend = subprocess.Popen([python, "-m", "asd_backend.cli", "serve", "--bind", prefs.address,
                                     "--results", results, "--teacher", prefs.backend_teacher or "sd"],
                                    stdout=handle, stderr=subprocess.STDOUT)
    return f"started a local backend (pid {state.backend.pid}); log: {log}"


def stop_backend() -> None:
    backend = state.backend
    if backend is not None and backend.poll() is None:
        backend.terminate()
        try:
            backend.wait(timeout=10)
        except subprocess.TimeoutExpired:
            backend.kill()
    state.backend = None


atexit.register(stop_backend)


def resync_jobs(props) -> None:
    """The job rows as the backend last said, whatever undo or a reopened file put back: job state is
    the backend's, not the scene's history. Rows the session does not know (a reopened file) say so
    until the backend's list arrives (it is asked on every welcome)."""
    known = state.session.jobs if state.session is not None else {}
    for item in props.jobs:
        job = known.get(item.job_id)
        if job is not None:
            item.prompt, item.kind, item.status, item.step, item.total = (job.prompt or item.prompt, job.kind,
                                                                          job.status, job.step, job.total)
        elif item.status in ("queued", "running"):
            item.status = "unknown"  # not "running": nothing here follows it until the backend says
    job = known.get(props.active_job) if props.active_job else None
    if job is None:
        props.progress, props.progress_text = 0.0, ""
        if props.active_job:
            set_status(props, "reopened: asking the backend about these jobs (Refresh, or they update once it "
                              "answers)")


def after_load() -> None:
    """A .blend was opened: its rows are from when it was saved. Correct them and reconnect."""
    props = properties.get()
    resync_jobs(props)
    if props.jobs:
        try:
            session()  # connects; the welcome asks for the job list, which updates every row
        except (ValueError, RuntimeError) as exc:
            set_status(props, protocol.reason(exc), error=True)


def shutdown() -> None:
    """Close sockets and stop the timer (unregister, or tests)."""
    if bpy.app.timers.is_registered(tick):
        bpy.app.timers.unregister(tick)
    for s in (state.session, state.test[0] if state.test else None):
        if s is not None:
            s.close()
    stop_backend()
    messages = state.messages  # the notices outlive a reconnect (the panel shows them)
    state.__init__()
    state.messages = messages
