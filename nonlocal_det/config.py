"""
Config keys of nonlocal_det, in Detectron2's ``add_*_config`` style, and loading YAML and LazyConfig
files.
"""

import difflib
import os
import re
from typing import List

import yaml
from detectron2.config import CfgNode as CN

from .config_domains import check_config
from .errors import ConfigError

# nonlocal_det's meta-architectures that compute each image on its valid region
# (MODEL.NONLOCAL.VALID_REGION; nonlocal_det/modeling/meta_arch.py) -> the Detectron2 one each
# extends, with the same heads.
VALID_REGION_META_ARCHITECTURES = {
    "NonLocalGeneralizedRCNN": "GeneralizedRCNN",
    "NonLocalRetinaNet": "RetinaNet",
    "NonLocalSemanticSegmentor": "SemanticSegmentor",
    "NonLocalPanopticFPN": "PanopticFPN",
}


def add_nonlocal_config(cfg):
    """
    Add the keys for non-local backbones and keypoint heads to a Detectron2 config.
    Defaults reproduce the paper (Wang et al. 2018, sec. 6): one embedded-Gaussian block
    in res4, right before its last residual block; 4 blocks in the keypoint head, one after
    every 2 of its 8 convs.
    """
    cfg.MODEL.NONLOCAL = CN()
    # With MODEL.BACKBONE.NAME "build_nonlocal_backbone": the registered backbone that gets the
    # blocks. Any builder whose backbone is, or has as bottom_up, a Detectron2 ResNet built from
    # MODEL.RESNETS: "build_resnet_backbone" (C4 models), "build_resnet_fpn_backbone",
    # "build_retinanet_resnet_fpn_backbone", ...
    cfg.MODEL.NONLOCAL.BACKBONE_NAME = "build_resnet_fpn_backbone"
    # The block placed after the residual blocks RES2..RES5 name (and in the keypoint head):
    # "NL" (non-local), "CGNL" (compact generalized non-local) or "DNL" (disentangled non-local).
    cfg.MODEL.NONLOCAL.BLOCK = "NL"
    # NL pairwise function: "gaussian", "embedded_gaussian", "dot_product", "concatenation".
    cfg.MODEL.NONLOCAL.MODE = "embedded_gaussian"
    # Inner channels = block channels // REDUCTION (the paper's bottleneck: 2).
    cfg.MODEL.NONLOCAL.REDUCTION = 2
    # NL: 2x2 max pooling of the key side (phi and g).
    cfg.MODEL.NONLOCAL.SUB_SAMPLE = True
    # NL: scale embedded-Gaussian logits by 1/sqrt(inner channels) (authors' code); False: paper.
    cfg.MODEL.NONLOCAL.USE_SCALE = True
    # Norm after W_z: "GN", "SyncBN", "BN", "" or any Detectron2 norm name except FrozenBN.
    # GN trains with 1-2 images per GPU; BN needs large per-GPU batches.
    cfg.MODEL.NONLOCAL.NORM = "GN"
    # How each block's last layer starts, for every block kind: NL, CGNL and DNL's norm after W_z
    # (or W_z itself with NORM ""), GC's last conv of each fusion. "identity": zero, so a stock
    # checkpoint gives the stock model's outputs (the paper's choice; GC with "channel_mul" starts
    # at x / 2). "small": 0.1 of "standard"; "standard": the norm's weight 1, or the conv's MSRA
    # init.
    # Which INIT, as measured: "identity" to fine-tune a pre-trained model, and for a block with a
    # norm after W_z even from scratch (the quickstart: as good as "small", and "standard"
    # diverged); "standard" for a block without a norm trained from scratch (NORM "", the
    # long-range configs).
    cfg.MODEL.NONLOCAL.INIT = "identity"
    # With MODEL.META_ARCHITECTURE one of VALID_REGION_META_ARCHITECTURES: the backbone's blocks
    # compute each image on its valid (unpadded) region, with norm statistics over valid
    # positions, so that an image's features do not depend on its batch-mates' padding
    # (docs/valid_region.md). False: they attend over the padded map, as in the paper.
    cfg.MODEL.NONLOCAL.VALID_REGION = True
    # Backbone placement: per stage, indices of the residual blocks AFTER which a block is
    # inserted (0-based; negative counts from the stage's end). -2 = right before the last.
    # Paper, 1 block: RES4 = [-2]. 5 blocks (R50): RES3 = [1, 3], RES4 = [1, 3, 5].
    # 10 blocks (R50): RES3 = [0, 1, 2, 3], RES4 = [0, 1, 2, 3, 4, 5].
    cfg.MODEL.NONLOCAL.RES2 = []
    cfg.MODEL.NONLOCAL.RES3 = []
    cfg.MODEL.NONLOCAL.RES4 = [-2]
    cfg.MODEL.NONLOCAL.RES5 = []

    cfg.MODEL.NONLOCAL.CGNL = CN()
    # CGNL kernel: "dot", "embedded_gaussian" or "gaussian_rbf" (Yue et al. 2018, sec. 3.4).
    cfg.MODEL.NONLOCAL.CGNL.KERNEL = "dot"
    # CGNL channel groups (the paper's best on COCO-scale models: 8).
    cfg.MODEL.NONLOCAL.CGNL.GROUPS = 8
    # CGNL Taylor expansion order P for the Gaussian kernels.
    cfg.MODEL.NONLOCAL.CGNL.ORDER = 3
    # CGNL: divide the grouped sum by sqrt(N * C').
    cfg.MODEL.NONLOCAL.CGNL.USE_SCALE = False
    # CGNL: width gamma of the Gaussian RBF kernel.
    cfg.MODEL.NONLOCAL.CGNL.GAMMA = 1e-4

    cfg.MODEL.NONLOCAL.DNL = CN()
    # DNL: temperature T of the whitened pairwise softmax (Yin et al. 2020, mmsegmentation: 0.05).
    cfg.MODEL.NONLOCAL.DNL.TEMPERATURE = 0.05

    # GC (global context, Cao et al. 2019): a block inside every residual block of these stages,
    # on the residual branch before the addition; GCNet's c3-c5: ["res3", "res4", "res5"]. It
    # combines with the non-local blocks of RES2..RES5.
    cfg.MODEL.NONLOCAL.GC = CN()
    cfg.MODEL.NONLOCAL.GC.STAGES = []
    # GC bottleneck width = int(channels * RATIO) (GCNet's r16: 1/16).
    cfg.MODEL.NONLOCAL.GC.RATIO = 0.0625
    # GC context pooling: "att" (attention pooling) or "avg" (global average pooling).
    cfg.MODEL.NONLOCAL.GC.POOLING = "att"
    # GC fusion: a non-empty subset of ["channel_add", "channel_mul"].
    cfg.MODEL.NONLOCAL.GC.FUSION = ["channel_add"]

    # Before training: read every image file's header (exists, is an image, has the annotation
    # file's width and height). False skips these reads for data you trust; annotations are
    # always checked (nonlocal_det/data/coco_checks.py).
    cfg.DATALOADER.CHECK_IMAGES = True

    # Mixed precision (SOLVER.AMP.ENABLED, CUDA only): "float16" (Detectron2's default) or
    # "bfloat16". The non-local attention itself always runs in float32.
    cfg.SOLVER.AMP.PRECISION = "float16"

    for old, new in RENAMED_KEYS.items():
        if not cfg.key_is_renamed(old):
            cfg.register_renamed_key(old, new)

    # Keypoint head "KRCNNConvDeconvUpsampleNLHead": number of NL blocks (the paper: 4) ...
    cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_NONLOCAL = 4
    # ... one after every NONLOCAL_EVERY convs of the head (the paper: 2 of 8).
    cfg.MODEL.ROI_KEYPOINT_HEAD.NONLOCAL_EVERY = 2


