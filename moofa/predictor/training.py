"""Training recipe of the accuracy predictor (entry point: :mod:`moofa.cli.train_predictor`).

Recipe (all seeded; fixes docs/design.md#encoding):

1. Remove repeated subnets (keeping the first record of each), then split the dataset with
   scikit-learn's ``train_test_split(test_size=test_fraction, random_state=seed)`` over the file order: the
   test split is only used for the reported metrics. A dataset too small for the splits (fewer
   than :data:`MIN_TEST` test, :data:`MIN_VAL` validation or :data:`MIN_FIT` fitting subnets) is
   refused, naming the minimum (:func:`min_records`).
2. For ensemble member ``m`` (seed ``seed * 1000 + m``), hold out ``val_fraction`` of the training
   split (the same split with ``random_state=seed * 1000 + m``) for best-epoch selection.
3. Inputs: the one-hot encoding plus the extra features (log MMACs, log peak elements),
   normalised with the training split's mean/std. Target: accuracy fraction; ``base_acc`` = mean
   training accuracy.
4. Adam, MSE, ``epochs`` epochs with cosine (per step), ReduceLROnPlateau on the validation loss
   (per epoch) or a constant learning rate; the weights of the epoch with the lowest validation
   loss are kept.
5. A member whose validation RMSE exceeds 1.5 x the members' median (a collapsed run) is
   dropped; the prediction is the mean over the remaining members. Metrics on the test split:
   RMSE and MAE in percentage points, Pearson correlation, Kendall's tau.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike

from moofa.config import PredictorRecipe
from moofa.errors import MoofaInputError
from moofa.models.spec import ModelSpec, get_model_spec
from moofa.predictor.dataset import PredictorDataset
from moofa.predictor.mlp import (
    EXTRA_FEATURES,
    AccuracyMLP,
    AccuracyPredictor,
    auto_device,
)

log = logging.getLogger(__name__)

SCHEDULES = ("cosine", "plateau", "constant")
TRAIN_THREADS = 1  # intra-op CPU threads while training (see cpu_threads)
COLLAPSE_FACTOR = 1.5  # a member whose validation RMSE exceeds 1.5 x the median is dropped
MIN_TEST, MIN_VAL, MIN_FIT = 2, 1, 2  # smallest splits that give metrics and a best epoch
FEW_TEST = 20  # below this many test subnets the metrics are flagged as rough


def feature_names(recipe: PredictorRecipe) -> tuple[str, ...]:
    """Names of the extra inputs of ``recipe`` (see :data:`moofa.predictor.mlp.EXTRA_FEATURES`)."""
    return tuple(EXTRA_FEATURES) if recipe.extra_features else ()


# ------------------------------------------------------------------------------------ metrics
def regression_metrics(real: ArrayLike, pred: ArrayLike) -> dict[str, float]:
    """RMSE and MAE in percentage points, Pearson correlation and Kendall's tau of accuracy
    fractions ``pred`` against ``real``."""
    r = np.asarray(real, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    if r.shape != p.shape or r.ndim != 1 or r.size < 2:
        raise ValueError(f"need two equal-length 1-D arrays of >= 2 values, got {r.shape}, {p.shape}")
    diff = p - r
    const = np.ptp(p) == 0 or np.ptp(r) == 0
    return {
        "rmse_pp": float(100.0 * math.sqrt(np.mean(diff * diff))),
        "mae_pp": float(100.0 * np.mean(np.abs(diff))),
        "pearson": float("nan") if const else float(np.corrcoef(r, p)[0, 1]),
        "kendall_tau": float("nan") if const else kendall_tau(r, p),
    }


def kendall_tau(xs: ArrayLike, ys: ArrayLike) -> float:
    """Kendall's tau-b of two rankings (ties in either counted as scipy.stats.kendalltau counts
    them), by counting pairs in row blocks: O(n^2) time, about a million pairs in memory."""
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    n = len(x)
    block = max(1, 1_000_000 // max(n, 1))
    score = 0.0  # concordant - discordant pairs, each counted twice (exact in float64)
    for i in range(0, n, block):
        score += float((np.sign(x[i:i + block, None] - x[None, :]) *
                        np.sign(y[i:i + block, None] - y[None, :])).sum())
    pairs = n * (n - 1) / 2

    def tied(v: np.ndarray) -> float:
        counts = np.unique(v, return_counts=True)[1].astype(np.float64)
        return float((counts * (counts - 1) / 2).sum())

    untied_x, untied_y = pairs - tied(x), pairs - tied(y)
    if untied_x <= 0 or untied_y <= 0:
        return float("nan")
    return float(min(1.0, max(-1.0, score / 2 / np.sqrt(untied_x) / np.sqrt(untied_y))))


def shuffle_split(items: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) rows of ``items`` as scikit-learn's ``train_test_split(items,
    test_size=test_fraction, random_state=seed)`` draws them (the reference's split):
    ceil(test_fraction * n) test rows first in a ``RandomState(seed)`` permutation, the others
    for training. ValueError when a side would be empty."""
    n = len(items)
    n_test = math.ceil(test_fraction * n)
    if not 1 <= n_test < n:
        raise ValueError(f"a test fraction of {test_fraction} of {n} items leaves a side empty")
    perm = np.random.RandomState(int(seed)).permutation(n)
    return np.asarray(items)[perm[n_test:]], np.asarray(items)[perm[:n_test]]


