"""
Detectron2's own projects as their users run them, with the recipes of docs/usage.md: each recipe
is read from that page and built with the project's own code (``../shared/detectron2_projects``,
unmodified, its folder on ``sys.path``); a checkpoint of the stock model loads into it with only
the blocks' keys missing. The advice for a project's config names the builder its keys describe.
"""

import math
import os
import re
import sys

import pytest
import torch
import yaml

from helpers import HAS_DETECTRON2, REPO_ROOT, training_input

pytestmark = pytest.mark.detectron2

if HAS_DETECTRON2:
    from detectron2 import model_zoo
    from detectron2.modeling import build_model
    from detectron2.modeling.backbone.resnet import BottleneckBlock
    from detectron2.utils.events import EventStorage

    from nonlocal_det.harness.config import get_nonlocal_cfg
    from nonlocal_det.layers import NonLocalBlock2d

PROJECTS = os.path.join(REPO_ROOT, os.pardir, "shared", "detectron2_projects")
# project folder -> (its package, the function adding its config keys, projects it imports)
PACKAGES = {
    "PointRend": ("point_rend", "add_pointrend_config", ()),
    "DeepLab": ("deeplab", "add_deeplab_config", ()),
    "Panoptic-DeepLab": ("panoptic_deeplab", "add_panoptic_deeplab_config", ("DeepLab",)),
    "TridentNet": ("tridentnet", "add_tridentnet_config", ()),
}


def _import_project(project):
    """
    The project's package from its folder. Projects import each other as
    ``detectron2.projects.<package>``: that name is made the same module, so that nothing
    registers twice. Panoptic-DeepLab's data mapper imports panopticapi (not on PyPI) for one
    function, ``rgb2id``, which is given here as panopticapi defines it.
    """
    import importlib
    import types

    if not os.path.isdir(os.path.join(PROJECTS, project)):
        pytest.skip(f"{PROJECTS}/{project} is not beside this checkout")
    package, adder, needs = PACKAGES[project]
    for other in needs:
        _import_project(other)
    if "panopticapi" not in sys.modules and importlib.util.find_spec("panopticapi") is None:
        utils = types.ModuleType("panopticapi.utils")
        utils.rgb2id = lambda c: c[..., 0] + 256 * c[..., 1] + 256 * 256 * c[..., 2]
        sys.modules["panopticapi"] = types.ModuleType("panopticapi")
        sys.modules["panopticapi.utils"] = sys.modules["panopticapi"].utils = utils
    alias = f"detectron2.projects.{package}"
    if alias not in sys.modules:
        sys.path.insert(0, os.path.join(PROJECTS, project))
        sys.modules[alias] = importlib.import_module(package)
    return getattr(sys.modules[alias], adder)


# "# recipe: <project folder> <config> [KEY VALUE ...]": the pairs set the project's own keys
# (stock model and recipe alike), the yaml below it adds nonlocal_det's.
RECIPE = re.compile(r"```yaml\n# recipe: (\S+) (\S+)(.*?)\n(.*?)```", re.S)


def recipes():
    with open(os.path.join(REPO_ROOT, "docs", "usage.md")) as f:
        return [m.groups() for m in RECIPE.finditer(f.read())]


def _project_config(project, config, tmp_path):
    """The project's config with the project's, Detectron2's and nonlocal_det's keys."""
    from detectron2 import model_zoo

    from nonlocal_det.harness.config import default_config

    cfg = default_config()
    if project == "detectron2":
        cfg.merge_from_file(model_zoo.get_config_file(config))
    else:
        _import_project(project)(cfg)
        cfg.merge_from_file(_with_zoo_bases(os.path.join(PROJECTS, project, config), tmp_path))
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    return cfg


