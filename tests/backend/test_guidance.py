"""The distillation core against hand computation, on exact and on real diffusers teachers."""

import dataclasses

import pytest
import torch

from asd_backend.guidance.discriminator import LoraCameraDiscriminator, ResidualDiscriminator
from asd_backend.guidance.prompts import BACK, FRONT, OVERHEAD, SIDE, PromptBank, ViewPromptConfig
from asd_backend.guidance.score_distillation import (
    GuidanceConfig,
    ScoreDistillation,
    classifier_free_guidance,
    perpendicular_component,
)
from asd_backend.teachers.analytic import GaussianMixtureTeacher

NO_VIEWS = ViewPromptConfig(view_dependent=False, perp_neg=False)


@pytest.fixture
def gmm():
    return GaussianMixtureTeacher.random(prompts=2, modes=3, dim=5, sigma=0.2, seed=0)


def conditioning(teacher, n, prompt="0"):
    return PromptBank(teacher, prompt, "", NO_VIEWS).conditioning(batch_size=n)


@pytest.mark.parametrize("weighting", ["sds", "asd", "uniform"])
def test_sds_gradient_equals_hand_computation(gmm, weighting):
    guidance = ScoreDistillation(gmm, GuidanceConfig(method="sds", cfg=7.5, weighting=weighting))
    z = torch.randn(8, 5, requires_grad=True)
    c = conditioning(gmm, 8)
    out = guidance.generator_loss(z, c, generator=torch.Generator().manual_seed(3))
    out.loss.backward()
    # By hand: x_t from the same t and noise, the teacher twice, CFG, weight.
    a = gmm.alphas_cumprod[out.t].reshape(-1, 1)
    x_t = a.sqrt() * z.detach() + (1 - a).sqrt() * out.noise
    eps_c = gmm.predict_eps(x_t, out.t, torch.zeros(8, dtype=torch.long))
    eps_u = gmm.predict_eps(x_t, out.t, torch.full((8,), -1))
    guided = eps_u + 7.5 * (eps_c - eps_u)
    w = {"sds": 1 - a, "asd": ((1 - a) / a).sqrt(), "uniform": torch.ones_like(a)}[weighting]
    expected = w * (guided - out.noise)
    torch.testing.assert_close(out.grad, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z.grad, expected / 8, atol=1e-5, rtol=1e-5)  # loss is summed, then / batch
    lo, hi = guidance.step_range(0)
    assert (lo, hi) == (20, 980) and ((out.t >= lo) & (out.t <= hi)).all()


def test_vsd_and_asd_at_initialisation_use_the_teacher_as_reference(gmm):
    """ε_φ starts as an exact copy of the teacher, so at CFG 1 the first VSD/ASD gradient is zero."""
    for method in ("vsd", "asd"):
        guidance = ScoreDistillation(gmm, GuidanceConfig(method=method, cfg=1.0), n_prompts=2, use_camera=False)
        z = torch.randn(6, 5, requires_grad=True)
        out = guidance.generator_loss(z, conditioning(gmm, 6))
        assert torch.allclose(out.eps_reference, out.eps_teacher, atol=1e-6)
        assert out.grad.abs().max() < 1e-6


def test_discriminator_objective_by_hand(gmm):
    """‖ε_φ − ε‖² + γ‖ε_φ − ε_teacher‖², and VSD is the same with γ = 0."""
    for method, gamma in (("asd", -0.75), ("vsd", 0.0)):
        disc = ResidualDiscriminator(gmm, n_prompts=2, use_camera=False)
        torch.nn.init.normal_(disc.head.weight, std=0.1)  # a trained-looking ε_φ
        guidance = ScoreDistillation(gmm, GuidanceConfig(method=method, gamma=-0.75), discriminator=disc)
        z = torch.randn(4, 5)
        c = conditioning(gmm, 4)
        loss = guidance.discriminator_loss(z, c, generator=torch.Generator().manual_seed(9))
        g = torch.Generator().manual_seed(9)
        t = torch.randint(0, 1000, (4,), generator=g)
        noise = torch.randn(z.shape, generator=g)
        x_t = gmm.add_noise(z, noise, t)
        eps_phi = disc.predict_eps(x_t, t, c.base, None)
        eps_teacher = gmm.predict_eps(x_t, t, c.cond)
        expected = ((eps_phi - noise) ** 2).mean() + gamma * ((eps_phi - eps_teacher) ** 2).mean()
        torch.testing.assert_close(loss, expected)


