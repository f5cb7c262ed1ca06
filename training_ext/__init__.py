"""Drive upstream SAM 2 training (the ``training`` package) with a ViT trunk.

A thin layer: ``--encoder-*`` flags become Hydra overrides on a composed overlay from
``configs/training/``; a CPU-capable subclass of ``training.trainer.Trainer`` is picked when
``accelerator: cpu``; then upstream ``training.train.main`` launches (locally or through submitit).

Entry point: ``python -m training_ext.train --config configs/training/<overlay>.yaml ...``.
"""
