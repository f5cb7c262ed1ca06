"""Weights as given: every entry point that takes weights runs with exactly the source's tensors.

Each source here is made under a seed (``SOURCE_SEED``) that no code under test uses: builds
initialise what no checkpoint supplies under ``INIT_SEED`` (0) and conftest's tiny models use 0,
so a skipped load leaves tensors that differ from the source and fails the comparison. Every
comparison is exact (``torch.equal`` or sha256 of the raw bytes): loading copies tensors, it
does not compute them, so there is no rounding to allow for (the packaged demo model stores
fp16 and runs in fp32, a widening that is exact too).
"""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from conftest import _tiny_configs, clear_references, tiny_overrides
from sam2.build_sam import build_sam2

from sam2_vitplug.build import (
    INIT_SEED,
    TRUNK_PREFIXES,
    build_sam2_vit,
    build_sam2_vit_video_predictor,
    checkpoint_trunk_kind,
    load_sam2_weights,
)
from sam2_vitplug.weights_audit import ENV_VAR, read_records, state_digests, tensor_digest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
sys.path.insert(0, str(REPO / "tools"))
SOURCE_SEED = 1234
assert SOURCE_SEED != INIT_SEED


def hiera_config(size: str) -> str:
    return f"configs/sam2.1/sam2.1_hiera_{size}.yaml"


@lru_cache(maxsize=None)
def _hiera_state(size: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(SOURCE_SEED)
    return build_sam2(hiera_config(size), ckpt_path=None, device="cpu").state_dict()


@pytest.fixture(scope="module")
def hiera_ckpt(tmp_path_factory):
    """``size -> (path, state)``: an official-layout SAM 2.1 file (``{"model": state_dict}``) of a
    random Hiera model; real weights cannot be downloaded here, the layout is what matters."""
    root = tmp_path_factory.mktemp("hiera_ckpts")

    def make(size: str):
        path = root / f"sam2.1_hiera_{size.replace('+', 'plus')}.pt"
        if not path.is_file():
            torch.save({"model": _hiera_state(size)}, path)
        return path, _hiera_state(size)

    return make


@pytest.fixture(scope="module")
def vit_sources(tmp_path_factory) -> dict[str, Path]:
    """Tiny ViTs of every family saved with ``save_pretrained`` under ``SOURCE_SEED``."""
    import transformers as T

    root = tmp_path_factory.mktemp("vit_sources")
    paths = {}
    for name, config in _tiny_configs().items():
        torch.manual_seed(SOURCE_SEED)
        model = T.AutoModel.from_config(config)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)  # move every tensor off its init value (norms, biases too)
        model.save_pretrained(root / name)
        paths[name] = root / name
        _SAVED_VIT_STATES[root / name] = {k: v.clone() for k, v in model.state_dict().items()}
    return paths


# what each source directory was given to save_pretrained (its file may store older key names)
_SAVED_VIT_STATES: dict[Path, dict[str, torch.Tensor]] = {}


def _source_vit_state(path: Path) -> dict[str, torch.Tensor]:
    return _SAVED_VIT_STATES[path]


def _assert_equal_tensors(model_state: dict, source: dict, names=None) -> None:
    names = list(source) if names is None else list(names)
    assert names
    bad = [n for n in names if not torch.equal(model_state[n].cpu(), source[n].to(model_state[n].dtype))]
    assert not bad, f"{len(bad)} tensors differ from the source, e.g. {bad[:5]}"


# ---- build_sam2_vit / build_sam2_vit_video_predictor ----------------------------------------

BUILDERS = {"image": build_sam2_vit, "video": build_sam2_vit_video_predictor}


@pytest.mark.parametrize("size,builder", [("t", "image"), ("t", "video"), ("s", "image"), ("b+", "image"),
                                          pytest.param("l", "image", marks=pytest.mark.slow)])