def test_the_official_gamma_schedule_has_the_official_minimiser(gmm):
    """γ_t = γ·ᾱ/(1 + γ(1 − ᾱ)): the minimiser of ‖φ − E‖² + γ_t‖φ − ε_T‖² is the official v-space loss's,
    ((1 + γ(1 − ᾱ))·E + γ·ᾱ·ε_T)/(1 + γ), so ASD's fidelity weight is 1 + 3ᾱ_t at γ = −0.75, not 4."""
    gamma = -0.75
    guidance = ScoreDistillation(gmm, GuidanceConfig(method="asd", gamma=gamma, gamma_schedule="official"),
                                 discriminator=ResidualDiscriminator(gmm, n_prompts=2, use_camera=False))
    t = torch.tensor([0, 20, 500, 900, 999])
    a = gmm.alpha_bar(t, torch.zeros(5))
    g = guidance.gamma_at(t, torch.zeros(5))
    e, eps_t = torch.randn(5), torch.randn(5)
    minimiser = (e + g * eps_t) / (1 + g)
    torch.testing.assert_close(minimiser, ((1 + gamma * (1 - a)) * e + gamma * a * eps_t) / (1 + gamma))
    fidelity = 1 - g / (1 + g)  # the weight on (ε̃_T − E) − κ(ε_T − E), κ = γ_t/(1 + γ_t)
    torch.testing.assert_close(fidelity, 1 + 3 * a)
    constant = ScoreDistillation(gmm, GuidanceConfig(method="asd", gamma=gamma),
                                 discriminator=ResidualDiscriminator(gmm, n_prompts=2, use_camera=False))
    assert constant.gamma_at(t, torch.zeros(5)).tolist() == [gamma] * 5
    # The loss itself, by hand, with per-sample γ_t.
    disc = guidance.discriminator
    torch.nn.init.normal_(disc.head.weight, std=0.1)
    z, c = torch.randn(4, 5), conditioning(gmm, 4)
    loss = guidance.discriminator_loss(z, c, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (4,), generator=gen)
    noise = torch.randn(z.shape, generator=gen)
    x_t = gmm.add_noise(z, noise, t)
    eps_phi = disc.predict_eps(x_t, t, c.base, None)
    per = ((eps_phi - gmm.predict_eps(x_t, t, c.cond)) ** 2).mean(1)
    expected = ((eps_phi - noise) ** 2).mean() + (guidance.gamma_at(t, per) * per).mean()
    torch.testing.assert_close(loss, expected)


def test_discriminator_loss_falls_while_training(gmm):
    guidance = ScoreDistillation(gmm, GuidanceConfig(method="asd"), n_prompts=2, use_camera=False)
    opt = torch.optim.AdamW(guidance.discriminator.trainable_parameters(), lr=1e-3)
    z = gmm.sample(1, 64, torch.Generator().manual_seed(0)) * 0 + torch.randn(64, 5)  # not the teacher's data
    c = conditioning(gmm, 64)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(300):
        loss = guidance.discriminator_loss(z, c, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:30]) / 30, sum(losses[-30:]) / 30
    assert last < 0.8 * first


def test_cfg_formula_and_perp_neg():
    g = torch.Generator().manual_seed(0)
    uncond, cond = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    torch.testing.assert_close(classifier_free_guidance(uncond, cond, 7.5), uncond + 7.5 * (cond - uncond))
    neg = torch.randn(6, 4, 2, 2, generator=g)
    weights = torch.tensor([[-1.0, 0.0], [0.0, -2.0], [-0.5, -0.5]])
    out = classifier_free_guidance(uncond, cond, 2.0, neg, weights)
    expected = cond - uncond
    for i in range(3):
        for k in range(2):
            n = neg[2 * i + k] - uncond[i]
            p = cond[i] - uncond[i]
            perp = n - (n * p).sum() / (p * p).sum() * p
            expected[i] = expected[i] + weights[i, k] * perp
    torch.testing.assert_close(out, uncond + 2.0 * expected)
    x, y = torch.randn(5, 7), torch.randn(5, 7)
    assert (perpendicular_component(x, y) * y).sum(1).abs().max() < 1e-5


