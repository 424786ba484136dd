"""Accuracy predictor (issue 5): encoder, reference checkpoint, dataset files, our checkpoint
format, training recipe and the train_moofa_predictor.py entry point."""
from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from moofa.cli.common import run_cli
from moofa.cli.train_predictor import main
from moofa.errors import CheckpointError, MoofaInputError
from moofa.models.space import SearchSpace
from moofa.models.spec import SubnetConfig, get_model_spec, load_model_configs
from moofa.predictor import (
    AccuracyMLP,
    AccuracyPredictor,
    ArchEncoder,
    PredictorRecipe,
    append_records,
    load_restricted_pickle,
    make_record,
    read_dataset,
    regression_metrics,
    repair_tail,
    split_indices,
    train_predictor,
)
from moofa.predictor.training import feature_names, kendall_tau, shuffle_split

REF = Path(__file__).resolve().parents[2] / "shared" / "reference"
PKL = REF / "ofa_imagenet_predictor_dataset.pkl"
JSONL = REF / "ofa_imagenet_predictor_dataset.jsonl"
CKPT = REF / "ofa_imagenet_acc_predictor.pth.tar"
REFERENCE_KEYS = ["base_acc", "layers.0.0.weight", "layers.0.0.bias", "layers.1.0.weight",
                  "layers.1.0.bias", "layers.2.0.weight", "layers.2.0.bias", "layers.3.weight"]

# docs/design.md#memory-model (MC_OFA.pkl[0], MOOFA_V3) and its one-hot indices (docs/design.md#encoding)
CONFIG_A = {"ks": [5, 5, 5, 7, 7, 3, 3, 7, 3, 7, 7, 7, 7, 7, 3, 3, 7, 3, 7, 3],
            "e": [2, 2, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2],
            "d": [3, 4, 4, 2, 3], "image_size": 128}
ONES_A = [0, 5, 8, 11, 18, 19, 22, 27, 28, 33, 36, 39, 42, 45, 54, 55, 60, 64, 67, 71, 76, 79, 82,
          85, 88, 91, 94, 97, 100, 103, 112, 115, 118]


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"reference data {path} not present (needs ../shared/reference)")
    return path


@pytest.fixture(scope="module")
def ofa_jsonl():
    return read_dataset(need(JSONL), "OFA")


# ------------------------------------------------------------------------------------ encoder
def test_encoder_reproduces_every_reference_feature():
    obj = load_restricted_pickle(need(PKL))
    enc = ArchEncoder("OFA")
    stored = np.stack(obj["features"])
    got = enc.encode_batch(obj["configs"])
    assert enc.n_dim == 124 and got.dtype == np.float64
    assert got.shape == stored.shape == (2610, 124)
    assert np.array_equal(got, stored)
    for i in (0, 597, 2609):  # the one-config path agrees with the batch path
        assert np.array_equal(enc.encode(obj["configs"][i]), stored[i])
    # the same configs under MOOFA_V3's expand list [2,3,4] are not encodable (e=6)
    with pytest.raises(ValueError, match=r"e\[\d+\]: value 6"):
        ArchEncoder("MOOFA_V3").encode_batch(obj["configs"][:50])


def test_encoder_worked_example_moofa_v3():
    f = ArchEncoder("MOOFA_V3").encode(CONFIG_A)
    assert np.flatnonzero(f).tolist() == ONES_A
    assert f.sum() == 1 + 2 * sum(CONFIG_A["d"])


@pytest.mark.parametrize("model", ["OFA", "MOOFA_V3", "MOOFA_V2", "CompOFA"])
def test_decode_round_trip(model):
    enc, space = ArchEncoder(model), SearchSpace(model)
    rng = np.random.default_rng(3)
    for _ in range(30):
        c = space.sample(rng)
        f = enc.encode(c)
        back = enc.decode(f)
        assert np.array_equal(enc.encode(back), f)
        active = c.active_blocks(enc.spec)
        assert back.d == c.d and back.image_size == c.image_size
        assert [back.ks[i] for i in active] == [c.ks[i] for i in active]
        assert [back.e[i] for i in active] == [c.e[i] for i in active]
        inactive = sorted(set(range(20)) - set(active))
        assert all(back.ks[i] == min(enc.ks_list) and back.e[i] == min(enc.expand_list)
                   for i in inactive)
        raw = enc.decode_dict(f)  # reference feature2arch: 0/0 for inactive blocks
        assert all(raw["ks"][i] == 0 and raw["e"][i] == 0 for i in inactive)
        assert np.array_equal(enc.encode(raw), f)  # inactive 0/0 is accepted, as in the reference


