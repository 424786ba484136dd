"""Distributed backend layer: one process, Horovod or torch.distributed, picked from the launcher.

``init_backend(device)`` looks at the environment the script was launched with:

* ``horovodrun`` (``HOROVOD_RANK``/``HOROVOD_SIZE`` or ``OMPI_COMM_WORLD_*`` set) -> Horovod
  (``horovod.torch``, imported only then);
* ``torchrun`` (``RANK`` and ``WORLD_SIZE`` set) -> torch.distributed (gloo on CPU, nccl on GPU);
* anything else -> a single process.

All three offer the same methods, so training code never branches on the launcher. Gradient
semantics follow Horovod's ``DistributedOptimizer`` (docs/design.md#protocols step 6): the
``backward_passes_per_step`` micro-step gradients are summed locally (not divided by their number),
then averaged across ranks once per ``step()``; a parameter without a gradient on a rank counts as
a zero gradient there (and is then stepped, as under Horovod).
"""
from __future__ import annotations

import os
import pickle
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from moofa.errors import MoofaInputError
from moofa.preempt import stop_signal

__all__ = [
    "Backend", "SingleBackend", "TorchBackend", "HorovodBackend", "GradientAveragingOptimizer",
    "Metric", "detect_launcher", "resolve_device", "to_device", "init_backend",
]

HOROVOD_ENV = ("HOROVOD_RANK", "HOROVOD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")
TORCHRUN_ENV = ("RANK", "WORLD_SIZE")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
BUCKET_BYTES = 32 * 1024 * 1024  # size of one flattened all-reduce/broadcast bucket, bytes


