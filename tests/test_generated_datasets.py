"""
The datasets nonlocal_det generates: regenerated only over the generator's own intact files, and
the pairs task's rule (every shape's team is its own partner lamp's glyph, read from the pixels).
"""

import json

import numpy as np
import pytest
from PIL import Image

from nonlocal_det.errors import BadDataError
from nonlocal_det.harness.data import pairs
from nonlocal_det.harness.data.coco_format import MARKER_KEY, marker_of
from nonlocal_det.harness.data.generated import PAIRS

SIZES = {"train": 3, "val": 2}


@pytest.fixture
def generated(tmp_path, monkeypatch):
    monkeypatch.setattr(pairs, "DEFAULT_SIZES", SIZES)
    root = tmp_path / "nonlocal_pairs"
    assert PAIRS.ensure(str(root)) is True  # missing: generated
    assert PAIRS.ensure(str(root)) is False  # intact and current: left alone
    return root / "annotations" / "train.json"


@pytest.mark.parametrize(
    "edit",
    [
        lambda text: text.replace('"seed": 0', '"seed": 0, "edited": 1', 1),
        lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "info"}),
        lambda text: "\ufeff" + text,  # a BOM written by an editor
        lambda text: text.replace('"iscrowd": 0', '"iscrowd": 1', 1),
    ],
    ids=["info edited", "info removed", "BOM", "an annotation edited"],
)
def test_a_file_the_generator_did_not_write_intact_is_never_overwritten(generated, edit):
    generated.write_text(edit(generated.read_text()), encoding="utf-8")
    before = generated.read_bytes()
    assert PAIRS.ensure(str(generated.parent.parent)) is False  # the user's file: used as it is
    (generated.parent / "val.json").unlink()  # a split to generate: it would be overwritten
    with pytest.raises(BadDataError, match=f"{generated} exists but is not a file"):
        PAIRS.ensure(str(generated.parent.parent))
    assert generated.read_bytes() == before


def test_the_generators_own_file_of_an_older_version_is_regenerated(generated):
    data = json.loads(generated.read_text())
    assert marker_of(str(generated)) == ("nonlocal_pairs", pairs.VERSION)
    data["info"]["version"] = 0  # an intact file of an older generator: its marker agrees
    marker = data["info"].pop(MARKER_KEY)
    from nonlocal_det.harness.data.coco_format import _digest

    data["info"][MARKER_KEY] = dict(marker, version=0, digest=_digest(data))
    generated.write_text(json.dumps(data))
    assert PAIRS.ensure(str(generated.parent.parent)) is True
    assert marker_of(str(generated)) == ("nonlocal_pairs", pairs.VERSION)


def _box_pixels(image, box):
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return image[y0:y1, x0:x1].reshape(-1, 3)


def test_every_shape_is_on_its_partner_lamps_team_and_only_the_lamp_says_which(tmp_path):
    """
    The rule, from the pixels (an oracle that sees the pairing): a shape's colour matches one
    lamp only; that lamp's centre shows its glyph (hollow: background, solid: the colour); the
    shape's category is that glyph. Its own pixels carry nothing of the team.
    """
    root = tmp_path / "p"
    pairs.generate(str(root), {"val": 12})
    coco = json.loads((root / "annotations" / "val.json").read_text())
    teams = {c["id"]: c["name"] for c in coco["categories"]}
    found = 0
    for record in coco["images"]:
        image = np.asarray(Image.open(root / "val" / record["file_name"]).convert("RGB"))
        assert len(record["pairs"]) == pairs.PAIRS
        lamps = [p["lamp_box"] for p in record["pairs"]]
        hues = [p["hue"] for p in record["pairs"]]
        gaps = [min(abs(a - b), 360 - abs(a - b)) for a in hues for b in hues if a != b]
        assert min(gaps) >= pairs.MIN_HUE_GAP
        assert (
            sorted(p["team"] for p in record["pairs"]) == ["team_hollow"] * 2 + ["team_solid"] * 2
        )
        for pair in record["pairs"]:
            colours = _box_pixels(image, pair["shape_box"]).astype(float)
            saturated = colours.max(1) - colours.min(1) > 60  # the background is grey
            shape_colour = np.median(colours[saturated], axis=0)
            distance = []
            for lamp in lamps:
                x0, y0, x1, y1 = lamp
                ring = image[int((y0 + y1) / 2), int(x0 + 5)]  # inside the rim, on the colour
                distance.append(np.abs(ring.astype(float) - shape_colour).sum())
            partner = lamps[int(np.argmin(distance))]
            assert partner == pair["lamp_box"]
            assert sorted(distance)[1] > 3 * sorted(distance)[0] + 30  # one lamp matches
            x0, y0, x1, y1 = partner
            centre = image[int((y0 + y1) / 2), int((x0 + x1) / 2)].astype(float)
            glyph = "team_solid" if np.abs(centre - shape_colour).sum() < 60 else "team_hollow"
            assert glyph == pair["team"]
            found += 1
        annotated = {
            tuple(a["bbox"]): teams[a["category_id"]]
            for a in coco["annotations"]
            if a["image_id"] == record["id"]
        }
        for pair in record["pairs"]:
            x0, y0, x1, y1 = pair["shape_box"]
            assert annotated[(x0, y0, x1 - x0, y1 - y0)] == pair["team"]
            assert all(max(x0 - lamp[2], lamp[0] - x1) >= pairs.MIN_GAP for lamp in lamps)
    assert found == 12 * pairs.PAIRS


def test_the_command_line_generator_writes_the_splits_it_is_asked_for(
    tmp_path, monkeypatch, capsys
):
    from nonlocal_det.harness.data import __main__ as command

    out = tmp_path / "pairs"
    argv = ["data", "--dataset", "pairs", "--out", str(out), "--train", "2", "--val", "1"]
    monkeypatch.setattr("sys.argv", argv)
    command.main()
    printed = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert printed == {s: str(out / "annotations" / f"{s}.json") for s in ("train", "val")}
    for split, count in (("train", 2), ("val", 1)):
        assert (
            len(json.loads((out / "annotations" / f"{split}.json").read_text())["images"]) == count
        )
        assert marker_of(printed[split]) == ("nonlocal_pairs", pairs.VERSION)
