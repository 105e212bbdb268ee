"""Argument parsing and validation of the client's command line, and connection settings."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from textinv_client import cli, concept_commands, job_commands
from textinv_client.channel import ConnectionSettings
from textinv_client.types import Scheduler


def parse(argv: list[str]) -> argparse.Namespace:
    return cli.build_parser().parse_args(argv)


GENERATE = ["generate", "--server", "localhost:50051", "--prompt", "a <cat-toy>", "--out", "o.png"]


def test_generation_defaults() -> None:
    args = parse(GENERATE)
    request = cli.generate_request_from_args(args)
    assert (request.steps, request.guidance_scale, request.scheduler) == (30, 7.5, Scheduler.DDIM)
    assert (request.seed, request.width, request.height, request.num_images) == (None,) * 3 + (1,)
    assert args.func is cli.run_remote_generate


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--width", "500"], "must be a positive multiple of 8, got 500"),
        (["--steps", "0"], "must be at least 1, got 0"),
        (["--seed", "-1"], "must be in 0..2\\*\\*64-1, got -1"),
        (["--guidance", "-1"], "must be >= 0, got -1"),
        (["--scheduler", "lms"], "invalid choice: 'lms'"),
        (["--timeout", "0"], "must be > 0, got 0"),
        (["--clip-skip", "-1"], "must be >= 0, got -1"),
        (["--strength", "1.5"], "must be in (0, 1], got 1.5"),
    ],
)
def test_bad_generation_flags_exit_2_naming_the_value(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        parse(GENERATE + flags)
    assert caught.value.code == 2
    assert message.replace("\\", "") in capsys.readouterr().err


def test_out_must_name_an_image_format(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse([*GENERATE[:-1], "o.gif"])
    assert "must end in .png, .jpg, .jpeg, .webp, got 'o.gif'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("out", "flags", "expected"),
    [("o.png", [], "png"), ("o.JPG", [], "jpeg"), ("o.webp", ["--format", "webp"], "webp")],
)
def test_the_out_suffix_sets_the_format(out: str, flags: list[str], expected: str) -> None:
    args = parse([*GENERATE[:-1], out, *flags, "--syntax", "a1111", "--quality", "80"])
    request = cli.generate_request_from_args(args)
    assert request.output_format == expected
    assert request.prompt_syntax == "a1111" and request.quality == 80


def test_scheduler_options_and_clip_skip_reach_the_request() -> None:
    args = parse([*GENERATE, "--scheduler", "dpmpp-2m-sde", "--karras", "--clip-skip", "2"])
    request = cli.generate_request_from_args(args)
    assert (request.scheduler, request.karras_sigmas, request.clip_skip) == (
        "dpmpp-2m-sde",
        True,
        2,
    )
    assert cli.generate_request_from_args(parse(GENERATE)).clip_skip == 0


def test_init_image_is_read_from_its_file(tmp_path: Path) -> None:
    image = tmp_path / "start.png"
    image.write_bytes(b"\x89PNG not checked here")
    args = parse([*GENERATE, "--init-image", str(image), "--strength", "0.4"])
    request = cli.generate_request_from_args(args)
    assert (request.init_image, request.strength) == (image.read_bytes(), 0.4)
    with pytest.raises(ValueError, match="strength applies to img2img"):
        cli.generate_request_from_args(parse([*GENERATE, "--strength", "0.4"]))
    with pytest.raises(ValueError, match="--init-image .*missing.png"):
        cli.generate_request_from_args(
            parse([*GENERATE, "--init-image", str(tmp_path / "missing.png")])
        )


def test_a_format_that_contradicts_the_suffix_is_refused() -> None:
    args = parse([*GENERATE[:-1], "o.png", "--format", "jpeg"])
    with pytest.raises(ValueError, match="--format jpeg does not match --out's suffix"):
        cli.generate_request_from_args(args)


def test_numbered_output_paths() -> None:
    assert cli.numbered_output_paths(Path("out/cat.png"), 1) == [Path("out/cat.png")]
    assert cli.numbered_output_paths(Path("out/cat.png"), 3) == [
        Path("out/cat-0.png"),
        Path("out/cat-1.png"),
        Path("out/cat-2.png"),
    ]


def test_empty_prompt_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["generate", "--server", "h:1", "--prompt", "  ", "--out", "o.png"])
    assert code == 2
    assert capsys.readouterr().err == "error: prompt must not be empty, got '  '\n"


def test_missing_tls_file_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "ca.pem"
    code = cli.main(["concepts", "ls", "--server", "h:1", "--tls-ca", str(missing)])
    assert code == 2
    assert capsys.readouterr().err == f"error: root certificate file not found: '{missing}'\n"


def test_missing_training_images_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["jobs", "submit", "--server", "h:1", "--images", str(tmp_path / "none")]
    code = cli.main([*argv, "--token", "<t>", "--init", "dog"])
    assert code == 2
    assert "no such image file or folder" in capsys.readouterr().err
    empty_folder = ["jobs", "submit", "--server", "h:1", "--images", str(tmp_path)]
    assert cli.main([*empty_folder, "--token", "<t>", "--init", "dog"]) == 2
    assert "no images" in capsys.readouterr().err


def test_caption_without_token_marker_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.png").write_bytes(b"png")
    (tmp_path / "a.txt").write_text("a photo of a dog")
    argv = ["jobs", "submit", "--server", "h:1", "--images", str(tmp_path)]
    assert cli.main([*argv, "--token", "<t>", "--init", "dog"]) == 2
    assert "caption of 'a.png' must contain '{}'" in capsys.readouterr().err


def test_trainer_flags_become_params() -> None:
    submit = ["jobs", "submit", "--server", "h:1", "--images", "d", "--token", "<t>"]
    trainer = ["--init", "dog", "--vectors", "4", "--property", "style", "--lr", "0.005"]
    more = ["--scale-lr", "--lr-schedule", "cosine", "--precision", "bf16", "--resolution", "256"]
    args = parse([*submit, *trainer, *more, "--warmup", "0", "--no-register"])
    params = cli.inversion_params_from_args(args)
    assert (params.num_vectors, params.property.value, params.learning_rate) == (4, "style", 0.005)
    assert params.scale_lr and params.lr_schedule and params.lr_schedule.value == "cosine"
    assert params.precision and params.precision.value == "bf16"
    assert (params.resolution, params.warmup_steps, params.steps) == (256, 0, None)
    assert args.no_register and args.func is job_commands.jobs_submit


def test_remote_subcommands_compose_into_another_parser() -> None:
    # textinv/cli/ composes them like this and dispatches through args.func.
    parser = argparse.ArgumentParser(prog="textinv")
    cli.add_remote_subcommands(parser.add_subparsers(dest="command", required=True))
    handlers = {
        ("concepts", "add", "f.pt"): concept_commands.concepts_add,
        ("concepts", "ls"): concept_commands.concepts_ls,
        ("concepts", "get", "<t>"): concept_commands.concepts_get,
        ("concepts", "rm", "<t>"): concept_commands.concepts_rm,
        ("jobs", "watch", "job-1"): job_commands.jobs_watch,
        ("jobs", "ls"): job_commands.jobs_ls,
        ("jobs", "cancel", "job-1"): job_commands.jobs_cancel,
    }
    for words, handler in handlers.items():
        args = parser.parse_args([*words, "--server", "h:1"])
        assert args.func is handler, words


def test_remote_commands_need_a_server(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse(["concepts", "ls"])
    assert caught.value.code == 2
    assert "--server" in capsys.readouterr().err


def test_connection_settings_choose_tls_and_check_mtls() -> None:
    assert not ConnectionSettings("h:1").uses_tls
    assert ConnectionSettings("h:1", tls=True).uses_tls
    assert ConnectionSettings("h:1", root_certificates=b"pem").uses_tls
    with pytest.raises(ValueError, match="both a client certificate and a client key"):
        ConnectionSettings("h:1", client_certificate=b"pem")
    with pytest.raises(ValueError, match="api_key must be"):
        ConnectionSettings("h:1", api_key="two words")
    with pytest.raises(ValueError, match="timeout must be > 0 seconds"):
        ConnectionSettings("h:1", timeout=0)
    assert ConnectionSettings("h:1", api_key="k").metadata() == (("authorization", "Bearer k"),)
    options = dict(ConnectionSettings("h:1").channel_options())
    assert options["grpc.max_receive_message_length"] == 64 * 1024 * 1024