def test_encoder_rejects_values_outside_the_lists():
    enc = ArchEncoder("OFA")
    bad = dict(CONFIG_A, e=[3] * 20, image_size=100)
    with pytest.raises(ValueError, match="image_size: value 100"):
        enc.encode(bad)
    with pytest.raises(ValueError, match=r"config 1: ks\[4\]: value 4"):
        enc.encode_batch([dict(bad, image_size=128), dict(bad, image_size=128,
                                                          ks=[3] * 4 + [4] + [3] * 15)])


def test_layout_follows_the_lists_as_written(tmp_path):
    """A model_configs.yaml with its lists written in another order (descending image_size,
    permuted kernels) encodes every config, and its one-hot positions follow the written lists."""
    p = tmp_path / "mc.yaml"
    p.write_text("OFA:\n  model_class: OFAMobileNetV3\n  expand_list: [3, 4, 6]\n"
                 "  ks_list: [7, 3, 5]\n  depth_list: [2, 3, 4]\n  width_mult_list: 1.0\n"
                 "  image_size: [224, 192, 160, 128]\n")
    spec = load_model_configs(p)["OFA"]
    assert spec.ks_list == (3, 5, 7) and spec.layout_lists["ks_list"] == (7, 3, 5)
    written, plain = ArchEncoder(spec), ArchEncoder("OFA")
    configs = [SearchSpace("OFA").sample(np.random.default_rng(i)) for i in range(50)]
    got, ref = written.encode_batch(configs), plain.encode_batch(configs)
    # the same bits, at permuted positions: R reversed, k slots (3,5,7) -> (7,3,5)
    perm = [3, 2, 1, 0] + [4 + 3 * b + j for b in range(20) for j in (2, 0, 1)] + list(range(64, 124))
    assert np.array_equal(got, ref[:, perm])
    for c, f in zip(configs, got):
        assert f[[224, 192, 160, 128].index(c.image_size)] == 1
        assert written.decode(f).image_size == c.image_size


def test_search_operators_are_seeded_and_follow_the_reference():
    enc = SearchSpace("OFA")
    a = enc.sample(random.Random(1))
    random.seed(123)
    np.random.seed(123)  # the global RNGs play no part
    assert enc.sample(random.Random(1)) == a
    assert enc.sample(np.random.default_rng(5)) == enc.sample(np.random.default_rng(5))
    a.validate(enc.spec, check_image_size=True)
    assert enc.mutate(a, 0.0, 0.0, random.Random(0)) == a
    m = enc.mutate(a, 1.0, 1.0, np.random.default_rng(0))
    m.validate(enc.spec, check_image_size=True)
    assert m != a
    b = enc.sample(random.Random(2))
    for seed in range(5):
        child = enc.crossover(a, b, random.Random(seed))
        for key in ("ks", "e", "d"):
            for x, pa, pb in zip(getattr(child, key), getattr(a, key), getattr(b, key)):
                assert x in (pa, pb)
        assert child.image_size in (a.image_size, b.image_size)
    # mutation rate: about arch_p of the 20 kernels change
    rng = np.random.default_rng(9)
    changed = np.mean([np.mean(np.array(enc.mutate(a, 0.5, 0.0, rng).ks) != np.array(a.ks))
                       for _ in range(200)])
    assert 0.25 < changed < 0.40  # 0.5 * P(new draw differs) = 0.5 * 2/3


