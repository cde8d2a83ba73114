"""
Loading registered datasets with checks, so that bad data stops a run before training with a
message naming the file and the problem, not a traceback from the data loader or silently wrong
labels: COCO files against the data rules (``coco_checks``), the records against the model (image
files exist, category ids it predicts, keypoint counts), the training filters (an image is left).
What the model handles correctly is left alone: images without annotations, grayscale and RGBA
images, images of any size, keypoints outside their box.
"""

import json
import logging
import os
from typing import Dict, List

import detectron2.utils.comm as comm
from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.data.build import filter_images_with_only_crowd_annotations
from detectron2.utils.file_io import PathManager

from nonlocal_det.errors import ConfigError

from ..config_rules import is_yaml, lookup
from ..io import listing
from ..preflight import BadDataError, MissingInputError
from .coco_checks import Needs, annotation_problems, format_problems, image_problems, split_problems
from .generated import ensure_generated_datasets

logger = logging.getLogger(__name__)

# The config section whose NUM_CLASSES a meta-architecture predicts, for the label checks (the
# NonLocal variants read the same sections as Detectron2's).
_CLASSES_SECTION = {"GeneralizedRCNN": "ROI_HEADS", "RetinaNet": "RETINANET"}
_CLASSES_SECTION.update({f"NonLocal{arch}": key for arch, key in _CLASSES_SECTION.items()})


def _source(name: str) -> str:
    json_file = MetadataCatalog.get(name).get("json_file", None)
    return f"annotation file {json_file}" if json_file else "its registered loader"


def _not_json(name: str, error: json.JSONDecodeError) -> BadDataError:
    return BadDataError(
        f"Dataset {name!r}: {_source(name.split(',')[0])} is not valid JSON ({error}). The file "
        "is truncated or corrupt; download or generate it again."
    )


# (json file, its modification time, needs, image checks): files the data rules passed already.
_PASSED = set()


def check_dataset_files(cfg, names: List[str]) -> None:
    """
    The COCO json of each dataset of ``names`` that has one against the data rules for this config
    (image files too with DATALOADER.CHECK_IMAGES), then the files together; one BadDataError names
    every file with problems. A file that passed with the same needs is not read again.
    """
    splits, messages = [], []
    keypoints = cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS if cfg.MODEL.KEYPOINT_ON else 0
    for name in dict.fromkeys(names):
        if name not in DatasetCatalog.list():
            raise BadDataError(
                f"Dataset {name!r} is not registered. Register it before training (e.g. "
                "Detectron2's register_coco_instances) or use a registered one, such as the "
                "builtin COCO names or nonlocal_synthetic_train / nonlocal_synthetic_val."
            )
        meta = MetadataCatalog.get(name)
        json_file = meta.get("json_file", None)
        if not json_file:
            continue
        evaluated = name in cfg.DATASETS.TEST
        needs = Needs(cfg.MODEL.MASK_ON, cfg.INPUT.MASK_FORMAT, keypoints, evaluated)
        key = (json_file, os.path.getmtime(json_file), needs, cfg.DATALOADER.CHECK_IMAGES)
        try:
            with PathManager.open(json_file, encoding="utf-8") as f:
                coco = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _not_json(name, e) from None
        splits.append((name, coco, needs.evaluated))
        if key in _PASSED:
            continue
        problems, skip = annotation_problems(coco, needs), ""
        if cfg.DATALOADER.CHECK_IMAGES and not any(p.record == "the file" for p in problems):
            problems += image_problems(coco, meta.get("image_root", ""))
            skip = "\n  (DATALOADER.CHECK_IMAGES False skips these reads)"
        if problems:
            messages.append(format_problems(f"Dataset {name!r} ({json_file})", problems) + skip)
        else:
            _PASSED.add(key)
    splits.sort(key=lambda split: split[2])  # the training splits first
    across = split_problems(splits) if len(splits) > 1 else []
    if across:
        messages.append(format_problems(f"Datasets {[s[0] for s in splits]}", across))
    if messages:
        raise BadDataError("\n".join(messages))


