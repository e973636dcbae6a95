"""The sections of a run's settings, one frozen dataclass per part of the code (data,
optimiser, training loop, use of a trained model, serving; the model's is ModelConfig),
each checked when built, so a bad value stops with one clear line naming its flag.

A section's defaults are those of a checkpoint written before its field existed (the run
configs' own defaults are in configs/default.py); run_config.py builds them all at once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tinytx_jax.text import user_text

MAX_INT32 = 2**31 - 1  # seeds and the step counter are int32 on the device
MAX_NEW_TOKENS = 100_000  # a reply or sample is decoded in one device call: bounded
DIALOGS, TEXT = "dialogs", "text"
TEXT_SUFFIXES = (".txt",)


def data_kind(data_path: str) -> str:
    """DIALOGS or TEXT, from the path alone (empty: the built-in dialogs)."""
    return TEXT if data_path and Path(data_path).suffix in TEXT_SUFFIXES else DIALOGS


class ConfigError(ValueError):
    """A config value that cannot work; the message says which and what to do."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


RANGES = {  # name: (test, as the message says it)
    "positive": (lambda v: v > 0, "must be positive"),
    "non_negative": (lambda v: v >= 0, "must be >= 0"),
    "unit": (lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]"),
    "half_open": (lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
    "open_unit": (lambda v: 0.0 < v < 1.0, "must be in (0, 1)"),
}


def check(section: object, choices: dict[str, tuple] | None = None, **ranges: tuple[str, ...]):
    """Each field named in `ranges` (by range) within it, each in `choices` one of them."""
    for kind, names in ranges.items():
        test, says = RANGES[kind]
        for name in names:
            value = getattr(section, name)
            require(test(value), f"config.{name} {says}, got {value}")
    for name, allowed in (choices or {}).items():
        value = getattr(section, name)
        require(value in allowed, f"config.{name} must be one of {allowed}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What is trained on, and how it is cut into windows and validated."""

    data_path: str = ""
    data_repeat: int = 300
    validation_fraction: float = 0.1
    loss_on: str = "all"
    window_start: str = "any"
    validation_split: str = "tail"
    feed: str = "auto"
    normalize_user: str = ""  # checkpoints from before the field saw their text as it was
    augment_user: float = 0.0
    block_size: int = 256
    eval_steps: int = 0

    def __post_init__(self):
        check(
            self,
            {
                "loss_on": ("all", "assistant"),
                "window_start": ("any", "conversation"),
                "validation_split": ("tail", "conversations"),
                "feed": ("auto", "device", "host"),
            },
            positive=("data_repeat",),
            non_negative=("block_size", "eval_steps"),
            open_unit=("validation_fraction",),
            unit=("augment_user",),
        )
        require(
            self.block_size or self.window_start == "conversation",
            "config.block_size=0 (fit the longest conversation) needs "
            "config.window_start='conversation'",
        )
        try:
            user_text.parse_steps(self.normalize_user)
        except user_text.NormalizationError as error:
            raise ConfigError(str(error)) from None

    @property
    def kind(self) -> str:
        return data_kind(self.data_path)

    @property
    def user_steps(self) -> tuple[str, ...]:
        return user_text.parse_steps(self.normalize_user)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The per-step optimiser, its rate schedule and the per-epoch plateau halving."""

    lr: float = 5e-4  # peak rate, after warm-up
    optimizer: str = "adamw"  # or "muon" for hidden matrices
    muon_ns_steps: int = 5  # Newton-Schulz iterations per Muon update
    lr_schedule: str = "constant"  # with plateau halving; or "cosine", "wsd"
    decay_fraction: float = 0.3  # wsd: the decayed share of the steps
    weight_decay: float = 0.0  # decoupled (AdamW)
    weight_decay_on: str = "all"
    adam_b1: float = 0.9  # first-moment decay
    adam_b2: float = 0.999  # second-moment decay
    clip_norm: float = 1.0  # global gradient norm
    warmup_steps: int = 200  # linear, from lr / warmup_steps
    plateau_patience: int = 50  # epochs without a better val_loss
    plateau_factor: float = 0.5  # the rate's multiplier at a plateau
    min_lr: float = 1e-5  # the floor of every schedule

    def __post_init__(self):
        check(
            self,
            {
                "lr_schedule": ("constant", "cosine", "wsd"),
                "optimizer": ("adamw", "muon"),
                "weight_decay_on": ("all", "matrices"),
            },
            positive=("lr", "clip_norm", "plateau_patience", "muon_ns_steps"),
            non_negative=("weight_decay", "warmup_steps", "min_lr"),
            open_unit=("plateau_factor",),
            half_open=("adam_b1", "adam_b2"),
        )
        require(
            0.0 < self.decay_fraction <= 1.0,
            f"config.decay_fraction must be in (0, 1], got {self.decay_fraction}",
        )
        require(
            self.min_lr <= self.lr,
            f"config.min_lr ({self.min_lr}) must not exceed config.lr ({self.lr})",
        )

    @property
    def plateau_enabled(self) -> bool:
        """Plateau halving drives the constant schedule only; the others decay by themselves."""
        return self.lr_schedule == "constant"


TARGETS = ("val_acc", "exact_match", "typed_match")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training loop: its budget, batches, stops, checkpoints and logging."""

    epochs: int = 400  # the budget; validated after each
    steps_per_epoch: int = 200  # one device call, or a few chunks
    batch_size: int = 1
    seed: int = 7  # parameters, windows, dropout, retyping
    early_stop_patience: int = 150  # epochs without a better val_loss
    target_val_acc: float = 0.0  # stop once reached (0: off)
    exact_match_every: int = 0  # epochs between reply checks (0: never)
    target_exact_match: float = 0.0
    target_typed_match: float = 0.0
    checkpoint_every: int = 10  # epochs; also at every stop
    keep_checkpoints: int = 3  # the latest kept, beside the best
    resume: bool = True
    resume_on_new_data: bool = False
    init_from: str = ""
    print_every: int = 1
    profile_steps: int = 0

    def __post_init__(self):
        positive = ("epochs", "steps_per_epoch", "batch_size", "early_stop_patience")
        positive += ("checkpoint_every", "keep_checkpoints", "print_every")
        check(self, positive=positive, non_negative=("exact_match_every", "profile_steps"))
        require(
            0 <= self.seed <= MAX_INT32, f"config.seed must be in [0, {MAX_INT32}], got {self.seed}"
        )
        require(
            self.total_steps <= MAX_INT32,
            f"config.epochs * config.steps_per_epoch must be at most {MAX_INT32} steps, got "
            f"{self.total_steps}",
        )
        for name, target in self.targets.items():
            require(
                0.0 <= target <= 1.0,
                f"config.target_{name} must be in [0, 1] (0 disables it), got {target}",
            )
            require(
                name == "val_acc" or not target or self.exact_match_every,
                f"config.target_{name} needs config.exact_match_every > 0 (how often, in "
                "epochs, to check the replies)",
            )

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def targets(self) -> dict[str, float]:
        """Every stop target by metric name, 0 where off."""
        return {name: getattr(self, f"target_{name}") for name in TARGETS}


@dataclasses.dataclass(frozen=True)
class PopulationConfig:
    """Many members of one run in one process (training/population.py)."""

    seeds: int = 1  # seeds seed, seed + 1, ...
    sweep: str = ""  # per-member values trained in one program: "lr=1e-3,3e-3; ..."
    groups: str = ""  # values trained one group after another: "d_model=32,64"
    member_batching: str = "auto"  # "map", "vmap", or auto: vmap on accelerators, map on CPU

    def __post_init__(self):
        check(self, {"member_batching": ("auto", "map", "vmap")}, positive=("seeds",))

    @property
    def wanted(self) -> bool:
        """Whether these settings ask for a population (or one run)."""
        return self.seeds > 1 or bool(self.sweep) or bool(self.groups)


@dataclasses.dataclass(frozen=True)
class UseConfig:
    """Using a trained model: which checkpoint, the chat's prompt and the sampler."""

    checkpoint: str = "best"
    system_prompt: str = "You are helpful."
    max_new_tokens: int = 200
    temperature: float | None = None  # None: the model kind's default
    top_k: int | None = None
    top_p: float = 1.0
    sample_seed: int = 0
    chat_history: bool = False
    member: int = -1  # a population's: which member (-1: the best by val_loss)

    def __post_init__(self):
        check(
            self,
            {"checkpoint": ("best", "latest")},
            positive=("max_new_tokens",),
            unit=("top_p",),
        )
        require(
            self.max_new_tokens <= MAX_NEW_TOKENS,
            f"config.max_new_tokens must be at most {MAX_NEW_TOKENS:,} (a reply or sample is "
            f"decoded in one call), got {self.max_new_tokens:,}",
        )
        for name in ("temperature", "top_k"):
            value = getattr(self, name)
            require(value is None or value >= 0, f"config.{name} must be >= 0, got {value}")
        require(
            self.member >= -1, f"config.member must be >= 0 (or -1: the best), got {self.member}"
        )
        require(
            0 <= self.sample_seed <= MAX_INT32,
            f"config.sample_seed must be in [0, {MAX_INT32}], got {self.sample_seed}",
        )


@dataclasses.dataclass(frozen=True)
class HostConfig:
    """The process: how many XLA devices a CPU splits into, the compilation cache."""

    cpu_devices: int = 0
    compile_cache: bool = True

    def __post_init__(self):
        check(self, non_negative=("cpu_devices",))


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """`--mode=serve`: how many requests are decoded together, wait, and how long."""

    serve_slots: int = 32
    serve_queue: int = 256
    serve_timeout_s: float = 300.0

    def __post_init__(self):
        check(self, positive=tuple(dataclasses.asdict(self)))
