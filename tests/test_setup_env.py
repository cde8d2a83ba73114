"""
tools/setup_env.py: the checks that stop a setup before any download, with the fix in the message.
"""

import os
import sys

import pytest

from helpers import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
import setup_env  # noqa: E402


def _touch(path):
    path.write_bytes(b"")
    return path


def test_a_wheel_folder_gives_the_wheel_for_this_python(tmp_path):
    _touch(tmp_path / "detectron2-0.6-cp310-cp310-linux_x86_64.whl")
    wanted = _touch(tmp_path / "detectron2-0.6-cp311-cp311-linux_x86_64.whl")
    assert setup_env.find_wheel(str(tmp_path), "cp311") == str(wanted)
    assert setup_env.find_wheel(str(wanted), "cp311") == str(wanted)


def test_a_wheel_for_another_python_is_refused_with_the_fix(tmp_path):
    wheel = _touch(tmp_path / "detectron2-0.6-cp311-cp311-linux_x86_64.whl")
    with pytest.raises(
        setup_env.SetupError, match=r"built for another Python than this environment's \(cp312\)"
    ):
        setup_env.find_wheel(str(wheel), "cp312")
    with pytest.raises(setup_env.SetupError, match=r"are not for this Python \(cp312\)"):
        setup_env.find_wheel(str(tmp_path), "cp312")


@pytest.mark.parametrize("name", ["missing", "empty_folder", "not_a_wheel"])
def test_bad_wheel_arguments_name_the_problem(tmp_path, name):
    spec = {
        "missing": tmp_path / "nope.whl",
        "empty_folder": tmp_path,
        "not_a_wheel": _touch(tmp_path / "torch-2.14.1-cp311-cp311-linux_x86_64.whl"),
    }[name]
    if name == "empty_folder":
        spec = tmp_path / "empty"
        spec.mkdir()
    with pytest.raises(setup_env.SetupError, match="DETECTRON2_WHEEL|Detectron2 wheel"):
        setup_env.find_wheel(str(spec), "cp311")


def test_a_source_build_without_a_compiler_says_what_to_install(monkeypatch):
    monkeypatch.setattr(setup_env.shutil, "which", lambda tool: None)
    with pytest.raises(
        setup_env.SetupError, match="needs git and a C\\+\\+ compiler.*--detectron2-wheel"
    ):
        setup_env.source_build_prerequisites()


def test_the_python_tag_of_this_interpreter():
    assert setup_env.python_tag(sys.executable) == f"cp{sys.version_info[0]}{sys.version_info[1]}"
