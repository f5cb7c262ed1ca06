"""Bad few-shot inputs stop in one line (exit 2) naming the value or file, before anything is
written (issue 15): COCO files, banks, results, options, image folders and undecodable images;
plus the counts of skipped annotations and the readable overlays."""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import clear_references

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from make_synthetic_dataset import DatasetSpec, make_dataset  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from sam2_vitplug.cli import main

    root = tmp_path_factory.mktemp("fewshot_inputs")
    shapes = make_dataset(root / "shapes", DatasetSpec(train=3, val=2, image_size=128, seed=8, min_instances=2,
                                                       max_instances=3))
    refs = clear_references(shapes / "train" / "annotations.json", root / "refs.json")
    bank = root / "bank.safetensors"
    assert main(["fewshot", "memory", *_memory_tail(refs, shapes / "train" / "images", bank)]) == 0
    data = {"shapes": shapes, "refs": refs, "bank": bank, "results": root / "res.json"}
    assert main(_run_argv(data, root)) == 0
    assert json.loads(data["results"].read_text()), "the fixture run found nothing to evaluate"
    return data


def _memory_tail(refs: Path, images: Path, out: Path) -> list[str]:
    return ["--refs", str(refs), "--images", str(images), "--shots", "1", "--encoder", "dinov2_demo",
            "--out", str(out), "--device", "cpu", "--set", "memory.min_size=16"]


def _refuses(argv: list[str], capsys, out_dir: Path, *needles: str) -> str:
    """Run ``argv``; assert exit 2, one ``error:`` line holding every needle, nothing in ``out_dir``."""
    from sam2_vitplug.cli import main

    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("sam2-vitplug: error: "), err
    assert "Traceback" not in "\n".join(err)
    for needle in needles:
        assert needle in err[-1], (needle, err[-1])
    assert not out_dir.exists() or not any(out_dir.iterdir()), sorted(out_dir.iterdir())
    return err[-1]


def _edit_refs(setup, edit) -> dict:
    coco = json.loads(Path(setup["refs"]).read_text())
    result = edit(coco)  # an edit returns a list only to replace the whole file
    return result if isinstance(result, list) else coco


def _first_ann(coco: dict) -> dict:
    return coco["annotations"][0]


MEMORY_CASES = {
    "top level a list": (lambda c: [c], ["top level is a list"]),
    "duplicate image id": (lambda c: c["images"].append(dict(c["images"][0], file_name="other.jpg")),
                           ["appears more than once"]),
    "image without width": (lambda c: c["images"][0].pop("width"), ["has no width"]),
    "image without file_name": (lambda c: c["images"][0].pop("file_name"), ["has no file_name"]),
    "segmentation a string": (lambda c: _first_ann(c).update(segmentation="garbage"),
                              ["segmentation of type str"]),
    "segmentation flat numbers": (lambda c: _first_ann(c).update(segmentation=[1, 2, 3, 4, 5, 6]),
                                  ["neither a list of polygons"]),
    "RLE without size": (lambda c: _first_ann(c).update(segmentation={"counts": "abc"}), ["RLE segmentation with size"]),
    "RLE bad string": (lambda c: _first_ann(c).update(segmentation={"size": [128, 128], "counts": "not rle!"}),
                       ["compressed RLE"]),
    "RLE wrong size": (lambda c: _first_ann(c).update(segmentation={"size": [5, 5], "counts": [25]}),
                       ["RLE of size [5, 5]"]),
    "bbox of 3": (lambda c: _first_ann(c).update(bbox=[1, 2, 3]), ["has bbox [1, 2, 3]"]),
    "bbox negative": (lambda c: _first_ann(c).update(bbox=[1, 2, -3, 4]), ["has bbox"]),
}


@pytest.mark.parametrize("case", sorted(MEMORY_CASES))
def test_memory_refuses_a_malformed_coco_file_naming_the_entry(setup, tmp_path, capsys, case):
    edit, needles = MEMORY_CASES[case]
    coco = _edit_refs(setup, edit)
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps(coco))
    out = tmp_path / "out"
    line = _refuses(["fewshot", "memory", *_memory_tail(refs, setup["shapes"] / "train" / "images",
                                                         out / "bank.safetensors")], capsys, out, str(refs), *needles)
    if "annotation" in line and "top level" not in line:
        ann_id = json.loads(Path(setup["refs"]).read_text())["annotations"][0]["id"]
        assert f"annotation {ann_id} " in line


