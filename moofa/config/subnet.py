"""The ``subnet_config`` section: the subnet that ``--mode eval`` evaluates."""
from __future__ import annotations

from typing import Any

from moofa.config.fields import Field, _Bad, _bool, _is_num, _list, _num, _str
from moofa.config.section import Section, schema_section
from moofa.models.spec import norm_expand


def _expand_value(v: Any) -> Any:
    if not _is_num(v) or v < 1:
        raise _Bad("must be an expand ratio >= 1")
    return norm_expand(v)


SUBNET_SCHEMA: dict[str, Field] = {
    "random_sample": Field(False, _bool(), "eval: sample a random subnet instead of the given one"),
    "ks": Field(None, _list(_num(1, integer=True), nullable=True), "kernel size per block (null = max)"),
    "e": Field(None, _list(_expand_value, nullable=True), "expand ratio per block (null = max)"),
    "d": Field(None, _list(_num(1, integer=True), nullable=True), "depth per stage (null = max)"),
    "image_size": Field(224, _num(8, integer=True), "eval resolution, pixels"),
    "res_dir": Field("results/MOOFA/", _str(), "eval output root"),
    "name": Field("reference_subnet", _str(), "eval output folder name"),
    "draw_graphs": Field(True, _bool(), "draw the architecture and the memory histogram"),
}


@schema_section(SUBNET_SCHEMA, "subnet_config")
class SubnetSettings(Section):
    """``subnet_config``: the subnet of ``eval_and_search.py --mode eval``."""

    random_sample: bool
    ks: list[int] | None
    e: list[int | float] | None
    d: list[int] | None
    image_size: int  # pixels
    res_dir: str
    name: str
    draw_graphs: bool
