"""Arm Ethos-U programs of a static subnet (ExecuTorch's Arm backend and the Vela compiler), with
Vela's compile-time estimates: SRAM and Flash (bytes), NPU cycles and inference time (ms).

The figures are **Vela's estimates** for the target's system configuration, not runs on silicon.
The int8 network is quantised with the Arm quantiser (:func:`moofa.deploy.programs.quantize` with
the quantiser as a parameter) and lowered with the Ethos-U partitioner
(:func:`moofa.deploy.programs._lower`); a program that is not exactly one delegate call is an
error naming the operators left on the CPU, since every partition runs Vela into the same folder
and only the last partition's figures would be read.

``out.tosa`` (the lowered network, kept in the work folder) can be compiled again by the ``vela``
command for another target in about a second (:func:`vela_compile_tosa`): the ExecuTorch passes
(tens of seconds for a full-size subnet) run once per subnet, whatever the number of targets.

Residual adds keep int8 shortcuts (:data:`LOWERING`, docs/ethosu.md#residual-adds-and-sram): the
lowering skips ExecuTorch's ``FuseConsecutiveRescalesPass``, which would otherwise keep a chained
residual add's int32 sum, 4 bytes an element, live through the whole next block whenever two
quantisation scales happen to match.

Vela's arena is sized (:data:`ARENA`, docs/ethosu.md#the-sram-arena): in ``Shared_Sram`` mode,
where the arena is the SRAM and the weights stay in Flash, moofa compiles with
``--arena-cache-size`` set to the subnet's Ethos-U activations peak
(:func:`moofa.efficiency.target.ethosu_activation_bytes`). Without a size Vela fills spare SRAM
with weight buffers that its own estimate does not speed up, so its SRAM figure would depend on
how much SRAM it was offered, not on what the subnet needs.

ExecuTorch's Arm backend, Vela and the TOSA tools are the optional ``ethos-u`` extra; they are
imported only when a program is built.
"""
from __future__ import annotations

import contextlib
import csv
import importlib.metadata
import importlib.util
import io
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from moofa.deploy.programs import Program, _lower, example_input, quantize, require_executorch
from moofa.errors import MoofaInputError

ETHOSU_TARGETS = ("ethos-u55-128", "ethos-u55-256", "ethos-u65-256", "ethos-u85-256")  # documented; Vela knows more
ETHOSU_HINT = "pip install -e '.[ethos-u]' (or make setup)"
VELA_CONFIG = "Arm/vela.ini"  # Vela's bundled system configurations (the ExecuTorch default)
XNNPACK = "xnnpack"
# The float input is quantised and the int8 logits dequantised on the CPU, once each, around the
# NPU's one delegate call: not a split.
BOUNDARY_OPS = ("quantized_decomposed.quantize_per_tensor.default",
                "quantized_decomposed.dequantize_per_tensor.default")
# How moofa lowers for Ethos-U; recorded with every compiled sample, so that a cache of samples
# lowered another way is never reused (moofa.latency.samples).
LOWERING = "int8-shortcuts"
# How moofa sizes Vela's arena: the subnet's Ethos-U activations peak, in the memory modes of
# SIZED_ARENA_MODES (the arena is the SRAM, the weights are in Flash). Recorded with every figure,
# so figures compiled with another arena are never reused.
ARENA = "activations-peak"
SIZED_ARENA_MODES = ("Shared_Sram",)


def is_ethosu(target: str) -> bool:
    """Whether ``target`` names an Ethos-U accelerator configuration (``ethos-u55-128`` ...)."""
    return str(target).lower().startswith("ethos-u")


def ethosu_available() -> bool:
    """Whether the optional ``ethos-u`` extra (Arm backend, Vela, TOSA tools) is importable."""
    try:
        return all(importlib.util.find_spec(m) is not None
                   for m in ("executorch", "ethosu.vela", "tosa_serializer"))
    except ModuleNotFoundError:
        return False


def require_ethosu(key: str = "deploy.targets") -> None:
    """MoofaInputError (one line, exit 2 on the command line) when the extra is missing."""
    require_executorch()
    if not ethosu_available():
        raise MoofaInputError(f"Ethos-U targets need the optional ethos-u extra (executorch's Arm backend, "
                              f"ethos-u-vela, tosa-tools): {ETHOSU_HINT}", key=key)


