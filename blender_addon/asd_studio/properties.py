"""The add-on's scene settings and job list, in one PropertyGroup (Scene.asd)."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, StringProperty
from bpy.types import PropertyGroup

from .protocol import JobSpec

DEFAULTS = JobSpec()  # the job spec's defaults, so the panel starts where a job without settings would

METHODS = [("asd", "ASD", "Adversarial Score Distillation (recommended)"),
           ("vsd", "VSD", "Variational Score Distillation (ProlificDreamer)"),
           ("sds", "SDS", "Score Distillation Sampling (DreamFusion)")]
PRESETS = [("preview", "Preview", "A quick look (minutes on a GPU)"),
           ("standard", "Standard", "Good results (about half an hour on a GPU)"),
           ("paper", "Paper", "The paper's 25k steps"),
           ("toy", "Toy (CPU)", "For the toy teacher (teacher: toy): a real object of its world on a CPU in minutes"),
           ("smoke", "Smoke test", "Seconds: checks that everything works, not a real result")]


class ASD_JobItem(PropertyGroup):
    job_id: StringProperty()
    prompt: StringProperty()
    kind: StringProperty(default="generate")
    status: StringProperty(default="queued")
    step: IntProperty()
    total: IntProperty()
    object_name: StringProperty(description="The object this job streams into")
    preview: StringProperty(description="The image holding this job's newest preview render")


class ASD_SceneProperties(PropertyGroup):
    prompt: StringProperty(name="Prompt", default="", description="What to make, e.g. 'a ceramic teapot'")
    negative_prompt: StringProperty(name="Negative", default="", description="What to avoid")
    method: EnumProperty(name="Method", items=METHODS, default=DEFAULTS.guidance.method)
    preset: EnumProperty(name="Quality", items=PRESETS, default=DEFAULTS.preset)
    cfg: FloatProperty(name="Guidance", default=DEFAULTS.guidance.cfg, min=0.0, max=100.0,
                       description="Classifier-free guidance scale")
    seed: IntProperty(name="Seed", default=0, min=0)
    teacher: StringProperty(name="Teacher", default="", description="Empty: the backend's default teacher")
    edit_prompt: StringProperty(name="Edit", default="", description="What the selected objects' textures should "
                                "become, e.g. 'weathered bronze'")
    source_prompt: StringProperty(name="Source", default="", description="What they are now (default: the "
                                  "object's name)")
    edit_method: EnumProperty(name="Method", items=[*METHODS, ("dds", "DDS", "Delta Denoising Score (fixed "
                                                               "discriminator)")], default=DEFAULTS.guidance.method)
    strength: FloatProperty(name="Strength", default=DEFAULTS.edit.strength, min=0.05, max=1.0, subtype="FACTOR",
                            description="How far the edit may go from the original")
    edit_steps: IntProperty(name="Steps", default=DEFAULTS.edit.steps, min=1, max=20000)
    edit_smart_uv: BoolProperty(name="Smart UV Project", default=False,
                                description="Objects without a UV map get one from Smart UV Project before the "
                                "edit (this adds a UV map to the mesh); without it, such objects are refused")
    status: StringProperty(name="Status", default="")
    status_error: BoolProperty(default=False, description="The status line says what went wrong")
    progress: FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    progress_text: StringProperty(default="")
    active_job: StringProperty(default="", description="The job the panel shows")
    active_request: StringProperty(default="", description="The submit waiting for its job id")
    jobs: CollectionProperty(type=ASD_JobItem)
    jobs_index: IntProperty(default=0)


def get(context: bpy.types.Context | None = None) -> ASD_SceneProperties:
    return (context or bpy.context).scene.asd
