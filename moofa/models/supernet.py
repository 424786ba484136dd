"""The elastic MobileNetV3 supernet (docs/design.md#architecture): one class for all five models, driven by
the :class:`~moofa.models.spec.ModelSpec` table."""
from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, TypeVar

import numpy as np
import torch
import torch.nn as nn

from moofa.errors import CheckpointError
from moofa.io import require_file
from moofa.models.dynamic import DynamicMBConvLayer
from moofa.models.layers import (
    MobileNetV3,
    ResidualBlock,
    head_forward,
    init_weights,
    set_bn_param,
    stem_modules,
)
from moofa.models.spec import (
    N_STAGES,
    ModelSpec,
    SubnetConfig,
    get_model_spec,
    norm_expand,
)

CONSTRAINT_TYPES = {"kernel_size": "ks", "expand_ratio": "e", "depth": "d"}

T = TypeVar("T")


class _Chooser(Protocol):
    """``random.Random`` or the ``random`` module itself (whose global state the reference draws from)."""

    def choice(self, seq: Sequence[T]) -> T: ...


def _residual(block: nn.Module) -> ResidualBlock:
    if not isinstance(block, ResidualBlock):
        raise TypeError(f"supernet block: expected a ResidualBlock, got {type(block).__name__}")
    return block


def _elastic_layer(block: ResidualBlock) -> DynamicMBConvLayer:
    """The elastic layer of a supernet block (every block after block S)."""
    if not isinstance(block.conv, DynamicMBConvLayer):
        raise TypeError(f"supernet block: expected a DynamicMBConvLayer, got {type(block.conv).__name__}")
    return block.conv


