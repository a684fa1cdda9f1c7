"""`asd toy …`: train the toy teacher and its judge, sample from them, and picture results beside the truth."""

from __future__ import annotations

import argparse
import dataclasses
import json

from ..dataclass_flags import add_dataclass_flags, dataclass_from_args


def _train(args: argparse.Namespace) -> int:
    from ..teachers.builders import cache_root
    from .train_teacher import ToyTeacherTrainer, ToyTrainingConfig

    config = dataclass_from_args(ToyTrainingConfig, args)
    folder = ToyTeacherTrainer(config, cache=cache_root() / "toy-data").run()
    print(json.dumps({"pipeline": str(folder)}))
    return 0


def _train_judge(args: argparse.Namespace) -> int:
    from ..teachers.builders import cache_root
    from .judge import JudgeTrainingConfig, train_judge

    record = train_judge(dataclass_from_args(JudgeTrainingConfig, args), cache=cache_root() / "toy-data")
    print(json.dumps(record))
    return 0


def _check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..teachers.registry import TOY_TEACHER_DIR
    from .evaluate import CheckConfig, check_teacher, load_pipeline
    from .judge import load_judge

    pipe = load_pipeline(Path(args.pipeline) if args.pipeline else TOY_TEACHER_DIR)
    report = check_teacher(pipe, load_judge(), dataclass_from_args(CheckConfig, args))
    print(json.dumps(report))
    return 0


def _prefers(args: argparse.Namespace) -> int:
    from ..teachers import load_teacher
    from .preference import PreferenceConfig, prefers
    from .world import world_object

    obj = world_object(args.prompt)
    config = dataclass_from_args(PreferenceConfig, args)
    rows = prefers(load_teacher("toy", args.device), obj, config)
    print(json.dumps({"prompt": args.prompt, **dataclasses.asdict(config), "candidates": rows}))
    return 0


def _gallery(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .gallery import GalleryConfig, write_gallery

    print(json.dumps(write_gallery(args.items, Path(args.out), dataclass_from_args(GalleryConfig, args))))
    return 0


def add_toy(sub: argparse._SubParsersAction) -> None:
    toy = sub.add_parser("toy", help="the toy teacher: a small SD-shaped model trained here on a world of known "
                         "objects")
    actions = toy.add_subparsers(dest="toy", required=True)
    p = actions.add_parser("train", help="train the toy teacher from scratch (resumes from --out's checkpoint)",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    from .train_teacher import ToyTrainingConfig

    add_dataclass_flags(p, ToyTrainingConfig)
    p.set_defaults(handler=_train)
    from .judge import JudgeTrainingConfig

    p = actions.add_parser("train-judge", help="train the judge (shape, colour, azimuth) on renders of other seeds")
    add_dataclass_flags(p, JudgeTrainingConfig)
    p.set_defaults(handler=_train_judge)
    from .evaluate import CheckConfig

    p = actions.add_parser("check", help="sample every world prompt with the diffusers pipeline and judge them (JSON)")
    add_dataclass_flags(p, CheckConfig)
    p.add_argument("--pipeline", default=None, help="a pipeline folder (default: the shipped toy teacher)")
    p.set_defaults(handler=_check)
    from .preference import PreferenceConfig

    p = actions.add_parser("prefers", help="how well the teacher's caption explains exact renders of the object, "
                           "turned, resized, and the other shapes (its implicit classifier, JSON)",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("prompt", help="a world prompt, e.g. 'a red cube'")
    add_dataclass_flags(p, PreferenceConfig)
    p.add_argument("--device", default="cpu", help="cpu | cuda | mps")
    p.set_defaults(handler=_prefers)
    from .gallery import GalleryConfig

    p = actions.add_parser("gallery", help="pictures of meshes beside the exact objects their prompts name, from "
                           "the same views under the world's light (PNG)",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("items", nargs="+", metavar="PROMPT=MESH[,MESH…]",
                   help="e.g. 'a red cube=asd.ply,sds.ply': one row each, the exact object then each mesh")
    p.add_argument("--out", required=True, help="the PNG to write")
    add_dataclass_flags(p, GalleryConfig)
    p.set_defaults(handler=_gallery)


__all__ = ["add_toy"]
