"""Adaptive attacks on the Bayesian prior defense: losses, PGD restarts and step sizes, the detector-aware
attack, gradient checks through the prior, and the defense's worst-case columns."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advprior.attacks import FGSM, PGD, DetectorAwarePGD, FGSMSweep
from advprior.attacks.losses import cross_entropy, margin, resolve_loss
from advprior.models.classifier import Classifier
from advprior.prior import BatchedAutoencoder, BayesianPriorClassifier, ClassConditionalKDE, ClassPCA, ClassPrior

ROOT = Path(__file__).resolve().parents[1]

C, D = 3, 12


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: thread barriers on busy shared cores dominate otherwise
    yield
    torch.set_num_threads(n)


def _model(seed: int = 0, dtype=torch.float32) -> Classifier:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, D), nn.ReLU(), nn.Linear(D, C)).to(dtype)
    return Classifier(net, [0.4, 0.5, 0.6], [0.2, 0.25, 0.3], {"fc6": net[2]}, num_classes=C).to(dtype).eval()


def _prior(kernel_cov: str = "isotropic", space: str = "per_class", standardize: bool = False, seed: int = 0
           ) -> ClassPrior:
    """A fitted toy prior: PCA 12 -> 4 (per class, or shared), autoencoder 4 -> 2 -> 1... -> k=2, KDE."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.rand(3 * 9, D, generator=g) * 2
    labels = torch.arange(3).repeat_interleave(9)
    Cs = C if space == "per_class" else 1
    pca = ClassPCA(4).fit(feats, labels if space == "per_class" else torch.zeros_like(labels), Cs)
    ae = BatchedAutoencoder(Cs, in_dim=4, bottleneck=2, seed=seed)
    pts = [torch.randn(n, 2, generator=g) * (c + 1) for c, n in enumerate((5, 7, 6))]
    kde = ClassConditionalKDE("scott", kernel_cov).fit(pts)
    mean = std = None
    if standardize:
        mean, std = torch.randn(Cs, 2, generator=g), torch.rand(Cs, 2, generator=g) + 0.5
    return ClassPrior(pca, ae, kde, space=space, num_classes=C, code_mean=mean, code_std=std).freeze()


def _images(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------------
def test_losses_equal_their_formulas():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 1, 2])
    ref = torch.tensor([max(s[b, j] for j in range(4) if j != y[b]) - s[b, y[b]] for b in range(5)])
    torch.testing.assert_close(margin(s, y, reduction="none"), ref.double())
    torch.testing.assert_close(margin(s, y), ref.double().mean())
    assert torch.equal(cross_entropy(s, y), F.cross_entropy(s, y))
    assert torch.equal(cross_entropy(s, y, reduction="none"), F.cross_entropy(s, y, reduction="none"))
    # -inf scores (classes off a shortlist) never win the max; an excluded label has margin +inf, finite gradient.
    s2 = s.clone().requires_grad_(True)
    masked = s2.masked_fill(torch.tensor([[False, True, False, False]] * 5), float("-inf"))
    m = margin(masked, torch.tensor([0, 3, 1, 2, 2]), reduction="none")
    assert torch.isinf(m[2]) and m[2] > 0 and torch.isfinite(m[[0, 1, 3, 4]]).all()
    m[[0, 1, 3, 4]].sum().backward()
    assert torch.isfinite(s2.grad).all()
    with pytest.raises(ValueError, match="reduction"):
        margin(s, y, reduction="sum")
    with pytest.raises(ValueError, match="loss must be one of"):
        resolve_loss("hinge")
    assert resolve_loss("margin") is margin and resolve_loss(margin) is margin


def test_margin_gradient_survives_where_cross_entropy_underflows():
    # Scores: the label leads by 200 nats (a KDE far from its support points does this easily).
    scores = torch.tensor([[0.0, -200.0, -230.0], [-215.0, 0.0, -250.0]], requires_grad=True)
    y = torch.tensor([0, 1])
    (g_ce,) = torch.autograd.grad(cross_entropy(F.log_softmax(scores, 1), y), scores)
    (g_m,) = torch.autograd.grad(margin(scores, y), scores)
    assert torch.equal(g_ce, torch.zeros_like(g_ce))  # float32: softmax of the others underflows to 0
    assert torch.equal(g_m, torch.tensor([[-0.5, 0.5, 0.0], [0.5, -0.5, 0.0]]))


