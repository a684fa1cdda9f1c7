"""Analytic teachers: diffusion models whose exact noise prediction is known in closed form.

They make the quality of score distillation measurable without any trained weights: the data
distribution is known, so where the generator ends up can be compared with where it should.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .base import EPSILON, Teacher, scaled_linear_alphas_cumprod

UNCONDITIONAL = -1


class GaussianMixtureTeacher(Teacher):
    """Per prompt, an equal-weight mixture of K isotropic Gaussians N(μ_pk, σ²I) in D dimensions.

    Under x_t = √ᾱ·x_0 + √(1−ᾱ)·ε the marginal stays a mixture, of N(√ᾱ·μ_k, s²I) with
    s² = ᾱσ² + 1 − ᾱ, so the exact denoiser is
        ε̂(x_t) = −√(1−ᾱ) · ∇log p_t(x_t) = √(1−ᾱ) · Σ_k r_k(x_t) (x_t − √ᾱ·μ_k) / s²
    with r_k the posterior responsibilities. The unconditional model (the empty prompt) is the
    mixture over every prompt's components, as a class-conditional model's marginal would be.
    Conditioning is the prompt index (−1 for unconditional).
    """

    discriminator = "residual"

    def __init__(self, means: Float[Tensor, "P K D"], sigma: float, *, device: str | torch.device = "cpu",
                 alphas_cumprod: Tensor | None = None) -> None:
        if means.ndim != 3:
            raise ValueError(f"means must have shape [prompts, modes, dim]; got {list(means.shape)}")
        if sigma <= 0:
            raise ValueError(f"sigma must be positive; got {sigma}")
        self.device = torch.device(device)
        self.means = means.to(self.device, torch.float32)
        self.sigma = float(sigma)
        self.alphas_cumprod = (alphas_cumprod if alphas_cumprod is not None else scaled_linear_alphas_cumprod()).to(
            self.device)
        self.prediction_type = EPSILON
        self.name = "gmm"
        self.description = f"Gaussian mixtures: {means.shape[0]} prompts × {means.shape[1]} modes in {means.shape[2]}-D"
        self.trained = True
        self.sample_channels = int(means.shape[2])
        self.native_resolution = 1

    @classmethod
    def random(cls, *, prompts: int, modes: int, dim: int, sigma: float, seed: int = 0,
               device: str | torch.device = "cpu") -> GaussianMixtureTeacher:
        """Means drawn from N(0, I) with a seeded generator."""
        generator = torch.Generator().manual_seed(seed)
        return cls(torch.randn(prompts, modes, dim, generator=generator), sigma, device=device)

    @property
    def prompt_names(self) -> list[str]:
        return [str(i) for i in range(self.means.shape[0])]

    def embed_prompts(self, prompts: Sequence[str]) -> Int[Tensor, " P"]:
        index = []
        for p in prompts:
            if p == "":
                index.append(UNCONDITIONAL)
            elif p.isdigit() and int(p) < self.means.shape[0]:
                index.append(int(p))
            else:
                raise ValueError(f"prompt {p!r} is not one of this mixture's prompts {self.prompt_names} or ''")
        return torch.tensor(index, dtype=torch.long, device=self.device)

    def component_means(self, cond: Int[Tensor, " B"]) -> Float[Tensor, "B K D"]:
        """Each sample's component means; unconditional rows get every prompt's components."""
        n_prompts, n_modes, dim = self.means.shape
        all_means = self.means.reshape(1, n_prompts * n_modes, dim).expand(len(cond), -1, -1)
        own = self.means[cond.clamp(min=0)]  # [B, K, D]
        # Pad a prompt's K modes to P*K by repeating them: equal weights make repeats harmless.
        own = own.repeat(1, n_prompts, 1)
        return torch.where((cond == UNCONDITIONAL).reshape(-1, 1, 1), all_means, own)

    def predict_raw(self, x_t: Float[Tensor, "B D"], t: Int[Tensor, " B"], cond: Int[Tensor, " B"],
                    camera: Tensor | None = None) -> Float[Tensor, "B D"]:
        a = self.alpha_bar(t, x_t).reshape(-1, 1, 1)
        centres = a.sqrt() * self.component_means(cond.to(x_t.device))  # [B, K', D]
        s2 = a * self.sigma**2 + (1 - a)
        diff = x_t.unsqueeze(1) - centres  # [B, K', D]
        logits = -(diff**2).sum(-1, keepdim=True) / (2 * s2)
        resp = torch.softmax(logits, dim=1)
        return (1 - a).sqrt().squeeze(1) * (resp * diff).sum(1) / s2.squeeze(1)

    def sample(self, prompt: int, n: int, generator: torch.Generator | None = None) -> Float[Tensor, "N D"]:
        """Exact samples of one prompt's mixture (for metrics)."""
        means = self.means[prompt].cpu()
        pick = torch.randint(0, means.shape[0], (n,), generator=generator)
        return means[pick] + self.sigma * torch.randn(n, means.shape[1], generator=generator)

    @property
    def prompt_count(self) -> int:
        return int(self.means.shape[0])


