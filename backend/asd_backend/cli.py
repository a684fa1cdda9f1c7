"""The `asd` command. Each subcommand imports what it needs when it runs, so `asd --help` is instant."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .errors import AsdError

Handler = Callable[[argparse.Namespace], int]


def _print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")
    sys.stdout.flush()


# -- image ------------------------------------------------------------------------------------


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, file=sys.stderr)


def _image(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from . import artifacts
    from .teachers import load_teacher
    from .train.image_2d import ImageDistillConfig, distill_image

    config = ImageDistillConfig(prompt=args.prompt, negative_prompt=args.negative_prompt, method=args.method,
                                cfg=args.cfg, steps=args.steps, seed=args.seed, resolution=args.resolution,
                                every=args.every)
    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise ValueError(f"-o {out}: the image is written as PNG; give a path ending in .png")
    started = time.time()
    teacher = load_teacher(args.teacher, args.device)
    notice = artifacts.teacher_notice(teacher)
    if notice:
        print(f"note: {notice}", file=sys.stderr)
    meta = {"prompt": args.prompt, "method": args.method, "cfg": str(args.cfg), "seed": str(args.seed),
            "teacher": teacher.name, "teacher_trained": str(teacher.trained), "software": "asd-studio"}
    if notice:
        meta["notice"] = notice
    frames_dir = out.with_name(out.stem + "_frames")
    bar = _progress(config.steps, "distilling")

    def on_step(step: int, metrics: dict[str, float]) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss_guidance']:.3g}")

    def on_frame(frame) -> None:
        if not frame.final:
            artifacts.write_png(frames_dir / f"step_{frame.step:05d}.png", frame.image, meta)

    final = distill_image(teacher, config, on_frame=on_frame, on_step=on_step)
    bar.close()
    artifacts.write_png(out, final.image, meta)
    artifacts.write_json(out.with_suffix(".json"), {
        "kind": "image", "settings": vars(config) | {"teacher": args.teacher, "device": str(teacher.device)},
        "teacher": {"name": teacher.name, "trained": teacher.trained, "description": teacher.description},
        "notice": notice, "seconds": round(time.time() - started, 2), "final_metrics": final.metrics,
        "versions": artifacts.versions()})
    print(f"wrote {out}" + (f" and frames in {frames_dir}/" if args.every else ""))
    return 0


def _add_image(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("image", help="distill one image from a prompt (2D SDS/VSD/ASD)")
    p.add_argument("prompt")
    p.add_argument("-o", "--output", default="image.png", help="PNG to write (a .json run record goes beside it)")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--method", choices=["asd", "vsd", "sds"], default="asd")
    p.add_argument("--cfg", type=float, default=7.5, help="classifier-free guidance scale")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=None, help="image side; default the teacher's native size")
    p.add_argument("--every", type=int, default=0, help="write an intermediate frame every N steps")
    p.add_argument("--teacher", default="sd", help="sd[:ID_OR_PATH] | tiny | random-sd21 (default: SD 2.1-base)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.set_defaults(handler=_image)


# -- generate ---------------------------------------------------------------------------------


def _add_generation_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `asd generate` (local) and `asd submit` (remote)."""
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--preset", default="preview", help="smoke | preview | standard | paper")
    p.add_argument("--method", choices=["asd", "vsd", "sds"], default="asd")
    p.add_argument("--cfg", type=float, default=7.5, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="override the preset's number of steps")
    p.add_argument("--mesh-every", type=int, default=None, help="preview mesh every N steps (0: final only)")
    p.add_argument("--mc-resolution", type=int, default=None, help="marching-cubes resolution of the final mesh")


