"""Efficiency models (issue 3; docs/design.md#flops): analytic peak memory, hook measurement, MACs,
parameter counts, feasibility bounds, constraint-aware sampling, options, the profile command."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch
from conftest import REFERENCE, needs_reference
from torch.utils.flop_counter import FlopCounterMode

from moofa.cli.common import run_cli
from moofa.efficiency import (
    MemoryOptions,
    count_feasible,
    count_params,
    feasible_fraction,
    feasible_resolutions,
    flops,
    flops_batch,
    macs,
    measure_peak_memory,
    memory_bounds,
    memory_histogram,
    memory_layers,
    memory_range_table,
    peak_memory,
    peak_memory_batch,
    repair_config,
    sample_feasible,
    stage_choices,
)
from moofa.efficiency.plots import plot_memory_histogram
from moofa.errors import InfeasibleConstraintError
from moofa.models import MODELS, MobileNetV3, SubnetConfig, build_supernet, count_parameters, get_model_spec
from moofa.profile import main as profile_main

# docs/design.md#memory-model: (model, config, peak memory in elements, MMACs).
EXAMPLES = {
    "A": ("MOOFA_V3", dict(ks=[5, 5, 5, 7, 7, 3, 3, 7, 3, 7, 7, 7, 7, 7, 3, 3, 7, 3, 7, 3],
                           e=[2, 2, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2],
                           d=[3, 4, 4, 2, 3], image_size=128), 299_520, 159.00384),
    "B": ("MOOFA_V3", dict(ks=[5, 5, 3, 7, 3, 5, 7, 7, 5, 3, 5, 3, 7, 3, 5, 7, 3, 3, 7, 7],
                           e=[4, 4, 3, 3, 3, 3, 4, 2, 3, 4, 4, 2, 3, 3, 2, 3, 2, 4, 4, 3],
                           d=[2, 4, 2, 2, 4], image_size=224), 696_192, 555.579096),
    "C": ("OFA", dict(ks=[7, 3, 3, 7, 3, 7, 3, 5, 3, 5, 7, 5, 5, 7, 3, 3, 3, 3, 5, 7],
                      e=[3, 3, 4, 4, 6, 3, 3, 3, 3, 6, 6, 6, 4, 6, 6, 6, 4, 3, 4, 3],
                      d=[3, 3, 3, 3, 2], image_size=128), 262_912, 84.87296),
    "D": ("OFA", dict(ks=[7, 3, 7, 3, 7, 5, 7, 3, 5, 5, 3, 3, 7, 3, 7, 3, 7, 5, 3, 5],
                      e=[6, 3, 4, 3, 4, 3, 3, 3, 6, 3, 4, 4, 3, 6, 6, 4, 3, 3, 3, 4],
                      d=[4, 4, 4, 4, 3], image_size=160), 772_704, 169.70504),
}

# docs/design.md#flops: MMACs of the extreme subnets (smallest = k3 e_min d2, largest = k7 e_max d4).
MMACS_EXTREMES = {"OFA": (41.476, 188.248, 121.279, 566.171),
                  "MOOFA_V3": (78.684, 381.330, 242.131, 1169.558),
                  "MOOFA_V1": (117.746, 576.319, 361.456, 1757.201),
                  "MOOFA_V2": (18.478, 189.799, 56.736, 585.374)}
# docs/design.md#flops: parameters of the extracted largest / smallest subnets (1000 classes).
PARAMS = {"OFA": (7_664_760, 3_410_792), "CompOFA": (7_664_760, 3_410_792),
          "MOOFA_V1": (33_820_064, 6_195_488), "MOOFA_V2": (8_311_968, 1_555_528),
          "MOOFA_V3": (19_337_240, 3_988_256)}
# docs/design.md#memory-model: range of achievable peaks per resolution (min, max).
RANGES = {"OFA": {128: (262_912, 496_224), 160: (410_368, 772_704), 192: (590_592, 1_110_624),
                  224: (803_584, 1_509_984)},
          "MOOFA_V3": {128: (299_520, 597_504), 160: (305_280, 607_104), 192: (305_280, 607_104),
                       224: (378_048, 696_192)}}
RANGES["CompOFA"] = RANGES["OFA"]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny convs on a shared 2-core machine run far faster on one thread (no OpenMP barrier
    contention); values do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def uniform_arrays(model: str, n: int, rng: np.random.Generator) -> dict:
    """n configs drawn like the reference's uniform sampler (resolution, ks, e, d uniform)."""
    spec = get_model_spec(model)
    return dict(ks=rng.choice(spec.ks_list, (n, 20)), e=rng.choice(spec.expand_list, (n, 20)),
                d=rng.choice(spec.depth_list, (n, 5)), image_size=rng.choice(spec.image_sizes, n))