def test_compound_operators_keep_the_coupling():
    enc = SearchSpace("CompOFA")
    spec = enc.spec

    def coupled(c: SubnetConfig) -> bool:
        return all(c.e[i] == spec.compound_expand(c.d[i // 4]) for i in range(20))

    rng = np.random.default_rng(0)
    pop = [enc.sample(rng) for _ in range(20)]
    assert all(coupled(c) for c in pop)
    assert len({c.d for c in pop}) > 1
    for i in range(19):
        assert coupled(enc.mutate(pop[i], 0.5, 0.5, rng))
        assert coupled(enc.crossover(pop[i], pop[i + 1], rng))


# -------------------------------------------------------------------------------- checkpoints
def test_reference_checkpoint_predicts_the_dataset(ofa_jsonl):
    pred = AccuracyPredictor.load(need(CKPT), "OFA", device="cpu")
    assert len(pred.members) == 1 and pred.extra_features == ()
    ref_sd = torch.load(CKPT, map_location="cpu", weights_only=True)
    assert list(pred.members[0].state_dict()) == REFERENCE_KEYS == list(ref_sd)
    assert float(pred.members[0].base_acc) == pytest.approx(0.7163, abs=1e-4)
    p = pred.predict(ofa_jsonl.configs)
    assert p.dtype == np.float64 and p.shape == (2610,)
    m = regression_metrics(ofa_jsonl.accuracies, p)
    assert 0.30 <= m["rmse_pp"] <= 0.32  # issue: 0.31 percentage points
    assert m["pearson"] > 0.99


def test_missing_or_foreign_checkpoint_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="nothere.pth"):
        AccuracyPredictor.load(tmp_path / "nothere.pth", "OFA")
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(3)}, bad)
    with pytest.raises(CheckpointError, match="bad.pth"):
        AccuracyPredictor.load(bad, "OFA")
    evil = tmp_path / "evil.pth"
    torch.save({"x": SubnetConfig((3,), (3,), (2,), 128)}, evil)  # not loadable weights-only
    with pytest.raises(CheckpointError, match="evil.pth"):
        AccuracyPredictor.load(evil, "OFA")


def test_own_checkpoint_round_trips_weights_only(tmp_path):
    torch.manual_seed(0)
    pred = AccuracyPredictor("OFA", hidden_size=16, n_layers=3, n_members=3,
                             extra_features=("flops", "peak_memory"), base_acc=0.7)
    rng = np.random.default_rng(0)
    configs = [SearchSpace(pred.spec).sample(rng) for _ in range(40)]
    pred.fit_feature_norm(pred.raw_extra(configs))
    config_c = {"ks": [7, 3, 3, 7, 3, 7, 3, 5, 3, 5, 7, 5, 5, 7, 3, 3, 3, 3, 5, 7],
                "e": [3, 3, 4, 4, 6, 3, 3, 3, 3, 6, 6, 6, 4, 6, 6, 6, 4, 3, 4, 3],
                "d": [3, 3, 3, 3, 2], "image_size": 128}  # docs/design.md#memory-model
    assert pred.raw_extra([SubnetConfig.from_dict(config_c)]).tolist() == [[84.87296, 262912.0]]
    assert pred.feature_std.min() > 0 and abs(float(pred.feature_mean[0])) > 1  # log MMACs
    pred.info = {"seed": 7, "note": "unit test"}
    path = pred.save(tmp_path / "sub" / "pred.pth")
    obj = torch.load(path, weights_only=True)
    assert obj["format"] == "moofa-predictor-v1" and obj["model"] == "OFA"
    assert len(obj["members"]) == 3 and list(obj["members"][0]) == REFERENCE_KEYS
    assert obj["members"][0]["layers.0.0.weight"].shape == (16, 126)
    back = AccuracyPredictor.load(path, "OFA", device="cpu")
    assert back.info["seed"] == 7
    assert np.array_equal(back.predict(configs), pred.predict(configs))
    # members really differ, and the prediction is their mean
    x = torch.as_tensor(back.features(configs), dtype=torch.float32)
    outs = torch.stack([m(x) for m in back.members]).detach()
    assert not torch.equal(outs[0], outs[1])
    assert np.allclose(back.predict(configs), outs.mean(0).double().numpy(), atol=1e-6)
    with pytest.raises(CheckpointError, match="encoder lists do not match"):
        AccuracyPredictor.load(path, "MOOFA_V3")
    assert not list(tmp_path.joinpath("sub").glob("*.tmp"))
    single = AccuracyPredictor("OFA")
    ref_path = single.save(tmp_path / "ref.pth", reference_format=True)
    assert list(torch.load(ref_path, weights_only=True)) == REFERENCE_KEYS
    assert np.array_equal(AccuracyPredictor.load(ref_path, "OFA").predict(configs),
                          single.predict(configs))
    with pytest.raises(ValueError, match="single-member"):
        pred.save(tmp_path / "x.pth", reference_format=True)


