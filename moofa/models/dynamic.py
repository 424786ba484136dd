"""Elastic (dynamic) layers of the supernet (docs/design.md#architecture).

Every dynamic layer allocates its largest shape and uses leading slices at run time, so one set of
weights serves all subnets. Parameter names reproduce the reference's nested keys
(``...depth_conv.conv.conv.weight``, ``...depth_conv.conv.7to5_matrix``, ``...bn.bn.weight``).
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from moofa.models.layers import (
    MBConvLayer,
    SEModule,
    build_activation,
    conv_bias,
    global_avg_pool,
    running_stats,
)
from moofa.models.spec import mid_channels, se_channels


def _centre_crop(w: torch.Tensor, size: int) -> torch.Tensor:
    """Centre ``size x size`` crop of square filters ``w`` (..., k, k)."""
    c = w.size(-1) // 2
    return w[..., c - size // 2: c + size // 2 + 1, c - size // 2: c + size // 2 + 1]


class DynamicSeparableConv2d(nn.Module):
    """Depthwise conv with elastic kernel size and channel count (docs/design.md#architecture).

    Stores one (max_channels, 1, k_max, k_max) weight; smaller kernels are centre crops, each step
    down the sorted kernel list mapped by a trainable ``<src>to<tgt>_matrix`` (identity at init).
    """

    def __init__(self, max_channels: int, ks_list: Sequence[int], stride: int = 1,
                 kernel_transform: bool = True) -> None:
        super().__init__()
        self.ks_list = sorted(set(int(k) for k in ks_list))
        self.stride = stride
        self.kernel_transform = kernel_transform
        # matrices first, so the state-dict order matches the reference
        for small, large in zip(self.ks_list[:-1], self.ks_list[1:]):
            self.register_parameter(f"{large}to{small}_matrix", nn.Parameter(torch.eye(small * small)))
        k = self.ks_list[-1]
        self.conv = nn.Conv2d(max_channels, max_channels, k, stride, k // 2, groups=max_channels, bias=False)
        self.active_kernel_size = k

    def active_filter(self, channels: int, kernel_size: int) -> torch.Tensor:
        """The (channels, 1, k, k) filter of the first ``channels`` channels at kernel ``k``."""
        w = self.conv.weight[:channels]
        if kernel_size == self.ks_list[-1]:
            return w
        if not self.kernel_transform:
            return _centre_crop(w, kernel_size)
        for small, large in zip(reversed(self.ks_list[:-1]), reversed(self.ks_list[1:])):
            if large <= kernel_size:
                break
            m = getattr(self, f"{large}to{small}_matrix")
            w = _centre_crop(w, small).reshape(-1, small * small)
            w = F.linear(w, m).view(channels, 1, small, small)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, k = x.size(1), self.active_kernel_size
        return F.conv2d(x, self.active_filter(c, k), None, self.stride, k // 2, 1, c)


class DynamicConv2d(nn.Module):
    """1x1 conv whose input and output channel counts are leading slices of the allocation."""

    def __init__(self, max_in: int, max_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(max_in, max_out, 1, bias=False)
        self.active_out_channels = max_out

    def forward(self, x: torch.Tensor, out_channels: int | None = None) -> torch.Tensor:
        out = self.active_out_channels if out_channels is None else out_channels
        return F.conv2d(x, self.conv.weight[:out, : x.size(1)])


class DynamicBatchNorm2d(nn.Module):
    """BatchNorm over the leading ``C`` channels of a max-size BN (docs/design.md#architecture). The running-stat
    slices are views, so updates land in the shared buffers."""

    use_full_bn: bool = False  # set during BN re-calibration (see :func:`full_bn_mode`)

    def __init__(self, max_features: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(max_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn, c = self.bn, x.size(1)
        if c == bn.num_features or DynamicBatchNorm2d.use_full_bn:
            return bn(x)
        factor = 0.0
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        use_batch_stats = bn.training or not bn.track_running_stats
        return F.batch_norm(x, bn.running_mean[:c] if bn.running_mean is not None else None,
                            bn.running_var[:c] if bn.running_var is not None else None,
                            bn.weight[:c], bn.bias[:c], use_batch_stats, factor, bn.eps)


@contextlib.contextmanager
def full_bn_mode() -> Iterator[None]:
    """Within the block every DynamicBatchNorm2d calls its BatchNorm2d directly (used by BN
    re-calibration, whose patched BatchNorm forward slices by itself)."""
    old = DynamicBatchNorm2d.use_full_bn
    DynamicBatchNorm2d.use_full_bn = True
    try:
        yield
    finally:
        DynamicBatchNorm2d.use_full_bn = old


class DynamicSE(SEModule):
    """Squeeze-excite on the leading channels: reduce ``[:se_mid, :C]``, expand ``[:C, :se_mid]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.size(1)
        mid = se_channels(c)
        y = global_avg_pool(x)
        reduce, expand = self.fc.reduce, self.fc.expand
        y = F.relu(F.conv2d(y, reduce.weight[:mid, :c], conv_bias(reduce)[:mid]))
        y = F.hardsigmoid(F.conv2d(y, expand.weight[:c, :mid], conv_bias(expand)[:c]))
        return x * y


class DynamicConvBN(nn.Sequential):
    """Elastic 1x1 conv -> BN (the point-linear part); the annotations tell the type checker what
    ``nn.Module.__getattr__`` returns."""

    conv: DynamicConv2d
    bn: DynamicBatchNorm2d


class DynamicConvBNAct(DynamicConvBN):
    """Elastic 1x1 conv -> BN -> activation (the inverted bottleneck)."""

    act: nn.Module


class DynamicDepthwise(nn.Sequential):
    """Elastic depthwise conv -> BN -> activation [-> SE, looked up by name]."""

    conv: DynamicSeparableConv2d
    bn: DynamicBatchNorm2d


def _se_of(seq: nn.Sequential) -> SEModule:
    """The ``se`` part of a depthwise Sequential built with ``use_se``."""
    se = seq.se
    if not isinstance(se, SEModule):
        raise TypeError(f"depth_conv.se: expected an SEModule, got {type(se).__name__}")
    return se


class DynamicMBConvLayer(nn.Module):
    """Inverted residual with elastic kernel size and expand ratio.

    The active middle width is ``make_divisible(round(C_in * e), 8)`` of the actual input width.
    A block whose active expand ratio is 1 skips its inverted bottleneck, exactly like the static
    layer that ``to_static`` extracts (fixes the reference's MOOFA_V2 defect,
    docs/design.md#departures-from-the-reference).
    """

    def __init__(self, in_channels: int, out_channels: int, ks_list: Sequence[int],
                 expand_list: Sequence[float], stride: int = 1, act_func: str = "relu",
                 use_se: bool = False, kernel_transform: bool = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.ks_list, self.expand_list = sorted(ks_list), sorted(expand_list)
        self.stride, self.act_func, self.use_se = stride, act_func, use_se
        if 1 in self.expand_list and mid_channels(in_channels, 1) != in_channels:
            raise ValueError(f"expand_list: ratio 1 needs a width divisible by 8, got {in_channels}")
        max_mid = mid_channels(in_channels, self.expand_list[-1])
        self.inverted_bottleneck: DynamicConvBNAct | None = None
        if self.expand_list[-1] != 1:
            self.inverted_bottleneck = DynamicConvBNAct(OrderedDict(
                conv=DynamicConv2d(in_channels, max_mid), bn=DynamicBatchNorm2d(max_mid),
                act=build_activation(act_func)))
        dw: OrderedDict[str, nn.Module] = OrderedDict(
            conv=DynamicSeparableConv2d(max_mid, self.ks_list, stride, kernel_transform),
            bn=DynamicBatchNorm2d(max_mid), act=build_activation(act_func))
        if use_se:
            dw["se"] = DynamicSE(max_mid)
        self.depth_conv = DynamicDepthwise(dw)
        self.point_linear = DynamicConvBN(OrderedDict(conv=DynamicConv2d(max_mid, out_channels),
                                                      bn=DynamicBatchNorm2d(out_channels)))
        self.active_kernel_size = self.ks_list[-1]
        self.active_expand_ratio = self.expand_list[-1]

    def active_mid(self, in_channels: int | None = None) -> int:
        return mid_channels(self.in_channels if in_channels is None else in_channels,
                            self.active_expand_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.depth_conv.conv.active_kernel_size = self.active_kernel_size
        if self.inverted_bottleneck is not None and self.active_expand_ratio != 1:
            ib = self.inverted_bottleneck
            x = ib.act(ib.bn(ib.conv(x, self.active_mid(x.size(1)))))
        x = self.depth_conv(x)
        return self.point_linear(x)

    @torch.no_grad()
    def to_static(self) -> MBConvLayer:
        """A static MBConvLayer with the active kernel (transformed filter baked in), active
        middle width and copies of the sliced weights and BN statistics."""
        cin, e, k = self.in_channels, self.active_expand_ratio, self.active_kernel_size
        mid = self.active_mid()
        layer = MBConvLayer(cin, self.out_channels, k, self.stride, e, mid, self.act_func, self.use_se)
        layer = layer.to(self.point_linear.conv.conv.weight.device)
        dst, src = layer.inverted_bottleneck, self.inverted_bottleneck
        # the static layer has a bottleneck only for a ratio other than 1, so then this one has one too
        if dst is not None and src is not None:
            dst.conv.weight.copy_(src.conv.conv.weight[:mid, :cin])
            _copy_bn(dst.bn, src.bn.bn)
        layer.depth_conv.conv.weight.copy_(self.depth_conv.conv.active_filter(mid, k))
        _copy_bn(layer.depth_conv.bn, self.depth_conv.bn.bn)
        if self.use_se:
            sm, src_fc, dst_fc = se_channels(mid), _se_of(self.depth_conv).fc, _se_of(layer.depth_conv).fc
            dst_fc.reduce.weight.copy_(src_fc.reduce.weight[:sm, :mid])
            conv_bias(dst_fc.reduce).copy_(conv_bias(src_fc.reduce)[:sm])
            dst_fc.expand.weight.copy_(src_fc.expand.weight[:mid, :sm])
            conv_bias(dst_fc.expand).copy_(conv_bias(src_fc.expand)[:mid])
        layer.point_linear.conv.weight.copy_(self.point_linear.conv.conv.weight[:, :mid])
        _copy_bn(layer.point_linear.bn, self.point_linear.bn.bn)
        return layer

    @torch.no_grad()
    def re_organize_middle_weights(self, expand_ratio_stage: int = 0) -> None:
        """OFA's channel re-sorting by importance (docs/design.md#architecture): middle channels ordered by the L1
        norm of the point-linear weights that read them, so the leading slices keep the most
        important channels. ``expand_ratio_stage`` > 0 keeps each smaller width's prefix first."""
        importance = self.point_linear.conv.conv.weight.abs().sum(dim=(0, 2, 3))
        if expand_ratio_stage > 0:
            widths = [mid_channels(self.in_channels, e) for e in sorted(self.expand_list, reverse=True)]
            right, base = len(importance), -len(widths) * 1e5
            for i in range(expand_ratio_stage + 1):
                importance[widths[i]:right] += base
                base += 1e5
                right = widths[i]
        order = torch.sort(importance, dim=0, descending=True)[1]
        pl = self.point_linear.conv.conv
        pl.weight.copy_(pl.weight.index_select(1, order))
        _permute_bn(self.depth_conv.bn.bn, order)
        dwc = self.depth_conv.conv.conv
        dwc.weight.copy_(dwc.weight.index_select(0, order))
        if self.use_se:
            fc = _se_of(self.depth_conv).fc
            expand_bias, reduce_bias = conv_bias(fc.expand), conv_bias(fc.reduce)
            fc.expand.weight.copy_(fc.expand.weight.index_select(0, order))
            expand_bias.copy_(expand_bias.index_select(0, order))
            fc.reduce.weight.copy_(fc.reduce.weight.index_select(1, order))
            se_order = torch.sort(fc.expand.weight.abs().sum(dim=(0, 2, 3)), descending=True)[1]
            fc.expand.weight.copy_(fc.expand.weight.index_select(1, se_order))
            fc.reduce.weight.copy_(fc.reduce.weight.index_select(0, se_order))
            reduce_bias.copy_(reduce_bias.index_select(0, se_order))
        if self.inverted_bottleneck is not None:
            _permute_bn(self.inverted_bottleneck.bn.bn, order)
            ibc = self.inverted_bottleneck.conv.conv
            ibc.weight.copy_(ibc.weight.index_select(0, order))


def _copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d) -> None:
    c = dst.num_features
    dst.weight.copy_(src.weight[:c])
    dst.bias.copy_(src.bias[:c])
    for d, s in zip(running_stats(dst), running_stats(src)):
        d.copy_(s[:c])


def _permute_bn(bn: nn.BatchNorm2d, order: torch.Tensor) -> None:
    for t in (bn.weight, bn.bias, *running_stats(bn)):
        t.copy_(t.index_select(0, order))
