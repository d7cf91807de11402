"""CoNAL, the method on its own (torch only, no RL, no files, no plots).

* :mod:`~conal_rl.method.layers`: per-task linear layers in one batched product, and how
  every net is built (:class:`NetOptions`: LayerNorm, residual connections, weight init).
* :mod:`~conal_rl.method.tree`: tree architectures (:class:`TreeSpec`) and the pruned
  networks they describe (:class:`TreeNet`); MT-SAC, MH-SAC and independent nets are trees.
* :mod:`~conal_rl.method.supernet`: the search space, every task mixing its branch points.
* :mod:`~conal_rl.method.task_gradients`: per-task gradients of shared modules from one
  backward, and their Gram matrices.
* :mod:`~conal_rl.method.conflict`: conflict-noticing on the shared modules, by a rule of
  :mod:`~conal_rl.method.rules` (the table of conflict rules).
* :mod:`~conal_rl.method.evidence`: conflict statistics with standard errors from one
  backward over a large batch (:class:`LayerEvidence`), the ``evidence`` rule's input.
* :mod:`~conal_rl.method.search`: the architecture step and the alternating search step.
* :mod:`~conal_rl.method.groups`: trees whose branches groups of tasks share
  (:class:`GroupTreeSpec`, :class:`GroupTreeNet`), CoNAL-Pro's format.
* :mod:`~conal_rl.method.progressive`: CoNAL-Pro's stage-by-stage search.
* :mod:`~conal_rl.method.pcgrad`: PCGrad, a baseline built on the same gradient capture.
* :mod:`~conal_rl.method.probe`: what a private copy of a module would gain a task, measured
  by training one beside the tree (:class:`ModuleProbe`, :func:`paired_gain`).
* :mod:`~conal_rl.method.reference`: slow loop versions, the oracles of the tests.
"""

from importlib import import_module

_SOURCES = {
    "ConflictNoticing": "conflict", "SharedLayer": "task_gradients",
    "TaskGradientCapture": "task_gradients",
    "CONFLICT_RULES": "rules", "LayerEvidence": "evidence", "capture_evidence": "evidence",
    "layer_evidence": "evidence", "GroupTreeNet": "groups", "GroupTreeSpec": "groups",
    "TaskLinear": "layers", "NetOptions": "layers", "PLAIN": "layers", "WEIGHT_INITS": "options",
    "PCGrad": "pcgrad", "progressive_search": "progressive",
    "SearchSettings": "search", "architecture_optimizer": "search",
    "architecture_step": "search", "search_optimizers": "search", "search_step": "search",
    "SuperNet": "supernet", "TreeNet": "tree", "TreeSpec": "tree", "num_parameters": "tree",
    "tree_parameters": "tree", "input_width": "tree", "grown_state": "tree",
    "widened_state": "tree",
    "grown_group_state": "groups", "ModuleProbe": "probe", "paired_gain": "probe",
}
__all__ = sorted(_SOURCES)


def __getattr__(name: str):
    """The names above, loaded when first used (PEP 562): ``conal_rl.method.rules`` can be
    read without importing torch."""
    if name not in _SOURCES:
        raise AttributeError(f"module 'conal_rl.method' has no attribute {name!r}")
    return getattr(import_module(f"conal_rl.method.{_SOURCES[name]}"), name)
