"""Settings by part: the flat config read once into its sections, old checkpoints too."""

import dataclasses

import ml_collections
import pytest

from configs import char_lm, default, dialogs, fast
from tinytx_jax import configuration
from tinytx_jax.run_config import RunConfig

SECTIONS = ("data", "model", "optim", "train", "population", "use", "serve", "host")
NOT_FLAT = {"vocab_size", "mlp_ratio"}  # set by the data, or fixed in the model


def section_fields(run: RunConfig) -> dict[str, str]:
    """Each flat name, and the section that holds it."""
    owners = {}
    for section in SECTIONS:
        for field in dataclasses.fields(getattr(run, section)):
            assert field.name not in owners, (
                f"{field.name} in {owners.get(field.name)} and {section}"
            )
            owners[field.name] = section
    return owners


@pytest.mark.parametrize("config_module", [default, fast, dialogs, char_lm])
def test_every_flat_field_lands_in_one_section_with_its_value(config_module):
    flat = config_module.get_config()
    run = RunConfig.from_flat(flat)
    owners = section_fields(run)
    assert set(owners) - NOT_FLAT == set(flat)  # none ignored, none invented
    for name in flat:
        assert getattr(getattr(run, owners[name]), name) == flat[name], name


def test_a_checkpoint_config_from_before_the_newer_fields_reads_with_their_defaults():
    old = {
        name: value
        for name, value in default.get_config().to_dict().items()
        if name not in ("normalize_user", "augment_user", "optimizer", "position", "feed")
    }
    run = RunConfig.from_flat(ml_collections.ConfigDict(old))
    assert run.data.normalize_user == "" and run.data.user_steps == ()
    assert run.optim.optimizer == "adamw" and run.model.position == "learned"
    assert run.data.feed == "auto" and run.data.augment_user == 0.0


def test_a_bad_value_is_refused_when_its_section_is_built_naming_the_flag():
    flat = default.get_config()
    flat.plateau_factor = 1.5
    with pytest.raises(configuration.ConfigError, match=r"config\.plateau_factor must be in"):
        RunConfig.from_flat(flat)
    with pytest.raises(configuration.ConfigError, match=r"config\.top_p must be in \[0, 1\]"):
        configuration.UseConfig(top_p=2.0)


def test_a_fitted_block_size_is_recorded_in_the_flat_config_too():
    run = RunConfig.from_flat(default.get_config()).fitted_to(longest=60)
    assert run.data.block_size == 64 and run.flat.block_size == 64  # 59 targets, up to 16s
    assert RunConfig.from_flat(default.get_config()).fitted_to(10_000).data.block_size == 512
    assert default.get_config().block_size == 256  # the given config is left alone
