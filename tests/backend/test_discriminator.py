"""ε_φ on real diffusers modules: half precision, a separate (v-prediction) model, several updates per step."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from asd_backend.guidance.prompts import Conditioning
from asd_backend.guidance.score_distillation import ScoreDistillation, map_camera
from asd_backend.teachers.builders import saved_pipeline
from asd_backend.teachers.stable_diffusion import StableDiffusionTeacher
from asd_protocol.job_spec import GuidanceSpec, ModelSpec


def conditioning(teacher) -> Conditioning:
    emb = teacher.embed_prompts(["a teapot", "", "a teapot"])
    return Conditioning(cond=emb[0:1], uncond=emb[1:2], base=emb[2:3])


def fixed_loss(guidance, z, c) -> float:
    """ε_φ's loss on one fixed set of timesteps and noises: comparable before and after training."""
    with torch.no_grad():
        return float(guidance.discriminator_loss(z.repeat(8, 1, 1, 1), _repeat(c, 8),
                                                 generator=torch.Generator().manual_seed(123)))


def _repeat(c: Conditioning, n: int) -> Conditioning:
    """n copies along the batch axis (text embeddings [1, L, D] or analytic prompt indices [1])."""
    rep = lambda x: x.repeat(n, *([1] * (x.ndim - 1)))  # noqa: E731
    return Conditioning(cond=rep(c.cond), uncond=rep(c.uncond), base=rep(c.base))


