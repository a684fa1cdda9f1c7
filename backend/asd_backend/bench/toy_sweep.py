"""`asd bench toy-sweep`: `asd bench toy` over a grid of prompts × methods × CFGs × seeds, one JSON line a
run appended to a file (a run already in the file is skipped, so an interrupted sweep continues), and
`--table` to read the file back as a markdown table of means and spreads over seeds, and `--compare A,B` as
paired differences between two methods (same prompt and seed; same CFG, or each side's own, as
`asd@30,sds@8.25`; steps as asked, as `sds:2220`; a γ schedule, as `asd/official,asd`): in how many pairs
A is the better, and the Wilcoxon signed-rank p of the differences.

The grid's rows beside the methods (issue 22, item 1):
- matched CFG: ASD at CFG s is, at the discriminator's optimum of the analytic families, VSD at
  1 + (1+γ)(s−1); `--matched` adds SDS and VSD at that CFG for every ASD CFG of the grid;
- equal time: `--sds-equal-time` adds SDS given ASD's mean wall-clock time at each CFG, as steps, from
  the ASD and SDS rows already in the file (run the sweep once without it first).
Every run resolves the toy preset as the product does, so from CFG 15 it anneals the timesteps
(train/presets.py) and the matched-CFG rows below 15 do not; each row records its annealing. A file
written before that rule (2026-12-06) holds un-annealed high-CFG rows: start a new file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from asd_protocol.job_spec import GAMMA_SCHEDULES, GuidanceSpec

from ..errors import UsageError
from .toy import ToyBenchConfig

KEY = ("prompt", "method", "cfg", "seed", "steps_requested", "gamma_schedule")
DEFAULT_GAMMA_SCHEDULE = GuidanceSpec().gamma_schedule  # what a row's empty γ schedule means


@dataclasses.dataclass
class ToySweepConfig:
    prompts: tuple[str, ...] = dataclasses.field(default=("a red mug", "a blue cube"),
                                                 metadata={"help": "world prompts"})
    methods: tuple[str, ...] = dataclasses.field(default=("sds", "vsd", "asd"), metadata={"help": "methods"})
    cfgs: tuple[float, ...] = dataclasses.field(default=(7.5, 30.0, 100.0), metadata={"help": "guidance scales"})
    seeds: int = dataclasses.field(default=3, metadata={"help": "seeds 0..N-1 for every cell"})
    steps: int = dataclasses.field(default=0, metadata={"help": "optimisation steps (0: the toy preset's)"})
    gamma_schedule: str = dataclasses.field(default="", metadata={
        "help": "ASD's γ schedule (constant | official; empty: the product's default)"})
    matched: bool = dataclasses.field(default=False, metadata={
        "help": "add SDS and VSD at ASD's matched CFG 1 + (1+γ)(s−1)"})
    sds_equal_time: bool = dataclasses.field(default=False, metadata={
        "help": "add SDS given ASD's mean wall-clock time (needs ASD and SDS rows in the file)"})

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise UsageError(f"--seeds must be at least 1; got {self.seeds}")
        for prompt in self.prompts:  # each prompt and method checked as `asd bench toy` checks them
            for method in self.methods:
                ToyBenchConfig(prompt=prompt, method=method, gamma_schedule=self.gamma_schedule)


def matched_cfg(cfg: float, gamma: float) -> float:
    """The CFG at which VSD equals ASD at `cfg` when ε_φ is exact in its γ part: 1 + (1+γ)(cfg − 1)."""
    return round(1 + (1 + gamma) * (cfg - 1), 3)


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def row_key(row: dict[str, Any]) -> tuple:
    """What tells a run apart: its γ schedule as `_schedule_of` reads it, so that a row recording the default
    by name ("constant", as `asd bench toy` writes it) or not at all ("", older sweeps) is the same run."""
    return tuple(_schedule_of(row) if k == "gamma_schedule" else row.get(k, "") for k in KEY)


def plan(cfg: ToySweepConfig, rows: list[dict[str, Any]]) -> list[ToyBenchConfig]:
    """The runs of the grid, in order: each seed's cells together, so a cut-short sweep has whole seeds."""
    runs: list[ToyBenchConfig] = []
    for seed in range(cfg.seeds):
        for prompt in cfg.prompts:
            for scale in cfg.cfgs:
                for method in cfg.methods:
                    # only ASD has a γ schedule: SDS and VSD run (and record) the default
                    runs.append(ToyBenchConfig(prompt=prompt, method=method, cfg=scale, seed=seed, steps=cfg.steps,
                                               gamma_schedule=cfg.gamma_schedule if method == "asd" else ""))
                if cfg.matched and "asd" in cfg.methods:
                    runs += [ToyBenchConfig(prompt=prompt, method=method, cfg=matched_cfg(scale, GuidanceSpec().gamma),
                                            seed=seed, steps=cfg.steps) for method in ("sds", "vsd")]
                if cfg.sds_equal_time:
                    steps = _equal_time_steps(rows, prompt, scale)
                    if steps:
                        runs.append(ToyBenchConfig(prompt=prompt, method="sds", cfg=scale, seed=seed, steps=steps))
    return runs


