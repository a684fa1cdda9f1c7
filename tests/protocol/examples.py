"""One valid instance of every message type, arrays included, for round-trip and transport tests."""

import numpy as np

from asd_protocol import messages as m
from asd_protocol.job_spec import JobSpec


def mesh_arrays(n_vertices: int = 5, n_faces: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    vertices = rng.normal(size=(n_vertices, 3)).astype(np.float32)
    faces = rng.integers(0, n_vertices, size=(n_faces, 3)).astype(np.uint32)
    colors = rng.integers(0, 256, size=(n_vertices, 4)).astype(np.uint8)
    return vertices, faces, colors


def all_examples() -> list[m.Message]:
    vertices, faces, colors = mesh_arrays()
    uvs = np.random.default_rng(1).random((len(faces), 3, 2)).astype(np.float32)
    texture = np.full((16, 32, 4), 200, np.uint8)
    job = "job-1"
    examples = [
        m.Hello(client="tests/1.0"),
        m.Welcome(server="asd-backend/0.1.0", server_id="s1", capabilities=["generate", "image"],
                  teachers=[m.TeacherInfo(name="tiny", description="random", trained=False)],
                  default_teacher="tiny", methods=["asd", "vsd", "sds"], presets=["smoke", "preview"],
                  limits={"max_prompt_chars": 2000}, heartbeat_interval=1.5),
        m.Heartbeat(),
        m.Submit(spec={"kind": "generate", "prompt": "a teapot", "negative_prompt": "blurry", "preset": "smoke",
                       "seed": 3, "model": {"teacher": "tiny"}, "guidance": {"method": "vsd", "cfg": 7.5},
                       "schedule": {"steps": 10, "resolution_schedule": [[0, 32], [5, 64]]},
                       "output": {"mesh_every": 5, "mc_resolution": 64}}),
        m.Submit(spec={"kind": "edit_texture", "prompt": "weathered bronze",
                       "edit": {"source_prompt": "a statue", "strength": 0.4, "object_name": "Statue"}},
                 vertices=vertices, faces=faces, uvs=uvs, texture=texture),
        m.Submit(spec={"kind": "image", "prompt": "a fox", "image": {"resolution": 64}}),
        m.Cancel(job_id=job),
        m.Attach(job_id=job),
        m.Resume(job_id=job),
        m.ListJobs(limit=5),
        m.Accepted(job_id=job, kind="generate", queue_position=2, spec=JobSpec(prompt="a teapot", seed=1).to_json()),
        m.Jobs(jobs=[m.JobInfo(job_id=job, kind="generate", prompt="a teapot", status="running",
                               created="2026-01-01T00:00:00Z", updated="2026-01-01T00:00:01Z", step=3, total=10,
                               method="asd", snapshots=1)]),
        m.Progress(job_id=job, phase="optimizing", step=3, total=10, loss=0.5, losses={"asd": 0.4, "lora": 0.1},
                   eta_seconds=12.0, elapsed_seconds=3.0),
        m.MeshSnapshot(job_id=job, vertices=vertices, faces=faces, colors=colors, snapshot=1, step=5, final=False),
        m.MeshSnapshot(job_id=job, vertices=vertices, faces=faces, colors=None, snapshot=2, step=10, final=True),
        m.Image(job_id=job, pixels=np.zeros((8, 12, 3), np.uint8), role="preview", step=5),
        m.Texture(job_id=job, pixels=texture, step=5, final=True),
        m.Log(job_id=job, level="warning", text="teacher is untrained"),
        m.Error(code="invalid_field", message="bad", hint="fix it", field="content.prompt"),
        m.Done(job_id=job, status="completed", seconds=12.5, outputs={"mesh": "/tmp/x.glb"}, summary={"steps": 10}),
    ]
    return examples