def _load(names: List[str], **kwargs):
    """``get_detection_dataset_dicts``, with its loaders' errors for a bad annotation file as
    BadDataError naming the dataset."""
    try:
        return get_detection_dataset_dicts(names, **kwargs)
    except json.JSONDecodeError as e:
        raise _not_json(",".join(names), e) from None
    except KeyError as e:
        if "category_id" not in str(e):
            raise
        # Detectron2's COCO loader: an annotation's category_id missing from "categories".
        raise BadDataError(
            f"Datasets {names}: {e.args[0]} Add that category to the annotation file's "
            '"categories" or remove its annotations.'
        ) from None
    except AssertionError as e:
        if "is empty" not in str(e):
            raise
        raise BadDataError(f"{e} Its {_source(names[0])} lists no images.") from None


def check_dataset_dicts(names: List[str], dicts: List[Dict], cfg) -> None:
    """BadDataError naming records whose labels the model cannot use, or whose image files are
    missing (unless the data rules checked them)."""
    if not isinstance(dicts, list):  # a torch Dataset: used as it is
        return
    json_files = (MetadataCatalog.get(n).get("json_file", None) for n in names)
    checked = cfg.DATALOADER.CHECK_IMAGES and all(json_files)  # by the data rules
    missing = [] if checked else [d["file_name"] for d in dicts]
    missing = [f for f in missing if not os.path.isfile(f)]
    if missing:
        raise BadDataError(
            f"Datasets {names}: {len(missing)} of {len(dicts)} image files do not exist: "
            f"{listing(missing)}. Restore them or remove them from the dataset."
        )
    section = _CLASSES_SECTION.get(cfg.MODEL.META_ARCHITECTURE)
    if section is None:  # a meta-architecture whose labels are not checked here
        return
    num_classes = cfg.MODEL[section].NUM_CLASSES
    classes_key = f"MODEL.{section}.NUM_CLASSES"
    labels = [(d, a) for d in dicts for a in d.get("annotations", [])]
    outside = [(d, a) for d, a in labels if not 0 <= a["category_id"] < num_classes]
    bad_class = sorted({f"{d['file_name']} (category {a['category_id']})" for d, a in outside})
    if bad_class:
        classes = MetadataCatalog.get(names[0]).get("thing_classes", None)
        known = f"; the dataset's categories are {len(classes)}: {classes}" if classes else ""
        raise BadDataError(
            f"Datasets {names}: annotations with a category outside the model's "
            f"{classes_key}={num_classes} classes (contiguous ids 0..{num_classes - 1}){known}. "
            f"Images: {listing(bad_class)}. Set {classes_key} to the number of categories."
        )
    if cfg.MODEL.KEYPOINT_ON and section == "ROI_HEADS":
        expected = 3 * cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS
        wrong = [(d, a) for d, a in labels if "keypoints" in a and len(a["keypoints"]) != expected]
        bad = sorted({f"{d['file_name']} ({len(a['keypoints']) // 3} keypoints)" for d, a in wrong})
        if bad:
            raise BadDataError(
                f"Datasets {names}: keypoint annotations that do not have "
                f"MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS={expected // 3} (x, y, v) triplets: "
                f"{listing(bad)}."
            )


def _nothing_left(names: List[str], cfg, min_keypoints: int) -> BadDataError:
    """Why Detectron2's training filters left no image: counted on the unfiltered records."""
    dicts = _load(names, filter_empty=False, min_keypoints=0, check_consistency=False)
    with_annotations = filter_images_with_only_crowd_annotations(dicts)
    reasons = []
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        reasons.append(
            f"{len(dicts) - len(with_annotations)} have no non-crowd annotation "
            "(DATALOADER.FILTER_EMPTY_ANNOTATIONS=True)"
        )
    if min_keypoints > 0:
        reasons.append(
            f"{len(with_annotations)} have fewer than "
            f"MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE={min_keypoints} visible keypoints"
        )
    return BadDataError(
        f"No training image left in {names}: of {len(dicts)} images, {' and '.join(reasons)}. "
        f"Check the annotation files ({', '.join(_source(n) for n in names)})."
    )


