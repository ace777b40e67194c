"""The one error handler of ``plankton-train`` and its checked options (no training needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from plankton_train.cli.main import RESUME_HINTS, app
from plankton_train.errors import ExperimentError, ReportError
from plankton_train.protocol import report

runner = CliRunner()


def _raise(exc: BaseException):
    def fail(*args, **kwargs):
        raise exc

    return fail


def test_an_error_is_one_markup_safe_red_line_with_exit_1(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(report, "write_report", _raise(ReportError("no runs in [bold]results[/bold] [recipe]")))
    r = runner.invoke(app, ["report", str(tmp_path / "results.csv"), "--out", str(tmp_path / "r")])
    assert r.exit_code == 1 and r.output == "error: no runs in [bold]results[/bold] [recipe]\n", r.output


def test_os_errors_are_user_errors_in_every_command(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(report, "write_report", _raise(PermissionError(13, "Permission denied", "/r")))
    r = runner.invoke(app, ["report", str(tmp_path / "results.csv"), "--out", str(tmp_path / "r")])
    assert r.exit_code == 1 and r.output.startswith("error: ") and r.output.count("\n") == 1, r.output


def test_plankton_debug_reraises(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PLANKTON_DEBUG", "1")
    r = runner.invoke(app, ["experiment", str(tmp_path / "nope.toml")])
    assert isinstance(r.exception, ExperimentError) and "error:" not in r.output


def test_ctrl_c_exits_130_with_a_resume_hint(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(report, "write_report", _raise(KeyboardInterrupt()))
    r = runner.invoke(app, ["report", str(tmp_path / "results.csv"), "--out", str(tmp_path / "r")])
    assert r.exit_code == 130 and r.output.startswith("interrupted: ") and "Aborted" not in r.output, r.output
    assert "--resume" in RESUME_HINTS["pretrain"] and "rerun" in RESUME_HINTS["experiment"]


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CPU", ""])
def test_device_is_checked_before_anything_runs(device: str, tmp_path: Path) -> None:
    args = ["predict", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "p.csv"), "--device", device]
    r = runner.invoke(app, args)
    text = " ".join(r.output.replace("│", " ").split())  # Rich wraps the usage error in a box
    assert r.exit_code == 2 and "auto, cpu, cuda, cuda:N, mps" in text, r.output


@pytest.mark.parametrize("init", ["nonsense", "hf-hub:no_org", "timm:", "", "local-dir:/no/such/dir"])
def test_init_kind_is_checked_in_one_line(init: str, tmp_path: Path) -> None:
    args = ["finetune", "--manifest", "m", "--shards", "s", "--splits", "x", "--out", "o", "--init", init]
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert r.output.startswith(f"error: unknown init {init!r}: use random, imagenet, imagenet-supervised, timm:NAME")


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_every_device_form_passes_the_check(device: str, tmp_path: Path) -> None:
    args = ["predict", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "p.csv"), "--device", device]
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and r.output.startswith("error: "), r.output  # the library's error, not a usage one
