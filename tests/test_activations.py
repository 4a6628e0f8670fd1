"""Activation differences (paper section 5): oracles on constructed nets, torchvision VGG-19 hooks, summaries."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn
from torchvision import models as tvm

from advprior.analysis.activations import (
    activation_differences,
    change_summary,
    filter_difference,
    layer_change_batch,
    mean_intervals,
    rel_change,
    relative_change,
)
from advprior.analysis.activations_config import ActivationsConfig
from advprior.attacks import FGSMSweep
from advprior.models.classifier import Classifier
from advprior.models.vgg import IMAGENET_MEAN, IMAGENET_STD, build_torchvision_vgg
from advprior.models.vgg_small import build_vgg_small
from advprior.report.figures import activation_depth, activation_example
from advprior.validation import ConfigError

MAP_LAYERS = ["conv1_2", "conv3_1", "conv5_1"]


def _tiny_vgg(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return build_vgg_small(10, widths=(4, 4, 8, 8, 8), hidden=16, dropout=0.0).freeze()


def test_identical_inputs_give_zero_differences(one_torch_thread):
    model = _tiny_vgg()
    x = torch.rand(5, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    _, _, maps = activation_differences(model, x, x.clone(), MAP_LAYERS)
    for name in MAP_LAYERS:
        assert torch.equal(maps[name].norms, torch.zeros_like(maps[name].norms))
        assert torch.equal(maps[name].heatmap, torch.zeros(5, 32, 32))
        assert torch.equal(maps[name].filter, torch.zeros(5, dtype=torch.long))  # first filter on ties
    rel = relative_change(model, x, x.clone())
    assert list(rel) == model.layer_names
    assert all(torch.equal(v, torch.zeros(5, dtype=torch.float64)) for v in rel.values())
    # eps = 0 through the stage's batch function: FGSM returns the images, so nothing changes anywhere
    rows, _ = layer_change_batch(model, "m", x, torch.arange(5), torch.arange(5), [0.0], model.layer_names)
    assert len(rows) == 5 * len(model.layer_names) and (rows["rel_change"] == 0).all() and (rows["abs_change"] == 0).all()


def _constructed() -> Classifier:
    """1x1 convs on 2 channels: filter 0 reads channel 0 with weight 5, filters 1 and 2 read channel 1
    with weights 1 and 0.5; a bias of 1 keeps every pre-activation positive, so the ReLU is the identity."""
    conv = nn.Conv2d(2, 3, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0], conv.weight[1, 1], conv.weight[2, 1] = 5.0, 1.0, 0.5
        conv.bias.fill_(1.0)
    net = nn.Sequential(OrderedDict(conv=conv, relu=nn.ReLU(), pool=nn.MaxPool2d(2), flat=nn.Flatten(),
                                    fc=nn.Linear(3 * 16, 2)))
    return Classifier(net, [0.0, 0.0], [1.0, 1.0], {"conv1_1": net.relu, "pool1": net.pool, "fc8": net.fc},
                      num_classes=2).freeze()


def test_the_filter_that_sees_the_perturbation_is_picked():
    model = _constructed()
    x = 0.2 + 0.6 * torch.rand(1, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    adv = x.clone()
    adv[0, 1, 2:4, 4:6] += 0.1  # channel 1 only, one 2x2 pooling cell; filter 0 (largest weight) is blind to it
    delta = 0.1 * 2  # L2 norm of the perturbation: 4 pixels of 0.1
    _, _, maps = activation_differences(model, x, adv, ["conv1_1", "pool1"])
    conv = maps["conv1_1"]
    tol = dict(rtol=1e-5, atol=1e-6)  # float32 activations
    torch.testing.assert_close(conv.norms[0], torch.tensor([0.0, delta, 0.5 * delta], dtype=torch.float64), **tol)
    assert int(conv.filter[0]) == 1 and float(conv.filter_norm[0]) == pytest.approx(delta)
    expected = torch.zeros(8, 8)
    expected[2:4, 4:6] = 0.1
    torch.testing.assert_close(conv.heatmap[0], expected, **tol)  # same size: bilinear resampling is the identity
    pool = maps["pool1"]  # the max over each cell moves by exactly 0.1 in the perturbed cell only
    torch.testing.assert_close(pool.norms[0], torch.tensor([0.0, 0.1, 0.05], dtype=torch.float64), **tol)
    assert int(pool.filter[0]) == 1
    coarse = torch.zeros(1, 1, 4, 4)
    coarse[0, 0, 1, 2] = 0.1
    torch.testing.assert_close(pool.heatmap[0], F.interpolate(coarse, size=(8, 8), mode="bilinear",
                                                              align_corners=False)[0, 0], **tol)
    r, c = divmod(int(pool.heatmap[0].argmax()), 8)
    assert 2 <= r < 4 and 4 <= c < 6  # the hottest pixel lies in the perturbed patch
    with pytest.raises(ValueError, match="conv or pool"):
        activation_differences(model, x, adv, ["fc8"])
    with pytest.raises(ValueError, match="differ in shape"):
        filter_difference(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5), (8, 8))
    with pytest.raises(ValueError, match="not named layers"):
        activation_differences(model, x, adv, ["conv9_9"])


def test_relative_change_guard_for_a_silent_clean_layer():
    abs_change = torch.tensor([0.0, 0.0, 1.0, 2.0], dtype=torch.float64)
    norm = torch.tensor([0.0, 2.0, 0.0, 4.0], dtype=torch.float64)
    out = rel_change(abs_change, norm)
    assert out[0] == 0 and out[1] == 0 and torch.isnan(out[2]) and out[3] == 0.5


def _vgg19_hand_changes(net: tvm.VGG, clean: torch.Tensor, adv: torch.Tensor) -> dict[str, np.ndarray]:
    """||a_adv - a|| / ||a|| at every ReLU and max-pool of torchvision's VGG-19, from hooks of our own."""
    names: dict[nn.Module, str] = {}
    block, conv = 1, 0
    for m in net.features:
        if isinstance(m, nn.Conv2d):
            conv += 1
        elif isinstance(m, nn.ReLU):
            names[m] = f"conv{block}_{conv}"
        elif isinstance(m, nn.MaxPool2d):
            names[m] = f"pool{block}"
            block, conv = block + 1, 0
    names[net.classifier[1]], names[net.classifier[4]], names[net.classifier[6]] = "fc6", "fc7", "fc8"
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def acts(x):
        out = {}
        hooks = [m.register_forward_hook(lambda m, i, o: out.__setitem__(names[m], o.detach().clone()))
                 for m in names]
        with torch.no_grad():
            net((x - mean) / std)
        for h in hooks:
            h.remove()
        return out

    a, b = acts(clean), acts(adv)
    return {k: ((b[k] - a[k]).double().flatten(1).norm(dim=1) / a[k].double().flatten(1).norm(dim=1)).numpy()
            for k in a}


