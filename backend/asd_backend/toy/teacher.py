"""The toy teacher as the product loads it: the shipped diffusers pipeline, through the same
`from_pretrained` as Stable Diffusion, with a warning for prompts outside the world it learned."""

from __future__ import annotations

import torch

from ..teachers.stable_diffusion import StableDiffusionTeacher
from .world import vocabulary_warning


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
