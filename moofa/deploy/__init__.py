"""int8 deployment of a found subnet as ExecuTorch programs, with accuracy measured in the
ExecuTorch runtime (``python -m moofa.deploy``; ``search_config.export: [executorch]``).

:func:`deploy_network` writes into one folder:

* ``subnet_int8.pte``: PT2E int8 (XNNPACK quantizer), XNNPACK-delegated program;
* ``subnet_fp32.pte``: the fp32 program on the portable kernels (every activation planned);
* ``deploy.json``: ``int8_accuracy`` (top-1 fraction of the int8 program run by
  ``executorch.runtime`` on every test image, the images of ``real_accuracy``), ``fp32_accuracy``
  (the same network in fp32 PyTorch on the same images), ``n_images``, ``pte_bytes`` (int8 program
  size), ``runtime_memory_bytes`` (int8 program's planned activation arena, excluding the graph
  input/output and XNNPACK's internal scratch), ``fp32_pte_bytes``, ``fp32_runtime_memory_bytes``
  (the portable program's whole planned arena), ``int8_delegate_calls`` and
  ``int8_undelegated_ops`` (1 and ``{}`` when XNNPACK runs the whole network), the analytic peaks
  beside them, logit checks of both programs against PyTorch, timings and the inputs it was
  computed from.

With Ethos-U targets (``deploy.targets``, ``--target``), each target ``T`` also gets
``subnet_<T>.pte`` (quantised with the Arm quantiser, one Ethos-U delegate call), Vela's reports in
``vela_<T>/`` and ``deploy.json["targets"][T]``: ``sram_bytes``, ``flash_bytes``, ``cycles``,
``inference_ms``, ``macs``, ``delegate_calls``, ``system_config``, ``memory_mode``,
``vela_version``, ``compile_seconds`` (Vela's compile-time estimates, not measurements on
silicon; :mod:`moofa.deploy.ethosu`), and ``arena_bytes``, the arena Vela was given (the
subnet's Ethos-U activations peak in ``Shared_Sram`` mode, else null;
docs/ethosu.md#the-sram-arena). A program that is not one delegate call is an error naming the
operators left on the CPU.

The network is quantised once per subnet: a folder whose ``deploy.json`` records the same inputs
(the subnet file's hash, calibration settings, test data, executorch version) is reused.
executorch itself is imported only when a program is built (the optional ``deploy`` extra).
"""
from __future__ import annotations

import importlib.metadata
import logging
import shutil
import time
from collections.abc import Iterable, Sized
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from moofa.config import AnyArgs, RunConfig, last_task_args
from moofa.data import DataProvider
from moofa.data.samplers import evenly_spaced
from moofa.data.transforms import test_transform
from moofa.deploy.ethosu import ARENA, LOWERING, XNNPACK, check_target, ethosu_available, is_ethosu
from moofa.deploy.programs import (
    INSTALL_HINT,
    RECIPE_VERSION,
    ProgramRunner,
    executorch_available,
    fp32_program,
    int8_program,
    quantize,
    require_executorch,
)
from moofa.efficiency import MemoryOptions, peak_memory
from moofa.errors import CheckpointError, ConfigError
from moofa.fingerprint import Inputs, Policy, resolve, sha256_file
from moofa.io import atomic_path
from moofa.models.spec import ModelSpec, SubnetConfig
from moofa.models.subnet_file import head_settings, load_exported
from moofa.records import DeployRecord
from moofa.run import expected_n_classes
from moofa.stats import pack_bits, paired_difference

log = logging.getLogger(__name__)
DEPLOY_NAME, INT8_NAME, FP32_NAME = "deploy.json", "subnet_int8.pte", "subnet_fp32.pte"
CHECK_IMAGES = 16  # images on which both programs' logits are compared with PyTorch's

__all__ = ["deploy_network", "deploy_exported", "executorch_available", "require_executorch",
           "ethosu_available", "target_program_name", "compile_target", "INSTALL_HINT", "DEPLOY_NAME", "INT8_NAME",
           "FP32_NAME", "file_sha256"]


file_sha256 = sha256_file  # the name this module has exported


def _single_process_provider(args: AnyArgs, image_size: int) -> Any:
    """A rank-0-of-1 data provider: the whole test split, whatever the job's world size."""
    return DataProvider(args, [int(image_size)], rank=0, world_size=1)


