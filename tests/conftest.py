"""Shared fixtures: tiny random transformers ViTs saved with ``save_pretrained`` and loaded
back through the real loading path. Nothing here touches the network."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64)
TINY_OUT_DIMS = [32, 32, 16, 8]


def _tiny_configs():
    import transformers as T

    return {
        # family -> (config, patch size)
        "dinov2": T.Dinov2Config(**TINY, patch_size=14, image_size=518),
        "dinov2_reg": T.Dinov2WithRegistersConfig(**TINY, patch_size=14, image_size=518, num_register_tokens=4),
        "dinov3": T.DINOv3ViTConfig(**TINY, patch_size=16, num_register_tokens=4),
        "ijepa": T.IJepaConfig(**TINY, patch_size=14, image_size=224),
    }


# encoder_type of each tiny model and the config overlay that uses that family
FAMILIES = {
    "dinov2": ("dino", "sam2_vit_dino_s.yaml"),
    "dinov2_reg": ("dino", "sam2_vit_dino_s.yaml"),
    "dinov3": ("dinov3", "sam2_vit_dinov3_s.yaml"),
    "ijepa": ("ijepa", "sam2_vit_ijepa_512.yaml"),
}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Directories holding tiny random models of each family (seeded)."""
    import transformers as T

    root = tmp_path_factory.mktemp("tiny_vits")
    paths = {}
    for name, config in _tiny_configs().items():
        torch.manual_seed(0)
        model = T.AutoModel.from_config(config)
        # randomise layer scales / position embeddings so outputs depend on every weight
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "lambda1" in pname or "position_embeddings" in pname or "register_tokens" in pname:
                    p.normal_(0, 0.5)
        model.save_pretrained(root / name)
        paths[name] = root / name
    return paths


def tiny_overrides(model_dir: Path, image_size: int = 128, **trunk: object) -> list[str]:
    """Hydra overrides that point a config at a tiny local model."""
    out = [
        f"++model.image_encoder.trunk.pretrained={model_dir}",
        f"++model.image_encoder.trunk.out_dims=[{','.join(map(str, TINY_OUT_DIMS))}]",
        f"++model.image_size={image_size}",
    ]
    out += [f"++model.image_encoder.trunk.{k}={v}" for k, v in trunk.items()]
    return out


def clear_references(coco_path: Path, out: Path, *, box_only: bool = False) -> Path:
    """The annotations every sampler rule accepts (boxes >= 16 px, 12 px clear of the borders),
    and only the classes that have one, so the test holds whatever the method's rule."""
    coco = json.loads(coco_path.read_text())
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}

    def clear(ann) -> bool:
        x, y, w, h = ann["bbox"]
        width, height = sizes[ann["image_id"]]
        return min(w, h) >= 16 and min(x, y, width - x - w, height - y - h) >= 12

    coco["annotations"] = [a for a in coco["annotations"] if clear(a)]
    used = {a["category_id"] for a in coco["annotations"]}
    coco["categories"] = [c for c in coco["categories"] if c["id"] in used]
    assert coco["annotations"], "the synthetic data has no reference far enough from the borders"
    if box_only:
        for ann in coco["annotations"]:
            ann.pop("segmentation", None)
    out.write_text(json.dumps(coco))
    return out
