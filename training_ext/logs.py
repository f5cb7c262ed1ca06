"""Read the per-step scalars upstream's trainer writes to ``<experiment>/tensorboard``.

Upstream ``training.utils.logger.TensorBoardLogger`` calls ``add_scalar(..., new_style=True)``,
so the values are stored as tensor events, not classic scalar events; this reads both.
"""

from __future__ import annotations

from pathlib import Path

LOSS_TAG = "Step_Losses/Losses/train_all_loss"


def read_scalars(run_dir: str | Path, prefix: str = "Step_Losses/") -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` for tags starting with ``prefix`` (sorted by step, last write wins).

    ``run_dir`` is an experiment folder (with ``tensorboard/``) or a tensorboard folder.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    run_dir = Path(run_dir)
    tb = run_dir / "tensorboard" if (run_dir / "tensorboard").is_dir() else run_dir
    if not list(tb.glob("events.out.tfevents.*")):
        raise FileNotFoundError(f"no tensorboard event files in '{tb}' (expected <experiment_log_dir>/tensorboard)")
    acc = EventAccumulator(str(tb), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    out: dict[str, dict[int, float]] = {}
    for tag in acc.Tags().get("tensors", []):
        if tag.startswith(prefix):
            for event in acc.Tensors(tag):
                out.setdefault(tag, {})[event.step] = float(tensor_util.make_ndarray(event.tensor_proto))
    for tag in acc.Tags().get("scalars", []):
        if tag.startswith(prefix):
            for event in acc.Scalars(tag):
                out.setdefault(tag, {})[event.step] = float(event.value)
    return {tag: sorted(values.items()) for tag, values in sorted(out.items())}
