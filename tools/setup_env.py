#!/usr/bin/env python3
"""
Install nonlocal_det and everything it needs, Detectron2 included, into a virtual environment.

    python3 tools/setup_env.py                                  # .venv, Detectron2 from source
    python3 tools/setup_env.py --detectron2-wheel ../shared/wheels   # or a wheel file
    DETECTRON2_WHEEL=/path/to/detectron2-*.whl python3 tools/setup_env.py
    python3 tools/setup_env.py --venv /path/to/env             # another environment
    python3 tools/setup_env.py --venv ""                       # this interpreter, no venv

Each step (the venv; this project with its ``test`` extra at the ``constraints.txt`` pins;
Detectron2, from the wheel given or its official source at ``DETECTRON2_COMMIT``, never the bare
name on a package index) is done only when its result is missing (docs/install.md). Standard
library only; pip does all installing. A failed step stops with its name and the fix.
"""

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONSTRAINTS = os.path.join(REPO_ROOT, "constraints.txt")
DETECTRON2_REPO = "https://github.com/facebookresearch/detectron2.git"
DETECTRON2_COMMIT = "02b5c4e295e990042a714712c21dc79b731e8833"
WHEEL_ENV = "DETECTRON2_WHEEL"
# Written into the environment when every step has succeeded; holds what was installed.
STAMP_NAME = "nonlocal_det-setup.json"


class SetupError(RuntimeError):
    """A step that cannot be done as things are, with the fix in the message."""


def log(message: str) -> None:
    print(f"[setup] {message}", flush=True)


def run(step: str, cmd, fix: str) -> None:
    """Run ``cmd``; on failure raise SetupError naming the step and the fix."""
    log(f"{step}: {' '.join(cmd)}")
    if subprocess.call(cmd) != 0:
        raise SetupError(f"step '{step}' failed (command above). {fix}")


def python_tag(python: str) -> str:
    """'cp311' for a CPython 3.11 interpreter."""
    code = "import sys; print(sys.implementation.name, *sys.version_info[:2])"
    name, major, minor = subprocess.check_output([python, "-c", code], text=True).split()
    return ("cp" if name == "cpython" else name) + major + minor


def _is_wheel(name: str) -> bool:
    return name.startswith("detectron2-") and name.endswith(".whl")


def find_wheel(spec: str, tag: str) -> str:
    """The Detectron2 wheel named by ``spec`` (a .whl file, or a folder holding one for ``tag``)."""
    path = os.path.abspath(os.path.expanduser(spec))
    if os.path.isdir(path):
        wheels = sorted(f for f in os.listdir(path) if _is_wheel(f))
        if not wheels:
            raise SetupError(
                f"no detectron2-*.whl in {path} ({WHEEL_ENV} / --detectron2-wheel). Point it at "
                "the wheel file."
            )
        matching = [f for f in wheels if f"-{tag}-" in f]
        if not matching:
            raise SetupError(
                f"the Detectron2 wheels in {path} ({', '.join(wheels)}) are not for this Python "
                f"({tag}). Use the Python they were built for, or leave the wheel out to build "
                "Detectron2 from source."
            )
        path = os.path.join(path, matching[-1])
    elif not os.path.isfile(path):
        raise SetupError(f"{WHEEL_ENV} / --detectron2-wheel = {spec!r}: no such file or folder.")
    name = os.path.basename(path)
    if not _is_wheel(name):
        raise SetupError(
            f"{path} is not a Detectron2 wheel (expected detectron2-<version>-<tags>.whl)."
        )
    if f"-{tag}-" not in name:
        raise SetupError(
            f"{name} is built for another Python than this environment's ({tag}). Use a wheel "
            f"built for {tag}, create the environment with the wheel's Python (--python), or leave "
            "the wheel out to build Detectron2 from source."
        )
    return path


def source_build_prerequisites() -> None:
    """A source build needs git, a C++ compiler and a route to GitHub: say which is missing."""
    missing = [tool for tool in ("git",) if shutil.which(tool) is None]
    if not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")):
        missing.append("a C++ compiler (c++/g++/clang++)")
    if missing:
        raise SetupError(
            f"building Detectron2 from source needs {' and '.join(missing)}, not found on PATH. "
            "Install them (Debian/Ubuntu: apt install git build-essential), or pass a prebuilt "
            f"wheel with --detectron2-wheel PATH or {WHEEL_ENV}=PATH."
        )
    try:
        socket.create_connection(("github.com", 443), timeout=10).close()
    except OSError as e:
        raise SetupError(
            f"no wheel given and github.com cannot be reached ({e}), so Detectron2's source cannot "
            "be fetched. Pass a Detectron2 wheel built for this Python with --detectron2-wheel "
            f"PATH or {WHEEL_ENV}=PATH (a file or a folder holding it)."
        ) from None


