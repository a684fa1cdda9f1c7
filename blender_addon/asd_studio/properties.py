"""The add-on's scene settings and job list, in one PropertyGroup (Scene.asd)."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, StringProperty
from bpy.types import PropertyGroup

from .protocol import JobSpec

DEFAULTS = JobSpec()  # the job spec's defaults, so the panel starts where a job without settings would

# Labels for the names a server offers; the lists themselves come from its welcome (`offered`), and these
# orders stand in only until a server has answered.
METHODS = [("asd", "ASD", "Adversarial Score Distillation (recommended)"),
           ("vsd", "VSD", "Variational Score Distillation (ProlificDreamer)"),
           ("sds", "SDS", "Score Distillation Sampling (DreamFusion)")]
EDIT_METHODS = [*METHODS, ("dds", "DDS", "Delta Denoising Score (fixed discriminator)")]
PRESETS = [("preview", "Preview", "A quick look (minutes on a GPU)"),
           ("standard", "Standard", "Good results (about half an hour on a GPU)"),
           ("paper", "Paper", "The paper's 25k steps"),
           ("toy", "Toy (CPU)", "For the toy teacher (teacher: toy): a real object of its world on a CPU in minutes"),
           ("smoke", "Smoke test", "Seconds: checks that everything works, not a real result")]
_items_cache: dict[str, list] = {}  # Blender needs the strings of dynamic enum items kept alive


def offered(known: list[tuple[str, str, str]], names: list[str] | None, key: str) -> list[tuple[str, str, str]]:
    """Enum items for the names a server offers, in its order (unknown names get a plain label), or `known`
    while no server has said. Each item keeps a fixed number, so a saved choice survives other lists."""
    labels = {name: (label, text) for name, label, text in known}
    numbers = {name: i for i, (name, _, _) in enumerate(known)}
    chosen = [(n, *labels.get(n, (n.title(), f"{n} (offered by the server)"))) for n in (names or [])] or known
    items = [(name, label, text, numbers.get(name, 100 + i)) for i, (name, label, text) in enumerate(chosen)]
    _items_cache[key] = items
    return items


def _welcome():
    from . import connection

    current = connection.state.session
    return current.welcome if current is not None else None


def method_items(self, context) -> list:
    welcome = _welcome()
    return offered(METHODS, [m for m in welcome.methods if m != "dds"] if welcome else None, "methods")


def edit_method_items(self, context) -> list:
    welcome = _welcome()
    return offered(EDIT_METHODS, list(welcome.methods) if welcome else None, "edit_methods")


def preset_items(self, context) -> list:
    welcome = _welcome()
    return offered(PRESETS, list(welcome.presets) if welcome else None, "presets")


def teacher_suggestions(self, context, edit_text: str) -> list[tuple[str, str]]:
    """The teachers the server offers, as suggestions for the Teacher field (any other spec, such as
    sd:PATH on the server, may still be typed)."""
    welcome = _welcome()
    if welcome is None:
        return []
    return [(t.name, t.description + ("" if t.trained else " (untrained: noise)")) for t in welcome.teachers
            if edit_text.lower() in t.name.lower()]


def _spec_range(section: str, name: str) -> tuple[float, float]:
    """The job spec's own range of a setting, so the panel allows what a job may ask for."""
    from .protocol import spec_range

    return spec_range(section, name)


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
    method: EnumProperty(name="Method", items=method_items, default=0, description="What the backend offers")
    preset: EnumProperty(name="Quality", items=preset_items, default=0, description="What the backend offers")
    cfg: FloatProperty(name="Guidance", default=DEFAULTS.guidance.cfg, min=_spec_range("guidance", "cfg")[0],
                       max=_spec_range("guidance", "cfg")[1], soft_max=100.0,
                       description="Classifier-free guidance scale")
    seed: IntProperty(name="Seed", default=0, min=0)
    teacher: StringProperty(name="Teacher", default="", search=teacher_suggestions, search_options={"SUGGESTION"},
                            description="Empty: the backend's default teacher; the field suggests the ones it "
                                        "offers")
    edit_prompt: StringProperty(name="Edit", default="", description="What the selected objects' textures should "
                                "become, e.g. 'weathered bronze'")
    source_prompt: StringProperty(name="Source", default="", description="What they are now (default: the "
                                  "object's name)")
    edit_method: EnumProperty(name="Method", items=edit_method_items, default=0)
    strength: FloatProperty(name="Strength", default=DEFAULTS.edit.strength, min=_spec_range("edit", "strength")[0],
                            max=_spec_range("edit", "strength")[1], subtype="FACTOR",
                            description="How far the edit may go from the original")
    edit_steps: IntProperty(name="Steps", default=DEFAULTS.edit.steps, min=1, max=int(_spec_range("edit", "steps")[1]))
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
