"""How a net's linear maps may start: the choices of ``--weight-init``, importable without
torch (flags are parsed before torch is loaded)."""

WEIGHT_INITS = ("torch", "he-uniform")
"""torch's default (uniform in ±1/sqrt(fan_in), biases too) or He-uniform (uniform in
±sqrt(6/fan_in), zero biases: the Meta-World+ reference's)."""
