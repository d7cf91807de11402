"""TrainConfig: presets filled when made, frozen, and its one translation into the search's
settings."""

import dataclasses

import pytest

from conal_rl.training.config import TrainConfig


def test_the_paper_preset_warms_up_as_its_reference():
    """Meta-World+'s 4,000 warm-up steps are vector steps: 40k env steps on MT10."""
    assert TrainConfig(benchmark="MT10").warmup_steps == 40_000
    assert TrainConfig(benchmark="MT50").warmup_steps == 200_000
    assert TrainConfig(benchmark="MT10", preset="quick").warmup_steps == 5_000


def test_search_settings_follow_the_flags():
    config = TrainConfig(arch="conal", conflict_rule="consensus", no_private=True,
                         no_conflict_noticing=True, gumbel=True, preset="quick")
    s = config.search()
    assert (s.conflict_rule, s.no_private, s.conflict_noticing, s.gumbel) == (
        "consensus", True, False, True)
    assert (s.warmup_steps, s.total_steps, s.hidden) == (
        config.search_warmup_steps, config.search_steps, config.hidden)
    assert config.arch_holdout == 5 and TrainConfig(arch_holdout=0).arch_holdout == 0


def test_a_config_is_frozen_and_checked_when_made():
    config = TrainConfig(preset="quick")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0
    with pytest.raises(ValueError, match="arch-holdout"):
        TrainConfig(arch_holdout=1)
    with pytest.raises(ValueError, match="--lr"):
        TrainConfig(lr=float("nan"))


def test_the_flag_offers_every_rule_of_the_method():
    import typing

    from conal_rl.method import CONFLICT_RULES

    hint = typing.get_type_hints(TrainConfig)["conflict_rule"]
    assert typing.get_args(hint) == CONFLICT_RULES


def test_every_flag_is_in_exactly_one_part_of_the_help():
    from dataclasses import fields

    from conal_rl.training.config import PARTS, TrainConfig

    listed = [name for names in PARTS.values() for name in names]
    assert sorted(listed) == sorted(f.name for f in fields(TrainConfig))


def test_the_learner_s_levers_come_from_the_preset_and_either_way_from_the_flags(monkeypatch):
    """A preset that turns LayerNorm on is turned off by --no-layer-norm, and on a preset
    without it --layer-norm turns it on; updates per env step alike."""
    import argparse

    from conal_rl.training import config as config_module

    on = config_module.PRESETS["quick"] | {"layer_norm": True, "updates_per_step": 2}
    monkeypatch.setitem(config_module.PRESETS, "quick", on)
    parser = argparse.ArgumentParser()
    config_module.add_config_arguments(parser)

    def made(*flags):
        given = config_module.given_arguments(parser.parse_args(["--preset", "quick", *flags]))
        return TrainConfig(**given)

    assert (made().layer_norm, made().updates_per_step) == (True, 2)
    assert (made("--no-layer-norm").layer_norm, made("--updates-per-step", "1").updates_per_step
            ) == (False, 1)
    assert TrainConfig(preset="paper").layer_norm is False
    assert TrainConfig(preset="paper", layer_norm=True).layer_norm is True
    assert "quick on" in parser.format_help().replace("\n", " ").replace("  ", " ")
