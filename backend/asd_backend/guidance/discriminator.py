"""The discriminator ε_φ of VSD/ASD: a trainable noise predictor for the generator's own renders.

Both kinds start as an exact copy of the teacher (zero-initialised residuals), so the first
generator steps of VSD/ASD equal those of a teacher-referenced score, and learn from there.

- `LoraCameraDiscriminator`: for diffusers teachers. A LoRA on the teacher's UNet attention (peft,
  `add_adapter`, trainable weights in fp32 as diffusers' LoRA training script does) plus a camera
  embedding, an MLP of the flattened 4×4 camera-to-world matrix into the UNet's class embedding.
- `ResidualDiscriminator`: for analytic teachers. ε_φ = ε_teacher + r_ψ with a small network r_ψ.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from ..teachers.base import V_PREDICTION, Teacher, epsilon_from_v
from ..teachers.stable_diffusion import StableDiffusionTeacher

CAMERA_DIM = 16  # a flattened 4×4 camera-to-world matrix


def camera_features(camera, batch_size: int, device: torch.device, use_camera: bool = True) -> Tensor:
    """Flattened camera-to-world matrices (of a CameraBatch or a [B, 4, 4] tensor).

    No camera, or `use_camera=False` (dropout, or the camera-unconditional branch), is the zero
    matrix, as in the official code.
    """
    c2w = getattr(camera, "c2w", camera)
    if c2w is None or not use_camera:
        return torch.zeros(batch_size, CAMERA_DIM, device=device)
    return c2w.reshape(batch_size, CAMERA_DIM).float().to(device)


class CameraEmbedding(nn.Module):
    """Linear → SiLU → Linear, as diffusers' TimestepEmbedding; the last layer starts at zero."""

    def __init__(self, out_dim: int, in_dim: int = CAMERA_DIM) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(out_dim, out_dim)
        nn.init.zeros_(self.linear_2.weight)
        nn.init.zeros_(self.linear_2.bias)

    def forward(self, camera: Float[Tensor, "B 16"]) -> Float[Tensor, "B D"]:
        return self.linear_2(self.act(self.linear_1(camera.to(self.linear_1.weight.dtype))))