def test_upstream_hiera_config_loads_its_checkpoint_completely(hiera_ckpt, size, builder):
    path, source = hiera_ckpt(size)
    model = BUILDERS[builder](hiera_config(size), path, device="cpu")
    report = model.sam2_vitplug_load_report
    assert report.complete and sorted(report.loaded) == sorted(source), report.summary()
    assert "complete" in report.summary() and "hiera" in report.summary()
    own = model.state_dict()
    assert sorted(own) == sorted(source)
    _assert_equal_tensors(own, source)
    assert checkpoint_trunk_kind(source) == "hiera"


# config -> (tiny family, the upstream Hiera size it is built on)
VIT_CONFIGS = {
    "sam2_vit_dino_s.yaml": ("dinov2", "s"),
    "sam2_vit_dinov3_s.yaml": ("dinov3", "s"),
    "sam2_vit_ijepa_512.yaml": ("ijepa", "s"),
    "sam2_vit_dino_b.yaml": ("dinov2_reg", "b+"),
    "sam2_vit_dinov3_b.yaml": ("dinov3", "b+"),
    "sam2_vit_dino.yaml": ("dinov2", "l"),
    "sam2_vit_dinov3.yaml": ("dinov3", "l"),
    "sam2_vit_ijepa.yaml": ("ijepa", "l"),
}


def _vit_params():
    for config, (family, size) in VIT_CONFIGS.items():
        marks = [pytest.mark.slow] if size == "l" else []
        yield pytest.param(config, family, size, "image", marks=marks, id=f"{config}-image")
    for config in ("sam2_vit_dino_s.yaml", "sam2_vit_dinov3_s.yaml", "sam2_vit_ijepa_512.yaml"):
        family, size = VIT_CONFIGS[config]
        yield pytest.param(config, family, size, "video", id=f"{config}-video")


@pytest.mark.parametrize("config,family,size,builder", list(_vit_params()))
def test_vit_config_with_official_hiera_checkpoint(hiera_ckpt, vit_sources, config, family, size, builder):
    """Everything but the Hiera trunk and the neck input convs is the checkpoint's; the ViT is its
    pretrained source's; the report says which and why."""
    path, source = hiera_ckpt(size)
    model = BUILDERS[builder](config, path, device="cpu", hydra_overrides_extra=tiny_overrides(vit_sources[family]))
    report = model.sam2_vitplug_load_report
    expected_skipped = sorted(k for k in source if k.startswith(TRUNK_PREFIXES))
    assert sorted(report.skipped) == expected_skipped and expected_skipped
    assert sorted(report.loaded) == sorted(k for k in source if not k.startswith(TRUNK_PREFIXES))
    assert "Hiera" in report.summary() and "ViT" in report.summary()
    own = model.state_dict()
    _assert_equal_tensors(own, source, report.loaded)
    vit = {k[len("image_encoder.trunk.vit."):]: v for k, v in own.items() if k.startswith("image_encoder.trunk.vit.")}
    _assert_equal_tensors(vit, _source_vit_state(vit_sources[family]))


def test_vit_model_checkpoint_of_its_own_loads_completely(vit_sources, tmp_path):
    """What training_ext / export write for a ViT-trunk model: every tensor, strictly, .pt and .safetensors."""
    from safetensors.torch import save_file

    over = tiny_overrides(vit_sources["dinov3"])
    trained = build_sam2_vit("sam2_vit_dinov3_s.yaml", device="cpu", hydra_overrides_extra=over).state_dict()
    gen = torch.Generator().manual_seed(SOURCE_SEED)
    trained = {k: (v + torch.randn(v.shape, generator=gen) if v.is_floating_point() else v) for k, v in trained.items()}
    torch.save({"model": trained}, tmp_path / "own.pt")
    save_file({k: v.contiguous() for k, v in trained.items()}, str(tmp_path / "own.safetensors"))
    for name, extra in (("own.pt", []), ("own.safetensors", ["++model.image_encoder.trunk.random_init=true"])):
        model = build_sam2_vit("sam2_vit_dinov3_s.yaml", tmp_path / name, device="cpu",
                               hydra_overrides_extra=over + extra)
        report = model.sam2_vitplug_load_report
        assert report.complete and len(report.loaded) == len(trained), report.summary()
        _assert_equal_tensors(model.state_dict(), trained)