def test_margin_gradient_through_the_posterior_where_cross_entropy_is_zero():
    """Through BayesianPriorClassifier: once the joint score of the label leads by > 100 nats, CE on the log
    posterior has an input gradient of exactly zero (FGSM with it does not move); the margin on the joint
    scores does not. The lead is constructed (prior weight), whatever the weights' values."""
    model, prior = _model(), _prior()
    x = _images(8)
    probe = BayesianPriorClassifier(model, prior, weight=1.0)
    with torch.no_grad():
        comp = probe.components(x)
    lp = comp["log_prior"]
    y = lp.argmax(1)
    top2 = lp.topk(2, dim=1).values
    gap = (top2[:, 0] - top2[:, 1]).min().item()
    assert gap > 0
    weight = 400.0 / gap  # the label's joint score leads by >= ~400 nats minus the likelihood's spread
    defended = BayesianPriorClassifier(model, prior, weight=weight)
    with torch.no_grad():
        joint = defended.components(x)["joint"]
    lead = joint.gather(1, y[:, None]).squeeze(1) - joint.scatter(1, y[:, None], -math.inf).amax(1)
    assert lead.min() > 150
    xg = x.clone().requires_grad_(True)
    (g_ce,) = torch.autograd.grad(F.cross_entropy(defended(xg), y), xg)
    (g_m,) = torch.autograd.grad(margin(defended.with_output("joint")(xg), y), xg)
    assert torch.equal(g_ce, torch.zeros_like(g_ce))
    assert (g_m.flatten(1).abs().sum(1) > 0).all()
    assert torch.equal(FGSM(defended, 8 / 255)(x, y), x)  # CE: no move at all
    assert not torch.equal(FGSM(defended.with_output("joint"), 8 / 255, loss="margin")(x, y), x)


def test_joint_output_and_with_output():
    model, prior = _model(), _prior()
    clf = BayesianPriorClassifier(model, prior, weight=0.7)
    x = _images()
    with torch.no_grad():
        comp = clf.components(x)
        joint = clf.with_output("joint")
        torch.testing.assert_close(joint(x), comp["log_likelihood"] + 0.7 * comp["log_prior"])
        torch.testing.assert_close(clf(x), F.log_softmax(joint(x), 1))
        assert torch.equal(joint(x).argmax(1), clf(x).argmax(1))
    assert joint.model is clf.model and joint.prior is clf.prior  # a view, no copies
    with pytest.raises(ValueError, match="output"):
        BayesianPriorClassifier(model, prior, output="probs")