def _generate(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from . import artifacts
    from .mesh.export import FORMATS, write_mesh
    from .teachers import load_teacher
    from .train.text_to_3d import GenerateConfig, generate

    out = Path(args.output)
    if out.suffix.lower() not in FORMATS:
        raise ValueError(f"-o {out}: write the mesh as one of {', '.join(FORMATS)}")
    config = GenerateConfig(prompt=args.prompt, negative_prompt=args.negative_prompt, method=args.method,
                            cfg=args.cfg, seed=args.seed, preset=args.preset, steps=args.steps,
                            mesh_every=args.mesh_every, mc_resolution=args.mc_resolution,
                            texture_size=args.texture_size)
    workdir = out.with_name(out.stem + "_run")
    started = time.time()
    teacher = load_teacher(args.teacher, args.device)
    notice = artifacts.teacher_notice(teacher)
    if notice:
        print(f"note: {notice}", file=sys.stderr)
    preset = config.resolved_preset()
    bar = _progress(preset.steps, "generating")

    def on_progress(step: int, total: int, metrics: dict[str, float]) -> None:
        bar.n = step
        bar.set_postfix(loss=f"{metrics['loss']:.3g}", res=int(metrics["resolution"]), refresh=False)
        bar.refresh()

    def on_snapshot(snapshot) -> None:
        if args.save_snapshots and not snapshot.final and len(snapshot.mesh.faces):
            write_mesh(snapshot.mesh, workdir / f"snapshot_{snapshot.index:03d}_step{snapshot.step:06d}.glb")
        artifacts.write_png(workdir / f"preview_{snapshot.index:03d}.png", snapshot.preview)

    result = generate(teacher, config, workdir=workdir, resume=args.resume, on_progress=on_progress,
                      on_snapshot=on_snapshot)
    bar.close()
    if result.mesh is None or not len(result.mesh.faces):
        raise ValueError("the optimisation produced no surface (an empty density field); try more steps or "
                         "another seed")
    write_mesh(result.mesh, out)
    meta = {"prompt": args.prompt, "teacher": teacher.name, "teacher_trained": str(teacher.trained)}
    if notice:
        meta["notice"] = notice
    frames = out.with_name(out.stem + "_frames")
    azimuths = [i * 360.0 / args.turntable - 180.0 for i in range(args.turntable)]
    for i, image in enumerate(result.model.turntable(args.turntable_size, azimuths) if args.turntable else []):
        artifacts.write_png(frames / f"turntable_{i:02d}.png", image, meta)
    artifacts.write_json(out.with_suffix(".json"), {
        "kind": "generate", "prompt": args.prompt, "output": str(out),
        "settings": dataclasses.asdict(config) | {"teacher": args.teacher, "device": str(teacher.device)},
        "preset": dataclasses.asdict(preset),
        "teacher": {"name": teacher.name, "trained": teacher.trained, "description": teacher.description},
        "notice": notice, "steps_done": result.steps_done, "optimisation_seconds": round(result.seconds, 2),
        "seconds": round(time.time() - started, 2), "vertices": len(result.mesh.vertices),
        "faces": len(result.mesh.faces), "versions": artifacts.versions()})
    print(f"wrote {out} ({len(result.mesh.faces)} triangles), {out.with_suffix('.json').name}"
          + (f" and {args.turntable} turntable frames in {frames}/" if args.turntable else ""))
    return 0


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="text to a coloured 3D mesh, on this machine")
    p.add_argument("prompt")
    p.add_argument("-o", "--output", default="model.glb", help="mesh file: .glb, .obj or .ply")
    _add_generation_options(p)
    p.add_argument("--teacher", default="sd", help="sd[:ID_OR_PATH] | tiny | random-sd21 (default: SD 2.1-base)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in OUTPUT_run/")
    p.add_argument("--save-snapshots", action="store_true", help="also write every preview mesh to OUTPUT_run/")
    p.add_argument("--texture-size", type=int, default=0, metavar="N",
                   help="bake the colours into an N×N texture on a UV atlas (xatlas) instead of vertex colours")
    p.add_argument("--turntable", type=int, default=8, help="turntable frames to render at the end (0: none)")
    p.add_argument("--turntable-size", type=int, default=256)
    p.set_defaults(handler=_generate)


# -- serve / submit / keys ---------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    import logging
    import signal

    from .server.frontend import Server, ServerConfig

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    gpus = [int(g) for g in args.gpus.split(",") if g.strip()] if args.gpus else None
    config = ServerConfig(bind=args.bind, results=args.results, teacher=args.teacher, device=args.device, gpus=gpus,
                          curve_dir=args.curve_dir, insecure=args.insecure,
                          max_queued_per_client=args.max_queued_per_client)
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
            raise FileNotFoundError(f"no client key at {key_file}: run `asd keys client` and have the server "
                                    "allow its public key (asd keys allow client.key)")
        public, secret = load_keypair(key_file)
    return AsdClient(args.server, client_name=f"asd-cli/{__version__}", server_public_key=server_key,
                     client_public_key=public, client_secret_key=secret)


