"""Operators: generate, cancel, attach, resume, test connection, start the local backend, keys, seed."""

from __future__ import annotations

import random

import bpy
from bpy.props import StringProperty
from bpy.types import Operator

from . import connection, preferences, properties, protocol, texture_edit


def _connected_or_report(operator: Operator, context: bpy.types.Context):
    """The session if its backend has answered; otherwise None, with the reason reported as an error
    and shown in the panel (nothing is sent later)."""
    try:
        return connection.connected_session(context)
    except (ValueError, RuntimeError) as exc:
        connection.set_status(properties.get(context), protocol.reason(exc), error=True)
        operator.report({"ERROR"}, protocol.reason(exc))
        return None


class ASD_OT_generate(Operator):
    """Generate a 3D object from the prompt on the backend; it streams into the scene at the 3D cursor"""

    bl_idname = "asd.generate"
    bl_label = "Generate"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if properties.get(context).prompt.strip():
            return True
        cls.poll_message_set("Type a prompt first, for example 'a ceramic teapot'")
        return False

    def execute(self, context: bpy.types.Context) -> set[str]:
        props = properties.get(context)
        prompt = props.prompt.strip()
        session = _connected_or_report(self, context)
        if session is None:
            return {"CANCELLED"}
        options = {"negative_prompt": props.negative_prompt, "method": props.method, "preset": props.preset,
                   "cfg": props.cfg, "seed": props.seed}
        if props.teacher.strip():
            options["teacher"] = props.teacher.strip()
        try:
            request = session.submit(protocol.partial_from_options("generate", prompt=prompt, **options))
        except (ValueError, ConnectionError) as exc:  # a setting out of range, or no backend answering now
            connection.set_status(props, protocol.reason(exc), error=True)
            self.report({"ERROR"}, protocol.reason(exc))
            return {"CANCELLED"}
        connection.remember_target(request, context)
        connection.follow_batch([])
        props.active_request, props.active_job = request, ""
        connection.set_status(props, "submitted, waiting for the backend…")
        props.progress, props.progress_text = 0.0, ""
        return {"FINISHED"}


class ASD_OT_cancel(Operator):
    """Stop the job (its last checkpoint is kept on the backend)"""

    bl_idname = "asd.cancel"
    bl_label = "Cancel"

    job_id: StringProperty(default="", options={"SKIP_SAVE"})

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if connection.has_running_job(context):
            return True
        cls.poll_message_set("No job is queued or running")
        return False

    def execute(self, context: bpy.types.Context) -> set[str]:
        props = properties.get(context)
        batch = [] if self.job_id else [j.job_id for j in connection.batch_jobs() if not j.finished]
        job_ids = batch or [self.job_id or props.active_job]  # the panel's batch: all of its jobs
        if not job_ids[0]:
            self.report({"WARNING"}, "No job to cancel")
            return {"CANCELLED"}
        for job_id in job_ids:
            connection.session(context).cancel(job_id)
        connection.set_status(props, "cancelling…")  # until the job ends (the tick keeps it)
        return {"FINISHED"}


class ASD_OT_attach(Operator):
    """Follow a job on the backend again: its newest mesh comes into the scene, then live updates"""

    bl_idname = "asd.attach"
    bl_label = "Attach"

    job_id: StringProperty(default="", options={"SKIP_SAVE"})

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        props = properties.get(context)
        if 0 <= props.jobs_index < len(props.jobs):
            return True
        cls.poll_message_set("Refresh the job list and select a job first")
        return False

    def execute(self, context: bpy.types.Context) -> set[str]:
        props = properties.get(context)
        job_id = self.job_id
        if not job_id and 0 <= props.jobs_index < len(props.jobs):
            job_id = props.jobs[props.jobs_index].job_id
        if not job_id:
            self.report({"WARNING"}, "Select a job in the list first")
            return {"CANCELLED"}
        connection.session(context).attach(job_id)
        connection.follow_batch([])
        props.active_job = job_id
        return {"FINISHED"}


class ASD_OT_resume(Operator):
    """Continue the selected job from its last checkpoint on the backend (failed, cancelled or interrupted
    generate jobs); it streams into its object again"""

    bl_idname = "asd.resume"
    bl_label = "Resume"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        props = properties.get(context)
        if not 0 <= props.jobs_index < len(props.jobs):
            cls.poll_message_set("Refresh the job list and select a job first")
            return False
        item = props.jobs[props.jobs_index]
        if item.kind != "generate" or item.status not in protocol.RESUMABLE_STATES:
            cls.poll_message_set("Only a failed, cancelled or interrupted generate job resumes")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        props = properties.get(context)
        session = _connected_or_report(self, context)
        if session is None:
            return {"CANCELLED"}
        job_id = props.jobs[props.jobs_index].job_id
        request = session.resume(job_id)
        connection.remember_target(request, context)
        connection.follow_batch([])
        props.active_request, props.active_job = request, job_id
        connection.set_status(props, f"resuming {job_id}…")
        return {"FINISHED"}