def positional_albedo(points: Tensor, colourway: int = 0, shift: float = 2.4) -> Tensor:
    """A smooth, view-independent colour pattern over space (sRGB in [0.1, 0.9]); each colourway
    shifts the channels' phases by `shift` radians (the same object in another paint).

    Constant albedo would leave only silhouettes, which cannot show concavities; a pattern that
    varies with position makes the shape recoverable from photo-consistency across views.
    """
    phase = torch.tensor([0.0, 2.1, 4.2], device=points.device) + shift * colourway * torch.tensor(
        [1.0, -0.7, 0.4], device=points.device)
    freq = torch.tensor([[3.0, 1.0, 2.0], [1.0, 3.0, 1.5], [2.0, 1.5, 3.0]], device=points.device)
    return 0.5 + 0.4 * torch.sin(points.float() @ freq.T + phase)


class RenderedGaussianTeacher(Teacher):
    """View-conditioned Gaussians in pixel space around renders, for every camera.

    Each component j belongs to one prompt; for prompt k and camera c the data distribution is the
    equal mixture of N(render_j(c), σ²I) over k's components (images in [-1, 1]), and the
    unconditional one (prompt '') the equal mixture over every component, each pulled the fraction
    `uncond_shrink` of the way towards the mean of them all. As for the Gaussian mixture, ε̂ is exact:
    √(1−ᾱ) Σ_j r_j (x_t − √ᾱ μ_j) / s², s² = ᾱσ² + 1 − ᾱ. Subclasses say what each component's
    render is; by default one component per prompt.

    Why the shrink: with the unconditional exactly the mixture of the prompts' components, near a
    prompt's mode its posterior sits on that same component (thousands of pixels make it sharp at
    almost every noise level), so ε_uncond = ε_cond and CFG does nothing. A real teacher's
    unconditional prediction is a vaguer, greyer version of every prompt's; with the shrink
    ε_cond − ε_uncond ∝ shrink·(mean − μ_j) near mode j, and CFG at scale s moves a point-mass
    generator (s − 1)·shrink·(μ_j − mean) past the mode: over-saturation growing with s, as the
    paper shows.
    """

    discriminator = "residual"

    prompts: tuple[str, ...] = ()

    @property
    def component_prompts(self) -> tuple[int, ...]:
        """The prompt index of each component."""
        return tuple(range(len(self.prompts)))

    def render_component(self, index: int, camera, height: int, width: int) -> Float[Tensor, "B 3 H W"]:
        return self.render_prompt(index, camera, height, width)

    def render_components(self, indices: Sequence[int], camera, height: int, width: int) -> dict[int, Tensor]:
        """Several components' renders from the same cameras (subclasses share work between them)."""
        return {j: self.render_component(j, camera, height, width) for j in indices}

    def __init__(self, *, resolution: int, sigma: float, device: str | torch.device,
                 uncond_shrink: float = 0.0) -> None:
        if not 0 <= uncond_shrink < 1:
            raise ValueError(f"uncond_shrink={uncond_shrink} must be in [0, 1)")
        self.device = torch.device(device)
        self.uncond_shrink = uncond_shrink
        self.alphas_cumprod = scaled_linear_alphas_cumprod().to(self.device)
        self.prediction_type = EPSILON
        self.trained = True
        self.sample_channels = 3
        self.native_resolution = resolution
        self.sigma = sigma

    def render_prompt(self, index: int, camera, height: int, width: int) -> Float[Tensor, "B 3 H W"]:
        raise NotImplementedError

    def embed_prompts(self, prompts: Sequence[str]) -> Tensor:
        mapping = {p: i for i, p in enumerate(self.prompts)} | {"": UNCONDITIONAL}
        for p in prompts:
            if p not in mapping:
                raise ValueError(f"prompt {p!r}: this teacher knows only {', '.join(map(repr, mapping))}")
        return torch.tensor([mapping[p] for p in prompts], dtype=torch.long, device=self.device)

    def predict_raw(self, x_t: Float[Tensor, "B 3 H W"], t: Int[Tensor, " B"], cond: Int[Tensor, " B"],
                    camera=None) -> Tensor:
        if camera is None:
            raise ValueError(f"{type(self).__name__} needs the camera of every sample")
        h, w = x_t.shape[-2:]
        cond = cond.to(x_t.device)
        prompt_of = self.component_prompts
        uncond = cond == UNCONDITIONAL
        wanted = None if bool(uncond.any()) else set(cond.tolist())
        keys = [j for j, k in enumerate(prompt_of) if wanted is None or k in wanted]
        centres = {j: image * 2 - 1 for j, image in self.render_components(keys, camera, h, w).items()}
        a = self.alpha_bar(t, x_t).reshape(-1, 1, 1, 1)
        s2 = a * self.sigma**2 + (1 - a)
        centre = torch.stack([centres[j] for j in keys], dim=1)  # [B, J, 3, H, W]
        if self.uncond_shrink:
            vague = centre + self.uncond_shrink * (centre.mean(1, keepdim=True) - centre)
            centre = torch.where(uncond.reshape(-1, 1, 1, 1, 1), vague, centre)
        diffs = x_t[:, None] - a.sqrt()[:, None] * centre
        logits = -(diffs**2).flatten(2).sum(-1) / (2 * s2.reshape(-1, 1))  # [B, J]
        # A conditional row keeps only its own prompt's components; unconditional rows all of them.
        own = cond[:, None] == torch.tensor([prompt_of[j] for j in keys], device=x_t.device)[None]
        logits = torch.where(uncond[:, None] | own, logits, torch.full_like(logits, float("-inf")))
        resp = torch.softmax(logits, dim=1)
        return (1 - a).sqrt() * (resp[:, :, None, None, None] * diffs).sum(1) / s2

    @property
    def prompt_count(self) -> int:
        return len(self.prompts)