def test_accuracy_mlp_shape_and_output():
    mlp = AccuracyMLP(124, base_acc=0.5)
    assert list(mlp.state_dict()) == REFERENCE_KEYS
    assert mlp.layers[3].bias is None and not mlp.base_acc.requires_grad
    with torch.no_grad():
        for p in mlp.parameters():
            p.zero_()
        mlp.base_acc.fill_(0.25)
    assert torch.equal(mlp(torch.ones(4, 124)), torch.full((4,), 0.25))
    assert AccuracyMLP.shape_of(mlp.state_dict()) == (124, 400, 3)


# ------------------------------------------------------------------------------ dataset files
class Payload:  # a custom class: must be refused
    pass


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("obj, refused", [
    (Exploit(), "system"),
    ({"configs": [Payload()]}, "test_predictor.Payload"),
    ({"a": np.array([object()], dtype=object)}, "object"),
])
def test_restricted_unpickler_refuses(tmp_path, obj, refused):
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(MoofaInputError, match=refused) as info:
        load_restricted_pickle(path)
    assert "bad.pkl" in str(info.value)


def test_reference_pickle_reads_and_checks_the_model(ofa_jsonl):
    ds = read_dataset(need(PKL), "OFA")
    assert len(ds) == 2610 and ds.configs == ofa_jsonl.configs
    assert np.array_equal(ds.accuracies, ofa_jsonl.accuracies)
    assert np.array_equal(ds.peak_memory, ofa_jsonl.peak_memory)
    assert ds.peak_memory[0] == 262912  # docs/design.md#memory-model
    with pytest.raises(MoofaInputError, match="entry 0"):
        read_dataset(PKL, "MOOFA_V3")  # e=6 is not a MOOFA_V3 choice


def test_jsonl_append_read_and_repair(tmp_path):
    path = tmp_path / "d" / "data.jsonl"
    spec = get_model_spec("MOOFA_V3")
    rec = make_record(CONFIG_A, 0.61712, 299520, 159.00384, model="MOOFA_V3")
    assert append_records(path, [rec, dict(rec, image_size=160, accuracy=0.65)], "MOOFA_V3") == 2
    ds = read_dataset(path, spec)
    assert len(ds) == 2 and ds.configs[0] == SubnetConfig.from_dict(CONFIG_A)
    assert ds.accuracies.tolist() == [0.61712, 0.65] and ds.flops[0] == 159.00384
    assert ds.peak_memory[0] == 299520
    with path.open("a") as fh:  # a kill in the middle of an append
        fh.write('{"ks": [5, 5')
    with pytest.raises(MoofaInputError, match="line 3"):
        read_dataset(path, spec)
    assert repair_tail(path) == len('{"ks": [5, 5')
    assert repair_tail(path) == 0 and len(read_dataset(path, spec)) == 2
    with pytest.raises(MoofaInputError, match="record 1: accuracy"):
        append_records(path, [rec, dict(rec, accuracy=61.7)], "MOOFA_V3")
    assert len(read_dataset(path, spec)) == 2  # nothing written


