"""``python -m moofa.deploy``: an exported subnet as int8 and fp32 ExecuTorch programs, with the
int8 top-1 measured in the ExecuTorch runtime.

    python -m moofa.deploy --subnet <subnet.pth.tar | constraint folder> --config C [--model_config_path P] --output DIR
        [--target xnnpack|ethos-u55-128|... (repeatable; default deploy.targets)]

``--subnet`` is a ``subnet.pth.tar`` written by the search (``search_config.export``) or the search
result folder holding it (as fine-tuning's ``--subnet``); the data
(``args.dataset``, ``args.data_path``), the memory model (``memory:``) and the calibration size
(``deploy.calibration_images``) come from the run config. Writes ``DIR/subnet_int8.pte``,
``DIR/subnet_fp32.pte`` and ``DIR/deploy.json`` (see :mod:`moofa.deploy`). Needs the optional
extra: ``pip install -e '.[deploy]'``. An Ethos-U ``--target`` writes ``DIR/subnet_<target>.pte``,
Vela's reports in ``DIR/vela_<target>/`` and Vela's estimates in ``deploy.json["targets"]``
(needs ``pip install -e '.[ethos-u]'``). Bad input, or a program that is not one delegate call:
one ``error:`` line, exit status 2.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from moofa.cli.common import ArgParser, run_cli
from moofa.config import load_config
from moofa.deploy import deploy_exported, require_executorch, target_program_name
from moofa.deploy.ethosu import check_target
from moofa.run import SubnetSource


def _parser() -> ArgParser:
    p = ArgParser(prog="python -m moofa.deploy", description=__doc__.split("\n\n")[0])
    p.add_argument("--subnet", required=True, help="exported subnet (subnet.pth.tar of a search, or its "
                   "constraint_<int>/ folder)")
    p.add_argument("--config", required=True, help="run config YAML (data, memory:, deploy:)")
    p.add_argument("--model_config_path", default=None, help="model_configs.yaml to validate the config against")
    p.add_argument("--output", required=True, help="folder for subnet_int8.pte, subnet_fp32.pte, deploy.json")
    p.add_argument("--target", action="append", default=None,
                   help="xnnpack or an Ethos-U configuration such as ethos-u55-128 (repeatable; "
                        "default: the config's deploy.targets)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    ns = _parser().parse_args(argv)

    cfg = load_config(ns.config, ns.model_config_path)
    subnet = SubnetSource.resolve(ns.subnet).export_file()
    require_executorch()
    targets = [check_target(t, key="--target") for t in ns.target] if ns.target else None
    info = deploy_exported(subnet, cfg, ns.output, progress=not ns.no_progress, targets=targets)
    for t, f in (info.targets or {}).items():
        print(f"{t} ({f['system_config']}, {f['memory_mode']}): SRAM {f['sram_bytes']:,} B, Flash "
              f"{f['flash_bytes']:,} B, {f['inference_ms']:.3f} ms, {f['delegate_calls']} delegate call "
              f"(Vela's estimates, not silicon); wrote {Path(ns.output) / target_program_name(t)}")
    if info.int8_accuracy is None:  # Ethos-U targets only
        return 0
    print(f"int8 top-1 {100 * info.int8_accuracy:.2f}% (ExecuTorch runtime) vs fp32 "
          f"{100 * (info.fp32_accuracy or 0.0):.2f}% (PyTorch) on {info.n_images or 0:,} test images; "
          f"int8 program {info.pte_bytes or 0:,} bytes, planned activations {info.runtime_memory_bytes or 0:,} "
          f"bytes (analytic peak {info.analytic_peak_memory or 0:,} {info.analytic_unit}); wrote {ns.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
