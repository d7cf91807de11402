"""The architecture registry: every --arch declared once, and what its declarations say
holds of the trees they build; the widened critics of the equal-parameter controls."""

import subprocess
import sys
from dataclasses import replace

import pytest

from conal_rl.method import GroupTreeSpec, TreeSpec, tree_parameters
from conal_rl.training.architectures import (
    ARCHITECTURES,
    TRAINED,
    architecture,
    configured,
    growing,
)
from conal_rl.training.conal_search import ConalSearch
from conal_rl.training.config import TrainConfig
from conal_rl.training.nets import fixed_trees

TASKS = [f"task{t}" for t in range(10)]
SIZES = (39, 4)  # Meta-World's observations and actions
CRITIC_IN = sum(SIZES)


def twin_parameters(spec: TreeSpec) -> int:
    return 2 * tree_parameters(spec, CRITIC_IN, 1)


@pytest.mark.parametrize("name", [n for n in TRAINED if ARCHITECTURES[n].fixed
                                  and not ARCHITECTURES[n].needs_file])
def test_every_fixed_architecture_builds_its_trees_and_growth_needs_shared_modules(name):
    trees = fixed_trees(TrainConfig(benchmark="MT10", arch=name, hidden=(32, 32)), TASKS, SIZES)
    assert set(trees) == {"actor", "critic"}
    for spec in trees.values():
        assert spec.num_tasks == 10
    assert (name in growing()) == any(max(s.branch_points) > 0 for s in trees.values())


def test_shared_head_and_task_id_make_mhsac_mtsac():
    """``--shared-head`` with ``--task-id`` turns MH-SAC's trees into MT-SAC's; on MT-SAC's
    own trees both are no-ops; CoNAL-Pro's grouped trees take it too."""
    def trees(arch, **flags):
        return fixed_trees(TrainConfig(benchmark="MT10", arch=arch, hidden=(32, 32), **flags),
                           TASKS, SIZES)
    assert trees("mhsac", task_id=True, shared_head=True) == trees("mtsac")
    assert trees("mtsac", task_id=True, shared_head=True) == trees("mtsac")
    assert trees("mhsac", shared_head=True)["critic"].head_tasks() == (tuple(range(10)), ())
    grouped = configured({"critic": GroupTreeSpec((8,), ((0,) * 10,))},
                         TrainConfig(benchmark="MT10", arch="conal-pro", shared_head=True))
    assert grouped["critic"].shared_head


def test_conal_s_trees_start_as_mtsac_s_unless_told_otherwise():
    """CoNAL and CoNAL-Pro read the id and share one head where nothing has branched, by
    default; the others (MH-SAC, the trees from a file) keep a head per task and no id;
    --inherit-weights (searched nets with a head per task) keeps a head per task."""
    from conal_rl.train import build_parser
    from conal_rl.training.config import OFF_FLAGS, given_arguments

    def resolved(*flags):
        config = TrainConfig(**given_arguments(build_parser().parse_args(list(flags))))
        return config.task_id, config.shared_head

    for arch in ARCHITECTURES:
        if ARCHITECTURES[arch].command == "conal_rl.train" and arch != "tree":
            mt = arch in ("conal", "conal-pro")
            assert resolved("--arch", arch) == (mt, mt), arch
    assert resolved("--arch", "conal", "--no-task-id", "--no-shared-head") == (False, False)
    assert resolved("--arch", "conal", "--no-shared-head") == (True, False)
    assert resolved("--arch", "mhsac", "--task-id", "--shared-head") == (True, True)
    assert resolved("--arch", "conal", "--inherit-weights") == (True, False)
    assert OFF_FLAGS["task_id"] == "--no-task-id"


def test_the_searched_architectures_name_a_search_that_exists():
    from conal_rl.training import conal_search

    for a in ARCHITECTURES.values():
        assert a.searched == (a.search is not None)
        if a.searched:
            assert callable(getattr(conal_search, a.search))


def test_an_unknown_architecture_names_the_ones_there_are():
    with pytest.raises(ValueError, match="unknown architecture 'nope'; valid: mtsac"):
        architecture("nope")


@pytest.mark.parametrize("name, kind", [("mtsac-wide", TreeSpec.mtsac),
                                        ("mhsac-wide", TreeSpec.mhsac)])
