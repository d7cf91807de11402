"""Multi-task SAC and its replay buffer; networks come from a factory (see sac.NetFactory)."""

from agents.replay import Batch, MultiTaskReplay, random_batch
from agents.sac import (
    FilterFactory,
    GradientFilter,
    MultiTaskSAC,
    NetFactory,
    SACConfig,
    weight_parameters,
)

__all__ = ["Batch", "FilterFactory", "GradientFilter", "MultiTaskReplay", "MultiTaskSAC",
           "NetFactory", "SACConfig", "random_batch", "weight_parameters"]
