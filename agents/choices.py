"""The agent's choices that a command line offers, importable without torch (flags are
parsed before torch is loaded)."""

LOSS_WEIGHTINGS = ("mean", "rlw")
"""How the per-task losses combine: their mean, or Random Loss Weighting (Lin et al., TMLR
2022: weights softmax(z), z ~ N(0, I) drawn afresh for each loss at every update)."""
PRECISIONS = ("fp32", "bf16")
"""The matrix products of the update: fp32, or bf16 (autocast: the nets' products in bf16,
weights, optimizer and every loss in fp32)."""
