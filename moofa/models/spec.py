"""Models as data: the stage tables of the five supernets and the one subnet-config type.

A supernet is fully described by a :class:`ModelSpec`: the choice lists of ``model_configs.yaml``
plus an :class:`ArchTable` (widths, strides, activations and squeeze-excite per stage). OFA, CompOFA
and MOOFA_V1/V2/V3 are entries of :data:`MODEL_CLASSES`, not separate classes (docs/design.md#architecture).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from moofa.io import read_utf8
from moofa.resources import resource_path

MODELS: tuple[str, ...] = ("OFA", "CompOFA", "MOOFA_V1", "MOOFA_V2", "MOOFA_V3")
N_STAGES = 5
ACTIVATIONS = ("relu", "h_swish")


def make_divisible(v: float, divisor: int = 8, min_val: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor``, never below ``min_val`` (default
    ``divisor``) and never more than 10 % below ``v`` (the TF MobileNet rule, docs/design.md#architecture)."""
    if min_val is None:
        min_val = divisor
    new_v = max(min_val, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return int(new_v)


def mid_channels(in_channels: int, expand_ratio: float) -> int:
    """Middle (expanded) width of an MBConv block: make_divisible(round(C_in * e), 8) (docs/design.md#flops)."""
    return make_divisible(round(in_channels * expand_ratio), 8)


def se_channels(mid: int) -> int:
    """Hidden width of the squeeze-excite module for ``mid`` channels (reduction 4, docs/design.md#architecture)."""
    return make_divisible(mid // 4, 8)


def norm_expand(e: float) -> int | float:
    """Expand ratios as the reference writes them: ints where integral (3), floats otherwise (1.5)."""
    if type(e) is int:  # the common case, fast (the search builds ~10^5 configs per budget)
        return e
    e = float(e)
    return int(e) if e.is_integer() else e


@dataclass(frozen=True)
class StageSpec:
    """One stage of the network: output width (channels), stride of its first block, activation
    and whether its blocks use squeeze-excite."""

    width: int
    stride: int
    act: str
    se: bool


@dataclass(frozen=True)
class ArchTable:
    """The static skeleton: first conv, the fixed stem block S, five elastic stages and the head."""

    first_conv: int
    stem: StageSpec  # block S: MBConv k=3, e=1, no inverted bottleneck
    stages: tuple[StageSpec, ...]
    final_expand: int
    feature_mix: int
    first_act: str = "h_swish"
    head_act: str = "h_swish"

    @property
    def widths(self) -> list[int]:
        """The 9 widths: first_conv, block S, stages 1-5, final_expand, feature_mix."""
        return [self.first_conv, self.stem.width, *(s.width for s in self.stages),
                self.final_expand, self.feature_mix]

    def with_widths(self, widths: Sequence[int]) -> "ArchTable":
        if len(widths) != 9 or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths must be 9 positive ints, got {list(widths)!r}")
        w = [int(x) for x in widths]
        stages = tuple(replace(s, width=wi) for s, wi in zip(self.stages, w[2:7]))
        return replace(self, first_conv=w[0], stem=replace(self.stem, width=w[1]), stages=stages,
                       final_expand=w[7], feature_mix=w[8])


def _table(widths: Sequence[int], strides: Sequence[int], acts: Sequence[str],
           ses: Sequence[bool]) -> ArchTable:
    """Build a table from per-part lists of length 6 (block S + 5 stages), as the reference does."""
    parts = [StageSpec(w, s, a, se) for w, s, a, se in zip(widths[1:7], strides, acts, ses)]
    return ArchTable(first_conv=widths[0], stem=parts[0], stages=tuple(parts[1:]),
                     final_expand=widths[7], feature_mix=widths[8])


def moofa_widths(ref_side: float = 56.0, ref_expand: float = 4.0, start: Sequence[int] = (3, 8, 24),
                 n_iter: int = 6, kernel: int = 7) -> list[int]:
    """MOOFA's "memory-constant" width rule (docs/design.md#architecture).

    Each new stage gets the width whose 1x1 expansion memory (input + weights + output, in
    elements) at half the previous side equals the previous stage's peak layer memory, measured at
    the reference resolution 224 (stage-1 side 56) with expand ratio 4. Returns the 9 widths
    ``[3, 8, 24, 96, 288, 360, 384, 392, 392]``.
    """
    widths = [int(w) for w in start]
    side, e, c = float(ref_side), float(ref_expand), float(start[-1])
    k2 = kernel * kernel
    for _ in range(n_iter):
        s2 = side * side
        m_dw = e * c * s2 + e * c * k2 + e * c * s2
        m_exp = c * s2 + e * c * c + e * c * s2
        a = s2 / 4 + e * s2 / 4

        def root(m: float) -> float:
            return (-a + math.sqrt(a * a + 4 * e * m)) / (2 * e)

        if m_dw > m_exp:
            c1 = 2 * c * (s2 + k2) / (s2 / 2 + k2)
            c_new = min(c1, root(m_dw))
        else:
            c_new = root(m_exp)
        side /= 2
        c = make_divisible(c_new, 8)
        widths.append(c)
    return widths


OFA_TABLE = _table([16, 16, 24, 40, 80, 112, 160, 960, 1280], [1, 2, 2, 2, 1, 2],
                   ["relu", "relu", "relu", "h_swish", "h_swish", "h_swish"],
                   [False, False, True, False, True, True])
MOOFA_TABLE = _table(moofa_widths(), [1, 2, 2, 2, 2, 2],
                     ["relu", "h_swish", "h_swish", "h_swish", "relu", "h_swish"],
                     [False, False, True, True, False, True])


@dataclass(frozen=True)
class ModelClass:
    """What a ``model_class`` of model_configs.yaml stands for."""

    table: ArchTable
    width_rule: str  # "make_divisible" (OFA) or "truncate" (MOOFA; head widths not multiplied)
    compound: bool = False  # CompOFA: depth and expand coupled (docs/design.md#architecture)


MODEL_CLASSES: dict[str, ModelClass] = {
    "OFAMobileNetV3": ModelClass(OFA_TABLE, "make_divisible"),
    "CompOFAMobileNetV3": ModelClass(OFA_TABLE, "make_divisible", compound=True),
    "OFAMobileNetV3CtV1": ModelClass(MOOFA_TABLE, "truncate"),
    "OFAMobileNetV3CtV2": ModelClass(MOOFA_TABLE, "truncate"),
    "OFAMobileNetV3CtV3": ModelClass(MOOFA_TABLE, "truncate"),
}

# CompOFA's coupling: depth -> expand ratio of all 4 blocks of the stage (docs/design.md#architecture).
COMPOUND_EXPAND = {2: 3, 3: 4, 4: 6}


@dataclass(frozen=True)
class ModelSpec:
    """A supernet: its name, choice lists (sorted ascending) and architecture table."""

    name: str
    model_class: str
    ks_list: tuple[int, ...]
    expand_list: tuple[int | float, ...]
    depth_list: tuple[int, ...]
    image_sizes: tuple[int, ...]
    table: ArchTable
    compound: bool = False
    width_mult: float = 1.0
    # (image_size, ks, expand, depth) lists exactly as written in model_configs.yaml: they fix the
    # positions of the one-hot encoding (docs/design.md#encoding); None = the sorted lists
    listed: tuple[tuple, tuple, tuple, tuple] | None = None

    @property
    def layout_lists(self) -> dict[str, tuple]:
        """The four choice lists in encoding order (as written in model_configs.yaml)."""
        lists = self.listed or (self.image_sizes, self.ks_list, self.expand_list, self.depth_list)
        return dict(zip(("image_sizes", "ks_list", "expand_list", "depth_list"), lists))

    @property
    def blocks_per_stage(self) -> int:
        return max(self.depth_list)

    @property
    def n_blocks(self) -> int:
        return N_STAGES * self.blocks_per_stage

    @property
    def stages(self) -> tuple[StageSpec, ...]:
        return self.table.stages

    def block_io(self, i: int) -> tuple[int, int, int]:
        """(input channels, output channels, stride) of elastic block ``i`` (0-based)."""
        s, j = divmod(i, self.blocks_per_stage)
        out = self.table.stages[s].width
        if j > 0:
            return out, out, 1
        cin = self.table.stem.width if s == 0 else self.table.stages[s - 1].width
        return cin, out, self.table.stages[s].stride

    def compound_expand(self, depth: int) -> int | float:
        """CompOFA's expand ratio for a stage of depth ``depth`` (clipped to the expand list)."""
        return norm_expand(max(COMPOUND_EXPAND[depth], min(self.expand_list)))

    def max_config(self, image_size: int | None = None) -> "SubnetConfig":
        return SubnetConfig.uniform(self, max(self.ks_list), max(self.expand_list),
                                    max(self.depth_list), image_size or max(self.image_sizes))

    def min_config(self, image_size: int | None = None) -> "SubnetConfig":
        return SubnetConfig.uniform(self, min(self.ks_list), min(self.expand_list),
                                    min(self.depth_list), image_size or min(self.image_sizes))


def _as_list(value: Any, what: str, source: str) -> list:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{source}: {what} must be a non-empty list, got {value!r}")
    return list(value)


def model_spec_from_entry(name: str, entry: Mapping[str, Any], source: str = "model_configs") -> ModelSpec:
    """Validate one entry of model_configs.yaml and turn it into a :class:`ModelSpec`."""
    where = f"{source}: {name}"
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {entry!r}")
    known = {"model_class", "expand_list", "ks_list", "depth_list", "width_mult_list", "image_size",
             "widths"}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    for key in ("model_class", "expand_list", "ks_list", "depth_list", "image_size"):
        if key not in entry:
            raise ValueError(f"{where}: missing key {key!r}")
    cls_name = entry["model_class"]
    if cls_name not in MODEL_CLASSES:
        raise ValueError(f"{where}.model_class: unknown value {cls_name!r} "
                         f"(known: {', '.join(MODEL_CLASSES)})")
    mc = MODEL_CLASSES[cls_name]
    written_ks = [int(k) for k in _as_list(entry["ks_list"], "ks_list", where)]
    ks = sorted(written_ks)
    if any(k < 1 or k % 2 == 0 for k in ks):
        raise ValueError(f"{where}.ks_list: kernel sizes must be odd and positive, got {ks}")
    written_ex = [norm_expand(e) for e in _as_list(entry["expand_list"], "expand_list", where)]
    ex = sorted(written_ex)
    if any(e < 1 for e in ex):
        raise ValueError(f"{where}.expand_list: expand ratios must be >= 1, got {ex}")
    written_depth = [int(d) for d in _as_list(entry["depth_list"], "depth_list", where)]
    depth = sorted(written_depth)
    if any(d < 1 for d in depth):
        raise ValueError(f"{where}.depth_list: depths must be >= 1, got {depth}")
    sizes = [int(r) for r in _as_list(entry["image_size"], "image_size", where)]
    if any(r < 8 for r in sizes):
        raise ValueError(f"{where}.image_size: resolutions must be >= 8, got {sizes}")
    wm = entry.get("width_mult_list", 1.0)
    if isinstance(wm, (list, tuple)):
        if len(wm) != 1:
            raise ValueError(f"{where}.width_mult_list: one value supported, got {wm!r}")
        wm = wm[0]
    wm = float(wm)
    table = mc.table
    if "widths" in entry:
        try:
            table = table.with_widths(entry["widths"])
        except (ValueError, TypeError) as err:
            raise ValueError(f"{where}.widths: {err}") from None
    elif wm != 1.0:
        w = table.widths
        if mc.width_rule == "make_divisible":
            w = [make_divisible(x * wm, 8) for x in w]
        else:
            w = [int(x * wm) for x in w[:7]] + w[7:]
        try:
            table = table.with_widths(w)
        except ValueError as err:
            raise ValueError(f"{where}.width_mult_list: {wm} gives invalid widths ({err})") from None
    return ModelSpec(name=name, model_class=cls_name, ks_list=tuple(ks), expand_list=tuple(ex),
                     depth_list=tuple(depth), image_sizes=tuple(sizes), table=table,
                     compound=mc.compound, width_mult=wm,
                     listed=(tuple(sizes), tuple(written_ks), tuple(written_ex), tuple(written_depth)))


# the packaged model_configs.yaml (the repository's top-level file is its documented copy)
DEFAULT_MODEL_CONFIGS = resource_path("model_configs.yaml")

def load_model_configs(path: str | Path) -> dict[str, ModelSpec]:
    """Read a model_configs.yaml; raises ValueError naming the file and key on bad content."""
    path = Path(path)
    try:
        text = read_utf8(path)
    except OSError as err:
        raise ValueError(f"{path}: cannot read model config file ({err.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: YAML syntax error: {str(err).splitlines()[0]}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping of model names, got {type(data).__name__}")
    return {str(n): model_spec_from_entry(str(n), e, str(path)) for n, e in data.items()}


@functools.lru_cache(maxsize=1)
def _shipped_specs() -> dict[str, ModelSpec]:
    """The packaged model_configs.yaml, read once per process."""
    return load_model_configs(DEFAULT_MODEL_CONFIGS)


def get_model_spec(model: "str | ModelSpec", model_configs: str | Path | None = None) -> ModelSpec:
    """Resolve a model name (or pass a spec through). Without ``model_configs`` the packaged
    model_configs.yaml (the one source of the five models) is read."""
    if isinstance(model, ModelSpec):
        return model
    src = model_configs if model_configs is not None else DEFAULT_MODEL_CONFIGS
    specs = _shipped_specs() if model_configs is None else load_model_configs(model_configs)
    if model not in specs:
        raise ValueError(f"{src}: unknown model {model!r} (known: {', '.join(specs)})")
    return specs[model]


class ChoiceError(ValueError):
    """A subnet-config value that does not fit a model: ``key`` (e.g. ``e[3]``) and ``reason``."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


@dataclass(frozen=True)
class SubnetConfig:
    """One subnet of a supernet: kernel size and expand ratio per block (20), depth per stage (5)
    and input resolution (pixels). Used by every part of the package."""

    ks: tuple[int, ...]
    e: tuple[int | float, ...]
    d: tuple[int, ...]
    image_size: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "ks", tuple(map(int, self.ks)))
        object.__setattr__(self, "e", tuple(map(norm_expand, self.e)))
        object.__setattr__(self, "d", tuple(map(int, self.d)))
        object.__setattr__(self, "image_size", int(self.image_size))

    @classmethod
    def from_dict(cls, cfg: "Mapping[str, Any] | SubnetConfig", image_size: int | None = None) -> "SubnetConfig":
        """From a mapping with ks, e, d and image_size (extra keys such as CompOFA's ``wid`` are
        ignored). Raises ValueError naming a missing or malformed key."""
        if isinstance(cfg, SubnetConfig):
            return cfg
        if not isinstance(cfg, Mapping):
            raise ValueError(f"subnet config must be a mapping, got {type(cfg).__name__}")
        for key in ("ks", "e", "d"):
            if key not in cfg:
                raise ValueError(f"subnet config: missing key {key!r}")
            if not isinstance(cfg[key], (list, tuple)):
                raise ValueError(f"subnet config: {key} must be a list, got {cfg[key]!r}")
        r = cfg.get("image_size", image_size)
        if r is None:
            raise ValueError("subnet config: missing key 'image_size'")
        try:
            return cls(tuple(cfg["ks"]), tuple(cfg["e"]), tuple(cfg["d"]), int(r))
        except (TypeError, ValueError) as err:
            raise ValueError(f"subnet config: non-numeric value ({err})") from None

    @classmethod
    def uniform(cls, spec: ModelSpec, ks: int, e: float, d: int, image_size: int) -> "SubnetConfig":
        return cls((ks,) * spec.n_blocks, (e,) * spec.n_blocks, (d,) * N_STAGES, image_size)

    def to_dict(self) -> dict[str, Any]:
        return {"ks": list(self.ks), "e": list(self.e), "d": list(self.d), "image_size": self.image_size}

    def validate(self, spec: ModelSpec, check_image_size: bool = False) -> "SubnetConfig":
        """Raise :class:`ChoiceError` naming the argument and value if this config does not fit ``spec``."""
        for key, values, n, choices in (("ks", self.ks, spec.n_blocks, spec.ks_list),
                                        ("e", self.e, spec.n_blocks, spec.expand_list),
                                        ("d", self.d, N_STAGES, spec.depth_list)):
            if len(values) != n:
                raise ChoiceError(key, f"expected {n} values for {spec.name}, got {len(values)}")
            for i, v in enumerate(values):
                if v not in choices:
                    raise ChoiceError(f"{key}[{i}]", f"value {v!r} is not one of {spec.name}'s "
                                      f"choices {list(choices)}")
        if self.image_size < 8:
            raise ChoiceError("image_size", f"value {self.image_size} is too small")
        if check_image_size and self.image_size not in spec.image_sizes:
            raise ChoiceError("image_size", f"value {self.image_size} is not one of {spec.name}'s "
                              f"choices {list(spec.image_sizes)}")
        return self

    def active_blocks(self, spec: ModelSpec) -> list[int]:
        """Indices (0..19) of the blocks that run under this config's depths."""
        b = spec.blocks_per_stage
        return [s * b + j for s in range(N_STAGES) for j in range(min(self.d[s], b))]

    def canonical(self, spec: ModelSpec) -> "SubnetConfig":
        """The same network with inactive blocks' (k, e) zeroed, for deduplication."""
        active = set(self.active_blocks(spec))
        ks = tuple(k if i in active else 0 for i, k in enumerate(self.ks))
        e = tuple(x if i in active else 0 for i, x in enumerate(self.e))
        return SubnetConfig(ks, e, self.d, self.image_size)
