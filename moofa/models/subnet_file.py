"""Export of a found subnet as a standalone static network, loadable without the supernet.

File layout (``torch.save``; loads with ``weights_only=True``)::

    {"format": "moofa-static-subnet/1",
     "state_dict": {...},                  # the static MobileNetV3 (get_active_subnet) weights
     "config": {"arch": {"ks", "e", "d", "image_size"},
                "model": name, "model_class": ..., "ks_list": [...], "expand_list": [...],
                "depth_list": [...], "image_sizes": [...], "widths": [9 ints],
                "n_classes": int, "dropout": float, "bn_momentum": float, "bn_eps": float}}

:func:`load_exported` rebuilds the network with :meth:`MobileNetV3.build` from ``config`` alone
and loads the weights (strict). With the optional ``onnx`` package installed the same network is
also written as ONNX (input ``image`` N x 3 x R x R, output ``logits``, dynamic batch).
"""
from __future__ import annotations

import copy
import importlib.util
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moofa.errors import CheckpointError
from moofa.io import atomic_path, atomic_save
from moofa.models.layers import LinearLayer, MobileNetV3
from moofa.models.spec import ModelSpec, SubnetConfig, model_spec_from_entry
from moofa.models.supernet import Supernet, load_checkpoint_file

EXPORT_FORMAT = "moofa-static-subnet/1"
log = logging.getLogger(__name__)


def onnx_available() -> bool:
    """Whether the optional ``onnx`` package is importable."""
    return importlib.util.find_spec("onnx") is not None


def export_config(spec: ModelSpec, subnet: SubnetConfig, n_classes: int, dropout: float,
                  bn_momentum: float, bn_eps: float) -> dict[str, Any]:
    """The ``config`` entry of an export: the arch and everything needed to rebuild the net."""
    return {"arch": subnet.to_dict(), "model": spec.name, "model_class": spec.model_class,
            "ks_list": list(spec.ks_list), "expand_list": list(spec.expand_list),
            "depth_list": list(spec.depth_list), "image_sizes": list(spec.image_sizes),
            "widths": list(spec.table.widths), "n_classes": int(n_classes), "dropout": float(dropout),
            "bn_momentum": float(bn_momentum), "bn_eps": float(bn_eps)}


def head_settings(net: nn.Module) -> tuple[int, float, float, float]:
    """(n_classes, dropout, bn momentum, bn eps) of a supernet or static network."""
    clf = net.get_submodule("classifier")
    linear = clf.linear if isinstance(clf, LinearLayer) else clf
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"classifier: expected a Linear or LinearLayer, got {type(clf).__name__}")
    drop = getattr(clf, "dropout", None)
    p = float(drop.p) if isinstance(drop, nn.Dropout) else 0.0
    bn = next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    if bn.momentum is None:  # a cumulative average: the export records a number
        raise ValueError("head_settings: BatchNorm momentum None cannot be recorded")
    return int(linear.out_features), p, float(bn.momentum), float(bn.eps)


def export_subnet(supernet: Supernet, subnet: SubnetConfig, path: str | Path,
                  with_onnx: bool = True) -> list[Path]:
    """Activate ``subnet`` on ``supernet`` (its BN statistics as they are: re-calibrate first),
    extract the static subnet and write ``path`` (atomic), plus ``<path stem>.onnx`` when
    ``with_onnx`` and onnx is installed. Returns the written paths."""
    spec = supernet.spec
    subnet = SubnetConfig.from_dict(subnet).validate(spec)
    supernet.set_subnet(subnet)
    return export_static(supernet.get_active_subnet(), spec, subnet, path, with_onnx)


def export_static(net: nn.Module, spec: ModelSpec, subnet: SubnetConfig, path: str | Path,
                  with_onnx: bool = True) -> list[Path]:
    """Write the static network ``net`` (arch ``subnet`` of ``spec``, e.g. a fine-tuned subnet) in
    the export format (atomic; a CPU copy of its weights), plus ONNX as :func:`export_subnet`."""
    subnet = SubnetConfig.from_dict(subnet).validate(spec)
    n_classes, dropout, momentum, eps = head_settings(net)
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    data = {"format": EXPORT_FORMAT, "state_dict": state,
            "config": export_config(spec, subnet, n_classes, dropout, momentum, eps)}
    path = atomic_save(data, path)
    written = [path]
    if with_onnx:
        net = copy.deepcopy(net).cpu().eval()  # the caller's network stays where and as it is
        onnx_path = export_onnx(net, subnet.image_size, path.with_suffix("").with_suffix(".onnx"))
        if onnx_path is not None:
            written.append(onnx_path)
    return written


def export_onnx(net: nn.Module, image_size: int, path: str | Path) -> Path | None:
    """Write ``net`` (eval mode, CPU) as ONNX (opset 17, dynamic batch); None when the optional
    ``onnx`` package is not installed."""
    if not onnx_available():
        log.info("onnx is not installed: skipping the ONNX export (pip install 'moofa[onnx]')")
        return None
    import onnx

    path = Path(path)
    net = net.cpu().eval()
    dummy = torch.zeros(1, 3, int(image_size), int(image_size))
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():  # the TorchScript exporter needs no onnxscript; it warns
            warnings.simplefilter("ignore", DeprecationWarning)  # that torch.export is the default
            torch.onnx.export(net, (dummy,), str(tmp), input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=17, dynamo=False)
        onnx.checker.check_model(str(tmp))
    return path


def _spec_of(config: Mapping[str, Any], path: Path) -> ModelSpec:
    entry = {"model_class": config["model_class"], "ks_list": config["ks_list"],
             "expand_list": config["expand_list"], "depth_list": config["depth_list"],
             "image_size": config["image_sizes"], "widths": config["widths"]}
    try:
        return model_spec_from_entry(str(config["model"]), entry, str(path))
    except ValueError as err:
        raise CheckpointError(f"export config does not describe a model ({err})", file=path) from None


def load_exported(path: str | Path, map_location: str | torch.device = "cpu") -> MobileNetV3:
    """Rebuild an exported subnet from its file alone (no supernet, no model_configs.yaml).
    CheckpointError names the file when it is not an export or its weights do not fit."""
    path = Path(path)
    data = load_checkpoint_file(path, map_location)
    if data.get("format") != EXPORT_FORMAT or "config" not in data or "state_dict" not in data:
        raise CheckpointError(f"not a moofa subnet export (format {data.get('format')!r}, "
                              f"expected {EXPORT_FORMAT!r})", file=path)
    c = data["config"]
    try:
        spec = _spec_of(c, path)
        cfg = SubnetConfig.from_dict(c["arch"]).validate(spec)
        net = MobileNetV3.build(spec, cfg, int(c["n_classes"]), dropout=float(c["dropout"]),
                                bn_momentum=float(c["bn_momentum"]), bn_eps=float(c["bn_eps"]))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"bad export config ({type(err).__name__}: {err})", file=path) from None
    try:
        net.load_state_dict(data["state_dict"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"weights do not fit the exported arch ({str(err).splitlines()[0]})",
                              file=path) from None
    net.subnet_config = cfg  # the exported arch (ks, e, d, image_size)
    net.model_spec = spec  # the model it was cut from (as exported)
    return net.to(map_location).eval()