def test_layer_change_equals_hand_hooks_on_torchvision_vgg19(one_torch_thread):
    torch.manual_seed(0)
    model = build_torchvision_vgg("vgg19", weights=None).freeze()
    gen = torch.Generator().manual_seed(1)
    clean = torch.rand(2, 3, 32, 32, generator=gen)
    adv = (clean + 0.03 * torch.randn(clean.shape, generator=gen).sign()).clamp(0, 1)
    ours = relative_change(model, clean, adv)
    hand = _vgg19_hand_changes(model.net, clean, adv)
    assert list(ours) == list(hand)  # every conv (its ReLU), every pool, fc6, fc7, fc8, in forward order
    assert len(hand) == 16 + 5 + 3
    for name, v in hand.items():
        np.testing.assert_allclose(ours[name].numpy(), v, rtol=1e-5, err_msg=name)
        assert np.all(v > 0), name


def test_batch_examples_use_the_study_fgsm_bit_for_bit(one_torch_thread):
    model = _tiny_vgg(3)
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(6, 1, 32, 32, generator=gen)
    y = torch.randint(0, 10, (6,), generator=gen)
    idx = torch.arange(10, 16)
    eps = [0.85 / 255, 8 / 255]
    rows, ex = layer_change_batch(model, "m", x, idx, y, eps, ["conv1_1", "fc8"], MAP_LAYERS,
                                  example_indices=[12, 15, 99], figure_eps=8 / 255)
    sweep = FGSMSweep(model, eps).sweep(x, y)
    assert ex.index.tolist() == [12, 15]
    assert torch.equal(ex.adv, sweep.adv_images(1)[[2, 5]])  # the attack study's images, bit for bit
    assert torch.equal(ex.clean, x[[2, 5]])
    for k, e in enumerate(eps):  # the recorded adversarial predictions are the study's
        r = rows[(rows["eps"] == e) & (rows["layer"] == "fc8")].sort_values("index")
        probs = sweep.adv_logits[k].double().softmax(1)
        assert r["adv_top1"].tolist() == probs.argmax(1).tolist()
        np.testing.assert_array_equal(r["adv_top1_prob"].to_numpy(), probs.max(1).values.numpy())
    assert set(rows["layer"]) == {"conv1_1", "fc8"}
    assert rows.groupby("layer")["depth"].first().to_dict() == {"conv1_1": 1, "fc8": len(model.layer_names)}
    _, _, maps = activation_differences(model, ex.clean, ex.adv, MAP_LAYERS)
    for j, name in enumerate(MAP_LAYERS):
        torch.testing.assert_close(ex.filter_norms[:, j], maps[name].filter_norm, rtol=1e-4, atol=1e-6)
        assert ex.heatmaps.shape == (2, 3, 32, 32) and (ex.heatmaps >= 0).all()
    # the stored rows agree with the plain per-pair function
    rel = relative_change(model, x, sweep.adv_images(1), ["conv1_1", "fc8"])
    r = rows[(rows["eps"] == 8 / 255) & (rows["layer"] == "fc8")].sort_values("index")
    np.testing.assert_allclose(r["rel_change"].to_numpy(), rel["fc8"].numpy(), rtol=1e-5)


