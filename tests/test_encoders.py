"""Encoder registry (entry points), presets, and every loading path's errors."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
import transformers as T

from sam2_vitplug.encoders import (
    EncoderNotAvailableError,
    get_family,
    get_preset,
    list_encoder_types,
    list_presets,
    load_encoder,
    refresh,
)
from sam2_vitplug.modeling import ViTTrunkMultiScale

REQUIRED_PRESETS = {
    *(f"dinov2_{s}{r}" for s in ("small", "base", "large", "giant") for r in ("", "_reg")),
    *(f"dinov3_{s}" for s in ("small", "base", "large", "huge_plus")),
    "ijepa_huge14",
}


def test_entry_point_types():
    assert {"dino", "dinov3", "ijepa", "vit", "hiera"} <= set(list_encoder_types())
    assert get_family("hiera").upstream


def test_required_presets_and_their_facts():
    names = {p.name for p in list_presets()}
    assert REQUIRED_PRESETS <= names
    for p in list_presets("dinov3"):
        assert p.patch_size == 16 and p.arch["num_register_tokens"] == 4
    assert all(p.patch_size == 14 for p in list_presets("dino"))
    assert get_preset("ijepa_huge14").patch_size == 14


def test_unknown_names_list_the_choices():
    with pytest.raises(KeyError, match="installed encoder types: .*dinov3"):
        get_family("nope")
    with pytest.raises(KeyError, match="available presets: .*dinov2_large"):
        get_preset("dinov2_enormous")


@pytest.mark.parametrize("preset", sorted(REQUIRED_PRESETS))
def test_every_preset_architecture_builds_a_trunk(preset, tmp_path):
    """Each preset's recorded architecture (1 block, to stay fast) gives the channels and
    strides the trunk promises; no weights needed."""
    p = get_preset(preset)
    config = T.AutoConfig.for_model(p.model_type, **{**p.arch, "num_hidden_layers": 1})
    config.save_pretrained(tmp_path)
    trunk = ViTTrunkMultiScale(str(tmp_path), encoder_type=p.encoder_type, random_init=True).eval()
    with torch.no_grad():
        outs = trunk(torch.randn(1, 3, 64, 96))
    c = p.hidden_size
    assert trunk.channel_list == [c, c, c // 2, c // 4]
    assert [tuple(o.shape[1:]) for o in outs] == [(c // 4, 16, 24), (c // 2, 8, 12), (c, 4, 6), (c, 2, 3)]
    assert trunk.num_prefix_tokens == (0 if p.encoder_type == "ijepa" else 1 + p.arch.get("num_register_tokens", 0))


def test_local_dir_and_random_init(tiny_models):
    enc = load_encoder(tiny_models["dinov2"])
    assert enc.source == "local" and enc.family.name == "dino"
    assert enc.model.embeddings._sam2_vitplug_pos_interp == "meta"  # Meta rule for plain DINOv2
    rnd = load_encoder(tiny_models["dinov2"], random_init=True)
    assert rnd.source == "random"
    a, b = enc.model.state_dict(), rnd.model.state_dict()
    assert not torch.equal(a["encoder.layer.0.mlp.fc1.weight"], b["encoder.layer.0.mlp.fc1.weight"])
    hf = load_encoder(tiny_models["dinov2"], pos_interp="hf")
    assert not hasattr(hf.model.embeddings, "_sam2_vitplug_pos_interp")
    reg = load_encoder(tiny_models["dinov2_reg"])  # transformers' rule already is Meta's for registers
    assert not hasattr(reg.model.embeddings, "_sam2_vitplug_pos_interp")


def test_generic_vit_family(tmp_path):
    T.ViTModel(T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           patch_size=16, image_size=64)).save_pretrained(tmp_path)
    trunk = ViTTrunkMultiScale(str(tmp_path))
    assert trunk.encoder_type == "vit"
    outs = trunk(torch.randn(1, 3, 128, 96))
    assert tuple(outs[2].shape[-2:]) == (8, 6)


def test_offline_missing_hub_model_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderNotAvailableError) as info:
        load_encoder("facebook/dinov2-does-not-exist")
    msg = str(info.value)
    assert "\n" not in msg and "facebook/dinov2-does-not-exist" in msg and "local directory" in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_offline_preset_without_weights(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderNotAvailableError, match="facebook/dinov2-large"):
        load_encoder("dinov2_large")


def test_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_encoder(str(tmp_path / "missing_model_dir"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_encoder("./no/such/dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_encoder(str(tmp_path / "empty"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"not a \.pth/\.pt/\.pth\.tar"):
        load_encoder(str(tmp_path / "weights.bin"))
    (tmp_path / "corrupt.pth").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ValueError, match="corrupt.pth"):
        load_encoder(str(tmp_path / "corrupt.pth"))
    # the generic family has no verified Meta conversion (dino, dinov3 and ijepa do)
    with pytest.raises(NotImplementedError, match="'vit' is not one"):
        load_encoder(str(tmp_path / "corrupt.pth"), encoder_type="vit")


def test_pth_with_unknown_keys_names_the_file(tmp_path):
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3), "fc.bias": torch.zeros(4)}, tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="resnet.pth"):
        load_encoder(str(tmp_path / "resnet.pth"))


def test_trust_remote_code_is_off_by_default(tmp_path):
    marker = tmp_path / "remote_code_ran"
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "my_remote_vit",
        "auto_map": {"AutoConfig": "modeling_remote.Cfg", "AutoModel": "modeling_remote.Model"},
    }))
    (tmp_path / "modeling_remote.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(Exception):
        load_encoder(str(tmp_path))
    assert not marker.exists()


@pytest.fixture
def third_party_family(tmp_path, monkeypatch):
    """A separate 'distribution' declaring an encoder type in the entry-point group."""
    pkg = tmp_path / "myvit_plugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        from sam2_vitplug.encoders import EncoderFamily, EncoderPreset
        MYVIT = EncoderFamily(name="myvit", description="a third-party family", model_types=("vit",), blocks_path="layers",
                              presets=(EncoderPreset(name="myvit_tiny", encoder_type="myvit", hf_id="me/myvit-tiny",
                                                     model_type="vit", arch={"hidden_size": 32, "num_hidden_layers": 2,
                                                     "num_attention_heads": 2, "intermediate_size": 64,
                                                     "patch_size": 16, "image_size": 64}),))
        DUPLICATE = EncoderFamily(name="dino", description="clashes with ours")
    """))

    def add_dist(name: str, entry: str) -> None:
        info = tmp_path / f"{name}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[sam2_vitplug.encoders]\n{entry}\n")

    monkeypatch.syspath_prepend(str(tmp_path))
    refresh()
    yield add_dist
    sys.modules.pop("myvit_plugin", None)
    monkeypatch.undo()
    refresh()


