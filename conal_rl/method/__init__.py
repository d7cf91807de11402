"""CoNAL, the method on its own (torch only, no RL, no files, no plots).

* :mod:`~conal_rl.method.layers`: per-task linear layers in one batched product.
* :mod:`~conal_rl.method.tree`: tree architectures (:class:`TreeSpec`) and the pruned
  networks they describe (:class:`TreeNet`); MT-SAC, MH-SAC and independent nets are trees.
* :mod:`~conal_rl.method.supernet`: the search space, every task mixing its branch points.
* :mod:`~conal_rl.method.conflict`: per-task gradients from one backward, and
  conflict-noticing on the shared modules.
* :mod:`~conal_rl.method.evidence`: conflict statistics with standard errors from one
  backward over a large batch (:class:`LayerEvidence`), the ``evidence`` rule's input.
* :mod:`~conal_rl.method.search`: the architecture step and the alternating search step.
* :mod:`~conal_rl.method.groups`: trees whose branches groups of tasks share
  (:class:`GroupTreeSpec`, :class:`GroupTreeNet`), CoNAL-Pro's format.
* :mod:`~conal_rl.method.progressive`: CoNAL-Pro's stage-by-stage search.
* :mod:`~conal_rl.method.pcgrad`: PCGrad, a baseline built on the same gradient capture.
* :mod:`~conal_rl.method.reference`: slow loop versions, the oracles of the tests.
"""

from conal_rl.method.conflict import (
    CONFLICT_RULES,
    ConflictNoticing,
    SharedLayer,
    TaskGradientCapture,
)
from conal_rl.method.evidence import LayerEvidence, capture_evidence, layer_evidence
from conal_rl.method.groups import GroupTreeNet, GroupTreeSpec
from conal_rl.method.layers import TaskLinear
from conal_rl.method.pcgrad import PCGrad
from conal_rl.method.progressive import progressive_search
from conal_rl.method.search import (
    SearchSettings,
    architecture_optimizer,
    architecture_step,
    search_optimizers,
    search_step,
)
from conal_rl.method.supernet import SuperNet
from conal_rl.method.tree import TreeNet, TreeSpec, num_parameters

__all__ = ["CONFLICT_RULES", "ConflictNoticing", "GroupTreeNet", "GroupTreeSpec", "LayerEvidence",
           "PCGrad", "SearchSettings", "SharedLayer", "SuperNet", "TaskGradientCapture",
           "TaskLinear", "TreeNet", "TreeSpec", "architecture_optimizer", "architecture_step",
           "capture_evidence", "layer_evidence", "num_parameters", "progressive_search",
           "search_optimizers", "search_step"]
