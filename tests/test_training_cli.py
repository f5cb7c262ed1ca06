"""training_ext: flag -> override mapping, config composition, --print-config and bad input.

Composition only (Hydra), no model is built, except where a test says so."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from training_ext import flags as F
from training_ext.compose import (CPU_TRAINER, SWAPPED_TRUNK_KEYS, LaunchRequest, compose_training_config,
                                  config_name, list_overlays)
from training_ext.train import build_parser, main, request_from_args

TRUNK = "model.image_encoder.trunk"
TINY = "configs/training/tiny_cpu.yaml"


def _compose(*argv: str):
    args = build_parser().parse_intermixed_args(["--config", TINY, "dataset.root=/data/shapes", *argv])
    request = request_from_args(args)
    request.check_paths = False  # composition only: /data/shapes need not exist here
    return compose_training_config(request)


# ---- each flag's override ---------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, expected", [
    ({"encoder_type": "dinov3"}, f"++{TRUNK}.encoder_type=dinov3"),
    ({"encoder_ckpt": "facebook/dinov2-large"}, f"++{TRUNK}.pretrained=facebook/dinov2-large"),
    ({"encoder_ckpt": "/w/my dir/m.pth"}, f"++{TRUNK}.pretrained='/w/my dir/m.pth'"),
    ({"encoder_out_dims": "1024, 1024,512,256"}, f"++{TRUNK}.out_dims=[1024,1024,512,256]"),
    ({"encoder_upsample_mode": "deconv"}, f"++{TRUNK}.upsample_mode=deconv"),
    ({"no_refine_highres": True}, f"++{TRUNK}.refine_highres=false"),
    ({"freeze_vit": True}, f"++{TRUNK}.freeze_vit=true"),
    ({"force_dtype": "bf16"}, f"++{TRUNK}.force_dtype=bf16"),
    ({"vit_verbose": True}, f"++{TRUNK}.verbose=true"),
])
def test_each_flag_maps_to_one_override(kwargs, expected):
    assert F.encoder_overrides(F.EncoderFlags(**kwargs), "vit") == [expected]


def test_no_flags_no_overrides():
    assert F.encoder_overrides(F.EncoderFlags(), "vit") == []
    assert F.encoder_overrides(F.EncoderFlags(encoder_type="hiera"), "hiera") == []


def test_flags_land_in_composed_trunk_and_neck_follows_out_dims():
    cfg = _compose("--encoder-type", "ijepa", "--encoder-ckpt", "/m/ijepa", "--encoder-out-dims", "64,64,32,16",
                   "--encoder-upsample-mode", "deconv", "--no-refine-highres", "--freeze-vit", "--force-dtype", "bf16",
                   "--vit-verbose")
    for node in (cfg.model, cfg.trainer.model):  # the build_sam2 node and the trainer's copy agree
        trunk = node.image_encoder.trunk
        assert (trunk.encoder_type, trunk.pretrained, list(trunk.out_dims)) == ("ijepa", "/m/ijepa", [64, 64, 32, 16])
        assert (trunk.upsample_mode, trunk.refine_highres, trunk.freeze_vit, trunk.force_dtype, trunk.verbose) == \
            ("deconv", False, True, "bf16", True)
        assert list(node.image_encoder.neck.backbone_channel_list) == [64, 64, 32, 16]
    assert cfg.trainer.model._target_ == "training.model.sam2.SAM2Train"
    assert cfg.model._target_ == "sam2.modeling.sam2_base.SAM2Base"


def test_cpu_selects_cpu_trainer_and_image_size_follows_resolution():
    cfg = _compose("--device", "cpu", "scratch.resolution=96")
    assert cfg.trainer._target_ == CPU_TRAINER and cfg.trainer.accelerator == "cpu"
    assert cfg.trainer.model.image_size == 96 and cfg.model.image_size == 96


def test_hiera_switches_model_option_and_back():
    hiera = _compose("--encoder-type", "hiera")
    assert hiera.vitplug_train.trunk_kind == "hiera"
    assert hiera.trainer.model.image_encoder.trunk._target_ == "sam2.modeling.backbones.hieradet.Hiera"
    assert hiera.vitplug_train.build_sam2.config == "configs/sam2.1/sam2.1_hiera_s.yaml"
    vit = _compose("--encoder-type", "dino", "training/model@model=hiera_t")  # a hiera option switched to a ViT
    assert vit.vitplug_train.trunk_kind == "vit"
    assert vit.trainer.model.image_encoder.trunk._target_ == "sam2_vitplug.modeling.ViTTrunkMultiScale"


def test_sam2_ckpt_uses_upstream_exclude_kernel(tmp_path):
    ckpt = tmp_path / "sam2.1_hiera_small.pt"
    ckpt.write_bytes(b"x")
    init = _compose("--sam2-ckpt", str(ckpt)).trainer.checkpoint.model_weight_initializer
    assert init._target_ == "training.utils.checkpoint_utils.load_state_dict_into_model" and init.strict
    assert list(init.ignore_missing_keys) == list(SWAPPED_TRUNK_KEYS)
    kernel = init.state_dict.checkpoint_kernels[0]
    assert kernel._target_ == "training.utils.checkpoint_utils.CkptExcludeKernel"
    assert list(kernel.key_pattern) == list(SWAPPED_TRUNK_KEYS)
    hiera = _compose("--encoder-type", "hiera", "--sam2-ckpt", str(ckpt)).trainer.checkpoint.model_weight_initializer
    assert hiera.ignore_missing_keys is None and "checkpoint_kernels" not in hiera.state_dict  # full strict load


def test_exclude_kernel_drops_exactly_trunk_and_neck_convs():
    from training.utils.checkpoint_utils import CkptExcludeKernel

    state = {k: torch.zeros(1) for k in ("image_encoder.trunk.blocks.0.w", "image_encoder.neck.convs.1.conv.weight",
                                         "image_encoder.neck.position_encoding.x", "sam_mask_decoder.w")}
    kept = CkptExcludeKernel(list(SWAPPED_TRUNK_KEYS))(state)
    assert sorted(kept) == ["image_encoder.neck.position_encoding.x", "sam_mask_decoder.w"]


def test_overrides_and_experiment_dir_and_build_record(tmp_path):
    cfg = _compose("--encoder-ckpt", "/m/d", "--experiment-dir", str(tmp_path / "exp"), "scratch.num_epochs=3",
                   "++model.image_encoder.trunk.feature_layers=4")
    assert cfg.trainer.max_epochs == 3
    assert cfg.launcher.experiment_log_dir == str(tmp_path / "exp")
    record = cfg.vitplug_train.build_sam2
    assert record.config == "sam2_vit_dino_s.yaml"
    assert list(record.overrides) == [f"++{TRUNK}.pretrained=/m/d", f"++{TRUNK}.feature_layers=4",
                                      "++model.image_size=128", f"++{TRUNK}.random_init=true"]


def test_config_name_forms():
    assert config_name("configs/training/tiny_cpu.yaml") == "training/tiny_cpu.yaml"
    assert config_name(str(Path(__file__).resolve().parents[1] / TINY)) == "training/tiny_cpu.yaml"
    assert config_name("training/tiny_cpu") == "training/tiny_cpu.yaml"
    assert "configs/training/image_png_finetune.yaml" in list_overlays()


def test_print_config_prints_resolved_yaml_and_exits(capsys):
    assert main(["--config", TINY, "--print-config", "--device", "cpu", "--encoder-out-dims", "32,32,16,8",
                 "dataset.root=/data/shapes"]) == 0
    cfg = OmegaConf.create(capsys.readouterr().out)
    assert cfg.trainer._target_ == CPU_TRAINER and cfg.trainer.max_epochs == 1  # ${times:...} resolved
    assert cfg.trainer.data.train.datasets[0].dataset.datasets[0].video_dataset.img_folder == \
        "/data/shapes/train/png/JPEGImages"
    assert list(cfg.trainer.model.image_encoder.neck.backbone_channel_list) == [32, 32, 16, 8]


@pytest.mark.parametrize("overlay", ["image_png_finetune", "image_sa1b_finetune", "video_png_finetune"])
def test_shipped_overlays_compose(overlay):
    cfg = compose_training_config(LaunchRequest(config=f"configs/training/{overlay}.yaml",
                                                overrides=["dataset.img_folder=/i", "dataset.gt_folder=/g"],
                                                check_paths=False))
    raw = cfg.trainer.data.train.datasets[0].dataset.datasets[0].video_dataset
    assert raw._target_.endswith("SA1BRawDataset" if "sa1b" in overlay else "PNGRawDataset")
    assert cfg.scratch.num_frames == (8 if overlay.startswith("video") else 1)


# ---- bad input: each fails before anything runs or is written -----------------------------------
def _fails(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", TINY, "--print-config", "dataset.root=/d", *argv])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("dims", ["32,32,16", "32,32,16,8,4", "a,b,c,d", "32,0,16,8", "32;32;16;8"])
def test_bad_out_dims(capsys, dims):
    assert "--encoder-out-dims must be 4 positive ints" in _fails(capsys, "--encoder-out-dims", dims)


def test_unknown_encoder_type(capsys):
    err = _fails(capsys, "--encoder-type", "resnet")
    assert "invalid choice: 'resnet'" in err and "dinov3" in err and "hiera" in err


def test_encoder_type_choices_come_from_entry_points():
    from sam2_vitplug.encoders import list_encoder_types

    action = next(a for a in build_parser()._actions if a.dest == "encoder_type")
    assert list(action.choices) == list_encoder_types()


def test_vit_flags_rejected_with_hiera(capsys):
    err = _fails(capsys, "--encoder-type", "hiera", "--freeze-vit", "--encoder-ckpt", "x")
    assert "--encoder-ckpt, --freeze-vit only apply to ViT encoder types" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda(capsys):
    assert "no CUDA GPU is visible" in _fails(capsys, "--device", "cuda")
    assert "no CUDA GPU is visible" in _fails(capsys, "trainer.accelerator=cuda")


def test_unsupported_device(capsys):
    assert "runs on cuda or cpu only" in _fails(capsys, "--device", "mps")


def test_force_dtype_probe_failure_is_reported(capsys, monkeypatch):
    monkeypatch.setattr(F, "dtype_runs_on", lambda dtype, device: "no kernel for Half")
    err = _fails(capsys, "--device", "cpu", "--force-dtype", "fp16")
    assert "--force-dtype fp16 cannot run on cpu" in err and "no kernel for Half" in err


def test_force_dtype_probe_runs_here():
    assert F.dtype_runs_on("fp32", "cpu") is None
    assert F.dtype_runs_on("bf16", "cpu") is None  # bf16 autocast/compute is supported on CPU


def test_missing_dataset(capsys):
    with pytest.raises(SystemExit):
        main(["--config", TINY, "--print-config"])
    assert "set the dataset: dataset.root=..." in capsys.readouterr().err


def test_unknown_config_and_config_outside_search_path(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["--config", "training/nope.yaml", "--print-config"])
    assert "was not found on Hydra's search path" in capsys.readouterr().err
    outside = tmp_path / "mine.yaml"
    outside.write_text("trainer: {}\n")
    with pytest.raises(SystemExit):
        main(["--config", str(outside), "--print-config"])
    assert "is outside the config search path" in capsys.readouterr().err


def test_missing_sam2_ckpt(capsys, tmp_path):
    assert "--sam2-ckpt /no/such.pt does not exist" in _fails(capsys, "--sam2-ckpt", "/no/such.pt")
    assert "--init-ckpt /no/such.pt does not exist" in _fails(capsys, "--init-ckpt", "/no/such.pt")
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"x")
    assert "not both" in _fails(capsys, "--init-ckpt", str(ckpt), "--sam2-ckpt", str(ckpt))


def test_init_ckpt_loads_everything_strictly(tmp_path):
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"x")
    init = _compose("--init-ckpt", str(ckpt)).trainer.checkpoint.model_weight_initializer
    assert init.strict and init.ignore_missing_keys is None and "checkpoint_kernels" not in init.state_dict
    assert init.state_dict.checkpoint_path == str(ckpt.resolve())


def test_bad_launch_numbers_and_overrides(capsys):
    assert "--num-gpus must be >= 1" in _fails(capsys, "--num-gpus", "0")
    assert "overrides must look like key=value" in _fails(capsys, "scratch.num_epochs")


def test_nothing_written_on_bad_input(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["--config", TINY, "--experiment-dir", str(tmp_path / "exp"), "--encoder-out-dims", "1,2",
              "dataset.root=/d"])
    assert not (tmp_path / "exp").exists()


def test_cpu_mem_meter_reports_rss_without_cuda():
    from training_ext.trainer import CPUMemMeter

    meter = CPUMemMeter("Mem (GB)", torch.device("cpu"), ":.2f")
    meter.update(reset_peak_usage=True)
    assert 0.01 < meter.val < 1024 and meter.count == 1  # this process's peak RSS, in GB


def test_module_entry_point_help():
    import subprocess

    out = subprocess.run([sys.executable, "-m", "training_ext.train", "--help"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert out.returncode == 0 and "--encoder-out-dims" in out.stdout and "--use-cluster" in out.stdout


# ---- bad paths, checkpoints and overrides: one line, exit 2, no experiment dir -----------------
@pytest.fixture
def png_root(tmp_path) -> Path:
    for sub in ("JPEGImages", "Annotations"):
        (tmp_path / "data" / "train" / "png" / sub).mkdir(parents=True)
    return tmp_path / "data"


def _real_ckpt(path: Path) -> Path:
    torch.save({"model": {}}, path)
    return path


@pytest.mark.parametrize("case, expected", [
    ("root", "dataset.root={root}x does not exist"),
    ("img_folder", "dataset.img_folder=/no/JPEGImages does not exist"),
    ("empty_ckpt", "--sam2-ckpt {tmp}/empty.pt is empty (0 bytes)"),
    ("truncated_ckpt", "--sam2-ckpt {tmp}/cut.pt (200 bytes) is not a torch checkpoint"),
    ("text_init_ckpt", "--init-ckpt {tmp}/notes.pt (5 bytes) is not a torch checkpoint"),
    ("unknown_override", "Could not override 'trainer.nonexistent'"),
    ("device", "--device 'tpu9' is not a device"),
])
def test_bad_training_input_is_one_line_before_the_experiment_dir(capsys, tmp_path, png_root, case, expected):
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "cut.pt").write_bytes(_real_ckpt(tmp_path / "full.pt").read_bytes()[:200])
    (tmp_path / "notes.pt").write_text("hello")
    extra = {"root": [f"dataset.root={png_root}x"],
             "img_folder": [f"dataset.root={png_root}", "dataset.img_folder=/no/JPEGImages"],
             "empty_ckpt": [f"dataset.root={png_root}", "--sam2-ckpt", str(tmp_path / "empty.pt")],
             "truncated_ckpt": [f"dataset.root={png_root}", "--sam2-ckpt", str(tmp_path / "cut.pt")],
             "text_init_ckpt": [f"dataset.root={png_root}", "--init-ckpt", str(tmp_path / "notes.pt")],
             "unknown_override": [f"dataset.root={png_root}", "trainer.nonexistent=3"],
             "device": [f"dataset.root={png_root}", "--device", "tpu9", "trainer.accelerator=cpu"]}[case]
    if case == "device":  # training_ext's own device rule comes first: the trainer runs on cuda or cpu
        expected = "--device tpu9: upstream training.trainer.Trainer runs on cuda or cpu only"
    exp = tmp_path / "exp"
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", TINY, "--experiment-dir", str(exp), *extra])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert expected.format(root=png_root, tmp=tmp_path) in err
    assert not exp.exists()


def test_train_py_runs_as_a_file():
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(repo / "training_ext" / "train.py"), "--config", TINY, "--print-config",
                          "--device", "cpu", "dataset.root=/d"], capture_output=True, text=True, cwd=repo, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "experiment_log_dir" in out.stdout and "attempted relative import" not in out.stderr