def _equal_time_steps(rows: list[dict[str, Any]], prompt: str, scale: float) -> int:
    """SDS steps that take ASD's mean time at this prompt and CFG, from SDS's mean rate (0: not measured)."""
    def mean(method: str, key: str) -> float | None:
        values = [r[key] for r in rows if r["prompt"] == prompt and r["cfg"] == scale and r["method"] == method
                  and r.get("steps_requested", 0) == 0]
        return statistics.fmean(values) if values else None

    asd_seconds, sds_seconds, sds_steps = mean("asd", "seconds"), mean("sds", "seconds"), mean("sds", "steps")
    if not (asd_seconds and sds_seconds and sds_steps):
        return 0
    return int(round(sds_steps * asd_seconds / sds_seconds, -1))


def pending(cfg: ToySweepConfig, rows: list[dict[str, Any]]) -> list[ToyBenchConfig]:
    """The runs of the grid that `rows` do not hold yet."""
    done = {row_key(r) for r in rows}
    return [r for r in plan(cfg, rows) if _key_of(r) not in done]


def sweep(cfg: ToySweepConfig, out: Path, device: str = "cpu") -> int:
    """Runs every cell not yet in `out`; returns how many ran."""
    from ..teachers import load_teacher
    from .toy import run

    todo = pending(cfg, read_rows(out))
    teacher = load_teacher("toy", device) if todo else None
    for i, run_cfg in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {run_cfg.prompt!r} {run_cfg.method} CFG {run_cfg.cfg:g} seed {run_cfg.seed}"
              f"{f' {run_cfg.steps} steps' if run_cfg.steps else ''}", file=sys.stderr)
        report = run(run_cfg, device=device, teacher=teacher)
        report["steps_requested"] = run_cfg.steps  # beside the run's own record of its resolved γ schedule
        with out.open("a") as f:
            f.write(json.dumps(report) + "\n")
    return len(todo)


def _key_of(run_cfg: ToyBenchConfig) -> tuple:
    """The key its row will have (a row records the steps asked for as steps_requested)."""
    return row_key({**dataclasses.asdict(run_cfg), "steps_requested": run_cfg.steps})


