"""The `asd` command. Each subcommand imports what it needs when it runs, so `asd --help` is instant."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from . import __version__

Handler = Callable[[argparse.Namespace], int]


def _print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")
    sys.stdout.flush()


# -- bench ------------------------------------------------------------------------------------


def _bench_protocol(args: argparse.Namespace) -> int:
    from .bench import protocol

    _print_json(protocol.run(triangles=args.triangles, messages=args.messages))
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks that print JSON")
    kinds = bench.add_subparsers(dest="bench", required=True, metavar="{protocol}")
    p = kinds.add_parser("protocol", help="mesh-frame throughput over loopback ZeroMQ")
    p.add_argument("--triangles", type=int, default=1_000_000)
    p.add_argument("--messages", type=int, default=40)
    p.set_defaults(handler=_bench_protocol)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asd", description="ASD Studio: text-to-3D with Adversarial Score "
                                     "Distillation. Backend server, generation and benchmarks.")
    parser.add_argument("--version", action="version", version=f"asd-studio {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
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
    except (ValueError, FileNotFoundError, ConnectionError, TimeoutError) as exc:
        # Bad input and unreachable servers are the user's to fix: say what, not a traceback.
        print(f"asd {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
