"""The sidebar panel (View3D ▸ Sidebar ▸ ASD): prompt and settings, progress, jobs, preview."""

from __future__ import annotations

import textwrap

import bpy
from bpy.types import Panel, UIList

from . import connection, properties, scene


class ASD_UL_jobs(UIList):
    ICONS = {"queued": "TIME", "running": "PLAY", "completed": "CHECKMARK", "cancelled": "CANCEL",
             "failed": "ERROR", "interrupted": "PAUSE", "unknown": "QUESTION"}

    KINDS = {"generate": "MESH_MONKEY", "edit_texture": "BRUSH_DATA", "image": "IMAGE_DATA"}

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0):
        row = layout.row(align=True)
        image = bpy.data.images.get(item.preview) if item.preview else None
        if image is not None:
            image.preview_ensure()
            row.label(text="", icon_value=image.preview.icon_id)  # the job's newest preview render
        row.label(text="", icon=self.KINDS.get(item.kind, "QUESTION"))  # generate or edit, at a glance
        row.label(text=item.prompt or item.job_id, icon=self.ICONS.get(item.status, "QUESTION"))
        if item.status in ("running", "queued") and item.total:
            row.label(text=f"{item.step}/{item.total}")
        else:
            row.label(text=item.status)


class VIEW3D_PT_asd(Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "ASD"
    bl_label = "ASD Studio"

    def draw(self, context: bpy.types.Context) -> None:
        props = properties.get(context)
        layout = self.layout
        layout.prop(props, "prompt", text="")
        layout.prop(props, "negative_prompt")
        col = layout.column(align=True)
        col.prop(props, "method")
        col.prop(props, "preset")
        col.prop(props, "cfg")
        col.prop(props, "teacher")
        row = col.row(align=True)
        row.prop(props, "seed")
        row.operator("asd.random_seed", text="", icon="FILE_REFRESH")
        row = layout.row(align=True)
        row.scale_y = 1.4
        row.operator("asd.generate", icon="SHADERFX")
        row.operator("asd.cancel", text="", icon="CANCEL")
        if props.active_job:
            layout.progress(factor=props.progress, type="BAR", text=props.progress_text or "waiting…")
        width = max(20, int(context.region.width / (7 * context.preferences.system.ui_scale))) if context.region else 40
        if props.status:
            wrapped_label(layout, props.status, "CANCEL" if props.status_error else "INFO", width)
        for level, text in connection.recent_messages()[-2:]:
            if level != "INFO":
                wrapped_label(layout, text[:300], ICONS[level], width)


ICONS = {"ERROR": "CANCEL", "WARNING": "ERROR", "INFO": "INFO"}  # Blender's warning triangle is "ERROR"


def wrapped_label(layout, text: str, icon: str, width: int) -> None:
    """A long message on as many lines as the sidebar needs (a label is cut at the panel's edge)."""
    lines = textwrap.wrap(text, width) or [""]
    column = layout.column(align=True)
    for i, line in enumerate(lines):
        column.label(text=line, icon=icon if i == 0 else "BLANK1")


class VIEW3D_PT_asd_texture(Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "ASD"
    bl_label = "Edit Texture"
    bl_parent_id = "VIEW3D_PT_asd"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        props = properties.get(context)
        layout = self.layout
        layout.prop(props, "edit_prompt")
        layout.prop(props, "source_prompt")
        col = layout.column(align=True)
        col.prop(props, "edit_method")
        col.prop(props, "strength")
        col.prop(props, "edit_steps")
        layout.prop(props, "edit_smart_uv")
        row = layout.row(align=True)
        row.operator("asd.edit_texture", icon="BRUSH_DATA")
        row.operator("asd.revert_texture", text="", icon="LOOP_BACK")


class VIEW3D_PT_asd_jobs(Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "ASD"
    bl_label = "Jobs"
    bl_parent_id = "VIEW3D_PT_asd"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        props = properties.get(context)
        layout = self.layout
        layout.template_list("ASD_UL_jobs", "", props, "jobs", props, "jobs_index", rows=3)
        row = layout.row(align=True)
        row.operator("asd.refresh_jobs", icon="FILE_REFRESH")
        row.operator("asd.attach", icon="IMPORT")
        row.operator("asd.resume", icon="PLAY")


class VIEW3D_PT_asd_preview(Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "ASD"
    bl_label = "Preview"
    bl_parent_id = "VIEW3D_PT_asd"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return scene.PREVIEW_IMAGE in bpy.data.images

    def draw(self, context: bpy.types.Context) -> None:
        image = bpy.data.images[scene.PREVIEW_IMAGE]
        image.preview_ensure()
        self.layout.template_icon(icon_value=image.preview.icon_id, scale=8.0)