def fingerprint(detectron2_source: str) -> dict:
    """What a finished setup installed from; a change in any of it reruns the install steps."""
    hashes = {}
    for name in ("pyproject.toml", "constraints.txt"):
        with open(os.path.join(REPO_ROOT, name), "rb") as f:
            hashes[name] = hashlib.sha256(f.read()).hexdigest()
    return {**hashes, "detectron2": detectron2_source, "repo": REPO_ROOT}


def installed_ok(python: str) -> bool:
    """Whether torch, torchvision, Detectron2 (with its compiled ops) and this checkout import."""
    code = (
        "import torch, torchvision, detectron2, detectron2._C, nonlocal_det, os, sys\n"
        "sys.exit(os.path.dirname(os.path.dirname(os.path.abspath(nonlocal_det.__file__))) != "
        "sys.argv[1])"
    )
    cmd = [python, "-c", code, REPO_ROOT]
    return subprocess.call(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0


def ensure_venv(venv: str, base_python: str) -> str:
    """Create ``venv`` with ``base_python`` if missing; return the environment's python."""
    python = os.path.join(venv, "bin", "python")
    if os.path.exists(python):
        return python
    log(f"virtual environment: {base_python} -m venv {venv}")
    if subprocess.call([base_python, "-m", "venv", venv]) != 0:
        raise SetupError(
            f"step 'virtual environment' failed: `{base_python} -m venv {venv}`. On Debian/Ubuntu "
            "the venv module is a separate package (apt install python3-venv); or pass --venv '' "
            "to install into the running interpreter."
        )
    return python


def setup(venv: str, base_python: str, wheel_spec: str) -> str:
    # Everything that can fail for want of a wheel, a compiler or a network is checked first,
    # before minutes of downloads. A venv has its creator's Python, hence its tag.
    tag = python_tag(base_python)
    if tag != "cp311":
        log(
            f"note: this Python is {tag}; the torch pins and the shared Detectron2 wheel are "
            "for cp311"
        )
    wheel = find_wheel(wheel_spec, tag) if wheel_spec else None
    detectron2_source = wheel or f"{DETECTRON2_REPO}@{DETECTRON2_COMMIT}"
    python = ensure_venv(venv, base_python) if venv else base_python

    stamp = os.path.join(venv, STAMP_NAME) if venv else None  # without a venv pip checks each time
    wanted = fingerprint(detectron2_source)
    if stamp and os.path.isfile(stamp):
        with open(stamp) as f:
            done = json.load(f)
        if done == wanted and installed_ok(python):
            log(f"everything already installed in {venv} (delete {stamp} to reinstall)")
            return python
    if not wheel:
        source_build_prerequisites()

    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "-c", CONSTRAINTS]
    fix = "Check the network route to the package index (pip's message above), then rerun."
    run("python packages", pip + ["setuptools<81", "-e", f"{REPO_ROOT}[test]"], fix)
    if wheel:
        fix = (
            "The wheel must match this Python and the torch of constraints.txt; its dependencies "
            "come from the package index."
        )
        run("detectron2 (wheel)", pip + [wheel], fix)
    else:
        source = f"detectron2 @ git+{DETECTRON2_REPO}@{DETECTRON2_COMMIT}"
        fix = (
            "Building needs the Python headers (apt install python3-dev), a C++ compiler and git; "
            f"or pass a prebuilt wheel with --detectron2-wheel PATH / {WHEEL_ENV}=PATH."
        )
        run("detectron2 (build from source)", pip + ["--no-build-isolation", source], fix)
    if not installed_ok(python):
        raise SetupError(
            f"step 'check': {python} cannot import torch, torchvision, detectron2 (with "
            "detectron2._C) and this checkout's nonlocal_det after installing. Run "
            f'`{python} -c "import detectron2._C"` to see why (a wheel built against another '
            "torch fails here)."
        )
    if stamp:
        with open(stamp, "w") as f:
            json.dump(wanted, f, indent=1)
    return python


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--venv",
        default=os.path.join(REPO_ROOT, ".venv"),
        help="virtual environment to create or update (default: .venv in the checkout); '' "
        "installs into --python",
    )
    python_help = "interpreter that creates the environment (default: this one)"
    parser.add_argument("--python", default=sys.executable, help=python_help)
    parser.add_argument(
        "--detectron2-wheel",
        default=os.environ.get(WHEEL_ENV, ""),
        help=f"a Detectron2 wheel file, or a folder holding one (default: ${WHEEL_ENV}); without "
        "it Detectron2 is built from source",
    )
    args = parser.parse_args(argv)
    start = time.time()
    try:
        python = setup(args.venv, args.python, args.detectron2_wheel)
    except SetupError as e:
        print(f"[setup] error: {e}", file=sys.stderr)
        return 1
    log(f"ready in {time.time() - start:.0f} s: {python}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