def test_exclude_forces_either_behaviour(hiera_ckpt, vit_sources):
    path, source = hiera_ckpt("t")
    # a Hiera model told to keep its trunk: the trunk stays at the build's own seeded initialisation
    model = build_sam2_vit(hiera_config("t"), path, device="cpu", exclude=TRUNK_PREFIXES)
    report = model.sam2_vitplug_load_report
    assert not report.complete and report.skipped and all(n.startswith(TRUNK_PREFIXES) for n in report.skipped)
    fresh = build_sam2_vit(hiera_config("t"), device="cpu").state_dict()
    _assert_equal_tensors(model.state_dict(), fresh, report.not_loaded)
    _assert_equal_tensors(model.state_dict(), source, report.loaded)
    # a ViT model told to take everything: the Hiera trunk does not fit, and the error names it
    with pytest.raises(ValueError, match=r"missing image_encoder\.trunk\.vit\..*unexpected image_encoder\.trunk\."):
        build_sam2_vit("sam2_vit_dino_s.yaml", hiera_ckpt("s")[0], device="cpu", exclude=(),
                       hydra_overrides_extra=tiny_overrides(vit_sources["dinov2"]))


def test_checkpoints_that_do_not_fit_are_errors_naming_tensors(hiera_ckpt, vit_sources, tmp_path):
    path_s, _ = hiera_ckpt("s")
    with pytest.raises(ValueError, match=r"shape mismatch .*image_encoder\.trunk\."):
        build_sam2_vit(hiera_config("t"), path_s, device="cpu")  # another Hiera size
    vit_state = build_sam2_vit("sam2_vit_dino_s.yaml", device="cpu",
                               hydra_overrides_extra=tiny_overrides(vit_sources["dinov2"])).state_dict()
    torch.save({"model": vit_state}, tmp_path / "vit.pt")
    model = build_sam2(hiera_config("s"), ckpt_path=None, device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="trunk is Hiera but the checkpoint holds a ViT trunk"):
        load_sam2_weights(model, tmp_path / "vit.pt")
    _assert_equal_tensors(model.state_dict(), before)  # nothing half-loaded
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pt' is empty"):
        load_sam2_weights(model, tmp_path / "empty.pt")


def test_builds_are_reproducible_and_leave_the_global_rng_alone(hiera_ckpt, vit_sources):
    """What no checkpoint supplies (here the pyramid and neck convs) is the same in every build."""
    path, _ = hiera_ckpt("s")
    over = tiny_overrides(vit_sources["dinov2"])
    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    first = build_sam2_vit("sam2_vit_dino_s.yaml", path, device="cpu", hydra_overrides_extra=over).state_dict()
    assert torch.equal(torch.rand(3), expected_next)
    torch.manual_seed(99)
    second = build_sam2_vit("sam2_vit_dino_s.yaml", path, device="cpu", hydra_overrides_extra=over).state_dict()
    _assert_equal_tensors(second, first)


def test_packaged_demo_model_equals_its_published_digests():
    """sha256 of every fp32 tensor, as listed by the NTT golden fixture (tests/data copy)."""
    published = json.loads((DATA / "sam2_vit_demo.per_tensor_sha256.json").read_text())
    published = published.get("tensors", published)
    model = build_sam2_vit("sam2_vit_demo", device="cpu")
    own = model.state_dict()
    assert sorted(own) == sorted(published) and len(own) > 400
    bad = [n for n, t in own.items() if tensor_digest(t) != published[n]["sha256"]]
    assert not bad, bad[:5]


# ---- command-line entry points: the weights the command actually ran with ------------------------

def _audited(monkeypatch, tmp_path) -> Path:
    folder = tmp_path / "audit"
    monkeypatch.setenv(ENV_VAR, str(folder))
    return folder


def _assert_record_is(record: dict, source: dict[str, torch.Tensor], names=None) -> None:
    expected = state_digests({n: source[n] for n in (names or source)})
    got = record["tensors"]
    bad = [n for n in expected if got.get(n, {}).get("sha256") != expected[n]["sha256"]]
    assert not bad, f"{len(bad)} tensors the command ran with differ from the source, e.g. {bad[:5]}"


