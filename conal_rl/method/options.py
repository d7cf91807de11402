"""The method's choices that a command line offers, importable without torch (flags are
parsed before torch is loaded)."""

CONFLICT_RULES = ("any-pair", "ema-pair", "consensus", "affinity", "evidence")
"""How conflict-noticing decides (``ConflictNoticing`` says how each works): ``any-pair`` is
the paper's rule, on one minibatch; ``evidence`` decides from large-sample statistics."""
WEIGHT_INITS = ("torch", "he-uniform")
"""How a net's linear maps start: torch's default (uniform in ±1/sqrt(fan_in), biases too)
or He-uniform (uniform in ±sqrt(6/fan_in), zero biases: the Meta-World+ reference's)."""
PAPER_RULE = "any-pair"
DEFAULT_RULE = "evidence"
"""The default of a search: the one rule that recovered known task families and kept
agreeing tasks shared (benchmarks/results/conflict-rules.md)."""
