"""Search under an Ethos-U chip's limits (``search_config.target``, ``max_latency_ms``,
``max_sram_bytes``, ``max_flash_bytes``).

During the search the limits are predicted by the target's latency table
(:mod:`moofa.latency`): they join the MMACs and parameter limits
(:class:`moofa.efficiency.limits.Quantity`), so every candidate, child and repair meets them. The
answer is then compiled for the target and **Vela's** figures are the ones reported; when they
break a limit, the next candidate is compiled, at most ``search_config.compile_tries`` in all.
An answer the compiler says does not fit is never returned: when none of the tries fits, the
budget fails with an error naming the limits.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from moofa.config import SearchSettings
from moofa.efficiency.limits import Limits, Quantity, fits_batch
from moofa.errors import ConfigError, InfeasibleConstraintError
from moofa.models.spec import ModelSpec, SubnetConfig
from moofa.records import TargetFigures

log = logging.getLogger(__name__)
TARGET_KEYS = ("max_latency_ms", "max_sram_bytes", "max_flash_bytes")
# Vela's figure that each limit applies to
FIGURE_OF = {"max_latency_ms": "inference_ms", "max_sram_bytes": "sram_bytes", "max_flash_bytes": "flash_bytes"}


def _chip_limits(sc: SearchSettings) -> dict[str, float | None]:
    """``{key: value}`` of the chip limits (:data:`TARGET_KEYS`; ms, bytes; None = no limit)."""
    return {"max_latency_ms": sc.max_latency_ms, "max_sram_bytes": sc.max_sram_bytes,
            "max_flash_bytes": sc.max_flash_bytes}


def target_table(sc: SearchSettings, spec: ModelSpec, file: Any = None) -> Any:
    """The latency table of the search's target (``search_config.latency_table`` or the shipped
    one), or None without a target; ConfigError when a chip limit is set without a target."""
    target = sc.target
    if target is None:
        for k, v in _chip_limits(sc).items():
            if v is not None:
                raise ConfigError("needs search_config.target (an Ethos-U configuration such as ethos-u55-128)",
                                  file=file, key=f"search_config.{k}", value=v)
        return None
    from moofa.latency import load_table

    table = load_table(spec.name, target, sc.latency_table)
    if table.target != target:
        raise ConfigError(f"the latency table is for {table.target}, not {target}", file=file,
                          key="search_config.latency_table", value=sc.latency_table)
    return table


def with_target_limits(limits: Limits, sc: SearchSettings, spec: ModelSpec, file: Any = None) -> Limits:
    """``limits`` plus the predicted chip limits of ``search_config`` (none without a target)."""
    table = target_table(sc, spec, file)
    if table is None:
        return limits
    qs = []
    if sc.max_latency_ms is not None:
        qs.append(Quantity("latency_ms", "search_config.max_latency_ms", sc.max_latency_ms,
                           lambda s, cs: table.predict_ms_batch(cs, s), f"ms (predicted, {table.target})"))
    if sc.max_sram_bytes is not None:
        qs.append(Quantity("sram_bytes", "search_config.max_sram_bytes", float(sc.max_sram_bytes),
                           lambda s, cs: table.predict_sram_batch(cs, s), f"bytes of SRAM (predicted, {table.target})"))
    if sc.max_flash_bytes is not None:
        qs.append(Quantity("flash_bytes", "search_config.max_flash_bytes", float(sc.max_flash_bytes),
                           lambda s, cs: table.predict_flash_batch(cs, s),
                           f"bytes of Flash (predicted, {table.target})"))
    return limits.with_quantities(*qs)


def predicted_figures(table: Any, config: SubnetConfig) -> dict[str, Any]:
    """The table's predictions of Vela's figures for ``config`` (ms, bytes)."""
    return {"inference_ms": table.predict_ms(config), "sram_bytes": table.predict_sram_bytes(config),
            "flash_bytes": table.predict_flash_bytes(config)}


def broken(sc: SearchSettings, figures: TargetFigures) -> dict[str, float]:
    """``{limit key: Vela's value}`` of each chip limit the compiled figures break."""
    return {k: figures.figure(FIGURE_OF[k]) for k, limit in _chip_limits(sc).items()
            if limit is not None and figures.figure(FIGURE_OF[k]) > limit}


def compile_answer(spec: ModelSpec, sc: SearchSettings, table: Any, candidates: Sequence[SubnetConfig],
                   limits: Limits, net_of: Callable[[SubnetConfig], torch.nn.Module],
                   calibration_of: Callable[[int], list], out: Path, system_config: str | None = None,
                   memory_mode: str | None = None) -> tuple[SubnetConfig, dict[str, Any]]:
    """Compile the candidates in order (those meeting ``limits``; at most ``compile_tries``) until
    Vela's figures meet the chip limits; returns the config and ``info.json``'s ``target`` record
    (predicted and compiled figures side by side, every try). InfeasibleConstraintError when no
    try fits."""
    from moofa.deploy import compile_target

    target, tries = sc.target, sc.compile_tries
    if target is None:  # the sweep compiles only for a target
        raise ConfigError("no Ethos-U target to compile for", key="search_config.target", value=None)
    seen, pool = set(), []
    for c in candidates:
        k = (c.ks, c.e, c.d, c.image_size)
        if k not in seen and fits_batch(spec, [c], limits)[0]:
            seen.add(k)
            pool.append(c)
    record: dict[str, Any] = {"target": target, "tries": [], "max_tries": tries,
                              "limits": _chip_limits(sc),
                              "estimate": "compiled: Vela's compile-time estimates (not measurements on silicon); "
                                          "predicted: the latency table"}
    for i, cfg in enumerate(pool[:tries]):
        work = out / f"target_try{i}"
        figs = compile_target(net_of(cfg), spec, cfg, calibration_of(cfg.image_size), target, work,
                              system_config, memory_mode)
        read = TargetFigures.read(figs)
        if read is None:  # compile_target always returns Vela's figures
            raise RuntimeError(f"no Vela figures from the {target} compile in {work}")
        bad = broken(sc, read)
        record["tries"].append({"config": cfg.to_dict(), "predicted": predicted_figures(table, cfg),
                                "compiled": {k: figs[k] for k in ("sram_bytes", "flash_bytes", "inference_ms",
                                                                  "cycles", "macs", "delegate_calls")},
                                "broken": bad, "folder": work.name})
        log.info("target %s, try %d: SRAM %s B, Flash %s B, %.3f ms (Vela) vs predicted %s%s", target, i + 1,
                 f"{figs['sram_bytes']:,}", f"{figs['flash_bytes']:,}", figs["inference_ms"],
                 record["tries"][-1]["predicted"], f"; breaks {bad}" if bad else "")
        if not bad:
            record.update(predicted=record["tries"][-1]["predicted"], compiled=figs, folder=work.name)
            return cfg, record
    why = "; ".join(f"try {i + 1}: {t['broken']}" for i, t in enumerate(record["tries"]))
    raise InfeasibleConstraintError(
        f"none of the {len(record['tries'])} best candidates fits {target} once compiled ({why}); "
        f"loosen the limits or raise compile_tries", key="search_config.target", value=target)


def random_weights_net(spec: ModelSpec, n_classes: int) -> Callable[[SubnetConfig], torch.nn.Module]:
    """Static subnets of a supernet with ``torch.manual_seed(0)`` default weights (a predictor-only
    search has no trained weights; Vela's figures hardly depend on the weights' values)."""
    from moofa.models import build_supernet

    torch.manual_seed(0)
    net = build_supernet(spec, n_classes=n_classes)

    def of(subnet: SubnetConfig) -> torch.nn.Module:
        net.set_subnet(subnet)
        return net.get_active_subnet().eval()
    return of