def split_indices(n: int, seed: int, test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: :func:`shuffle_split` of ``range(n)`` with ``seed`` (the
    reference's split for seed 0)."""
    return shuffle_split(np.arange(n), test_fraction, seed)


def split_sizes(n: int, recipe: PredictorRecipe) -> dict[str, int]:
    """Subnets per split for ``n`` records (scikit-learn's rounding: test and validation
    sizes are rounded up): ``test``, ``train``, ``val`` (per member), ``fit``."""
    test = math.ceil(recipe.test_fraction * n)
    train = n - test
    val = math.ceil(recipe.val_fraction * train)
    return {"test": test, "train": train, "val": val, "fit": train - val}


def _big_enough(sizes: Mapping[str, int]) -> bool:
    return sizes["test"] >= MIN_TEST and sizes["val"] >= MIN_VAL and sizes["fit"] >= MIN_FIT


def min_records(recipe: PredictorRecipe) -> int:
    """The fewest records whose splits are all large enough for ``recipe``'s fractions."""
    for n in range(1, 100_000):  # bounded; the fractions are < 1, so a size is found early
        if _big_enough(split_sizes(n, recipe)):
            return n
    raise ValueError("predictor_config: fractions leave no room for the splits")


def check_dataset_size(n: int, recipe: PredictorRecipe, where: Any = None) -> dict[str, int]:
    """The split sizes of ``n`` records; MoofaInputError naming the minimum when too small."""
    sizes = split_sizes(n, recipe)
    if not _big_enough(sizes):
        raise MoofaInputError(
            f"{n} distinct subnet(s) are too few for the predictor's splits (test_fraction "
            f"{recipe.test_fraction:g}, val_fraction {recipe.val_fraction:g} need at least "
            f"{min_records(recipe)}: {MIN_TEST} test, {MIN_VAL} validation and {MIN_FIT} fitting "
            "subnets); measure more with create_moofa_predictor_dataset.py", file=where)
    if sizes["test"] < FEW_TEST:
        log.warning("only %d test subnet(s): the reported metrics are rough", sizes["test"])
    return sizes


def deduplicate(dataset: PredictorDataset, spec: ModelSpec) -> PredictorDataset:
    """``dataset`` without repeated subnets (logged with their count)."""
    out, removed = dataset.deduplicated(spec)
    if removed:
        log.warning("removed %d duplicate record(s) of %s (same subnet measured again); %d distinct "
                    "subnets remain", removed, dataset.source or "the dataset", len(out))
    return out


# ----------------------------------------------------------------------------------- training
@dataclass
class MemberResult:
    """Outcome of one member: the epoch kept (0-based) and its validation RMSE (pp)."""

    best_epoch: int
    val_rmse_pp: float


def _make_scheduler(opt: torch.optim.Optimizer, recipe: PredictorRecipe, steps: int) -> Any:
    if recipe.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    if recipe.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=5)
    return None


def fit_member(member: AccuracyMLP, x: torch.Tensor, y: torch.Tensor, fit_idx: np.ndarray,
               val_idx: np.ndarray, recipe: PredictorRecipe, seed: int) -> MemberResult:
    """Train one member on ``x[fit_idx]`` and keep the weights with the lowest MSE on
    ``x[val_idx]`` (targets: accuracy fractions)."""
    dev = x.device
    fit_t = torch.as_tensor(fit_idx, dtype=torch.long, device=dev)
    xv, yv = x[torch.as_tensor(val_idx, dtype=torch.long, device=dev)], \
        y[torch.as_tensor(val_idx, dtype=torch.long, device=dev)]
    params = [p for p in member.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    n = len(fit_idx)
    bs = recipe.batch_size
    n_batches = (n + bs - 1) // bs
    sched = _make_scheduler(opt, recipe, recipe.epochs * n_batches)
    gen = torch.Generator().manual_seed(seed)
    best_loss, best_epoch = math.inf, -1
    best_state = {k: v.detach().clone() for k, v in member.state_dict().items()}
    for epoch in range(recipe.epochs):
        member.train()
        order = fit_t[torch.randperm(n, generator=gen).to(dev)]
        for b in range(n_batches):
            idx = order[b * bs:(b + 1) * bs]
            opt.zero_grad(set_to_none=True)
            loss = torch.mean((member(x[idx]) - y[idx]) ** 2)
            loss.backward()
            opt.step()
            if recipe.lr_schedule == "cosine":
                sched.step()
        member.eval()
        with torch.no_grad():
            val_loss = float(torch.mean((member(xv) - yv) ** 2))
        if recipe.lr_schedule == "plateau":
            sched.step(val_loss)
        if val_loss < best_loss:  # NaN never wins
            best_loss, best_epoch = val_loss, epoch
            best_state = {k: v.detach().clone() for k, v in member.state_dict().items()}
    member.load_state_dict(best_state)
    member.eval()
    return MemberResult(best_epoch, 100.0 * math.sqrt(best_loss) if best_epoch >= 0 else math.nan)


@contextmanager
def cpu_threads(n: int, device: torch.device) -> Iterator[None]:
    """Run the block with ``n`` intra-op CPU threads (restored afterwards) when ``device`` is the
    CPU. The predictor's matrices (batch 32 x 400) are too small to gain from threads, and on a
    busy machine extra threads slow training by 10-100x (measured: 4 epochs 0.6-1.8 s with one
    thread, 18-68 s with two on a 2-core machine under load)."""
    if device.type != "cpu":
        yield
        return
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def fit_predictor(predictor: AccuracyPredictor, feats: np.ndarray, acc: np.ndarray,
                  train_idx: np.ndarray, seed: int, recipe: PredictorRecipe,
                  progress: "Callable[[int, MemberResult], None] | None" = None
                  ) -> list[MemberResult]:
    """Train every member of ``predictor`` on its device, each re-initialised from
    ``seed * 1000 + m``, on ``feats[train_idx]`` / ``acc[train_idx]`` (fractions)."""
    dev = predictor.device
    x = torch.as_tensor(feats, dtype=torch.float32, device=dev)
    y = torch.as_tensor(acc, dtype=torch.float32, device=dev)
    base = float(np.mean(acc[train_idx]))
    results = []
    for m in range(len(predictor.members)):
        mseed = (seed * 1000 + m) % 2**32
        fit_idx, val_idx = shuffle_split(np.asarray(train_idx), recipe.val_fraction, mseed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mseed)
            member = AccuracyMLP(predictor.n_inputs, predictor.hidden_size, predictor.n_layers,
                                 base_acc=base)
        member = member.to(dev)
        res = fit_member(member, x, y, fit_idx, val_idx, recipe, mseed)
        predictor.members[m] = member
        results.append(res)
        if progress is not None:
            progress(m, res)
    return results


def drop_collapsed(predictor: AccuracyPredictor, results: list[MemberResult],
                   factor: float = COLLAPSE_FACTOR) -> list[int]:
    """Remove members whose validation RMSE is not finite or exceeds ``factor`` x the members'
    median (a collapsed run, docs/design.md#encoding); needs >= 3 members. Returns the removed indices."""
    vals = np.array([r.val_rmse_pp for r in results], dtype=np.float64)
    if len(vals) < 3 or not np.isfinite(vals).any():
        return []
    limit = factor * float(np.nanmedian(vals))
    bad = [i for i, v in enumerate(vals) if not np.isfinite(v) or v > limit]
    if bad:
        log.warning("dropping collapsed ensemble member(s) %s (validation RMSE %s pp > %.3f pp)",
                    bad, [round(float(vals[i]), 3) for i in bad], limit)
        predictor.members = torch.nn.ModuleList(m for i, m in enumerate(predictor.members)
                                                if i not in bad)
    return bad


def train_predictor(dataset: PredictorDataset, model: "str | ModelSpec | None" = None,
                    seed: int = 0, recipe: "PredictorRecipe | None" = None,
                    train_idx: "Sequence[int] | np.ndarray | None" = None,
                    test_idx: "Sequence[int] | np.ndarray | None" = None,
                    device: "str | torch.device | None" = None,
                    model_configs: "str | Path | None" = None,
                    progress: "Callable[[int, MemberResult], None] | None" = None,
                    n_classes: int = 1000) -> tuple[AccuracyPredictor, dict[str, Any]]:
    """Train a predictor on ``dataset`` and measure it on the held-out test split.

    Without ``train_idx``/``test_idx`` repeated subnets are removed first (:func:`deduplicate`),
    the size is checked (:func:`check_dataset_size`) and the split is
    ``split_indices(len(dataset), seed, recipe.test_fraction)``. ``device``: None/"auto" = CUDA
    when present, else CPU. Returns the predictor (on that device, eval mode) and metrics:
    ``rmse_pp``, ``mae_pp`` (percentage points), ``pearson``, ``kendall_tau`` on the test split,
    plus ``n_train``, ``n_test``, ``seed``, ``member_val_rmse_pp``, ``member_best_epoch``,
    ``dropped_members`` (collapsed members removed by :func:`drop_collapsed`) and ``seconds``.

    ``n_classes``: classifier width of the FLOPs input (the dataset's class count, as in dataset
    creation); the extra inputs are always computed exactly, never taken from the file, so that
    training and search compute them identically (file values that differ are counted in one
    warning per column). Metrics that are not finite raise :class:`MoofaInputError`.
    """
    recipe = recipe or PredictorRecipe()
    spec = get_model_spec(model if model is not None else dataset.model, model_configs)
    if train_idx is None and test_idx is None:
        dataset = deduplicate(dataset, spec)
        check_dataset_size(len(dataset), recipe, dataset.source or None)
    if train_idx is None or test_idx is None:
        tr, te = split_indices(len(dataset), seed, recipe.test_fraction)
        train_idx = tr if train_idx is None else train_idx
        test_idx = te if test_idx is None else test_idx
    train_rows, test_rows = np.asarray(train_idx), np.asarray(test_idx)
    t0 = time.perf_counter()
    predictor = AccuracyPredictor(spec, recipe.hidden_size, recipe.n_layers, recipe.ensemble,
                                  feature_names(recipe), n_classes=n_classes)
    raw = predictor.raw_extra(dataset.configs)  # exact values, as the search computes them
    _check_file_values(predictor, raw, dataset)
    predictor.fit_feature_norm(raw[train_rows])
    known = {n: raw[:, j] for j, n in enumerate(predictor.extra_features)}
    feats = predictor.features(dataset.configs, known)
    predictor.to(auto_device(device))
    with cpu_threads(TRAIN_THREADS, predictor.device):
        results = fit_predictor(predictor, feats, dataset.accuracies, train_rows, seed, recipe,
                                progress)
    dropped = drop_collapsed(predictor, results)
    predictor.eval()
    pred = predictor.predict_members(feats[test_rows], check=False).mean(axis=0)
    metrics: dict[str, Any] = regression_metrics(dataset.accuracies[test_rows], pred)
    if not (math.isfinite(metrics["rmse_pp"]) and math.isfinite(metrics["mae_pp"])):
        raise MoofaInputError("training gave a predictor with non-finite test metrics (no "
                              "checkpoint written); check the dataset's values", file=dataset.source
                              or None, key="test RMSE (pp)", value=metrics["rmse_pp"])
    metrics.update(
        n_train=int(len(train_rows)), n_test=int(len(test_rows)), seed=int(seed),
        member_val_rmse_pp=[r.val_rmse_pp for r in results],
        member_best_epoch=[r.best_epoch for r in results],
        dropped_members=dropped,
        seconds=time.perf_counter() - t0,
    )
    predictor.info = {"seed": int(seed), "n_train": int(len(train_rows)),
                      "test_rmse_pp": metrics["rmse_pp"], "test_kendall_tau": metrics["kendall_tau"],
                      "test_pearson": metrics["pearson"], "dataset": str(dataset.source),
                      **{f"recipe.{k}": v for k, v in recipe.as_dict().items()}}
    return predictor, metrics


def _check_file_values(predictor: AccuracyPredictor, raw: np.ndarray,
                       dataset: PredictorDataset) -> None:
    """Compare the dataset's ``peak_memory`` (elements) and ``flops`` (MMACs) values with the
    exact values of each record's config (``raw``: the predictor's computed extra inputs; the
    FLOPs of a ``predictor.n_classes``-class network) and warn once per column, counting the
    records that differ: the predictor uses the exact values (the search computes them the same
    way)."""
    for name, col in dataset.known().items():
        have = np.flatnonzero(np.isfinite(col))
        if not have.size:
            continue
        if name in predictor.extra_features:
            exact = raw[have, predictor.extra_features.index(name)]
        else:
            exact = EXTRA_FEATURES[name][0](predictor.spec, [dataset.configs[i] for i in have],
                                            predictor.n_classes)
        bad = int((~np.isclose(col[have], exact, rtol=1e-6, atol=1e-9)).sum())
        if bad:
            extra = f" of a {predictor.n_classes}-class network" if name == "flops" else ""
            log.warning("%s: %d of %d record(s) have a %s value that differs from the exact one%s "
                        "of their config; the predictor uses the exact values (the search computes "
                        "them the same way)", dataset.source or "dataset", bad, have.size, name,
                        extra)


# ---------------------------------------------------------------------------------------- CLI
def format_metrics(metrics: Mapping[str, Any], model: str) -> str:
    """Human-facing table of test metrics (RMSE/MAE in percentage points)."""
    rows = [
        ("model", model),
        ("seed", str(metrics.get("seed", ""))),
        ("train / test subnets", f"{metrics['n_train']} / {metrics['n_test']}"),
        ("test RMSE (percentage points)", f"{metrics['rmse_pp']:.4f}"),
        ("test MAE (percentage points)", f"{metrics['mae_pp']:.4f}"),
        ("test Pearson correlation", f"{metrics['pearson']:.4f}"),
        ("test Kendall tau", f"{metrics['kendall_tau']:.4f}"),
        ("members' validation RMSE (pp)",
         " ".join(f"{v:.3f}" for v in metrics.get("member_val_rmse_pp", []))),
        ("training time (s)", f"{metrics.get('seconds', 0.0):.1f}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


__all__ = ["PredictorRecipe", "MemberResult", "split_sizes", "min_records", "check_dataset_size",
           "deduplicate", "regression_metrics", "split_indices", "fit_member",
           "fit_predictor", "drop_collapsed", "train_predictor", "format_metrics", "cpu_threads",
           "feature_names"]