def test_memory_refuses_a_width_that_disagrees_with_the_file(setup, tmp_path, capsys):
    coco = json.loads(Path(setup["refs"]).read_text())
    for image in coco["images"]:
        image["width"] = 256
    for ann in coco["annotations"]:
        ann.pop("segmentation")  # box-only: an RLE would name its own size mismatch first
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps(coco))
    out = tmp_path / "out"
    _refuses(["fewshot", "memory", *_memory_tail(refs, setup["shapes"] / "train" / "images",
                                                 out / "bank.safetensors")],
             capsys, out, "is 128x128 but the COCO json says 256x128", "train/images/0000", "for image id")


def test_memory_counts_annotations_of_unlisted_categories(setup, tmp_path, capsys):
    from sam2_vitplug.cli import main

    coco = json.loads(Path(setup["refs"]).read_text())
    extra = copy.deepcopy(coco["annotations"][:2])
    for n, ann in enumerate(extra):
        ann.update(id=10_000 + n, category_id=999)
    coco["annotations"] += extra
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps(coco))
    capsys.readouterr()
    assert main(["fewshot", "memory", *_memory_tail(refs, setup["shapes"] / "train" / "images",
                                                    tmp_path / "bank.safetensors")]) == 0
    assert "category not in categories: 2" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["ntt", "vitplug"])
def test_memory_says_when_every_annotation_has_an_unlisted_category(setup, tmp_path, capsys, method):
    coco = json.loads(Path(setup["refs"]).read_text())
    for cat in coco["categories"]:
        cat["id"] += 500
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps(coco))
    out = tmp_path / "out"
    line = _refuses(["fewshot", "memory", *_memory_tail(refs, setup["shapes"] / "train" / "images",
                                                        out / "bank.safetensors"), "--method", method],
                    capsys, out, "have no annotation at all", "that 'categories' does not list")
    assert "crowd" not in line and "border" not in line


