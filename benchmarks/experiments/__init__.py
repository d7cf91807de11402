"""The experiment runner: success tables over architectures and seeds (Ray Tune trials that
resume), the laptop preset's sweep, the learner study, and their curves and reports."""
