import subprocess
import sys

import pytest

import nonlocal_det


def test_layers_import_without_detectron2():
    """nonlocal_det and its layers import in a Python where detectron2 cannot be imported."""
    code = (
        "import sys; sys.modules['detectron2'] = None\n"
        "import torch, nonlocal_det\n"
        "from nonlocal_det.layers import NonLocalBlock2d, CGNLBlock2d\n"
        "x = torch.randn(1, 8, 5, 5)\n"
        "assert torch.equal(NonLocalBlock2d(8)(x), x) and torch.equal(CGNLBlock2d(8, groups=2)(x), "
        "x)\n"
        "assert not nonlocal_det.detectron2_available()\n"
        "try:\n"
        "    nonlocal_det.require_detectron2('nonlocal_det.something')\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "nonlocal_det.something needs Detectron2" in out
    assert "detectron2.readthedocs.io" in out and "not on PyPI" in out


def test_unknown_attribute():
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        _ = nonlocal_det.NoSuchThing