def known_accelerators() -> list[str]:
    """Every accelerator configuration the installed Vela accepts (``ethos-u55-32`` ... ``ethos-u85-2048``)."""
    from ethosu.vela.architecture_features import Accelerator

    return [a.value for a in Accelerator]


def default_settings(target: str) -> tuple[str, str]:
    """(system_config, memory_mode) that ExecuTorch uses for ``target`` when none is given."""
    from executorch.backends.arm.ethosu.compile_spec import EthosUCompileSpec

    return EthosUCompileSpec._default_system_config_and_memory_mode(str(target).lower(), None, None)  # noqa: SLF001


def check_target(target: str, key: str = "deploy.targets", file: Any = None) -> str:
    """``target`` itself when it is ``xnnpack`` or an accelerator the installed Vela knows;
    else MoofaInputError naming ``key`` and the value."""
    t = str(target)
    if t.lower() == XNNPACK:
        return XNNPACK
    if not is_ethosu(t):
        raise MoofaInputError(f"unknown deployment target {t!r} (xnnpack, or an Ethos-U configuration such as "
                              f"{', '.join(ETHOSU_TARGETS)})", file=file, key=key, value=t)
    require_ethosu(key)
    known = known_accelerators()
    if t.lower() not in known:
        raise MoofaInputError(f"Vela does not know the accelerator {t!r} (known: {', '.join(known)})",
                              file=file, key=key, value=t)
    return t.lower()