def detect_launcher(environ: Mapping[str, str] | None = None) -> str:
    """``"horovod"``, ``"torch"`` or ``"single"``: how this process was launched."""
    env = os.environ if environ is None else environ
    if any(k in env for k in HOROVOD_ENV):
        return "horovod"
    if all(k in env for k in TORCHRUN_ENV):
        return "torch"
    return "single"


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """The compute device: CUDA pinned to ``local_rank`` (modulo the GPU count) when asked for or
    available under ``"auto"``, else the CPU. ``"cuda"`` without a GPU is bad input."""
    name = str(device)
    if name not in DEVICE_CHOICES:
        raise MoofaInputError("unknown device; expected one of auto, cpu, cuda", key="args.device",
                              value=name)
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise MoofaInputError("CUDA was requested but no CUDA device is available",
                              key="args.device", value=name)
    index = local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def to_device(images: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A batch of images ``(N, C, H, W)`` on ``device``, values unchanged: non-blocking (from
    pinned memory) on CUDA; on the CPU in the channels-last layout, in which oneDNN's depthwise
    convolutions train and infer the supernets 1.2 to 2.6 times faster (benchmarks/README.md,
    "channels-last")."""
    device = torch.device(device)
    if device.type == "cpu":
        return images.to(device).contiguous(memory_format=torch.channels_last)
    return images.to(device, non_blocking=True)


def _int_env(environ: Mapping[str, str], *names: str, default: int = 0) -> int:
    for name in names:
        if name in environ:
            return int(environ[name])
    return default


def _state_tensors(model_or_state_dict: nn.Module | Mapping[str, Any]) -> list[torch.Tensor]:
    """The tensors of a module's state dict (parameters and buffers) or of a state dict, in key
    order. They share storage with the module, so writing into them updates it."""
    sd = (model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module)
          else model_or_state_dict)
    if not isinstance(sd, Mapping):
        raise TypeError(f"expected an nn.Module or a state dict, got {type(sd).__name__}")
    return [t for t in sd.values() if isinstance(t, torch.Tensor)]


def _buckets(tensors: list[torch.Tensor], max_bytes: int = BUCKET_BYTES) -> list[list[torch.Tensor]]:
    """Split tensors into groups of one dtype and device, each up to ``max_bytes`` (bytes), keeping
    their order, so every rank forms the same buckets."""
    groups: dict[tuple[torch.dtype, torch.device], list[list[torch.Tensor]]] = {}
    sizes: dict[tuple[torch.dtype, torch.device], int] = {}
    for t in tensors:
        key = (t.dtype, t.device)
        nbytes = t.numel() * t.element_size()
        if key not in groups or (sizes[key] + nbytes > max_bytes and groups[key][-1]):
            groups.setdefault(key, []).append([])
            sizes[key] = 0
        groups[key][-1].append(t)
        sizes[key] += nbytes
    return [bucket for key in groups for bucket in groups[key]]


def _flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def _unflatten_into(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t))
            offset += n


def _to_cpu(obj: Any) -> Any:
    """A copy of a nested structure of containers and tensors with every tensor on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class Backend(ABC):
    """Rank, size and collectives of one process. Every collective must be called by all ranks
    in the same order."""

    name: str = "abstract"

    def __init__(self, rank: int, size: int, local_rank: int, device: torch.device,
                 comm_device: torch.device) -> None:
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self.device = device            # where the model and data live
        self.comm_device = comm_device  # where tensors go for a collective

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files and logs."""
        return self.rank == 0

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(rank={self.rank}, size={self.size}, "
                f"local_rank={self.local_rank}, device={self.device})")

    # -- primitives each implementation supplies (in place, on tensors on comm_device) --
    @abstractmethod
    def _sum_(self, tensor: torch.Tensor) -> None:
        """All-reduce ``tensor`` in place with a sum."""

    @abstractmethod
    def _broadcast_(self, tensor: torch.Tensor, root: int) -> None:
        """Overwrite ``tensor`` in place with root's."""

    @abstractmethod
    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        """Root's picklable ``obj`` on every rank."""

    @abstractmethod
    def allgather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""

    @abstractmethod
    def barrier(self) -> None:
        """Wait until every rank got here."""

    @abstractmethod
    def shutdown(self) -> None:
        """Release the communication library."""

    @abstractmethod
    def distributed_optimizer(self, optimizer: torch.optim.Optimizer,
                              named_parameters: Iterable[tuple[str, nn.Parameter]] | None = None,
                              backward_passes_per_step: int = 1,
                              fp16_compression: bool = False) -> torch.optim.Optimizer:
        """``optimizer`` whose ``step()`` first averages the gradients across ranks (Horovod's
        semantics: see the module docstring). Use the returned object from then on."""

    # -- shared on top of the primitives --
    def allreduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks in place (counts, totals); returns it."""
        if tensor.device == self.comm_device:
            self._sum_(tensor)
        else:
            staged = tensor.detach().to(self.comm_device)
            self._sum_(staged)
            with torch.no_grad():
                tensor.copy_(staged)
        return tensor

    def allreduce(self, tensor: torch.Tensor, average: bool = True) -> torch.Tensor:
        """A new tensor, on ``tensor``'s device, holding the sum or the mean over ranks."""
        if average and not (tensor.is_floating_point() or tensor.is_complex()):
            raise TypeError(f"cannot average a {tensor.dtype} tensor; use allreduce_sum_ for counts")
        out = tensor.detach().to(self.comm_device, copy=True)
        self._sum_(out)
        if average and self.size > 1:
            out.div_(self.size)
        return out.to(tensor.device)

    def broadcast_parameters(self, model_or_state_dict: nn.Module | Mapping[str, Any],
                             root: int = 0) -> None:
        """Overwrite the parameters and buffers of a module (or the tensors of a state dict) in
        place with root's. All ranks must hold the same keys and shapes."""
        if self.size == 1:
            return
        for bucket in _buckets(_state_tensors(model_or_state_dict)):
            flat = _flatten(bucket).to(self.comm_device)
            self._broadcast_(flat, root)
            _unflatten_into(flat, bucket)

    def broadcast_optimizer_state(self, optimizer: torch.optim.Optimizer, root: int = 0) -> None:
        """Load root's optimizer state (hyper-parameters and buffers such as momentum) on every
        rank. Unlike Horovod's helper, a fresh optimizer is never stepped to create its state."""
        if self.size == 1:
            return
        state = self.broadcast_object(_to_cpu(optimizer.state_dict()) if self.rank == root else None,
                                      root)
        if self.rank != root:
            optimizer.load_state_dict(state)  # moves the state tensors to the parameters' device


class SingleBackend(Backend):
    """One process: every collective is the identity."""

    name = "single"

    def __init__(self, device: str | torch.device = "auto") -> None:
        dev = resolve_device(device, 0)
        super().__init__(0, 1, 0, dev, dev)

    def _sum_(self, tensor: torch.Tensor) -> None:
        pass

    def _broadcast_(self, tensor: torch.Tensor, root: int) -> None:
        pass

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        return obj

    def allgather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def barrier(self) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def distributed_optimizer(self, optimizer, named_parameters=None, backward_passes_per_step=1,
                              fp16_compression=False):
        """The same wrapper as under torchrun (no communication with one rank): parameters outside
        the sampled subnets get zero gradients, so weight decay and momentum apply to them exactly
        as under Horovod, and one process trains like N."""
        return GradientAveragingOptimizer(optimizer, self, named_parameters, backward_passes_per_step,
                                          fp16_compression=False)


class TorchBackend(Backend):
    """torch.distributed as launched by torchrun: gloo on CPU, nccl on CUDA."""

    name = "torch"

    def __init__(self, device: str | torch.device = "auto",
                 environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        local_rank = _int_env(env, "LOCAL_RANK")
        dev = resolve_device(device, local_rank)
        self._dist = dist
        if not dist.is_initialized():
            if dev.type == "cuda":
                dist.init_process_group("nccl", init_method="env://", device_id=dev)
            else:
                dist.init_process_group("gloo", init_method="env://")
        super().__init__(dist.get_rank(), dist.get_world_size(), local_rank, dev,
                         dev if dist.get_backend() == "nccl" else torch.device("cpu"))

    def _sum_(self, tensor: torch.Tensor) -> None:
        self._dist.all_reduce(tensor, op=self._dist.ReduceOp.SUM)

    def _broadcast_(self, tensor: torch.Tensor, root: int) -> None:
        self._dist.broadcast(tensor, src=root)

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        box = [obj if self.rank == root else None]
        self._dist.broadcast_object_list(box, src=root)
        return box[0]

    def allgather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.size
        self._dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        self._dist.barrier()

    def shutdown(self) -> None:
        """Wait for every rank, then tear the group down (a rank leaving while another still
        talks to it can abort gloo at exit). A rank that is stopping (moofa.preempt) does not
        wait: the others may be stopping inside another collective."""
        if self._dist.is_initialized():
            if stop_signal() is None:
                self._dist.barrier()
            self._dist.destroy_process_group()

    def distributed_optimizer(self, optimizer, named_parameters=None, backward_passes_per_step=1,
                              fp16_compression=False):
        return GradientAveragingOptimizer(optimizer, self, named_parameters,
                                          backward_passes_per_step, fp16_compression)


class HorovodBackend(Backend):
    """Horovod as launched by horovodrun (``horovod.torch`` is imported only here)."""

    name = "horovod"

    def __init__(self, device: str | torch.device = "auto") -> None:
        try:
            import horovod.torch as hvd
        except ImportError as err:
            raise MoofaInputError(
                f"launched by horovodrun but horovod.torch cannot be imported ({err}); "
                "build it with `make horovod` (scripts/install_horovod.sh)") from None
        hvd.init()
        self._hvd = hvd
        self._calls = 0
        dev = resolve_device(device, hvd.local_rank())
        gpu_ops = dev.type == "cuda" and hvd.nccl_built()
        super().__init__(hvd.rank(), hvd.size(), hvd.local_rank(), dev,
                         dev if gpu_ops else torch.device("cpu"))

    def _sum_(self, tensor: torch.Tensor) -> None:
        self._hvd.allreduce_(tensor, op=self._hvd.Sum)

    def _broadcast_(self, tensor: torch.Tensor, root: int) -> None:
        self._hvd.broadcast_(tensor, root_rank=root)

    def _name(self, op: str) -> str:
        # Horovod matches collectives across ranks by name; its default name for object
        # collectives is the object's type, which differs between root and the others.
        self._calls += 1
        return f"moofa.{op}.{self._calls}"

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        return self._hvd.broadcast_object(obj, root_rank=root, name=self._name("broadcast_object"))

    def allgather_object(self, obj: Any) -> list[Any]:
        return list(self._hvd.allgather_object(obj, name=self._name("allgather_object")))

    def barrier(self) -> None:
        self._hvd.barrier()

    def shutdown(self) -> None:
        self._hvd.shutdown()

    def distributed_optimizer(self, optimizer, named_parameters=None, backward_passes_per_step=1,
                              fp16_compression=False):
        _check_passes(backward_passes_per_step)
        hvd = self._hvd
        return hvd.DistributedOptimizer(
            optimizer,
            named_parameters=list(named_parameters) if named_parameters is not None else None,
            compression=hvd.Compression.fp16 if fp16_compression else hvd.Compression.none,
            backward_passes_per_step=backward_passes_per_step, op=hvd.Average)


def _check_passes(backward_passes_per_step: int) -> None:
    if not isinstance(backward_passes_per_step, int) or backward_passes_per_step < 1:
        raise ValueError(f"backward_passes_per_step must be an int >= 1, got "
                         f"{backward_passes_per_step!r}")


class GradientAveragingOptimizer(torch.optim.Optimizer):
    """Wraps an optimizer; ``step()`` averages every gradient across ranks, then steps.

    Horovod's semantics: gradients accumulated over the ``backward_passes_per_step`` micro-steps
    are summed locally and averaged across ranks once (never divided by the micro-step count);
    parameters whose ``grad`` is None are given zero gradients, so all ranks issue the same
    collectives and step the same parameters. Gradients travel flattened in buckets of one dtype
    (fp16 on the wire with ``fp16_compression``). ``param_groups``, ``state``, ``state_dict()`` and
    ``load_state_dict()`` are the wrapped optimizer's, so learning-rate code and checkpoints work
    on either object. Call ``synchronize()`` before ``step()`` to clip averaged gradients.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, backend: Backend,
                 named_parameters: Iterable[tuple[str, nn.Parameter]] | None = None,
                 backward_passes_per_step: int = 1, fp16_compression: bool = False) -> None:
        # Optimizer.__init__ is not called on purpose: groups and state stay the wrapped one's.
        _check_passes(backward_passes_per_step)
        self.__dict__["optimizer"] = optimizer
        self._backend = backend
        self.backward_passes_per_step = backward_passes_per_step
        self.fp16_compression = fp16_compression
        self._synchronized = False
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if named_parameters is not None:
            named = list(named_parameters)
            names = [n for n, _ in named]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"named_parameters has duplicate names: {dupes}")
            known = {id(p) for _, p in named}
            if any(id(p) not in known for p in params):
                raise ValueError("the optimizer holds parameters that are not in named_parameters")
        seen: set[int] = set()
        self._params: list[torch.Tensor] = []  # each trainable parameter once, in group order
        for p in params:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                self._params.append(p)

    # -- the wrapped optimizer's state, shared --
    # (Optimizer declares these as plain attributes; the wrapper serves the wrapped optimizer's
    # own objects read-only on purpose, which mypy reports as an override)
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @property
    def state(self) -> MutableMapping[Any, Any]:  # type: ignore[override]
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("optimizer")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    def __getstate__(self) -> dict[str, Any]:
        raise pickle.PicklingError("pickle optimizer.state_dict(), not the distributed wrapper")

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._synchronized = False
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raise RuntimeError("add parameter groups before wrapping the optimizer")

    def __repr__(self) -> str:
        return f"GradientAveragingOptimizer({self.optimizer!r}, size={self._backend.size})"

    # -- averaging --
    def synchronize(self) -> None:
        """Average the accumulated gradients across ranks now (idempotent until the next step)."""
        if self._synchronized:
            return
        grads: list[torch.Tensor] = []
        for p in self._params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            elif p.grad.is_sparse:
                raise RuntimeError("sparse gradients are not supported")
            grads.append(p.grad)
        size = self._backend.size
        if size > 1:
            for bucket in _buckets(grads):
                flat = _flatten(bucket).to(self._backend.comm_device)
                wire = flat.half() if self.fp16_compression and flat.is_floating_point() else flat
                self._backend._sum_(wire)
                wire.div_(size)
                _unflatten_into(wire, bucket)
        self._synchronized = True

    def step(self, closure=None):
        """Average the gradients across ranks (unless ``synchronize()`` already did), then step."""
        self.synchronize()
        self._synchronized = False
        return self.optimizer.step(closure) if closure is not None else self.optimizer.step()


class Metric:
    """Running average of a value weighted by a count (e.g. a per-batch loss and the batch size),
    all-reduced across ranks on demand, like the reference's DistributedMetric but exact when ranks
    see different counts. ``compute()`` is a collective: call it on every rank."""

    def __init__(self, backend: Backend | None = None, name: str = "") -> None:
        self.backend, self.name = backend, name
        self.reset()

    def reset(self) -> None:
        self._sum: torch.Tensor | float = 0.0
        self.count = 0.0

    def update(self, value: float | torch.Tensor, n: float = 1) -> None:
        """Add ``value`` (a mean over ``n`` items) with weight ``n``. Tensors stay on their device
        (no synchronisation) until ``compute()``."""
        if isinstance(value, torch.Tensor):
            value = value.detach().to(torch.float64)
            if value.numel() != 1:
                raise ValueError(f"Metric {self.name!r}: expected a scalar, got shape "
                                 f"{tuple(value.shape)}")
            value = value.reshape(())
        self._sum = self._sum + value * n
        self.count += float(n)

    @property
    def local_average(self) -> float:
        """This rank's weighted average (no communication); 0.0 before any update."""
        return float(self._sum) / self.count if self.count else 0.0

    def compute(self) -> float:
        """The weighted average over all ranks' updates; 0.0 when no rank had any."""
        total = torch.tensor([float(self._sum), self.count], dtype=torch.float64)
        if self.backend is not None and self.backend.size > 1:
            self.backend.allreduce_sum_(total)
        return float(total[0] / total[1]) if total[1] > 0 else 0.0


def init_backend(device: str | torch.device = "auto", launcher: str = "auto") -> Backend:
    """The backend for how this process was launched (``launcher="auto"``; or force ``"single"``,
    ``"torch"`` or ``"horovod"``), with ``device`` in auto/cpu/cuda pinned to the local rank."""
    kind = detect_launcher() if launcher == "auto" else launcher
    if kind == "horovod":
        return HorovodBackend(device)
    if kind == "torch":
        return TorchBackend(device)
    if kind == "single":
        return SingleBackend(device)
    raise ValueError(f"launcher must be auto, single, torch or horovod, got {launcher!r}")
