"""Random-weight Stable-Diffusion-shaped pipelines: the tiny teacher and the full-size SD 2.1 shape.

No weights can be downloaded here, so the project builds its own pipelines: `tiny` (seconds to
build, used by tests and the offline demo) and `sd21-base` (the real SD 2.1-base architecture from
its published configs, random weights, for measuring speed and memory). Both are saved with
`save_pretrained` and loaded back through the same `from_pretrained` path as a real checkpoint.
Their outputs are noise: every product made with them says the teacher is untrained.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import UsageError

TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_clip_tokenizer"
BUILDER_VERSION = 1  # bump when a config below changes, so cached folders are rebuilt
PREDICTION_TYPES = ("epsilon", "v_prediction")

# SD's training noise schedule (DDPM, scaled-linear betas), shared by both shapes.
SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "num_train_timesteps": 1000, "clip_sample": False, "prediction_type": "epsilon", "steps_offset": 1}

SHAPES: dict[str, dict] = {
    # Small enough for a CPU test step in well under a second; VAE factor 2 so 64² renders give 32² latents.
    "tiny": {
        "unet": {"sample_size": 32, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
                 "block_out_channels": [32, 64], "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                 "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "cross_attention_dim": 32,
                 "attention_head_dim": [2, 4], "use_linear_projection": True, "norm_num_groups": 32},
        "vae": {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
                "block_out_channels": [32, 64], "down_block_types": ["DownEncoderBlock2D"] * 2,
                "up_block_types": ["UpDecoderBlock2D"] * 2, "norm_num_groups": 32, "sample_size": 64,
                "scaling_factor": 0.18215},
        "text": {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                 "max_position_embeddings": 77, "vocab_size": 514, "projection_dim": 32, "hidden_act": "gelu",
                 "bos_token_id": 512, "eos_token_id": 513, "pad_token_id": 513},
    },
    # stable-diffusion-2-1-base's published configs (unet/vae/text_encoder config.json).
    "sd21-base": {
        "unet": {"sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
                 "block_out_channels": [320, 640, 1280, 1280],
                 "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "cross_attention_dim": 1024,
                 "attention_head_dim": [5, 10, 20, 20], "use_linear_projection": True, "norm_num_groups": 32,
                 "act_fn": "silu", "flip_sin_to_cos": True, "freq_shift": 0, "downsample_padding": 1},
        "vae": {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
                "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
                "up_block_types": ["UpDecoderBlock2D"] * 4, "norm_num_groups": 32, "sample_size": 512,
                "scaling_factor": 0.18215},
        "text": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 23,
                 "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 512, "hidden_act": "gelu",
                 "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1},
    },
}


def tokenizer():
    """The tiny byte-level CLIP tokenizer kept in the repo (every prompt tokenizes; ids < 514)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=str(TOKENIZER_DIR / "vocab.json"), merges=str(TOKENIZER_DIR / "merges.txt"),
                         model_max_length=77)


def build_pipeline(shape: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32,
                   prediction_type: str = "epsilon"):
    """A seeded random StableDiffusionPipeline of the given shape (and parameterization: SD 2.1-base
    predicts ε, SD 2.1 768 predicts v)."""
    from .stable_diffusion import quiet_libraries

    quiet_libraries()
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if shape not in SHAPES:
        raise UsageError(f"unknown pipeline shape {shape!r}; choose one of {', '.join(SHAPES)}")
    if prediction_type not in PREDICTION_TYPES:
        raise UsageError(f"unknown prediction type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}")
    config = SHAPES[shape]
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**config["unet"])
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**config["vae"])
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**config["text"]))
    scheduler = DDPMScheduler(**(SCHEDULER | {"prediction_type": prediction_type}))
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer(), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def cache_root() -> Path:
    return Path(os.environ.get("ASD_HOME", Path.home() / ".cache" / "asd-studio")).expanduser()


def saved_pipeline(shape: str = "tiny", root: Path | None = None, seed: int = 0,
                   prediction_type: str = "epsilon") -> Path:
    """The folder of a saved random pipeline, built and saved on first use (atomically)."""
    kind = "" if prediction_type == "epsilon" else f"-{prediction_type}"
    folder = (root or cache_root() / "models") / f"random-{shape}{kind}-seed{seed}-v{BUILDER_VERSION}"
    if (folder / "model_index.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        build_pipeline(shape, seed, prediction_type=prediction_type).save_pretrained(staging)
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / "model_index.json").is_file():  # someone else won the race: fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