def test_check_command_runs_with_the_checkpoint(hiera_ckpt, monkeypatch, tmp_path, capsys):
    from sam2_vitplug.cli import main

    path, source = hiera_ckpt("t")
    audit = _audited(monkeypatch, tmp_path)
    assert main(["check", hiera_config("t"), "--sam2-ckpt", str(path), "--image-size", "256", "--device", "cpu"]) == 0
    assert f"loaded all {len(source)} tensors" in capsys.readouterr().out
    (record,) = read_records(audit, "sam2")
    assert sorted(record["tensors"]) == sorted(source)
    _assert_record_is(record, source)


@pytest.fixture(scope="module")
def fewshot_data(tmp_path_factory) -> Path:
    from make_synthetic_dataset import DatasetSpec, make_dataset

    return make_dataset(tmp_path_factory.mktemp("weights_fewshot") / "shapes",
                        DatasetSpec(train=4, val=2, image_size=128, seed=11, min_instances=2, max_instances=3))


def meta_dinov2_pth(path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A tiny DINOv2 in Meta's release layout, built by Meta's own code under SOURCE_SEED."""
    vits = pytest.importorskip("dinov2.models.vision_transformer")
    from functools import partial

    from dinov2.layers import MemEffAttention, NestedTensorBlock

    torch.manual_seed(SOURCE_SEED)
    model = vits.DinoVisionTransformer(img_size=518, patch_size=14, embed_dim=64, depth=4, num_heads=1, mlp_ratio=4,
                                       block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention),
                                       init_values=1.0, block_chunks=0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    state = model.state_dict()
    torch.save(state, path)
    return path, state


def meta_to_hf_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The transformers tensors a Meta DINOv2 state dict must become (written from the two
    libraries' module names; q, k, v are the thirds of Meta's fused qkv)."""
    out = {"embeddings.cls_token": state["cls_token"], "embeddings.mask_token": state["mask_token"][0],
           "embeddings.position_embeddings": state["pos_embed"],
           "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
           "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"]}
    blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("blocks.")})
    for i in blocks:
        m, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for a, b in (("norm1", "norm1"), ("norm2", "norm2"), ("attn.proj", "attention.o_proj"),
                     ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            out[h + b + ".weight"], out[h + b + ".bias"] = state[m + a + ".weight"], state[m + a + ".bias"]
        out[h + "layer_scale1.lambda1"], out[h + "layer_scale2.lambda1"] = state[m + "ls1.gamma"], state[m + "ls2.gamma"]
        for part, idx in (("q_proj", 0), ("k_proj", 1), ("v_proj", 2)):
            out[h + f"attention.{part}.weight"] = state[m + "attn.qkv.weight"].chunk(3)[idx]
            out[h + f"attention.{part}.bias"] = state[m + "attn.qkv.bias"].chunk(3)[idx]
    return out


@pytest.fixture(scope="module")
def encoder_sources(vit_sources, tmp_path_factory) -> dict[str, tuple[str, dict[str, torch.Tensor]]]:
    """``kind -> (the --encoder value, the tensors the loaded ViT must hold)``."""
    from safetensors.torch import load_file

    from sam2_vitplug.encoders.loading import packaged_path

    pth, meta_state = meta_dinov2_pth(tmp_path_factory.mktemp("meta") / "dinov2_tiny_meta.pth")
    prefix = "image_encoder.trunk.vit."
    demo = {k[len(prefix):]: v for k, v in load_file(str(packaged_path("assets/sam2_vit_demo/model.safetensors"))).items()
            if k.startswith(prefix)}
    return {"preset": ("dinov2_demo", demo),
            "directory": (str(vit_sources["dinov2"]), _source_vit_state(vit_sources["dinov2"])),
            "meta-pth": (str(pth), meta_to_hf_names(meta_state))}


def _assert_encoder_record(audit: Path, source: dict[str, torch.Tensor]) -> None:
    records = read_records(audit, "encoder")
    assert records, "no encoder was loaded"
    for record in records:  # every load the command did
        assert sorted(record["tensors"]) == sorted(source)
        _assert_record_is(record, {n: t.to(getattr(torch, record["tensors"][n]["dtype"])) for n, t in source.items()})


def test_fewshot_memory_and_run_use_the_given_sam2_checkpoint(fewshot_data, hiera_ckpt, monkeypatch, tmp_path,
                                                              encoder_sources):
    """Box-only references (SAM2 makes their masks) and a SAM2 point-grid run, with the Hiera-T
    checkpoint and a local-directory matcher: each command's own models are the sources'."""
    from sam2_vitplug.cli import main

    path, source = hiera_ckpt("t")
    sam2 = ["--sam2-config", "sam2.1_hiera_t.yaml", "--sam2-ckpt", str(path), "--sam2-override",
            "++model.image_size=256"]
    enc_arg, enc_source = encoder_sources["directory"]
    refs = clear_references(fewshot_data / "train" / "annotations.json", tmp_path / "refs_boxes.json", box_only=True)
    bank = tmp_path / "bank.safetensors"
    audit = _audited(monkeypatch, tmp_path)
    assert main(["fewshot", "memory", "--refs", str(refs), "--images", str(fewshot_data / "train" / "images"),
                 "--shots", "1", "--encoder", enc_arg, "--out", str(bank), "--set", "memory.min_size=16",
                 "--device", "cpu", *sam2]) == 0
    (record,) = read_records(audit, "sam2")
    _assert_record_is(record, source)
    _assert_encoder_record(audit, enc_source)

    audit2 = tmp_path / "audit_run"
    monkeypatch.setenv(ENV_VAR, str(audit2))
    assert main(["fewshot", "run", "--bank", str(bank), "--images", str(fewshot_data / "val" / "images"),
                 "--points-per-side", "4", "--quiet", "--device", "cpu", "--out", str(tmp_path / "r.json"), *sam2]) == 0
    (record,) = read_records(audit2, "sam2")
    assert sorted(record["tensors"]) == sorted(source)
    _assert_record_is(record, source)
    _assert_encoder_record(audit2, enc_source)


@pytest.mark.parametrize("kind", ["preset", "directory", "meta-pth"])
def test_encoder_flag_of_fewshot_memory_and_features(fewshot_data, encoder_sources, monkeypatch, tmp_path, kind):
    from sam2_vitplug.cli import main

    enc_arg, enc_source = encoder_sources[kind]
    audit = _audited(monkeypatch, tmp_path)
    refs = clear_references(fewshot_data / "train" / "annotations.json", tmp_path / "refs.json")
    assert main(["fewshot", "memory", "--refs", str(refs),
                 "--images", str(fewshot_data / "train" / "images"), "--shots", "1", "--encoder", enc_arg,
                 "--out", str(tmp_path / "bank.safetensors"), "--set", "memory.min_size=16", "--device", "cpu"]) == 0
    _assert_encoder_record(audit, enc_source)
    image = sorted((fewshot_data / "val" / "images").iterdir())[0]
    audit2 = tmp_path / "audit_features"
    monkeypatch.setenv(ENV_VAR, str(audit2))
    assert main(["features", str(image), "--encoder", enc_arg, "--transforms", "1", "--input-size", "56",
                 "--device", "cpu", "--quiet", "--out", str(tmp_path / "feat.safetensors")]) == 0
    _assert_encoder_record(audit2, enc_source)


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory) -> dict[str, str]:
    from make_synthetic_dataset import DatasetSpec, make_dataset

    from sam2_vitplug.heads.data import write_class_masks_from_coco

    root = tmp_path_factory.mktemp("weights_seg")
    make_dataset(root / "ds", DatasetSpec(train=4, val=2, image_size=64, seed=5))
    for split in ("train", "val"):
        write_class_masks_from_coco(root / "ds" / split / "annotations.json", root / "masks" / split)
    return {"images": str(root / "ds" / "train" / "images"), "masks": str(root / "masks" / "train"),
            "val_images": str(root / "ds" / "val" / "images"), "val_masks": str(root / "masks" / "val")}


