"""Progressive-shrinking training, evaluation and checkpoints (SPEC section 3)."""
