"""Speed benchmarks: the training loop, the update against its arithmetic, the method's
batched parts, the machine's cores, and what Ray costs."""