def checked_dataset_dicts(cfg, names: List[str], *, training: bool):
    """
    ``get_detection_dataset_dicts`` for ``names`` with the config's filters and proposal files
    (training: as ``build_detection_train_loader`` reads them; evaluation: no filter), the files
    and records checked: BadDataError before anything trains.
    """
    check_dataset_files(cfg, names)
    proposals = cfg.DATASETS.PROPOSAL_FILES_TRAIN if training else cfg.DATASETS.PROPOSAL_FILES_TEST
    keypoints = training and cfg.MODEL.KEYPOINT_ON
    min_keypoints = cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if keypoints else 0
    try:
        dicts = _load(
            names,
            filter_empty=training and cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=min_keypoints,
            proposal_files=list(proposals) if cfg.MODEL.LOAD_PROPOSALS else None,
            check_consistency=training,
        )
    except AssertionError as e:
        if "No valid data found" not in str(e):
            raise
        raise _nothing_left(names, cfg, min_keypoints) from None
    check_dataset_dicts(names, dicts, cfg)
    return dicts


def training_dataset_dicts(cfg):
    """The checked, filtered records of ``cfg.DATASETS.TRAIN`` (``checked_dataset_dicts``)."""
    return checked_dataset_dicts(cfg, list(cfg.DATASETS.TRAIN), training=True)


def evaluation_dataset_dicts(cfg, name: str):
    """The checked records of test dataset ``name``; nothing is filtered."""
    return checked_dataset_dicts(cfg, [name], training=False)


def _lazy_dataset_names(cfg, split: str) -> List[str]:
    """The dataset names of a LazyConfig's data loader ``split``, built as Detectron2's are."""
    loader = cfg.get("dataloader", {}).get(split)
    names = loader.get("dataset", {}).get("names", []) if loader is not None else []
    return [names] if isinstance(names, str) else list(names)


def config_dataset_names(cfg, eval_only: bool) -> List[str]:
    """The test datasets (and training datasets unless ``eval_only``) of a YAML or LazyConfig."""
    splits = ["test"] if eval_only else ["test", "train"]
    if is_yaml(cfg):
        return [name for split in splits for name in cfg.DATASETS[split.upper()]]
    return [name for split in splits for name in _lazy_dataset_names(cfg, split)]


def check_datasets(cfg, eval_only: bool) -> None:
    """
    Before training or evaluating: generate the generated datasets the config uses if missing or
    stale, name missing dataset files (MissingInputError) and, for YAML configs, check every file
    the run reads against the data rules, so that bad data does not stop a run only at its end.
    """
    names = config_dataset_names(cfg, eval_only)
    key, role = ("DATASETS.TEST", "to evaluate") if eval_only else ("DATASETS.TRAIN", "to train on")
    if is_yaml(cfg) and not lookup(cfg, key):
        raise ConfigError(f"{key} is empty: name the dataset(s) {role} (registered names)")
    if comm.is_main_process():
        for directory in ensure_generated_datasets(names):
            logger.info(f"Generated the dataset {directory}")
    comm.synchronize()
    for name in names:
        meta = MetadataCatalog.get(name)
        for attr in ("json_file", "image_root"):
            path = meta.get(attr, None)
            if path and not PathManager.exists(path):
                root = os.environ.get("DETECTRON2_DATASETS", "unset, so ./datasets")
                raise MissingInputError(
                    f"Dataset {name!r}: {attr} {path} does not exist. Detectron2 looks for "
                    f"datasets under $DETECTRON2_DATASETS (now {root}); see datasets/README.md "
                    "for the layout."
                )
    if is_yaml(cfg):
        check_dataset_files(cfg, names)
    elif not eval_only:
        check_lazy_classes(cfg)


def check_lazy_classes(cfg) -> None:
    """A LazyConfig model predicting fewer classes than its training sets hold: one line."""
    names = _lazy_dataset_names(cfg, "train")
    for key in ("model.roi_heads.num_classes", "model.num_classes"):
        predicted = lookup(cfg, key, None)
        if not isinstance(predicted, int):
            continue
        for name in names:
            if MetadataCatalog.get(name).get("thing_classes", None) is None:
                DatasetCatalog.get(name)  # a COCO loader records its categories as it loads
            classes = MetadataCatalog.get(name).get("thing_classes", None) or []
            if len(classes) > predicted:
                raise ConfigError(
                    f"{key}={predicted}, but dataset {name!r} has {len(classes)} categories "
                    f"({listing(classes, 5)}): set {key}={len(classes)}"
                )
