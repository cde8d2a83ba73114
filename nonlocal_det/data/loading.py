"""
Loading a registered dataset with checks, so that bad data stops a run before training with a
message naming the file and the problem, instead of a traceback from inside the data loader or,
worse, silently wrong labels.

Checked: the annotation file parses; every image file exists; every category id is one the
model predicts (``MODEL.ROI_HEADS.NUM_CLASSES``); every keypoint annotation has
``MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS`` points; the training filters (no annotations, too few
keypoints) leave at least one image. What the model handles correctly is left alone: images
without annotations (skipped in training as Detectron2 does, evaluated), grayscale and RGBA
images (read as RGB), images of any size (resized), keypoints outside their box (not used as
targets).
"""

import itertools
import json
import logging
import os
from typing import Dict, List

import detectron2.utils.comm as comm
import torch.utils.data as torchdata
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.build import (
    filter_images_with_few_keypoints,
    filter_images_with_only_crowd_annotations,
    load_proposals_into_dataset,
    print_instances_class_histogram,
)
from detectron2.data.detection_utils import check_metadata_consistency
from detectron2.utils.file_io import PathManager

from ..preflight import BadDataError, MissingInputError
from . import coco_checks
from .datasets import ensure_generated_datasets

logger = logging.getLogger(__name__)

_SHOWN = 3  # offending files listed in a message
# The config section whose NUM_CLASSES a meta-architecture predicts, for the label checks.
_CLASSES_SECTION = {
    "GeneralizedRCNN": "ROI_HEADS",
    "NonLocalGeneralizedRCNN": "ROI_HEADS",
    "RetinaNet": "RETINANET",
    "NonLocalRetinaNet": "RETINANET",
}


def _source(name: str) -> str:
    json_file = MetadataCatalog.get(name).get("json_file", None)
    return f"annotation file {json_file}" if json_file else "its registered loader"


