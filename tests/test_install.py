"""A torch/torchvision pair from different releases is one line naming both versions and the fix, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import hubcompare.install as install
import hubcompare.models.checkpoint as checkpoint
from hubcompare.cli.main import ERROR_EXIT_CODE, app
from hubcompare.errors import InstallError

NMS = "operator torchvision::nms does not exist"


def _raised_in(path: str, exc: BaseException) -> BaseException:
    """``exc`` raised from code whose file is ``path`` (as torchvision's own modules raise it)."""
    try:
        exec(compile("raise exc", path, "exec"), {"exc": exc})
    except BaseException as raised:  # noqa: BLE001 - the point is to get it back with its traceback
        return raised
    raise AssertionError("not raised")


def test_torchvision_pairs_with_its_torch_release():
    assert install.matching_torchvision("2.14.1") == "0.29"
    assert install.matching_torchvision("2.1.0+cpu") == "0.16"
    assert install.matching_torchvision("1.13.1") is None and install.matching_torchvision(None) is None


def test_mismatched_pair_names_both_versions_and_the_pip_line(monkeypatch):
    versions = {"torch": "2.14.1", "torchvision": "0.24.0"}
    monkeypatch.setattr(install, "installed_version", versions.get)
    problem = install.torch_pair_problem(_raised_in("/site-packages/torchvision/extension.py", RuntimeError(NMS)))
    assert isinstance(problem, InstallError)
    assert "torch 2.14.1 with torchvision 0.24.0 do not match" in str(problem)
    assert "'torch==2.14.1' 'torchvision==0.29.*'" in str(problem) and NMS in str(problem)


def test_a_matching_pair_that_still_fails_says_reinstall(monkeypatch):
    monkeypatch.setattr(install, "installed_version", {"torch": "2.14.1", "torchvision": "0.29.1"}.get)
    chained = ImportError("libc10.so: undefined symbol")
    chained.__cause__ = _raised_in("/site-packages/torchvision/_C.py", OSError("bad ELF"))
    problem = install.torch_pair_problem(chained)
    assert problem is not None and "reinstall torch and torchvision together" in str(problem)


@pytest.mark.parametrize("exc", [RuntimeError("CUDA out of memory"), ValueError(NMS), KeyError("torchvision")])
def test_other_errors_are_not_install_problems(exc):
    assert install.torch_pair_problem(_raised_in("/x/hubcompare/models/resnet.py", exc)) is None


def test_cli_prints_one_line_and_exits_2(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise _raised_in("/site-packages/torchvision/extension.py", RuntimeError(NMS))

    monkeypatch.setattr(checkpoint, "load_checkpoint", broken)
    monkeypatch.setattr(install, "installed_version", {"torch": "2.14.1", "torchvision": "0.24.0"}.get)
    result = CliRunner().invoke(app, ["info", str(tmp_path)])
    assert result.exit_code == ERROR_EXIT_CODE, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert "Error (InstallError): torch 2.14.1 with torchvision 0.24.0 do not match" in " ".join(lines)
    assert "Traceback" not in result.output


def test_cli_other_runtime_errors_keep_their_traceback(monkeypatch, tmp_path):
    def bug(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(checkpoint, "load_checkpoint", bug)
    result = CliRunner().invoke(app, ["info", str(tmp_path)])
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)


@pytest.mark.slow
def test_a_broken_torchvision_on_the_path_is_one_line(tmp_path):
    """End to end: a torchvision that fails on import as a mismatched build does (the real `train` imports timm)."""
    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"raise RuntimeError({NMS!r})\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "COLUMNS": "200"}
    done = subprocess.run([str(Path(sys.executable).with_name("hubcompare")), "train", "digits",
                           "--epochs", "1", "--out", str(tmp_path / "m")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == ERROR_EXIT_CODE, done.stderr
    assert "Error (InstallError): torchvision cannot load (operator torchvision::nms" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "m").exists()
