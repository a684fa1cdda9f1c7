"""The `asd` command. Each subcommand imports what it needs when it runs, so `asd --help` is instant."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence

from asd_protocol.errors import ProtocolError

from . import __version__
from .errors import AsdError, MissingFileError, UsageError
from .job_events import JobEvents

Handler = Callable[[argparse.Namespace], int]


def _print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")
    sys.stdout.flush()


# -- image ------------------------------------------------------------------------------------


def _progress(total: int, desc: str, initial: int = 0):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, file=sys.stderr)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _resolve(partial: dict, seed: int | None = None):
    """A local job's spec: the CLI's flags under the presets, with the default teacher filled in."""
    from asd_protocol.job_spec import DEFAULT_TEACHER

    from .train.presets import resolve_spec

    spec = resolve_spec(partial, seed=seed)
    spec.model.teacher = spec.model.teacher or DEFAULT_TEACHER
    return spec


def _load_teacher(spec, device: str):
    """The spec's teacher on `device` (the spec records which), with its warnings on stderr."""
    from . import artifacts
    from .teachers import load_teacher

    teacher = load_teacher(spec.model.teacher, device)
    notice = artifacts.teacher_notice(teacher)
    for line in (notice, teacher.prompt_warning(spec.prompt)):
        if line:
            _say(f"warning: {line}")
    return teacher, notice


class _StopOnInterrupt:
    """First Ctrl-C: ask the loop to checkpoint and stop at the end of its step; a second one: stop now."""

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self) -> _StopOnInterrupt:
        import signal

        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        _say("\nstopping after this step (Ctrl-C again to stop at once)…")

    def __exit__(self, *exc: object) -> None:
        import signal

        signal.signal(signal.SIGINT, self._previous)

    def __call__(self) -> bool:
        return self.requested


class _ProgressBar(JobEvents):
    """A local job's events: a progress bar on stderr, phases as lines, Ctrl-C as a clean stop (the first
    one; a second one stops Python)."""

    def __init__(self, total: int, desc: str, stop: _StopOnInterrupt, initial: int = 0) -> None:
        self.bar = _progress(total, desc, initial=initial)
        self.stop = stop

    def should_stop(self) -> bool:
        return self.stop()

    def progress(self, step: int, total: int, metrics: dict[str, float]) -> None:
        self.bar.n = step
        shown = {"loss": f"{metrics['loss']:.3g}"} if "loss" in metrics else {}
        if "resolution" in metrics:
            shown["res"] = int(metrics["resolution"])
        self.bar.set_postfix(shown, refresh=False)
        self.bar.refresh()

    def phase(self, name: str, message: str) -> None:
        self.bar.close()
        _say(f"{name}: {message}…")

    def close(self) -> None:
        self.bar.close()


def _run_record(kind: str, spec, teacher, notice: str | None, result, started: float, **extra) -> dict:
    from . import artifacts

    return {"kind": kind, "prompt": spec.prompt, "spec": spec.to_json(), "device": str(teacher.device),
            "teacher": {"name": teacher.name, "trained": teacher.trained, "description": teacher.description},
            "notice": notice, **result.summary, "steps_done": result.summary["steps"], "outputs": result.outputs,
            **extra,
            "seconds": round(time.time() - started, 2), "versions": artifacts.versions()}


