"""The ``memory`` section: the memory model of every peak."""
from __future__ import annotations

from moofa.config.fields import Field, _bool, _choice
from moofa.config.section import Section, schema_section

# The memory model of every peak (dataset bins, budgets, bounds, eval, results, plots). The
# defaults are the reference's count in elements; any other setting makes every peak and budget
# bytes (moofa.efficiency.memory.MemoryOptions).
MEMORY_SCHEMA: dict[str, Field] = {
    "bytes_per_element": Field(1, _choice(1, 2, 4), "element size: 1 int8, 2 fp16, 4 fp32 (bytes)"),
    "count_weights": Field(True, _bool(), "count the largest layer's weights; false = activations only"),
    "count_head": Field(False, _bool(), "also count feature-mix layer and classifier"),
    "inplace_depthwise": Field(False, _bool(), "the depthwise conv writes into its input buffer"),
}


@schema_section(MEMORY_SCHEMA, "memory")
class MemorySettings(Section):
    """``memory``: the memory model of every peak (defaults: the reference's count in elements)."""

    bytes_per_element: int  # bytes
    count_weights: bool
    count_head: bool
    inplace_depthwise: bool
