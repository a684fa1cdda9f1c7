"""Blender's app handlers: after undo or redo, and after a file is opened, the job list is the
backend's again (undo history and saved files hold old job states)."""

from __future__ import annotations

import bpy
from bpy.app.handlers import persistent

from . import connection, properties


@persistent
def after_undo(*_args) -> None:
    if hasattr(bpy.types.Scene, "asd"):
        connection.resync_jobs(properties.get())


@persistent
def after_load(*_args) -> None:
    if hasattr(bpy.types.Scene, "asd"):
        connection.after_load()


HANDLERS = ((bpy.app.handlers.undo_post, after_undo), (bpy.app.handlers.redo_post, after_undo),
            (bpy.app.handlers.load_post, after_load))


def register() -> None:
    for handlers, function in HANDLERS:
        if function not in handlers:
            handlers.append(function)


def unregister() -> None:
    for handlers, function in HANDLERS:
        if function in handlers:
            handlers.remove(function)
