"""The toy teacher as the product loads it: the shipped diffusers pipeline, through the same
`from_pretrained` as Stable Diffusion, with a warning for prompts outside the world it learned."""

from __future__ import annotations

import torch

from ..teachers.stable_diffusion import StableDiffusionTeacher
from .world import COLOURS, SHAPES, parse_prompt


def vocabulary_warning(prompt: str) -> str | None:
    """None for a world prompt ("a red mug"); otherwise one line naming what the toy teacher knows."""
    if parse_prompt(prompt) is not None:
        return None
    return (f"the toy teacher knows only {len(SHAPES)} shapes ({', '.join(SHAPES)}) in {len(COLOURS)} colours "
            f"({', '.join(COLOURS)}), e.g. \"a red mug\"; {prompt[:60]!r} is outside that world, so expect "
            "a blob: going ahead")


class ToyTeacher(StableDiffusionTeacher):
    @classmethod
    def from_pretrained(cls, source: str, *, device="auto", dtype: torch.dtype | None = None,  # type: ignore[override]
                        local_files_only: bool | None = None, trained: bool = True, name: str | None = None,
                        description: str = "") -> ToyTeacher:
        # Small enough that fp32 costs nothing on a GPU, and CPUs want fp32.
        return super().from_pretrained(source, device=device, dtype=dtype or torch.float32,
                                       local_files_only=local_files_only, trained=trained, name=name,
                                       description=description)  # type: ignore[return-value]

    def prompt_warning(self, prompt: str) -> str | None:
        return super().prompt_warning(prompt) or vocabulary_warning(prompt)
