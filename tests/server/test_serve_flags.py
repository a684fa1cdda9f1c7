"""`asd serve`'s flags are ServerConfig's and ServerLimits' fields: each one reaches the config, and each
help line shows its default."""

import dataclasses

import pytest

from asd_backend.cli import build_parser, main
from asd_backend.dataclass_flags import dataclass_from_args
from asd_backend.server.frontend import ServerConfig
from asd_backend.server.limits import ServerLimits


def config_of(*argv: str) -> ServerConfig:
    args = build_parser().parse_args(["serve", *argv])
    return dataclass_from_args(ServerConfig, args, limits=dataclass_from_args(ServerLimits, args))


def test_every_serve_flag_reaches_the_config():
    config = config_of("--gpus", "0,2", "--discriminator-model", "a/b", "--discriminator-model", "/models/c",
                       "--max-queued-per-client", "3", "--max-pending-mib", "5", "--max-steps", "99", "--insecure",
                       "--results", "here", "--max-attempts", "7")
    assert config.gpus == (0, 2) and config.discriminator_models == ("a/b", "/models/c")
    assert config.max_queued_per_user == 3 and config.max_pending_mib == 5 and config.insecure
    assert config.limits.max_steps == 99 and config.limits.max_render_side == ServerLimits().max_render_side
    assert str(config.results) == "here" and config.max_attempts == 7
    assert config_of() == ServerConfig()  # no flags: the dataclass's own defaults


def test_every_serve_flag_shows_its_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    fields = [*(f for f in dataclasses.fields(ServerConfig) if f.name != "limits"), *dataclasses.fields(ServerLimits)]
    for field in fields:
        flag = "--" + field.metadata.get("flag", field.name).replace("_", "-")
        assert flag in text, flag
    assert text.count("(default:") >= len(fields)


def test_a_bad_gpu_list_is_a_usage_error_not_a_traceback(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--gpus", "zero"])
    assert exit_info.value.code == 2 and "argument --gpus: 'zero': give GPU indices" in capsys.readouterr().err