def _listing(items: List[str]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def _not_json(name: str, error: json.JSONDecodeError) -> BadDataError:
    return BadDataError(
        f"Dataset {name!r}: {_source(name)} is not valid JSON ({error}). The file is truncated or "
        "corrupt; download or generate it again."
    )


def load_dataset(name: str, check_images: bool) -> List[Dict]:
    """
    ``DatasetCatalog.get(name)``, after the checks of its COCO file (``check_coco_file``), with
    unreadable annotation files reported by name.
    """
    if name not in DatasetCatalog.list():
        raise BadDataError(
            f"Dataset {name!r} is not registered. Register it before training (e.g. Detectron2's "
            "register_coco_instances) or use a registered one, such as the builtin COCO names or "
            "nonlocal_synthetic_train / nonlocal_synthetic_val."
        )
    check_coco_file(name, check_images)
    try:
        dicts = DatasetCatalog.get(name)
    except json.JSONDecodeError as e:
        raise _not_json(name, e) from None
    except KeyError as e:
        if "category_id" not in str(e):
            raise
        # Detectron2's COCO loader: an annotation's category_id missing from "categories".
        raise BadDataError(
            f"Dataset {name!r}: {_source(name)}: {e.args[0]} Add that category to the file's "
            '"categories" or remove its annotations.'
        ) from None
    if not isinstance(dicts, list):  # a torch Dataset: nothing to check here
        return dicts
    if not dicts:
        raise BadDataError(f"Dataset {name!r}: {_source(name)} lists no images.")
    return dicts


def check_coco_file(name: str, check_images: bool) -> None:
    """
    For a dataset registered from a COCO json (``json_file`` in its metadata): every problem of
    its annotations and, with ``check_images``, of its image files (``coco_checks``), raised
    together as one BadDataError.
    """
    meta = MetadataCatalog.get(name)
    json_file = meta.get("json_file", None)
    if not json_file:
        return
    try:
        with PathManager.open(json_file) as f:
            coco = json.load(f)
    except json.JSONDecodeError as e:
        raise _not_json(name, e) from None
    problems = coco_checks.annotation_problems(coco)
    image_problems = (
        coco_checks.image_problems(coco, meta.get("image_root", "")) if check_images else []
    )
    problems += image_problems
    if problems:
        skip = "\n  (DATALOADER.CHECK_IMAGES False skips the image-file checks)"
        raise BadDataError(
            coco_checks.format_problems(f"Dataset {name!r} ({json_file})", problems)
            + (skip if image_problems else "")
        )


def check_dataset_dicts(name: str, dicts: List[Dict], cfg) -> None:
    """
    Raise BadDataError naming files whose images are missing or whose labels the model cannot use.
    """
    if not isinstance(dicts, list):
        return
    missing = [d["file_name"] for d in dicts if not os.path.isfile(d["file_name"])]
    if missing:
        raise BadDataError(
            f"Dataset {name!r}: {len(missing)} of {len(dicts)} image files listed in "
            f"{_source(name)} do not "
            f"exist: {_listing(missing)}. Restore them or remove them from the annotation file."
        )
    section = _CLASSES_SECTION.get(cfg.MODEL.META_ARCHITECTURE)
    if section is None:  # a meta-architecture whose labels are not checked here
        return
    num_classes = cfg.MODEL[section].NUM_CLASSES
    classes_key = f"MODEL.{section}.NUM_CLASSES"
    bad_class = sorted(
        {
            f"{d['file_name']} (category {a['category_id']})"
            for d in dicts
            for a in d.get("annotations", [])
            if not 0 <= a["category_id"] < num_classes
        }
    )
    if bad_class:
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        known = f"; the dataset's categories are {len(classes)}: {classes}" if classes else ""
        raise BadDataError(
            f"Dataset {name!r}: annotations with a category outside the model's "
            f"{classes_key}={num_classes} classes (contiguous ids "
            f"0..{num_classes - 1}){known}. "
            f"Images: {_listing(bad_class)}. Set {classes_key} to the number of categories."
        )
    if cfg.MODEL.KEYPOINT_ON and section == "ROI_HEADS":
        expected = 3 * cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS
        bad_kps = sorted(
            {
                f"{d['file_name']} ({len(a['keypoints']) // 3} keypoints)"
                for d in dicts
                for a in d.get("annotations", [])
                if "keypoints" in a and len(a["keypoints"]) != expected
            }
        )
        if bad_kps:
            raise BadDataError(
                f"Dataset {name!r}: keypoint annotations that do not have "
                f"MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS={expected // 3} (x, y, v) triplets: "
                f"{_listing(bad_kps)}."
            )


def _with_proposals(dicts, names, proposal_files, cfg):
    if not cfg.MODEL.LOAD_PROPOSALS:
        return dicts
    return [load_proposals_into_dataset(d, proposal_files[n]) for d, n in zip(dicts, names)]


def training_dataset_dicts(cfg) -> List[Dict]:
    """
    The records of ``cfg.DATASETS.TRAIN``, checked, then filtered as Detectron2 does
    (``DATALOADER.FILTER_EMPTY_ANNOTATIONS``, ``MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE``);
    raises BadDataError rather than train on nothing.
    """
    names = list(cfg.DATASETS.TRAIN)
    per_dataset = [load_dataset(name, cfg.DATALOADER.CHECK_IMAGES) for name in names]
    if not all(
        isinstance(dicts, list) for dicts in per_dataset
    ):  # torch Datasets: used as they are
        return per_dataset[0] if len(per_dataset) == 1 else torchdata.ConcatDataset(per_dataset)
    for name, dicts in zip(names, per_dataset):
        check_dataset_dicts(name, dicts, cfg)
    per_dataset = _with_proposals(
        per_dataset, names, dict(zip(names, cfg.DATASETS.PROPOSAL_FILES_TRAIN)), cfg
    )
    dicts = list(itertools.chain.from_iterable(per_dataset))
    total = len(dicts)
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        dicts = filter_images_with_only_crowd_annotations(dicts)
    with_annotations = len(dicts)
    min_keypoints = (
        cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
    )
    if min_keypoints > 0:
        dicts = filter_images_with_few_keypoints(dicts, min_keypoints)
    if not dicts:
        reasons = []
        if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
            reasons.append(
                f"{total - with_annotations} have no non-crowd annotation "
                "(DATALOADER.FILTER_EMPTY_ANNOTATIONS=True)"
            )
        if min_keypoints > 0:
            reasons.append(
                f"{with_annotations} have fewer than "
                f"MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE={min_keypoints} "
                "visible keypoints"
            )
        raise BadDataError(
            f"No training image left in {names}: of {total} images, {' and '.join(reasons)}. "
            f"Check the annotation files ({', '.join(_source(n) for n in names)})."
        )
    classes = MetadataCatalog.get(names[0]).get("thing_classes", None)
    if classes is not None:
        check_metadata_consistency("thing_classes", names)
        print_instances_class_histogram(dicts, classes)
    return dicts


def evaluation_dataset_dicts(cfg, name: str) -> List[Dict]:
    """
    The records of test dataset ``name``, checked (nothing is filtered: every image is evaluated).
    """
    dicts = load_dataset(name, cfg.DATALOADER.CHECK_IMAGES)
    check_dataset_dicts(name, dicts, cfg)
    proposal_files = dict(zip(cfg.DATASETS.TEST, cfg.DATASETS.PROPOSAL_FILES_TEST))
    return _with_proposals([dicts], [name], proposal_files, cfg)[0]


def _lazy_dataset_names(loader) -> List[str]:
    """
    The dataset names of a LazyConfig data loader built as Detectron2's common/data configs do.
    """
    names = loader.get("dataset", {}).get("names", []) if loader is not None else []
    return [names] if isinstance(names, str) else list(names)


def config_dataset_names(cfg, eval_only: bool) -> List[str]:
    """The test datasets (and training datasets unless ``eval_only``) of a YAML or LazyConfig."""
    if "DATASETS" in cfg:
        return list(cfg.DATASETS.TEST) + ([] if eval_only else list(cfg.DATASETS.TRAIN))
    dataloader = cfg.get("dataloader", {})
    return _lazy_dataset_names(dataloader.get("test")) + (
        [] if eval_only else _lazy_dataset_names(dataloader.get("train"))
    )


def check_datasets(cfg, eval_only: bool) -> None:
    """
    Before training or evaluating: generate the datasets nonlocal_det generates itself if the config
    uses them and they are missing or stale, and name missing dataset files (MissingInputError).
    For YAML configs, also check the
    evaluation datasets' records now (the training ones are checked as the loader is built), so
    that bad data does not stop a run only at its end.
    """
    names = config_dataset_names(cfg, eval_only)
    if comm.is_main_process():
        for directory in ensure_generated_datasets(names):
            logger.info(f"Generated the dataset {directory}")
    comm.synchronize()
    for name in names:
        meta = MetadataCatalog.get(name)
        for attr in ("json_file", "image_root"):
            path = meta.get(attr, None)
            if path and not PathManager.exists(path):
                raise MissingInputError(
                    f"Dataset {name!r}: {attr} {path} does not exist. Detectron2 looks for "
                    "datasets "
                    "under $DETECTRON2_DATASETS (now "
                    f"{os.environ.get('DETECTRON2_DATASETS', 'unset, so ./datasets')}); "
                    "see datasets/README.md for the layout."
                )
    if "DATASETS" in cfg and not eval_only:
        for name in cfg.DATASETS.TEST:
            evaluation_dataset_dicts(cfg, name)