def _with_zoo_bases(path, tmp_path):
    """A copy of a project config whose _BASE_ chain reaches Detectron2's configs, which the
    projects name by their place in Detectron2's repository, in the installed model zoo."""
    from detectron2 import model_zoo

    with open(path) as f:
        text = f.read()
    match = re.search(r'^_BASE_:\s*"?([^"\n]+?)"?\s*$', text, re.M)
    if match:
        base = match.group(1)
        if base.startswith("../") and "configs/" in base:
            new = model_zoo.get_config_file(base.split("configs/", 1)[1])
        else:
            new = _with_zoo_bases(os.path.join(os.path.dirname(path), base), tmp_path)
        text = text[: match.start()] + f'_BASE_: "{new}"' + text[match.end() :]
    copy = tmp_path / f"{len(list(tmp_path.iterdir()))}_{os.path.basename(path)}"
    copy.write_text(text)
    return str(copy)


def _merged(cfg, text):
    merged = cfg.clone()
    merged.merge_from_other_cfg(type(cfg)(yaml.safe_load(text)))
    return merged


@pytest.mark.slow
@pytest.mark.parametrize(
    "project,config,opts,text", recipes(), ids=lambda v: str(v).split("/")[-1][:40]
)
def test_a_recipe_builds_the_projects_model_with_only_the_blocks_added(
    project, config, opts, text, tmp_path
):
    from nonlocal_det.errors import ConfigError
    from nonlocal_det.harness.advice import backbone_problem, explaining_build_errors
    from nonlocal_det.harness.checkpoint import CheckedCheckpointer

    stock_cfg = _project_config(project, config, tmp_path)
    stock_cfg.merge_from_list(opts.split())
    recipe, _, refusals = text.partition("# refused:")
    cfg = _merged(stock_cfg, recipe)
    assert backbone_problem(cfg) is None
    torch.manual_seed(0)
    stock = build_model(stock_cfg)
    torch.save({"model": stock.state_dict()}, tmp_path / "stock.pth")
    with explaining_build_errors(cfg):
        model = build_model(cfg)
    checkpointer = CheckedCheckpointer(model)
    checkpointer.load(str(tmp_path / "stock.pth"))
    report = checkpointer.incompatible
    assert not report.unexpected_keys and not report.incorrect_shapes
    assert report.missing_keys and all(
        ".nonlocal_block." in k or ".context_block." in k for k in report.missing_keys
    ), report.missing_keys
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():  # the same network: at initialisation the blocks are identities
        expected, got = stock.eval().backbone(x), model.eval().backbone(x)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)
    for refusal in filter(None, refusals.split("# refused:")):
        placement, words = refusal.split("->")
        refused = cfg.clone()
        refused.merge_from_list(placement.split())
        with pytest.raises(ConfigError, match=re.escape(words.strip())):
            build_model(refused)


@pytest.mark.slow
@pytest.mark.parametrize(
    "project,config,builder",
    [
        (
            "DeepLab",
            "configs/Cityscapes-SemanticSegmentation/deeplab_v3_R_103_os16_mg124_poly_90k_bs16.yaml",
            "build_resnet_deeplab_backbone",
        ),
        (
            "Panoptic-DeepLab",
            "configs/Cityscapes-PanopticSegmentation/"
            "panoptic_deeplab_R_52_os16_mg124_poly_90k_bs32_crop_512_1024.yaml",
            "build_resnet_deeplab_backbone",
        ),
        ("TridentNet", "configs/tridentnet_fast_R_50_C4_1x.yaml", "build_trident_resnet_backbone"),
    ],
)
def test_the_advice_names_the_builder_the_configs_keys_describe(project, config, builder, tmp_path):
    """Switched to the non-local backbone with its default, the config is refused in one line
    that names the builder of the network the config describes, never another one."""
    from nonlocal_det.harness.advice import backbone_problem

    cfg = _project_config(project, config, tmp_path)
    cfg.MODEL.BACKBONE.NAME = "build_nonlocal_backbone"
    error = backbone_problem(cfg)
    assert error is not None and f"set MODEL.NONLOCAL.BACKBONE_NAME '{builder}'" in str(error)
    assert "\n" not in str(error)


