"""Studies: one-off questions answered by measurement (which conflict rule finds task
families, do conflicts last, do searched trees group sibling tasks, what bad input gives)."""