@dataclass
class VelaFigures:
    """Vela's compile-time estimates of one Ethos-U program (not measurements on silicon)."""

    target: str
    system_config: str
    memory_mode: str
    sram_bytes: int  # SRAM Vela allocates (activations, plus weights where the memory mode puts them there)
    flash_bytes: int  # off-chip Flash (weights, command stream)
    cycles: int  # total cycles of one inference (NPU and memory access)
    inference_ms: float  # cycles / clock, milliseconds
    macs: int  # multiply-accumulates Vela counts
    vela_version: str
    arena_bytes: int | None = None  # the --arena-cache-size Vela was given (bytes); None: Vela's default
    arena: str = ARENA  # how moofa sizes the arena (ARENA)
    layer_cycles: list[tuple[str, int]] = field(default_factory=list)  # (TOSA op name, cycles), network order

    def to_dict(self, layers: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not layers:
            d.pop("layer_cycles")
        return d


def _kib_to_bytes(value: str) -> int:
    return int(round(float(value) * 1024))


def read_vela_output(out_dir: str | Path, target: str, system_config: str, memory_mode: str,
                     arena_bytes: int | None = None) -> VelaFigures:
    """The figures of Vela's summary CSV in ``out_dir`` (``out_summary_<system_config>.csv``)
    and, when present, its per-layer CSV (``--verbose-performance``); ``arena_bytes`` is the
    arena size Vela was given."""
    out = Path(out_dir)
    rows = list(csv.DictReader((out / f"out_summary_{system_config}.csv").open()))
    if len(rows) != 1:
        raise RuntimeError(f"{out}: expected one summary row from Vela, got {len(rows)}")
    row = {k.strip(): v.strip() for k, v in rows[0].items()}
    layers: list[tuple[str, int]] = []
    per_layer = out / "out_per-layer.csv"
    if per_layer.is_file():
        for r in csv.DictReader(per_layer.open()):
            r = {k.strip(): (v or "").strip() for k, v in r.items()}
            layers.append((r.get("Name", r.get("TFLite_operator", "")), int(float(r["Op Cycles"]))))
    return VelaFigures(target, system_config, memory_mode, _kib_to_bytes(row["sram_memory_used"]),
                       _kib_to_bytes(row["off_chip_flash_memory_used"]), int(float(row["cycles_total"])),
                       1e3 * float(row["inference_time"]), int(float(row["nn_macs"])),
                       importlib.metadata.version("ethos-u-vela"), arena_bytes, ARENA, layers)


def arena_for(model: Any, subnet: Any, memory_mode: str) -> int | None:
    """The arena size (bytes) moofa gives Vela for ``subnet`` in ``memory_mode``: its Ethos-U
    activations peak where the arena is the SRAM (:data:`SIZED_ARENA_MODES`), else None (Vela's
    default: the memory mode's own size, e.g. the 384 KiB cache of ``Dedicated_Sram_384KB``)."""
    from moofa.efficiency.target import ethosu_activation_bytes

    return ethosu_activation_bytes(model, subnet) if memory_mode in SIZED_ARENA_MODES else None


def _arena_flags(arena: int | None) -> list[str]:
    return [] if arena is None else [f"--arena-cache-size={int(arena)}"]


def vela_compile_tosa(tosa_path: str | Path, target: str, out_dir: str | Path, system_config: str | None = None,
                      memory_mode: str | None = None, timeout: float = 600,
                      arena: int | None = None) -> VelaFigures:
    """Run the ``vela`` compiler on a lowered ``out.tosa`` for ``target`` (about a second for a
    full-size subnet), with an arena of ``arena`` bytes (None: Vela's default); writes Vela's
    output into ``out_dir`` and returns its figures."""
    require_ethosu()
    sc, mm = default_settings(target)
    sc, mm = system_config or sc, memory_mode or mm
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "ethosu.vela", f"--accelerator-config={target}", f"--config={VELA_CONFIG}",
           "--output-format=raw", f"--system-config={sc}", f"--memory-mode={mm}", "--verbose-performance",
           *_arena_flags(arena), f"--output-dir={out}", str(tosa_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"vela failed on {tosa_path} for {target}: {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return read_vela_output(out, target, sc, mm, arena)


@dataclass
class EthosUProgram:
    """An Ethos-U program (one delegate call) and Vela's figures for it."""

    program: Program
    figures: VelaFigures
    workdir: Path  # holds out.tosa and Vela's output/ folder

    @property
    def tosa_path(self) -> Path:
        return self.workdir / "out.tosa"


def _compile_spec(target: str, system_config: str | None, memory_mode: str | None, arena: int | None = None) -> Any:
    from executorch.backends.arm.ethosu import EthosUCompileSpec

    return EthosUCompileSpec(target=target, system_config=system_config, memory_mode=memory_mode,
                             extra_flags=["--verbose-performance", *_arena_flags(arena)])


def quantize_for(net: nn.Module, image_size: int, calibration: Iterable[torch.Tensor], target: str,
                 system_config: str | None = None, memory_mode: str | None = None
                 ) -> tuple[torch.fx.GraphModule, float]:
    """PT2E int8 model of ``net`` with the Arm (Ethos-U) quantiser: symmetric, per-channel weights."""
    require_ethosu()
    from executorch.backends.arm.quantizer import EthosUQuantizer, get_symmetric_quantization_config

    spec = _compile_spec(target, system_config, memory_mode)
    quantizer = EthosUQuantizer(spec).set_global(get_symmetric_quantization_config())
    return quantize(net, image_size, calibration, quantizer=quantizer)


class SplitProgramError(MoofaInputError):
    """The Ethos-U program is not one delegate call (operators left on the CPU)."""


@contextlib.contextmanager
def _int8_shortcuts() -> Any:
    """While open, ExecuTorch's Arm pass manager skips ``FuseConsecutiveRescalesPass``.

    That pass removes the int32 -> int8 -> int32 rescale pair between two chained residual adds
    when the two scales compose to 1. The first add's int32 sum then stays live, 4 bytes an
    element, through every layer of the next block: up to 32 % more SRAM for MOOFA_V3, decided by
    quantisation scales rather than the architecture. Without it the shortcut is held as int8
    (docs/ethosu.md#residual-adds-and-sram). ExecuTorch has no public switch for this pass, hence
    the skip list, restored on exit.
    """
    from executorch.backends.arm._passes import FuseConsecutiveRescalesPass
    from executorch.backends.arm._passes.arm_pass_manager import ArmPassManager

    configure = ArmPassManager.configure_skip_passes

    def skip_fusion(self: Any) -> tuple[type, ...]:
        self._skip_pass_types = (*configure(self), FuseConsecutiveRescalesPass)
        return self._skip_pass_types

    ArmPassManager.configure_skip_passes = skip_fusion
    try:
        yield
    finally:
        ArmPassManager.configure_skip_passes = configure


def ethosu_program(quantized: nn.Module, image_size: int, target: str, workdir: str | Path,
                   system_config: str | None = None, memory_mode: str | None = None,
                   arena: int | None = None) -> EthosUProgram:
    """Lower a :func:`quantize_for` result for ``target`` with an arena of ``arena`` bytes (None:
    Vela's default; :func:`arena_for` gives moofa's); keeps ``out.tosa`` and Vela's output in
    ``workdir``. SplitProgramError when the program is not one delegate call."""
    require_ethosu()
    from executorch.exir import EdgeCompileConfig

    work = Path(workdir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    spec = _compile_spec(target, system_config, memory_mode, arena)
    spec.dump_intermediate_artifacts_to(str(work))
    t0 = time.perf_counter()
    # Vela prints its whole report; the CSVs keep it
    with contextlib.redirect_stdout(io.StringIO()), _int8_shortcuts():
        prog = _lower(quantized, example_input(image_size), delegate=True,
                      partitioner=[_partitioner(spec)], compile_config=EdgeCompileConfig(_check_ir_validity=False))
    left_ops = {k: v for k, v in prog.undelegated_ops.items() if not (k in BOUNDARY_OPS and v <= 1)}
    if prog.delegate_calls != 1 or left_ops:
        left = ", ".join(f"{k} x{v}" for k, v in sorted(left_ops.items())) or "none"
        raise SplitProgramError(f"the {target} program is {prog.delegate_calls} delegate calls, not one; operators "
                                f"left on the CPU: {left} (Vela's figures would cover only the last partition)",
                                key="deploy.targets", value=target)
    sc, mm = default_settings(target)
    figures = read_vela_output(work / "output", target, system_config or sc, memory_mode or mm, arena)
    prog.seconds = time.perf_counter() - t0
    return EthosUProgram(prog, figures, work)


def _partitioner(spec: Any) -> Any:
    from executorch.backends.arm.ethosu import EthosUPartitioner

    return EthosUPartitioner(spec)


def versions() -> dict[str, str]:
    """Versions of the packages that produce Ethos-U figures."""
    out = {}
    for pkg in ("executorch", "ethos-u-vela", "tosa-tools", "torch"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "missing"
    return out


def reference_model_available() -> bool:
    """Whether the TOSA reference model (``tosa_reference_model``, from ``tosa-tools``) is importable."""
    try:
        return importlib.util.find_spec("tosa_reference_model") is not None
    except ModuleNotFoundError:
        return False


def input_quantization(quantized: torch.fx.GraphModule) -> tuple[float, int]:
    """(scale, zero point) with which the CPU quantises the float input before the NPU's call:
    the first ``quantize_per_tensor`` of the PT2E-converted graph."""
    for node in quantized.graph.nodes:
        name = str(node.target)
        if node.op == "call_function" and "quantize_per_tensor" in name and "dequantize" not in name:
            return float(node.args[1]), int(node.args[2])
    raise RuntimeError("no input quantisation found in the quantised graph")


@torch.no_grad()
def tosa_top1(tosa_path: str | Path, quantized: torch.fx.GraphModule, loader: Iterable) -> dict[str, Any]:
    """Top-1 of the lowered int8 TOSA network (``out.tosa``, the graph Vela compiles) executed by
    the TOSA reference model on every image of ``loader``: each image quantised with the program's
    input scale and zero point, the class the int8 logits rank first (dequantisation keeps the
    order). A bit-exact integer reference of what the NPU computes, not a run on the NPU."""
    import numpy as np
    import tosa_reference_model as ref

    graph = Path(tosa_path).read_bytes()
    scale, zp = input_quantization(quantized)
    hits = n = 0
    ok: list[bool] = []
    t0 = time.perf_counter()
    for images, labels in loader:
        for x, y in zip(images, labels):
            q = torch.clamp(torch.round(x / scale) + zp, -128, 127).to(torch.int8)[None].numpy()
            with contextlib.redirect_stdout(io.StringIO()):
                out, status = ref.run(graph, [np.ascontiguousarray(q)], verbosity="NONE",
                                      initialize_variable_tensor_from_numpy=True)
            if status != ref.GraphStatus.TOSA_VALID:
                raise RuntimeError(f"the TOSA reference model rejected {tosa_path}: {status}")
            ok.append(int(np.argmax(out[0].reshape(-1))) == int(y))
            hits += int(ok[-1])
            n += 1
    return {"tosa_int8_accuracy": hits / max(n, 1), "tosa_n_images": n,
            "tosa_seconds": time.perf_counter() - t0, "tosa_correct": ok}
