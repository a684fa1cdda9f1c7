"""Score distillation: SDS, VSD and ASD in one code path.

For a render z = g(θ) (a latent or an image), a timestep t and noise ε, x_t = √ᾱ_t·z + √(1−ᾱ_t)·ε.
The generator is pushed along

    grad = w(t) · (ε̃_teacher(x_t; y) − ref)

where ε̃ is the teacher's classifier-free-guided prediction and the reference differs by method:

    SDS  ref = ε                       (the noise that was added)
    VSD  ref = ε_φ(x_t; y, camera)     ε_φ trained with ‖ε_φ − ε‖²
    ASD  ref = ε_φ(x_t; y, camera)     ε_φ trained with ‖ε_φ − ε‖² + γ‖ε_φ − sg(ε_teacher(x_t; y))‖²
    DDS  ref = ε̃_teacher(x̂_t; y_src)   x̂_t: the source sample noised with the same t and ε (editing;
                                       y_src is the conditioning's `base`, which also conditions ε_φ)

so VSD is ASD with γ = 0, and DDS is editing with a fixed discriminator (the teacher on the
source). The generator loss 0.5·‖z − sg(z − grad)‖² has exactly `grad` as its gradient with
respect to z. The discriminator is trained on detached renders, with fresh t and ε.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from asd_protocol.job_spec import GAMMA_SCHEDULES, METHODS, GuidanceSpec, ModelSpec, NerfSpec

from ..phase_timer import PhaseTimer, phases_of
from ..teachers.base import Teacher, expand_like
from .discriminator import build_discriminator
from .prompts import Conditioning

_SPEC = GuidanceSpec()  # the defaults are the job spec's
WEIGHTINGS = ("sds", "asd", "uniform")


@dataclasses.dataclass
class GuidanceConfig:
    """Score distillation settings. Defaults are the official ASD NeRF configuration."""

    method: str = _SPEC.method
    """sds, vsd, asd or dds (editing only): which reference the teacher's prediction is compared with."""
    cfg: float = _SPEC.cfg
    """Classifier-free guidance scale s: ε̃ = ε_uncond + s·(ε_cond − ε_uncond)."""
    gamma: float = _SPEC.gamma
    """ASD's weight of ‖ε_φ − sg(ε_teacher)‖² in the discriminator loss, in (−1, 0); VSD uses 0."""
    gamma_schedule: str = _SPEC.gamma_schedule
    """constant: γ at every t; official: γ_t = γ·ᾱ_t/(1 + γ(1 − ᾱ_t)), whose minimiser is the official
    v-space loss's, E[ε|x_t] + γ·ᾱ_t/(1+γ)·(ε_T − E[ε|x_t]) (docs/method.md ▸ The official objective)."""
    weighting: str = "sds"
    """w(t): sds = 1−ᾱ_t, asd = √((1−ᾱ_t)/ᾱ_t), uniform = 1."""
    min_step_percent: float = 0.02
    """Smallest generator timestep, as a fraction of the teacher's T."""
    max_step_percent: float = 0.98
    """Largest generator timestep before annealing, as a fraction of T."""
    max_step_percent_annealed: float = 0.5
    """Largest generator timestep from `anneal_start_step` on."""
    anneal_start_step: int | None = None
    """Step at which the largest timestep drops to `max_step_percent_annealed`; None never anneals."""
    grad_clip: float | None = None
    """Clamp each element of the generator gradient to ±grad_clip; None leaves it."""
    camera_dropout: float = 0.1
    """Probability of training ε_φ on a batch with the camera replaced by zeros (its unconditional)."""
    discriminator_cfg: float = 1.0
    """Guidance over the camera in ε_φ: ε_φ(∅) + s_φ·(ε_φ(camera) − ε_φ(∅)). 1 uses ε_φ(camera) alone."""
    discriminator_min_step_percent: float = 0.0
    """ε_φ's training timesteps are drawn from [min, max) of T (official: all of them)."""
    discriminator_max_step_percent: float = 1.0
    discriminator_samples: int = 1
    """Timestep/noise draws per render in each discriminator step."""
    discriminator_steps: int = _SPEC.discriminator_steps
    """ε_φ updates per generator step: ε_φ must keep up with the generator (docs/method.md)."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.gamma_schedule not in GAMMA_SCHEDULES:
            raise ValueError(f"gamma_schedule must be one of {', '.join(GAMMA_SCHEDULES)}; got {self.gamma_schedule!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}; got {self.weighting!r}")
        if self.cfg < 0:
            raise ValueError(f"cfg (guidance scale) must be >= 0; got {self.cfg}")
        if self.method == "asd" and not -1.0 < self.gamma < 0.0:
            raise ValueError(f"ASD's gamma must be in (-1, 0) (the paper uses -0.75; 0 is VSD; at -1 ε_φ's loss is "
                             f"linear and diverges); got {self.gamma}")
        for lo, hi, what in ((self.min_step_percent, self.max_step_percent, "step percent"),
                             (self.min_step_percent, self.max_step_percent_annealed, "annealed step percent"),
                             (self.discriminator_min_step_percent, self.discriminator_max_step_percent,
                              "discriminator step percent")):
            if not 0.0 <= lo < hi <= 1.0:
                raise ValueError(f"{what}: need 0 <= min < max <= 1; got min {lo}, max {hi}")
        if not 0.0 <= self.camera_dropout <= 1.0:
            raise ValueError(f"camera_dropout must be in [0, 1]; got {self.camera_dropout}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive or None; got {self.grad_clip}")
        if self.discriminator_samples < 1:
            raise ValueError(f"discriminator_samples must be at least 1; got {self.discriminator_samples}")
        if self.discriminator_steps < 1:
            raise ValueError(f"discriminator_steps must be at least 1; got {self.discriminator_steps}")

    @classmethod
    def from_spec(cls, spec: GuidanceSpec, **overrides: Any) -> GuidanceConfig:
        """The job spec's guidance section, plus loop-specific settings (timestep range, annealing)."""
        return cls(method=spec.method, cfg=spec.cfg, gamma=spec.gamma, gamma_schedule=spec.gamma_schedule,
                   discriminator_steps=spec.discriminator_steps, **overrides)

    @property
    def uses_discriminator(self) -> bool:
        return self.method in ("vsd", "asd")

    @property
    def effective_gamma(self) -> float:
        return self.gamma if self.method == "asd" else 0.0