def test_a_widened_critic_holds_the_private_critics_parameters_and_the_actor_is_kept(
        name, kind):
    config = TrainConfig(benchmark="MT10", arch=name, hidden=(128, 128, 128))
    trees = fixed_trees(config, TASKS, SIZES)
    private = twin_parameters(TreeSpec.independent((128,) * 3, 10))
    assert trees["critic"].hidden[0] > 128 and len(set(trees["critic"].hidden)) == 1
    assert twin_parameters(trees["critic"]) == pytest.approx(private, rel=0.05)
    assert trees["actor"] == kind((128,) * 3, 10, TASKS)
    assert trees["critic"].shared_head == (name == "mtsac-wide")


def test_critic_params_sets_the_target_and_an_unreachable_one_is_refused():
    config = TrainConfig(benchmark="MT10", arch="mtsac-wide", hidden=(64, 64),
                         critic_params=300_000)
    critic = fixed_trees(config, TASKS, SIZES)["critic"]
    assert twin_parameters(critic) == pytest.approx(300_000, rel=0.05)
    with pytest.raises(ValueError, match="no width of 2 modules"):
        fixed_trees(TrainConfig(benchmark="MT10", arch="mtsac-wide", hidden=(64, 64),
                                critic_params=10), TASKS, SIZES)


@pytest.mark.parametrize("flags, message", [
    (dict(arch="mtsac", critic_params=1000), "--critic-params sizes the critic of --arch "
     "mtsac-wide, mhsac-wide, not mtsac"),
    (dict(arch="mtsac-wide", critic_hidden=(64,)), "widens the critic itself"),
    (dict(arch="conal", hidden=(8, 8), critic_hidden=(8,)), "same depth"),
    (dict(arch="mhsac", critic_hidden=(0,)), "--critic-hidden needs widths"),
])
def test_bad_critic_sizes_are_refused(flags, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(benchmark="MT10", **flags)


def test_critic_hidden_sizes_the_critics_of_fixed_trees_and_of_the_search():
    config = TrainConfig(benchmark="MT10", arch="mhsac", hidden=(32, 32),
                         critic_hidden=(64, 48))
    trees = fixed_trees(config, TASKS, SIZES)
    assert (trees["actor"].hidden, trees["critic"].hidden) == ((32, 32), (64, 48))
    search = ConalSearch(TrainConfig(benchmark="MT10", arch="conal", hidden=(32, 32),
                                     critic_hidden=(64, 48)).search(), TASKS, 4)
    assert search.make_net("actor", 5, 2).hidden == (32, 32)
    assert search.make_net("critic", 5, 1).hidden == (64, 48)


def test_a_widened_row_without_known_sizes_is_one_line_before_any_env():
    proc = subprocess.run([sys.executable, "-m", "conal_rl.train", "--benchmark",
                           "gym:Pendulum-v1", "--arch", "mtsac-wide"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "needs a benchmark whose sizes" \
        in proc.stderr


def test_private_critic_is_mhsacs_actor_and_the_critics_of_single_task_learning():
    config = TrainConfig(benchmark="MT10", arch="private-critic", hidden=(128, 128, 128))
    trees = fixed_trees(config, TASKS, SIZES)
    assert trees["actor"] == TreeSpec.mhsac((128,) * 3, 10, TASKS)
    assert trees["critic"] == TreeSpec.independent((128,) * 3, 10, TASKS)
    assert twin_parameters(trees["critic"]) == 775_700  # the 1M table's private-critic row


def test_a_widened_critic_that_reads_the_task_id_is_sized_with_it():
    config = TrainConfig(benchmark="MT10", arch="mhsac-wide", hidden=(128,) * 3, task_id=True)
    critic = fixed_trees(config, TASKS, SIZES)["critic"]
    assert critic.task_id_input
    target = twin_parameters(TreeSpec.independent((128,) * 3, 10))
    width = critic.hidden[0]
    # no other width brings the critic, as built, closer to the target
    miss = {w: abs(twin_parameters(replace(critic, hidden=(w,) * 3)) - target)
            for w in (width - 1, width, width + 1)}
    assert miss[width] == min(miss.values())