# ---------------------------------------------------------------------------------------------------
# FGSM / FGSMSweep / PGD with the loss option
# ---------------------------------------------------------------------------------------------------
class Linear(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(5, 3 * 4 * 4, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T


def test_margin_fgsm_equals_the_analytic_direction():
    """Linear scores W x: d margin / d x = W[j*] - W[y], j* the best other class at x."""
    model = Linear()
    x = _images(6)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    with torch.no_grad():
        s = model(x)
    j = s.scatter(1, y[:, None], -math.inf).argmax(1)
    direction = (model.weight[j] - model.weight[y]).detach().sign().view_as(x)
    eps = 4 / 255
    assert torch.equal(FGSM(model, eps, loss="margin")(x, y), torch.clamp(x + eps * direction, 0, 1))
    # targeted: ascend s_t - max_{j != t} s_j
    jt = s.scatter(1, y[:, None], -math.inf).argmax(1)
    tdir = (model.weight[y] - model.weight[jt]).detach().sign().view_as(x)
    assert torch.equal(FGSM(model, eps, targeted=True, loss="margin")(x, y), torch.clamp(x + eps * tdir, 0, 1))
    sweep = FGSMSweep(model, [0.0, eps], loss="margin")
    assert torch.equal(sweep(x, y)[1], FGSM(model, eps, loss="margin")(x, y))
    assert "loss='margin'" in repr(sweep) and "loss='ce'" in repr(FGSM(model, eps))


@pytest.mark.parametrize("alpha", [0, 0.0, -1 / 255, float("nan"), float("inf"), 1.5, True, "0.1"])
def test_invalid_step_sizes_are_refused(alpha):
    with pytest.raises(ValueError, match="alpha must be a step size in \\(0,1\\]"):
        PGD(Linear(), 8 / 255, alpha, 10)


def test_invalid_steps_and_restarts_are_refused():
    with pytest.raises(ValueError, match="steps"):
        PGD(Linear(), 8 / 255, 2 / 255, -1)
    with pytest.raises(ValueError, match="restarts must be an int >= 1"):
        PGD(Linear(), 8 / 255, 2 / 255, 5, restarts=0)
    with pytest.raises(ValueError, match="needs random_start"):
        PGD(Linear(), 8 / 255, 2 / 255, 5, restarts=2, random_start=False)
    with pytest.raises(ValueError, match="need random_start"):
        PGD(Linear(), 8 / 255, 2 / 255, 5, random_start=False)(_images(2), seeds=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="seeds must be an integer tensor"):
        PGD(Linear(), 8 / 255, 2 / 255, 5)(_images(2), seeds=torch.tensor([0.5, 1.0]))


@pytest.mark.parametrize("targeted", [False, True])
def test_restarts_keep_the_first_success_else_the_highest_loss(targeted):
    """With steps=0 each restart's candidate is just its seeded random start: the selection rule (first
    restart that fools the model -- targeted: reaches the target -- else the highest loss) is recomputed
    exactly from the per-image noise."""
    model = Linear(3)
    x = _images(12, seed=4)
    y = torch.randint(0, 5, (12,), generator=torch.Generator().manual_seed(5))
    seeds = torch.stack([torch.zeros(12, dtype=torch.long), torch.arange(100, 112)], 1)
    eps, R = 0.3, 4
    attack = PGD(model, eps, 0.01, steps=0, restarts=R, loss="margin", targeted=targeted)
    out = attack(x, y, seeds=seeds)
    cands = [torch.clamp(x + attack._start_noise(x, r, seeds), 0, 1) for r in range(R)]
    sign = -1 if targeted else 1
    with torch.no_grad():
        losses = torch.stack([sign * margin(model(c), y, reduction="none") for c in cands])  # (R, B)
        preds = torch.stack([model(c).argmax(1) for c in cands])
    won = preds == y if targeted else preds != y
    for b in range(12):
        wins = torch.nonzero(won[:, b]).flatten()
        r = int(wins[0]) if len(wins) else int(losses[:, b].argmax())
        assert torch.equal(out[b], cands[r][b]), b
    assert won.any(0).sum() > won[0].sum()  # the construction exercises later restarts


def test_more_restarts_only_add_successes_and_seeds_are_per_image():
    model = Linear(1)
    x = _images(16, seed=6)
    y = torch.randint(0, 5, (16,), generator=torch.Generator().manual_seed(7))
    seeds = torch.stack([torch.full((16,), 3), torch.arange(16)], 1)
    one = PGD(model, 2 / 255, 0.5 / 255, 3, loss="margin")(x, y, seeds=seeds)
    three = PGD(model, 2 / 255, 0.5 / 255, 3, restarts=3, loss="margin")(x, y, seeds=seeds)
    with torch.no_grad():
        ok1, ok3 = model(one).argmax(1) == y, model(three).argmax(1) == y
    assert not (ok3 & ~ok1).any()  # restart 0 is the same run: what it fooled stays fooled
    # An image's random start depends on its own seeds only (not its batch position).
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(8))
    start = PGD(model, 2 / 255, 0.5 / 255, 0)
    assert torch.equal(start(x[perm], y[perm], seeds=seeds[perm]), start(x, y, seeds=seeds)[perm])
    assert not torch.equal(start(x, y, seeds=seeds), start(x, y, seeds=seeds + 1))


@pytest.mark.parametrize("targeted", [False, True])
def test_early_stop_keeps_the_first_successful_iterate(targeted):
    """Oracle: the t-step PGD (same seeds) is the t-th iterate; early stopping returns, per image, the first
    iterate that succeeds, else the last one."""
    model = Linear(4).double()
    x = _images(12, seed=11).double()
    y = torch.randint(0, 5, (12,), generator=torch.Generator().manual_seed(12))
    seeds = torch.stack([torch.zeros(12, dtype=torch.long), torch.arange(12)], 1)
    kw = dict(eps=6 / 255, alpha=1 / 255, loss="margin", targeted=targeted)
    S = 8
    out = PGD(model, steps=S, early_stop=True, **kw)(x, y, seeds=seeds)
    iterates = [PGD(model, steps=t, **kw)(x, y, seeds=seeds) for t in range(S + 1)]
    with torch.no_grad():
        preds = torch.stack([model(it).argmax(1) for it in iterates])
    won = preds == y if targeted else preds != y
    for b in range(12):
        first = torch.nonzero(won[:S, b]).flatten()  # iterates 0..S-1 are tested before a step
        t = int(first[0]) if len(first) else S
        assert torch.equal(out[b], iterates[t][b]), b
    assert 0 < won[:S].any(0).sum() < 12  # some images stop early, some run to the end


def test_cosine_schedule_moves_the_analytic_distance():
    """Two-class linear scores: the margin gradient's sign is the constant d = sign(W[1-y] - W[y]), so PGD
    from x moves along d by the sum of its steps, alpha * (steps + 1) / 2 for the cosine schedule
    (sum_t (1 + cos(pi t / S)) / 2 = (S + 1) / 2), clipped to eps and [0,1]."""
    model = Linear(6).double()
    model.weight.data = model.weight.data[:2]
    x = _images(4, seed=13).double()
    y = torch.tensor([0, 1, 1, 0])
    d = (model.weight[1 - y] - model.weight[y]).detach().sign().view_as(x)
    eps, alpha, S = 0.1, 0.01, 9
    pgd = PGD(model, eps, alpha, S, random_start=False, loss="margin", schedule="cosine")
    assert [pgd.step_size(t) for t in (0, S)] == [alpha, 0.0]
    torch.testing.assert_close(pgd(x, y), torch.clamp(x + alpha * (S + 1) / 2 * d, 0, 1))
    far = PGD(model, eps, 0.05, S, random_start=False, loss="margin", schedule="cosine")  # sum > eps: projected
    torch.testing.assert_close(far(x, y), torch.clamp(x + eps * d, 0, 1))
    with pytest.raises(ValueError, match="schedule must be one of"):
        PGD(model, eps, alpha, S, schedule="linear")


# ---------------------------------------------------------------------------------------------------
# The detector-aware attack
# ---------------------------------------------------------------------------------------------------
def test_detector_aware_objective_and_c0_equals_margin_pgd():
    model, prior = _model(), _prior()
    defended = BayesianPriorClassifier(model, prior, weight=1.0)
    x, y = _images(6), torch.tensor([0, 1, 2, 0, 1, 2])
    seeds = torch.stack([torch.zeros(6, dtype=torch.long), torch.arange(6)], 1)
    plain = PGD(defended.with_output("joint"), 8 / 255, 2 / 255, 4, restarts=2, loss="margin")(x, y, seeds=seeds)
    c0 = DetectorAwarePGD(defended, 8 / 255, 2 / 255, 4, c=0.0, restarts=2)(x, y, seeds=seeds)
    assert torch.equal(c0, plain)
    # The objective: margin(joint, y) + c * log p(r | t, x) with t the best other class.
    attack = DetectorAwarePGD(defended, 8 / 255, 2 / 255, 4, c=2.5)
    with torch.no_grad():
        comp = defended.components(x)
        _, _, loss = attack._objective(x, y, False, reduction="none")
    t = comp["joint"].scatter(1, y[:, None], -math.inf).argmax(1)
    ref = margin(comp["joint"], y, reduction="none") + 2.5 * comp["log_prior"].gather(1, t[:, None]).squeeze(1)
    torch.testing.assert_close(loss, ref)
    with torch.no_grad():
        _, _, tl = attack._objective(x, y, True, reduction="none")
    ref_t = -margin(comp["joint"], y, reduction="none") + 2.5 * comp["log_prior"].gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(tl, ref_t)
    with pytest.raises(ValueError, match="c must be a finite number >= 0"):
        DetectorAwarePGD(defended, 8 / 255, 2 / 255, 4, c=-1)
    with pytest.raises(ValueError, match="components"):
        DetectorAwarePGD(Linear(), 8 / 255, 2 / 255, 4)


# ---------------------------------------------------------------------------------------------------
# Gradient checks in double precision
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel_cov", ["isotropic", "full"])
@pytest.mark.parametrize("space,standardize", [("per_class", False), ("per_class", True), ("shared", True)])
def test_gradcheck_through_the_prior(kernel_cov, space, standardize):
    prior = _prior(kernel_cov, space, standardize).double()
    fc6 = (torch.rand(3, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2).requires_grad_()
    assert torch.autograd.gradcheck(lambda f: prior(f), (fc6,), eps=1e-6, atol=1e-6, rtol=1e-4)
    cls = torch.tensor([[0, 2], [1, 1], [2, 0]])
    assert torch.autograd.gradcheck(lambda f: prior(f, classes=cls), (fc6,), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("kernel_cov", ["isotropic", "full"])
def test_gradcheck_through_the_joint_scores(kernel_cov):
    defended = BayesianPriorClassifier(_model(dtype=torch.float64), _prior(kernel_cov).double(), weight=0.8,
                                       output="joint")
    x = _images(2).double().requires_grad_()
    assert torch.autograd.gradcheck(defended, (x,), eps=1e-6, atol=1e-6, rtol=1e-4)
    assert torch.autograd.gradcheck(lambda z: margin(defended(z), torch.tensor([0, 2]), reduction="none"),
                                    (x,), eps=1e-6, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------
# The defense on the embedded default (digits, vgg_small trained for one short epoch)
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """Context with vgg_small (3 short epochs: ~90% clean accuracy, so attacks have work to do) and its prior
    fitted; otherwise the embedded default's config (the default defense settings included)."""
    from hydra.core.global_hydra import GlobalHydra

    from advprior.context import RunContext
    from advprior.stages import prior_fit, train
    from advprior.store import ArtifactStore
    from advprior.utils.seeding import seed_everything
    try:
        from conftest import compose_cfg
    except ImportError:  # tests/ imported as a package
        from tests.conftest import compose_cfg
    import yaml
    root = tmp_path_factory.mktemp("embedded")
    pgd = yaml.safe_load((ROOT / "conf" / "defense" / "default.yaml").read_text())["adaptive"]["pgd"]  # not debug's
    cfg = compose_cfg(root, ["model=[vgg_small]", "trainer.limit_train_batches=1.0", "trainer.max_epochs=3",
                             "prior.ae.epochs=3", "data.eval_subset=64", "attack.epsilons=[2,4]",
                             f"defense.adaptive.pgd.steps={pgd['steps']}", f"defense.adaptive.pgd.restarts={pgd['restarts']}"])
    seed_everything(cfg.seed)
    ctx = RunContext(cfg=cfg, run_dir=root / "run", store=ArtifactStore(cfg.paths.store_dir))
    train.run(ctx)
    prior_fit.run(ctx)
    yield ctx
    GlobalHydra.instance().clear()


def _defense_rows(ctx, dcfg, n: int) -> "pd.DataFrame":  # noqa: F821
    import pandas as pd

    from advprior.stages import defense
    base, defended = ctx.models["vgg_small"], defense.defended_model(ctx)
    ds = ctx.datamodule.eval_dataset()
    x = torch.stack([ds[i][0] for i in range(n)])
    y = torch.tensor([ds[i][1] for i in range(n)])
    idx = torch.tensor([ds[i][2] for i in range(n)])
    eps = [float(e) / 255 for e in ctx.cfg.attack.epsilons]
    return pd.concat([defense.defense_batch(base, defended, x[s], y[s], idx[s], eps, dcfg, y[s], int(ctx.cfg.seed))
                      for s in (slice(0, n // 2), slice(n // 2, n))], ignore_index=True)


def test_adaptive_accuracy_never_exceeds_non_adaptive(embedded):
    """A theorem of the worst-case columns, whatever the trained weights: an image counts as correct under
    the adaptive PGD only if the posterior is right on both the non-adaptive FGSM example and the PGD one."""
    from omegaconf import open_dict

    from advprior.stages.defense import defense_summary
    dcfg = embedded.cfg.defense.copy()
    with open_dict(dcfg):
        dcfg.adaptive.pgd.steps, dcfg.adaptive.pgd.restarts = 3, 2
    df = _defense_rows(embedded, dcfg, 32)
    y = df["label"]
    assert not ((df["adaptive_pgd_post_pred"] == y) & (df["post_adv_pred"] != y)).any()
    assert not ((df["adaptive_pgd_post_pred"] == y) & (df["adaptive_pgd_only_post_pred"] != y)).any()
    assert not ((df["pgd_base_pred"] == y) & (df["base_adv_pred"] != y)).any()
    s = defense_summary(df, 0.5)
    assert (s["adaptive_pgd_post_acc"] <= s["post_adv_acc"]).all()
    assert (s["adaptive_pgd_post_acc"] <= s["adaptive_pgd_only_post_acc"]).all()
    assert (s["pgd_base_acc"] <= s["base_adv_acc"]).all()
    for col in ("adaptive_det_post_acc", "adaptive_fgsm_post_acc"):
        assert s[col].between(0, 1).all()
    has = s["n_detector_adv_adaptive"] > 0
    assert s.loc[has, "detector_auc_adaptive"].between(0, 1).all()
    assert s.loc[~has, "detector_auc_adaptive"].isna().all()
    # the detector-aware columns are what the defended model says on those examples
    assert set(df["det_aware_post_pred"].unique()) <= set(range(10))


def _doubling_check(ctx, n: int) -> None:
    """Adaptive PGD accuracy at the configured steps/restarts vs at twice both: the change stays below one
    interval width at every eps (the defaults are strong enough to have converged)."""
    from omegaconf import open_dict

    from advprior.stages.defense import defense_summary
    dcfg = ctx.cfg.defense.copy()
    with open_dict(dcfg):
        dcfg.adaptive.fgsm = False
        dcfg.adaptive.detector_aware.enabled = False
    doubled = dcfg.copy()
    with open_dict(doubled):
        doubled.adaptive.pgd.steps = 2 * int(dcfg.adaptive.pgd.steps)
        doubled.adaptive.pgd.restarts = 2 * int(dcfg.adaptive.pgd.restarts)
    a = defense_summary(_defense_rows(ctx, dcfg, n), 0.5)
    b = defense_summary(_defense_rows(ctx, doubled, n), 0.5)
    width = a["adaptive_pgd_post_acc_high"] - a["adaptive_pgd_post_acc_low"]
    change = (b["adaptive_pgd_post_acc"] - a["adaptive_pgd_post_acc"]).abs()
    assert ((change < width) | (change == 0)).all(), (a["adaptive_pgd_post_acc"].tolist(),
                                                      b["adaptive_pgd_post_acc"].tolist(), width.tolist())


def test_default_pgd_has_converged_fast(embedded):
    _doubling_check(embedded, 16)


@pytest.mark.slow
def test_default_pgd_has_converged(embedded):
    _doubling_check(embedded, 64)