class Discriminator(nn.Module):
    """What the distillation needs of an ε_φ (subclasses implement predict_eps and the state)."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def observe(self, z: Tensor, base: Tensor, camera, sample_offsets: Tensor | None = None) -> None:
        """See the generator's render (and ε_φ's conditioning, and for NeRF renders the ray samples'
        jitter) before a step; most need not."""

    def close(self) -> None:
        """Undo what the discriminator did to its teacher (most did nothing)."""

    def predict_eps(self, x_t: Tensor, t: Int[Tensor, " B"], cond: Tensor, camera=None, use_camera: bool = True,
                    teacher_cond: Tensor | None = None) -> Tensor:
        """ε_φ(x_t; cond, camera). `teacher_cond` is the generator's own conditioning (ASD's γ term)."""
        raise NotImplementedError

    def expected_loss(self, z: Tensor, camera, t_range: tuple[int, int]) -> Tensor | None:
        """The discriminator loss averaged over its noise and timesteps in closed form, up to a constant
        that does not depend on ε_φ, where the family allows it; None: sample t and ε (most do)."""
        return None

    def trainable_state(self) -> dict[str, Tensor]:
        return {k: v.clone() for k, v in self.state_dict().items()}

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        self.load_state_dict(state)


class LoraCameraDiscriminator(Discriminator):
    """ε_φ as the official ASD code builds it, on the teacher's own UNet by default.

    With one UNet in memory the adapter is switched off for every teacher call (the teacher's
    `unet_forward(adapter=False)`), so the teacher stays exact. `separate_model` loads a second
    checkpoint for ε_φ instead, as the official code does with SD 2.1 (768-v).
    """

    def __init__(self, teacher: StableDiffusionTeacher, *, rank: int = 4, separate_model: str | None = None,
                 local_files_only: bool | None = None) -> None:
        super().__init__()
        if separate_model is not None:
            host = StableDiffusionTeacher.from_pretrained(separate_model, device=teacher.device, dtype=teacher.dtype,
                                                          local_files_only=local_files_only)
            host.release_encoders()  # ε_φ reads the teacher's text embeddings and latents
        else:
            host = teacher
        host.add_lora(rank)
        self._host = [host]  # a list, so nn.Module does not register the frozen UNet as a child
        self.rank = rank
        self.camera_embedding = CameraEmbedding(host.time_embedding_dim).to(host.device)

    @property
    def host(self):
        return self._host[0]

    def close(self) -> None:
        """Remove the adapter from the host UNet, leaving the teacher as it was loaded (reusable)."""
        self.host.remove_lora()

    def lora_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return self.host.lora_parameters()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.lora_parameters()] + list(self.camera_embedding.parameters())

    def predict_eps(self, x_t: Tensor, t: Int[Tensor, " B"], cond: Tensor, camera=None,
                    use_camera: bool = True, teacher_cond: Tensor | None = None) -> Tensor:
        labels = camera_features(camera, x_t.shape[0], x_t.device, use_camera)
        out = self.host.unet_forward(x_t, t, cond, adapter=True, class_embedding=self.camera_embedding,
                                     class_labels=labels)
        if self.host.prediction_type == V_PREDICTION:
            out = epsilon_from_v(out, x_t, self.host.alpha_bar(t, x_t))
        return out

    # Checkpoints hold only what trains: the LoRA weights and the camera embedding.
    def trainable_state(self) -> dict[str, Tensor]:
        state = {f"unet.{n}": p.detach().clone() for n, p in self.lora_parameters()}
        state.update({f"camera_embedding.{k}": v.clone() for k, v in self.camera_embedding.state_dict().items()})
        return state

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        params = dict(self.lora_parameters())
        with torch.no_grad():
            for name, value in state.items():
                if name.startswith("unet."):
                    params[name[5:]].copy_(value)
        self.camera_embedding.load_state_dict(
            {k[len("camera_embedding."):]: v for k, v in state.items() if k.startswith("camera_embedding.")})


def timestep_features(t: Tensor, total: int, n_freqs: int = 8) -> Tensor:
    """Sinusoidal features of t / T, so a small network sees time at several scales."""
    x = (t.float() / total).unsqueeze(-1)
    freqs = 2.0 ** torch.arange(n_freqs, device=t.device) * math.pi
    return torch.cat([x, torch.sin(x * freqs), torch.cos(x * freqs)], dim=-1)


class ResidualDiscriminator(Discriminator):
    """ε_φ(x, t, y, c) = ε_teacher(x, t, y) + r_ψ(x, t, y, c), r_ψ's last layer starting at zero.

    For analytic teachers whose conditioning is a prompt index (−1 = unconditional). Vector samples
    ([B, D], the Gaussian mixtures) get an MLP; image samples ([B, C, H, W], the rendered-shape
    teacher) a small convolutional network whose features are shifted by the conditioning (FiLM).
    """

    def __init__(self, teacher: Teacher, *, hidden: int = 256, depth: int = 3, n_prompts: int = 64,
                 prompt_dim: int = 16, use_camera: bool = True) -> None:
        super().__init__()
        self._teacher = [teacher]
        self.n_prompts = n_prompts
        self.use_camera = use_camera
        self.prompt_embedding = nn.Embedding(n_prompts + 1, prompt_dim)
        cond_dim = 17 + prompt_dim + (CAMERA_DIM if use_camera else 0)
        channels = teacher.sample_channels
        self.images = teacher.native_resolution > 1
        if self.images:
            width = min(hidden, 64)
            self.body = nn.ModuleList([nn.Conv2d(channels, width, 3, padding=1), nn.Conv2d(width, width, 3, padding=1)])
            self.film = nn.Linear(cond_dim, width)
            self.head = nn.Conv2d(width, channels, 3, padding=1)
        else:
            layers: list[nn.Module] = []
            for i in range(depth):
                layers += [nn.Linear(channels + cond_dim if i == 0 else hidden, hidden), nn.SiLU()]
            self.body = nn.Sequential(*layers)
            self.head = nn.Linear(hidden, channels)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.to(teacher.device)

    @property
    def teacher(self) -> Teacher:
        return self._teacher[0]

    def predict_eps(self, x_t: Tensor, t: Int[Tensor, " B"], cond: Tensor, camera=None,
                    use_camera: bool = True, teacher_cond: Tensor | None = None) -> Tensor:
        with torch.no_grad():
            base = self.teacher.predict_eps(x_t, t, cond, camera)
        features = [timestep_features(t, self.teacher.num_train_timesteps),
                    self.prompt_embedding((cond.long() + 1).clamp(0, self.n_prompts))]
        if self.use_camera:
            features.append(camera_features(camera, x_t.shape[0], x_t.device, use_camera))
        conditioning = torch.cat(features, dim=-1)
        if self.images:
            h = torch.nn.functional.silu(self.body[0](x_t) + self.film(conditioning)[:, :, None, None])
            residual = self.head(torch.nn.functional.silu(self.body[1](h)))
        else:
            residual = self.head(self.body(torch.cat([x_t.reshape(x_t.shape[0], -1), conditioning], dim=-1)))
        return base + residual.reshape(x_t.shape)


class RenderFamilyDiscriminator(Discriminator):
    """ε_φ of the rendered teachers' own family: the generator's renders from camera c are modelled as
    N(mean(c), s²), s the teacher's σ, and

        ε_φ(x_t, t, c) = (ε_N(mean(c), s)(x_t, t) + γ·ε_teacher(x_t; y)) / (1 + γ)

    the form of the exact minimiser of ASD's discriminator loss, (E[ε | x_t] + γ·ε_teacher)/(1 + γ):
    with mean(c) the generator's current render the family holds the answer, so the analytic
    benchmarks measure ASD's mechanics rather than a small network's capacity. γ = 0 gives VSD's ε_φ.
    Subclasses say what holds the means (one mean image per view was tried: each learns only when its
    view comes up, V times slower than the generator; docs/method.md)."""

    closed_form = False
    """Train on the loss's closed-form expectation over t and ε (`expected_loss`) rather than on draws."""

    def __init__(self, teacher: Teacher, *, gamma: float) -> None:
        super().__init__()
        self._teacher = [teacher]
        self.gamma = gamma
        # The teacher's σ, fixed: where the generator already agrees with the teacher (what an edit must
        # keep) ε_φ then equals it exactly and adds no noise to the gradient.
        self.register_buffer("log_std", torch.tensor(math.log(teacher.sigma), device=teacher.device))

    @property
    def teacher(self) -> Teacher:
        return self._teacher[0]

    def means(self, camera, height: int, width: int) -> Tensor:
        """The modelled render from each camera, in [-1, 1]."""
        raise NotImplementedError

    def expected_loss(self, z: Tensor, camera, t_range: tuple[int, int]) -> Tensor | None:
        """‖ε_φ − ε‖² + γ‖ε_φ − sg(ε_teacher)‖² = ‖own − ε‖²/(1+γ) + (terms free of the means), and for
        x_t = √ᾱ·z + √(1−ᾱ)·ε, E_ε‖own − ε‖² = ᾱ(1−ᾱ)/s2²·‖z − mean‖² + (terms free of the means):

            E_t,ε[loss] = E_t[ᾱ(1−ᾱ)/s2²] / (1+γ) · ‖z − mean(c)‖² + const."""
        if not self.closed_form:
            return None
        a = self.teacher.alphas_cumprod.to(z.device, torch.float32)[t_range[0]:t_range[1]]
        s2 = a * torch.exp(2 * self.log_std) + (1 - a)
        weight = (a * (1 - a) / s2**2).mean() / (1 + self.gamma)
        mean = self.means(camera, *z.shape[-2:])
        return weight * torch.nn.functional.mse_loss(mean.float(), z.detach().float())

    def predict_eps(self, x_t: Tensor, t: Int[Tensor, " B"], cond: Tensor, camera=None,
                    use_camera: bool = True, teacher_cond: Tensor | None = None) -> Tensor:
        mean = self.means(camera, *x_t.shape[-2:])
        a = self.teacher.alpha_bar(t, x_t).reshape(-1, *([1] * (x_t.ndim - 1)))
        s2 = a * torch.exp(2 * self.log_std) + (1 - a)
        own = (1 - a).sqrt() * (x_t - a.sqrt() * mean) / s2
        if self.gamma == 0.0:
            return own
        with torch.no_grad():
            eps_teacher = self.teacher.predict_eps(x_t, t, cond if teacher_cond is None else teacher_cond, camera)
        return (own + self.gamma * eps_teacher) / (1 + self.gamma)


