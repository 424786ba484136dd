"""``python -m moofa.profile``: peak memory, MMACs, parameters and the per-layer memory table of
one subnet, plus the memory histogram plot (PNG and PDF).

    python -m moofa.profile --model MOOFA_V3 --config subnet.json [--model_config_path P]
        [--output DIR] [--bytes-per-element {1,2,4}] [--count-head] [--activations-only]
        [--inplace-depthwise] [--constraint C] [--image-size R] [--n-classes N]

``--config`` is a JSON file holding ``{ks, e, d, image_size}`` (or a search ``info.json``, whose
``config`` field is used), or that JSON object itself inline. Writes
``DIR/memory_histogram.{png,pdf}`` and ``DIR/profile.json``. Bad input: one ``error:`` line,
exit status 2.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from moofa.cli.common import ArgParser, run_cli
from moofa.efficiency import (
    MemoryOptions,
    count_params,
    flops,
    memory_layers,
)
from moofa.efficiency.plots import plot_memory_histogram
from moofa.errors import ConfigError, MoofaInputError
from moofa.io import write_json
from moofa.models.spec import SubnetConfig, get_model_spec


def _parser() -> ArgParser:
    p = ArgParser(prog="python -m moofa.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model name from model_configs.yaml (e.g. MOOFA_V3)")
    p.add_argument("--config", required=True, help="subnet JSON file, info.json, or inline JSON")
    p.add_argument("--model_config_path", default=None, help="model_configs.yaml (default: built-in)")
    p.add_argument("--output", default=".", help="folder for memory_histogram.png/.pdf and profile.json")
    p.add_argument("--bytes-per-element", type=int, default=1, choices=(1, 2, 4),
                   help="1 int8 (= elements, the reference), 2 fp16, 4 fp32")
    p.add_argument("--count-head", action="store_true", help="also count feature mix and classifier")
    p.add_argument("--activations-only", action="store_true", help="do not count weights (MCUNet)")
    p.add_argument("--inplace-depthwise", action="store_true", help="DW output reuses its input buffer")
    p.add_argument("--constraint", type=float, default=None, help="draw this limit on the plot")
    p.add_argument("--image-size", type=int, default=None, help="override the config's image_size")
    p.add_argument("--n-classes", type=int, default=1000, help="classifier width (default 1000)")
    return p


def read_subnet_config(value: str, image_size: int | None = None) -> SubnetConfig:
    """A SubnetConfig from a JSON file path or an inline JSON object; ConfigError names the file,
    key and value."""
    source = "--config"
    if value.lstrip().startswith("{"):
        text = value
    else:
        source = value
        try:
            text = Path(value).read_text()
        except OSError as err:
            raise ConfigError(f"cannot read subnet config ({err.strerror})", file=value) from None
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"invalid JSON ({err.msg} at line {err.lineno})", file=source) from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict) and "ks" not in data:
        data = data["config"]
    if image_size is not None and isinstance(data, dict):
        data = {**data, "image_size": image_size}
    try:
        return SubnetConfig.from_dict(data)
    except ValueError as err:
        raise ConfigError(str(err), file=source) from None


def format_table(layers: Sequence[Any], unit: str) -> str:
    """The per-layer table: layer, in, out, weights, residual, total (``unit``), peak marked."""
    peak = max(layer.total for layer in layers)
    head = ("layer", "in", "out", "weights", "residual", f"total ({unit})")
    rows = [head] + [(layer.name + (" *" if layer.total == peak else ""), f"{layer.inp:,}", f"{layer.out:,}",
                      f"{layer.weights:,}", f"{layer.residual:,}", f"{layer.total:,}") for layer in layers]
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    lines = ["  ".join(r[0].ljust(widths[0]) if c == 0 else r[c].rjust(widths[c])
                       for c in range(len(head))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    try:
        spec = get_model_spec(ns.model, ns.model_config_path)
    except ValueError as err:
        raise MoofaInputError(str(err), key="--model") from None
    subnet = read_subnet_config(ns.config, ns.image_size)
    try:
        subnet.validate(spec)
        options = MemoryOptions(bytes_per_element=ns.bytes_per_element, count_head=ns.count_head,
                                count_weights=not ns.activations_only,
                                inplace_depthwise=ns.inplace_depthwise, n_classes=ns.n_classes)
    except ValueError as err:
        raise ConfigError(str(err), file=ns.config if not ns.config.lstrip().startswith("{") else "--config") from None
    unit = options.unit if options.is_reference else options.describe()
    layers = memory_layers(spec, subnet, options)
    peak = max(layer.total for layer in layers)
    mmacs = flops(spec, subnet, ns.n_classes)
    params = count_params(spec, subnet, ns.n_classes)
    print(f"model {spec.name}  image_size {subnet.image_size}  d {list(subnet.d)}")
    print(f"peak memory: {peak:,} {unit}")
    print(f"MMACs: {mmacs:.6f}")
    print(f"parameters: {params:,}")
    print(format_table(layers, unit))
    out = Path(ns.output)
    out.mkdir(parents=True, exist_ok=True)
    paths = plot_memory_histogram([layer.total for layer in layers], out / "memory_histogram", ns.constraint,
                                  f"{spec.name} @ {subnet.image_size}px: peak {peak:,} {unit}",
                                  labels=[layer.name for layer in layers], unit=unit)
    report = {"model": spec.name, "config": subnet.to_dict(), "peak_memory": peak, "unit": options.unit,
              "memory_model": options.to_dict(), "mmacs": mmacs, "params": params,
              "layers": [layer._asdict() for layer in layers]}
    write_json(out / "profile.json", report, indent=1)
    print("wrote " + ", ".join(str(p) for p in [*paths, out / "profile.json"]))
    return 0


def run() -> int:
    """Console-script entry point: :func:`main` with the one-line error handling."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
