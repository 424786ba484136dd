"""Embedded datasets, transforms, samplers and the data provider (docs/design.md#protocols)."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from moofa.config import Args, load_config, task_args
from moofa.data import (
    DataProvider,
    DistributedSubsetSampler,
    ElasticResolutionBatchSampler,
    candidate_sizes,
    draw_resolution,
    ensure_dataset,
    resolution_seed,
    split_train_valid,
)
from moofa.data.datasets import MARKER, digits_arrays
from moofa.data.transforms import test_resize_size, test_transform, train_transform
from moofa.errors import MoofaInputError

TINY = {"n_classes": 4, "train_per_class": 30, "val_per_class": 5, "image_size": 16,
        "difficulty": 0.3, "seed": 1}


def make_args(tmp_path: Path, **args) -> dict:
    """Teacher-step args of a config written to disk (the real loading path)."""
    base = {"dataset": "synthetic", "data_path": str(tmp_path / "synth"), "synthetic": TINY,
            "base_batch_size": 8, "n_worker": 0, "valid_size": 20, "device": "cpu"}
    base.update(args)
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump({"args": base}))
    return task_args(load_config(p), "teacher")


def files_and_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- resolution draws (docs/design.md#protocols.30) ----------------------------------------------

def test_resolution_seed_golden():
    assert resolution_seed(0, 0) == 0
    assert resolution_seed(12, 3) == 12003
    assert resolution_seed(5, 120) == 5120
    assert resolution_seed(7, 1, rank=2) == 7001002


@pytest.mark.parametrize("continuous", [False, True])
def test_draws_equal_the_reference_random_seed_draw(continuous):
    cands = candidate_sizes([128, 160, 192, 224], continuous)
    assert cands == ([128, 160, 192, 224] if not continuous else list(range(128, 225, 4)))
    state = random.getstate()
    for t in (0, 1, 7, 119):
        for b in range(60):
            random.seed(int(f"{b}{t:03d}"))  # the reference: random.seed then random.choices
            expected = random.choices(cands, weights=None)[0]
            random.setstate(state)
            assert draw_resolution(b, t, cands) == expected
    assert random.getstate() == state  # the draw does not touch the global RNG


def test_batch_sampler_sizes_follow_seeds_and_ranks_agree():
    cands = [128, 160, 192, 224]
    per_rank = []
    for rank in (0, 1):
        bs = ElasticResolutionBatchSampler(DistributedSubsetSampler(range(103), 2, rank), 5, cands)
        bs.set_epoch(4)
        batches = list(bs)
        assert len(batches) == len(bs) == 11  # ceil(52 / 5)
        sizes = [b[0][1] for b in batches]
        assert all(len({s for _, s in b}) == 1 for b in batches)
        assert sizes == [draw_resolution(i, 4, cands) for i in range(11)]
        per_rank.append(sizes)
    assert per_rank[0] == per_rank[1] and len(set(per_rank[0])) > 1
    unsync = [ElasticResolutionBatchSampler(range(100), 5, cands, sync=False, rank=r) for r in (0, 1)]
    s0, s1 = ([b[0][1] for b in u] for u in unsync)
    assert s0 == [draw_resolution(i, 0, cands, rank=0) for i in range(20)] and s0 != s1


# ---- samplers and split ------------------------------------------------------------------------

def test_valid_split_indices():
    g = torch.Generator()
    g.manual_seed(2147483647)
    perm = torch.randperm(500, generator=g).tolist()
    train, valid = split_train_valid(500, 100)
    assert valid == perm[:100] and train == perm[100:]
    train, valid = split_train_valid(500, 0.1)
    assert valid == perm[:50] and len(train) == 450
    assert split_train_valid(5, None) == ([0, 1, 2, 3, 4], [])
    with pytest.raises(ValueError):
        split_train_valid(50, 50)


def test_distributed_subset_sampler():
    subset = list(range(100, 110))  # 10 items over 3 ranks: padded to 12
    samplers = [DistributedSubsetSampler(subset, 3, r) for r in range(3)]
    for s in samplers:
        s.set_epoch(5)
    g = torch.Generator()
    g.manual_seed(5)
    order = torch.randperm(10, generator=g).tolist()
    order += order[:2]
    shards = [list(s) for s in samplers]
    assert shards == [[subset[i] for i in order[r::3]] for r in range(3)]
    assert all(len(s) == 4 for s in shards) and set(sum(shards, [])) == set(subset)
    samplers[0].set_epoch(6)
    assert list(samplers[0]) != shards[0]


# ---- embedded datasets -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("digits")
    return ensure_dataset(Args.from_mapping({"dataset": "digits", "data_path": str(tmp / "digits")}))


def test_digits_written_once_with_all_images(digits_root):
    counts = {split: sum(1 for _ in (digits_root / split).rglob("*.png")) for split in ("train", "val")}
    assert counts["train"] + counts["val"] == 1797
    assert counts["val"] == 360  # 20 % stratified (sklearn rounds the test share up)
    classes = sorted(p.name for p in (digits_root / "train").iterdir())
    assert classes == [str(c) for c in range(10)]
    marker = (digits_root / MARKER).stat().st_mtime_ns
    assert ensure_dataset(Args.from_mapping({"dataset": "digits", "data_path": str(digits_root)})) == digits_root
    assert (digits_root / MARKER).stat().st_mtime_ns == marker  # not rewritten
    assert not [p for p in digits_root.parent.iterdir() if ".tmp-" in p.name]
    x_tr, y_tr, _, _ = digits_arrays()
    first = sorted((digits_root / "train" / str(y_tr[0])).iterdir())[0]
    img = Image.open(first)
    assert img.mode == "RGB" and img.size == (32, 32)
    assert np.array_equal(np.asarray(img), x_tr[0])


def test_synthetic_is_deterministic(tmp_path):
    a = ensure_dataset(Args.from_mapping({"dataset": "synthetic", "data_path": str(tmp_path / "a"), "synthetic": TINY}))
    b = ensure_dataset(Args.from_mapping({"dataset": "synthetic", "data_path": str(tmp_path / "b"), "synthetic": TINY}))
    fa, fb = files_and_bytes(a), files_and_bytes(b)
    assert len(fa) == 4 * 35 + 1 and fa == fb
    c = ensure_dataset(Args.from_mapping({"dataset": "synthetic", "data_path": str(tmp_path / "c"),
                        "synthetic": {**TINY, "seed": 2}}))
    assert files_and_bytes(c) != fa


def test_dataset_folder_errors(tmp_path):
    with pytest.raises(MoofaInputError, match=r"args.data_path: dataset folder .*nowhere/train not found"):
        ensure_dataset(Args.from_mapping({"dataset": "imagenet", "data_path": str(tmp_path / "nowhere")}))
    root = ensure_dataset(Args.from_mapping({"dataset": "synthetic", "data_path": str(tmp_path / "s"),
                                             "synthetic": TINY}))
    with pytest.raises(MoofaInputError, match=r"args.data_path: holds dataset 'synthetic'.*difficulty"):
        ensure_dataset(Args.from_mapping({"dataset": "synthetic", "data_path": str(root),
                                          "synthetic": {**TINY, "difficulty": 0.9}}))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(MoofaInputError, match=r"no complete digits dataset.*\(got '.*junk'\)"):
        ensure_dataset(Args.from_mapping({"dataset": "digits", "data_path": str(tmp_path / "junk")}))
    next((root / "val").rglob("*.png")).unlink()
    with pytest.raises(MoofaInputError, match=r"val/ has 19 images, expected 20"):
        ensure_dataset(Args.from_mapping({"dataset": "synthetic", "data_path": str(root), "synthetic": TINY}))


# ---- transforms --------------------------------------------------------------------------------

def test_transforms():
    assert [test_resize_size(r) for r in (128, 160, 192, 224)] == [147, 183, 220, 256]
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    assert test_transform(24)(img).shape == (3, 24, 24)
    assert train_transform(20, 0.08, "tf")(img).shape == (3, 20, 20)
    jitter = train_transform(20, 0.5, "tf").transforms[2]
    assert jitter.brightness == (1 - 32 / 255, 1 + 32 / 255) and jitter.saturation == (0.5, 1.5)
    assert train_transform(20, 0.5, "tf").transforms[0].scale == (0.5, 1.0)
    assert len(train_transform(20, 0.08, None).transforms) == 4


# ---- provider ----------------------------------------------------------------------------------

def test_provider_batches_have_the_drawn_sizes(tmp_path):
    p = DataProvider(make_args(tmp_path), [8, 12, 16])
    assert p.n_classes == 4 and len(p.train_indices) == 100 and len(p.valid_indices) == 20
    for epoch in (0, 3):
        sizes = [x.shape[-1] for x, _ in p.train_loader(epoch)]
        assert len(sizes) == p.train_batches_per_epoch == 13
        assert sizes == [draw_resolution(b, epoch, [8, 12, 16]) for b in range(13)]
        assert len(set(sizes)) > 1  # n_worker 0 really changes the resolution
    x, y = next(iter(p.valid_loader(12)))
    assert x.shape == (20, 3, 12, 12)
    seen = sorted(int(i) for _, ys in p.test_loader(16) for i in ys)
    assert seen == sorted([c for c in range(4) for _ in range(5)])


def test_provider_with_worker_and_two_ranks(tmp_path):
    args = make_args(tmp_path, n_worker=1)
    ranks = [DataProvider(args, [8, 16], rank=r, world_size=2) for r in (0, 1)]
    sizes = [[x.shape[-1] for x, _ in p.train_loader(2)] for p in ranks]
    assert sizes[0] == sizes[1] == [draw_resolution(b, 2, [8, 16]) for b in range(7)]
    assert sum(len(p.test_loader(8).sampler) for p in ranks) == 20  # each rank sees half of val/
    assert ranks[0].valid_loader(8) is ranks[0].valid_loader(8)


def test_valid_none_uses_test_loader(tmp_path):
    p = DataProvider(make_args(tmp_path, valid_size=None), [16])
    assert p.valid_loader(16) is p.test_loader(16) and len(p.train_indices) == 120


def test_calibration_batches_cached_and_deterministic(tmp_path):
    args = make_args(tmp_path, bn_calib_images=2000, bn_calib_batch_size=50)
    p0 = DataProvider(args, [8, 16])
    batches = p0.calibration_batches(16)
    assert [b.shape[0] for b in batches] == [50, 50, 20]  # folder (120) smaller than 2000: all
    assert batches[0].shape[1:] == (3, 16, 16)
    assert p0.calibration_batches(16) is batches  # cached per resolution
    other = DataProvider(args.replace(n_worker=1), [8, 16], rank=1, world_size=2).calibration_batches(16)
    assert all(torch.equal(a, b) for a, b in zip(batches, other))  # same on every rank / worker count
    assert p0.calibration_batches(8)[0].shape[-1] == 8

    few = DataProvider(args.replace(bn_calib_images=30, bn_calib_batch_size=30), [16])
    g = torch.Generator()
    g.manual_seed(937162211)
    chosen = torch.randperm(120, generator=g)[:30].tolist()
    ds = few.train_folder
    # the 30 images are those of the seeded subset, with the training augmentation applied
    ref = [few._view(ds, few._train_tf, 16, item_seed=937162211)[(i, 16)][0] for i in chosen]
    assert torch.equal(few.calibration_batches(16)[0], torch.stack(ref))
    plain = torch.stack([test_transform(16)(ds.loader(ds.samples[i][0])) for i in chosen])
    assert not torch.equal(few.calibration_batches(16)[0], plain)


def test_imagenette_labels_remapped(tmp_path):
    root = ensure_dataset(Args.from_mapping({"dataset": "synthetic", "data_path": str(tmp_path / "nette"),
                           "synthetic": {**TINY, "n_classes": 10, "train_per_class": 2, "val_per_class": 1}}))
    p = DataProvider(make_args(tmp_path, dataset="imagenette", data_path=str(root), valid_size=None), [16])
    assert p.n_classes == 1000
    labels = sorted(int(i) for _, ys in p.test_loader(16) for i in ys)
    assert labels == [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]


def test_missing_data_path_error(tmp_path):
    with pytest.raises(MoofaInputError, match=r"^args.data_path: .*not found.*\(got '.*missing'\)$"):
        DataProvider(make_args(tmp_path, dataset="imagenet", data_path=str(tmp_path / "missing")), [16])


def test_evaluation_shards_cover_each_image_once() -> None:
    from moofa.data.samplers import ShardSampler, evenly_spaced
    subset = evenly_spaced(103, 40)
    assert len(subset) == 40 and len(set(subset)) == 40 and subset[0] == 0 and subset[-1] == 39 * 103 // 40
    for world in (1, 2, 3, 7):
        shards = [list(ShardSampler(subset, world, r)) for r in range(world)]
        assert sorted(i for s in shards for i in s) == sorted(subset)  # no padding, no duplicates
    assert evenly_spaced(5, None) == evenly_spaced(5, 9) == [0, 1, 2, 3, 4]


# ---- hostile image folders (issue 22, item 5) ---------------------------------------------------

def test_symlink_loop_in_a_class_folder_is_not_followed(tmp_path, caplog):
    args = make_args(tmp_path)
    root = ensure_dataset(args)
    cls = root / "train" / "1"
    (cls / "up").symlink_to("..")                      # a loop: train/1/up/1/up/...
    (cls / "twin").symlink_to(root / "train" / "2")    # another class's images
    extra = tmp_path / "extra"                         # a folder outside the dataset: followed
    extra.mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(extra / f"e{i}.png")
    (cls / "more").symlink_to(extra)
    with caplog.at_level("WARNING", logger="moofa.data"):
        p = DataProvider(args, [16])
        again = DataProvider(args, [16])
    labels = [t for _, t in p.train_folder.samples]
    assert len(labels) == 4 * 30 + 2 and [labels.count(c) for c in range(4)] == [30, 32, 30, 30]
    assert [s for s, _ in again.train_folder.samples] == [s for s, _ in p.train_folder.samples]
    assert [s for s, _ in p.train_folder.samples if "more" in s] == [str(cls / "more" / "e0.png"),
                                                                     str(cls / "more" / "e1.png")]
    warned = [r.getMessage() for r in caplog.records if "not following symlink" in r.getMessage()]
    assert len(warned) == 2  # once per link and process, not again for the second provider
    assert any(f"{cls / 'up'} -> {root / 'train'}" in w for w in warned)
    assert any(str(cls / "twin") in w for w in warned)


def test_16_bit_and_other_modes_load_as_8_bit_rgb(tmp_path):
    args = make_args(tmp_path)
    root = ensure_dataset(args)
    old = sorted((root / "train" / "0").glob("*.png"))
    k = np.arange(256).reshape(16, 16)
    grey = np.repeat(k[..., None], 3, axis=-1)
    alpha = np.where(k < 128, 0, 255).astype(np.uint8)
    palette = Image.fromarray((k % 2).astype(np.uint8), "P")
    palette.putpalette([255, 0, 0, 0, 0, 255])
    cases = {  # name: (image, expected RGB array)
        "i16.png": (Image.fromarray((k * 257).astype(np.uint16)), grey),           # I;16
        "i16b.tif": (Image.fromarray((k * 257).astype(">u2")), grey),              # I;16B
        "i32.tif": (Image.fromarray((k * 257).astype(np.int32)), grey),            # I
        "float.tif": (Image.fromarray((k / 255).astype(np.float32)), grey),        # F in 0..1
        "la.png": (Image.fromarray(np.stack([np.zeros_like(alpha), alpha], -1), "LA"),
                   np.repeat(np.where(k < 128, 255, 0)[..., None], 3, -1)),        # onto white
        "p_transparent.png": (palette, np.where((k % 2 == 0)[..., None], [255, 255, 255], [0, 0, 255])),
        "cmyk.tif": (Image.fromarray(np.stack([k, 0 * k, 0 * k, 0 * k], -1).astype(np.uint8), "CMYK"),
                     np.stack([255 - k, 255 + 0 * k, 255 + 0 * k], -1)),
    }
    for path, (name, (img, _)) in zip(old, cases.items()):
        path.unlink()  # replace an image: the dataset keeps its image count
        img.save(path.with_name(name), **({"transparency": 0} if img.mode == "P" else {}))
    assert Image.open(root / "train" / "0" / "i16.png").mode == "I;16"
    p = DataProvider(args, [16])
    for name, (_, expected) in cases.items():
        got = p.train_folder.loader(str(root / "train" / "0" / name))
        assert got.mode == "RGB", name
        assert np.array_equal(np.asarray(got), expected.astype(np.uint8)), name


def test_corrupt_file_is_counted_once_and_named_once_per_process(tmp_path, caplog):
    args = make_args(tmp_path, bn_calib_images=2000, bn_calib_batch_size=40)
    root = ensure_dataset(args)
    bad = sorted((root / "train").rglob("*.png"))[3]
    bad.write_bytes(bad.read_bytes()[:60])  # a truncated image
    with caplog.at_level("WARNING", logger="moofa.data"):
        p = DataProvider(args, [8, 16])
        for epoch in (0, 1):
            list(p.train_loader(epoch))
        list(p.valid_loader(16))
        p.calibration_batches(8), p.calibration_batches(16)  # read again at two resolutions
        assert p.bad_images.take() == {str(bad)} and p.bad_images.take() == set()
        other = DataProvider(args, [16])
        other.calibration_batches(16)
        assert other.bad_images.take() == {str(bad)}
    named = [r for r in caplog.records if str(bad) in r.getMessage()]
    assert len(named) == 1 and "skipping corrupt image" in named[0].getMessage()