def perpendicular_component(x: Tensor, y: Tensor) -> Tensor:
    """The part of each x orthogonal to the matching y (per sample)."""
    dims = tuple(range(1, x.ndim))
    coeff = (x * y).sum(dims, keepdim=True) / (y * y).sum(dims, keepdim=True).clamp_min(1e-12)
    return x - coeff * y


def classifier_free_guidance(uncond: Tensor, cond: Tensor, scale: float, negatives: Tensor | None = None,
                             negative_weights: Float[Tensor, "B K"] | None = None) -> Tensor:
    """ε̃ = uncond + s·(cond − uncond), with Perp-Neg's negative views when given.

    The one place CFG is computed. Perp-Neg adds Σ_k w_k·⊥(neg_k − uncond | cond − uncond) inside the
    bracket (weights are negative, so it pushes away from the other views).
    """
    direction = cond - uncond
    if negatives is not None and negative_weights is not None:
        k = negative_weights.shape[1]
        neg = negatives.reshape(cond.shape[0], k, *cond.shape[1:])
        for i in range(k):
            w = expand_like(negative_weights[:, i].to(cond.dtype), cond)
            direction = direction + w * perpendicular_component(neg[:, i] - uncond, cond - uncond)
    return uncond + scale * direction


@dataclasses.dataclass
class GuidanceOutput:
    loss: Tensor  # backpropagate this into the generator
    grad: Tensor  # the gradient it carries, w(t)·(ε̃ − ref), for logging and tests
    t: Int[Tensor, " B"]
    noise: Tensor
    x_t: Tensor
    eps_teacher: Tensor  # guided ε̃
    eps_reference: Tensor
    eps_cond: Tensor | None = None  # the teacher's conditional prediction, for ε_φ's diagnostics
    gamma: Tensor | None = None  # ε_φ's γ at each sample's t (ASD; 0 for VSD)

    def metrics(self) -> dict[str, float]:
        metrics = {"loss_guidance": float(self.loss.detach()), "grad_norm": float(self.grad.norm()),
                   "t_mean": float(self.t.float().mean())}
        if self.eps_cond is not None:
            # Does ε_φ keep up (docs/method.md ▸ Keeping up)? On the generator's own render, fresh noise:
            # - phi_objective_ratio: ε_φ's own objective ‖ε_φ − ε‖² + γ‖ε_φ − ε_T‖² as a share of its value at
            #   the start (ε_φ = ε_T): below 1, it has learned something of the renders the teacher does not say;
            # - phi_noise_error_ratio: its error on the noise over the teacher's (VSD's objective; for ASD
            #   above 1 by design, its optimum overshoots the renders' score away from the teacher's);
            # - phi_teacher_distance: how far (RMS) it has moved from the teacher;
            # - phi_optimum_gap: how far ε_φ still is from the minimiser of its objective on this render,
            #   ε* = (ε + γ·ε_T)/(1 + γ) (a NeRF's render is a function of the camera ε_φ is given, so
            #   E[ε | x_t, camera] = ε), over the teacher's distance from it: 1 at the start, 0 at the optimum;
            # - cfg_term_rms: the RMS of the CFG term ε̃ − ε_c = (s−1)(ε_c − ε_u) that SDS, VSD and ASD share:
            #   ε_φ can change the gradient only by as much as it moves against this.
            dims = tuple(range(1, self.noise.ndim))
            teacher_error = (self.eps_cond - self.noise).pow(2).mean(dims)
            phi_error = (self.eps_reference - self.noise).pow(2).mean(dims)
            distance = (self.eps_reference - self.eps_cond).pow(2).mean(dims)
            gamma = self.gamma if self.gamma is not None else torch.zeros_like(distance)
            start = float(teacher_error.mean()) or 1e-12
            metrics["phi_objective_ratio"] = float((phi_error + gamma * distance).mean()) / start
            metrics["phi_noise_error_ratio"] = float(phi_error.mean()) / start
            metrics["phi_teacher_distance"] = float(distance.mean()) ** 0.5
            metrics["cfg_term_rms"] = float((self.eps_teacher - self.eps_cond).pow(2).mean()) ** 0.5
            g = expand_like(gamma, self.noise)
            optimum = (self.noise + g * self.eps_cond) / (1 + g)
            gap = (self.eps_reference - optimum).pow(2).mean(dims) / (self.eps_cond - optimum).pow(2).mean(
                dims).clamp_min(1e-12)
            metrics["phi_optimum_gap"] = float(gap.clamp_min(0).sqrt().mean())
        return metrics


