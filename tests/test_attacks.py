"""Oracles for advprior.attacks: exact L-inf bounds, analytic gradients, torchattacks agreement."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advprior.attacks import FGSM, PGD, Attack, FGSMSweep, SweepResult

torchattacks = pytest.importorskip("torchattacks")

PAPER_EPS = 0.85 / 255
# Float rounding of x + eps: |adv - x| <= eps rounded to float32 + half an ulp just below 1.
F32_SLACK = torch.finfo(torch.float32).eps / 4  # 2**-25


def f32(v: float) -> float:
    return float(torch.tensor(v, dtype=torch.float32))


class LinearModel(nn.Module):
    """logits = W x + b on flattened images; the input gradient of CE is known in closed form."""

    def __init__(self, in_features: int, num_classes: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(num_classes, in_features, generator=g))
        self.bias = nn.Parameter(torch.randn(num_classes, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


def analytic_ce_grad(model: LinearModel, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d CE_i / d x_i = W^T (softmax(W x_i + b) - onehot(y_i)), in float64 (per sample, no 1/B)."""
    w, b = model.weight.detach().double(), model.bias.detach().double()
    p = torch.softmax(x.flatten(1).double() @ w.T + b, dim=1)
    onehot = F.one_hot(labels, w.shape[0]).double()
    return ((p - onehot) @ w).view_as(x)


def conv_net(seed: int = 0, num_classes: int = 10, batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(8))
    layers += [
        nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, num_classes),
    ]
    return nn.Sequential(*layers)


def batch(seed: int = 0, n: int = 8, num_classes: int = 10, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    # Saturated pixels so that the clamp to [0,1] is exercised.
    x[:, :, :2] = 0.0
    x[:, :, -2:] = 1.0
    return x, torch.randint(0, num_classes, (n,), generator=g)


ATTACKS = {
    "fgsm": lambda m: FGSM(m, eps=8 / 255),
    "fgsm_targeted": lambda m: FGSM(m, eps=8 / 255, targeted=True),
    "pgd": lambda m: PGD(m, eps=8 / 255, alpha=2 / 255, steps=3),
    "sweep": lambda m: FGSMSweep(m, [0.0, PAPER_EPS, 8 / 255]),
}


# ---------------------------------------------------------------------------------------------------
# Bounds
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [PAPER_EPS, 8 / 255, 0.25, 1.0])
def test_fgsm_linf_bound_and_range(eps: float) -> None:
    model = conv_net().eval()
    x, y = batch()
    adv = FGSM(model, eps)(x, y)
    assert adv.dtype == x.dtype and adv.shape == x.shape and not adv.requires_grad
    assert adv.min() >= 0 and adv.max() <= 1
    # float64 differences of float32 values in [0,1] are exact here: a real-number bound.
    dist = (adv.double() - x.double()).abs()
    assert dist.max().item() <= f32(eps) + F32_SLACK
    # Interior pixels of a generic conv net all move (no zero gradients): by eps up to rounding.
    interior = (adv > 0) & (adv < 1)
    assert torch.allclose(dist[interior], torch.full_like(dist[interior], f32(eps)), rtol=0, atol=F32_SLACK)


def test_float32_rounding_slack_is_needed_and_sufficient() -> None:
    # Every float32 x on a fine grid of [0,1], both directions: fl(x + e) - x can exceed e (so a bare
    # `<= eps` bound is false) but never by more than 2**-25.
    x = torch.linspace(0, 1, 200_001, dtype=torch.float32)
    e = f32(PAPER_EPS)
    excess = torch.cat([
        (torch.clamp(x + e, 0, 1).double() - x.double()) - e,
        (x.double() - torch.clamp(x - e, 0, 1).double()) - e,
    ])
    assert excess.max().item() > 0
    assert excess.max().item() <= F32_SLACK


@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_linf_bound_and_range(random_start: bool) -> None:
    model = conv_net().eval()
    x, y = batch()
    eps = 8 / 255
    torch.manual_seed(0)
    adv = PGD(model, eps=eps, alpha=3 / 255, steps=5, random_start=random_start)(x, y)
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv.double() - x.double()).abs().max().item() <= f32(eps) + F32_SLACK


def test_eps_zero_returns_images_unchanged() -> None:
    model = conv_net().eval()
    x, y = batch()
    assert torch.equal(FGSM(model, 0.0)(x, y), x)
    assert torch.equal(FGSM(model, 0)(x), x)
    assert torch.equal(PGD(model, 0.0, alpha=1 / 255, steps=3)(x, y), x)
    res = FGSMSweep(model, [0.0, 0.1]).sweep(x, y)
    assert torch.equal(res.adv_images(0), x)
    assert torch.equal(res.adv_logits[0], res.clean_logits)


