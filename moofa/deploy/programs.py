"""ExecuTorch programs of a static subnet, through the libraries' public APIs only.

* fp32: ``torch.export.export`` then ``executorch.exir.to_edge_transform_and_lower`` on the
  portable kernels (no delegate), so ExecuTorch's memory planner places *every* activation and
  its plan is the program's whole activation arena.
* int8: PT2E post-training quantisation (``torchao.quantization.pt2e``: ``prepare_pt2e`` with
  ExecuTorch's ``XNNPACKQuantizer``, symmetric, per-channel weights by default, calibration
  forwards, ``convert_pt2e``), exported again and lowered with the ``XnnpackPartitioner``. The
  delegate is required: the portable kernels have no out variants of the
  ``quantized_decomposed`` ops. XNNPACK owns its working memory, so the int8 plan counts only
  what ExecuTorch itself places (docs/deploy.md).

Both programs take one image (batch 1, 3 x R x R, float32) and return the logits. Graph input
and output are not planned (``alloc_graph_input/output=False``): the caller owns those buffers.
Networks are traced inside :func:`moofa.models.layers.single_op_pooling`, so that the whole int8
network is one XNNPACK delegate call (``Program.delegate_calls``, ``Program.undelegated_ops``).
"""
from __future__ import annotations

import importlib.util
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from moofa.errors import MoofaInputError
from moofa.models.layers import single_op_pooling

INSTALL_HINT = "pip install -e '.[deploy]' (or make setup)"
MAX_CALIBRATION_BATCH = 256  # images per calibration forward
# Bumped whenever the programs this module builds change, so that folders of older programs are
# rebuilt rather than reused (2: single-op pooling, batched calibration; 3: deploy.json stores the
# per-image outcomes that paired comparisons need).
RECIPE_VERSION = 3


def executorch_available() -> bool:
    """Whether the optional ``deploy`` extra (executorch) is importable."""
    return importlib.util.find_spec("executorch") is not None


def require_executorch() -> None:
    """MoofaInputError (one line, exit 2 on the command line) when the extra is missing."""
    if not executorch_available():
        raise MoofaInputError(f"int8 deployment needs the optional executorch package: {INSTALL_HINT}",
                              key="executorch")


@dataclass
class Program:
    """A serialised ExecuTorch program: its bytes, the planned memory of its activations
    (bytes, summed over the plan's buffers) and the seconds export + lowering took."""

    buffer: bytes
    planned_bytes: int
    seconds: float
    delegate_calls: int = 0  # XNNPACK delegate calls in the program's graph
    undelegated_ops: dict[str, int] = field(default_factory=dict)  # compute ops left to the portable kernels

    @property
    def size(self) -> int:
        """Program size in bytes (what goes to Flash)."""
        return len(self.buffer)


def _backend_config() -> Any:
    from executorch.exir import ExecutorchBackendConfig
    from executorch.exir.passes import MemoryPlanningPass

    return ExecutorchBackendConfig(memory_planning_pass=MemoryPlanningPass(
        alloc_graph_input=False, alloc_graph_output=False))


def _lower(module: nn.Module, example: torch.Tensor, delegate: bool, partitioner: Any = None,
           compile_config: Any = None) -> Program:
    """Export, lower and serialise ``module``. ``delegate``: with ``partitioner`` (a list of
    ExecuTorch partitioners; XNNPACK's when None), else on the portable kernels;
    ``compile_config``: an ``EdgeCompileConfig`` (ExecuTorch's default when None)."""
    from executorch.exir import to_edge_transform_and_lower
    from torch.export import export

    t0 = time.perf_counter()
    ep = export(module, (example,))
    if not delegate:
        partitioner = None
    elif partitioner is None:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        partitioner = [XnnpackPartitioner()]
    extra = {} if compile_config is None else {"compile_config": compile_config}
    edge = to_edge_transform_and_lower(ep, partitioner=partitioner, **extra)
    calls, left = _graph_census(edge.exported_program().graph)
    prog = edge.to_executorch(_backend_config())
    planned = sum(int(s) for s in prog.executorch_program.execution_plan[0].non_const_buffer_sizes)
    return Program(bytes(prog.buffer), planned, time.perf_counter() - t0, calls, left)


# layout conversions of constants and the delegate's tuple unpacking: not compute
_NOT_COMPUTE = ("executorch_call_delegate", "getitem", "_to_dim_order_copy")


def _graph_census(graph: Any) -> tuple[int, dict[str, int]]:
    """(delegate calls, {op name: count} of the compute ops outside any delegate) of an edge graph."""
    calls, left = 0, Counter[str]()
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if name == "executorch_call_delegate":
            calls += 1
        elif not any(tag in name for tag in _NOT_COMPUTE):
            left[name] += 1
    return calls, dict(left)


def example_input(image_size: int) -> torch.Tensor:
    """A batch-1 float32 input of side ``image_size`` (pixels)."""
    return torch.zeros(1, 3, int(image_size), int(image_size))


def fp32_program(net: nn.Module, image_size: int) -> Program:
    """The fp32 portable program of ``net`` (eval mode, CPU)."""
    require_executorch()
    with single_op_pooling():
        return _lower(net.cpu().eval(), example_input(image_size), delegate=False)


@torch.no_grad()
def quantize(net: nn.Module, image_size: int, calibration: Iterable[torch.Tensor],
             per_channel: bool = True, quantizer: Any = None) -> tuple[torch.fx.GraphModule, float]:
    """PT2E int8 model of ``net`` calibrated on ``calibration`` (image batches, any size); returns
    the converted module and the seconds it took. The graph is traced with a dynamic batch size
    so that calibration runs whole batches (observers reduce over the batch, as over one image
    after another). ``quantizer``: a PT2E quantizer (XNNPACK's symmetric one when None; then
    ``per_channel`` picks its weight granularity)."""
    require_executorch()
    from torch.export import Dim, export
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    t0 = time.perf_counter()
    net = net.cpu().eval()
    guards: dict[str, Any] = {}
    if quantizer is None:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel))
    else:  # the Arm backend's passes cannot lower the guard submodule (call_module _guards_fn)
        guards = {"check_guards": False}
    batch = Dim("batch", min=1, max=MAX_CALIBRATION_BATCH)
    with single_op_pooling():
        example = example_input(image_size).expand(2, -1, -1, -1)  # batch 1 would specialise
        graph = export(net, (example,), dynamic_shapes=({0: batch},)).module(**guards)
    prepared = prepare_pt2e(graph, quantizer)
    for images in calibration:
        for chunk in images.cpu().split(MAX_CALIBRATION_BATCH):
            prepared(chunk)
    return convert_pt2e(prepared), time.perf_counter() - t0


def int8_program(quantized: nn.Module, image_size: int) -> Program:
    """The XNNPACK-delegated program of a :func:`quantize` result."""
    require_executorch()
    return _lower(quantized, example_input(image_size), delegate=True)


class ProgramRunner:
    """A program loaded in the ExecuTorch runtime (``executorch.runtime``); call with one image
    batch of size 1 to get its logits."""

    def __init__(self, buffer: bytes) -> None:
        require_executorch()
        from executorch.runtime import Runtime

        # the method points into the program, which points into the buffer: keep all three alive
        self.buffer = buffer
        self.program = Runtime.get().load_program(buffer)
        self.method = self.program.load_method("forward")

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.method.execute([image.contiguous().float()])[0]
