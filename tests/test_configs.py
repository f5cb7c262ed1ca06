"""Config discovery through the Hydra plugin, our overlays, and upstream configs untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import FAMILIES, TINY_OUT_DIMS, tiny_overrides
from omegaconf import OmegaConf

import sam2  # noqa: F401  (initialises Hydra on the sam2 config module, as users do)
from hydra import compose
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin
from sam2.build_sam import build_sam2

from sam2_vitplug.encoders import find_preset, get_preset

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "sam2"
OUR_CONFIGS = sorted(p.name for p in CONFIG_DIR.glob("sam2_vit_*.yaml"))
UPSTREAM_DIR = Path(sam2.__file__).parent / "configs"


def test_plugin_is_discovered():
    names = [p.__name__ for p in Plugins.instance().discover(SearchPathPlugin)]
    assert "Sam2VitplugSearchPathPlugin" in names


def test_config_set_is_complete():
    expected = {f"sam2_vit_{fam}{v}.yaml" for fam in ("dino", "dinov3") for v in ("", "_b", "_s")}
    expected |= {"sam2_vit_ijepa.yaml", "sam2_vit_ijepa_512.yaml"}
    assert expected <= set(OUR_CONFIGS)


@pytest.mark.parametrize("name", OUR_CONFIGS)
def test_every_overlay_composes(name):
    cfg = compose(config_name=name)
    OmegaConf.resolve(cfg)
    enc = cfg.model.image_encoder
    assert enc._target_ == "sam2_vitplug.modeling.ViTImageEncoder"
    assert enc.trunk._target_ == "sam2_vitplug.modeling.ViTTrunkMultiScale"
    # no Hiera argument leaks into our trunk
    assert not {"embed_dim", "num_heads", "stages", "global_att_blocks"} & set(enc.trunk)
    assert list(enc.neck.backbone_channel_list) == list(enc.trunk.out_dims)
    preset = get_preset(enc.trunk.pretrained)
    assert preset.encoder_type == enc.trunk.encoder_type
    assert list(enc.trunk.out_dims)[:2] == [preset.hidden_size] * 2
    assert cfg.model.image_size % 16 == 0
    # the rest is upstream's: memory attention equals the upstream file's node
    upstream_name = next(line.split("/")[-1].strip() for line in (CONFIG_DIR / name).read_text().splitlines()
                         if "/configs/sam2.1/" in line)
    upstream = OmegaConf.load(UPSTREAM_DIR / "sam2.1" / f"{upstream_name}.yaml")
    assert cfg.model.memory_attention == upstream.model.memory_attention
    assert cfg.model.memory_encoder == upstream.model.memory_encoder


def test_training_and_matching_groups_are_on_the_search_path():
    from hydra.core.global_hydra import GlobalHydra

    sources = [s.path for s in GlobalHydra.instance().config_loader().get_sources()]
    assert "sam2_vitplug.configs.sam2" in sources and "sam2_vitplug.configs" in sources
    # appended after upstream: an upstream name can never be shadowed
    assert sources.index("sam2") < sources.index("sam2_vitplug.configs.sam2")


def test_override_pretrained_like_the_readme(tiny_models):
    model = build_sam2("sam2_vit_dino.yaml", ckpt_path=None, device="cpu",
                       hydra_overrides_extra=tiny_overrides(tiny_models["dinov2"], image_size=256))
    trunk = model.image_encoder.trunk
    assert trunk.encoder_type == "dino" and trunk.channel_list == TINY_OUT_DIMS
    assert model.image_size == 256 and not model.training


def test_channel_mismatch_names_both_lists(tiny_models):
    over = tiny_overrides(tiny_models["dinov2"]) + ["++model.image_encoder.neck.backbone_channel_list=[64,32,16,8]"]
    with pytest.raises(Exception) as info:
        build_sam2("sam2_vit_dino_s.yaml", ckpt_path=None, device="cpu", hydra_overrides_extra=over)
    text = str(info.value) + str(info.value.__cause__)
    assert "[32, 32, 16, 8]" in text and "[64, 32, 16, 8]" in text


@pytest.mark.parametrize("name", ["sam2.1/sam2.1_hiera_t.yaml", "sam2/sam2_hiera_s.yaml"])
def test_upstream_hiera_configs_unchanged(name, tiny_models):
    """With the plugin installed and our modules imported, upstream names still resolve to
    upstream's files and build the same model (same seed -> identical weights and outputs)."""
    import sam2_vitplug.build  # noqa: F401
    import sam2_vitplug.modeling  # noqa: F401
    from hydra.utils import instantiate

    cfg = compose(config_name=f"configs/{name}")
    OmegaConf.resolve(cfg)
    reference = OmegaConf.load(UPSTREAM_DIR / name)
    assert cfg.model == reference.model

    torch.manual_seed(0)
    built = build_sam2(f"configs/{name}", ckpt_path=None, device="cpu", apply_postprocessing=False)
    torch.manual_seed(0)
    plain = instantiate(reference.model, _recursive_=True).eval()
    sd_a, sd_b = built.state_dict(), plain.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    x = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        a, b = built.image_encoder(x), plain.image_encoder(x)
    assert all(torch.equal(p, q) for p, q in zip(a["backbone_fpn"], b["backbone_fpn"]))