def _cell(rows: list[dict[str, Any]], key: str, scale_by: float = 1.0, digits: int = 2) -> str:
    values = [r[key] * scale_by for r in rows if key in r]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per (prompt, method, CFG, steps, γ schedule), mean ± sample deviation over seeds,
    and how many seeds' meshes were nearest the right world shape."""
    from ..toy.world import parse_prompt

    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["prompt"], r["method"], r["cfg"], r.get("steps_requested", 0), _schedule_of(r))].append(r)
    head = ("| prompt | method | CFG | steps | seeds | render PSNR dB | saturated % | saturated far % | "
            "chroma excess % | judge shape | judge colour | Chamfer % | IoU | azimuth err ° | nearest shape right | "
            "seconds |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    order = ("sds", "vsd", "asd")
    for (prompt, method, scale, _, schedule), rs in sorted(
            groups.items(), key=lambda kv: (kv[0][0], kv[0][2], order.index(kv[0][1]), kv[0][3], kv[0][4])):
        right = sum(r["nearest_shape"] == parse_prompt(prompt).shape for r in rs)
        label = method + (f" ({schedule})" if schedule != DEFAULT_GAMMA_SCHEDULE else "")
        cells = [_cell(rs, "render_psnr"), _cell(rs, "saturated", 100, 1), _cell(rs, "saturated_far", 100, 1),
                 _cell(rs, "chroma_excess", 100, 1), _cell(rs, "judge_shape_accuracy"),
                 _cell(rs, "judge_colour_accuracy"), _cell(rs, "chamfer_l1_rel", 100), _cell(rs, "iou"),
                 _cell(rs, "judge_azimuth_error_deg", 1, 0),
                 f"{right}/{len(rs)}", _cell(rs, "seconds", 1, 0)]
        lines.append(f"| {prompt} | {label} | {scale:g} | {rs[0]['steps']} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# (row key, higher is better, label, scale, digits) of the paired comparison
PAIRED_METRICS = (
    ("render_psnr", True, "render PSNR dB", 1.0, 2),
    ("chamfer_l1_rel", False, "Chamfer %", 100.0, 2),
    ("iou", True, "IoU", 1.0, 3),
    ("saturated_far", False, "saturated far %", 100.0, 1),
    ("chroma_excess", False, "chroma excess %", 100.0, 1),
    ("mesh_colour_psnr", True, "mesh colour PSNR dB", 1.0, 2),
    ("judge_shape_accuracy", True, "judge shape", 1.0, 2),
    ("judge_colour_accuracy", True, "judge colour", 1.0, 2),
)


@dataclasses.dataclass(frozen=True)
class Side:
    """One side of a paired comparison: a method, optionally with its γ schedule (the product's default where
    none is named), at one CFG and with the steps asked for (`steps_requested`; 0: the preset's), written
    METHOD[/GAMMA][@CFG][:STEPS], as 'asd', 'asd/official', 'sds@8.25', 'sds:2220'."""
    method: str
    cfg: float | None = None
    steps: int = 0
    gamma_schedule: str = DEFAULT_GAMMA_SCHEDULE

    @classmethod
    def parse(cls, text: str) -> Side:
        head, _, steps = text.strip().partition(":")
        head, _, scale = head.partition("@")
        method, _, gamma = head.partition("/")
        gamma = gamma.strip() or DEFAULT_GAMMA_SCHEDULE
        if gamma not in GAMMA_SCHEDULES:
            raise UsageError(f"a side's γ schedule (after '/') is one of {', '.join(GAMMA_SCHEDULES)}; got {text!r}")
        try:
            return cls(method.strip(), float(scale) if scale else None, int(steps) if steps else 0, gamma)
        except ValueError:
            raise UsageError(f"a side of --compare is METHOD[/GAMMA][@CFG][:STEPS], as 'asd', 'asd/official', "
                             f"'sds@8.25' or 'sds:2220'; got {text!r}") from None

    def __str__(self) -> str:
        gamma = f"/{self.gamma_schedule}" if self.gamma_schedule != DEFAULT_GAMMA_SCHEDULE else ""
        scale = f"@{self.cfg:g}" if self.cfg is not None else ""
        return self.method + gamma + scale + (f":{self.steps}" if self.steps else "")

    def holds(self, row: dict[str, Any]) -> bool:
        """Whether `row` is a run of this side."""
        return (row["method"] == self.method and row.get("steps_requested", 0) == self.steps
                and (self.cfg is None or row["cfg"] == self.cfg) and _schedule_of(row) == self.gamma_schedule)


def _schedule_of(row: dict[str, Any]) -> str:
    """The γ schedule that tells a row's run apart: ASD's own (an empty one is the default); SDS has no γ and
    VSD's is 0, so theirs count as the default whatever the row records."""
    return (row.get("gamma_schedule") or DEFAULT_GAMMA_SCHEDULE) if row["method"] == "asd" else DEFAULT_GAMMA_SCHEDULE


def paired(rows: list[dict[str, Any]], a: Side, b: Side) -> str:
    """Markdown: `a` against `b` on the runs they share, one block of lines per CFG (or pair of CFGs where a
    side names its own). Runs pair by prompt and seed, and by CFG where neither side names one. "a better"
    counts the pairs where `a` is strictly better (ties are neither side's); p is the two-sided Wilcoxon
    signed-rank test of the differences (– where every difference is zero)."""
    from scipy.stats import wilcoxon

    from ..toy.world import parse_prompt

    def runs_of(side: Side) -> dict[tuple, dict[str, Any]]:
        # a later row of the same run wins (a rerun)
        return {(r["prompt"], r["seed"], r["cfg"]): r for r in rows if side.holds(r)}

    runs_a, runs_b = runs_of(a), runs_of(b)
    pairs_by_cfg: dict[tuple[float, float], list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    for (prompt, seed, scale), row in runs_a.items():
        scale_b = b.cfg if b.cfg is not None else scale
        if (prompt, seed, scale_b) in runs_b:
            pairs_by_cfg[(scale, scale_b)].append((row, runs_b[(prompt, seed, scale_b)]))
    if not pairs_by_cfg:  # a mistyped method or CFG would otherwise print an empty table
        held = sorted({str(Side(r["method"], r["cfg"], r.get("steps_requested", 0), _schedule_of(r))) for r in rows})
        raise UsageError(f"no run of {a} pairs with a run of {b} (same prompt and seed); the file holds "
                         f"{', '.join(held) or 'no runs'}")
    lines = [f"| CFG | pairs | metric | {a} | {b} | {a} better | Wilcoxon p |", "|---|---|---|---|---|---|---|"]
    for scales in sorted(pairs_by_cfg):
        pairs = pairs_by_cfg[scales]
        n, label_cfg = len(pairs), f"{scales[0]:g}" if scales[0] == scales[1] else f"{scales[0]:g} / {scales[1]:g}"
        for key, higher, label, scale_by, digits in PAIRED_METRICS:
            both = [(ra[key], rb[key]) for ra, rb in pairs if key in ra and key in rb]
            if not both:
                continue
            wins = sum((x > y) if higher else (x < y) for x, y in both)
            differences = [x - y for x, y in both]
            p = f"{wilcoxon(differences).pvalue:.2g}" if any(differences) else "–"
            mean_a = statistics.fmean(x for x, _ in both) * scale_by
            mean_b = statistics.fmean(y for _, y in both) * scale_by
            lines.append(f"| {label_cfg} | {n} | {label} | {mean_a:.{digits}f} | {mean_b:.{digits}f} | "
                         f"{wins}/{len(both)} | {p} |")
        right_a, right_b = (sum(r["nearest_shape"] == parse_prompt(r["prompt"]).shape for r in side)
                            for side in ([ra for ra, _ in pairs], [rb for _, rb in pairs]))
        lines.append(f"| {label_cfg} | {n} | nearest shape right | {right_a}/{n} | {right_b}/{n} | – | – |")
    return "\n".join(lines)


# -- the command line (flags generated from ToySweepConfig) ---------------------------------------------

def _command(args: argparse.Namespace) -> int:
    from ..dataclass_flags import dataclass_from_args

    out = Path(args.out)
    if args.compare:
        sides = [Side.parse(text) for text in args.compare.split(",")]
        if len(sides) != 2 or sides[0] == sides[1]:
            raise UsageError(f"--compare takes two different sides, as 'asd,sds'; got {args.compare!r}")
        print(paired(read_rows(out), *sides))
        return 0
    if args.table:
        print(table(read_rows(out)))
        return 0
    cfg = dataclass_from_args(ToySweepConfig, args)
    ran = sweep(cfg, out, device=args.device)
    print(f"{ran} runs added to {out}", file=sys.stderr)
    print(table(read_rows(out)))
    return 0


def add_cli(kinds: argparse._SubParsersAction) -> None:
    from ..dataclass_flags import add_dataclass_flags

    p = kinds.add_parser("toy-sweep", help="`asd bench toy` over prompts × methods × CFGs × seeds, as a table")
    add_dataclass_flags(p, ToySweepConfig)
    p.add_argument("--out", required=True, metavar="JSONL", help="the runs, one JSON line each (appended; "
                   "runs already there are skipped)")
    p.add_argument("--table", action="store_true", help="only print the table of the runs in --out")
    p.add_argument("--compare", metavar="A,B", default="", help="only print A against B, paired by prompt, seed "
                   "and CFG, from the runs in --out; a side is METHOD[/GAMMA][@CFG][:STEPS] (as 'asd,sds', "
                   "'asd@30,sds@8.25', 'asd,sds:2220', 'asd/official,asd')")
    p.add_argument("--device", default="cpu")
    p.set_defaults(handler=_command)
