"""Helpers for the Detectron2 tests: configs, small inputs. Import only when Detectron2 is present."""
import os

import torch
from detectron2.structures import Boxes, Instances, PolygonMasks

from nonlocal_det.config import get_nonlocal_cfg

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, "configs")


def load_cfg(config_name: str, *opts):
    """A config from configs/, on CPU, with no weights to download."""
    return get_nonlocal_cfg(os.path.join(CONFIG_DIR, config_name), ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts])


def randomize_nonlocal_norms(model, value=0.5):
    """Give every non-local block's norm a non-zero weight, so they stop being identities."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("nonlocal_block") or ".nonlocal_fcn" in name or name.startswith("nonlocal_fcn"):
                if getattr(module, "norm", None) is not None:
                    module.norm.weight.fill_(value)


def training_input(height=96, width=128, num_classes=1, keypoints=True, seed=0):
    """One image dict with two ground-truth instances (boxes, polygon masks, keypoints)."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), generator=gen, dtype=torch.uint8).float()
    boxes = torch.tensor([[10.0, 12.0, 60.0, 80.0], [50.0, 20.0, 120.0, 70.0]])
    inst = Instances((height, width))
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.tensor([0, min(1, num_classes - 1)])
    inst.gt_masks = PolygonMasks([[b[[0, 1, 2, 1, 2, 3, 0, 3]].tolist()] for b in boxes])
    if keypoints:
        from detectron2.structures import Keypoints

        kps = torch.zeros(2, 17, 3)
        for i, b in enumerate(boxes):
            kps[i, :, 0] = torch.linspace(float(b[0]) + 2, float(b[2]) - 2, 17)
            kps[i, :, 1] = torch.linspace(float(b[1]) + 2, float(b[3]) - 2, 17)
            kps[i, :, 2] = 2
        inst.gt_keypoints = Keypoints(kps)
    return {"image": image, "instances": inst, "height": height, "width": width}