# Keys of earlier versions -> their names now; a config that uses one gets an error naming both.
RENAMED_KEYS = {"MODEL.NONLOCAL.MASK_PADDING": "MODEL.NONLOCAL.VALID_REGION"}


def _config_keys(node, prefix: str = "") -> List[str]:
    """Every full key of a CfgNode or DictConfig ("MODEL.NONLOCAL.MODE", ...)."""
    keys = []
    for name, value in node.items():
        full = f"{prefix}{name}"
        keys += _config_keys(value, full + ".") if hasattr(value, "items") else [full]
    return keys


def unknown_key_error(key: str, cfg, where: str) -> ConfigError:
    """'<where>: KEY is not a config key; did you mean <nearest>?'."""
    nearest = difflib.get_close_matches(key, _config_keys(cfg), n=1, cutoff=0.6)
    hint = (
        f"; did you mean {nearest[0]}?"
        if nearest
        else " (add_nonlocal_config adds nonlocal_det's keys)."
    )
    return ConfigError(f"{where}: {key} is not a config key{hint}")


_UNKNOWN_KEY = re.compile(r"Non-existent (?:config )?key: (\S+)")


def _merging(cfg, merge, where: str) -> None:
    """
    ``merge()``, with Detectron2's KeyError/AssertionError/ValueError and YAML errors as
    ConfigError.
    """
    try:
        merge()
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} is not valid YAML: {' '.join(str(e).split())}") from None
    except (KeyError, AssertionError, ValueError) as e:
        message = str(e.args[0]) if e.args else str(e)
        unknown = _UNKNOWN_KEY.search(message)
        if unknown:
            raise unknown_key_error(unknown.group(1), cfg, where) from None
        raise ConfigError(f"{where}: {message}") from None