class ScoreDistillation:
    """The distillation objective for one teacher (and, for VSD/ASD, its discriminator ε_φ)."""

    def __init__(self, teacher: Teacher, config: GuidanceConfig | None = None, discriminator: Any | None = None,
                 **discriminator_options: Any) -> None:
        self.teacher = teacher
        self.config = config or GuidanceConfig()
        if self.config.uses_discriminator and discriminator is None:
            discriminator = build_discriminator(teacher, self.config.effective_gamma, **discriminator_options)
        self.discriminator = discriminator if self.config.uses_discriminator else None
        # Half-precision teachers: ε_φ's weights stay fp32 (master weights) and its forward passes run
        # under autocast; fp16 also needs loss scaling, or small gradients underflow to zero and ε_φ
        # silently stays the teacher. bf16 has fp32's range and needs none.
        self.low_precision = teacher.dtype in (torch.float16, torch.bfloat16)
        # One loss scale each for the generator and ε_φ: an overflow in one skips that one's update only.
        fp16 = teacher.dtype == torch.float16
        self.scaler = LossScale() if fp16 else None
        self.discriminator_scaler = LossScale() if fp16 and self.discriminator is not None else None
        self.skipped = {"generator": 0, "discriminator": 0}  # updates dropped for a non-finite gradient

    @classmethod
    def from_spec(cls, teacher: Teacher, guidance: GuidanceSpec, model: ModelSpec | None = None,
                  nerf: NerfSpec | None = None, **overrides: Any) -> ScoreDistillation:
        """The distillation a job spec asks for: its guidance section (plus the loop's own settings in
        `overrides`) and, for diffusers teachers, ε_φ's LoRA rank and separate model."""
        config = GuidanceConfig.from_spec(guidance, **overrides)
        options = teacher.discriminator_options(guidance, model, nerf) if config.uses_discriminator else {}
        return cls(teacher, config, **options)

    def close(self) -> None:
        """Release the discriminator's hold on the teacher (its LoRA adapter), so the teacher can be reused."""
        if self.discriminator is not None:
            self.discriminator.close()

    def __enter__(self) -> ScoreDistillation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # also when the loop raises: a server's next job reuses the teacher

    # -- timesteps and weights ---------------------------------------------------------------

    def step_range(self, step: int) -> tuple[int, int]:
        """[min, max] generator timestep at optimisation step `step` (max anneals, as officially)."""
        c, total = self.config, self.teacher.num_train_timesteps
        annealed = c.anneal_start_step is not None and step >= c.anneal_start_step
        high = c.max_step_percent_annealed if annealed else c.max_step_percent
        return int(total * c.min_step_percent), int(total * high)

    def sample_timesteps(self, batch: int, low: int, high_inclusive: int, device: torch.device,
                         generator: torch.Generator | None = None) -> Tensor:
        return torch.randint(low, high_inclusive + 1, (batch,), device=device, generator=generator)

    def weight(self, t: Int[Tensor, " B"], like: Tensor) -> Tensor:
        a = self.teacher.alpha_bar(t, like)
        if self.config.weighting == "sds":
            w = 1 - a
        elif self.config.weighting == "asd":
            w = ((1 - a) / a).sqrt()
        else:
            w = torch.ones_like(a)
        return expand_like(w, like)

    # -- the teacher's guided prediction ------------------------------------------------------

    @torch.no_grad()
    def teacher_eps(self, x_t: Tensor, t: Tensor, c: Conditioning, camera: Any = None) -> tuple[Tensor, Tensor]:
        """(ε̃ guided, ε_cond) in one batched teacher call over cond, uncond and Perp-Neg negatives."""
        b = x_t.shape[0]
        parts = [c.cond, c.uncond]
        k = 0
        if c.negatives is not None and c.negative_weights is not None:
            k = c.negative_weights.shape[1]
            parts.append(c.negatives)

        def rows(x: Tensor) -> Tensor:  # [x; x; each x repeated k times], matching `parts`
            return torch.cat([x, x] + ([x.repeat_interleave(k, dim=0)] if k else []))

        eps = self.teacher.predict_eps(rows(x_t), rows(t), torch.cat(parts), map_camera(camera, rows))
        eps_cond, eps_uncond, eps_neg = eps[:b], eps[b:2 * b], eps[2 * b:]
        guided = classifier_free_guidance(eps_uncond, eps_cond, self.config.cfg,
                                          eps_neg if k else None, c.negative_weights if k else None)
        return guided, eps_cond

    def discriminator_eps(self, x_t: Tensor, t: Tensor, c: Conditioning, camera: Any) -> Tensor:
        """ε_φ(x_t; y, camera), with guidance over the camera when discriminator_cfg != 1."""
        s = self.config.discriminator_cfg
        eps_cam = self.discriminator.predict_eps(x_t, t, c.base, camera, teacher_cond=c.cond)
        if s == 1.0 or camera is None:
            return eps_cam
        eps_none = self.discriminator.predict_eps(x_t, t, c.base, camera, use_camera=False, teacher_cond=c.cond)
        return classifier_free_guidance(eps_none, eps_cam, s)

    # -- the two losses ------------------------------------------------------------------------

    def generator_loss(self, z: Tensor, c: Conditioning, camera: Any = None, step: int = 0,
                       generator: torch.Generator | None = None, source: Tensor | None = None,
                       timer: PhaseTimer | None = None) -> GuidanceOutput:
        """Loss whose gradient w.r.t. the render z is w(t)·(ε̃_teacher − ref).

        `source` (DDS only) is the unedited sample the reference is computed on.
        """
        phase = phases_of(timer)
        if self.config.method == "dds" and source is None:
            raise ValueError("DDS compares with the source sample: pass source=")
        low, high = self.step_range(step)
        t = self.sample_timesteps(z.shape[0], low, high, z.device, generator)
        with torch.no_grad():
            noise = torch.randn(z.shape, device=z.device, dtype=z.dtype, generator=generator)
            x_t = self.teacher.add_noise(z.detach(), noise, t)
            with phase("teacher"):
                eps_teacher, eps_cond = self.teacher_eps(x_t, t, c, camera)
            if self.config.method == "dds":
                source_t = self.teacher.add_noise(source, noise, t)
                with phase("teacher"):
                    reference, _ = self.teacher_eps(source_t, t, dataclasses.replace(
                        c, cond=c.base, negatives=None, negative_weights=None), camera)
            elif self.discriminator is None:
                reference = noise
            else:
                with phase("discriminator_forward"):
                    reference = self.discriminator_eps(x_t, t, c, camera)
            grad = torch.nan_to_num(self.weight(t, z) * (eps_teacher - reference))
            if self.config.grad_clip is not None:
                grad = grad.clamp(-self.config.grad_clip, self.config.grad_clip)
        target = (z - grad).detach()
        loss = 0.5 * F.mse_loss(z, target, reduction="sum") / z.shape[0]
        return GuidanceOutput(loss=loss, grad=grad, t=t, noise=noise, x_t=x_t, eps_teacher=eps_teacher,
                              eps_reference=reference, eps_cond=eps_cond if self.discriminator is not None else None,
                              gamma=self.gamma_at(t, t.float()) if self.discriminator is not None else None)

    def discriminator_group(self, lr: float) -> list[dict[str, Any]]:
        """ε_φ's parameters as an optimizer parameter group (none for SDS and DDS)."""
        if self.discriminator is None:
            return []
        return [{"params": self.discriminator.trainable_parameters(), "lr": lr, "name": "discriminator"}]

    def step(self, optimizer: torch.optim.Optimizer, z: Tensor, c: Conditioning, camera: Any = None, *,
             step: int = 0, generator: torch.Generator | None = None, source: Tensor | None = None,
             extra: dict[str, Tensor] | None = None, timer: PhaseTimer | None = None,
             sample_offsets: Tensor | None = None) -> dict[str, float]:
        """One training step, the same in every loop (3D, 2D, editing, benchmarks): the guidance loss on
        the render z, the weighted `extra` losses (regularisers, already multiplied by their weights),
        ε_φ's loss on the same render (detached, fresh t and ε), then a backward of each (for fp16 teachers
        each under its own loss scale) and one optimizer step over the generator's and ε_φ's parameters,
        which are disjoint. Returns the metrics.
        `timer` (benchmarks) books the teacher, ε_φ, backward and optimizer phases; `sample_offsets` (NeRF
        renders) is where the render's ray samples fell, for an ε_φ that renders the same view."""
        phase = phases_of(timer)
        if self.discriminator is not None:
            self.discriminator.observe(z, c.base, camera, sample_offsets)
        out = self.generator_loss(z, c, camera, step=step, generator=generator, source=source, timer=timer)
        loss = out.loss
        metrics = out.metrics()
        for name, value in (extra or {}).items():
            loss = loss + value
            metrics[f"loss_{name}"] = float(value.detach())
        loss_d = None
        if self.discriminator is not None:
            with phase("discriminator_forward"):
                loss_d = self.discriminator_loss(z, c, camera, generator=generator)
            metrics["loss_discriminator"] = float(loss_d.detach())
        metrics["loss"] = float(loss.detach()) + (0.0 if loss_d is None else float(loss_d.detach()))
        self._optimizer_step(optimizer, loss, loss_d, phase)
        # More ε_φ updates on the same render: the generator's parameters have no gradient now, so the
        # optimizer leaves them alone.
        for _ in range(self.config.discriminator_steps - 1 if self.discriminator is not None else 0):
            with phase("discriminator_extra_steps"):
                self._optimizer_step(optimizer, None, self.discriminator_loss(z, c, camera, generator=generator))
        if self.scaler is not None:
            metrics["skipped_generator"], metrics["skipped_discriminator"] = (self.skipped["generator"],
                                                                               self.skipped["discriminator"])
        return metrics

    def _optimizer_step(self, optimizer: torch.optim.Optimizer, loss: Tensor | None, loss_d: Tensor | None,
                        phase: Callable[[str], AbstractContextManager] | None = None) -> None:
        """Backward of the generator's and ε_φ's losses (disjoint parameters), each under its own loss
        scale, then one optimizer step; a part whose gradient is not finite keeps its parameters (its
        gradients are dropped, so the optimizer skips them) and lowers only its own scale."""
        phase = phase or phases_of(None)
        optimizer.zero_grad(set_to_none=True)
        parts = [(name, value, scale) for name, value, scale in (("generator", loss, self.scaler),
                                                                  ("discriminator", loss_d, self.discriminator_scaler))
                 if value is not None]
        with phase("backward"):
            for _, value, scale in parts:
                (value if scale is None else value * scale.value).backward()
        with phase("optimizer"):
            if self.scaler is not None:
                disc = set(self.discriminator.trainable_parameters()) if self.discriminator is not None else set()
                for name, _, scale in parts:
                    params = [p for g in optimizer.param_groups for p in g["params"]
                              if p.grad is not None and ((p in disc) == (name == "discriminator"))]
                    if scale is not None and not scale.unscale(params):
                        self.skipped[name] += 1
            optimizer.step()

    def discriminator_loss(self, z: Tensor, c: Conditioning, camera: Any = None,
                           generator: torch.Generator | None = None) -> Tensor:
        """‖ε_φ − ε‖² + γ·‖ε_φ − sg(ε_teacher(x_t; y))‖² on detached renders, fresh t and ε (or, for an
        ε_φ whose family allows it, the loss's closed-form expectation over them)."""
        if self.discriminator is None:
            raise RuntimeError("SDS has no discriminator to train")
        cfg, total, n = self.config, self.teacher.num_train_timesteps, self.config.discriminator_samples
        low = int(total * cfg.discriminator_min_step_percent)
        high = max(low + 1, int(total * cfg.discriminator_max_step_percent))
        # The closed form (analytic families) is derived for a constant γ.
        expected = (self.discriminator.expected_loss(z.detach(), camera, (low, high))
                    if cfg.gamma_schedule == "constant" else None)
        if expected is not None:
            return expected
        z = z.detach().repeat_interleave(n, dim=0) if n > 1 else z.detach()
        c = _repeat_conditioning(c, n)
        if n > 1:
            camera = map_camera(camera, lambda x: x.repeat_interleave(n, dim=0))
        t = torch.randint(low, high, (z.shape[0],), device=z.device, generator=generator)
        noise = torch.randn(z.shape, device=z.device, dtype=z.dtype, generator=generator)
        x_t = self.teacher.add_noise(z, noise, t)
        use_camera = True
        if camera is not None and cfg.camera_dropout > 0:
            drop = torch.rand((), generator=generator, device="cpu" if generator is None else generator.device)
            use_camera = float(drop) >= cfg.camera_dropout
        with torch.autocast(z.device.type, dtype=self.teacher.dtype, enabled=self.low_precision):
            eps_phi = self.discriminator.predict_eps(x_t, t, c.base, camera, use_camera=use_camera,
                                                     teacher_cond=c.cond).float()
        loss = F.mse_loss(eps_phi, noise.float())
        if cfg.effective_gamma != 0.0:
            with torch.no_grad():
                eps_teacher = self.teacher.predict_eps(x_t, t, c.cond, camera)
            per_sample = (eps_phi - eps_teacher.float()).pow(2).flatten(1).mean(1)
            loss = loss + (self.gamma_at(t, per_sample) * per_sample).mean()
        return loss

    def gamma_at(self, t: Int[Tensor, " B"], like: Tensor) -> Tensor:
        """ASD's γ for each timestep: constant, or the official loss's γ·ᾱ_t/(1 + γ(1 − ᾱ_t))."""
        gamma = self.config.effective_gamma
        if self.config.gamma_schedule == "constant":
            return torch.full_like(like, gamma)
        a = self.teacher.alpha_bar(t, like).to(like)
        return gamma * a / (1 + gamma * (1 - a))



