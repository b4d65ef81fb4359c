"""Training machinery behind train.py: options, the per-iteration settings, resume state, the log, EMA, torchrun."""
