"""Upstream SAM2 clients (image predictor, automatic mask generator, video predictor) on our
configs with tiny random ViTs of each family. Random weights: we check that the clients run
end to end and return well-formed outputs, not mask quality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FAMILIES, tiny_overrides
from PIL import Image
from sam2.build_sam import build_sam2, build_sam2_video_predictor
from sam2.sam2_image_predictor import SAM2ImagePredictor

from sam2_vitplug.build import make_image_predictor, make_mask_generator

IMAGE_SIZE = 128


def _image(h=96, w=120, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 40, np.uint8)
    img[20:60, 30:90] = (200, 60, 60)
    return (img + rng.integers(0, 20, img.shape)).astype(np.uint8)



@pytest.fixture(scope="module", params=list(FAMILIES))
def family_model(request, tiny_models):
    name = request.param
    _, config = FAMILIES[name]
    torch.manual_seed(0)
    model = build_sam2(config, ckpt_path=None, device="cpu",
                       hydra_overrides_extra=tiny_overrides(tiny_models[name], IMAGE_SIZE))
    return name, model


def test_image_predictor_points_and_box(family_model):
    name, model = family_model
    predictor = make_image_predictor(model)
    image = _image()
    predictor.set_image(image)
    masks, scores, logits = predictor.predict(point_coords=np.array([[60, 40]]), point_labels=np.array([1]),
                                              multimask_output=True)
    assert masks.shape == (3, 96, 120) and scores.shape == (3,) and logits.shape == (3, 32, 32)
    masks, scores, _ = predictor.predict(box=np.array([30, 20, 90, 60]), multimask_output=False)
    assert masks.shape == (1, 96, 120) and np.isfinite(scores).all()
    # batched boxes
    predictor.set_image_batch([image, _image(seed=1)])
    masks_b, _, _ = predictor.predict_batch(box_batch=[np.array([[30, 20, 90, 60]])] * 2, multimask_output=False)
    assert len(masks_b) == 2


def test_upstream_predictor_without_helper_fails_off_1024(family_model):
    # documents why fit_predictor_to_model exists: upstream hard-codes 1024 px feature sizes
    _, model = family_model
    plain = SAM2ImagePredictor(model)
    with pytest.raises(RuntimeError):
        plain.set_image(_image())


def test_automatic_mask_generator(family_model):
    _, model = family_model
    generator = make_mask_generator(model, points_per_side=4, points_per_batch=16, pred_iou_thresh=0.0,
                                    stability_score_thresh=0.0, box_nms_thresh=1.0)
    anns = generator.generate(_image())
    assert isinstance(anns, list) and len(anns) > 0  # all filters are off, so some mask survives
    for ann in anns:
        assert ann["segmentation"].shape == (96, 120)
        assert {"bbox", "area", "predicted_iou", "point_coords", "stability_score"} <= set(ann)


def test_video_predictor_propagates(tiny_models, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        img = np.full((96, 120, 3), 30, np.uint8)
        img[20 + 5 * i : 60 + 5 * i, 30:90] = (220, 80, 40)
        Image.fromarray(img).save(frames / f"{i:05d}.jpg")
    for name, (_, config) in FAMILIES.items():
        torch.manual_seed(0)
        predictor = build_sam2_video_predictor(config, ckpt_path=None, device="cpu",
                                               hydra_overrides_extra=tiny_overrides(tiny_models[name], IMAGE_SIZE))
        state = predictor.init_state(video_path=str(frames))
        predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1, points=np.array([[60, 40]], np.float32),
                                        labels=np.array([1], np.int32))
        seen = {}
        for frame_idx, obj_ids, mask_logits in predictor.propagate_in_video(state):
            seen[frame_idx] = mask_logits
            assert list(obj_ids) == [1]
            assert mask_logits.shape == (1, 1, 96, 120)
        assert sorted(seen) == [0, 1, 2], name


def test_upstream_predictor_at_1024_needs_no_helper(tiny_models):
    model = build_sam2("sam2_vit_dinov3_s.yaml", ckpt_path=None, device="cpu",
                       hydra_overrides_extra=tiny_overrides(tiny_models["dinov3"], 1024))
    predictor = SAM2ImagePredictor(model)
    predictor.set_image(_image())
    masks, _, _ = predictor.predict(point_coords=np.array([[60, 40]]), point_labels=np.array([1]))
    assert masks.shape[-2:] == (96, 120)


def test_image_size_multiple_of_16_not_32(tiny_models):
    # 144 px -> a 9x9 stride-16 grid: odd, so the stride-32 level is 5x5 and upstream FpnNeck's
    # scale_factor=2 top-down would give 10x10; ViTFpnNeck resizes to the lateral size instead
    model = build_sam2("sam2_vit_dino_s.yaml", ckpt_path=None, device="cpu",
                       hydra_overrides_extra=tiny_overrides(tiny_models["dinov2"], 144))
    predictor = make_image_predictor(model)
    predictor.set_image(_image())
    masks, scores, logits = predictor.predict(point_coords=np.array([[60, 40]]), point_labels=np.array([1]))
    assert masks.shape == (3, 96, 120) and logits.shape == (3, 36, 36)


def test_upstream_layer_decay_uses_trunk_layer_ids(tiny_models):
    from training.optimizer import layer_decay_param_modifier

    model = build_sam2("sam2_vit_dino_s.yaml", ckpt_path=None, device="cpu",
                       hydra_overrides_extra=tiny_overrides(tiny_models["dinov2"]))
    names = {n for n, _ in model.named_parameters()}
    groups = layer_decay_param_modifier(
        [[{"option": "lr", "scheduler": lambda *a, **k: 1.0, "parameter_names": names}]], model, layer_decay_value=0.5,
        apply_to="image_encoder.trunk")
    by_scale = {}
    for group in groups[0]:
        by_scale.setdefault(group["scheduler"].mult_val, set()).update(group["parameter_names"])
    n = model.image_encoder.trunk.get_num_layers()  # 4 blocks -> scales 0.5**(5 - id)
    first_block = {p for p in names if ".vit.encoder.layer.0." in p}
    embeddings = {p for p in names if ".vit.embeddings." in p}
    assert first_block <= by_scale[0.5 ** (n + 1 - 1)]
    assert embeddings <= by_scale[0.5 ** (n + 1)]
    assert {p for p in names if p.startswith("sam_mask_decoder.")} <= by_scale[1.0]
