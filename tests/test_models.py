"""Supernets: reference state-dict layout, exact subnet extraction, kernel transform, loading,
sampling and validation (issue 2; docs/design.md#architecture)."""
from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn as nn
from conftest import REFERENCE, needs_reference

from moofa.errors import CheckpointError
from moofa.models import MODELS, MobileNetV3, SubnetConfig, build_supernet, count_parameters, moofa_widths
from moofa.models.bn_calibration import set_running_statistics
from moofa.models.dynamic import DynamicSeparableConv2d
from moofa.models.supernet import load_weights

PARAMS = {"OFA": 7_678_880, "CompOFA": 7_678_880, "MOOFA_V1": 33_834_184, "MOOFA_V2": 8_326_088,
          "MOOFA_V3": 19_351_360}


def shapes(net: nn.Module) -> dict:
    return {k: list(v.shape) for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def manifest() -> dict:
    if not (REFERENCE / "state_dict_manifest.json").is_file():
        pytest.skip(f"reference data not found at {REFERENCE}")
    return json.loads((REFERENCE / "state_dict_manifest.json").read_text())


def randomise(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and kernel-transform matrices, so equalities mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("_matrix"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
    return net


@needs_reference
@pytest.mark.parametrize("model", MODELS)
def test_state_dict_matches_reference_manifest(model: str, manifest: dict) -> None:
    ref = manifest[model]
    net = build_supernet(model)
    assert list(shapes(net).items()) == list(ref["supernet_state_dict"].items())
    assert count_parameters(net) == ref["supernet_params"] == PARAMS[model]
    net.set_max_net()
    largest = net.get_active_subnet()
    assert shapes(largest) == ref["largest_subnet_state_dict"]
    assert count_parameters(largest) == ref["largest_subnet_params"]
    s = net.spec
    net.set_active_subnet(min(s.ks_list), min(s.expand_list), min(s.depth_list))
    smallest = net.get_active_subnet()
    assert shapes(smallest) == ref["smallest_subnet_state_dict"]
    assert count_parameters(smallest) == ref["smallest_subnet_params"]
    # the static builder gives the same layout without a supernet
    built = MobileNetV3.build(s, s.min_config())
    assert shapes(built) == ref["smallest_subnet_state_dict"]


@pytest.mark.parametrize("model", MODELS)
def test_extracted_subnet_equals_supernet(model: str) -> None:
    torch.manual_seed(1)
    random.seed(1)
    net = randomise(build_supernet(model, n_classes=10)).eval()
    for r in net.spec.image_sizes:
        net.sample_active_subnet()
        # e = 1 blocks: the IB must be skipped in both (docs/design.md#departures-from-the-reference)
        if model == "MOOFA_V2":
            net.set_active_subnet(e=[1, 1.5, 2, 1] * 5)
        x = torch.randn(1, 3, r, r)
        with torch.no_grad():
            a, b = net(x), net.get_active_subnet().eval()(x)
        assert a.shape == (1, 10)
        assert (a - b).abs().max().item() < 1e-4
    # different subnets really compute different functions
    with torch.no_grad():
        net.set_max_net()
        big = net(x)
        net.set_active_subnet(3, min(net.spec.expand_list), 2)
        assert (net(x) - big).abs().max().item() > 1e-4


def test_moofa_v2_expand_one_skips_inverted_bottleneck() -> None:
    net = build_supernet("MOOFA_V2", n_classes=10)
    net.set_active_subnet(e=1)
    sub = net.get_active_subnet()
    assert all(b.conv.inverted_bottleneck is None for b in sub.blocks)
    calls = []
    ib = net.blocks[1].conv.inverted_bottleneck.conv
    handle = ib.register_forward_hook(lambda *a: calls.append(1))
    net.eval()(torch.randn(1, 3, 64, 64))
    handle.remove()
    assert calls == []


def test_kernel_transform_identity_is_centre_crop() -> None:
    conv = DynamicSeparableConv2d(4, [3, 5, 7])
    w = conv.conv.weight
    assert torch.equal(conv.active_filter(4, 3), w[:, :, 2:5, 2:5])
    assert torch.equal(conv.active_filter(4, 5), w[:, :, 1:6, 1:6])
    assert torch.equal(conv.active_filter(2, 7), w[:2])


def test_kernel_transform_random_matrices() -> None:
    torch.manual_seed(0)
    conv = DynamicSeparableConv2d(3, [3, 5, 7])
    m75, m53 = torch.randn(25, 25), torch.randn(9, 9)
    with torch.no_grad():
        getattr(conv, "7to5_matrix").copy_(m75)
        getattr(conv, "5to3_matrix").copy_(m53)
    w = conv.conv.weight.detach()
    for c in range(3):
        v5 = m75 @ w[c, 0, 1:6, 1:6].reshape(25)            # M75 . vec(crop5(W))
        f3 = m53 @ v5.reshape(5, 5)[1:4, 1:4].reshape(9)     # M53 . crop3(reshape(.))
        assert torch.allclose(conv.active_filter(3, 3)[c, 0].detach(), f3.reshape(3, 3), atol=1e-5)
        assert torch.allclose(conv.active_filter(3, 5)[c, 0].detach(), v5.reshape(5, 5), atol=1e-5)


def test_moofa_width_derivation() -> None:
    assert moofa_widths() == [3, 8, 24, 96, 288, 360, 384, 392, 392]


def test_reference_key_names_load(tmp_path) -> None:
    torch.manual_seed(0)
    src = randomise(build_supernet("OFA", n_classes=10), seed=3)
    # static teacher checkpoint (non-nested names, no transform matrices), legacy OFA names
    teacher = src.build_teacher()
    legacy = {k.replace("blocks.1.conv.", "blocks.1.mobile_inverted_conv."): v
              for k, v in teacher.state_dict().items()}
    torch.save({"state_dict": legacy}, tmp_path / "teacher.pth.tar")
    dst = build_supernet("OFA", n_classes=10)
    load_weights(dst, tmp_path / "teacher.pth.tar")
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        src.eval(), dst.eval()
        src.set_max_net()
        assert torch.allclose(src(x), dst(x), atol=1e-6)
    # the matrices were not in the file: they stay at identity
    assert torch.equal(getattr(dst.blocks[1].conv.depth_conv.conv, "7to5_matrix"), torch.eye(25))
    # a supernet checkpoint round-trips exactly
    torch.save({"state_dict": src.state_dict()}, tmp_path / "super.pth.tar")
    again = build_supernet("OFA", n_classes=10)
    load_weights(again, tmp_path / "super.pth.tar")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), src.state_dict().values()))