# ---------------------------------------------------------------------------------------------------
# Analytic oracles on a linear model
# ---------------------------------------------------------------------------------------------------
def test_fgsm_linear_model_matches_analytic_gradient_sign() -> None:
    model = LinearModel(3 * 8 * 8, 5, seed=1)
    x, y = batch(seed=2, n=6, num_classes=5, size=8)
    eps = 0.05
    adv = FGSM(model, eps)(x, y)
    sign = analytic_ce_grad(model, x, y).sign()
    assert (sign != 0).all()  # generic W: no zero components, so the sign is unambiguous
    # Whole tensor, clamped pixels included: adv == clamp(x + eps * analytic sign, 0, 1) in float32.
    assert torch.equal(adv, torch.clamp(x + eps * sign.float(), 0, 1))
    # Where not clamped, the perturbation is eps * sign (up to the float32 rounding of x + eps).
    free = (adv > 0) & (adv < 1)
    assert free.float().mean() > 0.5
    delta = (adv.double() - x.double())[free]
    assert torch.allclose(delta, eps * sign[free], rtol=0, atol=F32_SLACK)
    # First-order effect: the true-class probability drops for every sample.
    p_clean = torch.softmax(model(x), 1).gather(1, y[:, None])
    p_adv = torch.softmax(model(adv), 1).gather(1, y[:, None])
    assert (p_adv < p_clean).all()


def test_fgsm_targeted_moves_toward_target_on_linear_model() -> None:
    model = LinearModel(3 * 8 * 8, 5, seed=3)
    x, _ = batch(seed=4, n=6, num_classes=5, size=8)
    with torch.no_grad():
        pred = model(x).argmax(1)
    target = (pred + 1) % 5
    eps = 0.01
    adv = FGSM(model, eps, targeted=True)(x, target)
    # Step DOWN the target's CE: adv = clamp(x - eps * sign(W^T (p - onehot(t))), 0, 1).
    sign = analytic_ce_grad(model, x, target).sign().float()
    assert torch.equal(adv, torch.clamp(x - eps * sign, 0, 1))
    with torch.no_grad():
        p_clean = torch.softmax(model(x), 1).gather(1, target[:, None])
        p_adv = torch.softmax(model(adv), 1).gather(1, target[:, None])
    assert (p_adv > p_clean).all()


def test_log_posterior_model_gives_the_same_attack() -> None:
    # A defended model returning log-posteriors: CE(log_softmax(z)) == CE(z), same attack.
    base = LinearModel(3 * 8 * 8, 5, seed=5)
    logpost = nn.Sequential(base, nn.LogSoftmax(dim=1))
    x, y = batch(seed=6, n=6, num_classes=5, size=8)
    assert torch.equal(FGSM(logpost, 0.03)(x, y), FGSM(base, 0.03)(x, y))


