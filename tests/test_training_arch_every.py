"""--arch-every K: CoNAL's architecture step on every K-th update past the search's warm-up
(the first of them, then every K-th), in CoNAL's search hook and CoNAL-Pro's stages; the
count survives a resume, old config.json files run as they did (every update)."""

import json
import signal
from pathlib import Path

import pytest
import torch

# the search tests' helpers and tiny run (tests/test_training_conal_search.py)
from test_training_conal_search import (
    ACT,
    NAMES,
    OBS,
    TINY_CONAL,
    T,
    _alpha_adam_steps,
    _replay,
    _search,
    _StopAfter,
)

from agents import MultiTaskSAC
from conal_rl import train
from conal_rl.method import SearchSettings
from conal_rl.training import checkpoint
from conal_rl.training import trainer as trainer_module
from conal_rl.training.conal_search import ConalSearch, ProStage
from conal_rl.training.config import TrainConfig

FIXTURES = Path(__file__).parent / "fixtures" / "v1"


def _alphas(search) -> dict[str, torch.Tensor]:
    return {role: a.detach().clone() for role, a in search.alpha.items()}


def _moved_on(search, agent, replay, calls: list[int]) -> list[int]:
    """Calls ``before_update`` at each env step of ``calls``; the indices of the calls in
    which alpha moved (both roles' alphas move together, or neither)."""
    moved = []
    for i, env_steps in enumerate(calls):
        before = _alphas(search)
        search.before_update(agent, replay, env_steps)
        changed = {role: not torch.equal(before[role], search.alpha[role]) for role in before}
        assert len(set(changed.values())) == 1, changed
        if changed["actor"]:
            moved.append(i)
    return moved


def _adam_steps(search) -> int:
    return _alpha_adam_steps(search.state_dict())


def test_every_third_update_steps_alpha_from_the_first_past_the_warmup():
    agent, search = _search(warmup_steps=100, total_steps=400, arch_every=3)
    calls = [0, 50, *range(100, 110)]  # two warm-up calls, then ten of the search proper
    moved = _moved_on(search, agent, _replay(holdout_every=2), calls)
    assert moved == [2, 5, 8, 11]  # the 1st, 4th, 7th and 10th past the warm-up
    assert _adam_steps(search) == 4


def test_every_update_steps_alpha_with_k_1_as_before():
    """K=1 (the default) is the search as it was: an alpha step at every update past the
    warm-up, the same numbers as calling arch_step on a held-out batch each time."""
    calls = [0, *range(100, 108)]
    agent, search = _search(warmup_steps=100, total_steps=400)
    assert search.settings.arch_every == 1
    replay = _replay(holdout_every=2)
    assert _moved_on(search, agent, replay, calls) == list(range(1, 9))
    assert _adam_steps(search) == 8

    ref_agent, ref = _search(warmup_steps=100, total_steps=400)
    ref_replay = _replay(holdout_every=2)
    for env_steps in calls[1:]:  # the hook before --arch-every
        ref.arch_step(ref_agent, ref_replay.sample_holdout(ref.batch_per_task), env_steps)
    for role in search.alpha:
        assert torch.equal(search.alpha[role], ref.alpha[role]), role


def test_updates_without_held_out_transitions_do_not_count():
    """Before the held-out buffer has anything, there is no step to take and no call to
    count: the first step comes with the first held-out transitions."""
    agent, search = _search(arch_every=2)
    empty = _replay(steps=1, holdout_every=2)  # vector step 0 goes to the training replay
    assert empty.holdout.size == 0
    assert _moved_on(search, agent, empty, [0, 1, 2]) == []
    assert _moved_on(search, agent, _replay(holdout_every=2), [3, 4, 5]) == [0, 2]


def test_gumbel_samples_are_drawn_at_every_update():
    agent, search = _search(gumbel=True, arch_every=4)
    drawn, draw = [], search.draw_samples
    search.draw_samples = lambda agent: drawn.append(1) or draw(agent)
    assert _moved_on(search, agent, _replay(), range(6)) == [0, 4]
    assert len(drawn) == 6


def test_conal_pro_stages_step_every_kth_update_too():
    torch.manual_seed(0)
    settings = SearchSettings(hidden=(16, 16), arch_lr=1e-2, arch_every=2)
    hook = ProStage(settings, NAMES, 32, {"actor": (), "critic": ()})
    agent = MultiTaskSAC(hook.make_net, T, OBS, ACT, make_filter=hook.make_filter)
    assert _moved_on(hook, agent, _replay(), range(5)) == [0, 2, 4]