class LossScale:
    """Dynamic loss scaling for one part of the model (torch.amp.GradScaler's policy, per part).

    GradScaler scales and steps a whole optimizer; the generator and ε_φ share one, and an overflow in
    ε_φ's gradient must not skip the generator's step (nor the reverse), so each part has its own scale.
    """

    def __init__(self, init: float = 2.0**16, growth: float = 2.0, backoff: float = 0.5, interval: int = 2000) -> None:
        self.value, self.growth, self.backoff, self.interval = init, growth, backoff, interval
        self.good_steps = 0

    def unscale(self, params: list[torch.nn.Parameter]) -> bool:
        """Divide the gradients by the scale. Not finite: drop them (the optimizer skips these parameters),
        lower the scale and return False. Finite: raise the scale after `interval` good steps."""
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, 1.0 / self.value)
            finite = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
        else:
            finite = True
        if not finite:
            for p in params:
                p.grad = None
            self.value *= self.backoff
            self.good_steps = 0
            return False
        self.good_steps += 1
        if self.good_steps >= self.interval:
            self.value *= self.growth
            self.good_steps = 0
        return True

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "value" in state:
            self.value, self.good_steps = float(state["value"]), int(state["good_steps"])
        elif "scale" in state:  # a checkpoint written with torch's GradScaler (one scale for both parts)
            self.value, self.good_steps = float(state["scale"]), int(state.get("_growth_tracker", 0))


def map_camera(camera: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """Apply a batch-axis operation to a camera: a [B, 4, 4] tensor or a dataclass of [B, ...] tensors."""
    if camera is None or isinstance(camera, Tensor):
        return None if camera is None else fn(camera)
    return type(camera)(*(fn(getattr(camera, f.name)) for f in dataclasses.fields(camera)))


def _repeat_conditioning(c: Conditioning, n: int) -> Conditioning:
    if n == 1:
        return c
    rep = lambda x: None if x is None else x.repeat_interleave(n, dim=0)  # noqa: E731
    return Conditioning(cond=rep(c.cond), uncond=rep(c.uncond), base=rep(c.base),
                        negatives=None if c.negatives is None else rep(c.negatives.reshape(
                            c.batch_size, -1, *c.negatives.shape[1:])).flatten(0, 1),
                        negative_weights=rep(c.negative_weights))
