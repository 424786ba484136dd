"""Progressive-shrinking training, its logger, losses, schedules and checkpoints (docs/design.md#protocols)."""