def test_mismatched_checkpoint_fails_with_one_line(tmp_path) -> None:
    torch.save({"state_dict": build_supernet("OFA", n_classes=10).state_dict()}, tmp_path / "ofa.pth.tar")
    with pytest.raises(CheckpointError) as err:
        load_weights(build_supernet("MOOFA_V3", n_classes=10), tmp_path / "ofa.pth.tar")
    msg = str(err.value)
    assert "\n" not in msg and "ofa.pth.tar" in msg and "mis-shaped" in msg and "first:" in msg
    (tmp_path / "bad.pth.tar").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pth.tar"):
        load_weights(build_supernet("OFA", n_classes=10), tmp_path / "bad.pth.tar")


def test_set_active_subnet_validates() -> None:
    net = build_supernet("MOOFA_V3", n_classes=10)
    before = net.get_current_config()
    with pytest.raises(ValueError, match=r"ks: expected 20 values"):
        net.set_active_subnet(ks=[3] * 19)
    with pytest.raises(ValueError, match=r"e\[3\]: value 6"):
        net.set_active_subnet(e=[2, 3, 4, 6] + [2] * 16)
    with pytest.raises(ValueError, match="expand_ratio"):
        net.set_active_subnet(expand_ratio=4)
    with pytest.raises(ValueError, match=r"d: expected 5"):
        net.set_active_subnet(d=[2, 3])
    assert net.get_current_config() == before
    assert net.set_active_subnet(ks=5, d=[2, None, 3, 4, 2])["d"] == [2, 4, 3, 4, 2]


