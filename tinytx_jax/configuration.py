"""Checks a run's ConfigDict up front, so a bad value stops with one clear line."""

from __future__ import annotations

import ml_collections

from tinytx_jax.model.transformer import ModelConfig
from tinytx_jax.text import user_text

DTYPES = ("float32", "bfloat16")
CHECKPOINT_CHOICES = ("best", "latest")
LR_SCHEDULES = ("constant", "cosine", "wsd")
OPTIMIZERS = ("adamw", "muon")
LOSS_ON = ("all", "assistant")
WINDOW_STARTS = ("any", "conversation")
VALIDATION_SPLITS = ("tail", "conversations")
FEEDS = ("auto", "device", "host")
INITS = ("seed", "gpt2")
WEIGHT_DECAY_ON = ("all", "matrices")
POSITIONS = ("learned", "rope")
MLP_ACTIVATIONS = ("gelu", "relu2")


MAX_INT32 = 2**31 - 1  # seeds and the step counter are int32 on the device
MAX_NEW_TOKENS = 100_000  # a reply or sample is decoded in one device call: bounded


class ConfigError(ValueError):
    """A config value that cannot work; the message says which and what to do."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError naming the first invalid field."""
    positive = (
        "lr",
        "epochs",
        "steps_per_epoch",
        "batch_size",
        "print_every",
        "clip_norm",
        "d_model",
        "max_len",
        "n_heads",
        "n_layers",
        "data_repeat",
        "plateau_patience",
        "early_stop_patience",
        "checkpoint_every",
        "keep_checkpoints",
        "max_new_tokens",
        "serve_slots",
        "serve_queue",
        "serve_timeout_s",
        "muon_ns_steps",
    )
    for name in positive:
        value = config[name]
        _require(value > 0, f"config.{name} must be positive, got {value}")
    for name in (
        "weight_decay",
        "warmup_steps",
        "min_lr",
        "profile_steps",
        "exact_match_every",
        "eval_steps",
        "cpu_devices",
        "block_size",
        "logit_softcap",
    ):
        _require(config[name] >= 0, f"config.{name} must be >= 0, got {config[name]}")
    _require(
        config.max_new_tokens <= MAX_NEW_TOKENS,
        f"config.max_new_tokens must be at most {MAX_NEW_TOKENS:,} (a reply or sample is "
        f"decoded in one call), got {config.max_new_tokens:,}",
    )
    for name in ("temperature", "top_k"):  # None: the model kind's default
        value = config[name]
        _require(value is None or value >= 0, f"config.{name} must be >= 0, got {value}")
    for name in ("seed", "sample_seed"):
        _require(
            0 <= config[name] <= MAX_INT32,
            f"config.{name} must be in [0, {MAX_INT32}], got {config[name]}",
        )
    _require(
        config.epochs * config.steps_per_epoch <= MAX_INT32,
        f"config.epochs * config.steps_per_epoch must be at most {MAX_INT32} steps, got "
        f"{config.epochs * config.steps_per_epoch}",
    )
    _require(
        config.block_size or config.window_start == "conversation",
        "config.block_size=0 (fit the longest conversation) needs "
        "config.window_start='conversation'",
    )
    _require(
        config.block_size <= config.max_len,
        f"config.block_size ({config.block_size}) must not exceed config.max_len "
        f"({config.max_len})",
    )
    _require(
        config.d_model % config.n_heads == 0,
        f"config.d_model ({config.d_model}) must be divisible by config.n_heads ({config.n_heads})",
    )
    _require(0.0 <= config.dropout < 1.0, f"config.dropout must be in [0, 1), got {config.dropout}")
    _require(
        0.0 < config.plateau_factor < 1.0,
        f"config.plateau_factor must be in (0, 1), got {config.plateau_factor}",
    )
    _require(
        0.0 < config.decay_fraction <= 1.0,
        f"config.decay_fraction must be in (0, 1], got {config.decay_fraction}",
    )
    _require(
        config.min_lr <= config.lr,
        f"config.min_lr ({config.min_lr}) must not exceed config.lr ({config.lr})",
    )
    _require(
        0.0 < config.validation_fraction < 1.0,
        f"config.validation_fraction must be in (0, 1), got {config.validation_fraction}",
    )
    for name in ("target_val_acc", "target_exact_match", "target_typed_match"):
        _require(
            0.0 <= config[name] <= 1.0,
            f"config.{name} must be in [0, 1] (0 disables it), got {config[name]}",
        )
    for name in ("target_exact_match", "target_typed_match"):
        _require(
            not config[name] or config.exact_match_every,
            f"config.{name} needs config.exact_match_every > 0 (how often, in epochs, to "
            "check the replies)",
        )
    _require(
        0.0 <= config.augment_user <= 1.0,
        f"config.augment_user must be in [0, 1] (the fraction of user turns retyped), got "
        f"{config.augment_user}",
    )
    try:
        user_text.parse_steps(config.normalize_user)
    except user_text.NormalizationError as error:
        raise ConfigError(str(error)) from None
    for name in ("adam_b1", "adam_b2"):
        _require(0.0 <= config[name] < 1.0, f"config.{name} must be in [0, 1), got {config[name]}")
    _require(0.0 <= config.top_p <= 1.0, f"config.top_p must be in [0, 1], got {config.top_p}")
    _require(
        config.checkpoint in CHECKPOINT_CHOICES,
        f"config.checkpoint must be one of {CHECKPOINT_CHOICES}, got {config.checkpoint!r}",
    )
    for name, choices in (
        ("lr_schedule", LR_SCHEDULES),
        ("loss_on", LOSS_ON),
        ("window_start", WINDOW_STARTS),
        ("validation_split", VALIDATION_SPLITS),
        ("feed", FEEDS),
        ("init", INITS),
        ("weight_decay_on", WEIGHT_DECAY_ON),
        ("position", POSITIONS),
        ("optimizer", OPTIMIZERS),
        ("mlp_activation", MLP_ACTIVATIONS),
    ):
        _require(
            config[name] in choices, f"config.{name} must be one of {choices}, got {config[name]!r}"
        )
    _require(config.dtype in DTYPES, f"config.dtype must be one of {DTYPES}, got {config.dtype!r}")


