"""
Loading a YAML or LazyConfig file for train_net.py and the tools, with every mistake named in one
line: the file, the key (with the nearest existing one), the value.
"""

import difflib
import functools
import os
import re
from typing import List

import yaml

from nonlocal_det.config import add_nonlocal_config
from nonlocal_det.errors import ConfigError, MissingInputError, UnsupportedSetupError

from .config_rules import check_config


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


def add_harness_config(cfg) -> None:
    """The keys of train_net.py's harness, beside the library's (``add_nonlocal_config``)."""
    # Before training: read every image file's header and last bytes (exists, is a whole image
    # of the annotation file's size). False skips these reads for data you trust; annotations
    # are always checked (docs/reliability.md).
    cfg.DATALOADER.CHECK_IMAGES = True
    # Mixed precision (SOLVER.AMP.ENABLED, CUDA only): "float16" (Detectron2's default) or
    # "bfloat16". The non-local attention itself always runs in float32.
    cfg.SOLVER.AMP.PRECISION = "float16"
    # Before the first iteration: run every stage once on a small sample (the augmentations
    # and mappers, one training step, the evaluator), so that a failure comes first, named.
    cfg.DRY_RUN = True


@functools.lru_cache(maxsize=1)
def _defaults():
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_nonlocal_config(cfg)
    add_harness_config(cfg)
    return cfg


def default_config():
    """A copy of the defaults: Detectron2's, the library's and the harness's keys."""
    return _defaults().clone()


def get_nonlocal_cfg(config_file: str, opts=()):
    """
    A Detectron2 config with the nonlocal_det keys, merged from ``config_file`` and
    ``opts`` (KEY VALUE ...), not frozen. ``MODEL.DEVICE`` falls back to "cpu" when it asks
    for CUDA and none is available, so configs run unchanged on CPU-only machines.

    Raises ConfigError for YAML syntax errors, unknown keys (with the nearest existing key) and
    values of the wrong type, naming the file or the command line.
    """
    import torch

    cfg = default_config()
    where = f"--config-file {config_file}"
    _check_yaml_files(config_file, where)
    _merging(cfg, lambda: cfg.merge_from_file(config_file), where)
    _refuse_flags_among_overrides(opts)
    _merging(cfg, lambda: cfg.merge_from_list(list(opts)), "command-line override")
    check_config(cfg, f"{where} with its overrides" if opts else where)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        repeated = sorted({str(k) for k in keys if keys.count(k) > 1})
        if repeated:
            raise ConfigError(
                f"{self.name}: key {repeated[0]} is given twice in one mapping (line "
                f"{node.start_mark.line + 1}); YAML would keep the last silently: keep one"
            )
        return super().construct_mapping(node, deep=deep)


def _check_yaml_files(config_file: str, where: str, chain=()) -> None:
    """
    A YAML config and the files its ``_BASE_`` names, in turn: each readable, a mapping, with no
    key given twice; a ``_BASE_`` that is missing or leads back to a file of the chain is named.
    """
    from detectron2.utils.file_io import PathManager

    if config_file in chain:
        cycle = " -> ".join([*chain[chain.index(config_file) :], config_file])
        raise ConfigError(f"{where}: _BASE_ leads in a circle: {cycle}; break it")
    try:
        with PathManager.open(config_file) as f:
            text = f.read()
    except OSError as e:
        named = f"_BASE_ {config_file} (named by {chain[-1]})" if chain else where
        raise ConfigError(f"{named} cannot be read ({e.strerror or e})") from None
    loader = _UniqueKeyLoader(text)
    loader.name = config_file
    try:
        content = loader.get_single_data()
    except yaml.YAMLError:
        return  # reported with its line by the merge (or a tag the safe loader does not know)
    finally:
        loader.dispose()
    if not isinstance(content, dict):
        shape = "empty" if content is None else f"a {type(content).__name__}, not a mapping"
        raise ConfigError(
            f"{where if not chain else config_file} is {shape}: a config file holds KEY: value "
            'pairs (e.g. _BASE_: "Base-RCNN-FPN.yaml" and the keys it changes).'
        )
    base = content.get("_BASE_")
    if isinstance(base, str):
        if not base.startswith(("/", "~")) and "://" not in base:
            base = os.path.join(os.path.dirname(config_file), base)
        _check_yaml_files(os.path.expanduser(base), where, (*chain, config_file))


# --config-file extensions -> the kind of config train_net.py reads.
CONFIG_KINDS = {".yaml": "yaml", ".yml": "yaml", ".py": "lazy"}


def config_kind(config_file: str) -> str:
    """
    "yaml" (a Detectron2 CfgNode file) or "lazy" (a LazyConfig Python file), from the file's
    extension as Detectron2's model zoo does; UnsupportedSetupError for any other file.
    """
    from detectron2.utils.file_io import PathManager

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
