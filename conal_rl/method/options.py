"""The method's choices that a command line offers, importable without torch (flags are
parsed before torch is loaded)."""

CONFLICT_RULES = ("any-pair", "ema-pair", "consensus", "affinity", "evidence")
"""How conflict-noticing decides (``ConflictNoticing`` says how each works): ``any-pair`` is
the paper's rule, on one minibatch; ``evidence`` decides from large-sample statistics."""
PAPER_RULE = "any-pair"
DEFAULT_RULE = "evidence"
"""The default of a search: the one rule that recovered known task families and kept
agreeing tasks shared (benchmarks/results/conflict-rules.md)."""
