"""A run's settings: the flat ConfigDict of the flags and config files, resolved once into
its typed sections (configuration.py) and checked as a whole.

The flat names (`--config.d_model=...`) are the interface: flags, config files and the
`config` saved in every checkpoint use them. `RunConfig.from_flat` reads them into one
section per part; each part of the code takes its own. A field missing from an older
checkpoint's config takes its section's default.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from tinytx_jax.configuration import (
    DIALOGS,
    ConfigError,
    DataConfig,
    HostConfig,
    OptimConfig,
    PopulationConfig,
    ServeConfig,
    TrainConfig,
    UseConfig,
    check,
    require,
)
from tinytx_jax.model.config import ModelConfig


def _section(cls: type, flat: ml_collections.ConfigDict, **given: Any) -> Any:
    """`cls` from the flat fields of its name; fields absent there keep their default."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in given]
    return cls(**{name: flat[name] for name in names if name in flat}, **given)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One run's settings by part, checked once when built; `flat` is what checkpoints
    record (block_size resolved when a run fits it to the data)."""

    data: DataConfig
    model: ModelConfig  # vocab_size 0 until the data's vocabulary is known
    optim: OptimConfig
    train: TrainConfig
    population: PopulationConfig
    use: UseConfig
    serve: ServeConfig
    host: HostConfig
    flat: ml_collections.ConfigDict

    @classmethod
    def from_flat(cls, flat: ml_collections.ConfigDict) -> RunConfig:
        run = cls(
            data=_section(DataConfig, flat),
            model=_section(ModelConfig, flat, vocab_size=0),
            optim=_section(OptimConfig, flat),
            train=_section(TrainConfig, flat),
            population=_section(PopulationConfig, flat),
            use=_section(UseConfig, flat),
            serve=_section(ServeConfig, flat),
            host=_section(HostConfig, flat),
            flat=flat,
        )
        run.check_across_sections()
        return run

    def check_across_sections(self) -> None:
        check(
            self.model,
            {
                "dtype": ("float32", "bfloat16"),
                "init": ("seed", "gpt2"),
                "position": ("learned", "rope"),
                "mlp_activation": ("gelu", "relu2"),
            },
            positive=("d_model", "max_len", "n_heads", "n_layers"),
            non_negative=("logit_softcap",),
            half_open=("dropout",),
        )
        require(
            self.model.d_model % self.model.n_heads == 0,
            f"config.d_model ({self.model.d_model}) must be divisible by config.n_heads "
            f"({self.model.n_heads})",
        )
        require(
            self.data.block_size <= self.model.max_len,
            f"config.block_size ({self.data.block_size}) must not exceed config.max_len "
            f"({self.model.max_len})",
        )
        needs_dialogs = [
            f"config.{name}={value!r}"
            for name, value, plain in (
                ("loss_on", self.data.loss_on, "all"),
                ("window_start", self.data.window_start, "any"),
                ("exact_match_every", self.train.exact_match_every, 0),
            )
            if value != plain
        ]
        if needs_dialogs and self.data.kind != DIALOGS:
            raise ConfigError(
                f"{needs_dialogs[0]} needs dialog data, and {self.data.data_path} is plain "
                "text: leave it at its default"
            )

    def fitted_to(self, longest: int) -> RunConfig:
        """This run with a window that holds its longest conversation (`longest` characters,
        as rendered) whole: rounded up to 16, at most max_len (recorded in `flat` too). With
        conversation-aligned windows, a longer one is wasted compute."""
        block_size = min(self.model.max_len, -(-(longest - 1) // 16) * 16)
        flat = self.flat.copy_and_resolve_references()
        with flat.unlocked():
            flat.block_size = block_size
        data = dataclasses.replace(self.data, block_size=block_size)
        return dataclasses.replace(self, data=data, flat=flat)
