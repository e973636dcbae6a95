"""The JSON item saved beside each checkpoint's state, and how checkpoints are ranked.

The meta holds enough to rebuild the model without flags (vocabulary, model config), the
run's config, the data's fingerprint, that epoch's metrics and the package versions.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata

from tinytx_jax.model.config import ModelConfig

SCHEMA_VERSION = 1
EXACT_MATCH_WEIGHT = 1e9  # any difference in exact match outweighs any in typed match
TYPED_MATCH_WEIGHT = 1e3  # and one in typed match (a turn in 1,000) most in val_loss
PACKAGES = ("tinytx-jax", "jax", "flax", "optax", "orbax-checkpoint")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def make_meta(
    vocab_chars: str,
    model_config: ModelConfig,
    run_config: dict,
    data_source: str,
    data_kind: str,
    fingerprint: str,
    metrics: dict,
) -> dict:
    """The JSON item saved beside the state: enough to rebuild the model without flags."""
    return {
        "schema_version": SCHEMA_VERSION,
        "vocab": vocab_chars,
        "model": dataclasses.asdict(model_config),
        "config": run_config,
        "data": {"source": data_source, "kind": data_kind, "fingerprint": fingerprint},
        "metrics": metrics,
        "versions": package_versions(),
    }


def rank(metrics: dict) -> float:
    """Lower is better: most turns exactly right where that was measured, then most typed
    questions answered, then lowest validation loss (a dialog model is best when it
    answers, not when it is surest)."""
    exact, typed = metrics.get("exact_match", -1.0), metrics.get("typed_match", 0.0)
    return -EXACT_MATCH_WEIGHT * exact - TYPED_MATCH_WEIGHT * typed + metrics["val_loss"]