def test_mean_intervals_bca_and_edge_cases():
    (m0, lo0, _), (m1, lo1, hi1), const = mean_intervals([np.array([]), np.array([0.3]), np.full(7, 0.25)], 100, 0)
    assert np.isnan(m0) and np.isnan(lo0)
    assert m1 == 0.3 and np.isnan(lo1) and np.isnan(hi1)
    assert const == (0.25, 0.25, 0.25)
    rng = np.random.default_rng(0)
    v, w = rng.normal(1.0, 0.5, 400), rng.gamma(2.0, size=400)
    (m, lo, hi), both_w = mean_intervals([v, w], 2000, 0)
    t_lo, t_hi = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    assert m == pytest.approx(v.mean())
    width = t_hi - t_lo
    assert abs(lo - t_lo) < 0.1 * width and abs(hi - t_hi) < 0.1 * width  # symmetric data: BCa ~ t-interval
    # stacking samples shares the resamples but gives each the interval it gets alone (scipy, same seed)
    alone = stats.bootstrap((w,), np.mean, n_resamples=2000, method="BCa", random_state=np.random.default_rng(0))
    assert both_w[1:] == pytest.approx((alone.confidence_interval.low, alone.confidence_interval.high), rel=1e-9)
    assert mean_intervals([v, w], 2000, 0) == [(m, lo, hi), both_w]  # seeded


def test_change_summary_groups_and_counts():
    rng = np.random.default_rng(0)
    rows = []
    for layer, depth in (("conv1_1", 1), ("fc8", 3)):
        for i in range(30):
            cat = "true" if i < 10 else "unchanged"
            rows.append({"model": "m", "eps": 0.1, "eps_255": 25.5, "layer": layer, "depth": depth, "index": i,
                         "rel_change": np.nan if (layer == "fc8" and i == 0) else rng.uniform(0, depth),
                         "category": cat})
    table = pd.DataFrame(rows)
    s = change_summary(table, n_boot=200, seed=0)
    assert s["category"].tolist() == ["all", "all", "true", "true", "unchanged", "unchanged"]
    assert s["layer"].tolist() == ["conv1_1", "fc8"] * 3
    row = s[(s.category == "true") & (s.layer == "fc8")].iloc[0]
    assert row.n == 9 and row.n_undefined == 1
    g = table[(table.category == "true") & (table.layer == "fc8")]["rel_change"].dropna()
    assert row.rel_change_mean == pytest.approx(g.mean())
    assert (s.rel_change_low <= s.rel_change_mean).all() and (s.rel_change_mean <= s.rel_change_high).all()
    assert s[s.category == "all"]["n"].tolist() == [30, 29]


@pytest.mark.parametrize("override, key", [
    ({"layers": "conv1_2"}, "activations.layers"),
    ({"layers": ["conv1_2", "conv1_2"]}, "activations.layers"),
    ({"change_layers": []}, "activations.change_layers"),
    ({"epsilons": [-1]}, "activations.epsilons"),
    ({"epsilons": []}, "activations.epsilons"),
    ({"figure_eps": "x"}, "activations.figure_eps"),
    ({"examples_per_category": -1}, "activations.examples_per_category"),
    ({"examples_per_category": 1.5}, "activations.examples_per_category"),
    ({"typo": 1}, "activations"),
])
def test_config_values_are_checked(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        ActivationsConfig.from_cfg(override)
    assert ActivationsConfig.from_cfg({}).layers == MAP_LAYERS


def test_figures_draw_examples_and_depth():
    maps = torch.rand(3, 32, 32)
    fig = activation_example(torch.rand(1, 32, 32), torch.rand(1, 32, 32), MAP_LAYERS, maps, [1, 2, 3],
                             [0.5, 0.2, 0.1], clean=(3, 0.9), adv=(5, 0.8), true_label=3)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 5 and images[2].get_clim() == (0, pytest.approx(float(maps[0].max())))
    with pytest.raises(ValueError, match="heatmaps"):
        activation_example(torch.rand(1, 8, 8), torch.rand(1, 8, 8), MAP_LAYERS, maps[:2], [1, 2], [0.1, 0.1],
                           clean=(0, 1.0), adv=(1, 1.0))
    s = pd.DataFrame({"model": "m", "eps": [0.0, 0.0, 0.1, 0.1], "category": "all", "layer": ["a", "b"] * 2,
                      "depth": [1, 2] * 2, "n": 5, "rel_change_mean": [0, 0, 0.1, 0.3],
                      "rel_change_low": [0, 0, 0.05, 0.2], "rel_change_high": [0, 0, 0.2, 0.4]})
    ax = activation_depth(s, "m").axes[0]
    assert len(ax.lines) == 1 and ax.get_yscale() == "log"  # eps 0 left out
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.1, 0.3])