def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> ModelConfig:
    """The architecture part of a run config."""
    return ModelConfig(
        vocab_size=vocab_size,
        d_model=config.d_model,
        max_len=config.max_len,
        n_heads=config.n_heads,
        n_layers=config.n_layers,
        mlp=config.mlp,
        pre_norm=config.pre_norm,
        dropout=config.dropout,
        dtype=config.dtype,
        init=config.init,
        tie_embeddings=config.tie_embeddings,
        bias=config.bias,
        position=config.position,
        qk_norm=config.qk_norm,
        mlp_activation=config.mlp_activation,
        zero_init_outputs=config.zero_init_outputs,
        logit_softcap=config.logit_softcap,
    )


def training_bytes(config: ml_collections.ConfigDict, vocab_size: int = 256) -> tuple[int, int]:
    """A lower bound on the memory training needs, and the parameter count: float32
    weights, gradients and two Adam moments, plus one step's activations."""
    d, layers, max_len = config.d_model, config.n_layers, config.max_len
    per_layer = 4 * d * d + (8 * d * d if config.mlp else 0)
    params = vocab_size * d * (1 if config.tie_embeddings else 2)
    params += max_len * d if config.position == "learned" else 0
    params += layers * per_layer
    block = config.block_size or max_len
    rows = config.batch_size * block
    activations = layers * (rows * d * 16 + config.batch_size * config.n_heads * block * block * 2)
    return 16 * params + 4 * activations, params


def available_bytes() -> int | None:
    """Memory the system can still give (MemAvailable), or None where it cannot say."""
    try:
        for line in open("/proc/meminfo", encoding="ascii"):  # noqa: SIM115
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_fits_in_memory(config: ml_collections.ConfigDict) -> None:
    """Refuse up front a model that cannot train in this machine's memory (on a CPU, whose
    device memory is the host's), rather than hang allocating it."""
    needed, params = training_bytes(config)
    available = available_bytes()
    _require(
        available is None or needed <= available,
        f"the model needs at least {needed / 1e9:,.1f} GB to train ({params:,} parameters: "
        f"float32 weights, gradients and Adam moments, and activations), more than the "
        f"{(available or 0) / 1e9:,.1f} GB available: lower d_model, n_layers, max_len or "
        "batch_size",
    )