class Supernet(nn.Module):
    """Elastic MobileNetV3: kernel 3/5/7 and expand ratio per block, depth per stage.

    A freshly built supernet is its largest subnet. ``state_dict()`` keys and shapes are the
    reference's; :meth:`load_state_dict` also accepts static (teacher) and legacy OFA key names.
    """

    def __init__(self, spec: ModelSpec, n_classes: int = 1000, dropout: float = 0.1,
                 bn_momentum: float = 0.1, bn_eps: float = 1e-5, kernel_transform: bool = True,
                 init: str = "he_fout") -> None:
        super().__init__()
        self.spec = spec
        self.n_classes = n_classes
        parts = stem_modules(spec.table, n_classes, dropout)
        blocks: list[nn.Module] = [parts.pop("block_s")]
        for i in range(spec.n_blocks):
            cin, cout, stride = spec.block_io(i)
            stage = spec.stages[i // spec.blocks_per_stage]
            layer = DynamicMBConvLayer(cin, cout, spec.ks_list, spec.expand_list, stride, stage.act,
                                       stage.se, kernel_transform)
            blocks.append(ResidualBlock(layer, nn.Identity() if stride == 1 and cin == cout else None))
        self.first_conv = parts["first_conv"]
        self.blocks = nn.ModuleList(blocks)
        self.final_expand_layer = parts["final_expand_layer"]
        self.feature_mix_layer = parts["feature_mix_layer"]
        self.classifier = parts["classifier"]
        self.runtime_depth = [max(spec.depth_list)] * N_STAGES
        self._constraints: dict[str, list | None] = {"ks": None, "e": None, "d": None}
        init_weights(self, init)
        set_bn_param(self, bn_momentum, bn_eps)

    # ----------------------------------------------------------------------------------- forward
    @property
    def elastic_blocks(self) -> list[DynamicMBConvLayer]:
        return [_elastic_layer(_residual(b)) for b in self.blocks[1:]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks[0](self.first_conv(x))
        b = self.spec.blocks_per_stage
        for s, depth in enumerate(self.runtime_depth):
            for j in range(depth):
                x = self.blocks[1 + s * b + j](x)
        return head_forward(self, x)

    # ---------------------------------------------------------------------- subnet configuration
    def _expand_arg(self, name: str, value: Any, n: int) -> list:
        if value is None:
            return [None] * n
        if isinstance(value, (list, tuple)):
            if len(value) != n:
                raise ValueError(f"{name}: expected {n} values for {self.spec.name}, got {len(value)}")
            return list(value)
        return [value] * n

    def set_active_subnet(self, ks: int | Sequence[int] | None = None,
                          e: float | Sequence[float] | None = None,
                          d: int | Sequence[int] | None = None, **kwargs: Any) -> dict:
        """Set kernel sizes and expand ratios (one value or 20) and depths (one or 5).

        ``None`` (or a None entry) leaves that part unchanged. A wrong length, a value outside the
        model's choices or an unknown keyword raises ValueError naming it; nothing is changed then.
        ``image_size`` is accepted and ignored (resolution belongs to the data), as is CompOFA's
        ``wid=None``.
        """
        for key, val in kwargs.items():
            if key == "image_size" or (key == "wid" and val is None):
                continue
            raise ValueError(f"set_active_subnet: unknown argument {key}={val!r} (use ks, e, d)")
        spec = self.spec
        plan = {}
        for name, value, n, choices in (("ks", ks, spec.n_blocks, spec.ks_list),
                                        ("e", e, spec.n_blocks, spec.expand_list),
                                        ("d", d, N_STAGES, spec.depth_list)):
            values = self._expand_arg(name, value, n)
            for i, v in enumerate(values):
                if v is not None and v not in choices:
                    raise ValueError(f"{name}[{i}]: value {v!r} is not one of {spec.name}'s choices "
                                     f"{list(choices)}")
            plan[name] = values
        for block, k, ex in zip(self.elastic_blocks, plan["ks"], plan["e"]):
            if k is not None:
                block.active_kernel_size = int(k)
            if ex is not None:
                block.active_expand_ratio = norm_expand(ex)
        for s, depth in enumerate(plan["d"]):
            if depth is not None:
                self.runtime_depth[s] = min(spec.blocks_per_stage, int(depth))
        return self.get_current_config()

    def set_subnet(self, config: SubnetConfig | Mapping[str, Any]) -> None:
        """Activate ``config`` (ks, e, d; its image_size is the data's business)."""
        cfg = SubnetConfig.from_dict(config, image_size=max(self.spec.image_sizes)).validate(self.spec)
        self.set_active_subnet(list(cfg.ks), list(cfg.e), list(cfg.d))

    def set_max_net(self) -> dict:
        s = self.spec
        return self.set_active_subnet(max(s.ks_list), max(s.expand_list), max(s.depth_list))

    def get_current_config(self) -> dict:
        """``{"ks": [20], "e": [20], "d": [5]}`` of the active subnet."""
        blocks = self.elastic_blocks
        return {"ks": [b.active_kernel_size for b in blocks], "e": [b.active_expand_ratio for b in blocks],
                "d": list(self.runtime_depth)}

    def active_config(self, image_size: int) -> SubnetConfig:
        c = self.get_current_config()
        return SubnetConfig(c["ks"], c["e"], c["d"], image_size)

    def set_constraint(self, values: Sequence, constraint_type: str) -> None:
        """Restrict sampling: ``values`` is a flat list (all blocks/stages) or a list of lists (per
        block/stage); ``constraint_type`` is kernel_size, expand_ratio or depth."""
        if constraint_type not in CONSTRAINT_TYPES:
            raise ValueError(f"constraint_type: unknown value {constraint_type!r} "
                             f"(known: {', '.join(CONSTRAINT_TYPES)})")
        key = CONSTRAINT_TYPES[constraint_type]
        choices = {"ks": self.spec.ks_list, "e": self.spec.expand_list, "d": self.spec.depth_list}[key]
        flat = [v for x in values for v in (x if isinstance(x, (list, tuple)) else [x])]
        if not flat or any(v not in choices for v in flat):
            raise ValueError(f"{constraint_type}: values {list(values)!r} must be among {list(choices)}")
        self._constraints[key] = copy.deepcopy(list(values))

    def clear_constraint(self) -> None:
        self._constraints = {"ks": None, "e": None, "d": None}

    def _candidates(self, key: str, i: int) -> list:
        full = {"ks": self.spec.ks_list, "e": self.spec.expand_list, "d": self.spec.depth_list}[key]
        c = self._constraints[key]
        if c is None:
            return list(full)
        if isinstance(c[0], (list, tuple)):
            return list(c[i])
        return list(c)

    def sample_active_subnet(self, rng: random.Random | None = None) -> dict:
        """Draw a random subnet under the current constraints and activate it.

        Draw order and RNG are the reference's (Python's ``random``: 20 kernels, then 20 expand
        ratios, then 5 depths), so ``random.seed(s)`` reproduces its subnets. CompOFA (compound)
        draws each stage's depth with NumPy and couples the stage's expand ratios to it (docs/design.md#architecture).
        """
        draw: _Chooser = random if rng is None else rng
        n = self.spec.n_blocks
        if self.spec.compound:
            depths, es = [], []
            for s in range(N_STAGES):
                choices = self.spec.depth_list
                d = int(np.random.choice(choices, p=[1.0 / len(choices)] * len(choices)))
                depths.append(d)
                es += [draw.choice([self.spec.compound_expand(d)]) for _ in range(self.spec.blocks_per_stage)]
            ks = [draw.choice(self._candidates("ks", i)) for i in range(n)]
        else:
            ks = [draw.choice(self._candidates("ks", i)) for i in range(n)]
            es = [draw.choice(self._candidates("e", i)) for i in range(n)]
            depths = [draw.choice(self._candidates("d", s)) for s in range(N_STAGES)]
        self.set_active_subnet(ks, es, depths)
        return {"ks": ks, "e": es, "d": depths}

    # --------------------------------------------------------------------------- extraction
    @torch.no_grad()
    def get_active_subnet(self) -> MobileNetV3:
        """A standalone static network of the active subnet with copied weights (docs/design.md#architecture)."""
        b = self.spec.blocks_per_stage
        blocks: list[nn.Module] = [copy.deepcopy(self.blocks[0])]
        for s, depth in enumerate(self.runtime_depth):
            for j in range(depth):
                block = _residual(self.blocks[1 + s * b + j])
                blocks.append(ResidualBlock(_elastic_layer(block).to_static(), copy.deepcopy(block.shortcut)))
        net = MobileNetV3(copy.deepcopy(self.first_conv), blocks, copy.deepcopy(self.final_expand_layer),
                          copy.deepcopy(self.feature_mix_layer), copy.deepcopy(self.classifier))
        bn = next(m for m in self.modules() if isinstance(m, nn.BatchNorm2d))
        set_bn_param(net, bn.momentum, bn.eps)
        return net.to(next(self.parameters()).device)

    def build_teacher(self) -> MobileNetV3:
        """The largest subnet as a static network (the teacher of docs/design.md#protocols); the active subnet is
        restored afterwards."""
        saved = self.get_current_config()
        self.set_max_net()
        net = self.get_active_subnet()
        self.set_active_subnet(**saved)
        return net

    def re_organize_middle_weights(self, expand_ratio_stage: int = 0) -> None:
        """Channel re-sorting of every elastic block (docs/design.md#architecture)."""
        for block in self.elastic_blocks:
            block.re_organize_middle_weights(expand_ratio_stage)

    # ----------------------------------------------------------------------------- loading
    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True,
                        assign: bool = False):
        """Load with the reference's key remapping (docs/design.md#architecture).

        Accepts supernet, static-subnet (teacher) and legacy ``.mobile_inverted_conv.`` names.
        Keys missing from the source keep their values; with ``strict`` only the kernel-transform
        matrices (absent from static checkpoints) may be missing. Unexpected or mis-shaped keys
        raise :class:`~moofa.errors.CheckpointError` listing the first of each.
        """
        own = self.state_dict()
        remapped, unexpected = remap_state_dict(state_dict, own)
        missing = [k for k in own if k not in remapped and not k.endswith("num_batches_tracked")]
        if strict:
            missing = [k for k in missing if not k.endswith("_matrix")]
        else:
            missing = []
        check_fit(unexpected, missing, remapped, own)
        return super().load_state_dict(remapped, strict=False, assign=assign)


def remap_state_dict(source: Mapping[str, torch.Tensor],
                     target: Mapping[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """Map ``source`` keys onto ``target`` keys by docs/design.md#architecture's rules; keys that map nowhere are
    returned as the second item."""
    out: dict[str, Any] = {}
    unexpected: list[str] = []
    rules_remove = ((".bn.bn.", ".bn."), (".conv.conv.weight", ".conv.weight"), (".linear.linear.", ".linear."))
    rules_add = ((".linear.", ".linear.linear."), ("bn.", "bn.bn."), ("conv.weight", "conv.conv.weight"))
    for key, value in source.items():
        k = key.replace(".mobile_inverted_conv.", ".conv.")
        candidates = [k] + [k.replace(a, b) for a, b in rules_remove if a in k] + \
                     [k.replace(a, b) for a, b in rules_add if a in k]
        for c in candidates:
            if c in target:
                out[c] = value
                break
        else:
            unexpected.append(key)
    return out, unexpected


def check_fit(unexpected: list[str], missing: list[str], source: Mapping[str, torch.Tensor],
              target: Mapping[str, torch.Tensor], where: str = "state_dict") -> None:
    """Raise a one-line CheckpointError if keys are unexpected, missing or mis-shaped."""
    shape = [f"{k} {tuple(source[k].shape)} vs {tuple(v.shape)}" for k, v in target.items()
             if k in source and tuple(source[k].shape) != tuple(v.shape)]
    if unexpected or missing or shape:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shape)):
            if items:
                parts.append(f"{len(items)} {label} (first: {items[0]})")
        raise CheckpointError(f"checkpoint does not fit the model: {'; '.join(parts)}", key=where)


def load_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a ``{"state_dict": ...}`` (or plain state-dict) checkpoint with ``weights_only=True``.
    Missing or corrupt files raise CheckpointError naming the path."""
    path = require_file(path, "checkpoint file", error=CheckpointError)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupt, truncated or not a torch file
        raise CheckpointError(f"cannot read checkpoint ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})", file=path) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError("checkpoint is not a mapping", file=path)
    return dict(obj)


def state_dict_of(checkpoint: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
    sd = checkpoint.get("state_dict", checkpoint)
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def load_weights(net: nn.Module, path: str | Path, strict: bool = True) -> dict:
    """Load a checkpoint file into a supernet or static network; returns the whole checkpoint."""
    ckpt = load_checkpoint_file(path)
    sd = state_dict_of(ckpt)
    try:
        if isinstance(net, Supernet):
            net.load_state_dict(sd, strict=strict)
        else:
            sd = {k.replace(".mobile_inverted_conv.", ".conv."): v for k, v in sd.items()}
            own = net.state_dict()
            unexpected = [k for k in sd if k not in own]
            missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
            check_fit(unexpected, missing if strict else [], sd, own)
            net.load_state_dict(sd, strict=False)
    except CheckpointError as err:
        raise CheckpointError(str(err), file=path) from None
    return ckpt


def build_supernet(model: str | ModelSpec, n_classes: int = 1000, model_configs: str | Path | None = None,
                   **options: Any) -> Supernet:
    """Build the supernet of ``model`` (a name of ``moofa.MODELS`` or of ``model_configs``).

    ``options``: dropout (0.1), bn_momentum (0.1), bn_eps (1e-5), kernel_transform (True),
    init ("he_fout").
    """
    spec = get_model_spec(model, model_configs)
    known = {"dropout", "bn_momentum", "bn_eps", "kernel_transform", "init"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"build_supernet: unknown option {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return Supernet(spec, n_classes=n_classes, **options)