def _image(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from . import artifacts, job_layout
    from .job_runner import run_job
    from .spec_flags import partial_from_args

    spec = _resolve(partial_from_args(args, "image"))
    out = artifacts.check_output_path(Path(args.output), (".png",), "image")
    workdir = out.with_name(out.stem + "_run")
    started = time.time()
    teacher, notice = _load_teacher(spec, args.device)
    with _StopOnInterrupt() as stop:
        events = _ProgressBar(spec.steps, "distilling", stop)
        result = run_job(teacher, spec, workdir, events)
        events.close()
    shutil.copyfile(workdir / job_layout.IMAGE, out)
    artifacts.write_json(out.with_suffix(".json"), _run_record("image", spec, teacher, notice, result, started,
                                                               output=str(out), run_folder=str(workdir)))
    if result.stopped:
        _say(f"interrupted at step {result.summary['steps']}: wrote that image to {out}")
        return 130
    print(f"wrote {out}" + (f" and frames in {workdir / 'frames'}/" if spec.image.every else ""))
    return 0


def _add_image(sub: argparse._SubParsersAction) -> None:
    from .spec_flags import add_spec_flags

    p = sub.add_parser("image", help="distill one image from a prompt (2D SDS/VSD/ASD)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("prompt")
    p.add_argument("-o", "--output", default="image.png", help="PNG to write (a .json run record goes beside it)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    add_spec_flags(p, ("image",))
    p.set_defaults(handler=_image)


# -- generate ---------------------------------------------------------------------------------


def _generate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import artifacts, job_layout
    from .job_runner import run_job
    from .mesh.export import FORMATS, write_mesh
    from .spec_flags import given_options, partial_from_args
    from .train.text_to_3d import check_resume, checkpoint_record

    # Everything is checked before a model loads: the spec, the output path, the checkpoint to resume.
    partial = partial_from_args(args, "generate")
    out = artifacts.check_output_path(Path(args.output), FORMATS, "mesh")
    workdir = out.with_name(out.stem + "_run")
    record = checkpoint_record(workdir) if args.resume else None
    # A resumed run keeps the checkpoint's seed unless one is given.
    spec = _resolve(partial, seed=record["spec"]["seed"] if record and "seed" not in given_options(args) else None)
    start = 0
    if args.resume:
        start = check_resume(workdir, spec)
        if not start:
            _say(f"nothing to resume in {workdir} (no checkpoint): starting from step 0")
        elif start == spec.steps:
            _say(f"the checkpoint in {workdir} is at the last step ({start}): making the mesh again")
        else:
            _say(f"resuming {workdir} from step {start} of {spec.steps}")
    started = time.time()
    teacher, notice = _load_teacher(spec, args.device)
    with _StopOnInterrupt() as stop:
        events = _ProgressBar(spec.steps, "generating", stop, initial=start)
        result = run_job(teacher, spec, workdir, events, resume=args.resume)
        events.close()
    if result.stopped:
        _say(f"interrupted at step {result.summary['steps']} of {spec.steps}; the checkpoint is in {workdir}/. "
             "Continue with the same command and --resume")
        return 130
    write_mesh(result.mesh, out)  # the run folder keeps mesh.glb; -o may ask for another format
    artifacts.write_json(out.with_suffix(".json"), _run_record("generate", spec, teacher, notice, result, started,
                                                               output=str(out), run_folder=str(workdir)))
    count = spec.output.turntable
    print(f"wrote {out} ({len(result.mesh.faces)} triangles), {out.with_suffix('.json').name}"
          + (f" and {count} turntable frames in {(workdir / job_layout.turntable_frame(0)).parent}/" if count else ""))
    return 0


def _add_generate(sub: argparse._SubParsersAction) -> None:
    from .spec_flags import add_spec_flags

    p = sub.add_parser("generate", help="text to a coloured 3D mesh, on this machine",
                       description="Text to a coloured 3D mesh (metres, Z up) on this machine. Writes OUTPUT, "
                       "OUTPUT.json (the resolved spec and timings) and OUTPUT_run/ (checkpoint, previews, "
                       "turntable frames: laid out as a server's job folder).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("prompt")
    p.add_argument("-o", "--output", default="model.glb", help="mesh file: .glb, .obj or .ply")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in OUTPUT_run/")
    add_spec_flags(p, ("generate",))
    p.set_defaults(handler=_generate)


# -- serve / submit / keys ---------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    import logging
    import signal

    from .dataclass_flags import dataclass_from_args
    from .server.frontend import Server, ServerConfig
    from .server.limits import ServerLimits

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    config = dataclass_from_args(ServerConfig, args, limits=dataclass_from_args(ServerLimits, args))
    server = Server(config)

    def graceful(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # serve_forever stops workers and marks running jobs resumable

    signal.signal(signal.SIGTERM, graceful)
    address = server.start()
    print(f"asd serve: listening on {address}; results in {server.store.root}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


def _client(args: argparse.Namespace):
    from pathlib import Path

    from asd_protocol.client import AsdClient, load_keypair

    from . import __version__
    from .server.auth import DEFAULT_CURVE_DIR

    server_key = args.server_key
    public = secret = None
    if server_key:
        key_file = Path(args.client_key or DEFAULT_CURVE_DIR / "client.key_secret").expanduser()
        if not key_file.is_file():
            raise MissingFileError(f"no client key at {key_file}: run `asd keys client` and have the server "
                                    "allow its public key (asd keys allow client.key)")
        public, secret = load_keypair(key_file)
    return AsdClient(args.server, client_name=f"asd-cli/{__version__}", server_public_key=server_key,
                     client_public_key=public, client_secret_key=secret)


def _submit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .remote_job import follow, wait_for_welcome
    from .spec_flags import partial_from_args
    from .train.presets import resolve_spec

    out = Path(args.output)
    kind = "image" if out.suffix.lower() == ".png" else "generate"
    spec = None
    if args.attach and args.resume:
        raise UsageError("--attach and --resume: give one (--resume follows the job it resumes)")
    if not (args.attach or args.resume):
        spec = partial_from_args(args, kind)
        resolve_spec(spec)  # refused here, before connecting, as the server would; it checks again
        spec.pop("prompt")
    with _client(args) as client:
        welcome = wait_for_welcome(client)
        print(f"connected to {welcome.server} at {args.server}", file=sys.stderr)
        bar = None

        def on_progress(p) -> None:
            nonlocal bar
            if bar is None and p.total:
                bar = _progress(p.total, p.phase)
            if bar is not None:
                bar.n = p.step
                bar.set_description(p.phase)
                bar.set_postfix(loss="-" if p.loss is None else f"{p.loss:.3g}", refresh=False)
                bar.refresh()

        submit = None if args.attach or args.resume else {"prompt": args.prompt, "kind": kind, "spec": spec}
        result = follow(client, submit=submit, attach=args.attach, resume=args.resume,
                        out_dir=out.parent if out.parent.name else Path("."),
                        final_name=out.name, keep_snapshots=args.save_snapshots, on_progress=on_progress)
        if bar is not None:
            bar.close()
    for line in result.messages:
        print(f"server: {line}", file=sys.stderr)
    if result.status != "completed":
        print(f"job {result.job_id} {result.status}", file=sys.stderr)
        return 1
    print(f"job {result.job_id} completed: wrote {result.mesh_path or result.preview_path}")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .server import auth

    folder = Path(args.curve_dir).expanduser()
    if args.keys == "init":
        public = auth.init_keys(folder, force=args.force)
        key = public.read_text().split('public-key = "')[1].split('"')[0]
        print(f"server public key (give it to clients): {key}\n  file: {public}\n"
              f"allow clients with: asd keys allow CLIENT.key --curve-dir {folder}")
    elif args.keys == "allow":
        print(f"allowed: {auth.allow_client(folder, args.key, args.name, args.admin)}")
    elif args.keys == "client":
        public, secret = auth.create_client_keys(folder, args.name)
        key = public.read_text().split('public-key = "')[1].split('"')[0]
        print(f"client public key (allow it on the server): {key}\n  files: {public}, {secret}")
    return 0


def _add_server_commands(sub: argparse._SubParsersAction) -> None:
    from .dataclass_flags import add_dataclass_flags
    from .server.auth import DEFAULT_CURVE_DIR
    from .server.frontend import ServerConfig
    from .server.limits import ServerLimits
    from .spec_flags import add_spec_flags

    p = sub.add_parser("serve", help="run the backend: a ZeroMQ job server for Blender and `asd submit`")
    add_dataclass_flags(p, ServerConfig, skip=("limits",))  # every setting is a ServerConfig field
    add_dataclass_flags(p, ServerLimits)
    p.set_defaults(handler=_serve)

    p = sub.add_parser("submit", help="send a job to a server and stream its meshes to disk")
    p.add_argument("prompt", nargs="?", default="")
    p.add_argument("--server", default="tcp://127.0.0.1:5555")
    p.add_argument("-o", "--output", default="model.glb", help=".glb/.obj/.ply for 3D; .png for a 2D image job")
    p.add_argument("--attach", default=None, metavar="JOB", help="follow an existing job instead of submitting")
    p.add_argument("--resume", default=None, metavar="JOB",
                   help="continue a failed, cancelled or interrupted job from its last checkpoint, and follow it")
    p.add_argument("--save-snapshots", action="store_true", help="keep every streamed mesh beside the output")
    p.add_argument("--server-key", default=None, help="server public key (Z85 or file): turns CURVE on")
    p.add_argument("--client-key", default=None, help=f"client secret key file (default {DEFAULT_CURVE_DIR}/"
                   "client.key_secret)")
    add_spec_flags(p, ("generate", "image"))
    p.set_defaults(handler=_submit)

    p = sub.add_parser("keys", help="CURVE keys for running the server off loopback")
    actions = p.add_subparsers(dest="keys", required=True)
    k = actions.add_parser("init", help="create the server keypair")
    k.add_argument("--force", action="store_true", help="replace an existing keypair")
    k = actions.add_parser("allow", help="allow a client's public key (file or Z85 text)")
    k.add_argument("key")
    k.add_argument("--name", default=None, help="the user its jobs belong to (default: the key file's name)")
    k.add_argument("--admin", action="store_true", help="it may see and cancel every user's jobs")
    k = actions.add_parser("client", help="create a client keypair on this machine")
    k.add_argument("--name", default="client")
    for k in actions.choices.values():
        k.add_argument("--curve-dir", default=str(DEFAULT_CURVE_DIR))
    p.set_defaults(handler=_keys)


# -- demo -------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .demo import run

    return run(args.prompt, Path(args.outputs))


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="end to end: a local backend, a prompt, streamed meshes under outputs/")
    p.add_argument("--prompt", default="a red mug", help="what to make (without SD weights: a world prompt, "
                   "a colour and a shape)")
    p.add_argument("--outputs", default="outputs")
    p.set_defaults(handler=_demo)


# -- bench ------------------------------------------------------------------------------------


def _bench_protocol(args: argparse.Namespace) -> int:
    from .bench import protocol

    _print_json(protocol.run(triangles=args.triangles, messages=args.messages))
    return 0


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _bench_2d(args: argparse.Namespace) -> int:
    from .bench import gmm

    cfg = gmm.GmmBenchConfig(dim=args.dim, modes=args.modes, prompts=args.prompts, sigma=args.sigma,
                             particles=args.particles, steps=args.steps, seed=args.seed)
    report = gmm.run(cfg, args.methods, args.cfg, workers=args.workers)
    if args.json:
        _print_json(report)
    else:
        print(f"{'method':<8}{'cfg':>7}{'sliced_w1':>11}{'coverage':>10}{'norm_ratio':>12}{'seconds':>9}")
        for r in report["results"]:
            print(f"{r['method']:<8}{r['cfg']:>7g}{r['sliced_w1']:>11.4f}{r['coverage']:>10.2f}"
                  f"{r['norm_ratio']:>12.3f}{r['seconds']:>9.1f}")
    return 0


def _bench_3d(args: argparse.Namespace) -> int:
    from .bench import shape

    cfg = shape.ShapeBenchConfig(target=args.target, method=args.method, steps=args.steps, seed=args.seed,
                                 resolution=args.resolution, cfg=args.cfg, colourways=args.colourways,
                                 colourway_shift=args.colourway_shift, uncond_shrink=args.uncond_shrink,
                                 discriminator_lr=args.discriminator_lr, discriminator_steps=args.discriminator_steps)
    report = shape.run(cfg, device=args.device, save=args.save)
    if args.json:
        _print_json(report)
    else:
        print(f"{cfg.target} ({cfg.method}, {report['steps']} steps, {report['seconds']:.0f} s): "
              f"chamfer {100 * report['chamfer_l1_rel']:.2f}% of the diagonal, IoU {report['iou']:.3f}, "
              f"F-score@1% {report['fscore']:.3f}, render PSNR {report['render_psnr']} dB, saturated "
              f"{100 * report['saturated']:.2f}%")
    return 0


def _bench_serve(args: argparse.Namespace) -> int:
    from .bench import serve

    if args.ray is not None and args.ray != "local":
        raise UsageError("asd bench serve --ray: only 'local' (the benchmark starts its own Ray instances)")
    for scenario in _names("ray" if args.ray else args.scenario):
        if scenario == "latency":
            _print_json(serve.run(clients=args.clients, steps=args.steps, mesh_every=args.mesh_every))
        elif scenario == "cancel":
            _print_json(serve.cancel_latency())
        elif scenario == "slow-reader":
            _print_json(serve.slow_reader(args.requests, args.jobs))
            if args.compare:  # the same without the cap: what it prevents
                _print_json(serve.slow_reader(args.requests, args.jobs, ("--max-pending-replies", str(10**9),
                                                                         "--max-pending-mib", str(10**6))))
        elif scenario == "ray":
            _print_json(serve.ray_throughput())
        elif scenario == "soak":
            from .bench import soak

            _print_json(soak.run(seconds=args.soak_seconds, seed=args.seed))
        else:
            raise UsageError(f"--scenario {scenario!r}: choose from latency, cancel, slow-reader, soak, ray")
    return 0


def _bench_speed(args: argparse.Namespace) -> int:
    from .bench import speed
    from .teachers import load_teacher

    presets = _names(args.preset)
    loaded = load_teacher(args.teacher, args.device)  # once, for every preset
    measure = speed.compare if args.compare else speed.run
    reports = [measure(preset=name, teacher=args.teacher, device=args.device, method=args.method,
                       steps=args.steps, warmup=args.warmup, resolution=args.resolution, loaded=loaded)
               for name in presets]
    if args.json:
        _print_json(reports[0] if len(reports) == 1 else reports)
        return 0
    for report in reports:
        if args.compare:
            _print_speed(report["reference"], report["fast"], report["speedup"])
        else:
            _print_speed(report)
    return 0


def _print_speed(report: dict, fast: dict | None = None, speedup: dict | None = None) -> None:
    """A preset's timing as a table: phases per step, extraction; with --compare, both paths and ratios."""
    columns = [report] + ([fast] if fast else [])
    head = f"{report['preset']} on {report['device']} ({report['threads']} threads), {report['teacher']} teacher, "
    print(head + f"{report['render_resolution']}² renders, {report['samples_per_ray']} samples per ray")
    names = ["reference", "fast", "speed-up"] if fast else [report["implementation"]]
    print(f"{'':<26}" + "".join(f"{n:>12}" for n in names))

    def row(label: str, key: str, unit: str = "s") -> None:
        values = [c.get(key) for c in columns] + ([speedup.get(key)] if speedup else [])
        cells = [f"{v:>11.3f}{unit}" if v is not None else f"{'–':>12}" for v in values[:len(columns)]]
        if speedup:
            cells.append(f"{values[-1]:>11.2f}×" if values[-1] else f"{'–':>12}")
        print(f"{label:<26}" + "".join(cells))

    row("seconds per step", "seconds_per_step")
    row("warm-up seconds per step", "warmup_seconds_per_step")
    for phase in report["phases"]:
        values = [c["phases"].get(phase) for c in columns]
        ratio = (speedup or {}).get("phases", {}).get(phase)
        print(f"  {phase:<24}" + "".join(f"{v:>11.3f}s" if v is not None else f"{'–':>12}" for v in values)
              + (f"{ratio:>11.2f}×" if ratio else (f"{'–':>12}" if speedup else "")))
    print(f"{'samples evaluated':<26}" + "".join(f"{c['samples_evaluated']:>12,}" for c in columns)
          + f"  of {report['samples_generated']:,}")
    row(f"extraction at {report['mc_resolution']}³", "extract_seconds")
    if report.get("peak_memory_gib") is not None:
        print(f"{'peak memory':<26}" + "".join(f"{c['peak_memory_gib']:>10.2f}GB" for c in columns))
    def duration(c: dict) -> str:
        seconds = (c["seconds_per_step"] or 0) * c["preset_steps"]
        return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"

    print(f"whole preset ({report['preset_steps']} steps of optimisation): about "
          + " / ".join(duration(c) for c in columns))


def _add_bench(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks that print JSON")
    kinds = bench.add_subparsers(dest="bench", required=True, metavar="{protocol,2d,3d,toy,toy-sweep,edit,serve,speed}")
    p = kinds.add_parser("protocol", help="mesh-frame throughput over loopback ZeroMQ")
    p.add_argument("--triangles", type=int, default=1_000_000)
    p.add_argument("--messages", type=int, default=40)
    p.set_defaults(handler=_bench_protocol)

    p = kinds.add_parser("2d", help="SDS/VSD/ASD against exact Gaussian-mixture teachers")
    p.add_argument("--dim", type=int, default=8, help="dimension D of the samples")
    p.add_argument("--modes", type=int, default=4, help="Gaussians K per prompt")
    p.add_argument("--prompts", type=int, default=2, help="prompts (mixtures); metrics use prompt 0")
    p.add_argument("--sigma", type=float, default=0.1, help="std of each Gaussian")
    p.add_argument("--particles", type=int, default=64, help="particles N per prompt")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg", type=_floats, default=[1.0, 7.5, 30.0, 100.0], help="CFG scales, e.g. 1,7.5,30,100")
    p.add_argument("--methods", type=_names, default=["sds", "vsd", "asd"], help="e.g. sds,vsd,asd")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: one per core)")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of a table")
    p.set_defaults(handler=_bench_2d)

    p = kinds.add_parser("3d", help="text-to-3D against an exact teacher that renders a known mesh")
    p.add_argument("--target", default="torus", help="torus | star | mug | a mesh file")
    p.add_argument("--method", choices=["sds", "vsd", "asd"], default="sds")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=48, help="render side in pixels")
    p.add_argument("--cfg", type=float, default=1.0)
    p.add_argument("--colourways", type=int, default=3, help="equally likely paints of the target (1: one)")
    p.add_argument("--colourway-shift", type=float, default=0.6, help="phase step between paints, radians")
    p.add_argument("--uncond-shrink", type=float, default=0.05,
                   help="how far the unconditional's renders are pulled towards their mean (0: exactly them)")
    p.add_argument("--discriminator-lr", type=float, default=0.01, help="ε_φ's lr (VSD, ASD: its own NeRF)")
    p.add_argument("--discriminator-steps", type=int, default=4, help="ε_φ updates per generator step")
    p.add_argument("--device", default="cpu")
    p.add_argument("--save", default=None, metavar="MESH", help="also write the reconstruction (.glb/.obj/.ply)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_bench_3d)

    from .bench import toy, toy_sweep

    toy.add_cli(kinds)
    toy_sweep.add_cli(kinds)

    from .bench import edit

    edit.add_cli(kinds)

    p = kinds.add_parser("serve", help="latency of progress and mesh delivery to many clients over loopback")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--mesh-every", type=int, default=5)
    p.add_argument("--scenario", default="latency",
                   help="latency | cancel (cancel to done, in long phases too) | slow-reader (memory with a client "
                        "that never reads) | soak (random jobs, fuzz, slow readers, worker kills) | ray (jobs per "
                        "minute on local workers and on 1 and 2 Ray actors); comma-separated")
    p.add_argument("--requests", type=int, default=4000, help="slow-reader: unread list_jobs requests")
    p.add_argument("--jobs", type=int, default=500, help="slow-reader: finished jobs the server lists")
    p.add_argument("--compare", action="store_true", help="slow-reader: also run with the backlog cap off")
    p.add_argument("--soak-seconds", type=float, default=180.0)
    p.add_argument("--ray", default=None, metavar="local", help="the same as --scenario ray")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_bench_serve)

    p = kinds.add_parser("speed", help="seconds per step by phase, extraction time and peak GPU memory of a preset")
    p.add_argument("--preset", default="standard", help="a preset, or several: preview,standard,paper")
    p.add_argument("--teacher", default="random-sd21", help="random-sd21 (full size, random weights) | toy | tiny | sd")
    p.add_argument("--device", default="auto")
    p.add_argument("--method", choices=["asd", "vsd", "sds"], default="asd")
    p.add_argument("--steps", type=int, default=20, help="steps timed after the warm-up")
    p.add_argument("--warmup", type=int, default=None,
                   help="steps before timing (default: past the reference path's first occupancy refresh)")
    p.add_argument("--resolution", type=int, default=None, help="render side (default: the preset's largest)")
    p.add_argument("--compare", action="store_true",
                   help="run the reference path and the fast one side by side and print the speed-ups")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(handler=_bench_speed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asd", description="ASD Studio: text-to-3D with Adversarial Score "
                                     "Distillation. Backend server, generation and benchmarks.")
    parser.add_argument("--version", action="version", version=f"asd-studio {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_server_commands(sub)
    _add_demo(sub)
    _add_image(sub)
    _add_bench(sub)
    from .toy.cli import add_toy

    add_toy(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ProtocolError as exc:  # a setting out of range: name the flag
        from .spec_flags import flag_error

        print(f"asd {args.command}: error: {flag_error(exc)}", file=sys.stderr)
        return 2
    except (AsdError, ConnectionError, TimeoutError) as exc:
        # Bad input (UsageError and the other AsdErrors) and unreachable servers are the user's to fix: say
        # what, not a traceback. Anything else is a bug in asd and shows as one.
        print(f"asd {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