class TextureGaussianDiscriminator(RenderFamilyDiscriminator):
    """The rendered-texture teacher's family: the means are R_v(M), the rasterizer's renders of a
    learnable texture M, so one texture holds every view's mean and each step teaches ε_φ about all
    the texels that view sees, as it teaches the generator. M starts as the texture of the prompt ε_φ
    is conditioned on (the source, for an edit): ε_φ starts as the optimum for a generator there."""

    def __init__(self, teacher: Teacher, *, gamma: float) -> None:
        super().__init__(teacher, gamma=gamma)
        self.texture = nn.Parameter(torch.zeros_like(teacher.textures[0]))  # [1, 3, H, W]
        self.started = False

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.texture]

    def observe(self, z: Tensor, base: Tensor, camera, sample_offsets: Tensor | None = None) -> None:
        """Before the first step: M becomes the texture of ε_φ's prompt (in place: optimizers hold M)."""
        if not self.started:
            index = int(base.reshape(-1)[0])
            if index < 0:
                raise ValueError("a texture discriminator needs a prompt the teacher knows, not the unconditional")
            with torch.no_grad():
                self.texture.copy_(self.teacher.prompt_texture(index))
            self.started = True

    def means(self, camera, height: int, width: int) -> Tensor:
        return self.teacher.rasterizer.render(self.texture, camera.index) * 2 - 1


