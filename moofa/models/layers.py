"""Static MobileNetV3 building blocks and the static network (docs/design.md#architecture).

Module and attribute names reproduce the reference's state-dict keys exactly
(``first_conv.conv.weight``, ``blocks.<i>.conv.depth_conv.se.fc.reduce.weight``, ...).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from moofa.models.spec import ModelSpec, SubnetConfig, mid_channels, se_channels

if TYPE_CHECKING:
    from moofa.models.spec import ArchTable


def build_activation(name: str | None) -> nn.Module:
    """``relu``, ``h_swish`` (x * relu6(x + 3) / 6), ``h_sigmoid`` or None (identity)."""
    if name is None:
        return nn.Identity()
    acts = {"relu": lambda: nn.ReLU(inplace=True), "h_swish": lambda: nn.Hardswish(inplace=True),
            "h_sigmoid": lambda: nn.Hardsigmoid(inplace=True)}
    if name not in acts:
        raise ValueError(f"act_func: unknown activation {name!r} (known: {', '.join(acts)})")
    return acts[name]()


_SINGLE_OP_POOLING = False  # set only while tracing for deployment: see single_op_pooling()


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """Mean over W then H, keeping dims (the reference's pooling order); one
    ``adaptive_avg_pool2d`` inside :func:`single_op_pooling`."""
    if _SINGLE_OP_POOLING:
        return F.adaptive_avg_pool2d(x, 1)
    return x.mean(3, keepdim=True).mean(2, keepdim=True)


@contextmanager
def single_op_pooling() -> Iterator[None]:
    """Trace global pooling as one ``adaptive_avg_pool2d`` (the same mean up to float rounding).

    The XNNPACK quantiser and partitioner know that op but not a pair of ``mean`` over one
    dimension each: with the reference's two means the int8 program fell apart into 14 delegate
    calls with fp32 pooling between them (docs/deploy.md). Used by ``torch.export`` in
    :mod:`moofa.deploy`; training and evaluation keep the reference's order."""
    global _SINGLE_OP_POOLING
    before, _SINGLE_OP_POOLING = _SINGLE_OP_POOLING, True
    try:
        yield
    finally:
        _SINGLE_OP_POOLING = before


def conv_bias(conv: nn.Conv2d) -> torch.Tensor:
    """The bias of a conv built with ``bias=True`` (torch types it Optional)."""
    if conv.bias is None:
        raise ValueError("conv_bias: the conv has no bias")
    return conv.bias


def running_stats(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(running_mean, running_var)`` of a BN that tracks them (torch types them Optional)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("running_stats: the BatchNorm does not track running statistics")
    return bn.running_mean, bn.running_var


class SEBranch(nn.Sequential):
    """reduce -> relu -> expand -> h_sigmoid; the annotations tell the type checker what
    ``nn.Module.__getattr__`` returns for the two convs."""

    reduce: nn.Conv2d
    expand: nn.Conv2d


class SEModule(nn.Module):
    """Squeeze-excite: pool, 1x1 conv C->mid (bias), ReLU, 1x1 conv mid->C (bias), h_sigmoid.

    The gate is out of place: an in-place ``hardsigmoid_`` is not annotated by the Arm
    (Ethos-U) quantiser, so each gate stayed fp32 on the CPU and split the NPU program
    (docs/ethosu.md). Same maths, same state dict."""

    def __init__(self, channels: int, mid: int | None = None) -> None:
        super().__init__()
        mid = se_channels(channels) if mid is None else mid
        self.fc = SEBranch(OrderedDict(
            reduce=nn.Conv2d(channels, mid, 1, bias=True), relu=nn.ReLU(inplace=True),
            expand=nn.Conv2d(mid, channels, 1, bias=True), h_sigmoid=nn.Hardsigmoid(inplace=False)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(global_avg_pool(x))


class ConvLayer(nn.Module):
    """conv (same padding, no bias) -> BN (optional) -> activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 use_bn: bool = True, act_func: str | None = "relu") -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        if use_bn:
            self.bn = nn.BatchNorm2d(out_channels)
        self.act = build_activation(act_func)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if hasattr(self, "bn"):
            x = self.bn(x)
        return self.act(x)


class LinearLayer(nn.Module):
    """Dropout (if p > 0) then Linear with bias."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout, inplace=True) if dropout > 0 else nn.Identity()
        self.linear = nn.Linear(in_features, out_features, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(x))


class ConvBN(nn.Sequential):
    """conv -> BN [-> act] [-> se] as a Sequential (the reference's keys ``conv.weight``, ``bn.*``).

    The annotations only tell the type checker what ``nn.Module.__getattr__`` returns for the
    two parts every instance has; ``act`` and ``se`` are optional and looked up by name."""

    conv: nn.Conv2d
    bn: nn.BatchNorm2d


def _conv_bn(in_c: int, out_c: int, k: int, stride: int = 1, groups: int = 1,
             act: str | None = None) -> ConvBN:
    parts: OrderedDict[str, nn.Module] = OrderedDict(
        conv=nn.Conv2d(in_c, out_c, k, stride, k // 2, groups=groups, bias=False), bn=nn.BatchNorm2d(out_c))
    if act is not None:
        parts["act"] = build_activation(act)
    return ConvBN(parts)


class MBConvLayer(nn.Module):
    """Static inverted residual: [1x1 IB -> BN -> act] (absent when expand_ratio == 1) ->
    kxk depthwise -> BN -> act -> [SE] -> 1x1 point-linear -> BN (no activation)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 expand_ratio: float = 6, mid: int | None = None, act_func: str = "relu",
                 use_se: bool = False) -> None:
        super().__init__()
        mid = mid_channels(in_channels, expand_ratio) if mid is None else mid
        if expand_ratio == 1:
            if mid != in_channels:
                raise ValueError(f"MBConvLayer: expand_ratio 1 needs mid == in_channels, "
                                 f"got mid {mid} and in_channels {in_channels}")
            self.inverted_bottleneck: ConvBN | None = None
        else:
            self.inverted_bottleneck = _conv_bn(in_channels, mid, 1, act=act_func)
        self.depth_conv = _conv_bn(mid, mid, kernel_size, stride, groups=mid, act=act_func)
        if use_se:
            self.depth_conv.add_module("se", SEModule(mid))
        self.point_linear = _conv_bn(mid, out_channels, 1)
        self.kernel_size, self.stride, self.expand_ratio = kernel_size, stride, expand_ratio
        self.in_channels, self.out_channels, self.mid_channels = in_channels, out_channels, mid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inverted_bottleneck is not None:
            x = self.inverted_bottleneck(x)
        return self.point_linear(self.depth_conv(x))


class ResidualBlock(nn.Module):
    """``x + conv(x)`` when ``shortcut`` is an identity module, else ``conv(x)``."""

    def __init__(self, conv: nn.Module, shortcut: nn.Module | None) -> None:
        super().__init__()
        self.conv = conv
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:
            return self.conv(x)
        # shortcut first: the same sum, but an Ethos-U program then converts the shortcut for the
        # ADD just before it rather than before the block (docs/ethosu.md#residual-adds-and-sram)
        return self.shortcut(x) + self.conv(x)


def stem_modules(table: "ArchTable", n_classes: int, dropout: float) -> dict[str, nn.Module]:
    """The fixed parts every network shares: first conv, block S and the head."""
    c0, c1 = table.first_conv, table.stem.width
    stem = MBConvLayer(c0, c1, 3, table.stem.stride, 1, c0, table.stem.act, table.stem.se)
    last = table.stages[-1].width
    return dict(
        first_conv=ConvLayer(3, c0, 3, 2, act_func=table.first_act),
        block_s=ResidualBlock(stem, nn.Identity() if c0 == c1 and table.stem.stride == 1 else None),
        final_expand_layer=ConvLayer(last, table.final_expand, 1, act_func=table.head_act),
        feature_mix_layer=ConvLayer(table.final_expand, table.feature_mix, 1, use_bn=False,
                                    act_func=table.head_act),
        classifier=LinearLayer(table.feature_mix, n_classes, dropout),
    )


class _Head(Protocol):
    """The head modules a network carries (MobileNetV3 and the supernet)."""

    final_expand_layer: nn.Module
    feature_mix_layer: nn.Module
    classifier: nn.Module


def head_forward(net: _Head, x: torch.Tensor) -> torch.Tensor:
    """final expand -> global average pool -> feature mix -> flatten -> classifier."""
    x = global_avg_pool(net.final_expand_layer(x))
    return net.classifier(torch.flatten(net.feature_mix_layer(x), 1))


def set_bn_param(net: nn.Module, momentum: float | None, eps: float) -> None:
    """Set momentum and eps of every BatchNorm (the config keys bn_momentum and bn_eps)."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum, m.eps = momentum, eps


def init_weights(net: nn.Module, scheme: str = "he_fout") -> None:
    """he_fout / he_fin initialisation of docs/design.md#architecture (convs N(0, sqrt(2/n)); BN 1/0; Linear
    U(+-1/sqrt(in)), bias 0). Kernel-transform matrices are not touched."""
    if scheme not in ("he_fout", "he_fin"):
        raise ValueError(f"model_init: unknown scheme {scheme!r} (known: he_fout, he_fin)")
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            c = m.out_channels if scheme == "he_fout" else m.in_channels
            n = m.kernel_size[0] * m.kernel_size[1] * c
            nn.init.normal_(m.weight, 0.0, (2.0 / n) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / m.in_features ** 0.5
            nn.init.uniform_(m.weight, -bound, bound)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class MobileNetV3(nn.Module):
    """Static MobileNetV3: first conv, blocks (block S first), head. What
    ``Supernet.get_active_subnet()`` returns and what the teacher is."""

    # set on a network read from a subnet file (moofa.models.subnet_file.load_exported): the
    # exported arch and the model it was cut from; None otherwise
    subnet_config: SubnetConfig | None = None
    model_spec: ModelSpec | None = None

    def __init__(self, first_conv: nn.Module, blocks: list[nn.Module], final_expand_layer: nn.Module,
                 feature_mix_layer: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.first_conv = first_conv
        self.blocks = nn.ModuleList(blocks)
        self.final_expand_layer = final_expand_layer
        self.feature_mix_layer = feature_mix_layer
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_conv(x)
        for block in self.blocks:
            x = block(x)
        return head_forward(self, x)

    @classmethod
    def build(cls, spec: ModelSpec, config: SubnetConfig, n_classes: int = 1000, dropout: float = 0.1,
              bn_momentum: float = 0.1, bn_eps: float = 1e-5, init: str = "he_fout") -> "MobileNetV3":
        """A randomly initialised static network of the subnet ``config`` of ``spec``."""
        config = SubnetConfig.from_dict(config).validate(spec)
        parts = stem_modules(spec.table, n_classes, dropout)
        blocks = [parts.pop("block_s")]
        for i in config.active_blocks(spec):
            cin, cout, stride = spec.block_io(i)
            stage = spec.stages[i // spec.blocks_per_stage]
            layer = MBConvLayer(cin, cout, config.ks[i], stride, config.e[i], None, stage.act, stage.se)
            blocks.append(ResidualBlock(layer, nn.Identity() if stride == 1 and cin == cout else None))
        net = cls(blocks=blocks, **parts)
        init_weights(net, init)
        set_bn_param(net, bn_momentum, bn_eps)
        return net


def count_parameters(net: nn.Module) -> int:
    """Number of parameters (elements), BN buffers excluded."""
    return sum(p.numel() for p in net.parameters())


__all__ = ["ConvLayer", "LinearLayer", "MBConvLayer", "ResidualBlock", "SEModule", "MobileNetV3",
           "build_activation", "single_op_pooling", "init_weights", "set_bn_param", "count_parameters"]