def test_block_class_without_variant_names_the_stages_that_work():
    """A stage of a project's own block class (TridentNet's) is refused; the others work."""
    from detectron2.layers import CNNBlockBase

    from nonlocal_det.modeling import insert_nonlocal_blocks

    class ProjectBlock(CNNBlockBase):
        def forward(self, x):
            return x

    stock = BottleneckBlock(64, 64, bottleneck_channels=16)
    stages = {"res3": [stock, stock], "res4": [ProjectBlock(64, 64, 1)] * 2}
    block = lambda c: NonLocalBlock2d(c, norm="")  # noqa: E731
    with pytest.raises(ValueError, match=r"MODEL.NONLOCAL.RES4 place blocks in res4, whose block "):
        insert_nonlocal_blocks(
            stages, {"res4": [0]}, block, key_of=lambda s: f"MODEL.NONLOCAL.{s.upper()}"
        )
    with pytest.raises(ValueError, match=r"Stages of this ResNet that take them: \['res3'\]"):
        insert_nonlocal_blocks(stages, {"res4": [0]}, block)
    assert insert_nonlocal_blocks(stages, {"res3": [0]}, block) == ["res3.0"]


def _segmentation_cfg(config, meta_architecture, *opts):
    return get_nonlocal_cfg(
        model_zoo.get_config_file(config),
        [
            "MODEL.DEVICE",
            "cpu",
            "MODEL.WEIGHTS",
            "",
            "MODEL.META_ARCHITECTURE",
            meta_architecture,
            "MODEL.BACKBONE.NAME",
            "build_nonlocal_backbone",
            "MODEL.NONLOCAL.NORM",
            "GN",
            *opts,
        ],
    )


SEGMENTATION = {
    "semantic": ("Misc/semantic_R_50_FPN_1x.yaml", "SemanticSegmentor"),
    "panoptic": ("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml", "PanopticFPN"),
}


def _segmentation_batch(sizes):
    return [
        dict(training_input(h, w, seed=i), sem_seg=torch.randint(0, 54, (h, w)))
        for i, (h, w) in enumerate(sizes)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("family", list(SEGMENTATION))
def test_segmentation_models_equal_stock_at_init_and_train(family):
    config, stock_name = SEGMENTATION[family]
    torch.manual_seed(0)
    stock = build_model(_segmentation_cfg(config, stock_name, "MODEL.NONLOCAL.RES4", "[]"))
    torch.manual_seed(0)
    ours = build_model(_segmentation_cfg(config, f"NonLocal{stock_name}"))
    missing = ours.load_state_dict(stock.state_dict(), strict=False).missing_keys
    assert missing and all(".nonlocal_block." in k for k in missing)
    batch = _segmentation_batch([(64, 96), (48, 80)])  # the second image padded
    with torch.no_grad():
        expected, got = stock.eval()(batch), ours.eval()(batch)
    for a, b in zip(expected, got):
        assert torch.equal(a["sem_seg"], b["sem_seg"])
    for module in ours.modules():
        if isinstance(module, NonLocalBlock2d):
            module.norm.weight.data.fill_(0.5)
    with EventStorage():
        losses = ours.train()(batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()


@pytest.mark.parametrize("family", list(SEGMENTATION))
def test_segmentation_models_compute_each_image_on_its_valid_region(family):
    """The res4 block sees each image's valid size: ceil(h / 16), ceil(w / 16)."""
    config, stock_name = SEGMENTATION[family]
    model = build_model(_segmentation_cfg(config, f"NonLocal{stock_name}")).eval()
    block = next(m for m in model.modules() if isinstance(m, NonLocalBlock2d))
    seen = []
    block.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("valid_sizes")), with_kwargs=True
    )
    sizes = [(64, 96), (40, 70)]
    with torch.no_grad():
        model(_segmentation_batch(sizes))
    assert seen == [[(math.ceil(h / 16), math.ceil(w / 16)) for h, w in sizes]]