@pytest.mark.parametrize("change, message", [
    ({"accuracy": "high"}, "line 2: accuracy: must be a finite number"),
    ({"accuracy": 71.2}, r"line 2: accuracy: must be a fraction"),
    ({"e": [5] * 20}, r"line 2: e\[0\]: value 5"),
    ({"d": [2, 3]}, "line 2: d: expected 5 values"),
    ({"colour": 1}, "line 2: unknown field 'colour'"),
    ({"model": "OFA"}, "line 2: model: 'OFA' does not match"),
    (None, "line 2: missing field 'accuracy'"),
    ({"peak_memory": 0}, "line 2: peak_memory: must be > 0, got 0"),
    ({"flops": -3.5}, r"line 2: flops: must be > 0, got -3.5"),
])
def test_jsonl_bad_line_names_the_line(tmp_path, change, message):
    rec = make_record(CONFIG_A, 0.6)
    bad = dict(rec, **change) if change else {k: v for k, v in rec.items() if k != "accuracy"}
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(rec) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(MoofaInputError, match=message) as info:
        read_dataset(path, "MOOFA_V3")
    assert str(path) in str(info.value)


# ----------------------------------------------------------------------------------- training
def test_regression_metrics_golden():
    m = regression_metrics([0.1, 0.2, 0.3, 0.4], [0.1, 0.3, 0.2, 0.4])
    assert m["rmse_pp"] == pytest.approx(100 * np.sqrt(0.02 / 4))
    assert m["mae_pp"] == pytest.approx(5.0)
    assert m["pearson"] == pytest.approx(0.8)
    assert m["kendall_tau"] == pytest.approx(4 / 6)
    tr, te = split_indices(10, 0)
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(10)) and len(te) == 2


@pytest.mark.parametrize("n,fraction,seed", [(10, 0.2, 0), (2610, 0.2, 0), (37, 0.15, 1001), (5, 0.5, 2**32 - 1)])
def test_splits_and_kendall_tau_equal_scikit_learn_and_scipy(n, fraction, seed):
    """Our numpy split and tau-b are the libraries' (the reference's split), rows and ties alike."""
    from scipy.stats import kendalltau
    from sklearn.model_selection import train_test_split
    items = np.arange(100, 100 + n)
    ours, theirs = shuffle_split(items, fraction, seed), train_test_split(items, test_size=fraction, random_state=seed)
    assert [a.tolist() for a in ours] == [np.asarray(a).tolist() for a in theirs]
    rng = np.random.default_rng(seed % 1000)
    x, y = rng.integers(0, 6, n).astype(float), rng.integers(0, 4, n) + 0.5 * rng.random(n)
    if n > 2:
        assert kendall_tau(x, y) == pytest.approx(kendalltau(x, y)[0], rel=1e-12, abs=1e-15)
    assert kendall_tau(x, x) == pytest.approx(1.0) and np.isnan(kendall_tau(np.ones(n), y))


def test_quick_training_ranks_subnets(ofa_jsonl):
    sub = ofa_jsonl.subset(np.arange(0, 2610, 3))  # 870 subnets spread over all bins
    recipe = PredictorRecipe(hidden_size=64, ensemble=2, epochs=12, batch_size=32)
    pred, m = train_predictor(sub, "OFA", seed=1, recipe=recipe, device="cpu")
    assert m["n_train"] == 696 and m["n_test"] == 174
    assert m["kendall_tau"] > 0.8 and m["rmse_pp"] < 0.6  # measured: 0.885, 0.40 pp
    assert len(pred.members) == 2 and pred.extra_features == ("flops", "peak_memory")
    assert 0 <= min(m["member_best_epoch"]) and max(m["member_best_epoch"]) < 12
    _, te = split_indices(len(sub), 1)
    direct = regression_metrics(sub.accuracies[te], pred.predict([sub.configs[i] for i in te]))
    assert direct["rmse_pp"] == pytest.approx(m["rmse_pp"], rel=1e-6)
    _, m2 = train_predictor(sub, "OFA", seed=1, recipe=recipe, device="cpu")
    assert m2["rmse_pp"] == m["rmse_pp"]  # seeded