def test_memory_names_a_truncated_jpeg(setup, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(setup["shapes"] / "train" / "images", images)
    for path in images.iterdir():
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    out = tmp_path / "out"
    _refuses(["fewshot", "memory", *_memory_tail(setup["refs"], images, out / "bank.safetensors")],
             capsys, out, "cannot be decoded", str(images))


def test_memory_input_size_message_suggests_a_valid_size(setup, tmp_path, capsys):
    out = tmp_path / "out"
    _refuses(["fewshot", "memory", *_memory_tail(setup["refs"], setup["shapes"] / "train" / "images",
                                                 out / "bank.safetensors"), "--input-size", "13"],
             capsys, out, "input size 13", "use e.g. --input-size 14")


def _run_argv(setup, out_dir: Path, *extra: str, bank: Path | None = None, ann: bool = True) -> list[str]:
    shapes = setup["shapes"]
    argv = ["fewshot", "run", "--bank", str(bank or setup["bank"]), "--images", str(shapes / "val" / "images"),
            "--quiet", "--device", "cpu", "--proposals", "ground_truth", "--out", str(out_dir / "res.json"),
            "--set", "scoring.min_score=-1"]  # keep the demo encoder's low-scoring matches: results to evaluate
    if ann:
        argv += ["--ann", str(shapes / "val" / "annotations.json")]
    return argv + list(extra)


RUN_OPTION_CASES = {
    "set iou_thr abc": (["--set", "proposals.iou_thr=abc"], ["proposals.iou_thr=abc", "expected a number"]),
    "set bool 3": (["--set", "proposals.shared_backbone=3"], ["proposals.shared_backbone=3", "true or false"]),
    "points per side 2000": (["--points-per-side", "2000"], ["--points-per-side 2000", "4,000,000 prompts"]),
    "points per side 0": (["--points-per-side", "0"], ["--points-per-side 0"]),
    "top k 0": (["--top-k", "0"], ["--top-k 0", ">= 1"]),
    "iou thr 2": (["--iou-thr", "2"], ["--iou-thr 2", "[0, 1]"]),
    "iou thr -0.1": (["--iou-thr", "-0.1"], ["--iou-thr -0.1", "[0, 1]"]),
    "vis -1": (["--vis", "-1"], ["--vis -1", ">= 0"]),
}


@pytest.mark.parametrize("case", sorted(RUN_OPTION_CASES))
def test_run_refuses_a_bad_option_naming_it(setup, tmp_path, capsys, case):
    extra, needles = RUN_OPTION_CASES[case]
    out = tmp_path / "out"
    _refuses(_run_argv(setup, out, *extra), capsys, out, *needles)


def test_run_refuses_vis_gt_without_ann(setup, tmp_path, capsys):
    out = tmp_path / "out"
    _refuses(_run_argv(setup, out, "--vis", "1", "--vis-gt", ann=False), capsys, out, "--vis-gt", "--ann")


def test_run_refuses_an_images_folder_without_images(setup, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no pictures here")
    out = tmp_path / "out"
    argv = _run_argv(setup, out, ann=False)
    argv[argv.index("--images") + 1] = str(empty)
    argv[argv.index("--proposals") + 1] = "sam2"
    _refuses(argv + ["--sam2-config", "sam2_vit_demo"], capsys, out, str(empty), "holds no image files")


def test_run_refuses_a_coco_file_whose_top_level_is_a_list(setup, tmp_path, capsys):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps([json.loads((setup["shapes"] / "val" / "annotations.json").read_text())]))
    out = tmp_path / "out"
    argv = _run_argv(setup, out)
    argv[argv.index("--ann") + 1] = str(ann)
    _refuses(argv, capsys, out, str(ann), "top level is a list")


def _write_bank(src: Path, dst: Path, edit) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    edit(tensors, meta)
    save_file(tensors, str(dst), metadata=meta)
    return dst


BANK_CASES = {
    "NaN prototype": (lambda t, m: t["prototypes"].__setitem__((0, 0), float("nan")), "NaN/inf in 1 of"),
    "inf instance": (lambda t, m: t["instances"].__setitem__((0, 1), float("inf")), "NaN/inf in 1 of"),
    "short class_ids": (lambda t, m: m.__setitem__("class_ids", json.dumps(json.loads(m["class_ids"])[:-1])),
                        "class ids and"),
    "label out of range": (lambda t, m: t["instance_labels"].__setitem__(0, 99), "instance labels outside"),
}


@pytest.mark.parametrize("case", sorted(BANK_CASES))
def test_run_refuses_a_broken_bank_at_load(setup, tmp_path, capsys, case):
    edit, needle = BANK_CASES[case]
    bank = _write_bank(setup["bank"], tmp_path / "bad.safetensors", edit)
    out = tmp_path / "out"
    _refuses(_run_argv(setup, out, bank=bank), capsys, out, str(bank), needle, "rebuild it")


def test_run_refuses_an_undecodable_image_before_any_shard(setup, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(setup["shapes"] / "val" / "images", images)
    victim = sorted(images.iterdir())[-1]
    victim.write_bytes(b"")
    out = tmp_path / "out"
    argv = _run_argv(setup, out)
    argv[argv.index("--images") + 1] = str(images)
    _refuses(argv, capsys, out, str(victim), "cannot be decoded")


def test_run_names_a_truncated_jpeg_and_resumes_once_it_is_fixed(setup, tmp_path, capsys):
    from sam2_vitplug.cli import main

    images = tmp_path / "images"
    shutil.copytree(setup["shapes"] / "val" / "images", images)
    victim = sorted(images.iterdir())[-1]
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 3])
    out = tmp_path / "out"
    argv = _run_argv(setup, out)
    argv[argv.index("--images") + 1] = str(images)
    capsys.readouterr()
    assert main(argv) == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert str(victim) in line and "rerun the same command to resume" in line
    assert not (out / "res.json").exists()  # the finished images sit in shards, nothing half-written
    victim.write_bytes(good)
    assert main(argv) == 0
    assert (out / "res.json").read_bytes() == setup["results"].read_bytes()


def _eval_argv(setup, results: Path, out_dir: Path, ann: Path | None = None) -> list[str]:
    return ["fewshot", "eval", "--ann", str(ann or setup["shapes"] / "val" / "annotations.json"),
            "--results", str(results), "--out", str(out_dir / "eval.json")]


EVAL_CASES = {
    "unknown image id": (lambda r: r[0].update(image_id=4242), "image id 4242"),
    "unknown category": (lambda r: r[0].update(category_id=777), "category id 777"),
    "some without segmentation": (lambda r: r[0].__delitem__("segmentation"), "have no segmentation"),
    "bad bbox": (lambda r: r[0].update(bbox="x"), "has bbox 'x'"),
    "not a list": (lambda r: {"results": r}, "must hold a list"),
}