def test_config_validation_names_the_value():
    with pytest.raises(ValueError, match="gamma must be in"):
        GuidanceConfig(method="asd", gamma=0.5)
    with pytest.raises(ValueError, match="method must be one of"):
        GuidanceConfig(method="magic")
    with pytest.raises(ValueError, match="weighting"):
        GuidanceConfig(weighting="fantasia")
    GuidanceConfig(method="vsd", gamma=0.5)  # VSD ignores gamma


def test_annealed_timestep_range(gmm):
    guidance = ScoreDistillation(gmm, GuidanceConfig(method="sds", anneal_start_step=100))
    assert guidance.step_range(99) == (20, 980)
    assert guidance.step_range(100) == (20, 500)


def test_the_job_spec_sets_how_far_the_largest_timestep_anneals(gmm):
    from asd_backend.train.presets import resolve_spec
    from asd_backend.train.text_to_3d import guidance_for
    from asd_protocol.errors import ProtocolError

    spec = resolve_spec({"prompt": "a red cube", "preset": "smoke",
                         "schedule": {"anneal_start_step": 100, "anneal_max_timestep": 0.3}})
    with guidance_for(gmm, spec) as guidance:
        assert guidance.step_range(99) == (20, 980) and guidance.step_range(100) == (20, 300)
    assert resolve_spec({"prompt": "a red cube"}).schedule.anneal_max_timestep == 0.5
    with pytest.raises(ProtocolError, match="anneal_max_timestep"):
        resolve_spec({"prompt": "a red cube", "schedule": {"anneal_max_timestep": 0.01}})


def test_view_directions_follow_official_thresholds(tiny_teacher):
    bank = PromptBank(tiny_teacher, "a teapot", config=ViewPromptConfig())
    elevation = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 70.0, 10.0])
    azimuth = torch.tensor([0.0, 29.0, 31.0, 180.0, -155.0, 0.0, 90.0])
    assert bank.direction(elevation, azimuth).tolist() == [FRONT, FRONT, SIDE, BACK, BACK, OVERHEAD, SIDE]
    c = bank.conditioning(elevation, azimuth)
    assert c.cond.shape == (7, 77, 32) and c.negatives.shape == (14, 77, 32)
    assert c.negative_weights.shape == (7, 2)
    # Straight at the front, the positive is the front prompt and the side view is pushed away from.
    front = tiny_teacher.embed_prompts(["a teapot, front view"])[0]
    torch.testing.assert_close(c.cond[0], front)
    assert c.negative_weights[0, 0] == 0 and c.negative_weights[0, 1] < 0
    assert c.negative_weights[5].abs().sum() == 0  # overhead: no Perp-Neg
    plain = PromptBank(tiny_teacher, "a teapot", config=ViewPromptConfig(perp_neg=False)).conditioning(
        elevation, azimuth)
    assert plain.negatives is None
    torch.testing.assert_close(plain.cond[3], tiny_teacher.embed_prompts(["a teapot, back view"])[0])


def test_lora_discriminator_starts_as_teacher_and_disabled_lora_is_exact(tiny_teacher):
    t = tiny_teacher
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 32, 32, generator=g)
    steps = torch.tensor([50, 600])
    cond = t.embed_prompts(["a teapot", "a teapot"])
    before = t.predict_eps(x, steps, cond)
    disc = LoraCameraDiscriminator(t, rank=4)
    camera = torch.eye(4).expand(2, 4, 4)
    # Zero-initialised LoRA B and camera head: ε_φ equals the teacher at first.
    torch.testing.assert_close(disc.predict_eps(x, steps, cond, camera), before, atol=1e-5, rtol=1e-5)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in disc.trainable_parameters())
    assert not any(p.requires_grad for n, p in t.unet.named_parameters() if "lora_" not in n)
    guidance = ScoreDistillation(t, GuidanceConfig(method="asd"), discriminator=disc)
    opt = torch.optim.AdamW(disc.trainable_parameters(), lr=1e-2)
    z = torch.randn(2, 4, 32, 32, generator=g)
    c = PromptBank(t, "a teapot", config=NO_VIEWS).conditioning(batch_size=2)
    for _ in range(3):
        loss = guidance.discriminator_loss(z, c, camera, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after_training = disc.predict_eps(x, steps, cond, camera)
    assert (after_training - before).abs().max() > 1e-4  # ε_φ has moved
    assert torch.equal(t.predict_eps(x, steps, cond), before)  # the teacher has not, bit for bit


def test_lora_discriminator_state_round_trip(tiny_teacher, asd_home):
    from asd_backend.teachers import load_teacher

    disc = LoraCameraDiscriminator(tiny_teacher, rank=2)
    with torch.no_grad():
        for p in disc.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.01)
    state = disc.trainable_state()
    assert any(k.startswith("unet.") for k in state) and any(k.startswith("camera_embedding.") for k in state)
    other = LoraCameraDiscriminator(load_teacher("tiny", "cpu"), rank=2)
    other.load_trainable_state(state)
    x, steps = torch.randn(1, 4, 32, 32), torch.tensor([300])
    cond = tiny_teacher.embed_prompts(["x"])
    cam = torch.eye(4)[None]
    torch.testing.assert_close(disc.predict_eps(x, steps, cond, cam), other.predict_eps(x, steps, cond, cam))


