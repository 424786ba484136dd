"""``python -m moofa.deploy``: an exported subnet as int8 and fp32 ExecuTorch programs, with the
int8 top-1 measured in the ExecuTorch runtime.

    python -m moofa.deploy --subnet <subnet.pth.tar | constraint folder> --config C [--model_config_path P] --output DIR

``--subnet`` is a ``subnet.pth.tar`` written by the search (``search_config.export``) or the search
result folder holding it (as fine-tuning's ``--subnet``); the data
(``args.dataset``, ``args.data_path``), the memory model (``memory:``) and the calibration size
(``deploy.calibration_images``) come from the run config. Writes ``DIR/subnet_int8.pte``,
``DIR/subnet_fp32.pte`` and ``DIR/deploy.json`` (see :mod:`moofa.deploy`). Needs the optional
extra: ``pip install -e '.[deploy]'``. Bad input: one ``error:`` line, exit status 2.
"""
from __future__ import annotations

from typing import Sequence

from moofa.cli.common import ArgParser, run_cli
from moofa.config import load_config
from moofa.deploy import deploy_exported, require_executorch
from moofa.run import SubnetSource


def _parser() -> ArgParser:
    p = ArgParser(prog="python -m moofa.deploy", description=__doc__.split("\n\n")[0])
    p.add_argument("--subnet", required=True, help="exported subnet (subnet.pth.tar of a search, or its "
                   "constraint_<int>/ folder)")
    p.add_argument("--config", required=True, help="run config YAML (data, memory:, deploy:)")
    p.add_argument("--model_config_path", default=None, help="model_configs.yaml to validate the config against")
    p.add_argument("--output", required=True, help="folder for subnet_int8.pte, subnet_fp32.pte, deploy.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    cfg = load_config(args.config, args.model_config_path)
    subnet = SubnetSource.resolve(args.subnet).export_file()
    require_executorch()
    info = deploy_exported(subnet, cfg, args.output, progress=not args.no_progress)
    print(f"int8 top-1 {100 * info['int8_accuracy']:.2f}% (ExecuTorch runtime) vs fp32 "
          f"{100 * info['fp32_accuracy']:.2f}% (PyTorch) on {info['n_images']:,} test images; "
          f"int8 program {info['pte_bytes']:,} bytes, planned activations {info['runtime_memory_bytes']:,} "
          f"bytes (analytic peak {info['analytic_peak_memory']:,} {info['analytic_unit']}); wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