def test_the_count_survives_the_hooks_state_dict():
    """A search stopped after 4 calls and continued in a fresh hook from its state dict
    steps alpha where the uninterrupted one does, to the same numbers."""
    calls = list(range(100, 111))
    agent, search = _search(arch_every=3)
    whole = _moved_on(search, agent, _replay(), calls)
    assert whole == [0, 3, 6, 9]

    first_agent, first = _search(arch_every=3)
    replay = _replay()
    assert _moved_on(first, first_agent, replay, calls[:4]) == [0, 3]
    state, rng = first.state_dict(), torch.get_rng_state()
    assert state["arch_calls"] == 4
    # What a checkpoint restores: the agent (alpha included), the hook, the random state.
    resumed = ConalSearch(first.settings, NAMES, batch_per_task=32)
    agent = MultiTaskSAC(resumed.make_net, T, OBS, ACT, make_filter=resumed.make_filter)
    agent.load_state_dict(first_agent.state_dict())
    resumed.load_state_dict(state)
    torch.set_rng_state(rng)
    later = _moved_on(resumed, agent, replay, calls[4:])
    assert [i + 4 for i in later] == [6, 9]
    for role in search.alpha:
        assert torch.equal(search.alpha[role], resumed.alpha[role]), role


def test_a_checkpoint_from_before_the_count_loads_as_every_update():
    agent, search = _search(arch_every=1)
    state = search.state_dict()
    del state["arch_calls"]
    search.load_state_dict(state)
    assert _moved_on(search, agent, _replay(), range(3)) == [0, 1, 2]


# ---- the flag -------------------------------------------------------------------------------
def test_the_flag_reaches_the_search_settings_and_refuses_zero():
    config = TrainConfig(arch="conal", preset="quick", arch_every=4)
    assert config.search().arch_every == 4
    assert TrainConfig(preset="quick").search().arch_every == 1
    for bad in (0, -2):
        with pytest.raises(ValueError, match=f"--arch-every must be positive, got {bad}"):
            TrainConfig(arch_every=bad)


def test_the_flag_is_refused_on_the_command_line(capsys):
    with pytest.raises(SystemExit) as exited:
        train.main(["--arch", "conal", "--preset", "quick", "--arch-every", "0"])
    assert exited.value.code == 2
    assert "--arch-every must be positive, got 0" in capsys.readouterr().err


def test_an_old_config_without_the_field_loads_with_every_update(tmp_path):
    for name in ("pendulum-mhsac", "mt10-conal"):
        saved = json.loads((FIXTURES / name / "config.json").read_text())
        assert "arch_every" not in saved
        assert TrainConfig.load(FIXTURES / name / "config.json").arch_every == 1
    path = tmp_path / "config.json"
    TrainConfig(arch="conal", preset="quick", arch_every=3).save(path)
    assert TrainConfig.load(path).arch_every == 3


# ---- a search stopped midway and resumed through the train command (K=2) -------------------
def test_a_search_stopped_midway_keeps_its_count(tmp_path, two_tasks, monkeypatch):
    """As test_training_conal_search's resume test, with --arch-every 2, stopped after an odd
    number of updates (21) and resumed for an odd number (29): restarting the count would
    step alpha at the resumed part's 1st update, 15 steps instead of 14."""
    run = tmp_path / "run"
    argv = [*TINY_CONAL, "--search-steps", "300", "--total-steps", "100", "--arch-every", "2",
            "--run-dir", str(run)]
    real_stop_signal = trainer_module.StopSignal
    monkeypatch.setattr(trainer_module, "StopSignal", type("Stop", (_StopAfter,), {"n": 71}))
    with pytest.raises(SystemExit) as stopped:
        train.main(argv)
    assert stopped.value.code == 128 + signal.SIGINT
    saved = checkpoint.load(run / "search" / "checkpoints" / "latest.pt")
    assert saved["counters"] == {"env_steps": 142, "updates": 21}
    # all past the search's warm-up (75 env steps)
    assert saved["hooks"]["search"]["arch_calls"] == 21
    assert _alpha_adam_steps(saved["hooks"]["search"]) == 11  # calls 1, 3, ..., 21

    monkeypatch.setattr(trainer_module, "StopSignal", real_stop_signal)
    train.main(argv)
    final = checkpoint.load(run / "search" / "checkpoints" / "latest.pt")
    assert final["counters"] == {"env_steps": 300, "updates": 21 + 29}
    assert final["hooks"]["search"]["arch_calls"] == 50
    assert _alpha_adam_steps(final["hooks"]["search"]) == 11 + 14  # calls 23, 25, ..., 49
    assert (run / "architecture.json").exists()