def calibration_batches(provider: Any, image_size: int, n_images: int, batch_size: int = 32) -> list[torch.Tensor]:
    """``n_images`` training images (evenly spaced over the training split, held-out images
    excluded) with the test transform at ``image_size``, in batches of ``batch_size``."""
    pool = list(provider.train_indices)
    idx = [pool[i] for i in evenly_spaced(len(pool), int(n_images))]
    ds = provider._view(provider.train_folder, test_transform, int(image_size))  # noqa: SLF001
    loader = DataLoader(Subset(ds, idx), batch_size=batch_size, shuffle=False, num_workers=0)
    return [images for images, _ in loader]


def _write_bytes(path: Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return path


def target_program_name(target: str) -> str:
    """File name of a target's program: ``subnet_<target>.pte``."""
    return f"subnet_{target}.pte"


def _program_names(targets: Iterable[str]) -> list[str]:
    targets = list(targets)
    names = [INT8_NAME, FP32_NAME] if XNNPACK in targets else []
    return names + [target_program_name(t) for t in targets if is_ethosu(t)]


def _reuse(out: Path, fp: Inputs, targets: list[str]) -> DeployRecord | None:
    """The deploy record in ``out`` when its programs of ``targets`` exist and were built from the
    inputs ``fp``; None otherwise."""
    path = out / DEPLOY_NAME
    names = _program_names(targets)
    if not path.is_file() or not all((out / n).is_file() for n in names):
        return None
    try:
        data = DeployRecord.read(path)
    except ConfigError:  # a newer moofa's record: stop rather than overwrite it
        raise
    except (OSError, ValueError):  # unreadable: built again
        return None
    recorded = Inputs.unrecorded() if data.fingerprint is None else Inputs.of(data.fingerprint)
    # programs of other inputs are built again over (the caller tries the next folder first)
    reusable = resolve("these programs", recorded, fp, Policy.REDO, file=path).reuse
    return data if reusable else None


@torch.no_grad()
def _measure(net: nn.Module, quantized: nn.Module, int8: ProgramRunner, fp32: ProgramRunner,
             loader: DataLoader, progress: bool) -> dict[str, Any]:
    """Top-1 of the int8 program (runtime, one image at a time) and of the fp32 network
    (PyTorch) on every image of ``loader``, plus logit checks on the first CHECK_IMAGES."""
    n = hit8 = hit32 = agree = 0
    ok8: list[bool] = []
    ok32: list[bool] = []
    diff_q = diff_fp32 = scale = 0.0
    seconds = 0.0
    total = len(loader.dataset) if isinstance(loader.dataset, Sized) else None  # map-style: sized
    bar = tqdm(total=total, desc="int8 top-1 (ExecuTorch)", unit="img",
               disable=not progress, dynamic_ncols=True, mininterval=2.0)
    for images, labels in loader:
        ref = net(images)
        ok32 += (ref.argmax(1) == labels).tolist()
        hit32 += int((ref.argmax(1) == labels).sum())
        for j in range(len(labels)):
            x = images[j:j + 1]
            t0 = time.perf_counter()
            y = int8(x)
            seconds += time.perf_counter() - t0
            ok8.append(int(y.argmax(1)) == int(labels[j]))
            hit8 += int(ok8[-1])
            if n < CHECK_IMAGES:
                q = quantized(x)
                diff_q = max(diff_q, float((y - q).abs().max()))
                agree += int(int(y.argmax(1)) == int(q.argmax(1)))
                diff_fp32 = max(diff_fp32, float((fp32(x) - ref[j:j + 1]).abs().max()))
                scale = max(scale, float(ref[j].abs().max()))
            n += 1
            bar.update()
    bar.close()
    checked = min(n, CHECK_IMAGES)
    per_image = {"n_images": n, "int8_accuracy": pack_bits(ok8), "fp32_accuracy": pack_bits(ok32)}
    versus = paired_difference(ok8, ok32) if n else None
    return {"int8_accuracy": hit8 / max(n, 1), "fp32_accuracy": hit32 / max(n, 1), "n_images": n,
            "per_image": per_image, "int8_minus_fp32": None if versus is None else versus.to_dict(),
            "int8_ms_per_image": 1e3 * seconds / max(n, 1),
            "checks": {"n_images": checked, "int8_vs_pt2e_max_abs_diff": diff_q,
                       "int8_vs_pt2e_top1_agreement": agree / max(checked, 1),
                       "fp32_program_vs_pytorch_max_abs_diff": diff_fp32,
                       "pytorch_max_abs_logit": scale}}


def deploy_network(net: nn.Module, spec: ModelSpec, subnet: SubnetConfig, args: AnyArgs,
                   out_dir: str | Path, *, calibration_images: int = 256, per_channel: bool = True,
                   memory_options: MemoryOptions | None = None, subnet_sha256: str | None = None,
                   progress: bool = True, reuse_from: Iterable[str | Path] = (),
                   targets: Iterable[str] = (XNNPACK,), system_config: str | None = None,
                   memory_mode: str | None = None) -> DeployRecord:
    """Quantise, lower and measure the static network ``net`` (architecture ``subnet`` of
    ``spec``) on the data of the run args ``args``; writes the folder described in the module
    docstring and returns deploy.json's content. A folder of ``reuse_from`` (or ``out_dir``
    itself) that holds the programs of the same inputs is copied instead (budgets whose answer
    is the same subnet file). ``targets``: ``xnnpack`` (int8 + fp32 programs, measured top-1)
    and/or Ethos-U configurations (``system_config`` / ``memory_mode``: Vela's, None = ExecuTorch's
    default per target)."""
    require_executorch()
    targets = list(dict.fromkeys(check_target(t) for t in targets))
    out = Path(out_dir)
    subnet = SubnetConfig.from_dict(subnet).validate(spec)
    r = subnet.image_size
    provider = _single_process_provider(args, r)
    fp: dict[str, Any] = {"subnet_sha256": subnet_sha256, "config": subnet.to_dict(),
                          "calibration_images": int(calibration_images),
                          "per_channel": bool(per_channel), "data_path": str(provider.root),
                          "n_test": len(provider.test_folder),
                          "executorch": importlib.metadata.version("executorch"), "recipe": RECIPE_VERSION}
    if targets != [XNNPACK]:  # the default's fingerprint stays as before
        fp.update(targets=targets, system_config=system_config, memory_mode=memory_mode)
        if any(is_ethosu(t) for t in targets):
            fp["vela"] = importlib.metadata.version("ethos-u-vela") if ethosu_available() else None
            fp["lowering"] = LOWERING  # programs lowered another way are compiled again
            fp["arena"] = ARENA  # and so are programs compiled with another arena
    if subnet_sha256 is not None:
        for folder in dict.fromkeys([out, *map(Path, reuse_from)]):
            if (done := _reuse(folder, Inputs.of(fp), targets)) is None:
                continue
            if folder != out:
                for name in _program_names(targets):
                    _write_bytes(out / name, (folder / name).read_bytes())
                for t in done.targets or {}:
                    if (folder / f"vela_{t}").is_dir():
                        shutil.copytree(folder / f"vela_{t}", out / f"vela_{t}", dirs_exist_ok=True)
                done.write(out / DEPLOY_NAME)
            log.info("deploy: %s already holds these programs (same subnet and settings), reused", folder)
            return done
    net = net.cpu().eval()
    calib = calibration_batches(provider, r, calibration_images)
    opts = memory_options or MemoryOptions()
    if XNNPACK in targets:
        info = _deploy_xnnpack(net, spec, subnet, provider, out, calib, per_channel, opts, progress)
    else:
        info = {"model": spec.name, "config": subnet.to_dict(), "sources": {}, "units": {},
                "calibration_images": sum(len(b) for b in calib)}
    ethos = [t for t in targets if is_ethosu(t)]
    if ethos:
        info["targets"] = _deploy_ethosu(net, spec, subnet, out, calib, ethos, system_config, memory_mode,
                                         provider.test_loader(r))
        info["sources"]["targets"] = ("Vela's compile-time estimates for the target's system configuration "
                                      "(not measurements on silicon); analytic_int8_activations_bytes: moofa's "
                                      "analytic activations-only peak at 1 byte per element; "
                                      "tosa_int8_accuracy: measured, "
                                      "top-1 of the lowered int8 TOSA network run by the TOSA reference model on "
                                      "every test image (an integer reference of the NPU's maths, not the NPU)")
        info["units"].update(sram_bytes="bytes", flash_bytes="bytes", inference_ms="milliseconds",
                             cycles="NPU clock cycles", compile_seconds="seconds")
    record = DeployRecord(**info, fingerprint=fp)
    record.write(out / DEPLOY_NAME)
    return record


def _deploy_ethosu(net: nn.Module, spec: ModelSpec, subnet: SubnetConfig, out: Path, calib: list[torch.Tensor],
                   targets: list[str], system_config: str | None, memory_mode: str | None,
                   loader: Any = None) -> dict[str, Any]:
    """``{target: :func:`compile_target`}`` of each Ethos-U target."""
    return {t: compile_target(net, spec, subnet, calib, t, out, system_config, memory_mode, loader)
            for t in targets}


def compile_target(net: nn.Module, spec: ModelSpec, subnet: SubnetConfig, calib: list[torch.Tensor], t: str,
                   out: Path, system_config: str | None = None, memory_mode: str | None = None,
                   loader: Any = None) -> dict[str, Any]:
    """Quantise (Arm quantiser, calibrated on ``calib``) and lower the static network ``net`` for
    the Ethos-U target ``t``: writes ``out/subnet_<t>.pte`` and ``out/vela_<t>/`` (Vela's CSVs and
    ``out.tosa``); returns Vela's figures (bytes, cycles, ms) with the delegate-call count,
    compile seconds and the analytic int8 activations-only peak. SplitProgramError when it is not one delegate call.
    With ``loader`` (test images) and the TOSA reference model installed, also ``tosa_int8_accuracy``:
    top-1 of the lowered int8 network executed by the reference model (:func:`moofa.deploy.ethosu.tosa_top1`)."""
    from moofa.deploy.ethosu import (
        arena_for,
        default_settings,
        ethosu_program,
        quantize_for,
        reference_model_available,
        require_ethosu,
        tosa_top1,
    )
    from moofa.efficiency.target import int8_activation_bytes

    require_ethosu()
    out = Path(out)
    log.info("deploy: quantising (Arm quantiser) and lowering for %s ...", t)
    t0 = time.perf_counter()
    quantized, _ = quantize_for(net, subnet.image_size, calib, t, system_config, memory_mode)
    arena = arena_for(spec, subnet, memory_mode or default_settings(t)[1])
    prog = ethosu_program(quantized, subnet.image_size, t, out / f".work_{t}", system_config, memory_mode, arena)
    _write_bytes(out / target_program_name(t), prog.program.buffer)
    kept = out / f"vela_{t}"
    shutil.rmtree(kept, ignore_errors=True)
    shutil.copytree(prog.workdir / "output", kept, ignore=shutil.ignore_patterns("*.npz"))
    shutil.copyfile(prog.tosa_path, kept / "out.tosa")
    shutil.rmtree(prog.workdir, ignore_errors=True)
    figs = prog.figures.to_dict()
    found = {**figs, "delegate_calls": prog.program.delegate_calls,
             "compile_seconds": time.perf_counter() - t0, "pte_bytes": prog.program.size,
             "analytic_int8_activations_bytes": int8_activation_bytes(spec, subnet),
             "estimate": "Vela"}
    if loader is not None and reference_model_available():
        acc = tosa_top1(kept / "out.tosa", quantized, loader)
        found.update({k: v for k, v in acc.items() if k != "tosa_correct"},
                     tosa_per_image=pack_bits(acc["tosa_correct"]))
        log.info("deploy: %s: int8 top-1 %.2f%% (TOSA reference model) on %d images", t,
                 100 * acc["tosa_int8_accuracy"], acc["tosa_n_images"])
    log.info("deploy: %s: SRAM %s B, Flash %s B, %.3f ms (Vela's estimates, %s, %s)", t,
             f"{figs['sram_bytes']:,}", f"{figs['flash_bytes']:,}", figs["inference_ms"],
             figs["system_config"], figs["memory_mode"])
    return found


def _deploy_xnnpack(net: nn.Module, spec: ModelSpec, subnet: SubnetConfig, provider: Any, out: Path,
                    calib: list[torch.Tensor], per_channel: bool, opts: MemoryOptions,
                    progress: bool) -> dict[str, Any]:
    """The int8 XNNPACK and fp32 portable programs, measured on the test images."""
    r = subnet.image_size
    log.info("deploy: quantising (PT2E int8, %s weights) on %d training images at %d px",
             "per-channel" if per_channel else "per-tensor", sum(len(b) for b in calib), r)
    quantized, q_seconds = quantize(net, r, calib, per_channel)
    log.info("deploy: lowering the int8 program (XNNPACK) ...")
    p8 = int8_program(quantized, r)
    _write_bytes(out / INT8_NAME, p8.buffer)
    log.info("deploy: int8 program %s bytes, planned %s bytes (%.1f s); lowering the fp32 program "
             "(portable) ...", f"{p8.size:,}", f"{p8.planned_bytes:,}", p8.seconds)
    p32 = fp32_program(net, r)
    _write_bytes(out / FP32_NAME, p32.buffer)
    log.info("deploy: fp32 program %s bytes, planned %s bytes (%.1f s)", f"{p32.size:,}",
             f"{p32.planned_bytes:,}", p32.seconds)
    loader = provider.test_loader(r)
    measured = _measure(net, quantized, ProgramRunner(p8.buffer), ProgramRunner(p32.buffer), loader, progress)
    acts = peak_memory(spec, subnet, MemoryOptions(count_weights=False))
    info = {**{k: measured[k] for k in ("int8_accuracy", "fp32_accuracy", "n_images", "int8_minus_fp32",
                                        "per_image")},
            "pte_bytes": p8.size, "runtime_memory_bytes": p8.planned_bytes,
            "fp32_pte_bytes": p32.size, "fp32_runtime_memory_bytes": p32.planned_bytes,
            "analytic_peak_memory": int(peak_memory(spec, subnet, opts)), "analytic_unit": opts.unit,
            "memory": opts.to_dict(),
            "analytic_activations_elements": int(acts),
            "int8_ms_per_image": measured["int8_ms_per_image"], "checks": measured["checks"],
            "int8_delegate_calls": p8.delegate_calls, "int8_undelegated_ops": p8.undelegated_ops,
            "seconds": {"quantize": q_seconds, "int8_lowering": p8.seconds, "fp32_lowering": p32.seconds},
            "model": spec.name, "config": subnet.to_dict(),
            "sources": {
                "int8_accuracy": f"measured: {INT8_NAME} in executorch.runtime, top-1 on every image of "
                                 f"{provider.root}/val at {r} px, one image at a time",
                "fp32_accuracy": "measured: the same network in fp32 PyTorch on the same images",
                "runtime_memory_bytes": f"ExecuTorch memory plan of {INT8_NAME} (bytes; graph input/output "
                                        "and XNNPACK's internal scratch not included)",
                "fp32_runtime_memory_bytes": f"ExecuTorch memory plan of {FP32_NAME} (bytes; every "
                                             "activation, graph input/output not included)",
                "analytic_peak_memory": f"moofa's analytic model, {opts.describe()}",
                "analytic_activations_elements": "analytic activations-only peak (elements; x1 int8 bytes, "
                                                 "x4 fp32 bytes)"},
            "units": {"accuracy": "fraction", "pte_bytes": "bytes", "runtime_memory_bytes": "bytes",
                      "analytic_peak_memory": opts.unit, "int8_ms_per_image": "milliseconds"},
            "calibration_images": sum(len(b) for b in calib)}
    log.info("deploy: int8 top-1 %.2f%% (ExecuTorch) vs fp32 %.2f%% (PyTorch) on %d images; wrote %s",
             100 * info["int8_accuracy"], 100 * info["fp32_accuracy"], info["n_images"], out)
    return info


def deploy_exported(subnet_path: str | Path, cfg: RunConfig, out_dir: str | Path,
                    progress: bool = True, reuse_from: Iterable[str | Path] = (),
                    targets: Iterable[str] | None = None) -> DeployRecord:
    """:func:`deploy_network` of an exported ``subnet.pth.tar`` with the data, memory model and
    ``deploy:`` settings of the loaded run config ``cfg`` (``targets`` overrides ``deploy.targets``)."""
    require_executorch()
    net = load_exported(subnet_path)
    spec, arch = net.model_spec, net.subnet_config
    if spec is None or arch is None:  # load_exported sets both
        raise CheckpointError("the exported subnet records no arch or model", file=subnet_path)
    args = last_task_args(cfg)
    n_out = head_settings(net)[0]
    if n_out != expected_n_classes(args):
        raise ConfigError(f"the subnet {subnet_path} has {n_out} outputs but the dataset has "
                          f"{expected_n_classes(args)} classes", file=cfg.path, key="args.dataset",
                          value=args.dataset)
    d = cfg.deploy
    return deploy_network(net, spec, arch, args, out_dir, calibration_images=d.calibration_images,
                          per_channel=d.per_channel,
                          memory_options=MemoryOptions.from_config(cfg, n_out),
                          subnet_sha256=file_sha256(subnet_path), progress=progress, reuse_from=reuse_from,
                          targets=d.targets if targets is None else targets,
                          system_config=d.system_config, memory_mode=d.memory_mode)