def _refuse_flags_among_overrides(overrides) -> None:
    """argparse gives everything after the first override to the overrides, flags included."""
    flags = [o for o in overrides if isinstance(o, str) and o.startswith("--")]
    if flags:
        raise ConfigError(
            f"{flags[0]} comes after the config overrides, so it was read as one of them; put "
            "flags such as --eval-only and --resume before the KEY VALUE overrides"
        )


def get_nonlocal_cfg(config_file: str, opts=()):
    """
    A Detectron2 config with the nonlocal_det keys, merged from ``config_file`` and
    ``opts`` (KEY VALUE ...), not frozen. ``MODEL.DEVICE`` falls back to "cpu" when it asks
    for CUDA and none is available, so configs run unchanged on CPU-only machines.

    Raises ConfigError for YAML syntax errors, unknown keys (with the nearest existing key) and
    values of the wrong type, naming the file or the command line.
    """
    import torch
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_nonlocal_config(cfg)
    where = f"--config-file {config_file}"
    _require_mapping(config_file, where)
    _merging(cfg, lambda: cfg.merge_from_file(config_file), where)
    _refuse_flags_among_overrides(opts)
    _merging(cfg, lambda: cfg.merge_from_list(list(opts)), "command-line override")
    check_config(cfg, f"{where} with its overrides" if opts else where)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def _require_mapping(config_file: str, where: str) -> None:
    """A YAML config must be a mapping of keys; an empty file or a list is named."""
    from detectron2.utils.file_io import PathManager

    try:
        with PathManager.open(config_file) as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{where} cannot be read ({e.strerror or e})") from None
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError:
        return  # reported with its line by the merge
    if not isinstance(content, dict):
        shape = "empty" if content is None else f"a {type(content).__name__}, not a mapping"
        raise ConfigError(
            f"{where} is {shape}: a config file holds KEY: value pairs (e.g. _BASE_: "
            '"Base-RCNN-FPN.yaml" and the keys it changes).'
        )


# --config-file extensions -> the kind of config train_net.py reads.
CONFIG_KINDS = {".yaml": "yaml", ".yml": "yaml", ".py": "lazy"}


def config_kind(config_file: str) -> str:
    """
    "yaml" (a Detectron2 CfgNode file) or "lazy" (a LazyConfig Python file), from the file's
    extension as Detectron2's model zoo does; UnsupportedSetupError for any other file.
    """
    from detectron2.utils.file_io import PathManager

    from .errors import MissingInputError, UnsupportedSetupError

    kind = CONFIG_KINDS.get(os.path.splitext(config_file)[1].lower())
    if kind is None:
        raise UnsupportedSetupError(
            f"--config-file {config_file}: not a config kind train_net.py reads; it accepts YAML "
            "configs "
            "(.yaml, .yml) and LazyConfig Python files (.py)."
        )
    if not PathManager.exists(config_file):
        raise MissingInputError(f"--config-file {config_file} does not exist.")
    return kind


def get_nonlocal_lazy_config(config_file: str, overrides=()):
    """
    A LazyConfig loaded from ``config_file`` with ``overrides`` ("key=value" ...) applied, as
    Detectron2's lazyconfig_train_net.py does. ``train.device`` falls back to "cpu" when it asks
    for CUDA and none is available, as ``get_nonlocal_cfg`` does for YAML configs.

    Raises ConfigError for a Python syntax error in the file and for overrides of keys the
    config does not have (with the nearest existing key).
    """
    import torch
    from detectron2.config import LazyConfig
    from omegaconf import OmegaConf

    try:
        cfg = LazyConfig.load(config_file)
    except SyntaxError as e:
        cause = e.__cause__ if isinstance(e.__cause__, SyntaxError) else e  # Detectron2 wraps it
        raise ConfigError(
            f"--config-file {config_file}: Python syntax error at line {cause.lineno}: {cause.msg}"
        ) from None
    _refuse_flags_among_overrides(overrides)
    missing = object()
    for override in overrides:
        key, sep, _ = override.partition("=")
        if not sep:
            raise ConfigError(f"override {override!r}: LazyConfig overrides are key=value")
        if OmegaConf.select(cfg, key.strip(), default=missing) is missing:
            raise unknown_key_error(key.strip(), cfg, "command-line override")
    cfg = LazyConfig.apply_overrides(cfg, list(overrides))
    check_config(cfg, f"--config-file {config_file}")
    if str(cfg.train.device).startswith("cuda") and not torch.cuda.is_available():
        cfg.train.device = "cpu"
    return cfg
