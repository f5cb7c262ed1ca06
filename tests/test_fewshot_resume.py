"""``fewshot run`` resumes only what it can resume: an interrupted run is continued by the same
command, refused (naming what differs) when a setting changed, started afresh with
``--overwrite``, and kept off an ``--out`` that another live run is writing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import clear_references

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from make_synthetic_dataset import DatasetSpec, make_dataset  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from sam2_vitplug.cli import main

    root = tmp_path_factory.mktemp("fewshot_resume")
    shapes = make_dataset(root / "shapes", DatasetSpec(train=3, val=4, image_size=128, seed=8, min_instances=2,
                                                       max_instances=3))
    refs = clear_references(shapes / "train" / "annotations.json", root / "refs.json")
    bank = root / "bank.safetensors"
    assert main(["fewshot", "memory", "--refs", str(refs), "--images", str(shapes / "train" / "images"),
                 "--shots", "1", "--encoder", "dinov2_demo", "--out", str(bank), "--device", "cpu",
                 "--set", "memory.min_size=16"]) == 0
    return shapes, bank


def _run_args(setup, out: Path, *extra: str) -> list[str]:
    shapes, bank = setup
    return ["fewshot", "run", "--bank", str(bank), "--images", str(shapes / "val" / "images"), "--quiet",
            "--device", "cpu", "--sam2-config", "sam2_vit_demo", "--points-per-side", "4", "--out", str(out), *extra]


@pytest.fixture
def interrupt_after(monkeypatch):
    """Make the predictor raise KeyboardInterrupt (Ctrl-C) on image number ``n + 1``."""
    from sam2_vitplug.matching.pipeline import FewShotPredictor

    original = FewShotPredictor.predict

    def arm(n: int) -> None:
        calls = {"n": 0}

        def predict(self, *a, **k):
            calls["n"] += 1
            if calls["n"] > n:
                raise KeyboardInterrupt
            return original(self, *a, **k)

        monkeypatch.setattr(FewShotPredictor, "predict", predict)

    yield arm
    monkeypatch.setattr(FewShotPredictor, "predict", original)


def test_interrupted_run_resumes_refuses_other_settings_and_overwrites(setup, tmp_path, interrupt_after, capsys,
                                                                         monkeypatch):
    from sam2_vitplug.cli import main
    from sam2_vitplug.matching.pipeline import FewShotPredictor

    full = tmp_path / "full" / "r.json"
    assert main(_run_args(setup, full)) == 0

    out = tmp_path / "part" / "r.json"
    original = FewShotPredictor.predict
    interrupt_after(2)
    assert main(_run_args(setup, out)) == 130
    assert "interrupted; rerun the same command to resume" in capsys.readouterr().err
    shard = out.parent / "r.json.shard-0.jsonl"
    assert not out.exists() and shard.read_bytes().count(b"\n") == 2
    assert (out.parent / "r.json.settings.json").is_file()
    monkeypatch.setattr(FewShotPredictor, "predict", original)

    # another setting: refused with the setting named, nothing touched
    before = shard.read_bytes()
    assert main(_run_args(setup, out, "--iou-thr", "0.5")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("SAM2 weights:") and len(err) == 2  # the weights line, then one error line
    assert "other settings" in err[1] and "iou_thr: 0.4 -> 0.5" in err[1] and "--overwrite" in err[1]
    assert shard.read_bytes() == before and not out.exists()

    # the same command resumes and writes what an uninterrupted run writes
    assert main(_run_args(setup, out)) == 0
    assert out.read_bytes() == full.read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.json"], "no shard, settings or lock left"

    # --overwrite drops an interrupted run's shards and starts afresh with the new settings
    other = tmp_path / "other" / "r.json"
    interrupt_after(1)
    assert main(_run_args(setup, other)) == 130
    monkeypatch.setattr(FewShotPredictor, "predict", original)
    assert main(_run_args(setup, other, "--iou-thr", "0.5", "--overwrite")) == 0
    again = tmp_path / "again" / "r.json"
    assert main(_run_args(setup, again, "--iou-thr", "0.5")) == 0
    assert other.read_bytes() == again.read_bytes()


def test_shards_without_a_settings_record_are_not_resumed(setup, tmp_path, capsys):
    from sam2_vitplug.cli import main

    out = tmp_path / "r.json"
    (tmp_path / "r.json.shard-0.jsonl").write_text(json.dumps({"image_id": 1, "results": []}) + "\n")
    assert main(_run_args(setup, out)) == 2
    assert "no settings record" in capsys.readouterr().err and not out.exists()


def test_a_second_run_on_the_same_out_is_refused_while_the_first_is_alive(setup, tmp_path, capsys):
    from sam2_vitplug.cli import main
    from sam2_vitplug.run_lock import RunLock

    out = tmp_path / "r.json"
    with RunLock(tmp_path / "r.json.lock-0", "--out", "test"):  # the live first run
        assert main(_run_args(setup, out)) == 2
    err = capsys.readouterr().err
    assert "in use by another run" in err and "r.json.lock-0" in err and not out.exists()
    assert main(_run_args(setup, out)) == 0  # the lock is gone with its holder


def test_a_bank_refuses_a_run_whose_encoder_weights_were_replaced_at_the_same_path(setup, tmp_path, capsys):
    """The bank records its encoder's weights digest; a path alone proves nothing."""
    import torch
    import transformers as T
    from conftest import _tiny_configs

    from sam2_vitplug.cli import main

    shapes, _ = setup
    encoder = tmp_path / "encoder"
    for seed in (5, 6):  # the second save replaces the weights at the same path
        torch.manual_seed(seed)
        T.AutoModel.from_config(_tiny_configs()["dinov2"]).save_pretrained(encoder)
        if seed == 5:
            refs = clear_references(shapes / "train" / "annotations.json", tmp_path / "refs.json")
            assert main(["fewshot", "memory", "--refs", str(refs), "--images", str(shapes / "train" / "images"),
                         "--shots", "1", "--encoder", str(encoder), "--out", str(tmp_path / "bank.safetensors"),
                         "--device", "cpu", "--set", "memory.min_size=16"]) == 0
            capsys.readouterr()
    assert main(["fewshot", "run", "--bank", str(tmp_path / "bank.safetensors"), "--images",
                 str(shapes / "val" / "images"), "--ann", str(shapes / "val" / "annotations.json"), "--proposals",
                 "ground_truth", "--quiet", "--device", "cpu", "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "built with other weights" in err and "rebuild the bank" in err and not (tmp_path / "r.json").exists()