def test_recipe_from_config_validates():
    r = PredictorRecipe.from_config({"ensemble": 3, "lr": 1, "extra_features": False})
    assert r.ensemble == 3 and r.lr == 1.0 and feature_names(r) == ()
    for section, key in (({"ensembel": 3}, "predictor_config.ensembel"),
                         ({"epochs": 2.5}, "predictor_config.epochs"),
                         ({"lr_schedule": "step"}, "predictor_config.lr_schedule"),
                         ({"val_fraction": 0.5, "test_fraction": 0.5},
                          "predictor_config.test_fraction")):
        with pytest.raises(MoofaInputError, match=key):
            PredictorRecipe.from_config(section)


# ---------------------------------------------------------------------------------------- CLI
def _write_config(tmp_path: Path, data: Path, **extra) -> Path:
    cfg = tmp_path / "config.yaml"
    pc = {"ensemble": 1, "epochs": 4, "hidden_size": 32, "lr": 0.01, **extra}
    cfg.write_text(json.dumps({
        "args": {"model": "OFA", "manual_seed": 0, "device": "cpu"},
        "search_config": {"acc_dataset_path": str(data),
                          "acc_predictor_checkpoint": str(tmp_path / "ck" / "pred.pth.tar")},
        "predictor_config": pc}))
    return cfg


def test_cli_trains_saves_and_plots(tmp_path, ofa_jsonl, capsys):
    data = tmp_path / "data.jsonl"
    append_records(data, ofa_jsonl.subset(np.arange(300)).records(), "OFA")
    cfg = _write_config(tmp_path, data)
    png = tmp_path / "scatter.png"
    assert run_cli(main, ["--config", str(cfg), "--output", str(png)]) == 0
    out = capsys.readouterr().out
    assert "test RMSE (percentage points)" in out and "test Kendall tau" in out
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    ck = tmp_path / "ck" / "pred.pth.tar"
    pred = AccuracyPredictor.load(ck, "OFA")
    assert pred.info["n_train"] == 240
    assert pred.info["test_rmse_pp"] == pytest.approx(float(out.split("test RMSE (percentage "
                                                                      "points)")[1].split()[0]),
                                                      abs=1e-4)