def random_config(model: str, rng: np.random.Generator, image_size: int) -> SubnetConfig:
    a = uniform_arrays(model, 1, rng)
    return SubnetConfig(tuple(a["ks"][0]), tuple(a["e"][0]), tuple(a["d"][0]), image_size)


# -- 1. reference samples ------------------------------------------------------------------------

@needs_reference
def test_peak_memory_equals_reference_samples():
    rows = [json.loads(line) for line in (REFERENCE / "peak_memory_samples.jsonl").read_text().splitlines()]
    assert len(rows) == 200
    assert [peak_memory(r["model"], r) for r in rows] == [r["peak_memory"] for r in rows]
    by_model = defaultdict(list)
    for r in rows:
        by_model[r["model"]].append(r)
    assert set(by_model) == set(MODELS)
    for model, group in by_model.items():
        got = peak_memory_batch(model, group)
        assert got.dtype == np.int64
        assert got.tolist() == [r["peak_memory"] for r in group]
        arrays = {k: [r[k] for r in group] for k in ("ks", "e", "d", "image_size")}
        assert peak_memory_batch(model, **arrays).tolist() == got.tolist()


# -- 2. worked examples, MMACs and parameter extremes ------------------------------------------------

@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_spec_examples(name):
    model, cfg, peak, mmacs = EXAMPLES[name]
    assert peak_memory(model, cfg) == peak
    assert max(memory_histogram(model, cfg)) == peak
    assert flops(model, cfg) == pytest.approx(mmacs, abs=1e-9)
    assert macs(model, cfg) == round(mmacs * 1e6)
    assert flops_batch(model, [cfg])[0] == pytest.approx(mmacs, abs=1e-9)


def test_example_a_histogram_entries():
    """docs/design.md#memory-model: first entries, length 1 + 2 + 3 * 16 active blocks + 1."""
    model, cfg, _, _ = EXAMPLES["A"]
    hist = memory_histogram(model, cfg)
    assert hist[:9] == [61_521, 24_603, 45_080, 98_432, 82_320, 41_344, 74_880, 124_080, 74_880]
    assert hist[-1] == 153_632
    assert len(hist) == 1 + 2 + 3 * sum(cfg["d"]) + 1
    layers = {layer.name: layer for layer in memory_layers(model, cfg)}
    assert layers["b17.ib"][1:] == (1_536, 3_072, 294_912, 0, 299_520)
    assert layers["b9.dw"].residual == 18_432


def test_example_b_peak_layer():
    model, cfg, _, _ = EXAMPLES["B"]
    layers = {layer.name: layer.total for layer in memory_layers(model, cfg)}
    assert layers["b6.dw"] == 384 * 28 ** 2 * 2 + 384 * 49 + 96 * 28 ** 2 == 696_192
    assert (layers["b1.dw"], layers["b9.ib"], layers["b0.dw"], layers["first_conv"]) == \
        (679_776, 614_016, 502_560, 188_241)


@pytest.mark.parametrize("model", sorted(MMACS_EXTREMES))
def test_mmacs_extremes(model):
    spec = get_model_spec(model)
    got = (flops(model, spec.min_config(128)), flops(model, spec.max_config(128)),
           flops(model, spec.min_config(224)), flops(model, spec.max_config(224)))
    assert [round(g, 3) for g in got] == list(MMACS_EXTREMES[model])


@pytest.mark.parametrize("model", MODELS)
def test_param_counts(model):
    spec = get_model_spec(model)
    assert (count_params(model, spec.max_config()), count_params(model, spec.min_config())) == PARAMS[model]


# -- 3. bounds, counting, sampling, repair -----------------------------------------------------------