def test_second_discriminator_on_one_unet_is_refused(tiny_teacher):
    LoraCameraDiscriminator(tiny_teacher)
    with pytest.raises(ValueError, match="already carries a LoRA adapter"):
        LoraCameraDiscriminator(tiny_teacher)


def test_asd_step_on_tiny_teacher_with_cameras_and_perp_neg(tiny_teacher):
    """One full generator + discriminator step through the real UNet, view prompts and Perp-Neg on."""
    guidance = ScoreDistillation(tiny_teacher, GuidanceConfig(method="asd"))
    bank = PromptBank(tiny_teacher, "a teapot", "blurry")
    elevation, azimuth = torch.tensor([10.0, 20.0]), torch.tensor([0.0, 135.0])
    c = bank.conditioning(elevation, azimuth)
    camera = torch.eye(4).expand(2, 4, 4).clone()
    z = torch.randn(2, 4, 32, 32, requires_grad=True)
    out = guidance.generator_loss(z, c, camera)
    out.loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    loss_d = guidance.discriminator_loss(z, c, camera)
    loss_d.backward()
    assert torch.isfinite(loss_d)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in guidance.discriminator.trainable_parameters())


def test_dds_reference_is_the_teacher_on_the_source_with_the_same_noise(gmm):
    guidance = ScoreDistillation(gmm, GuidanceConfig(method="dds", cfg=3.0))
    c = PromptBank(gmm, "0", "", NO_VIEWS).conditioning(batch_size=4)
    c.base = gmm.embed_prompts(["1"] * 4)  # the source prompt
    z, source = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5)
    out = guidance.generator_loss(z, c, source=source, generator=torch.Generator().manual_seed(5))
    src_t = gmm.add_noise(source, out.noise, out.t)
    cond_src = gmm.predict_eps(src_t, out.t, torch.ones(4, dtype=torch.long))
    uncond_src = gmm.predict_eps(src_t, out.t, torch.full((4,), -1))
    torch.testing.assert_close(out.eps_reference, uncond_src + 3.0 * (cond_src - uncond_src))
    # Editing the source towards itself (same prompt, same sample) gives no gradient: DDS's premise.
    c.base = c.cond
    still = guidance.generator_loss(source.clone().requires_grad_(True), c, source=source)
    assert still.grad.abs().max() < 1e-6
    with pytest.raises(ValueError, match="source"):
        guidance.generator_loss(z, c)