def test_vitfpnneck_equals_upstream_fpnneck():
    from sam2.modeling.backbones.image_encoder import FpnNeck
    from sam2.modeling.position_encoding import PositionEmbeddingSine

    from sam2_vitplug.modeling import ViTFpnNeck

    for interp in ("nearest", "bilinear"):
        kw = dict(d_model=64, backbone_channel_list=[32, 32, 16, 8], fpn_top_down_levels=[2, 3], fpn_interp_model=interp)
        ours = ViTFpnNeck(PositionEmbeddingSine(num_pos_feats=64, normalize=True), **kw)
        theirs = FpnNeck(PositionEmbeddingSine(num_pos_feats=64, normalize=True), **kw)
        theirs.load_state_dict(ours.state_dict())  # same keys and shapes
        xs = [torch.randn(1, c, s, s) for c, s in zip([8, 16, 32, 32], [32, 16, 8, 4])]
        (fa, pa), (fb, pb) = ours(xs), theirs(xs)
        assert all(torch.equal(a, b) for a, b in zip(fa, fb)) and all(torch.equal(a, b) for a, b in zip(pa, pb))
    # odd stride-16 grids (image size 16 * odd) work with ours
    xs = [torch.randn(1, c, s, s) for c, s in zip([8, 16, 32, 32], [36, 18, 9, 5])]
    feats, _ = ours(xs)
    assert [tuple(f.shape[-2:]) for f in feats] == [(36, 36), (18, 18), (9, 9), (5, 5)]


def test_families_fixture_configs_exist():
    for _, config in FAMILIES.values():
        assert config in OUR_CONFIGS
        assert find_preset(compose(config_name=config).model.image_encoder.trunk.pretrained) is not None


def test_out_dims_auto_flows_to_the_neck(tiny_models):
    over = tiny_overrides(tiny_models["dinov3"]) + ["++model.image_encoder.trunk.out_dims=auto"]
    model = build_sam2("sam2_vit_dinov3_s.yaml", ckpt_path=None, device="cpu", hydra_overrides_extra=over)
    enc = model.image_encoder
    assert enc.trunk.channel_list == [32, 32, 16, 8] == enc.neck.backbone_channel_list
    assert [c.conv.in_channels for c in enc.neck.convs] == [32, 32, 16, 8]
    with torch.no_grad():
        out = model.forward_image(torch.randn(1, 3, 128, 128))
    assert [tuple(f.shape[1:]) for f in out["backbone_fpn"]] == [(32, 32, 32), (64, 16, 16), (256, 8, 8)]


def test_neck_rejects_unknown_channel_string():
    from sam2.modeling.position_encoding import PositionEmbeddingSine

    from sam2_vitplug.modeling import ViTFpnNeck

    with pytest.raises(ValueError, match="'auto'"):
        ViTFpnNeck(PositionEmbeddingSine(num_pos_feats=64), d_model=64, backbone_channel_list="automatic",
                   fpn_top_down_levels=[2, 3])
