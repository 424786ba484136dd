"""The accuracy predictor: the reference MLP (docs/design.md#encoding) and our ensemble with extra inputs.

:class:`AccuracyMLP` is one reference MLP; its state dict has exactly the reference keys
(``base_acc``, ``layers.0.0.weight`` ... ``layers.3.weight``). :class:`AccuracyPredictor` is what the
rest of the package uses: the encoder, one or more :class:`AccuracyMLP` members whose outputs are
averaged, and optionally extra normalised inputs appended to the one-hot encoding.

Checkpoint formats (both load with ``torch.load(weights_only=True)``):

* **reference**: a plain state dict of one :class:`AccuracyMLP` (or ``{"state_dict": ...}``); the
  input size must equal the encoder's ``n_dim``.
* **moofa-predictor-v1** (ours): a dict of plain types and tensors::

      {"format": "moofa-predictor-v1",
       "model": "OFA",                                # model name it was trained for
       "encoder": {"image_sizes": [...], "ks_list": [...], "expand_list": [...],
                   "depth_list": [...]},              # must match the model's lists on load
       "hidden_size": 400, "n_layers": 3,
       "extra_features": ["flops", "peak_memory"],     # names from EXTRA_FEATURES, in input order
       "feature_norm": {"mean": tensor(n_extra), "std": tensor(n_extra)},  # float64, transformed
       "members": [state dict of AccuracyMLP, ...],    # reference keys; input n_dim + n_extra
       "n_classes": 10,                                # classifier width of the FLOPs input, optional
       "info": {str: int | float | str}}               # free-form (metrics, recipe), optional

Model check: a moofa-predictor-v1 file records its model; loading it for another model is a
:class:`CheckpointError` even when the encoder lists agree (OFA and MOOFA_V1 share them). A
reference file is a bare state dict that records no model: it loads whenever the input size fits
(OFA's and MOOFA_V3's encoders both have 124 inputs), and :attr:`AccuracyPredictor.recorded_model`
is None so that callers can warn; a reference file wrapped as ``{"state_dict": ..., "model":
name}`` is checked like ours.
``n_classes`` is the class count the FLOPs input is computed with (the dataset's, as in dataset
creation); a checkpoint without it means 1,000 (ImageNet).

Extra input ``j`` is ``(transform_j(x_j) - mean_j) / std_j`` with the transforms of
:data:`EXTRA_FEATURES` (natural log of MMACs and of elements).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from moofa.efficiency import (
    flops_batch,  # for the optional extra inputs (MMACs)
    peak_memory_batch,
)
from moofa.errors import CheckpointError
from moofa.io import atomic_save, require_file
from moofa.models.spec import ModelSpec, SubnetConfig
from moofa.predictor.encoder import ArchEncoder, ConfigLike

FORMAT = "moofa-predictor-v1"
PREDICT_CHUNK = 8192


def _flops_values(spec: ModelSpec, configs: Sequence[SubnetConfig], n_classes: int = 1000) -> np.ndarray:
    """FLOPs of each config in MMACs (docs/design.md#flops) of the network with ``n_classes`` outputs."""
    return np.asarray(flops_batch(spec, list(configs), n_classes=int(n_classes)), dtype=np.float64)


def _peak_values(spec: ModelSpec, configs: Sequence[SubnetConfig], n_classes: int = 1000) -> np.ndarray:
    """Analytic peak memory of each config in elements (docs/design.md#memory-model; independent of the classes)."""
    return np.asarray(peak_memory_batch(spec, list(configs)), dtype=np.float64)


# name -> (raw value function (spec, configs, n_classes), transform applied before normalisation)
EXTRA_FEATURES: dict[str, tuple[Callable[..., np.ndarray],
                                Callable[[np.ndarray], np.ndarray]]] = {
    "flops": (_flops_values, np.log),
    "peak_memory": (_peak_values, np.log),
}


def check_extra_features(names: Iterable[str], where: str = "extra_features") -> tuple[str, ...]:
    """Validate extra-feature names; ValueError naming the unknown one."""
    names = tuple(str(n) for n in names)
    for n in names:
        if n not in EXTRA_FEATURES:
            raise ValueError(f"{where}: unknown extra feature {n!r} (known: "
                             f"{', '.join(EXTRA_FEATURES)})")
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: duplicate entries in {list(names)}")
    return names


def auto_device(device: "str | torch.device | None" = None) -> torch.device:
    """``device`` if given, else CUDA when present, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _plain_info(info: Mapping[str, Any]) -> dict[str, Any]:
    """``info`` reduced to what ``torch.load(weights_only=True)`` accepts: str keys and
    str/int/float/bool/None values (numpy scalars converted, anything else as its str)."""
    out: dict[str, Any] = {}
    for k, v in info.items():
        if isinstance(v, np.generic):
            v = v.item()
        out[str(k)] = v if v is None or isinstance(v, (str, int, float, bool)) else str(v)
    return out


class AccuracyMLP(nn.Module):
    """One reference MLP (docs/design.md#encoding): ``n_layers`` x [Linear, ReLU], then Linear(hidden, 1, no bias),
    squeezed, plus the frozen scalar ``base_acc``. Output: accuracy as a fraction."""

    def __init__(self, n_inputs: int, hidden_size: int = 400, n_layers: int = 3,
                 base_acc: float = 0.0) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = n_inputs
        for _ in range(n_layers):
            blocks.append(nn.Sequential(nn.Linear(width, hidden_size), nn.ReLU(inplace=True)))
            width = hidden_size
        blocks.append(nn.Linear(width, 1, bias=False))
        self.layers = nn.Sequential(*blocks)
        self.base_acc = nn.Parameter(torch.tensor([float(base_acc)]), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).squeeze(-1) + self.base_acc

    @staticmethod
    def shape_of(state_dict: Mapping[str, torch.Tensor]) -> tuple[int, int, int]:
        """(n_inputs, hidden_size, n_layers) of a reference-layout state dict; ValueError if the
        keys are not the reference layout."""
        if "base_acc" not in state_dict or "layers.0.0.weight" not in state_dict:
            raise ValueError("not a reference predictor state dict (needs keys 'base_acc' and "
                             f"'layers.0.0.weight'; has {sorted(state_dict)[:4]}...)")
        n_layers = 0
        while f"layers.{n_layers}.0.weight" in state_dict:
            n_layers += 1
        if f"layers.{n_layers}.weight" not in state_dict:
            raise ValueError(f"reference predictor state dict lacks 'layers.{n_layers}.weight'")
        hidden, n_inputs = state_dict["layers.0.0.weight"].shape
        return int(n_inputs), int(hidden), n_layers


def _as_member(module: nn.Module) -> AccuracyMLP:
    """An entry of ``AccuracyPredictor.members`` as what it is (ModuleList entries are typed Module)."""
    if not isinstance(module, AccuracyMLP):
        raise TypeError(f"predictor member: expected an AccuracyMLP, got {type(module).__name__}")
    return module


class AccuracyPredictor(nn.Module):
    """Predicts the accuracy (fraction) of subnet configs of one model.

    ``model`` is a model name, :class:`ModelSpec` or :class:`ArchEncoder`. The prediction is the
    mean of ``n_members`` :class:`AccuracyMLP` members; each sees the one-hot encoding (docs/design.md#encoding)
    followed by the normalised ``extra_features`` (names of :data:`EXTRA_FEATURES`).
    """

    # buffers registered in __init__ (annotated for the type checker; nn.Module.__getattr__ serves them)
    feature_mean: torch.Tensor
    feature_std: torch.Tensor

    def __init__(self, model: "str | ModelSpec | ArchEncoder", hidden_size: int = 400,
                 n_layers: int = 3, n_members: int = 1, extra_features: Sequence[str] = (),
                 base_acc: float = 0.0, model_configs: "str | Path | None" = None,
                 n_classes: int = 1000) -> None:
        super().__init__()
        self.n_classes = int(n_classes)  # classifier width of the FLOPs input (dataset's classes)
        self.encoder = model if isinstance(model, ArchEncoder) else ArchEncoder(model, model_configs)
        self.hidden_size, self.n_layers = int(hidden_size), int(n_layers)
        self.extra_features = check_extra_features(extra_features)
        if n_members < 1:
            raise ValueError(f"n_members: must be >= 1, got {n_members}")
        self.members = nn.ModuleList(AccuracyMLP(self.n_inputs, hidden_size, n_layers, base_acc)
                                     for _ in range(n_members))
        n_extra = len(self.extra_features)
        self.register_buffer("feature_mean", torch.zeros(n_extra, dtype=torch.float64))
        self.register_buffer("feature_std", torch.ones(n_extra, dtype=torch.float64))
        self.info: dict[str, Any] = {}
        self.recorded_model: str | None = self.spec.name  # the model its file names (None: none)
        self.source: Path | None = None  # the checkpoint it was loaded from
        self.n_classes_recorded = False  # whether its file recorded n_classes (set by load)

    # ------------------------------------------------------------------------------ properties
    @property
    def spec(self) -> ModelSpec:
        return self.encoder.spec

    @property
    def n_inputs(self) -> int:
        """Input width of each member: encoder dimensions + extra features."""
        return self.encoder.n_dim + len(self.extra_features)

    @property
    def device(self) -> torch.device:
        return _as_member(self.members[0]).base_acc.device

    # ------------------------------------------------------------------------------- features
    def raw_extra(self, configs: Sequence[SubnetConfig],
                  known: "Mapping[str, np.ndarray] | None" = None) -> np.ndarray:
        """The untransformed extra inputs, ``(N, n_extra)`` (MMACs, elements). Values in
        ``known[name]`` (e.g. from a dataset file; NaN = unknown) are used where finite; the rest
        are computed with :mod:`moofa.efficiency`."""
        out = np.empty((len(configs), len(self.extra_features)), dtype=np.float64)
        for j, name in enumerate(self.extra_features):
            col = None if known is None or known.get(name) is None else \
                np.asarray(known[name], dtype=np.float64)
            if col is not None and np.isfinite(col).all():
                out[:, j] = col
                continue
            fn = EXTRA_FEATURES[name][0]
            if col is None:
                out[:, j] = fn(self.spec, configs, self.n_classes)
            else:
                missing = np.flatnonzero(~np.isfinite(col))
                col = col.copy()
                col[missing] = fn(self.spec, [configs[i] for i in missing], self.n_classes)
                out[:, j] = col
        return out

    def transform_extra(self, raw: np.ndarray) -> np.ndarray:
        """Apply each extra feature's transform (log) column by column."""
        out = np.empty_like(raw, dtype=np.float64)
        for j, name in enumerate(self.extra_features):
            out[:, j] = EXTRA_FEATURES[name][1](raw[:, j])
        return out

    def fit_feature_norm(self, raw: np.ndarray) -> None:
        """Set the extra-feature normalisation from training data (raw values, ``(N, n_extra)``)."""
        if not self.extra_features:
            return
        t = self.transform_extra(raw)
        std = t.std(axis=0)
        std[std <= 0] = 1.0
        self.feature_mean.copy_(torch.as_tensor(t.mean(axis=0)))
        self.feature_std.copy_(torch.as_tensor(std))

    def features(self, configs: Iterable[ConfigLike],
                 known: "Mapping[str, np.ndarray] | None" = None) -> np.ndarray:
        """Member inputs for ``configs``: ``(N, n_inputs)`` float64 (one-hot + normalised extras)."""
        cfgs = [SubnetConfig.from_dict(c) for c in configs]
        onehot = self.encoder.encode_batch(cfgs)
        if not self.extra_features:
            return onehot
        t = self.transform_extra(self.raw_extra(cfgs, known))
        mean = self.feature_mean.detach().cpu().numpy()
        std = self.feature_std.detach().cpu().numpy()
        return np.concatenate([onehot, (t - mean) / std], axis=1)

    # ------------------------------------------------------------------------------ inference
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean member prediction (fractions) for a batch of member inputs ``(N, n_inputs)``."""
        return self.member_outputs(x).mean(dim=0)

    def member_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Each member's prediction (fractions) ``(n_members, N)`` for member inputs ``(N, n_inputs)``."""
        return torch.stack([m(x) for m in self.members], dim=0)

    def predict_features(self, feats: np.ndarray) -> np.ndarray:
        """Predictions (fractions, float64): the members' mean for precomputed member inputs."""
        return self.predict_members(feats).mean(axis=0)

    @torch.no_grad()
    def predict_members(self, feats: np.ndarray, check: bool = True) -> np.ndarray:
        """Each member's predictions (fractions, float64 ``(n_members, N)``) for member inputs,
        in eval mode and in chunks of PREDICT_CHUNK rows (bounded memory). With ``check`` a
        prediction that is not finite raises :class:`CheckpointError` naming :attr:`source`."""
        was_training = self.training
        self.eval()
        out = [np.zeros((len(self.members), 0))]
        for i in range(0, len(feats), PREDICT_CHUNK):
            x = torch.as_tensor(np.asarray(feats[i:i + PREDICT_CHUNK]), dtype=torch.float32,
                                device=self.device)
            out.append(self.member_outputs(x).double().cpu().numpy())
        self.train(was_training)
        preds = np.concatenate(out, axis=1)
        if check and not np.isfinite(preds).all():
            raise CheckpointError("predictor returned a non-finite accuracy (trained on bad "
                                  "data?); retrain it", file=self.source or "predictor",
                                  value=float(preds[~np.isfinite(preds)][0]))
        return preds

    def predict(self, configs: Iterable[ConfigLike],
                known: "Mapping[str, np.ndarray] | None" = None) -> np.ndarray:
        """Predicted accuracy (fraction in [0, 1] scale, float64) of each config."""
        cfgs = [SubnetConfig.from_dict(c) for c in configs]
        if not cfgs:
            return np.zeros(0)
        return self.predict_features(self.features(cfgs, known))

    # ----------------------------------------------------------------------------- checkpoints
    def reference_state_dict(self) -> dict[str, torch.Tensor]:
        """The reference checkpoint of a single-member predictor without extra inputs."""
        if len(self.members) != 1 or self.extra_features:
            raise ValueError("only a single-member predictor without extra features has a "
                             "reference-format state dict")
        return {k: v.detach().cpu().clone() for k, v in self.members[0].state_dict().items()}

    def checkpoint(self) -> dict[str, Any]:
        """Our documented checkpoint dict (format ``moofa-predictor-v1``, see module docstring)."""
        return {
            "format": FORMAT,
            "model": self.spec.name,
            "encoder": self.encoder.lists,
            "hidden_size": self.hidden_size,
            "n_layers": self.n_layers,
            "extra_features": list(self.extra_features),
            "feature_norm": {"mean": self.feature_mean.detach().cpu().clone(),
                             "std": self.feature_std.detach().cpu().clone()},
            "members": [{k: v.detach().cpu().clone() for k, v in m.state_dict().items()}
                        for m in self.members],
            "n_classes": self.n_classes,
            "info": _plain_info(self.info),
        }

    def save(self, path: "str | Path", reference_format: bool = False) -> Path:
        """Write the checkpoint atomically (temp file + os.replace); parent folders are created.
        ``reference_format=True`` writes the reference's plain state dict (one member only)."""
        path = Path(path)
        obj = self.reference_state_dict() if reference_format else self.checkpoint()
        return atomic_save(obj, path)

    @classmethod
    def load(cls, path: "str | Path", model: "str | ModelSpec | ArchEncoder",
             device: "str | torch.device | None" = None,
             model_configs: "str | Path | None" = None) -> "AccuracyPredictor":
        """Load a reference or moofa-predictor-v1 checkpoint for ``model`` (always with
        ``weights_only=True``). A missing, unreadable or mismatching file raises
        :class:`CheckpointError` naming the path (the reference silently stayed random)."""
        path = require_file(path, "predictor checkpoint", error=CheckpointError)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # any unpickling failure is a bad file
            msg = " ".join(str(err).split())[:200]
            raise CheckpointError(f"cannot load predictor checkpoint ({type(err).__name__}: {msg})",
                                  file=path) from None
        encoder = model if isinstance(model, ArchEncoder) else ArchEncoder(model, model_configs)
        if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
            pred = cls._from_checkpoint(obj, encoder, path)
        else:
            pred = cls._from_reference(obj, encoder, path)
        pred.source = path
        return pred.to(auto_device(device)).eval()

    @classmethod
    def _from_reference(cls, obj: Any, encoder: ArchEncoder, path: Path) -> "AccuracyPredictor":
        sd = obj.get("state_dict", obj) if isinstance(obj, Mapping) else obj
        named = None
        if isinstance(obj, Mapping) and sd is not obj:
            named = next((obj[k] for k in ("model", "model_name", "net") if isinstance(obj.get(k), str)),
                         None)
            if named is not None and named != encoder.spec.name:
                raise CheckpointError(f"predictor was trained for model {named!r}, not "
                                      f"{encoder.spec.name!r}", file=path, key="model", value=named)
        if not isinstance(sd, Mapping):
            raise CheckpointError("not a predictor checkpoint", file=path, value=type(sd).__name__)
        try:
            n_in, hidden, n_layers = AccuracyMLP.shape_of(sd)
        except ValueError as err:
            raise CheckpointError(str(err), file=path) from None
        if n_in != encoder.n_dim:
            raise CheckpointError(f"input size does not match model {encoder.spec.name!r} "
                                  f"(encoder n_dim {encoder.n_dim})", file=path,
                                  key="layers.0.0.weight", value=n_in)
        pred = cls(encoder, hidden, n_layers, n_members=1)
        cls._load_member(_as_member(pred.members[0]), sd, path, "state_dict")
        pred.recorded_model = named
        return pred

    @classmethod
    def _from_checkpoint(cls, obj: Mapping[str, Any], encoder: ArchEncoder,
                         path: Path) -> "AccuracyPredictor":
        for key in ("encoder", "hidden_size", "n_layers", "extra_features", "feature_norm",
                    "members"):
            if key not in obj:
                raise CheckpointError("missing key in predictor checkpoint", file=path, key=key)
        lists = {k: [float(x) for x in v] for k, v in dict(obj["encoder"]).items()}
        mine = {k: [float(x) for x in v] for k, v in encoder.lists.items()}
        if lists != mine:
            raise CheckpointError(f"encoder lists do not match model {encoder.spec.name!r} "
                                  f"({mine}); trained for model {obj.get('model')!r}",
                                  file=path, key="encoder", value=lists)
        recorded = obj.get("model")  # the lists agree; so do OFA's and MOOFA_V1's, the names not
        if recorded is not None and recorded != encoder.spec.name:
            raise CheckpointError(f"predictor was trained for model {recorded!r}, not "
                                  f"{encoder.spec.name!r}", file=path, key="model", value=recorded)
        members = list(obj["members"])
        if not members:
            raise CheckpointError("no ensemble members", file=path, key="members")
        try:
            pred = cls(encoder, int(obj["hidden_size"]), int(obj["n_layers"]),
                       n_members=len(members), extra_features=obj["extra_features"],
                       n_classes=int(obj.get("n_classes", 1000)))
        except ValueError as err:
            raise CheckpointError(str(err), file=path) from None
        norm = obj["feature_norm"]
        for name, buf in (("mean", pred.feature_mean), ("std", pred.feature_std)):
            t = torch.as_tensor(norm[name], dtype=torch.float64)
            if t.shape != buf.shape:
                raise CheckpointError("wrong shape", file=path, key=f"feature_norm.{name}",
                                      value=tuple(t.shape))
            buf.copy_(t)
        for i, (member, sd) in enumerate(zip(pred.members, members)):
            cls._load_member(_as_member(member), sd, path, f"members[{i}]")
        pred.info = dict(obj.get("info", {}))
        pred.recorded_model = None if recorded is None else str(recorded)
        pred.n_classes_recorded = "n_classes" in obj  # older checkpoints: the search decides
        return pred

    @staticmethod
    def _load_member(member: AccuracyMLP, sd: Mapping[str, torch.Tensor], path: Path,
                     key: str) -> None:
        try:
            member.load_state_dict(dict(sd), strict=True)
        except (RuntimeError, KeyError, TypeError) as err:
            first = " ".join(str(err).split())[:200]
            raise CheckpointError(f"state dict does not fit the predictor ({first})", file=path,
                                  key=key) from None