def test_third_party_family_via_entry_point(third_party_family):
    third_party_family("myvit_plugin", "myvit = myvit_plugin:MYVIT")
    refresh()
    assert "myvit" in list_encoder_types()
    trunk = ViTTrunkMultiScale("myvit_tiny", random_init=True)
    assert trunk.encoder_type == "myvit" and trunk.channel_list == [32, 32, 16, 8]


def test_duplicate_encoder_type_names_both_distributions(third_party_family):
    third_party_family("clashing_plugin", "dino = myvit_plugin:DUPLICATE")
    refresh()
    with pytest.raises(RuntimeError, match=r"'dino' is declared twice.*sam2-vitplug.*clashing_plugin|clashing_plugin.*sam2-vitplug"):
        list_encoder_types()


# Architecture fields of the released models, from their hub config.json (as written by transformers'
# convert_dinov2_to_hf.py, convert_dinov3_vit_to_hf.py and convert_ijepa_to_hf.py), typed in here
# independently of presets.py: (hidden, layers, heads, patch, FFN width or mlp_ratio, extra fields).
PUBLISHED_ARCH = {
    "dinov2_small": (384, 12, 6, 14, {"mlp_ratio": 4, "layer_norm_eps": 1e-6, "hidden_act": "gelu"}),
    "dinov2_giant_reg": (1536, 40, 24, 14, {"use_swiglu_ffn": True, "layer_norm_eps": 1e-6, "num_register_tokens": 4}),
    "dinov3_small": (384, 12, 6, 16, {"intermediate_size": 1536, "hidden_act": "gelu", "use_gated_mlp": False}),
    "dinov3_base": (768, 12, 12, 16, {"intermediate_size": 3072, "hidden_act": "gelu", "use_gated_mlp": False}),
    "dinov3_large": (1024, 24, 16, 16, {"intermediate_size": 4096, "hidden_act": "gelu", "use_gated_mlp": False}),
    "dinov3_huge_plus": (1280, 32, 20, 16, {"intermediate_size": 5120, "hidden_act": "silu", "use_gated_mlp": True}),
    "ijepa_huge14": (1280, 32, 16, 14, {"intermediate_size": 5120, "layer_norm_eps": 1e-6, "hidden_act": "gelu",
                                        "image_size": 224, "qkv_bias": True}),
}
DINOV3_SHARED = {"layer_norm_eps": 1e-5, "rope_theta": 100.0, "num_register_tokens": 4, "query_bias": True,
                 "key_bias": False, "value_bias": True, "pos_embed_rescale": 2.0}


@pytest.mark.parametrize("name", sorted(PUBLISHED_ARCH))
def test_random_init_presets_build_the_published_architecture(name):
    """`--random-init` benchmarks build the real architecture: built on the meta device (no weights)."""
    from transformers import AutoConfig, AutoModel

    from sam2_vitplug.encoders import get_preset

    preset = get_preset(name)
    config = AutoConfig.for_model(preset.model_type, **dict(preset.arch))
    hidden, layers, heads, patch, extra = PUBLISHED_ARCH[name]
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.patch_size) == (
        hidden, layers, heads, patch)
    want = {**(DINOV3_SHARED if name.startswith("dinov3") else {}), **extra}
    assert {k: getattr(config, k) for k in want} == want
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    if name == "dinov3_huge_plus":  # the gated MLP really runs SiLU
        assert type(model.model.layer[0].mlp.act_fn).__name__ == "SiLUActivation"
    if name == "ijepa_huge14":
        assert model.layers[0].layernorm_before.eps == 1e-6


@pytest.mark.parametrize("argv", [["features"], ["seg", "train"], ["fewshot", "memory"], ["check", "x.yaml"]])
def test_encoder_help_lists_the_meta_formats(argv, capsys):
    from sam2_vitplug.cli import main

    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "DINOv2/DINOv3 .pth, I-JEPA .pth.tar" in text
    if argv[0] != "check":  # check passes --pretrained to Hydra unquoted, where '#' does not parse
        assert "'#encoder'" in text


def test_info_lists_the_meta_formats(capsys):
    import json

    from sam2_vitplug.cli import main

    assert main(["info", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["meta_checkpoints"]
    for fmt in ("dinov2_vit*14[_reg4]_pretrain.pth", "dinov3_vit*16*_pretrain_*.pth", "I-JEPA *.pth.tar", "#encoder"):
        assert fmt in listed