@pytest.mark.parametrize("case", sorted(EVAL_CASES))
def test_eval_refuses_results_that_do_not_fit_the_ground_truth(setup, tmp_path, capsys, case):
    edit, needle = EVAL_CASES[case]
    results = json.loads(setup["results"].read_text())
    edited = edit(results)
    path = tmp_path / "res.json"
    path.write_text(json.dumps(results if edited is None else edited))
    out = tmp_path / "out"
    _refuses(_eval_argv(setup, path, out), capsys, out, str(path), needle)


def test_eval_refuses_a_ground_truth_whose_top_level_is_a_list(setup, tmp_path, capsys):
    ann = tmp_path / "ann.json"
    ann.write_text("[]")
    out = tmp_path / "out"
    _refuses(_eval_argv(setup, setup["results"], out, ann=ann), capsys, out, str(ann), "top level is a list")


def test_eval_of_results_without_masks_is_bbox_only_and_says_so(setup, tmp_path, capsys):
    from sam2_vitplug.cli import main

    results = [{k: v for k, v in r.items() if k != "segmentation"} for r in json.loads(setup["results"].read_text())]
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(results))
    capsys.readouterr()
    assert main(_eval_argv(setup, path, tmp_path)) == 0
    assert "carry no segmentation; evaluating bbox only" in capsys.readouterr().out
    assert list(json.loads((tmp_path / "eval.json").read_text())) == ["bbox"]


def test_overlays_put_labels_on_a_box_and_show_the_ground_truth_beside(setup, tmp_path):
    from PIL import Image

    from sam2_vitplug.cli import main

    out = tmp_path / "out"
    assert main(_run_argv(setup, out, "--vis", "1", "--vis-gt", "--vis-min-score", "0")) == 0
    pngs = sorted((out / "res_vis").glob("*.png"))  # the folder is <out without .json>_vis/
    assert len(pngs) == 1
    picture = np.asarray(Image.open(pngs[0]))
    assert picture.shape == (128, 2 * 128 + 8, 3)  # prediction | gap | ground truth
    assert (picture[:, 128:136] == 255).all()


def test_a_label_sits_on_a_filled_box_in_a_contrasting_colour():
    from sam2_vitplug.matching.vis import _colour, overlay

    image = np.zeros((64, 96, 3), np.uint8)
    result = {"category_id": 3, "bbox": [10, 10, 60, 40], "score": 0.9}
    drawn = overlay(image, [result], {3: "cat"})
    colour = _colour(3).astype(np.uint8)
    patch = drawn[12:24, 12:40].reshape(-1, 3)
    filled = (patch == colour).all(axis=1).mean()
    text = ((patch == 0).all(axis=1) | (patch == 255).all(axis=1)).mean()
    assert filled > 0.4 and text > 0.02  # the box is the class colour, the text black or white on it


def test_run_refuses_an_ann_whose_sizes_disagree_with_the_files(setup, tmp_path, capsys):
    coco = json.loads((setup["shapes"] / "val" / "annotations.json").read_text())
    coco["images"][0]["height"] = 64
    for ann in coco["annotations"]:
        ann.pop("segmentation")  # box-only, so only the image size is wrong
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(coco))
    out = tmp_path / "out"
    argv = _run_argv(setup, out)
    argv[argv.index("--ann") + 1] = str(path)
    _refuses(argv, capsys, out, coco["images"][0]["file_name"], "is 128x128 but the COCO json says 128x64")


def _valid_segmentations() -> dict:
    from pycocotools import mask as mask_utils

    mask = np.zeros((6, 5), np.uint8, order="F")
    mask[1:4, 2:4] = 1
    compressed = mask_utils.encode(mask)
    return {"polygon": [[1, 1, 4, 1, 4, 4, 1, 4]], "odd polygon": [[1, 1, 4, 1, 4, 4, 1]],
            "compressed RLE": {"size": [6, 5], "counts": compressed["counts"].decode()},
            "uncompressed RLE": {"size": [6, 5], "counts": [7, 3, 3, 3, 14]}, "box-only": None, "empty list": []}


@pytest.mark.parametrize("form", sorted(_valid_segmentations()))
def test_coco_check_accepts_every_valid_segmentation_form(form):
    from sam2_vitplug.matching.coco_checks import check_coco

    ann = {"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3]}
    if _valid_segmentations()[form] is not None:
        ann["segmentation"] = _valid_segmentations()[form]
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "width": 5, "height": 6}], "annotations": [ann],
            "categories": [{"id": 1, "name": "x"}]}
    assert check_coco(coco, "x.json") is coco