@pytest.mark.parametrize("model", sorted(RANGES))
def test_bounds_equal_range_table(model):
    assert memory_range_table(model) == RANGES[model]
    for r, (lo, hi) in RANGES[model].items():
        assert memory_bounds(model, r) == (lo, hi)
    lows, highs = zip(*RANGES[model].values())
    assert memory_bounds(model) == (min(lows), max(highs))


def test_bounds_hold_on_uniform_samples_and_are_attained():
    rng = np.random.default_rng(1)
    for model in ("OFA", "MOOFA_V2", "MOOFA_V3"):
        spec = get_model_spec(model)
        peaks = peak_memory_batch(model, **uniform_arrays(model, 20_000, rng))
        lo, hi = memory_bounds(model)
        assert lo <= peaks.min() and peaks.max() <= hi
        for r in spec.image_sizes:
            lo_r, hi_r = memory_bounds(model, r)
            assert peak_memory(model, spec.min_config(r)) == lo_r
            assert peak_memory(model, spec.max_config(r)) == hi_r


def test_feasible_fraction_matches_spec_and_monte_carlo():
    """docs/design.md#memory-model: P(peak <= 400k) ~ 17 % (OFA) and 0.13 % (MOOFA_V3); <= 500k: 29 % and 7.3 %."""
    assert feasible_fraction("OFA", 400_000) == pytest.approx(0.17, abs=0.005)
    assert feasible_fraction("MOOFA_V3", 400_000) == pytest.approx(0.0013, abs=0.0001)
    assert feasible_fraction("OFA", 500_000) == pytest.approx(0.29, abs=0.005)
    assert feasible_fraction("MOOFA_V3", 500_000) == pytest.approx(0.073, abs=0.005)
    rng = np.random.default_rng(2)
    n = 100_000
    peaks = peak_memory_batch("MOOFA_V3", **uniform_arrays("MOOFA_V3", n, rng))
    for lower, upper in ((None, 500_000), (450_000, 550_000)):
        p = feasible_fraction("MOOFA_V3", upper, lower=lower)
        hit = ((peaks <= upper) & (peaks >= (lower or 0))).mean()
        assert abs(hit - p) < 5 * np.sqrt(p * (1 - p) / n)
    # counts are of full configs: everything at one resolution = (3 * 9**4) ** 5 for OFA
    assert count_feasible("OFA", 10**9, image_size=160) == (3 * 9 ** 4) ** 5
    assert count_feasible("CompOFA", 10**9, image_size=160) == (3 * 3 ** 4) ** 5


def test_sample_feasible_matches_rejection_sampling():
    """Rejection-free sampling has the distribution of the reference's sample-until-feasible loop:
    compare the resolution and stage-1 depth frequencies with uniform samples that pass."""
    model, c = "OFA", 400_000
    rng = np.random.default_rng(3)
    arrays = uniform_arrays(model, 200_000, rng)
    ok = peak_memory_batch(model, **arrays) <= c
    samples = sample_feasible(model, c, rng, n=3000)
    assert max(peak_memory_batch(model, samples)) <= c
    for key, got, ref in (("image_size", [s.image_size for s in samples], arrays["image_size"][ok]),
                          ("d0", [s.d[0] for s in samples], arrays["d"][ok][:, 0])):
        ref_freq, got_freq = Counter(ref.tolist()), Counter(got)
        for value, count in ref_freq.items():
            p = count / ok.sum()
            assert abs(got_freq[value] / len(got) - p) < 5 * np.sqrt(p * (1 - p) / len(got)) + 0.005, key


@pytest.mark.parametrize("model, lower, upper", [("MOOFA_V3", 300_000, 340_000),
                                                 ("MOOFA_V3", 600_000, 650_000),
                                                 ("CompOFA", 400_000, 500_000),
                                                 ("MOOFA_V2", 200_000, 250_000)])
def test_sample_feasible_window(model, lower, upper):
    samples = sample_feasible(model, upper, 0, n=300, lower=lower)
    peaks = [peak_memory(model, s) for s in samples]
    assert min(peaks) >= lower and max(peaks) <= upper
    spec = get_model_spec(model)
    if spec.compound:  # CompOFA: e coupled to depth in every stage
        assert all(s.e[4 * i:4 * i + 4] == (spec.compound_expand(d),) * 4
                   for s in samples for i, d in enumerate(s.d))
    for s in samples[:20]:
        s.validate(spec, check_image_size=True)


