"""Measured peak memory of a static subnet with forward hooks, docs/design.md#memory-model taken literally.

Independent of the closed form in :mod:`moofa.efficiency.memory` (it shares no code with it):
it exists to check the analytic path and to profile networks the analytic path does not know.

Every module whose type is exactly ``nn.Conv2d`` or ``nn.Linear`` gets a forward hook that
records numel(first input), numel(output) and numel(its parameters). One forward pass on a
random (1, 3, R, R) tensor. Entries are grouped as the reference does:

* ``first_conv`` and ``final_expand_layer``: one entry each;
* each block ``blocks.<i>`` (block S included): [IB, DW + residual, PL] with a missing IB
  dropped; residual = numel(block input) when the block has a shortcut, added to DW only;
* SE convs, ``feature_mix_layer`` and ``classifier`` are not counted.

Units: elements.
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn

_BLOCK = re.compile(r"^blocks\.(\d+)\.conv\.(inverted_bottleneck|depth_conv|point_linear)\.")
_EXCLUDED = ("feature_mix_layer.", "classifier.")
_ROLES = ("inverted_bottleneck", "depth_conv", "point_linear")


def _hooked_modules(net: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in net.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]


def measure_peak_memory(subnet: nn.Module, image_size: int) -> tuple[int, list[int]]:
    """(peak, histogram) in elements of a static MobileNetV3 subnet at ``image_size`` pixels,
    measured with forward hooks on one batch-1 forward pass (docs/design.md#memory-model)."""
    records: list[tuple[str, int, int, int]] = []  # (module name, in, out, params) in call order

    def hook_for(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            params = sum(p.numel() for p in module.parameters(recurse=False))
            records.append((name, inputs[0].numel(), output.numel(), params))
        return hook

    handles = [m.register_forward_hook(hook_for(name)) for name, m in _hooked_modules(subnet)]
    was_training = subnet.training
    try:
        param = next(subnet.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        subnet.eval()
        with torch.no_grad():
            subnet(torch.randn(1, 3, image_size, image_size, device=device))
    finally:
        for h in handles:
            h.remove()
        subnet.train(was_training)

    hist: list[int] = []
    blocks: dict[int, dict[str, int]] = {}
    block_input: dict[int, int] = {}
    order: list[tuple[str, int]] = []  # ("entry", index into hist) or ("block", i)
    for name, n_in, n_out, n_par in records:
        if name.startswith(_EXCLUDED) or ".se." in name:
            continue
        match = _BLOCK.match(name)
        if match is None:
            order.append(("entry", len(hist)))
            hist.append(n_in + n_out + n_par)
            continue
        i, role = int(match.group(1)), match.group(2)
        if i not in blocks:
            blocks[i] = {}
            block_input[i] = n_in  # the first conv of a block sees the block input
            order.append(("block", i))
        blocks[i][role] = n_in + n_out + n_par
    flat: list[int] = []
    for kind, ref in order:
        if kind == "entry":
            flat.append(hist[ref])
            continue
        entries = dict(blocks[ref])
        # a residual block's depthwise conv also holds the block input (kept for the addition)
        if getattr(subnet.get_submodule(f"blocks.{ref}"), "shortcut", None) is not None and "depth_conv" in entries:
            entries["depth_conv"] += block_input[ref]
        flat += [entries[r] for r in _ROLES if entries.get(r, 0)]
    return (max(flat) if flat else 0), flat
