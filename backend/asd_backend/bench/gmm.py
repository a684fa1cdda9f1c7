"""`asd bench 2d`: score distillation against Gaussian-mixture teachers whose ε is exact.

Per prompt, a mixture of K Gaussians in D dimensions (means ~ N(0, I), std σ). N particles per prompt
start from N(0, I) and are distilled with the same guidance code the 3D pipeline runs; every method
gets the same optimiser, steps and seeds. Metrics are on prompt 0's particles:

- sliced_w1: sliced Wasserstein-1 distance to 4096 exact samples of prompt 0's mixture;
- coverage: fraction of the K modes that are the nearest mode of at least one particle;
- norm_ratio: mean particle norm over mean mode norm (>1: over-saturated, <1: over-smoothed).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import torch
from tqdm import tqdm

from ..errors import UsageError
from ..guidance.prompts import Conditioning, PromptBank, ViewPromptConfig
from ..guidance.score_distillation import GuidanceConfig, ScoreDistillation
from ..teachers.analytic import GaussianMixtureTeacher


@dataclasses.dataclass
class GmmBenchConfig:
    dim: int = 8
    """D, the dimension of the samples."""
    modes: int = 4
    """K, Gaussians per prompt."""
    prompts: int = 2
    """Prompts (mixtures); the discriminator and CFG condition on them. Metrics use prompt 0."""
    sigma: float = 0.1
    """Standard deviation of every Gaussian."""
    particles: int = 64
    """N, particles per prompt."""
    steps: int = 1500
    seed: int = 0
    lr: float = 0.01
    """Adam learning rate of the particles."""
    discriminator_lr: float = 1e-3
    """AdamW learning rate of ε_φ's residual network."""
    discriminator_hidden: int = 128
    """Width of ε_φ's residual MLP (3 hidden layers)."""
    gamma: float = -0.75
    weighting: str = "sds"
    true_samples: int = 4096
    projections: int = 256

    def __post_init__(self) -> None:
        for name in ("dim", "modes", "prompts", "particles", "steps", "true_samples", "projections"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1; got {getattr(self, name)}")
        if self.sigma <= 0:
            raise UsageError(f"sigma must be positive; got {self.sigma}")


def sliced_w1(x: torch.Tensor, y: torch.Tensor, projections: int, generator: torch.Generator) -> float:
    """Mean over random unit directions of the 1-D Wasserstein-1 distance (quantile functions)."""
    dirs = torch.randn(x.shape[1], projections, generator=generator, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px, py = (x.double() @ dirs), (y.double() @ dirs)
    levels = (torch.arange(2048, dtype=torch.float64) + 0.5) / 2048
    qx = torch.quantile(px, levels, dim=0)
    qy = torch.quantile(py, levels, dim=0)
    return float((qx - qy).abs().mean())


def metrics(particles: torch.Tensor, teacher: GaussianMixtureTeacher, cfg: GmmBenchConfig) -> dict[str, float]:
    generator = torch.Generator().manual_seed(cfg.seed + 12345)
    truth = teacher.sample(0, cfg.true_samples, generator)
    means = teacher.means[0].cpu()
    x = particles.detach().cpu()
    nearest = torch.cdist(x, means).argmin(dim=1)
    return {
        "sliced_w1": round(sliced_w1(x, truth, cfg.projections, generator), 4),
        "coverage": round(float(len(torch.unique(nearest))) / means.shape[0], 4),
        "norm_ratio": round(float(x.norm(dim=1).mean() / means.norm(dim=1).mean()), 4),
    }


def distill(cfg: GmmBenchConfig, method: str, guidance_scale: float) -> dict[str, Any]:
    """Run one method at one CFG scale; returns its metrics and seconds."""
    torch.manual_seed(cfg.seed)
    teacher = GaussianMixtureTeacher.random(prompts=cfg.prompts, modes=cfg.modes, dim=cfg.dim, sigma=cfg.sigma,
                                            seed=cfg.seed)
    guidance = ScoreDistillation(
        teacher,
        GuidanceConfig(method=method, cfg=guidance_scale, gamma=cfg.gamma, weighting=cfg.weighting),
        **({"n_prompts": cfg.prompts, "use_camera": False, "hidden": cfg.discriminator_hidden}
           if method != "sds" else {}),
    )
    no_views = ViewPromptConfig(view_dependent=False, perp_neg=False)
    banks = [PromptBank(teacher, str(p), "", no_views) for p in range(cfg.prompts)]
    conditioning = [b.conditioning(batch_size=cfg.particles) for b in banks]
    c = Conditioning(cond=torch.cat([x.cond for x in conditioning]), uncond=torch.cat([x.uncond for x in conditioning]),
                     base=torch.cat([x.base for x in conditioning]))
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    particles = torch.nn.Parameter(torch.randn(cfg.prompts * cfg.particles, cfg.dim, generator=generator))
    optimizer = torch.optim.AdamW([{"params": [particles], "lr": cfg.lr, "weight_decay": 0.0},
                                   *guidance.discriminator_group(cfg.discriminator_lr)], foreach=True)
    start = time.perf_counter()
    for step in range(cfg.steps):
        guidance.step(optimizer, particles, c, step=step, generator=generator)
    seconds = time.perf_counter() - start
    return {"method": method, "cfg": guidance_scale, **metrics(particles[: cfg.particles], teacher, cfg),
            "seconds": round(seconds, 2)}


def _distill_single_threaded(args: tuple[GmmBenchConfig, str, float]) -> dict[str, Any]:
    # Tiny tensors: one thread per run and one run per core beats several threads on one run.
    torch.set_num_threads(1)
    return distill(*args)


def run(cfg: GmmBenchConfig, methods: list[str], scales: list[float], workers: int | None = None) -> dict[str, Any]:
    """Every (method, scale) pair, in parallel processes; results in a fixed order, seeds fixed."""
    for m in methods:
        GuidanceConfig(method=m)  # validate names before starting any process
    jobs = [(cfg, m, float(s)) for s in scales for m in methods]
    workers = max(1, min(len(jobs), workers or os.cpu_count() or 1))
    # Progress on stderr, one tick per finished run: stdout carries only the report.
    bar = tqdm(total=len(jobs), desc="bench 2d", unit="run", file=sys.stderr)
    if workers == 1:
        results = []
        for job in jobs:
            results.append(_distill_single_threaded(job))
            bar.update(1)
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_distill_single_threaded, job) for job in jobs]
            for future in as_completed(futures):
                future.result()
                bar.update(1)
            results = [future.result() for future in futures]
    bar.close()
    return {"benchmark": "2d", "settings": {**dataclasses.asdict(cfg), "methods": methods, "cfg": scales},
            "results": results}