class RenderedShapeTeacher(RenderedGaussianTeacher):
    """Renders of a target mesh (prompt 'target') and of distractors (prompt 'distractor', so CFG has
    something to push away from), ray-cast with `positional_albedo` on a solid background.

    With `colourways` > 1 the target prompt means the object in several equally likely paints and
    each distractor comes in them too: the unconditional is broad, as a real teacher's is, so CFG
    acts as it does on a real teacher (it pushes renders towards extremes)."""

    discriminator = "field_gaussian"

    def discriminator_options(self, guidance, model=None, nerf=None) -> dict:
        return {**super().discriminator_options(guidance, model, nerf), "nerf": nerf}  # a NeRF of its own

    prompts = ("target", "distractor")

    def __init__(self, target, distractor, *, resolution: int, sigma: float = 0.05,
                 background: tuple[float, float, float] = (1.0, 1.0, 1.0), device: str | torch.device = "cpu",
                 colourways: int = 1, colourway_shift: float = 2.4, uncond_shrink: float = 0.0) -> None:
        super().__init__(resolution=resolution, sigma=sigma, device=device, uncond_shrink=uncond_shrink)
        distractors = distractor if isinstance(distractor, (list, tuple)) else [distractor]
        # Components: (mesh, colourway, prompt) — the target's colourways first.
        self.components = [(target, k, 0) for k in range(colourways)] + [
            (mesh, k, 1) for mesh in distractors for k in range(colourways)]
        self.colourways = colourways
        self.colourway_shift = colourway_shift
        self.target = target
        self.name = "rendered-shape"
        self.description = "exact Gaussian around ray-cast renders of a target mesh"
        self.background = torch.tensor(background, device=self.device)

    @property
    def component_prompts(self) -> tuple[int, ...]:
        return tuple(prompt for _, _, prompt in self.components)

    def render(self, mesh, cameras, height: int, width: int, colourway: int = 0) -> Float[Tensor, "B 3 H W"]:
        """The mesh in [0, 1] sRGB, positional albedo, solid background, channels first."""
        return self._paint(self._hits(mesh, cameras, height, width), colourway)

    def _hits(self, mesh, cameras, height: int, width: int):
        from ..mesh.raycast import raycast, torch_image

        hits = raycast(mesh, cameras, height, width)
        return torch_image(hits.points, self.device), torch.from_numpy(hits.hit).to(self.device)[..., None]

    def _paint(self, hits, colourway: int) -> Tensor:
        points, mask = hits
        color = positional_albedo(points.reshape(-1, 3), colourway, self.colourway_shift).reshape(*points.shape)
        return torch.where(mask, color, self.background).permute(0, 3, 1, 2)

    def render_components(self, indices: Sequence[int], camera, height: int, width: int) -> dict[int, Tensor]:
        # Ray-cast each mesh once; its colourways only repaint the same hits.
        hits: dict[int, tuple] = {}
        out = {}
        for j in indices:
            mesh, colourway, _ = self.components[j]
            if id(mesh) not in hits:
                hits[id(mesh)] = self._hits(mesh, camera, height, width)
            out[j] = self._paint(hits[id(mesh)], colourway)
        return out

    def render_component(self, index: int, camera, height: int, width: int) -> Tensor:
        mesh, colourway, _ = self.components[index]
        return self.render(mesh, camera, height, width, colourway)

    def target_renders(self, camera, height: int, width: int) -> list[Tensor]:
        """The target in each colourway (what a perfect generator may render)."""
        return [self.render(self.target, camera, height, width, k) for k in range(self.colourways)]