class FieldGaussianDiscriminator(RenderFamilyDiscriminator):
    """The rendered-shape teacher's family for text-to-3D: the generator's render from camera c is
    modelled as N(render_ψ(c), σ²), ψ a NeRF of ε_φ's own (the generator's architecture and
    occupancy-grid schedule, white background), fitted by the discriminator loss through its renders
    (the loss's closed-form expectation over t and ε: sampled, ψ lagged the generator); ε_φ is
    (ε_N(render_ψ(c), σ)(x_t) + γ·ε_teacher(x_t; y)) / (1 + γ). A NeRF holds one render per view
    for every camera at once, as the texture family's learnable texture does for fixed views.

    ψ renders each step's view with the generator's own ray-sample jitter (`observe`'s
    `sample_offsets`): the generator's render is a function of the camera and of where its samples
    fell, and ε_φ must model both. Rendered at stratum centres instead, ψ holds the jitter's mean, the
    generator's jitter enters no term of its gradient, and it grows unopposed into speckle and ragged
    surfaces (docs/benchmarks.md ▸ the star)."""

    closed_form = True

    def __init__(self, teacher: Teacher, *, gamma: float, nerf) -> None:
        from ..nerf.background import SolidBackground
        from ..nerf.field import FieldConfig, NerfField
        from ..nerf.occupancy import OccupancyGrid
        from ..nerf.renderer import VolumeRenderer

        super().__init__(teacher, gamma=gamma)
        field = NerfField(FieldConfig(radius=nerf.radius, grid=nerf.grid))
        # Skipping empty space as the generator does: ψ's renders are most of ε_φ's cost.
        occupancy = OccupancyGrid(nerf.radius, nerf.occupancy_resolution, update_every=nerf.occupancy_update_every,
                                  warmup_steps=nerf.occupancy_warmup_steps)
        self.renderer = VolumeRenderer(field, SolidBackground(tuple(teacher.background.tolist())), occupancy,
                                       nerf.samples_per_ray).to(teacher.device)
        self.steps = 0
        self._rng = torch.Generator().manual_seed(0)  # the occupancy refresh's own draws
        self.sample_offsets: Tensor | None = None

    def observe(self, z: Tensor, base: Tensor, camera, sample_offsets: Tensor | None = None) -> None:
        """Once per generator step: keep the render's ray-sample jitter and refresh ψ's occupancy grid
        when it is due. ψ starts as a fresh NeRF, a blob like the generator's at its first step, and
        skips empty space from then on."""
        self.sample_offsets = sample_offsets
        field = self.renderer.field
        if self.steps == 0:
            self.renderer.occupancy.update(0, field.density, self.renderer.step_size, self._rng)
        self.steps += 1
        self.renderer.occupancy.update(self.steps, field.density, self.renderer.step_size, self._rng)

    def means(self, camera, height: int, width: int) -> Tensor:
        offsets = self.sample_offsets
        if offsets is not None and offsets.shape[0] != len(camera) * height * width:
            offsets = None  # not the observed render's rays (other views or sizes): stratum centres
        return self.renderer(camera, height, width, offsets=offsets).rgb.permute(0, 3, 1, 2) * 2 - 1


def _residual(teacher: Teacher, gamma: float, **options) -> Discriminator:
    return ResidualDiscriminator(teacher, **{"n_prompts": teacher.prompt_count, **options})


def _field_gaussian(teacher: Teacher, gamma: float, nerf=None, **options) -> Discriminator:
    if nerf is None:  # outside a 3D loop (tests, 2D use) the shape teacher is a plain Gaussian family
        return _residual(teacher, gamma, **options)
    return FieldGaussianDiscriminator(teacher, gamma=gamma, nerf=nerf)


# The kinds of ε_φ, by the name a teacher gives in `Teacher.discriminator`: a new teacher names one (or
# adds one here); nothing in guidance/ looks at which teacher it is.
DISCRIMINATORS: dict[str, Callable[..., Discriminator]] = {
    "lora_camera": lambda teacher, gamma, **options: LoraCameraDiscriminator(teacher, **options),
    "texture_gaussian": lambda teacher, gamma, **options: TextureGaussianDiscriminator(teacher, gamma=gamma,
                                                                                       **options),
    "field_gaussian": _field_gaussian,
    "residual": _residual,
}


def build_discriminator(teacher: Teacher, gamma: float, **options) -> Discriminator:
    """The ε_φ the teacher names (`teacher.discriminator`), built with `options` (from
    `teacher.discriminator_options` in a loop). `gamma` is the γ of the loss ε_φ is trained with (0 for VSD)."""
    factory = DISCRIMINATORS.get(teacher.discriminator or "")
    if factory is None:
        raise NotImplementedError(f"teacher {teacher.name!r} has no discriminator for VSD/ASD")
    return factory(teacher, gamma, **options)