def test_cli_bad_dataset_line_exits_2(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    rec = make_record(dict(CONFIG_A, e=[3] * 20), 0.7)
    data.write_text(json.dumps(rec) + "\n" + json.dumps(rec) + "\n"
                    + json.dumps(dict(rec, image_size="large")) + "\n")
    cfg = _write_config(tmp_path, data)
    assert run_cli(main, ["--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert "line 3" in err[0] and "image_size" in err[0] and "data.jsonl" in err[0]


def test_collapsed_member_is_dropped():
    from moofa.predictor.training import MemberResult, drop_collapsed
    pred = AccuracyPredictor("OFA", hidden_size=8, n_members=4)
    keep = [pred.members[i] for i in (0, 1, 3)]
    res = [MemberResult(5, v) for v in (0.33, 0.35, 1.9, 0.34)]
    assert drop_collapsed(pred, res) == [2]
    assert list(pred.members) == keep
    assert drop_collapsed(pred, [MemberResult(5, v) for v in (0.33, 0.35, 0.40)]) == []


def test_per_gpu_pickle_of_bins_is_flattened_in_bin_order(tmp_path):
    obj = load_restricted_pickle(need(PKL))
    idx = {1: [5, 6, 7], 0: [0, 1]}  # dict order differs from bin order on purpose
    shard = {k: {b: [obj[k][i] for i in ids] for b, ids in idx.items()} for k in obj}
    path = tmp_path / "gpu0.pkl"
    path.write_bytes(pickle.dumps(shard))
    ds = read_dataset(path, "OFA")
    assert ds.accuracies.tolist() == [obj["accuracies"][i] for i in (0, 1, 5, 6, 7)]
    assert ds.peak_memory.tolist() == [obj["efficiencies"][i] for i in (0, 1, 5, 6, 7)]
    assert np.isnan(ds.flops).all()


def test_cli_unsupported_plot_suffix_exits_2_before_training(tmp_path, capsys):
    cfg = _write_config(tmp_path, tmp_path / "missing.jsonl")
    assert run_cli(main, ["--config", str(cfg), "--output", str(tmp_path / "plot.xyz")]) == 2
    err = capsys.readouterr().err
    assert "plot.xyz" in err and "'.xyz'" in err
    assert run_cli(main, ["--config", str(cfg)]) == 2  # then the missing dataset is named
    assert "missing.jsonl: dataset file not found" in capsys.readouterr().err


# ------------------------------------------------------------- bad numbers (issue 22, item 6)
def test_pickle_efficiency_not_positive_or_finite_names_the_entry(tmp_path):
    obj = load_restricted_pickle(need(PKL))
    for bad in (-262912.0, 0, float("nan"), float("inf")):
        shard = {k: list(v[:10]) for k, v in obj.items()}
        shard["efficiencies"][3] = bad
        path = tmp_path / "bad.pkl"
        path.write_bytes(pickle.dumps(shard))
        with pytest.raises(MoofaInputError, match=r"bad\.pkl: efficiencies: entry 3: must be a "
                           r"finite number > 0 \(got ") as info:
            read_dataset(path, "OFA")
        assert repr(bad) in str(info.value)


def test_wrong_file_efficiency_values_are_counted_and_replaced_by_exact_ones(ofa_jsonl, caplog):
    sub = ofa_jsonl.subset(np.arange(0, 2610, 40))  # 66 subnets
    spec = get_model_spec("OFA")
    from moofa.efficiency import flops_batch
    exact_flops = np.asarray(flops_batch(spec, sub.configs), dtype=np.float64)
    wrong = sub.subset(np.arange(len(sub)))
    wrong.peak_memory = sub.peak_memory.copy()
    wrong.peak_memory[[1, 4, 9, 20, 33]] *= 10  # ten times too large
    wrong.flops = exact_flops.copy()
    wrong.flops[[2, 7]] += 50.0
    recipe = PredictorRecipe(hidden_size=16, ensemble=1, epochs=2, batch_size=32)
    good_pred, good = train_predictor(sub, "OFA", seed=0, recipe=recipe, device="cpu")
    caplog.clear()
    with caplog.at_level("WARNING", logger="moofa.predictor.training"):
        pred, m = train_predictor(wrong, "OFA", seed=0, recipe=recipe, device="cpu")
    msgs = [r.getMessage() for r in caplog.records if "exact" in r.getMessage()]
    assert len(msgs) == 2
    assert "5 of 66 record(s) have a peak_memory value" in msgs[0]
    assert "2 of 66 record(s) have a flops value" in msgs[1]
    assert m["rmse_pp"] == good["rmse_pp"]  # the exact values were used
    assert torch.equal(pred.feature_mean, good_pred.feature_mean)


def test_predictor_with_nan_metrics_is_never_written(tmp_path, ofa_jsonl, capsys, monkeypatch):
    import moofa.predictor.training as training
    data = tmp_path / "data.jsonl"
    append_records(data, ofa_jsonl.subset(np.arange(60)).records(), "OFA")
    cfg = _write_config(tmp_path, data)
    fit = training.fit_predictor

    def diverging(predictor, *args, **kw):  # training that ends in NaN weights
        out = fit(predictor, *args, **kw)
        with torch.no_grad():
            for p in predictor.parameters():
                p.fill_(float("nan"))
        return out

    monkeypatch.setattr(training, "fit_predictor", diverging)
    assert run_cli(main, ["--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {data}: test RMSE (pp): ")
    assert "non-finite" in err[0] and err[0].endswith("(got nan)")
    assert not (tmp_path / "ck" / "pred.pth.tar").exists()


def test_nan_checkpoint_prediction_names_the_checkpoint(tmp_path):
    pred = AccuracyPredictor("OFA", hidden_size=8)
    with torch.no_grad():
        pred.members[0].layers[0][0].weight.fill_(float("nan"))
    path = pred.save(tmp_path / "nan.pth.tar")
    loaded = AccuracyPredictor.load(path, "OFA", device="cpu")
    with pytest.raises(CheckpointError, match=r"nan\.pth\.tar: predictor returned a non-finite "
                       r"accuracy .*\(got nan\)"):
        loaded.predict([CONFIG_A | {"e": [3] * 20}])
