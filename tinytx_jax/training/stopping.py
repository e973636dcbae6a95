"""When a run stops: early stopping, or every target it sets reached."""

from __future__ import annotations

from tinytx_jax.configuration import TrainConfig
from tinytx_jax.training.metrics import EpochMetrics


def stop_reason(
    metrics: EpochMetrics, epochs_since_best: int, best_val_loss: float, train: TrainConfig
) -> str | None:
    """Why training stops after this epoch (early stop or target reached), if it does;
    `epochs_since_best` and `best_val_loss` as the train state holds them after it."""
    if int(epochs_since_best) >= train.early_stop_patience:
        return (
            f"Early stopping at epoch {metrics.epoch}: no val_loss improvement for "
            f"{train.early_stop_patience} epochs (best {float(best_val_loss):.4f})"
        )
    # With both targets set, both must be reached: a model that scores val_acc 0.99 can
    # still answer one dialog wrong, and one that answers every dialog can do so narrowly.
    reached = []
    for name, target in train.targets.items():
        if not target:
            continue
        value = getattr(metrics, name)
        if value is None or value < target:
            return None
        reached.append(f"{name}={value:.3f} >= {target}")
    if reached:
        return f"Target reached at epoch {metrics.epoch}: {', '.join(reached)}"
    return None