def _seg_train(main, enc_arg: str, data: dict, ck: Path) -> None:
    assert main(["seg", "train", "--head", "linear", "--encoder", enc_arg, "--num-classes", "5",
                 "--image-paths", data["images"], "--mask-paths", data["masks"], "--image-size", "64",
                 "--batch-size", "2", "--epochs", "1", "--warmup-epochs", "0", "--num-workers", "0",
                 "--checkpoint-dir", str(ck), "--no-progress", "--device", "cpu"]) == 0


@pytest.mark.parametrize("kind", ["preset", "directory", "meta-pth"])
def test_encoder_flag_of_seg_train(seg_data, encoder_sources, monkeypatch, tmp_path, kind):
    from sam2_vitplug.cli import main

    enc_arg, enc_source = encoder_sources[kind]
    audit = _audited(monkeypatch, tmp_path)
    _seg_train(main, enc_arg, seg_data, tmp_path / "ck")
    _assert_encoder_record(audit, enc_source)


def test_seg_predict_and_eval_reload_what_training_saved(seg_data, encoder_sources, monkeypatch, tmp_path):
    """The head and pyramid that `seg predict` / `seg eval` run with are the checkpoint's tensors,
    and the frozen ViT is the encoder source's (the checkpoint does not store it)."""
    from sam2_vitplug.cli import main
    from sam2_vitplug.heads.model import load_seg_model, read_checkpoint

    enc_arg, enc_source = encoder_sources["directory"]
    ck = tmp_path / "ck"
    _seg_train(main, enc_arg, seg_data, ck)
    saved = read_checkpoint(ck / "last.pt")["model"]
    assert any(k.startswith("head.") for k in saved) and any(k.startswith("trunk.pyramid.") for k in saved)
    model = load_seg_model(ck / "last.pt")
    own = model.state_dict()
    _assert_equal_tensors(own, saved)
    vit = {k[len("trunk.vit."):]: v for k, v in own.items() if k.startswith("trunk.vit.")}
    _assert_equal_tensors(vit, enc_source)
    for command in (["seg", "predict", "--checkpoint", str(ck / "last.pt"), "--input", seg_data["val_images"],
                     "--out", str(tmp_path / "pred"), "--no-progress", "--device", "cpu"],
                    ["seg", "eval", "--checkpoint", str(ck / "last.pt"), "--image-paths", seg_data["val_images"],
                     "--mask-paths", seg_data["val_masks"], "--out", str(tmp_path / "eval.json"), "--no-progress",
                     "--device", "cpu"]):
        audit = tmp_path / f"audit_{command[1]}"
        monkeypatch.setenv(ENV_VAR, str(audit))
        assert main(command) == 0
        _assert_encoder_record(audit, enc_source)


