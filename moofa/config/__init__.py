"""The YAML run configuration (moved to :mod:`moofa.config.load`; re-exported here)."""
from moofa.config.load import *  # noqa: F401,F403
from moofa.config.load import AnyArgs  # noqa: F401
