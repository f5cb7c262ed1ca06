"""tools/make_synthetic_dataset.py: reproducible, consistent COCO + PNG layouts, atomic."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from make_synthetic_dataset import CLASSES, DatasetSpec, make_dataset  # noqa: E402

SPEC = DatasetSpec(train=6, val=3, image_size=128, seed=7, videos=1, frames=3)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_reproducible_byte_for_byte(tmp_path):
    a = make_dataset(tmp_path / "a", SPEC)
    b = make_dataset(tmp_path / "b", SPEC)
    assert _digest(a) == _digest(b)
    c = make_dataset(tmp_path / "c", DatasetSpec(**{**SPEC.__dict__, "seed": 8}))
    assert _digest(a) != _digest(c)


def test_coco_and_png_layouts_agree(tmp_path):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    root = make_dataset(tmp_path / "d", SPEC)
    coco = COCO(str(root / "train" / "annotations.json"))
    assert len(coco.getImgIds()) == 6 and [c["name"] for c in coco.loadCats(coco.getCatIds())] == [c[0] for c in CLASSES]
    for img in coco.loadImgs(coco.getImgIds()):
        name = Path(img["file_name"]).stem
        ids = np.asarray(Image.open(root / "train" / "png" / "Annotations" / name / "00000.png"))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        assert len(anns) == ids.max() >= 1
        masks = sorted((mask_utils.decode(a["segmentation"]).astype(bool) for a in anns), key=lambda m: m.sum())
        from_png = sorted((ids == k for k in range(1, ids.max() + 1)), key=lambda m: m.sum())
        assert all(np.array_equal(m, p) for m, p in zip(masks, from_png))
        for a in anns:
            x, y, w, h = a["bbox"]
            m = mask_utils.decode(a["segmentation"])
            rows, cols = np.nonzero(m)
            assert (x, y, w, h) == (cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)
        jpg = root / "train" / "png" / "JPEGImages" / name / "00000.jpg"
        assert jpg.read_bytes() == (root / "train" / "images" / img["file_name"]).read_bytes()
    frames = sorted((root / "val" / "video" / "JPEGImages" / "vid0000").glob("*.jpg"))
    assert [f.name for f in frames] == ["00000.jpg", "00001.jpg", "00002.jpg"]
    info = json.loads((root / "dataset_info.json").read_text())
    assert info["counts"]["train"]["images"] == 6 and info["spec"]["seed"] == 7


def test_bad_input_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="multiple of 16"):
        make_dataset(tmp_path / "x", DatasetSpec(image_size=100))
    with pytest.raises(ValueError, match="min_instances"):
        make_dataset(tmp_path / "x", DatasetSpec(min_instances=3, max_instances=2))
    assert list(tmp_path.iterdir()) == []
    make_dataset(tmp_path / "x", DatasetSpec(train=1, val=0, image_size=64))
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_dataset(tmp_path / "x", DatasetSpec(train=1, val=0, image_size=64))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # no temp folder left behind
