"""docs/ntt_protocol.md runs end to end: its commands, on a synthetic COCO-layout split.

The split has COCO's class-id structure (non-contiguous ids, the 20 novel classes of
configs/matching/coco_fsod.yaml plus base classes the protocol must ignore). Substituted for
speed only: the packaged demo SAM2 (256 px) for hiera-L, the tiny Meta-format DINOv2 of the
golden case for DINOv2-L, and an 8 x 8 point grid (added to `run`). Random-ish labels: the AP
is meaningless here, the test checks that every command runs and that the evaluation is the
protocol's (novel classes only).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
BASE = {8: "truck", 10: "traffic light", 13: "stop sign", 27: "backpack"}  # base classes, never evaluated


def protocol() -> dict:
    return yaml.safe_load((ROOT / "configs" / "matching" / "coco_fsod.yaml").read_text())


def doc_commands() -> tuple[dict[str, str], list[str], list[str]]:
    """Variables, the loop values of SHOTS and the `sam2-vitplug` lines of the doc's bash block."""
    text = (ROOT / "docs" / "ntt_protocol.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    variables, shots, commands = {}, [], []
    for line in block.splitlines():
        line = line.strip()
        if m := re.fullmatch(r"([A-Z0-9_]+)=(.*)", line):
            variables[m.group(1)] = shlex.split(m.group(2))[0] if m.group(2) else ""
        elif m := re.fullmatch(r"for SHOTS in ([\d ]+); do", line):
            shots = m.group(1).split()
        elif line.startswith("sam2-vitplug "):
            commands.append(line)
    return variables, shots, commands


def test_protocol_config_and_doc_agree():
    cfg, (variables, shots, commands) = protocol(), doc_commands()
    assert variables["NOVEL"].split() == [str(c) for c in sorted(cfg["novel_classes"])]
    assert len(cfg["novel_classes"]) == 20 and cfg["seed"] == 33 == int(variables["SEED"])
    assert [int(s) for s in shots] == cfg["shots"] == [10, 30]
    assert variables["SAM2_CONFIG"] == cfg["sam2_config"] and variables["ENCODER"] == cfg["encoder"]
    assert Path(variables["SAM2_CKPT"]).name == cfg["sam2_checkpoint"]
    assert [c.split()[2] for c in commands] == ["memory", "run", "eval"]
    assert all("--method ntt" in c for c in commands[:2])


def _coco_layout(shapes: Path, root: Path, novel: dict[int, str]) -> Path:
    """The synthetic shapes as a COCO 2017 root with COCO category ids: valid instances are dealt
    round-robin to the 20 novel classes (so each has references), the rest to base classes."""
    cats = {**novel, **BASE}
    (root / "annotations").mkdir(parents=True)
    order = sorted(novel)
    for split, name in (("train", "train2017"), ("val", "val2017")):
        data = json.loads((shapes / split / "annotations.json").read_text())
        shutil.copytree(shapes / split / "images", root / name)
        images = {im["id"]: im for im in data["images"]}
        k = 0
        for ann in sorted(data["annotations"], key=lambda a: a["id"]):
            x, y, w, h = ann["bbox"]
            im = images[ann["image_id"]]
            ok = min(w, h) >= 32 and min(x, y, im["width"] - x - w, im["height"] - y - h) >= 10
            if ok and k < 3 * len(order):
                ann["category_id"] = order[k % len(order)]
                k += 1
            else:
                ann["category_id"] = sorted(BASE)[ann["id"] % len(BASE)]
        data["categories"] = [{"id": c, "name": n, "supercategory": "shape"} for c, n in sorted(cats.items())]
        (root / "annotations" / f"instances_{name}.json").write_text(json.dumps(data))
    return root


@pytest.mark.parametrize("shots", ["10", pytest.param("30", marks=pytest.mark.slow)])
def test_protocol_commands_run_on_a_synthetic_coco_split(tmp_path, shots):
    """One pass of the doc's loop (SHOTS=10 in the quick suite, 30 in the slow one)."""
    from make_synthetic_dataset import DatasetSpec, make_dataset

    from sam2_vitplug.cli import main

    cfg = protocol()
    novel = {int(k): v for k, v in cfg["novel_classes"].items()}
    shapes = make_dataset(tmp_path / "shapes", DatasetSpec(train=40, val=2, image_size=256, seed=3,
                                                           min_instances=3, max_instances=5))
    coco = _coco_layout(shapes, tmp_path / "coco", novel)
    variables, loop, commands = doc_commands()
    assert shots in loop
    subst = {**variables, "COCO": str(coco), "OUT": str(tmp_path / "work"), "SAM2_CONFIG": "sam2_vit_demo",
             "ENCODER": str(ROOT / "tests" / "data" / "ntt_golden" / "dinov2_tiny128_meta.pth")}
    for n in [shots]:
        subst["SHOTS"] = n
        for command in commands:
            line = re.sub(r"\$\{?([A-Z0-9_]+)\}?", lambda m: subst[m.group(1)], command)
            argv = shlex.split(line)[1:]
            if argv[1] == "run":  # the packaged demo weights need no checkpoint; a coarse grid for speed
                i = argv.index("--sam2-ckpt")
                del argv[i:i + 2]
                argv += ["--points-per-side", "8", "--quiet"]
            assert main(argv) == 0, line
        work = tmp_path / "work"
        from sam2_vitplug.matching import load_bank

        bank = load_bank(work / f"bank_{n}shot.safetensors")
        assert bank.class_ids == sorted(novel) and bank.method == "ntt"
        results = json.loads((work / f"results_{n}shot.json").read_text())
        assert {r["category_id"] for r in results} <= set(novel)
        stats = json.loads((work / f"eval_{n}shot.json").read_text())
        assert {"bbox", "segm"} <= set(stats) and 0.0 <= stats["segm"]["AP"] <= 1.0
