"""Progressive-shrinking training, evaluation and checkpoints (docs/design.md#protocols)."""