class RenderedTextureTeacher(RenderedGaussianTeacher):
    """Renders of known textures on a fixed mesh through a UVRasterizer's precomputed views (the camera
    is a ViewBatch). Each prompt has one texture or several equally likely ones ('weathered bronze':
    three colourways); prompts nobody asks for (other objects' textures) only widen the unconditional."""

    discriminator = "texture_gaussian"

    def __init__(self, rasterizer, textures: dict[str, Tensor | Sequence[Tensor]], *, sigma: float = 0.05,
                 device: str | torch.device = "cpu", uncond_shrink: float = 0.0) -> None:
        super().__init__(resolution=rasterizer.resolution, sigma=sigma, device=device, uncond_shrink=uncond_shrink)
        self.rasterizer = rasterizer
        self.prompts = tuple(textures)
        self.textures: list[Tensor] = []
        owners: list[int] = []
        for k, value in enumerate(textures.values()):
            for tex in [value] if isinstance(value, Tensor) else value:
                self.textures.append(tex.to(self.device))
                owners.append(k)
        self._owners = tuple(owners)
        self.name = "rendered-texture"
        self.description = "exact Gaussians around renders of known textures on a fixed mesh"

    @property
    def component_prompts(self) -> tuple[int, ...]:
        return self._owners

    def prompt_texture(self, prompt: int) -> Tensor:
        """The (first) texture of a prompt."""
        return self.textures[self._owners.index(prompt)]

    def render_component(self, index: int, camera, height: int, width: int) -> Tensor:
        return self.rasterizer.render(self.textures[index], camera.index)