@pytest.mark.parametrize("selector", ["", "#encoder"])
def test_check_pretrained_meta_checkpoint_with_a_selector(monkeypatch, tmp_path, capsys, selector):
    """``check --pretrained FILE.pth.tar#encoder`` reaches Hydra quoted, and the trunk runs with
    the chosen I-JEPA encoder (the release file holds two that differ)."""
    from sam2_vitplug.cli import main
    from sam2_vitplug.encoders import load_encoder

    path = DATA / "meta_reference" / "ijepa" / "tiny-IN1K-vit.14-300e.pth.tar"
    audit = _audited(monkeypatch, tmp_path)
    assert main(["check", "sam2_vit_ijepa_512.yaml", "--pretrained", f"{path}{selector}", "--image-size", "224",
                 "--override", "++model.image_encoder.trunk.out_dims=auto", "--device", "cpu"]) == 0
    monkeypatch.delenv(ENV_VAR)
    expected = load_encoder(f"{path}{selector}").model.state_dict()
    other = load_encoder(f"{path}{'#target_encoder' if selector else '#encoder'}").model.state_dict()
    (sam2,) = read_records(audit, "sam2")
    prefix = "image_encoder.trunk.vit."
    ran = {k[len(prefix):]: v for k, v in sam2["tensors"].items() if k.startswith(prefix)}
    _assert_record_is({"tensors": ran}, expected)
    assert any(not torch.equal(expected[k], other[k]) for k in expected), "the two encoders must differ"
