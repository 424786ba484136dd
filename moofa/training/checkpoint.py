"""Checkpoint files: their layout, RNG state capture, the phase chaining of docs/design.md#protocols.

Layout (reference names kept; resume state per phase fixes docs/design.md#departures-from-the-reference):
- teacher: ``<teacher_path>/checkpoint/checkpoint.pth.tar`` (resume state, always with
  ``state_dict``), ``model_best.pth.tar`` (``{state_dict}``), ``latest.txt``.
- phase ``<step>_<phase>``: resume state in ``<path>/checkpoint/<step>_<phase>/checkpoint.pth.tar``
  and best weights in ``.../model_best.pth.tar``; the final weights (last epoch, as the reference)
  in ``<path>/checkpoint/checkpoint-<step>_<phase>.pth.tar``.
"""
from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, NotRequired, TypedDict

import numpy as np
import torch

from moofa.config import STEPS

PHASE_ORDER = STEPS  # the order in which the steps chain their weights


class NumpyRngState(TypedDict):
    """NumPy's legacy MT19937 state as tensors and numbers (``weights_only`` loadable)."""

    keys: torch.Tensor
    pos: int
    has_gauss: int
    cached: float


class RngState(TypedDict):
    """The RNG states a resume checkpoint stores (``rng``): Python's as lists, NumPy's, torch's
    CPU generator and, on CUDA machines, each device's."""

    python: list[Any]
    numpy: NumpyRngState
    torch: torch.Tensor
    cuda: NotRequired[list[torch.Tensor]]


def rng_state() -> RngState:
    """Python, NumPy and torch RNG states as tensors/lists (loadable with weights_only=True)."""
    np_state = np.random.get_state(legacy=True)
    if not isinstance(np_state, tuple):  # the legacy form of the global MT19937 generator is a tuple
        raise RuntimeError(f"unexpected NumPy RNG state {type(np_state).__name__}")
    state: RngState = {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: RngState) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def phase_name(step: str, phase: int | None) -> str:
    return "teacher" if step == "teacher" else f"{step}_{phase}"


def predecessor(step: str, phase: int, tasks: list[str], tasks_phases: Mapping[str, int]) -> tuple[str, int] | None:
    """The phase whose final weights initialise (step, phase): (step, phase - 1), or for phase 1
    the last phase of the previous task in the order kernel -> depth -> expand; None for the first
    task (it starts from the teacher)."""
    if phase > 1 and step != "kernel":
        return step, phase - 1
    order = [t for t in PHASE_ORDER if t in tasks]
    i = order.index(step)
    if i == 0:
        return None
    prev = order[i - 1]
    return prev, int(tasks_phases[prev])