def test_sampling_reproduces_reference_draw_order() -> None:
    net = build_supernet("MOOFA_V3", n_classes=10)
    net.set_constraint([3, 4], "expand_ratio")
    random.seed(int(f"{17}{1:03d}000"))
    got = net.sample_active_subnet()
    random.seed(int(f"{17}{1:03d}000"))
    ks = [random.choice([3, 5, 7]) for _ in range(20)]
    e = [random.choice([3, 4]) for _ in range(20)]
    d = [random.choice([2, 3, 4]) for _ in range(5)]
    assert got == {"ks": ks, "e": e, "d": d} == net.get_current_config()
    with pytest.raises(ValueError):
        net.set_constraint([6], "expand_ratio")
    with pytest.raises(ValueError):
        net.set_constraint([3], "width")


def test_compofa_sampling_couples_depth_and_expand() -> None:
    net = build_supernet("CompOFA", n_classes=10)
    for _ in range(20):
        cfg = net.sample_active_subnet()
        for s, d in enumerate(cfg["d"]):
            assert set(cfg["e"][4 * s: 4 * s + 4]) == {{2: 3, 3: 4, 4: 6}[d]}


@pytest.mark.parametrize("stage", [0, 1])
def test_channel_resorting_preserves_the_full_network(stage: int) -> None:
    torch.manual_seed(0)
    net = randomise(build_supernet("OFA", n_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = net(x)
        net.re_organize_middle_weights(stage)
        after = net(x)
    assert torch.allclose(before, after, atol=1e-5)
    imp = net.blocks[2].conv.point_linear.conv.conv.weight.abs().sum(dim=(0, 2, 3))
    if stage == 0:
        assert torch.all(imp[:-1] >= imp[1:])


def test_bn_recalibration_writes_batch_averages() -> None:
    torch.manual_seed(0)
    net = build_supernet("OFA", n_classes=10)
    net.set_active_subnet(ks=3, e=3, d=2)
    batches = [torch.randn(4, 3, 32, 32) * (i + 1) for i in range(3)]
    set_running_statistics(net, batches)
    # independent computation for the first BN: mean of per-batch means and biased variances
    conv, bn = net.first_conv.conv, net.first_conv.bn
    means, variances = [], []
    for b in batches:
        y = conv(b)
        means.append(y.mean(dim=(0, 2, 3)))
        variances.append(y.var(dim=(0, 2, 3), unbiased=False))
    assert torch.allclose(bn.running_mean, torch.stack(means).mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, torch.stack(variances).mean(0), rtol=1e-4)
    # a sliced dynamic BN gets only its leading entries written
    ib_bn = net.blocks[1].conv.inverted_bottleneck.bn.bn
    assert torch.all(ib_bn.running_mean[48:] == 0) and torch.any(ib_bn.running_mean[:48] != 0)
    assert "forward" not in vars(bn)  # patched forwards were restored


def test_subnet_config_validation() -> None:
    spec = build_supernet("MOOFA_V3", n_classes=10).spec
    cfg = SubnetConfig.from_dict({"ks": [3] * 20, "e": [2.0] * 20, "d": [2] * 5, "image_size": 128})
    assert cfg.validate(spec).e[0] == 2 and isinstance(cfg.e[0], int)
    with pytest.raises(ValueError, match="image_size"):
        SubnetConfig.from_dict({"ks": [3] * 20, "e": [2] * 20, "d": [2] * 5})
    with pytest.raises(ValueError, match=r"ks\[0\]: value 4"):
        SubnetConfig([4] + [3] * 19, [2] * 20, [2] * 5, 128).validate(spec)
