"""What every user-facing list of encoder sources says (``--encoder`` help, ``info``, docstrings).

One text, so the CLI help, ``sam2-vitplug info`` and the loader's errors cannot drift apart.
Plain strings only: the CLI imports this without importing torch.
"""

META_FORMATS = ("a Meta checkpoint (DINOv2/DINOv3 .pth, I-JEPA .pth.tar; append '#encoder' for I-JEPA's "
                "context encoder instead of the default target_encoder)")
ENCODER_SOURCES_HELP = "preset, hub id, local directory (config.json + weights) or " + META_FORMATS
META_FORMATS_INFO = ("Meta checkpoints (family read from the keys, verified against Meta's outputs): DINOv2 "
                     "dinov2_vit*14[_reg4]_pretrain.pth, DINOv3 dinov3_vit*16*_pretrain_*.pth (every size, 7B "
                     "included), I-JEPA *.pth.tar training checkpoints (target_encoder by default; "
                     "'file.pth.tar#encoder' for the context encoder)")
