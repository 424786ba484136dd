"""Architecture diagram of a subnet with matplotlib (the reference's ``net_viz.draw_arch`` drew it
with graphviz, docs/design.md#protocols; no system graphviz is needed here).

A top-to-bottom chain: first conv, block S, the active MBConv blocks of each stage (on a grey
stage panel labelled with its number and depth), final expand, pooling, feature mix, classifier.
Block colour = kernel size (1x1 green #008000, 3 blue #0076c5, 5 yellow #f7ad28, 7 red #991400);
block width grows with the expand ratio (1.5 + 0.5 e: e = 3, 4, 6 give the reference's 3, 3.5,
4.5); the edge into each node is labelled with its input tensor ``C x H x W`` (channels x pixels);
blocks with an identity shortcut get a residual arc.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch

from moofa.efficiency.layout import geometry, out_side
from moofa.io import save_figure
from moofa.models.spec import ModelSpec, SubnetConfig, get_model_spec, norm_expand

KERNEL_COLOURS = {1: "#008000", 3: "#0076c5", 5: "#f7ad28", 7: "#991400"}
GREY, STAGE_PANEL = "#d9d9d9", "#f0f0f0"
NODE_H, STEP = 0.62, 1.15  # node height and vertical distance between nodes (axis units)


def block_width(e: float) -> float:
    """Drawn width of an MBConv node for expand ratio ``e`` (monotonic; reference values at 3, 4, 6)."""
    return 1.5 + 0.5 * float(e)


def kernel_colour(k: int) -> str:
    return KERNEL_COLOURS.get(int(k), "#7f7f7f")


@dataclass
class _Node:
    label: str
    colour: str
    width: float
    edge: str  # input tensor shape
    residual: bool = False
    stage: int | None = None  # elastic stage index (0..4) or None
    text_colour: str = "white"


def _fmt(v: int | float) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:,.2f}"


def _shape(c: int, h: int) -> str:
    return f"{c}x{h}x{h}"


def _nodes(spec: ModelSpec, subnet: SubnetConfig, n_classes: int) -> list[_Node]:
    t, geo = spec.table, geometry(spec, subnet.image_size)
    r, c0, h1 = subnet.image_size, t.first_conv, geo.h1
    hs = out_side(h1, 3, t.stem.stride)
    nodes = [_Node("ConvLayer 3x3", kernel_colour(3), 3.0, _shape(3, r)),
             _Node("MBConv1 3x3 (S)", kernel_colour(3), block_width(1), _shape(c0, h1),
                   residual=t.stem.stride == 1 and c0 == t.stem.width)]
    h = hs
    for i in subnet.active_blocks(spec):
        g, k, e = geo.blocks[i], subnet.ks[i], norm_expand(subnet.e[i])
        nodes.append(_Node(f"MBConv{e} {k}x{k}", kernel_colour(k), block_width(e), _shape(g.cin, h),
                           residual=g.shortcut, stage=i // spec.blocks_per_stage,
                           text_colour="black" if k == 5 else "white"))
        h = out_side(h, k, g.stride)
    f, mix = t.final_expand, t.feature_mix
    nodes += [_Node("ConvLayer 1x1 (final expand)", kernel_colour(1), 3.5, _shape(t.stages[-1].width, h)),
              _Node("GlobalAvgPool", GREY, 3.0, _shape(f, h), text_colour="black"),
              _Node("ConvLayer 1x1 (feature mix)", kernel_colour(1), 3.5, _shape(f, 1)),
              _Node(f"Linear classifier ({n_classes})", GREY, 3.5, str(mix), text_colour="black")]
    return nodes


def draw_arch(model: str | ModelSpec, config: SubnetConfig,
              path_stem: str | Path, info: Mapping[str, int | float] | None = None,
              n_classes: int = 1000) -> list[Path]:
    """Draw ``config`` of ``model`` to ``<path_stem>.png`` and ``<path_stem>.pdf`` (atomic);
    ``info`` (e.g. peak memory, MMACs, accuracy) is printed as a header. Returns the paths."""
    spec = get_model_spec(model)
    cfg = config.validate(spec)
    nodes = _nodes(spec, cfg, n_classes)
    n = len(nodes)
    height = (n + 1) * STEP
    fig = Figure(figsize=(7.5, 0.5 * (height + 1.6) + 0.5))
    ax = fig.subplots()
    ax.set_xlim(-5.2, 5.2)
    ax.set_ylim(-height, 1.6)
    ax.axis("off")
    ys = [-(i + 1) * STEP for i in range(n)]
    # stage panels behind the blocks
    for s in range(len(spec.stages)):
        idx = [i for i, nd in enumerate(nodes) if nd.stage == s]
        if not idx:
            continue
        top, bottom = ys[idx[0]] + NODE_H / 2 + 0.42, ys[idx[-1]] - NODE_H / 2 - 0.2
        ax.add_patch(FancyBboxPatch((-3.4, bottom), 6.8, top - bottom, boxstyle="round,pad=0.05",
                                    fc=STAGE_PANEL, ec="#bdbdbd", lw=0.8, zorder=0))
        ax.text(-3.3, (top + bottom) / 2, f"Stage {s + 2}\nd={cfg.d[s]}", ha="left", va="center",
                fontsize=8, color="#555555")
    ax.text(0, 0.55, f"Input {_shape(3, cfg.image_size)}", ha="center", va="center", fontsize=9)
    prev_y = 0.35
    for i, (nd, y) in enumerate(zip(nodes, ys)):
        ax.add_patch(FancyBboxPatch((-nd.width / 2, y - NODE_H / 2), nd.width, NODE_H,
                                    boxstyle="round,pad=0.02,rounding_size=0.18", fc=nd.colour,
                                    ec="black", lw=0.6, zorder=2))
        ax.text(0, y, nd.label, ha="center", va="center", fontsize=8, color=nd.text_colour, zorder=3)
        ax.add_patch(FancyArrowPatch((0, prev_y), (0, y + NODE_H / 2), arrowstyle="-|>",
                                     mutation_scale=8, lw=0.8, color="black", zorder=1))
        ax.text(0.08, (prev_y + y + NODE_H / 2) / 2, nd.edge, ha="left", va="center", fontsize=6.5,
                color="#333333", zorder=3)
        if nd.residual:
            x = nd.width / 2 + 0.15
            ax.add_patch(FancyArrowPatch((x, y + NODE_H / 2 + 0.2), (x, y - NODE_H / 2 - 0.2),
                                         connectionstyle="arc3,rad=-0.6", arrowstyle="-|>",
                                         mutation_scale=7, lw=0.7, color="#555555", zorder=1))
        prev_y = y - NODE_H / 2
    ax.add_patch(FancyArrowPatch((0, prev_y), (0, prev_y - 0.45), arrowstyle="-|>", mutation_scale=8,
                                 lw=0.8, color="black"))
    ax.text(0.08, prev_y - 0.3, "logits", ha="left", va="center", fontsize=7)
    header = f"{spec.name}  R={cfg.image_size}  d={list(cfg.d)}"
    if info:
        header += "\n" + "   ".join(f"{k}: {_fmt(v)}" for k, v in info.items())
    ax.text(0, 1.25, header, ha="center", va="center", fontsize=8.5)
    legend = [Patch(fc=kernel_colour(k), ec="black", lw=0.5, label=f"{k}x{k}") for k in (1, 3, 5, 7)]
    ax.legend(handles=legend, loc="upper left", fontsize=7, title="kernel", title_fontsize=7,
              frameon=False, bbox_to_anchor=(0.0, 1.0))
    ax.text(5.1, -0.05, "width ~ expand ratio", ha="right", va="center", fontsize=7, color="#555555")
    fig.tight_layout()
    return save_figure(fig, path_stem, dpi=110)
