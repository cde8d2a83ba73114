"""
Loading a YAML or LazyConfig file for train_net.py and the tools, with every mistake named in one
line: the file, the key (with the nearest existing one), the value.
"""

import difflib
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
