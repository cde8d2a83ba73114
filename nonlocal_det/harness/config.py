"""
Loading a YAML or LazyConfig file for train_net.py and the tools, with every mistake named in one
line: the file, the key (with the nearest existing one), the value.
"""

import difflib
import functools
import os
import re

import yaml

from nonlocal_det.config import add_nonlocal_config
from nonlocal_det.errors import ConfigError, MissingInputError, UnsupportedSetupError

from .config_rules import check_config


def _config_keys(node, prefix: str = ""):
    """Every full key of a CfgNode or DictConfig ("MODEL.NONLOCAL.MODE", ...)."""
    keys = []
    for name, value in node.items():
        full = f"{prefix}{name}"
        keys += _config_keys(value, full + ".") if hasattr(value, "items") else [full]
    return keys


def unknown_key_error(key: str, cfg, where: str) -> ConfigError:
    """'<where>: KEY is not a config key; did you mean <nearest>?'."""
    nearest = difflib.get_close_matches(key, _config_keys(cfg), n=1, cutoff=0.6)
    hint = " (add_nonlocal_config adds nonlocal_det's keys)."
    if nearest:
        hint = f"; did you mean {nearest[0]}?"
    return ConfigError(f"{where}: {key} is not a config key{hint}")


def _merging(cfg, merge, where: str) -> None:
    """``merge()``, with Detectron2's Key/Assertion/ValueError and YAML's as ConfigError."""
    try:
        merge()
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} is not valid YAML: {' '.join(str(e).split())}") from None
    except (KeyError, AssertionError, ValueError) as e:
        message = str(e.args[0]) if e.args else str(e)
        unknown = re.search(r"Non-existent (?:config )?key: (\S+)", message)
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


@functools.lru_cache(maxsize=1)
def _defaults():
    """Detectron2's keys, the library's (``add_nonlocal_config``) and train_net.py's harness's."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_nonlocal_config(cfg)
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
    return cfg


def default_config():
    """A copy of the defaults (``_defaults``)."""
    return _defaults().clone()


def get_nonlocal_cfg(config_file: str, opts=()):
    """A Detectron2 config with nonlocal_det's keys from ``config_file`` and ``opts`` (KEY VALUE
    ...), unfrozen; MODEL.DEVICE cuda becomes cpu without CUDA. ConfigError names any mistake."""
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
    """A YAML config and the files its ``_BASE_`` names, in turn: each readable, a mapping, no key
    given twice; a ``_BASE_`` that is missing or leads back into the chain is named."""
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


def config_kind(config_file: str) -> str:
    """The kind of ``config_file`` by its extension, as Detectron2's zoo: "yaml" or "lazy" (.py)."""
    from detectron2.utils.file_io import PathManager

    extension = os.path.splitext(config_file)[1].lower()
    kind = {".yaml": "yaml", ".yml": "yaml", ".py": "lazy"}.get(extension)
    if kind is None:
        raise UnsupportedSetupError(
            f"--config-file {config_file}: not a config kind train_net.py reads; it accepts YAML "
            "configs (.yaml, .yml) and LazyConfig Python files (.py)."
        )
    if not PathManager.exists(config_file):
        raise MissingInputError(f"--config-file {config_file} does not exist.")
    return kind


def get_nonlocal_lazy_config(config_file: str, overrides=()):
    """The LazyConfig of ``config_file`` and ``overrides`` (key=value, as lazyconfig_train_net.py),
    train.device as in ``get_nonlocal_cfg``; ConfigError for a syntax error or an unknown key."""
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