def test_the_lora_discriminator_learns_in_bf16_with_fp32_weights(asd_home):
    torch.manual_seed(0)  # the LoRA's initial weights come from the global generator
    teacher = StableDiffusionTeacher.from_pretrained(str(saved_pipeline("tiny")), device="cpu", dtype=torch.bfloat16,
                                                     trained=False, name="tiny-bf16")
    guidance = ScoreDistillation.from_spec(teacher, GuidanceSpec())
    try:
        params = guidance.discriminator.trainable_parameters()
        assert params and all(p.dtype == torch.float32 for p in params)  # master weights stay fp32
        assert teacher.unet.conv_in.weight.dtype == torch.bfloat16
        optimizer = torch.optim.AdamW(guidance.discriminator_group(3e-3))
        z = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
        c = conditioning(teacher)
        before = fixed_loss(guidance, z, c)
        generator = torch.Generator().manual_seed(1)
        for _ in range(40):
            loss = guidance.discriminator_loss(z, c, generator=generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grads = [p.grad for p in params if p.grad is not None]
            assert grads and all(torch.isfinite(g).all() for g in grads)
            assert sum(float(g.abs().sum()) for g in grads) > 0  # no underflow to zero
            optimizer.step()
        after = fixed_loss(guidance, z, c)
        print(f"bf16 ε_φ loss on fixed draws: {before:.4f} → {after:.4f}")
        assert after < before - 0.03 * abs(before), (before, after)
    finally:
        guidance.close()
    assert not teacher.has_lora


def test_a_separate_v_prediction_model_hosts_the_discriminator(tiny_teacher):
    teacher = tiny_teacher
    folder = saved_pipeline("tiny", prediction_type="v_prediction")
    guidance = ScoreDistillation.from_spec(teacher, GuidanceSpec(), ModelSpec(discriminator_model=str(folder)))
    try:
        host = guidance.discriminator.host
        assert host is not teacher and host.prediction_type == "v_prediction" and host.has_lora
        assert not teacher.has_lora and host.vae is None and host.text_encoder is None
        c = conditioning(teacher)
        x_t = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
        t = torch.tensor([100, 700])
        # Zero-initialised: ε_φ is the host's own ε (converted from its v prediction), camera or not.
        with torch.no_grad():
            eps_phi = guidance.discriminator.predict_eps(x_t, t, c.base.repeat(2, 1, 1))
            eps_host = host.predict_eps(x_t, t, c.base.repeat(2, 1, 1))
            v = host.predict_raw(x_t, t, c.base.repeat(2, 1, 1))
        torch.testing.assert_close(eps_phi, eps_host)
        assert not torch.allclose(eps_host, v)  # the conversion from v happened
        optimizer = torch.optim.AdamW(guidance.discriminator_group(1e-3))
        z = torch.randn(1, 4, 32, 32)
        guidance.step(optimizer, z.requires_grad_(), c, generator=torch.Generator().manual_seed(2))
        assert any(float(p.detach().abs().sum()) > 0 for n, p in host.lora_parameters() if "lora_B" in n)
    finally:
        guidance.close()
    assert not host.has_lora


def test_discriminator_steps_update_only_the_discriminator(tiny_teacher):
    teacher = tiny_teacher
    guidance = ScoreDistillation.from_spec(teacher, GuidanceSpec(discriminator_steps=3))
    try:
        latent = torch.nn.Parameter(torch.randn(1, 4, 32, 32))
        optimizer = torch.optim.AdamW([{"params": [latent], "lr": 0.01, "weight_decay": 0.0},
                                       *guidance.discriminator_group(1e-4)])
        guidance.step(optimizer, latent, conditioning(teacher), generator=torch.Generator().manual_seed(0))
        assert int(optimizer.state[latent]["step"]) == 1
        lora = next(p for _, p in teacher.lora_parameters())
        assert int(optimizer.state[lora]["step"]) == 3
    finally:
        guidance.close()


def test_discriminator_model_flag_reaches_the_loop(tmp_path, asd_home):
    folder = saved_pipeline("tiny", prediction_type="v_prediction")
    out = tmp_path / "fox.png"
    result = subprocess.run([sys.executable, "-m", "asd_backend.cli", "image", "a fox", "--teacher", "tiny",
                             "--device", "cpu", "--steps", "2", "--discriminator-model", str(folder),
                             "--discriminator-steps", "2", "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["spec"]["model"]["discriminator_model"] == str(folder)
    assert record["spec"]["guidance"]["discriminator_steps"] == 2
    assert record["final_metrics"]["loss_discriminator"] != 0


@pytest.mark.parametrize("gamma", [-1.0, 0.0, 0.5])
def test_asd_refuses_a_gamma_outside_minus_one_to_zero(gamma):
    from asd_backend.guidance.score_distillation import GuidanceConfig

    with pytest.raises(ValueError, match=r"\(-1, 0\)"):
        GuidanceConfig(method="asd", gamma=gamma)


def gap_to_the_optimum(guidance, z, c, camera=None, gamma=-0.75, n=16) -> float:
    """‖ε_φ − ε*‖ / ‖ε_teacher − ε*‖ on fixed draws, ε* = (ε + γ·ε_teacher)/(1 + γ): the exact minimiser
    of ASD's discriminator loss for a generator that always renders z (so ε is fixed by x_t)."""
    gen = torch.Generator().manual_seed(99)
    t = torch.randint(20, 980, (n,), generator=gen)
    eps = torch.randn(n, *z.shape[1:], generator=gen)
    zs = z.expand(n, *z.shape[1:])
    x_t = guidance.teacher.add_noise(zs, eps, t)
    cams = None if camera is None else type(camera)(camera.index.expand(n), camera.c2w.expand(n, 4, 4))
    with torch.no_grad():
        teacher = guidance.teacher.predict_eps(x_t, t, c.cond.expand(n, *c.cond.shape[1:]), cams)
        phi = guidance.discriminator.predict_eps(x_t, t, c.base.expand(n, *c.base.shape[1:]), cams,
                                                 teacher_cond=c.cond.expand(n, *c.cond.shape[1:]))
    target = (eps + gamma * teacher) / (1 + gamma)
    return float((phi - target).norm() / (teacher - target).norm())


def test_the_texture_discriminator_converges_to_the_optimum_for_a_fixed_generator():
    """The analytic ε_φ of the texture teacher's family reaches (ε + γ·ε_teacher)/(1+γ) within 15 %."""
    from asd_backend.teachers.analytic import RenderedTextureTeacher
    from asd_backend.texture.edit import to_tensor
    from asd_backend.texture.raster import NormalisedMesh, UVRasterizer
    from tests.backend.test_texture import pattern, uv_sphere

    vertices, faces, uvs = uv_sphere()
    raster = UVRasterizer.orbit(NormalisedMesh.from_world(vertices, faces, uvs), views=8, resolution=32, seed=0)
    textures = {name: to_tensor(pattern(32, 64, phase), "cpu")[0]
                for name, phase in (("target", 0.0), ("source", 0.35))}
    teacher = RenderedTextureTeacher(raster, textures, sigma=0.05)
    guidance = ScoreDistillation.from_spec(teacher, GuidanceSpec())
    fixed = to_tensor(pattern(32, 64, 0.2), "cpu")[0]  # the generator: neither of the teacher's textures
    c = Conditioning(cond=teacher.embed_prompts(["target"]), uncond=teacher.embed_prompts([""]),
                     base=teacher.embed_prompts(["source"]))
    optimizer = torch.optim.AdamW(guidance.discriminator_group(0.01))
    generator = torch.Generator().manual_seed(0)
    views = [raster.views(torch.tensor([v])) for v in range(len(raster))]
    z0 = raster.render(fixed, views[0].index) * 2 - 1
    guidance.discriminator.observe(z0, c.base, views[0])  # ε_φ starts at the source texture
    before = gap_to_the_optimum(guidance, z0, c, views[0])
    for step in range(600):
        view = views[step % len(views)]
        loss = guidance.discriminator_loss(raster.render(fixed, view.index) * 2 - 1, c, view, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    after = max(gap_to_the_optimum(guidance, raster.render(fixed, v.index) * 2 - 1, c, v) for v in views[:4])
    print(f"texture ε_φ gap to the optimum: {before:.3f} → {after:.3f}")
    assert before > 0.5 and after < 0.15, (before, after)


def test_the_lora_discriminator_moves_towards_the_optimum_on_the_tiny_teacher(tiny_teacher):
    """The LoRA on the tiny random UNet: its gap to the optimum shrinks, slowly (a random UNet's LoRA can
    hardly express a denoiser of one latent; on a trained UNet the residual it must learn is small)."""
    teacher = tiny_teacher
    torch.manual_seed(0)  # the LoRA's initial weights come from the global generator
    guidance = ScoreDistillation.from_spec(teacher, GuidanceSpec())
    try:
        emb = teacher.embed_prompts(["a teapot", ""])
        c = Conditioning(cond=emb[0:1], uncond=emb[1:2], base=emb[0:1])
        z = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
        before = gap_to_the_optimum(guidance, z, c)
        optimizer = torch.optim.AdamW(guidance.discriminator_group(1e-2))
        generator = torch.Generator().manual_seed(1)
        for _ in range(60):
            loss = guidance.discriminator_loss(z.repeat(4, 1, 1, 1), _repeat(c, 4), generator=generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        after = gap_to_the_optimum(guidance, z, c)
        print(f"LoRA ε_φ gap to the optimum: {before:.3f} → {after:.3f}")
        assert before == pytest.approx(1.0, abs=1e-4) and after < before - 0.01, (before, after)
    finally:
        guidance.close()


def test_the_nerf_discriminator_of_the_shape_teacher_moves_towards_the_optimum():
    """3D's analytic ε_φ: a NeRF of its own; for a generator that always renders the target from one
    camera, its gap to the optimum shrinks as its renders learn that image."""
    from asd_backend.bench.shape import distractor_for, load_target
    from asd_backend.guidance.discriminator import FieldGaussianDiscriminator
    from asd_backend.nerf.cameras import orbit_cameras
    from asd_backend.teachers.analytic import RenderedShapeTeacher
    from asd_protocol.job_spec import GridSpec, NerfSpec

    torch.manual_seed(0)  # ψ's initial hash-grid weights come from the global generator
    target = load_target("torus")
    teacher = RenderedShapeTeacher(target, distractor_for(target), resolution=24, colourways=2)
    nerf = NerfSpec(grid=GridSpec(n_levels=8, log2_hashmap_size=14, per_level_scale=1.5), samples_per_ray=24,
                    occupancy_resolution=16, background="white")
    guidance = ScoreDistillation.from_spec(teacher, GuidanceSpec(), nerf=nerf)
    assert isinstance(guidance.discriminator, FieldGaussianDiscriminator)
    camera = orbit_cameras(torch.tensor([20.0]), torch.tensor([30.0]), torch.tensor([1.3]), torch.tensor([50.0]))
    z = teacher.render(target, camera, 24, 24, colourway=1) * 2 - 1  # the generator: the target, painted
    c = Conditioning(cond=teacher.embed_prompts(["target"]), uncond=teacher.embed_prompts([""]),
                     base=teacher.embed_prompts(["target"]))

    def gap() -> float:
        gen = torch.Generator().manual_seed(99)
        t = torch.randint(20, 600, (8,), generator=gen)
        eps = torch.randn(8, 3, 24, 24, generator=gen)
        cams = type(camera)(*(getattr(camera, f).expand(8, *getattr(camera, f).shape[1:])
                              for f in ("c2w", "fovy_deg", "elevation_deg", "azimuth_deg", "distance")))
        x_t = teacher.add_noise(z.expand(8, -1, -1, -1), eps, t)
        with torch.no_grad():
            eps_t = teacher.predict_eps(x_t, t, c.cond.expand(8), cams)
            phi = guidance.discriminator.predict_eps(x_t, t, c.base.expand(8), cams, teacher_cond=c.cond.expand(8))
        optimum = (eps - 0.75 * eps_t) / 0.25
        return float((phi - optimum).norm() / (eps_t - optimum).norm())

    before = gap()
    optimizer = torch.optim.AdamW(guidance.discriminator_group(0.02))
    generator = torch.Generator().manual_seed(0)
    for _ in range(80):
        guidance.discriminator.observe(z, c.base, camera)
        loss = guidance.discriminator_loss(z, c, camera, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    after = gap()
    print(f"NeRF ε_φ gap to the optimum: {before:.3f} → {after:.3f}")
    assert after < 0.7 * before, (before, after)


def test_the_nerf_discriminator_trains_on_the_closed_form_expectation_of_its_loss():
    """ψ's loss, E over t and ε in closed form, differs between two ψ exactly as the sampled ASD loss
    does on average (the constants free of ψ cancel); and ψ renders the generator's view with the
    ray-sample jitter `observe` was given."""
    from asd_backend.bench.shape import distractor_for, load_target
    from asd_backend.nerf.cameras import orbit_cameras
    from asd_backend.teachers.analytic import RenderedShapeTeacher
    from asd_protocol.job_spec import GridSpec, NerfSpec

    torch.manual_seed(0)
    target = load_target("torus")
    teacher = RenderedShapeTeacher(target, distractor_for(target), resolution=16, colourways=2)
    nerf = NerfSpec(grid=GridSpec(n_levels=4, log2_hashmap_size=12, per_level_scale=1.5), samples_per_ray=8,
                    occupancy_resolution=16, background="white")
    spec = GuidanceSpec(method="asd")
    guidance = ScoreDistillation.from_spec(teacher, spec, nerf=nerf, discriminator_min_step_percent=0.2,
                                           discriminator_max_step_percent=0.9)
    disc = guidance.discriminator
    camera = orbit_cameras(torch.tensor([20.0]), torch.tensor([30.0]), torch.tensor([1.3]), torch.tensor([50.0]))
    z = teacher.render(target, camera, 16, 16, colourway=1) * 2 - 1
    c = Conditioning(cond=teacher.embed_prompts(["target"]), uncond=teacher.embed_prompts([""]),
                     base=teacher.embed_prompts(["target"]))
    offsets = torch.rand(16 * 16, 8, generator=torch.Generator().manual_seed(3))
    disc.observe(z, c.base, camera, offsets)
    jittered = disc.renderer(camera, 16, 16, offsets=offsets).rgb.permute(0, 3, 1, 2) * 2 - 1
    assert torch.equal(disc.means(camera, 16, 16), jittered)

    def losses() -> tuple[float, float]:
        with torch.no_grad():
            closed = float(guidance.discriminator_loss(z, c, camera))
            disc.closed_form = False  # the sampled loss, on 4000 draws of t and ε
            n = 4000
            cams = map_camera(camera, lambda x: x.expand(n, *x.shape[1:]))
            sampled = float(guidance.discriminator_loss(z.expand(n, -1, -1, -1), _repeat(c, n), cams,
                                                        generator=torch.Generator().manual_seed(5)))
            disc.closed_form = True
        return closed, sampled

    disc.sample_offsets = None  # ψ at stratum centres for both estimates (n copies of the view below)
    closed_a, sampled_a = losses()
    with torch.no_grad():  # a second ψ: its colours moved
        disc.renderer.field.feature_network[-1].bias.sub_(3.0)
    closed_b, sampled_b = losses()
    print(f"closed form {closed_a:.4f} → {closed_b:.4f}, sampled {sampled_a:.4f} → {sampled_b:.4f}")
    assert closed_b - closed_a > 0.05, (closed_a, closed_b)
    assert (sampled_b - sampled_a) == pytest.approx(closed_b - closed_a, rel=0.1), (
        closed_a, closed_b, sampled_a, sampled_b)
