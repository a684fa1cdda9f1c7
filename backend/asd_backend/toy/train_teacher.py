"""Train the toy teacher: an SD-shaped diffusers pipeline learned from scratch on renders of the world.

Three stages, as latent diffusion is trained: the AutoencoderKL first (reconstruction + a small KL),
then the UNet and the CLIP text encoder together on the frozen VAE's latents, ε-prediction under
SD's scaled-linear DDPM schedule, with min-SNR weighting (Hang et al. 2023: faster convergence)
and an EMA of the weights, which is what gets saved; last, the decoder alone on the frozen encoder's
latents (as SD's fine-tuned decoders: sharper images, the same latents). Renders are cached on disk (world.py and
render.py decide them exactly; `DATA_VERSION` names them); the background and caption of each
sample are drawn at train time. Checkpoints let a run resume where it stopped, bit for bit in its
schedule; a fixed grid of validation samples is written as PNGs while it trains, and the losses go
to train_log.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..artifacts import atomic_path
from ..errors import UsageError
from ..guidance.prompts import DIRECTIONS, ViewPromptConfig, view_direction, view_prompt
from ..nerf.cameras import CameraBatch, CameraConfig, sample_cameras
from ..teachers.builders import SCHEDULER, tokenizer
from .render import composite, render_objects
from .world import SHAPES, all_objects

DATA_VERSION = 1  # bump when world.py or render.py change what a render looks like
IMAGE_SIZE = 32
LATENT_SIZE = IMAGE_SIZE // 2

# The architecture, sized for 2 CPU cores (~150 samples/s of UNet training at 16² latents).
UNET_CONFIG: dict[str, Any] = {
    "sample_size": LATENT_SIZE, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": 64, "attention_head_dim": [2, 4, 4], "use_linear_projection": True, "norm_num_groups": 32,
}
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1, "block_out_channels": [32, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
    "norm_num_groups": 32, "sample_size": IMAGE_SIZE,
}
TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2,
    "max_position_embeddings": 77, "vocab_size": 514, "projection_dim": 64, "hidden_act": "gelu",
    "bos_token_id": 512, "eos_token_id": 513, "pad_token_id": 513,
}


@dataclasses.dataclass
class ToyTrainingConfig:
    """How the toy teacher is trained. The defaults made the shipped weights."""

    out: Path = Path("outputs/toy-teacher")
    """Folder for the checkpoint, the log, validation grids and the final pipeline (pipeline/)."""
    init_from: str = ""
    """Fine-tune a saved pipeline instead of starting from scratch: a pipeline folder, or 'toy' for the
    shipped teacher. Its VAE is kept as it is (no VAE stage: the UNet knows its latents); its UNet and text
    encoder train on. Give another --seed than the source's to train on views it never saw."""
    seed: int = 0
    views_per_object: int = 384
    """Cached renders per world object (cameras drawn as the product's NeRF draws them)."""
    vae_steps: int = 800
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    steps: int = 8000
    """UNet + text encoder steps."""
    batch: int = 64
    lr: float = 6e-4
    warmup_steps: int = 200
    decoder_steps: int = 800
    """Stage 3: the VAE decoder alone, on the frozen encoder's latents (sharper decodes, same latents)."""
    decoder_lr: float = 5e-4
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.999
    empty_caption: float = 0.1
    """Share of samples with the empty caption, so CFG has an unconditional."""
    plain_caption: float = 0.3
    """Share captioned without a view suffix (the discriminator and 2D images use plain prompts)."""
    white_background: float = 0.6
    """Share of samples on white; the rest on a random solid colour, as the NeRF's background augmentation."""
    checkpoint_every: int = 500
    validate_every: int = 1000
    validation_steps: int = 25
    """DDIM steps of the validation grid's samples."""
    threads: int = 0
    """torch threads (0: torch's default)."""
    device: str = "cpu"
    """cpu, or cuda on a GPU box (minutes instead of an hour; the data stays on the CPU)."""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        for name in ("views_per_object", "vae_batch", "batch", "checkpoint_every", "validate_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1; got {getattr(self, name)}")
        for name in ("vae_steps", "steps", "warmup_steps"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must not be negative; got {getattr(self, name)}")
        if self.empty_caption + self.plain_caption > 1:
            raise UsageError("empty_caption + plain_caption must be at most 1")

    def source_folder(self) -> Path | None:
        """The pipeline folder `init_from` names (None: from scratch)."""
        if not self.init_from:
            return None
        if self.init_from == "toy":
            from ..teachers.registry import TOY_TEACHER_DIR

            return Path(TOY_TEACHER_DIR)
        return Path(self.init_from)


# -- data ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class WorldRenders:
    """Cached renders: premultiplied colour and coverage, with each render's object and camera angles."""

    rgba: Tensor  # [N, 4, S, S] uint8
    object_index: Tensor  # [N]
    elevation: Tensor  # [N]
    azimuth: Tensor  # [N]

    def __len__(self) -> int:
        return len(self.object_index)

    def images(self, pick: Tensor, generator: torch.Generator, white_share: float) -> Tensor:
        """The picked renders in [0, 1] on solid backgrounds: white for `white_share` of them, a random
        colour for the rest (the teacher and the judge see the same backgrounds)."""
        rgba = self.rgba[pick].float() / 255
        background = torch.rand(len(pick), 3, generator=generator)
        background[torch.rand(len(pick), generator=generator) < white_share] = 1.0
        return composite(rgba[:, :3], rgba[:, 3:], background).clamp(0, 1)


def render_world(views_per_object: int, seed: int, size: int = IMAGE_SIZE, chunk: int = 512,
                 progress: bool = False) -> WorldRenders:
    """Every world object from `views_per_object` random product cameras (seeded)."""
    objects = all_objects()
    generator = torch.Generator().manual_seed(seed)
    cams = [sample_cameras(views_per_object, CameraConfig(), generator) for _ in objects]
    index = torch.arange(len(objects)).repeat_interleave(views_per_object)
    cameras = CameraBatch(*(torch.cat([getattr(c, f.name) for c in cams]) for f in dataclasses.fields(CameraBatch)))
    parts = []
    from tqdm import tqdm

    for start in tqdm(range(0, len(index), chunk), desc="rendering the world", disable=not progress):
        sl = slice(start, start + chunk)
        render = render_objects([objects[i] for i in index[sl].tolist()], _slice(cameras, sl), size)
        rgba = torch.cat([render.colour, render.coverage], dim=1)
        parts.append((rgba * 255).round().clamp(0, 255).to(torch.uint8))
    return WorldRenders(torch.cat(parts), index, cameras.elevation_deg, cameras.azimuth_deg)


def _slice(cameras: CameraBatch, sl: slice) -> CameraBatch:
    return CameraBatch(*(getattr(cameras, f.name)[sl] for f in dataclasses.fields(CameraBatch)))


def cached_world(views_per_object: int, seed: int, cache: Path, progress: bool = False) -> WorldRenders:
    path = cache / f"world-v{DATA_VERSION}-{IMAGE_SIZE}px-{views_per_object}views-seed{seed}.pt"
    if path.is_file():
        return WorldRenders(**torch.load(path))
    renders = render_world(views_per_object, seed, progress=progress)
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(dataclasses.asdict(renders), tmp)
    return renders


def draw_batch(renders: WorldRenders, batch: int, config: ToyTrainingConfig,
               generator: torch.Generator) -> tuple[Tensor, list[str]]:
    """A batch of images in [0, 1] on their backgrounds, and their captions."""
    objects = all_objects()
    pick = torch.randint(len(renders), (batch,), generator=generator)
    images = renders.images(pick, generator, config.white_background)
    directions = view_direction(renders.elevation[pick], renders.azimuth[pick], ViewPromptConfig())
    kind = torch.rand(batch, generator=generator)
    captions = []
    for i, k in enumerate(kind.tolist()):
        caption = objects[int(renders.object_index[pick[i]])].caption
        if k < config.empty_caption:
            captions.append("")
        elif k < config.empty_caption + config.plain_caption:
            captions.append(caption)
        else:
            captions.append(view_prompt(caption, int(directions[i])))
    return images, captions


# -- models ----------------------------------------------------------------------------------------

def build_models(seed: int):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    return vae, unet, text_encoder


def load_models(folder: Path):
    """The VAE, UNet and text encoder of a saved toy pipeline (through the product's own loader and its
    errors), checked to fit this trainer's data and tokenizer."""
    from ..teachers.stable_diffusion import load_pipeline

    pipe = load_pipeline(str(folder), dtype=torch.float32, local_files_only=True)
    unet, text_encoder = pipe.unet, pipe.text_encoder
    if unet.config.sample_size != LATENT_SIZE or text_encoder.config.vocab_size != TEXT_CONFIG["vocab_size"]:
        raise UsageError(f"--init-from {folder}: not a toy teacher (its UNet works at {unet.config.sample_size}² "
                         f"latents and its text encoder knows {text_encoder.config.vocab_size} tokens; this trainer "
                         f"needs {LATENT_SIZE}² and the project tokenizer's {TEXT_CONFIG['vocab_size']})")
    return pipe.vae, unet, text_encoder


def make_pipeline(vae, unet, text_encoder):
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer(), scheduler=DDPMScheduler(**SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


class Ema:
    """An exponential moving average of parameters, with the usual warm-up of its decay."""

    def __init__(self, modules: list[torch.nn.Module], decay: float) -> None:
        self.decay = decay
        self.shadow = [p.detach().clone() for m in modules for p in m.parameters()]

    @torch.no_grad()
    def update(self, modules: list[torch.nn.Module], step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for s, p in zip(self.shadow, (p for m in modules for p in m.parameters()), strict=True):
            s.lerp_(p.detach(), 1 - decay)

    @torch.no_grad()
    def copy_to(self, modules: list[torch.nn.Module]) -> None:
        for s, p in zip(self.shadow, (p for m in modules for p in m.parameters()), strict=True):
            p.copy_(s)


def _tokens(captions: list[str]) -> Tensor:
    return tokenizer()(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def _lr(step: int, config: ToyTrainingConfig, base: float, total: int) -> float:
    if step < config.warmup_steps:
        return base * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# -- the two stages --------------------------------------------------------------------------------

class ToyTeacherTrainer:
    """Runs (or resumes) a training: `run()` returns the folder of the saved pipeline."""

    def __init__(self, config: ToyTrainingConfig, cache: Path, progress: bool = True) -> None:
        self.config = config
        self.cache = cache
        self.progress = progress
        self.out = config.out
        self.checkpoint_path = self.out / "checkpoint.pt"
        self.log_path = self.out / "train_log.jsonl"
        self.device = torch.device(config.device)
        source = config.source_folder()
        models = load_models(source) if source else build_models(config.seed)
        self.vae, self.unet, self.text_encoder = (m.to(self.device) for m in models)
        self.alphas_cumprod = make_pipeline(self.vae, self.unet, self.text_encoder).scheduler.alphas_cumprod.to(
            self.device)
        self.vae_opt = torch.optim.AdamW(self.vae.parameters(), lr=config.vae_lr)
        self.opt = torch.optim.AdamW([*self.unet.parameters(), *self.text_encoder.parameters()], lr=config.lr,
                                     weight_decay=1e-2)
        self.decoder_opt = torch.optim.AdamW([*self.vae.decoder.parameters(), *self.vae.post_quant_conv.parameters()],
                                             lr=config.decoder_lr)
        self.ema = Ema([self.unet, self.text_encoder], config.ema_decay)
        self.generator = torch.Generator().manual_seed(config.seed + 1)
        # A fine-tune starts at the UNet stage: the source's VAE (and its latent scale) is what its UNet knows.
        self.stage, self.step = ("unet" if source else "vae"), 0
        self.seconds = 0.0

    # checkpoints --------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {"config": _jsonable(dataclasses.asdict(self.config)), "stage": self.stage, "step": self.step,
                "seconds": self.seconds, "vae": self.vae.state_dict(), "unet": self.unet.state_dict(),
                "text_encoder": self.text_encoder.state_dict(), "vae_opt": self.vae_opt.state_dict(),
                "opt": self.opt.state_dict(), "decoder_opt": self.decoder_opt.state_dict(), "ema": self.ema.shadow,
                "latent_scale": float(self.vae.config.scaling_factor),
                "generator": self.generator.get_state()}

    def save_checkpoint(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.checkpoint_path, durable=True) as tmp:
            torch.save(self._state(), tmp)

    def load_checkpoint(self) -> bool:
        if not self.checkpoint_path.is_file():
            return False
        state = torch.load(self.checkpoint_path, weights_only=False, map_location=self.device)
        if _identity(state["config"]) != _identity(_jsonable(dataclasses.asdict(self.config))):
            raise UsageError(f"{self.checkpoint_path} was made with other settings; use another --out folder or "
                             "delete the checkpoint to start again")
        if state["stage"] == "decoder" and self.config.steps != state["config"]["steps"]:
            raise UsageError(f"{self.checkpoint_path} has finished its {state['config']['steps']} UNet steps and "
                             "moved on to the decoder; ask for that many steps, or train again in another folder")
        for name in ("vae", "unet", "text_encoder", "vae_opt", "opt", "decoder_opt"):
            if name in state:  # checkpoints from before the decoder stage have no decoder_opt
                getattr(self, name).load_state_dict(state[name])
        self.ema.shadow = [t.to(self.device) for t in state["ema"]]
        if state["stage"] != "vae":
            # The latent scale is VAE config, not a weight: put it back (checkpoints from before it was
            # saved: measure it again, the same draw of the same frozen encoder gives the same value).
            scale = state.get("latent_scale")
            if scale is None:
                renders = cached_world(self.config.views_per_object, self.config.seed, self.cache)
                self.set_latent_scale(renders)
            else:
                self.vae.register_to_config(scaling_factor=scale)
        self.generator.set_state(state["generator"])
        self.stage, self.step, self.seconds = state["stage"], state["step"], state["seconds"]
        return True

    def log(self, record: dict[str, Any]) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    # stages ---------------------------------------------------------------------------------------

    def run(self) -> Path:
        from tqdm import tqdm

        c = self.config
        if c.threads:
            torch.set_num_threads(c.threads)
        resumed = self.load_checkpoint()
        renders = cached_world(c.views_per_object, c.seed, self.cache, progress=self.progress)
        if self.stage == "vae":
            bar = tqdm(total=c.vae_steps, initial=self.step, desc="VAE", disable=not self.progress)
            while self.step < c.vae_steps:
                started = time.perf_counter()
                loss = self.vae_step(renders)
                self.seconds += time.perf_counter() - started
                self.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                if self.step % 50 == 0:
                    self.log({"stage": "vae", "step": self.step, "loss": loss, "seconds": round(self.seconds, 1)})
                if self.step % c.checkpoint_every == 0:
                    self.save_checkpoint()
            bar.close()
            self.set_latent_scale(renders)
            self.stage, self.step = "unet", 0
            self.save_checkpoint()
        bar = tqdm(total=c.steps, initial=self.step if self.stage == "unet" else c.steps, desc="UNet + text",
                   disable=not self.progress)
        if resumed and self.step:
            bar.write(f"resumed at UNet step {self.step}")
        while self.stage == "unet" and self.step < c.steps:
            started = time.perf_counter()
            loss = self.unet_step(renders)
            self.seconds += time.perf_counter() - started
            self.step += 1
            self.ema.update([self.unet, self.text_encoder], self.step)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if self.step % 50 == 0:
                self.log({"stage": "unet", "step": self.step, "loss": loss, "seconds": round(self.seconds, 1)})
            if self.step % c.checkpoint_every == 0 or self.step == c.steps:
                self.save_checkpoint()
            if self.step % c.validate_every == 0 and self.step < c.steps:
                self.validate()
        bar.close()
        if self.stage == "unet":
            self.stage, self.step = "decoder", 0
            self.save_checkpoint()
        self.train_decoder(renders)
        self.validate()
        return self.save_pipeline()

    def train_decoder(self, renders: WorldRenders) -> None:
        """Stage 3: the VAE's decoder alone, the encoder frozen, as SD's fine-tuned decoders were made. The
        latents the UNet learned stay exactly what they were; decoded images get sharper and truer."""
        from tqdm import tqdm

        c = self.config
        self.vae.requires_grad_(False)  # the encoder stays as the UNet learned its latents
        self.vae.decoder.requires_grad_(True)
        self.vae.post_quant_conv.requires_grad_(True)
        bar = tqdm(total=c.decoder_steps, initial=self.step, desc="decoder", disable=not self.progress)
        while self.step < c.decoder_steps:
            started = time.perf_counter()
            for group in self.decoder_opt.param_groups:
                group["lr"] = _lr(self.step, c, c.decoder_lr, c.decoder_steps)
            images, _ = draw_batch(renders, c.vae_batch, c, self.generator)
            x = images.to(self.device) * 2 - 1
            with torch.no_grad():
                latents = self.vae.encode(x).latent_dist.sample()
            recon = self.vae.decode(latents).sample
            loss = F.l1_loss(recon, x) + 0.5 * F.mse_loss(recon, x)
            self.decoder_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.decoder_opt.step()
            self.seconds += time.perf_counter() - started
            self.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            if self.step % 50 == 0:
                self.log({"stage": "decoder", "step": self.step, "loss": float(loss.detach()),
                          "seconds": round(self.seconds, 1)})
            if self.step % c.checkpoint_every == 0 or self.step == c.decoder_steps:
                self.save_checkpoint()
        bar.close()

    def vae_step(self, renders: WorldRenders) -> float:
        c = self.config
        for group in self.vae_opt.param_groups:
            group["lr"] = _lr(self.step, c, c.vae_lr, c.vae_steps)
        images, _ = draw_batch(renders, c.vae_batch, c, self.generator)
        x = images.to(self.device) * 2 - 1
        posterior = self.vae.encode(x).latent_dist
        recon = self.vae.decode(posterior.sample(generator=None)).sample
        loss = F.l1_loss(recon, x) + 0.5 * F.mse_loss(recon, x) + c.vae_kl_weight * posterior.kl().mean()
        self.vae_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.vae_opt.step()
        return float(loss.detach())

    @torch.no_grad()
    def set_latent_scale(self, renders: WorldRenders) -> None:
        """SD's scaling_factor for this VAE: one over the latents' standard deviation (unit-variance latents)."""
        images, _ = draw_batch(renders, 512, self.config, torch.Generator().manual_seed(self.config.seed + 7))
        latents = self.vae.encode(images.to(self.device) * 2 - 1).latent_dist.sample()
        self.vae.register_to_config(scaling_factor=float(1 / latents.std()))

    def unet_step(self, renders: WorldRenders) -> float:
        c = self.config
        self.vae.requires_grad_(False)
        for group in self.opt.param_groups:
            group["lr"] = _lr(self.step, c, c.lr, c.steps)
        images, captions = draw_batch(renders, c.batch, c, self.generator)
        with torch.no_grad():
            latents = self.vae.encode(images.to(self.device) * 2 - 1).latent_dist.sample()
            latents = latents * self.vae.config.scaling_factor
        # Drawn on the CPU generator whatever the device: a run is the same run on any machine.
        noise = torch.randn(latents.shape, generator=self.generator).to(self.device)
        t = torch.randint(0, len(self.alphas_cumprod), (c.batch,), generator=self.generator).to(self.device)
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = abar.sqrt() * latents + (1 - abar).sqrt() * noise
        hidden = self.text_encoder(_tokens(captions).to(self.device))[0]
        pred = self.unet(noisy, t, encoder_hidden_states=hidden).sample
        snr = abar.flatten() / (1 - abar.flatten())
        weight = snr.clamp(max=c.min_snr_gamma) / snr
        loss = (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*self.unet.parameters(), *self.text_encoder.parameters()], 1.0)
        self.opt.step()
        return float(loss.detach())

    # outputs --------------------------------------------------------------------------------------

    def ema_pipeline(self):
        """A pipeline holding copies of the models with the EMA weights (the training models untouched)."""
        import copy

        unet, text_encoder = copy.deepcopy(self.unet), copy.deepcopy(self.text_encoder)
        self.ema.copy_to([unet, text_encoder])
        return make_pipeline(copy.deepcopy(self.vae), unet, text_encoder)

    @torch.no_grad()
    def validate(self) -> Path:
        """The fixed grid: every world prompt (rows: shapes, columns: colours), one seed, 25 DDIM steps, CFG 7.5."""
        from PIL import Image

        images = sample_images(self.ema_pipeline(), [o.caption for o in all_objects()], seed=0,
                               steps=self.config.validation_steps)
        grid = images.reshape(len(SHAPES), -1, 3, IMAGE_SIZE, IMAGE_SIZE).permute(0, 3, 1, 4, 2)
        grid = grid.reshape(len(SHAPES) * IMAGE_SIZE, -1, 3)
        path = self.out / "validation" / f"{self.stage}_{self.step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((grid.numpy() * 255).round().astype(np.uint8)).save(path)
        return path

    def save_pipeline(self) -> Path:
        folder = self.out / "pipeline"
        self.ema_pipeline().save_pretrained(folder, safe_serialization=True)
        defaults = _jsonable(dataclasses.asdict(ToyTrainingConfig()))
        changed = {k: v for k, v in _jsonable(dataclasses.asdict(self.config)).items()
                   if k not in ("out", "threads") and v != defaults[k]}
        record = {"command": "asd toy train" + "".join(f" --{k.replace('_', '-')} {v}" for k, v in changed.items()),
                  "data_version": DATA_VERSION, "config": _jsonable(dataclasses.asdict(self.config)),
                  "train_seconds": round(self.seconds, 1), "unet_steps": self.config.steps,
                  "torch": torch.__version__, "directions": DIRECTIONS}
        source = self.config.source_folder()
        if source is not None and (source / "training.json").is_file():
            # The source's own record: the chain of commands that made these weights.
            record["init_from_training"] = json.loads((source / "training.json").read_text(encoding="utf-8"))
        (folder / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if self.log_path.is_file():  # the loss curves travel with the weights
            shutil.copyfile(self.log_path, folder / "train_log.jsonl")
        return folder


@torch.no_grad()
def sample_images(pipe, prompts: list[str], seed: int = 0, steps: int = 50, cfg: float = 7.5,
                  batch: int = 64) -> Tensor:
    """Images [N, 3, S, S] in [0, 1] from the diffusers pipeline with DDIM, each prompt with its own seeded noise."""
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    size = int(pipe.unet.config.sample_size) * pipe.vae_scale_factor
    out = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        generators = [torch.Generator().manual_seed(seed * 100_003 + start + i) for i in range(len(chunk))]
        result = pipe(chunk, height=size, width=size, num_inference_steps=steps, guidance_scale=cfg,
                      generator=generators, output_type="pt")
        out.append(result.images.float().cpu())
    return torch.cat(out)


# Settings a resumed run may change: where it writes, how often, and for how long the UNet trains.
RESUMABLE_CHANGES = ("out", "steps", "checkpoint_every", "validate_every", "validation_steps", "threads",
                     "decoder_steps", "decoder_lr", "device")


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value