def test_sample_feasible_uniform_resolution_and_errors():
    samples = sample_feasible("MOOFA_V3", 310_000, 4, n=400, resolution_weighting="uniform")
    assert {s.image_size for s in samples} == {128, 160, 192} == set(feasible_resolutions("MOOFA_V3", 310_000))
    with pytest.raises(InfeasibleConstraintError, match="299520..696192"):
        sample_feasible("MOOFA_V3", 299_519, 0)
    with pytest.raises(ValueError, match="lower"):
        sample_feasible("MOOFA_V3", 300_000, 0, lower=400_000)


def test_stage_choices_and_repair():
    c = 320_000
    choices = stage_choices("MOOFA_V3", c, 128)
    table = {layer.name: layer.total for layer in memory_layers("MOOFA_V3", get_model_spec("MOOFA_V3").max_config(128))}
    # stage 5, block 1 at R=128: (k7, e4) IB = 384*16 + 1536*16 + 384*1536 = 620,544 > c;
    # (k3, e2) IB = 299,520 fits
    assert table["b17.ib"] > c
    assert (3, 2) in choices[4].active[4][1] and (7, 4) not in choices[4].active[4][1]
    rng = np.random.default_rng(5)
    for _ in range(30):
        cfg = random_config("MOOFA_V3", rng, 224)
        fixed = repair_config("MOOFA_V3", cfg, c, rng)
        assert peak_memory("MOOFA_V3", fixed) <= c
        assert fixed.image_size == 192  # the largest feasible resolution below 224
    ok = sample_feasible("MOOFA_V3", c, 6)[0]
    assert repair_config("MOOFA_V3", ok, c) == ok
    with pytest.raises(InfeasibleConstraintError):
        repair_config("OFA", EXAMPLES["C"][1], 100_000)


# -- 4 and 5. hook measurement, params and MACs of built static subnets -----------------------------

