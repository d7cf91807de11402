"""Multi-task SAC and its replay buffer; networks come from a factory (see sac.NetFactory).

Its names are loaded when first used (PEP 562), so ``agents.choices`` can be read without
importing torch.
"""

from importlib import import_module

_SOURCES = {"Batch": "agents.replay", "MultiTaskReplay": "agents.replay",
            "random_batch": "agents.replay", "FilterFactory": "agents.sac",
            "GradientFilter": "agents.sac", "MultiTaskSAC": "agents.sac",
            "NetFactory": "agents.sac", "SACConfig": "agents.sac",
            "weight_parameters": "agents.sac"}
__all__ = sorted(_SOURCES)


def __getattr__(name: str):
    if name not in _SOURCES:
        raise AttributeError(f"module 'agents' has no attribute {name!r}")
    return getattr(import_module(_SOURCES[name]), name)
