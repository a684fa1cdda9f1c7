"""Add-on preferences: where the backend is, the CURVE keys, and the local backend's Python."""

from __future__ import annotations

import bpy
from bpy.props import StringProperty
from bpy.types import AddonPreferences

PACKAGE = __package__  # "asd_studio", or "bl_ext.<repo>.asd_studio" when installed as an extension


def get(context: bpy.types.Context | None = None) -> ASD_AddonPreferences:
    context = context or bpy.context
    addon = context.preferences.addons.get(PACKAGE)
    if addon is None:
        raise RuntimeError("ASD Studio is not enabled in Preferences ▸ Add-ons")
    return addon.preferences


class ASD_AddonPreferences(AddonPreferences):
    bl_idname = PACKAGE

    address: StringProperty(name="Backend address", default="tcp://127.0.0.1:5555",
                            description="ZeroMQ address of `asd serve` (tcp://HOST:PORT)")
    server_public_key: StringProperty(name="Server public key", default="",
                                      description="The server's CURVE public key (asd keys init prints it); "
                                                  "empty for a backend on this machine")
    client_public_key: StringProperty(name="Client public key", default="",
                                      description="This Blender's CURVE public key: the server admin allows it "
                                                  "with `asd keys allow`")
    client_secret_key: StringProperty(name="Client secret key", default="", subtype="PASSWORD",
                                      description="This Blender's CURVE secret key (keep it private)")
    backend_python: StringProperty(name="Backend Python", default="", subtype="FILE_PATH",
                                   description="A Python with the ASD backend installed (for example the "
                                               "project's .venv/bin/python), used by Start local backend")
    backend_teacher: StringProperty(name="Teacher", default="sd",
                                    description="Teacher of the local backend: sd, sd:PATH, toy (trained here, "
                                                "runs on a CPU), tiny or random-sd21")
    backend_results: StringProperty(name="Results folder", default="", subtype="DIR_PATH",
                                    description="Where the local backend keeps jobs (default: a folder in the "
                                                "user's temp directory)")
    output_dir: StringProperty(name="Save meshes to", default="//asd/", subtype="DIR_PATH",
                               description="Final meshes are saved here as .glb ('//' is the .blend's folder)")

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        col = layout.column()
        col.prop(self, "address")
        row = col.row(align=True)
        row.operator("asd.test_connection", icon="LINKED")
        row.operator("asd.start_backend", icon="PLAY")
        box = layout.box()
        box.label(text="Remote backend (CURVE encryption)", icon="LOCKED")
        box.prop(self, "server_public_key")
        box.prop(self, "client_public_key")
        box.prop(self, "client_secret_key")
        box.operator("asd.generate_client_key", icon="KEY_HLT")
        box = layout.box()
        box.label(text="Local backend", icon="CONSOLE")
        box.prop(self, "backend_python")
        box.prop(self, "backend_teacher")
        box.prop(self, "backend_results")
        layout.prop(self, "output_dir")