def _submit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .remote_job import follow, wait_for_welcome

    out = Path(args.output)
    kind = "image" if out.suffix.lower() == ".png" else "generate"
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

        submit = None if args.attach else {
            "prompt": args.prompt, "kind": kind, "negative_prompt": args.negative_prompt, "method": args.method,
            "preset": args.preset, "cfg": args.cfg, "seed": args.seed, "steps": args.steps,
            "mesh_every": args.mesh_every, "mc_resolution": args.mc_resolution, "teacher": args.teacher}
        result = follow(client, submit=submit, attach=args.attach, out_dir=out.parent if out.parent.name else Path("."),
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
        print(f"allowed: {auth.allow_client(folder, args.key)}")
    elif args.keys == "client":
        public, secret = auth.create_client_keys(folder, args.name)
        key = public.read_text().split('public-key = "')[1].split('"')[0]
        print(f"client public key (allow it on the server): {key}\n  files: {public}, {secret}")
    return 0


def _add_server_commands(sub: argparse._SubParsersAction) -> None:
    from .server.auth import DEFAULT_CURVE_DIR

    p = sub.add_parser("serve", help="run the backend: a ZeroMQ job server for Blender and `asd submit`")
    p.add_argument("--bind", default="tcp://127.0.0.1:5555", help="address to listen on (loopback by default)")
    p.add_argument("--results", default="asd-results", help="folder for jobs, meshes and checkpoints")
    p.add_argument("--teacher", default="sd", help="default teacher: sd[:ID_OR_PATH] | tiny | random-sd21")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (one worker)")
    p.add_argument("--gpus", default=None, help="one worker per GPU, e.g. 0,1")
    p.add_argument("--curve-dir", default=None, help="CURVE keys (asd keys init); required off loopback")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without CURVE (trusted LAN)")
    p.add_argument("--max-queued-per-client", type=int, default=8)
    p.set_defaults(handler=_serve)

    p = sub.add_parser("submit", help="send a job to a server and stream its meshes to disk")
    p.add_argument("prompt", nargs="?", default="")
    p.add_argument("--server", default="tcp://127.0.0.1:5555")
    p.add_argument("-o", "--output", default="model.glb", help=".glb/.obj/.ply for 3D; .png for a 2D image job")
    p.add_argument("--attach", default=None, metavar="JOB", help="follow an existing job instead of submitting")
    _add_generation_options(p)
    p.add_argument("--teacher", default=None, help="one of the server's teachers (default: the server's)")
    p.add_argument("--save-snapshots", action="store_true", help="keep every streamed mesh beside the output")
    p.add_argument("--server-key", default=None, help="server public key (Z85 or file): turns CURVE on")
    p.add_argument("--client-key", default=None, help=f"client secret key file (default {DEFAULT_CURVE_DIR}/"
                   "client.key_secret)")
    p.set_defaults(handler=_submit)

    p = sub.add_parser("keys", help="CURVE keys for running the server off loopback")
    actions = p.add_subparsers(dest="keys", required=True)
    k = actions.add_parser("init", help="create the server keypair")
    k.add_argument("--force", action="store_true", help="replace an existing keypair")
    k = actions.add_parser("allow", help="allow a client's public key (file or Z85 text)")
    k.add_argument("key")
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
    p.add_argument("--prompt", default="a ceramic teapot")
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
                                 resolution=args.resolution, cfg=args.cfg)
    report = shape.run(cfg, device=args.device, save=args.save)
    if args.json:
        _print_json(report)
    else:
        print(f"{cfg.target} ({cfg.method}, {report['steps']} steps, {report['seconds']:.0f} s): "
              f"chamfer {100 * report['chamfer_l1_rel']:.2f}% of the diagonal, IoU {report['iou']:.3f}, "
              f"F-score@1% {report['fscore']:.3f}")
    return 0


def _bench_serve(args: argparse.Namespace) -> int:
    from .bench import serve

    _print_json(serve.run(clients=args.clients, steps=args.steps, mesh_every=args.mesh_every))
    return 0


def _bench_speed(args: argparse.Namespace) -> int:
    from .bench import speed

    _print_json(speed.run(preset=args.preset, teacher=args.teacher, device=args.device, method=args.method,
                          steps=args.steps, resolution=args.resolution))
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks that print JSON")
    kinds = bench.add_subparsers(dest="bench", required=True, metavar="{protocol,2d,3d,serve,speed}")
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
    p.add_argument("--device", default="cpu")
    p.add_argument("--save", default=None, metavar="MESH", help="also write the reconstruction (.glb/.obj/.ply)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_bench_3d)

    p = kinds.add_parser("serve", help="latency of progress and mesh delivery to many clients over loopback")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--mesh-every", type=int, default=5)
    p.set_defaults(handler=_bench_serve)

    p = kinds.add_parser("speed", help="seconds per step and peak GPU memory of a preset")
    p.add_argument("--preset", default="standard")
    p.add_argument("--teacher", default="random-sd21", help="random-sd21 (full size, random weights) | tiny | sd")
    p.add_argument("--device", default="auto")
    p.add_argument("--method", choices=["asd", "vsd", "sds"], default="asd")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--resolution", type=int, default=None, help="render side (default: the preset's largest)")
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
    except (ValueError, FileNotFoundError, ConnectionError, TimeoutError, AsdError) as exc:
        # Bad input and unreachable servers are the user's to fix: say what, not a traceback.
        print(f"asd {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
