"""The `asd` command. Each subcommand imports its work when it runs; the parser itself imports the benchmark
modules (their flags come from their config dataclasses), and some import torch, so `asd --help` takes 2–3 s."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence

from asd_protocol.errors import ProtocolError

from . import __version__
from .errors import AsdError, MissingFileError, UsageError
from .progress_bar import ProgressBar

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


def _run_record(kind: str, spec, teacher, notice: str | None, result, started: float, **extra) -> dict:
    from . import artifacts

    return {"kind": kind, "prompt": spec.prompt, "spec": spec.to_json(), "device": str(teacher.device),
            "teacher": {"name": teacher.name, "trained": teacher.trained, "description": teacher.description},
            "notice": notice, **result.summary, "steps_done": result.summary["steps"], "outputs": result.outputs,
            "final_metrics": result.final_metrics,
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
    with _StopOnInterrupt() as stop, ProgressBar(spec.steps, "distilling", stop=stop, details=True) as events:
        result = run_job(teacher, spec, workdir, events)
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
    with (_StopOnInterrupt() as stop,
          ProgressBar(spec.steps, "generating", initial=start, stop=stop, details=True) as events):
        result = run_job(teacher, spec, workdir, events, resume=args.resume)
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

        result = follow(client, submit=spec, attach=args.attach, resume=args.resume,
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


def _add_bench(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks that print JSON")
    kinds = bench.add_subparsers(dest="bench", required=True, metavar="{protocol,2d,3d,toy,toy-sweep,edit,serve,speed}")
    from .bench import edit, gmm, protocol, serve, shape, speed, toy, toy_sweep

    # Each benchmark's flags come from its config dataclass, in its own module.
    for bench_module in (protocol, gmm, shape, toy, toy_sweep, edit, serve, speed):
        bench_module.add_cli(kinds)


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