@pytest.mark.parametrize("model", MODELS)
def test_static_subnets_agree_with_analytic(model):
    """For a random subnet at every resolution, built as a static network (10 classes):

    * measure_peak_memory (hooks, docs/design.md#memory-model) == peak_memory and memory_histogram (closed form);
    * count_parameters(net) == count_params (weights, BN weight/bias, SE biases, classifier bias);
    * MACs: FlopCounterMode counts 2 * MACs for every conv (depthwise via groups) and linear
      (addmm) it sees, i.e. all convs incl. SE reduce/expand, feature_mix and classifier, and
      nothing for BN, activations, pooling, the SE multiply or residual adds; the analytic model
      counts exactly the same MACs (docs/design.md#flops), so FlopCounterMode / 2 == macs().
    * the latency tables' operator counts (moofa.efficiency.target.operator_counts_batch) equal
      what forward hooks see: depthwise convs' output elements x k x k, the elements entering the
      squeeze-excite modules, and the output elements of the blocks with an identity shortcut.
    * the Ethos-U activations peak (int8, channels in bricks of 16, shortcut held through its
      block at 1 byte an element; and the int32-shortcut variant, 4 bytes, channels as they are)
      equals a walk over the convs the hooks see: each conv on a feature map holds its input and
      output, plus its residual block's input when the block has an identity shortcut.
    """
    from moofa.efficiency.target import ethosu_activation_bytes_batch, int32_shortcut_bytes_batch, operator_counts_batch
    from moofa.models.layers import ResidualBlock, SEModule

    spec = get_model_spec(model)
    rng = np.random.default_rng(sum(map(ord, model)))
    for r in spec.image_sizes:
        cfg = random_config(model, rng, r)
        net = MobileNetV3.build(spec, cfg, n_classes=10)
        seen: Counter = Counter()
        convs: list[tuple[torch.Size, torch.Size, torch.Size | None]] = []  # in, out, held shortcut
        held: list[torch.Size | None] = [None]

        def enter(module, args):
            held[0] = args[0].shape if module.shortcut is not None else None

        def count(module, args, out):
            if isinstance(module, torch.nn.Conv2d) and module.groups == module.in_channels > 1:
                seen["dw_macs"] += out.numel() * module.kernel_size[0] * module.kernel_size[1]
            elif isinstance(module, SEModule):
                seen["se_elements"] += args[0].numel()
            elif isinstance(module, ResidualBlock):
                seen["shortcut_elements"] += out.numel() if module.shortcut is not None else 0
                held[0] = None
            if isinstance(module, torch.nn.Conv2d) and args[0].shape[-1] > 1:  # not SE or head convs
                convs.append((args[0].shape, out.shape, held[0]))
        hooks = [m.register_forward_hook(count) for m in net.modules()]
        hooks += [m.register_forward_pre_hook(enter) for m in net.modules() if isinstance(m, ResidualBlock)]
        with FlopCounterMode(display=False) as counter:
            peak, hist = measure_peak_memory(net, r)
        for h in hooks:
            h.remove()
        assert hist == memory_histogram(model, cfg), (model, r)
        assert peak == peak_memory(model, cfg)
        assert count_parameters(net) == count_params(model, cfg, n_classes=10)
        assert counter.get_total_flops() == 2 * macs(model, cfg, n_classes=10)
        counts = {name: int(v[0]) for name, v in operator_counts_batch(spec, [cfg]).items()}
        assert counts == dict(seen) and min(counts.values()) > 0, (model, r)

        def stored(shape: torch.Size, multiple: int) -> int:  # the image's 3 channels stay as they are
            c = shape[1] if shape[1] == 3 else -(-shape[1] // multiple) * multiple
            return c * shape[2] * shape[3]
        for peak_fn, nbytes, multiple in ((ethosu_activation_bytes_batch, 1, 16), (int32_shortcut_bytes_batch, 4, 1)):
            walked = max(stored(i, multiple) + stored(o, multiple) + (nbytes * stored(h, multiple) if h else 0)
                         for i, o, h in convs)
            assert peak_fn(spec, [cfg])[0] == walked, (model, r, nbytes)


@pytest.mark.parametrize("model", ["OFA", "MOOFA_V2"])
def test_supernet_extracted_subnets(model):
    """Subnets extracted from a supernet (MOOFA_V2 with e=1 blocks: no IB entry)."""
    net = build_supernet(model, n_classes=10)
    spec = net.spec
    rng = np.random.default_rng(7)
    for r in (128, 192):
        cfg = random_config(model, rng, r)
        if model == "MOOFA_V2":
            cfg = SubnetConfig(cfg.ks, (1,) * 10 + cfg.e[10:], cfg.d, r)
        net.set_subnet(cfg)
        sub = net.get_active_subnet()
        peak, hist = measure_peak_memory(sub, r)
        assert (peak, hist) == (peak_memory(spec, cfg), memory_histogram(spec, cfg))
        assert count_parameters(sub) == count_params(spec, cfg, n_classes=10)
    if model == "MOOFA_V2":  # e = 1 blocks have no IB: 2 entries each
        assert not any(layer.name.startswith("b0.ib") for layer in memory_layers(spec, cfg))


def test_tiny_width_models_many_configs(tmp_path):
    """Hook measurement == closed form on many configs of small-width models of every class."""
    lines = []
    for name, cls, ex in (("T_OFA", "OFAMobileNetV3", [3, 4, 6]), ("T_COMP", "CompOFAMobileNetV3", [3, 4, 6]),
                          ("T_V2", "OFAMobileNetV3CtV2", [1, 1.5, 2])):
        lines.append(f"{name}:\n  model_class: {cls}\n  expand_list: {ex}\n  ks_list: [3, 5, 7]\n"
                     f"  depth_list: [2, 3, 4]\n  image_size: [32, 40, 48]\n"
                     f"  widths: [8, 8, 8, 16, 16, 24, 24, 32, 32]\n")
    path = tmp_path / "model_configs.yaml"
    path.write_text("".join(lines))
    rng = np.random.default_rng(8)
    for name in ("T_OFA", "T_COMP", "T_V2"):
        spec = get_model_spec(name, path)
        for _ in range(6):
            r = int(rng.choice(spec.image_sizes))
            a = uniform_arrays("MOOFA_V2" if name == "T_V2" else "OFA", 1, rng)
            cfg = SubnetConfig(tuple(a["ks"][0]), tuple(a["e"][0]), tuple(a["d"][0]), r)
            net = MobileNetV3.build(spec, cfg, n_classes=5)
            assert measure_peak_memory(net, r) == (peak_memory(spec, cfg), memory_histogram(spec, cfg))


# -- 6. bad input --------------------------------------------------------------------------------------

def test_bad_input_errors():
    cfg = dict(EXAMPLES["A"][1])
    with pytest.raises(ValueError, match=r"ks: expected 20 values"):
        peak_memory("MOOFA_V3", {**cfg, "ks": cfg["ks"][:19]})
    with pytest.raises(ValueError, match=r"e\[3\]: value 5"):
        peak_memory("MOOFA_V3", {**cfg, "e": [2, 2, 3, 5] + cfg["e"][4:]})
    with pytest.raises(ValueError, match=r"d\[0\]: value 1"):
        flops("MOOFA_V3", {**cfg, "d": [1, 4, 4, 2, 3]})
    with pytest.raises(ValueError, match="unknown model 'FOO'"):
        peak_memory("FOO", cfg)
    with pytest.raises(ValueError, match=r"e\[0\]: value 2 is not one of OFA"):
        count_params("OFA", cfg)
    with pytest.raises(ValueError, match=r"ks\[1\]\[2\]: value 4"):
        peak_memory_batch("MOOFA_V3", ks=[cfg["ks"], cfg["ks"][:2] + [4] + cfg["ks"][3:]],
                          e=[cfg["e"]] * 2, d=[cfg["d"]] * 2, image_size=128)
    with pytest.raises(ValueError, match=r"e: expected shape \(N, 20\)"):
        peak_memory_batch("MOOFA_V3", ks=[cfg["ks"]], e=[cfg["e"][:5]], d=[cfg["d"]], image_size=128)
    with pytest.raises(ValueError, match="bytes_per_element"):
        MemoryOptions(bytes_per_element=0)


def test_profile_command_exit_codes(tmp_path, capsys):
    sub = tmp_path / "subnet.json"
    sub.write_text(json.dumps(EXAMPLES["A"][1]))
    out = tmp_path / "prof"
    assert run_cli(profile_main, ["--model", "MOOFA_V3", "--config", str(sub), "--output", str(out),
                                  "--constraint", "320000"]) == 0
    text = capsys.readouterr().out
    assert "peak memory: 299,520 elements" in text and "MMACs: 159.003840" in text
    assert "b17.ib *" in text
    assert (out / "memory_histogram.png").stat().st_size > 0 and (out / "memory_histogram.pdf").is_file()
    assert json.loads((out / "profile.json").read_text())["peak_memory"] == 299_520
    # inline JSON, fp32 bytes
    assert run_cli(profile_main, ["--model", "MOOFA_V3", "--config", json.dumps(EXAMPLES["A"][1]),
                                  "--output", str(out), "--bytes-per-element", "4"]) == 0
    assert "peak memory: 1,198,080 bytes" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**EXAMPLES["A"][1], "e": [7] * 20}))
    for argv, needle in ((["--model", "OFA", "--config", str(sub)], "e[0]: value 2"),
                         (["--model", "MOOFA_V3", "--config", str(bad)], str(bad)),
                         (["--model", "MOOFA_V3", "--config", str(tmp_path / "missing.json")], "cannot read")):
        assert run_cli(profile_main, argv + ["--output", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and needle in err
    proc = subprocess.run([sys.executable, "-m", "moofa.profile", "--model", "FOO", "--config", str(sub)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and "FOO" in proc.stderr


# -- 7. options ----------------------------------------------------------------------------------------

def test_memory_options():
    model, cfg, peak, _ = EXAMPLES["A"]
    for b in (2, 4):
        opt = MemoryOptions(bytes_per_element=b)
        assert peak_memory(model, cfg, opt) == b * peak
        assert memory_histogram(model, cfg, opt) == [b * v for v in memory_histogram(model, cfg)]
    # activations only: block 2 (stage 1, k5, e3, C_in 24, side 32) DW input + output + residual:
    # mid = 72, 72*32*32 in, 72*32*32 out, 24*32*32 residual.
    act = peak_memory(model, cfg, MemoryOptions(count_weights=False))
    assert act == 2 * 72 * 32 * 32 + 24 * 32 * 32 == 172_032 < peak
    # head counted: classifier 392 in + 1000 out + 392*1000 weights + 1000 bias
    assert peak_memory(model, cfg, MemoryOptions(count_head=True)) == 392 + 1000 + 392_000 + 1000
    # in-place depthwise: OFA example C's b0.dw = max(48*64*64, 48*32*32) + 48*49
    layers = {layer.name: layer.total
              for layer in memory_layers("OFA", EXAMPLES["C"][1], MemoryOptions(inplace_depthwise=True))}
    assert layers["b0.dw"] == 48 * 64 * 64 + 48 * 49 == 198_960
    opts = MemoryOptions(count_weights=False)
    arrays = uniform_arrays("OFA", 300, np.random.default_rng(9))
    batch = peak_memory_batch("OFA", **arrays, options=opts)
    single = [peak_memory("OFA", dict(ks=arrays["ks"][i].tolist(), e=arrays["e"][i].tolist(),
                                      d=arrays["d"][i].tolist(), image_size=int(arrays["image_size"][i])), opts)
              for i in range(300)]
    assert batch.tolist() == single
    assert memory_bounds("MOOFA_V3", options=MemoryOptions(bytes_per_element=2)) == (2 * 299_520, 2 * 696_192)
    assert peak_memory_batch("OFA", []).shape == (0,)


def test_plot_writes_png_and_pdf(tmp_path):
    paths = plot_memory_histogram([5, 9, 3], tmp_path / "sub" / "hist", constraint=8, title="t")
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)
    with pytest.raises(ValueError):
        plot_memory_histogram([], tmp_path / "empty")


def test_ethosu_peak_and_traffic():
    """The activation traffic above a threshold (the latency tables' spill) equals a walk over the
    histogram entries; and the Ethos-U activations peak reproduces the peak read off Vela's tensor
    allocation (``vela --verbose-allocation``, activations only) for two MOOFA_V3 subnets lowered
    by moofa: a 96-channel 56x56 depthwise entry (two 301,056-byte int8 tensors) with its
    24-channel shortcut stored as 32 channels (NHCWB16), 702,464 bytes, where the int8 model says
    677,376; and a 384-channel 24x24 entry with a 96-channel shortcut, 497,664 bytes (Vela: 384
    more, the squeeze-excite gate). The hooks test above checks the peak on every model."""
    from moofa.efficiency.target import activation_traffic_batch, ethosu_activation_bytes, int8_activation_bytes
    from moofa.models.space import SearchSpace

    opts = MemoryOptions(count_weights=False, bytes_per_element=1)
    spec = get_model_spec("MOOFA_V3")
    cfg0 = SearchSpace(spec).sample(np.random.default_rng(3))
    layers = memory_layers(spec, cfg0, opts)
    for above in (0, 100_000, 400_000):
        walked_traffic = sum(lm.inp + lm.out for lm in layers if lm.inp + lm.out > above)
        assert activation_traffic_batch(spec, [cfg0], above=above)[0] == walked_traffic
    assert activation_traffic_batch(spec, [cfg0], above=400_000)[0] < activation_traffic_batch(spec, [cfg0])[0]
    cfg = dict(ks=[7, 3, 5, 3, 5, 7, 3, 3, 3, 3, 7, 3, 3, 5, 7, 5, 3, 7, 3, 5],
               e=[2, 4, 4, 4, 4, 2, 3, 4, 3, 2, 3, 3, 2, 3, 2, 4, 2, 4, 3, 3], d=[4, 2, 4, 4, 2], image_size=224)
    assert ethosu_activation_bytes("MOOFA_V3", cfg) == 2 * 301_056 + 32 * 56 * 56 == 702_464
    assert int8_activation_bytes("MOOFA_V3", cfg) == 2 * 301_056 + 24 * 56 * 56
    cfg = dict(ks=[3, 3, 3, 3, 5, 7, 5, 5, 5, 5, 5, 7, 7, 3, 5, 7, 7, 7, 7, 3],
               e=[4, 2, 2, 2, 4, 4, 3, 4, 4, 3, 4, 4, 2, 2, 2, 3, 2, 2, 3, 3], d=[2, 4, 4, 4, 2], image_size=192)
    assert ethosu_activation_bytes("MOOFA_V3", cfg) == int8_activation_bytes("MOOFA_V3", cfg) == 2 * 221_184 + 55_296
