"""Supernets and static networks, and the file format of a found subnet (docs/design.md#architecture)."""
from moofa.models.layers import MobileNetV3, count_parameters
from moofa.models.spec import (
                               MODELS,
                               ModelSpec,
                               SubnetConfig,
                               get_model_spec,
                               load_model_configs,
                               moofa_widths,
)
from moofa.models.supernet import (
                               Supernet,
                               build_supernet,
                               load_checkpoint_file,
                               load_weights,
)

__all__ = ["MODELS", "ModelSpec", "SubnetConfig", "Supernet", "MobileNetV3", "build_supernet",
           "get_model_spec", "load_model_configs", "moofa_widths", "count_parameters",
           "load_checkpoint_file", "load_weights"]
