"""ASD Studio: text-to-3D with Adversarial Score Distillation, streamed live into the scene.

bpy-free modules (protocol, mesh_data, session) import without Blender; the Blender classes are
imported when the add-on registers.
"""

from __future__ import annotations


def classes() -> tuple:
    """Every class the add-on registers, in registration order."""
    from .operators import (
        ASD_OT_attach,
        ASD_OT_cancel,
        ASD_OT_edit_texture,
        ASD_OT_generate,
        ASD_OT_generate_client_key,
        ASD_OT_random_seed,
        ASD_OT_refresh_jobs,
        ASD_OT_resume,
        ASD_OT_revert_texture,
        ASD_OT_start_backend,
        ASD_OT_test_connection,
    )
    from .panels import ASD_UL_jobs, VIEW3D_PT_asd, VIEW3D_PT_asd_jobs, VIEW3D_PT_asd_preview, VIEW3D_PT_asd_texture
    from .preferences import ASD_AddonPreferences
    from .properties import ASD_JobItem, ASD_SceneProperties

    return (ASD_AddonPreferences, ASD_JobItem, ASD_SceneProperties, ASD_OT_generate, ASD_OT_cancel, ASD_OT_attach,
            ASD_OT_resume, ASD_OT_refresh_jobs, ASD_OT_test_connection, ASD_OT_start_backend,
            ASD_OT_generate_client_key, ASD_OT_random_seed, ASD_OT_edit_texture, ASD_OT_revert_texture, ASD_UL_jobs,
            VIEW3D_PT_asd, VIEW3D_PT_asd_texture, VIEW3D_PT_asd_jobs, VIEW3D_PT_asd_preview)


def register() -> None:
    import bpy

    from . import handlers
    from .properties import ASD_SceneProperties

    for cls in classes():
        bpy.utils.register_class(cls)
    bpy.types.Scene.asd = bpy.props.PointerProperty(type=ASD_SceneProperties)
    handlers.register()


def unregister() -> None:
    import bpy

    from . import connection, handlers

    handlers.unregister()
    connection.shutdown()
    del bpy.types.Scene.asd
    for cls in reversed(classes()):
        bpy.utils.unregister_class(cls)
