import numpy as np
import pytest
import torch

from agents import MultiTaskReplay


def _filled(T=4, rows=50, capacity=100):
    replay = MultiTaskReplay(capacity, T, obs_dim=3, act_dim=2, seed=0)
    for r in range(rows):
        # Every field encodes (task, row) so a sample reveals where it came from.
        obs = np.array([[t, r, 0] for t in range(T)], dtype=np.float32)
        replay.add(obs, np.full((T, 2), r), np.arange(T), obs + 1, np.zeros(T))
    return replay


def test_sampling_is_task_balanced_and_task_major():
    replay = _filled()
    batch = replay.sample(64)
    assert batch.obs.shape == (4, 64, 3) and batch.actions.shape == (4, 64, 2)
    assert batch.rewards.shape == (4, 64, 1) and batch.dones.shape == (4, 64, 1)
    for t in range(4):
        assert torch.all(batch.obs[t, :, 0] == t)  # only task t's transitions in row t
        assert torch.all(batch.rewards[t] == t)
        assert torch.all(batch.next_obs[t] == batch.obs[t] + 1)  # fields stay aligned
        assert torch.all(batch.actions[t, :, 0] == batch.obs[t, :, 1])
    # rows drawn from everything stored, not only the start
    assert batch.obs[..., 1].max() > 40


def test_ring_buffer_keeps_the_newest():
    replay = _filled(rows=150, capacity=100)
    assert replay.size == 100
    assert replay.sample(500).obs[..., 1].min() >= 50


def test_state_dict_round_trip():
    replay = _filled()
    restored = MultiTaskReplay(100, 4, 3, 2, seed=1)
    restored.load_state_dict(replay.state_dict())
    assert restored.size == replay.size and restored.pos == replay.pos
    a, b = replay.sample(8), restored.sample(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_every_transition_knows_its_episode_and_a_sample_returns_them():
    replay = MultiTaskReplay(100, 2, obs_dim=1, act_dim=1, holdout_every=4)
    for step in range(12):  # task 0's episodes end every 3 steps, task 1's every 6
        ended = np.array([step % 3 == 2, step % 6 == 5])
        replay.add(np.full((2, 1), step), np.zeros((2, 1)), np.zeros(2), np.zeros((2, 1)),
                   np.zeros(2), ended)
    batch, episodes = replay.sample_distinct(100)
    steps = batch.obs[:, :, 0].long()
    assert torch.equal(episodes[0], steps[0] // 3) and torch.equal(episodes[1], steps[1] // 6)
    assert 3 not in steps[0].tolist()  # every 4th step went to the held-out buffer
    restored = MultiTaskReplay(100, 2, obs_dim=1, act_dim=1, holdout_every=4)
    restored.load_state_dict(replay.state_dict())
    assert torch.equal(restored.episode, replay.episode)
    old = {k: v for k, v in replay.state_dict().items() if "episode" not in k}
    before = MultiTaskReplay(100, 2, obs_dim=1, act_dim=1, holdout_every=4)
    before.load_state_dict(old)  # a replay saved before episodes were counted
    assert (before.sample_distinct(5)[1] == -1).all()


def test_whole_episodes_held_out_keep_their_ids_and_stay_out_of_training():
    replay = MultiTaskReplay(100, 2, obs_dim=1, act_dim=1, holdout_every=3,
                             holdout_by="episodes")
    for step in range(40):  # every task's episodes 4 steps long: every 3rd episode held out
        replay.add(np.full((2, 1), step), np.zeros((2, 1)), np.zeros(2), np.zeros((2, 1)),
                   np.zeros(2), np.full(2, step % 4 == 3))
    sample, trained_episodes = replay.sample_distinct(100)
    trained = sample.obs[:, :, 0].long()
    held, episodes = replay.holdout.sample_distinct(100)
    held_steps = held.obs[:, :, 0].long()
    assert sorted(set(held_steps[0].tolist())) == [8, 9, 10, 11, 20, 21, 22, 23, 32, 33, 34, 35]
    assert not set(held_steps[0].tolist()) & set(trained[0].tolist())
    assert torch.equal(episodes, held_steps // 4)  # the episodes as training counts them
    assert torch.equal(trained_episodes, trained // 4)
    try:
        MultiTaskReplay(10, 2, 1, 1, holdout_every=3, holdout_by="tasks")
    except ValueError as e:
        assert "holdout_by" in str(e)
    else:
        raise AssertionError("an unknown holdout_by was accepted")


def test_a_held_out_window_returns_its_oldest_to_training():
    replay = MultiTaskReplay(100, 2, obs_dim=1, act_dim=1, holdout_every=2,
                             holdout_by="episodes", holdout_window=8)
    for step in range(40):  # episodes 4 steps long, every other one held out, 2 kept
        replay.add(np.full((2, 1), step), np.zeros((2, 1)), np.zeros(2), np.zeros((2, 1)),
                   np.zeros(2), np.full(2, step % 4 == 3))
    held = sorted(set(replay.holdout.sample_distinct(100)[0].obs[0, :, 0].long().tolist()))
    assert held == [28, 29, 30, 31, 36, 37, 38, 39]  # the newest two held-out episodes
    sample, episodes = replay.sample_distinct(100)
    trained = sample.obs[0, :, 0].long()
    assert sorted(trained.tolist()) == [s for s in range(40) if s not in held]
    assert torch.equal(episodes[0], trained // 4)  # returned with their own episodes


def test_a_saved_replay_splits_into_whole_episodes_that_share_none():
    replay = MultiTaskReplay(100, 2, obs_dim=1, act_dim=1)
    for step in range(40):  # episodes 4 steps long: every 3rd to the second part
        replay.add(np.full((2, 1), step), np.zeros((2, 1)), np.zeros(2), np.zeros((2, 1)),
                   np.zeros(2), np.full(2, step % 4 == 3))
    train, held = replay.split_episodes(3)
    held_steps, held_episodes = held.sample_distinct(100)
    assert sorted(held_steps.obs[0, :, 0].long().tolist()) == [
        8, 9, 10, 11, 20, 21, 22, 23, 32, 33, 34, 35]
    assert torch.equal(held_episodes, held_steps.obs[:, :, 0].long() // 4)
    trained = set(train.sample_distinct(100)[0].obs[0, :, 0].long().tolist())
    assert train.size == 28 and not trained & set(range(8, 12))
    with pytest.raises(ValueError, match="too few episodes"):
        replay.split_episodes(11)  # 10 episodes: none is the 11th