def test_labels_none_uses_clean_predictions() -> None:
    model = conv_net().eval()
    x, _ = batch()
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert torch.equal(FGSM(model, 8 / 255)(x), FGSM(model, 8 / 255)(x, pred))
    res = FGSMSweep(model, [PAPER_EPS, 8 / 255]).sweep(x)
    assert torch.equal(res.labels, pred)
    for rs in (False, True):
        torch.manual_seed(0)
        a = PGD(model, 8 / 255, 2 / 255, 3, random_start=rs)(x)
        torch.manual_seed(0)
        b = PGD(model, 8 / 255, 2 / 255, 3, random_start=rs)(x, pred)
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------
# Sweep
# ---------------------------------------------------------------------------------------------------
class CountingModel(nn.Module):
    """Counts forward passes and backward passes through its output."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.forwards = 0
        self.backwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        out = self.net(x)
        if out.requires_grad:
            out.register_hook(self._count_backward)
        return out

    def _count_backward(self, grad: torch.Tensor) -> None:
        self.backwards += 1


@pytest.mark.parametrize("targeted", [False, True])
def test_sweep_bit_identical_to_per_eps_fgsm(targeted: bool) -> None:
    model = conv_net(seed=7).eval()
    x, y = batch(seed=8)
    epsilons = [0.0, 0.25 / 255, PAPER_EPS, 2 / 255, 8 / 255, 0.5, 1.0]
    sweep = FGSMSweep(model, epsilons, targeted=targeted)
    res = sweep.sweep(x, y)
    assert isinstance(res, SweepResult) and len(res) == len(epsilons)
    assert res.epsilons.shape == (7,) and torch.equal(res.epsilons, torch.tensor(epsilons, dtype=torch.float64))
    assert res.adv_logits.shape == (7, 8, 10) and res.clean_logits.shape == (8, 10)
    assert res.grad_sign.shape == x.shape and set(res.grad_sign.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.equal(res.labels, y)
    stacked = sweep(x, y)
    assert stacked.shape == (7, *x.shape)
    with torch.no_grad():
        assert torch.equal(res.clean_logits, model(x))
    for k, eps in enumerate(epsilons):
        ref = FGSM(model, eps, targeted=targeted)(x, y)
        assert torch.equal(res.adv_images(k), ref)
        assert torch.equal(stacked[k], ref)
        with torch.no_grad():
            assert torch.equal(res.adv_logits[k], model(ref))


def test_sweep_costs_one_backward_and_one_forward_per_eps() -> None:
    model = CountingModel(conv_net().eval())
    x, y = batch()
    FGSMSweep(model, [0.1, 0.2, 0.3, 0.4]).sweep(x)  # labels=None: predictions come from the same forward
    assert (model.forwards, model.backwards) == (1 + 4, 1)
    model.forwards = model.backwards = 0
    FGSM(model, 0.1)(x)
    assert (model.forwards, model.backwards) == (1, 1)


# ---------------------------------------------------------------------------------------------------
# Model state: modes restored, no gradients left behind
# ---------------------------------------------------------------------------------------------------
class ModeRecorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(self.training)
        return x


def mixed_mode_model() -> tuple[nn.Module, ModeRecorder]:
    rec = ModeRecorder()
    model = nn.Sequential(rec, conv_net(batchnorm=True))
    model.train()
    model[1][1].eval()  # BatchNorm frozen by the user: a mixed-mode model
    return model, rec


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_model_modes_restored_and_no_param_grads(name: str) -> None:
    model, rec = mixed_mode_model()
    frozen = model[1][0].weight
    frozen.requires_grad_(False)
    preset = torch.full_like(model[1][-1].bias, 7.0)
    model[1][-1].bias.grad = preset.clone()  # a gradient the user already had must stay untouched
    modes = {n: m.training for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    bn = model[1][1]
    running = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    x, y = batch()
    attack = ATTACKS[name](model)
    out = attack.sweep(x, y) if name == "sweep" else attack(x, y)
    assert out is not None
    assert rec.seen and not any(rec.seen)  # eval mode during every forward
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    for n, p in model.named_parameters():
        if p is model[1][-1].bias:
            assert torch.equal(p.grad, preset)
        else:
            assert p.grad is None, n
    assert torch.equal(bn.running_mean, running[0]) and torch.equal(bn.running_var, running[1])
    assert torch.equal(bn.num_batches_tracked, running[2])


def test_model_modes_restored_when_attack_raises() -> None:
    model, _ = mixed_mode_model()
    modes = {n: m.training for n, m in model.named_modules()}
    x, _ = batch()
    bad_labels = torch.full((8,), 10)  # out of range: detected after the forward, inside eval mode
    for attack in (FGSM(model, 0.1), PGD(model, 0.1, 0.01, 2, random_start=False), FGSMSweep(model, [0.1])):
        with pytest.raises(ValueError, match="labels must be class indices"):
            attack(x, bad_labels)
        assert {n: m.training for n, m in model.named_modules()} == modes

    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    model = nn.Sequential(nn.Identity(), Boom()).train()
    with pytest.raises(RuntimeError, match="boom"):
        FGSM(model, 0.1)(x)
    assert all(m.training for m in model.modules())


def test_attack_under_no_grad_and_inference_mode() -> None:
    model = conv_net().eval()
    x, y = batch()
    ref = FGSM(model, 8 / 255)(x, y)
    with torch.no_grad():
        assert torch.equal(FGSM(model, 8 / 255)(x, y), ref)
    with torch.inference_mode():
        xi = x.clone()
        assert torch.equal(FGSM(model, 8 / 255)(xi, y), ref)


def test_float64_model_keeps_dtype() -> None:
    model = conv_net().double().eval()
    x, y = batch()
    adv = FGSM(model, PAPER_EPS)(x.double(), y)
    assert adv.dtype == torch.float64
    assert (adv - x.double()).abs().max().item() <= PAPER_EPS + torch.finfo(torch.float64).eps / 4


# ---------------------------------------------------------------------------------------------------
# Agreement with torchattacks
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [PAPER_EPS, 8 / 255, 0.3])
def test_fgsm_matches_torchattacks(eps: float) -> None:
    model = conv_net(seed=11).eval()
    x, y = batch(seed=12)
    assert torch.equal(FGSM(model, eps)(x, y), torchattacks.FGSM(model, eps=eps)(x, y))
    ta = torchattacks.FGSM(model, eps=eps)
    ta.set_mode_targeted_by_label(quiet=True)
    target = (y + 3) % 10
    assert torch.equal(FGSM(model, eps, targeted=True)(x, target), ta(x, target))


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_matches_torchattacks(random_start: bool) -> None:
    model = conv_net(seed=13).eval()
    x, y = batch(seed=14)
    kw = dict(eps=8 / 255, alpha=2 / 255, steps=4, random_start=random_start)
    torch.manual_seed(123)
    ours = PGD(model, **kw)(x, y)
    torch.manual_seed(123)
    ref = torchattacks.PGD(model, **kw)(x, y)
    assert torch.equal(ours, ref)
    if random_start:
        assert not torch.equal(ours, PGD(model, **kw)(x, y))  # the RNG advanced: a different start
    ta = torchattacks.PGD(model, **kw)
    ta.set_mode_targeted_by_label(quiet=True)
    target = (y + 1) % 10
    torch.manual_seed(5)
    ours = PGD(model, targeted=True, **kw)(x, target)
    torch.manual_seed(5)
    assert torch.equal(ours, ta(x, target))


def test_pgd_generator_reproducible_and_leaves_global_rng_alone() -> None:
    model = conv_net().eval()
    x, y = batch()
    kw = dict(eps=8 / 255, alpha=2 / 255, steps=2)
    torch.manual_seed(0)
    via_global = PGD(model, **kw)(x, y)
    state = torch.get_rng_state()
    a = PGD(model, generator=torch.Generator().manual_seed(0), **kw)(x, y)
    b = PGD(model, generator=torch.Generator().manual_seed(0), **kw)(x, y)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
    assert torch.equal(a, via_global)  # a fresh CPU generator seeded 0 == the global CPU RNG seeded 0


def test_pgd_one_step_from_clean_equals_fgsm() -> None:
    model = conv_net().eval()
    x, y = batch()
    eps = 8 / 255
    assert torch.equal(PGD(model, eps, alpha=eps, steps=1, random_start=False)(x, y), FGSM(model, eps)(x, y))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fgsm_sweep_pgd() -> None:
    model = conv_net().eval().cuda()
    x, y = (t.cuda() for t in batch())
    adv = FGSM(model, 8 / 255)(x, y)
    assert adv.device == x.device
    assert torch.equal(adv, torchattacks.FGSM(model, eps=8 / 255)(x, y))
    res = FGSMSweep(model, [8 / 255]).sweep(x, y)
    assert torch.equal(res.adv_images(0), adv)
    g = torch.Generator(device="cuda").manual_seed(0)
    adv = PGD(model, 8 / 255, 2 / 255, 2, generator=g)(x, y)
    assert adv.device == x.device and (adv - x).abs().max().item() <= f32(8 / 255) + F32_SLACK


# ---------------------------------------------------------------------------------------------------
# Argument validation
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [-0.1, 1.5, 8.0, float("nan"), "0.1", None, True])
def test_bad_eps_raises(eps: object) -> None:
    model = conv_net()
    with pytest.raises(ValueError, match="eps"):
        FGSM(model, eps)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eps"):
        PGD(model, eps, alpha=0.01, steps=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epsilons"):
        FGSMSweep(model, [0.1, eps])  # type: ignore[list-item]


def test_bad_arguments_raise() -> None:
    model = conv_net()
    with pytest.raises(ValueError, match="epsilons"):
        FGSMSweep(model, [])
    with pytest.raises(ValueError, match="alpha"):
        PGD(model, 0.1, alpha=0.0, steps=1)
    with pytest.raises(ValueError, match="steps"):
        PGD(model, 0.1, alpha=0.01, steps=-1)
    with pytest.raises(ValueError, match="steps"):
        PGD(model, 0.1, alpha=0.01, steps=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="model"):
        FGSM(lambda x: x, 0.1)  # type: ignore[arg-type]


def test_bad_images_and_labels_raise() -> None:
    model = conv_net().eval()
    x, y = batch()
    normalized = (x - 0.45) / 0.22
    for attack in (FGSM(model, 0.1), PGD(model, 0.1, 0.01, 1), FGSMSweep(model, [0.1])):
        with pytest.raises(ValueError, match=r"\[0,1\] pixel space.*normalized"):
            attack(normalized, y)
        with pytest.raises(ValueError, match="floating point"):
            attack((x * 255).to(torch.uint8), y)
        bad = x.clone()
        bad[0, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match=r"\[0,1\]"):
            attack(bad, y)
        with pytest.raises(ValueError, match="shape"):
            attack(x, y[:3])
        with pytest.raises(ValueError, match="integer"):
            attack(x, y.float())
    with pytest.raises(ValueError, match="labels are required"):
        FGSM(model, 0.1, targeted=True)(x)
    with pytest.raises(ValueError, match="labels are required"):
        FGSMSweep(model, [0.1], targeted=True).sweep(x)


def test_attack_base_is_abstract() -> None:
    with pytest.raises(NotImplementedError):
        Attack(conv_net())(batch()[0])
