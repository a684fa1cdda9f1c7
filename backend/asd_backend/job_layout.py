"""What a job's folder holds, named once (torch-free: the store and the front end read it). The server's
job folders and the CLI's `NAME_run/` folders are laid out the same (job_runner.py writes both).

    <job>/job.json             the record: spec, status, owner (server/store.py; the server only)
    <job>/checkpoint.pt        the loop's state, to resume (train/text_to_3d.py), and
    <job>/checkpoint.json      its step and spec, readable without torch
    <job>/mesh.glb             the final mesh; preview.png its render
    <job>/snapshots/           the streamed previews: snapshot_NNN.glb and .png
    <job>/turntable/           turntable_NN.png, when output.turntable asks for frames
    <job>/image.png            an image job's result; frames/step_NNNNN.png its frames (image.every)
    <job>/texture.png          an edit's result
    <job>/inputs.npz           an edit's mesh and texture, as the client sent them
"""

RECORD = "job.json"
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_RECORD = "checkpoint.json"
MESH = "mesh.glb"
PREVIEW = "preview.png"
IMAGE = "image.png"
TEXTURE = "texture.png"
EDIT_INPUTS = "inputs.npz"


def snapshot(index: int) -> str:
    """A streamed preview's name without its suffix (.glb for the mesh, .png for the render)."""
    return f"snapshots/snapshot_{index:03d}"


def turntable_frame(index: int) -> str:
    return f"turntable/turntable_{index:02d}.png"


def image_frame(step: int) -> str:
    return f"frames/step_{step:05d}.png"