def test_fp16_the_generator_and_eps_phi_each_have_a_loss_scale_and_an_overflow_skips_only_its_own_part(asd_home):
    """One GradScaler spanned ε_φ and the generator: an overflow in ε_φ's step skipped the generator's."""
    from asd_backend.teachers.builders import saved_pipeline
    from asd_backend.teachers.stable_diffusion import StableDiffusionTeacher

    teacher = StableDiffusionTeacher.from_pretrained(str(saved_pipeline("tiny")), device="cpu", dtype=torch.float16,
                                                     trained=False, name="tiny-fp16")
    guidance = ScoreDistillation(teacher, GuidanceConfig(method="asd"), rank=2)
    assert guidance.scaler is not None and guidance.discriminator_scaler is not None
    latent = torch.nn.Parameter(torch.randn(1, 4, 32, 32) * 0.5)  # a 2D generator: one latent image
    lora = guidance.discriminator.trainable_parameters()
    optimizer = torch.optim.AdamW([{"params": [latent], "lr": 0.05}, *guidance.discriminator_group(1e-2)])
    c = PromptBank(teacher, "a teapot", config=NO_VIEWS).conditioning(batch_size=1)
    g = torch.Generator().manual_seed(0)

    def eps_phi_loss() -> float:  # on one fixed draw of t and ε
        with torch.no_grad():
            return float(guidance.discriminator_loss(latent.detach(), c, generator=torch.Generator().manual_seed(1)))

    before = eps_phi_loss()
    for step in range(10):
        lat0, lora0 = latent.detach().clone(), [p.detach().clone() for p in lora]
        metrics = guidance.step(optimizer, latent, c, step=step, generator=g)
        assert not torch.equal(latent, lat0) and any(not torch.equal(p, q) for p, q in zip(lora, lora0, strict=True))
    assert metrics["skipped_generator"] == 0 and metrics["skipped_discriminator"] == 0  # none silently skipped
    assert eps_phi_loss() < before
    # An overflow in ε_φ's part: ε_φ keeps its weights and lowers its own scale; the generator still steps.
    for broken, other in ((guidance.discriminator_scaler, guidance.scaler), (guidance.scaler,
                                                                              guidance.discriminator_scaler)):
        other.value = 2.0**16
        broken.value, scale_other = 1e39, other.value  # past fp32 and fp16: the gradients overflow
        lat0, lora0 = latent.detach().clone(), [p.detach().clone() for p in lora]
        metrics = guidance.step(optimizer, latent, c, step=20, generator=g)
        lora_moved = any(not torch.equal(p, q) for p, q in zip(lora, lora0, strict=True))
        if broken is guidance.discriminator_scaler:
            assert metrics["skipped_discriminator"] == 1 and not lora_moved and not torch.equal(latent, lat0)
        else:
            assert metrics["skipped_generator"] == 1 and torch.equal(latent, lat0) and lora_moved
        assert broken.value == 5e38 and other.value == scale_other


@pytest.mark.parametrize("method", ["vsd", "asd"])
def test_eps_phi_diagnostics_start_at_the_teacher_and_move_when_it_learns(tiny_teacher, method):
    """phi_objective_ratio (ε_φ's objective on the generator's render over its value at the start) and
    phi_teacher_distance say whether the LoRA ε_φ keeps up: at the start it is the teacher (1 and 0); after
    updates on one render it has moved and does better at its own objective than the teacher would."""
    guidance = ScoreDistillation(tiny_teacher, GuidanceConfig(method=method))
    bank = PromptBank(tiny_teacher, "a teapot", config=ViewPromptConfig(view_dependent=False, perp_neg=False))
    c = bank.conditioning(batch_size=1)
    camera = torch.eye(4)[None]
    z = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    first = guidance.generator_loss(z, c, camera, generator=generator).metrics()
    assert first["phi_noise_error_ratio"] == pytest.approx(1.0, abs=1e-5) and first["phi_teacher_distance"] < 1e-5
    assert first["phi_objective_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert first["phi_optimum_gap"] == pytest.approx(1.0, abs=1e-4)  # the whole way to its optimum still to go
    assert first["cfg_term_rms"] > 1e-4  # (s−1)(ε_c − ε_u), the term the three methods share; none at CFG 1
    guided = guidance.config
    guidance.config = dataclasses.replace(guided, cfg=1.0)
    assert guidance.generator_loss(z, c, camera, generator=generator).metrics()["cfg_term_rms"] < 1e-6
    guidance.config = guided
    optimizer = torch.optim.AdamW(guidance.discriminator.trainable_parameters(), lr=1e-3)
    for _ in range(60):
        optimizer.zero_grad()
        guidance.discriminator_loss(z, c, camera, generator=generator).backward()
        optimizer.step()
    ratios = [guidance.generator_loss(z, c, camera, generator=generator).metrics() for _ in range(8)]
    assert min(m["phi_teacher_distance"] for m in ratios) > 1e-3
    assert sum(m["phi_objective_ratio"] for m in ratios) / 8 < 1.0  # its own objective improved
    assert sum(m["phi_optimum_gap"] for m in ratios) / 8 < 1.0  # and it is nearer its optimum
    if method == "vsd":  # γ = 0: its objective is the noise error
        assert all(m["phi_objective_ratio"] == pytest.approx(m["phi_noise_error_ratio"]) for m in ratios)