class ASD_OT_refresh_jobs(Operator):
    """Ask the backend for its job list"""

    bl_idname = "asd.refresh_jobs"
    bl_label = "Refresh Jobs"

    def execute(self, context: bpy.types.Context) -> set[str]:
        connection.session(context).list_jobs()
        return {"FINISHED"}


class ASD_OT_test_connection(Operator):
    """Check that the backend answers (the result shows in the panel's status line within seconds)"""

    bl_idname = "asd.test_connection"
    bl_label = "Test Connection"

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            connection.start_test(context)
        except (ValueError, RuntimeError) as exc:
            self.report({"ERROR"}, protocol.reason(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Testing {preferences.get(context).address}…")
        return {"FINISHED"}


class ASD_OT_start_backend(Operator):
    """Start `asd serve` on this machine with the Python set in the preferences (stopped when Blender quits)"""

    bl_idname = "asd.start_backend"
    bl_label = "Start Local Backend"

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            message = connection.start_backend(context)
        except (ValueError, OSError) as exc:
            self.report({"ERROR"}, protocol.reason(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, message)
        return {"FINISHED"}


class ASD_OT_generate_client_key(Operator):
    """Create a CURVE keypair for this Blender; give the public key to the server's admin (asd keys allow)"""

    bl_idname = "asd.generate_client_key"
    bl_label = "Generate Client Key"

    def execute(self, context: bpy.types.Context) -> set[str]:
        import zmq

        public, secret = zmq.curve_keypair()
        prefs = preferences.get(context)
        prefs.client_public_key, prefs.client_secret_key = public.decode(), secret.decode()
        context.window_manager.clipboard = prefs.client_public_key
        self.report({"INFO"}, f"Public key copied to the clipboard: {prefs.client_public_key}")
        return {"FINISHED"}


class ASD_OT_random_seed(Operator):
    """Pick a random seed"""

    bl_idname = "asd.random_seed"
    bl_label = "Random Seed"

    def execute(self, context: bpy.types.Context) -> set[str]:
        properties.get(context).seed = random.randrange(2**31)
        return {"FINISHED"}


class ASD_OT_edit_texture(Operator):
    """Edit the base-colour textures of the selected mesh objects from the prompt (the originals are kept)"""

    bl_idname = "asd.edit_texture"
    bl_label = "Edit Texture"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not properties.get(context).edit_prompt.strip():
            cls.poll_message_set("Type what the texture should become, e.g. 'weathered bronze'")
            return False
        if not any(o.type == "MESH" for o in context.selected_objects):
            cls.poll_message_set("Select one or more mesh objects to edit")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        props = properties.get(context)
        prompt = props.edit_prompt.strip()
        objects = [o for o in context.selected_objects if o.type == "MESH"]
        try:
            session = connection.connected_session(context)
            side = session.welcome.limits.get("max_edit_texture_side", texture_edit.MAX_SIDE)
            prepared = [(obj, texture_edit.prepare(obj, props.edit_smart_uv, side)) for obj in objects]
        except (ValueError, RuntimeError) as exc:
            connection.set_status(props, protocol.reason(exc), error=True)
            self.report({"ERROR"}, protocol.reason(exc))
            return {"CANCELLED"}
        requests: list[str] = []  # the panel follows every object's job, not only the last
        for obj, data in prepared:
            try:
                spec = protocol.partial_from_options(
                    "edit_texture", prompt=prompt, source_prompt=props.source_prompt.strip() or obj.name,
                    object_name=obj.name, strength=props.strength, steps=props.edit_steps, method=props.edit_method,
                    cfg=props.cfg, seed=props.seed, negative_prompt=props.negative_prompt)
                request = session.submit(spec, vertices=data["vertices"], faces=data["faces"], uvs=data["uvs"],
                                         texture=data["texture"])
            except (ValueError, ConnectionError) as exc:  # a setting out of range, or no backend answering now
                connection.follow_batch(requests)  # those already sent run; the panel follows them
                connection.set_status(props, protocol.reason(exc), error=True)
                self.report({"ERROR"}, protocol.reason(exc))
                return {"CANCELLED"}
            connection.remember_edit(request, obj.name, prompt, data)
            requests.append(request)
            props.active_request, props.active_job = request, ""
        connection.follow_batch(requests)
        connection.set_status(props, f"editing {len(prepared)} object(s)…")
        return {"FINISHED"}


class ASD_OT_revert_texture(Operator):
    """Step back one texture edit on the selected objects: the look before it comes back (the edit stays in the file)"""

    bl_idname = "asd.revert_texture"
    bl_label = "Revert Texture"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if any(o.type == "MESH" and texture_edit.history(o) for o in context.selected_objects):
            return True
        cls.poll_message_set("None of the selected objects has an ASD texture edit")
        return False

    def execute(self, context: bpy.types.Context) -> set[str]:
        reverted = [o.name for o in context.selected_objects if o.type == "MESH" and texture_edit.revert(o)]
        if not reverted:
            self.report({"WARNING"}, "None of the selected objects has an ASD texture edit")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Reverted {', '.join(reverted)}")
        return {"FINISHED"}
