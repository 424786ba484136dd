"""The distributed backend layer: single process in-process, torch.distributed (world size 1
in-process, 2 ranks under torchrun) and Horovod (2 ranks under horovodrun), all on CPU.

The launched workers (tests/dist_scripts/step_worker.py) start from different random weights per
rank, broadcast rank 0's, and take optimizer steps with backward_passes_per_step=2 on different
data per rank; their weights must equal an independent single-process computation of the
averaged-gradient step (Horovod's semantics, docs/design.md#protocols step 6).
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moofa.distributed import (
    GradientAveragingOptimizer,
    Metric,
    SingleBackend,
    _buckets,
    detect_launcher,
    init_backend,
    resolve_device,
)
from moofa.errors import MoofaInputError

SCRIPTS = Path(__file__).resolve().parent / "dist_scripts"
WORKER = SCRIPTS / "step_worker.py"
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "HOROVOD_RANK",
              "HOROVOD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")


def _tiny_step():
    spec = importlib.util.spec_from_file_location("tiny_step", SCRIPTS / "tiny_step.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


T = _tiny_step()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def clean_env(monkeypatch):
    for name in LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# ---------------------------------------------------------------- independent expectation ----
def expected_params(world: int, steps: int, fp16: bool = False) -> list[float]:
    """Rank 0's initial weights, then per step: every rank's gradients summed over its micro-steps
    (torch.autograd.grad, unused parameters -> zero), averaged over ranks, one SGD step."""
    model = T.build(init_seed=100)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, **T.SGD_KW)
    for step in range(steps):
        total = [torch.zeros_like(p) for p in params]
        for rank in range(world):
            replica = copy.deepcopy(model)  # train-mode BN: the running stats do not matter
            for micro in range(T.PASSES):
                replica.active = T.sample_branch(step, micro)
                x, y = T.batch(rank, step, micro)
                loss = torch.nn.functional.cross_entropy(replica(x), y)
                grads = torch.autograd.grad(loss, list(replica.parameters()), allow_unused=True)
                for acc, g in zip(total, grads):
                    if g is not None:
                        acc += g
        for p, acc in zip(params, total):
            g = acc / world
            p.grad = g.half().float() if fp16 else g
        opt.step()
    return T.flat_params(model)


def _run_workers(cmd: list[str], out: Path) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd + [str(WORKER), str(out)], env=env, capture_output=True, text=True,
                          timeout=120, cwd=str(out))
    assert proc.returncode == 0, f"{cmd[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def _check_ranks(results: list[dict], backend: str) -> None:
    r0, r1 = results
    assert [r["backend"] for r in results] == [backend, backend]
    assert [(r["rank"], r["size"], r["is_main"]) for r in results] == [(0, 2, True), (1, 2, False)]
    # the ranks started from different weights, so the broadcast did real work
    assert max(abs(a - b) for a, b in zip(r0["params_before_broadcast"],
                                          r1["params_before_broadcast"])) > 1e-3
    # identical weights on both ranks, and equal to the independent averaged-gradient computation
    assert r0["params"] == pytest.approx(r1["params"], abs=1e-7)
    expected = expected_params(world=2, steps=T.STEPS)
    assert r0["params"] == pytest.approx(expected, abs=1e-6)
    # the averaging matters: rank 0's data alone gives clearly different weights
    alone = expected_params(world=1, steps=T.STEPS)
    assert max(abs(a - b) for a, b in zip(r0["params"], alone)) > 1e-3
    # fp16-compressed averaging: within fp16 rounding of the fp16-rounded expectation (measured
    # 2.9e-6 for both launchers), and measurably off the fp32 one (1.5e-5), so fp16 went on the wire
    exp16 = expected_params(world=2, steps=1, fp16=True)
    exp32 = expected_params(world=2, steps=1)
    assert r0["params_fp16"] == pytest.approx(r1["params_fp16"], abs=1e-7)
    assert r0["params_fp16"] == pytest.approx(exp16, abs=1e-5)
    assert max(abs(a - b) for a, b in zip(r0["params_fp16"], exp32)) > 5e-6
    # the same subnets sampled on every rank, and they include both used branches
    assert r0["choices"] == r1["choices"] == [T.sample_branch(s, m) for s in range(T.STEPS)
                                              for m in range(T.PASSES)]
    assert set(r0["choices"]) == {0, 1}
    # Horovod semantics: every parameter (also the never-used branch) has momentum state
    assert r0["opt_state_keys"] == [1] * len(list(T.TinyNet().parameters()))
    # metrics and small collectives
    assert r0["loss_local"] != pytest.approx(r1["loss_local"])
    for r in results:
        assert r["loss_avg"] == pytest.approx((r0["loss_local"] + r1["loss_local"]) / 2, rel=1e-12)
        assert r["weighted_avg"] == pytest.approx(5 / 3, rel=1e-12)
        assert r["allreduce_mean"] == [0.5, 1.0]
        assert r["allreduce_sum"] == [3]
        assert r["gathered"] == [{"rank": 0}, {"rank": 1}]
        assert r["broadcast"] == {"from": 1}


@pytest.mark.distributed
def test_torchrun_two_ranks(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    _check_ranks(_run_workers(cmd, tmp_path), "torch")


def _horovod_skip_reason() -> str | None:
    try:
        import horovod.torch  # noqa: F401
    except ImportError as err:
        return f"horovod.torch cannot be imported ({err}); build it with `make horovod`"
    if not (Path(sys.executable).parent / "horovodrun").exists():
        return f"no horovodrun next to {sys.executable}"
    return None


@pytest.mark.distributed
def test_horovodrun_two_ranks(tmp_path):
    reason = _horovod_skip_reason()
    if reason:
        pytest.skip(reason)
    cmd = [str(Path(sys.executable).parent / "horovodrun"), "-np", "2", "--gloo", sys.executable]
    _check_ranks(_run_workers(cmd, tmp_path), "horovod")


# ------------------------------------------------------------------------ in-process tests ----
def test_detect_launcher():
    assert detect_launcher({}) == "single"
    assert detect_launcher({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}) == "torch"
    assert detect_launcher({"RANK": "0"}) == "single"
    assert detect_launcher({"HOROVOD_RANK": "1", "HOROVOD_SIZE": "2"}) == "horovod"
    assert detect_launcher({"OMPI_COMM_WORLD_RANK": "0", "RANK": "0", "WORLD_SIZE": "2"}) == "horovod"


def test_resolve_device_rejects_bad_values():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(MoofaInputError, match=r"args\.device.*'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(MoofaInputError, match=r"args\.device.*no CUDA"):
            resolve_device("cuda")


def test_single_backend(clean_env):
    be = init_backend("cpu")
    assert isinstance(be, SingleBackend)
    assert (be.name, be.rank, be.size, be.local_rank, be.is_main) == ("single", 0, 1, 0, True)
    t = torch.tensor([1.5, -2.0])
    out = be.allreduce(t)
    assert out.tolist() == [1.5, -2.0] and out.data_ptr() != t.data_ptr()
    counts = torch.tensor([3, 4])
    assert be.allreduce_sum_(counts) is counts and counts.tolist() == [3, 4]
    with pytest.raises(TypeError, match="allreduce_sum_"):
        be.allreduce(counts)
    assert be.broadcast_object({"a": 1}) == {"a": 1}
    assert be.allgather_object("x") == ["x"]
    model = T.build(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    wrapped = be.distributed_optimizer(opt, model.named_parameters(), 2)
    assert wrapped.param_groups is opt.param_groups
    # like Horovod: a parameter without a gradient (outside the sampled subnet) still gets its
    # weight decay, so one process trains like N
    w = torch.nn.Parameter(torch.ones(3))
    decayed = be.distributed_optimizer(torch.optim.SGD([w], lr=0.1, weight_decay=0.5))
    decayed.zero_grad()
    decayed.step()
    assert torch.allclose(w.detach(), torch.full((3,), 1 - 0.1 * 0.5))
    with pytest.raises(ValueError, match="backward_passes_per_step"):
        be.distributed_optimizer(opt, model.named_parameters(), 0)
    be.barrier()
    be.shutdown()
    with pytest.raises(ValueError, match="launcher"):
        init_backend("cpu", launcher="mpi")


def test_metric_weighted_average():
    m = Metric(SingleBackend("cpu"), "loss")
    assert m.compute() == 0.0 and m.local_average == 0.0
    m.update(1.0, 1)
    m.update(torch.tensor(2.0), 2)   # a tensor is accepted and stays unsynchronised
    assert m.count == 3
    assert m.local_average == pytest.approx(5 / 3, rel=1e-15)
    assert m.compute() == pytest.approx(5 / 3, rel=1e-15)
    with pytest.raises(ValueError, match="scalar"):
        m.update(torch.ones(2))
    m.reset()
    assert m.count == 0 and m.compute() == 0.0


def test_buckets_keep_order_and_split_by_dtype_and_size():
    a, b, c = torch.zeros(10), torch.zeros(3, dtype=torch.float64), torch.zeros(10)
    d = torch.zeros(10)
    assert [[id(t) for t in bk] for bk in _buckets([a, b, c, d], max_bytes=80)] == \
        [[id(a), id(c)], [id(d)], [id(b)]]
    big = torch.zeros(100)  # larger than one bucket: alone in its own
    assert [len(bk) for bk in _buckets([big, a], max_bytes=80)] == [1, 1]


@pytest.mark.distributed
def test_torch_backend_world_of_one(clean_env, tmp_path):
    """torch.distributed in this process (world size 1): the optimizer wrapper follows Horovod's
    semantics (unused parameters get zero gradients and are stepped) and behaves as an optimizer."""
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(_free_port())}.items():
        clean_env.setenv(k, v)
    be = init_backend("cpu")
    try:
        assert (be.name, be.rank, be.size, be.is_main) == ("torch", 0, 1, True)
        model = T.build(0)
        model.active = 1
        inner = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
        opt = be.distributed_optimizer(inner, model.named_parameters(), backward_passes_per_step=2)
        assert isinstance(opt, GradientAveragingOptimizer) and isinstance(opt, torch.optim.Optimizer)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 0.5 ** it)
        unused = model.branches[2].weight
        before = unused.detach().clone()
        opt.zero_grad()
        for micro in range(2):
            x, y = T.batch(0, 0, micro)
            torch.nn.functional.cross_entropy(model(x), y).backward()
        assert unused.grad is None
        opt.step()
        sched.step()
        # zero gradient + weight decay: p <- p - lr * wd * p
        assert torch.allclose(unused.detach(), before * (1 - 0.5 * 0.1), atol=1e-7)
        assert inner.param_groups[0]["lr"] == pytest.approx(0.25)
        assert opt.state_dict()["state"].keys() == inner.state_dict()["state"].keys()
        with pytest.raises(ValueError, match="duplicate"):
            be.distributed_optimizer(inner, [("w", unused), ("w", unused)])
        assert be.allgather_object(7) == [7]
        assert be.broadcast_object("s") == "s"
    finally:
        be.shutdown()