# -- the command line (flags generated from GmmBenchConfig) ---------------------------------------------

def _floats(text: str) -> list[float]:
    import argparse

    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _command(args: Any) -> int:
    import json

    from ..dataclass_flags import dataclass_from_args

    cfg = dataclass_from_args(GmmBenchConfig, args)
    report = run(cfg, args.methods, args.cfg, workers=args.workers)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'method':<8}{'cfg':>7}{'sliced_w1':>11}{'coverage':>10}{'norm_ratio':>12}{'seconds':>9}")
    for r in report["results"]:
        print(f"{r['method']:<8}{r['cfg']:>7g}{r['sliced_w1']:>11.4f}{r['coverage']:>10.2f}"
              f"{r['norm_ratio']:>12.3f}{r['seconds']:>9.1f}")
    return 0


def add_cli(kinds: Any) -> None:
    from ..dataclass_flags import add_dataclass_flags

    p = kinds.add_parser("2d", help="SDS/VSD/ASD against exact Gaussian-mixture teachers")
    add_dataclass_flags(p, GmmBenchConfig)
    p.add_argument("--cfg", type=_floats, default=[1.0, 7.5, 30.0, 100.0],
                   help="CFG scales, comma-separated (default: 1,7.5,30,100)")
    p.add_argument("--methods", type=_names, default=["sds", "vsd", "asd"], help="comma-separated (default: "
                   "sds,vsd,asd)")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: one per core)")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of a table")
    p.set_defaults(handler=_command)
