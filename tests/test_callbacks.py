"""FGSMEvalCallback: metric names in a real fit, agreement with FGSM computed by hand, eps=0, modes and grads."""
from __future__ import annotations

import csv
import functools
import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import CSVLogger
from torch import nn

from advprior.analysis.rates import format_eps
from advprior.attacks import FGSM
from advprior.callbacks import FGSMEvalCallback
from advprior.data.digits import DigitsDataModule
from advprior.models.lit_classifier import ClassifierModule
from advprior.models.shallow import build_shallow
from advprior.models.vgg_small import build_vgg_small

EPS_255 = (0.0, 2.0, 8.0, 32.0)
N_IMAGES, BATCH = 40, 16  # 16, 16, 8: the last batch is partial


class Probe(pl.Callback):
    """Placed after the FGSM callback: checks grads across its hook and the mode at the next train step."""

    def __init__(self, fgsm_cb: FGSMEvalCallback) -> None:
        self.fgsm_cb = fgsm_cb
        self.grads_before: list[torch.Tensor | None] = []
        self.grads_unchanged: list[bool] = []
        self.mode_at_train_step: list[tuple[bool, bool, bool]] = []
        self.after_val = False

    def on_validation_epoch_start(self, trainer, pl_module):
        # Lightning sets grads to None before validation; plant known ones so "untouched" means something.
        gen = torch.Generator().manual_seed(trainer.current_epoch)
        for p in pl_module.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        self.grads_before = [p.grad.detach().clone() for p in pl_module.parameters()]

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        assert self.fgsm_cb.last_epoch == trainer.current_epoch  # the FGSM hook ran just before this one
        now = [None if p.grad is None else p.grad.detach().clone() for p in pl_module.parameters()]
        self.grads_unchanged.append(all(b is not None and torch.equal(a, b) for a, b in zip(self.grads_before, now)))
        self.after_val = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.after_val:
            drop = pl_module.model.net.drop6
            self.mode_at_train_step.append((pl_module.training, pl_module.model.training, drop.training))
            self.after_val = False


def _tiny_vgg() -> nn.Module:
    return build_vgg_small(10, widths=(4, 4, 8, 8, 8), hidden=16, dropout=0.0)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    pl.seed_everything(0, workers=True)
    tmp = tmp_path_factory.mktemp("fgsm_cb")
    dm = DigitsDataModule(batch_size=64, eval_batch_size=128, seed=0)
    module = ClassifierModule(_tiny_vgg(), optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
                              name="tiny")
    cb = FGSMEvalCallback(EPS_255, num_images=N_IMAGES, batch_size=BATCH)
    probe = Probe(cb)
    trainer = pl.Trainer(
        max_epochs=2, limit_train_batches=3, limit_val_batches=1, accelerator="cpu", devices=1,
        logger=CSVLogger(str(tmp), name="csv"), callbacks=[cb, probe], enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, deterministic=True,
    )
    trainer.fit(module, datamodule=dm)
    return {"trainer": trainer, "module": module, "cb": cb, "probe": probe, "dm": dm}


def _expected_keys(name: str, eps_255=EPS_255, prefix="val_attack") -> set[str]:
    keys = {f"{prefix}/{name}/clean_acc"}
    for e in eps_255:
        for m in ("adv_acc", "label_changed_rate", "high_conf_rate"):
            keys.add(f"{prefix}/{name}/eps={format_eps(e / 255)}/{m}")
    return keys


def _by_hand(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, batch: int):
    """FGSM(model, eps) on the true labels, batch by batch: (clean_pred, adv_pred, adv top-1 prob), each (N,)."""
    model.eval()
    clean, pred, conf = [], [], []
    for s in range(0, len(y), batch):
        xb, yb = x[s:s + batch], y[s:s + batch]
        adv = FGSM(model, eps)(xb, yb)
        with torch.no_grad():
            clean.append(model(xb).argmax(1))
            c, p = F.softmax(model(adv).double(), dim=1).max(1)
        conf.append(c)
        pred.append(p)
    return torch.cat(clean), torch.cat(pred), torch.cat(conf)


def _rates(y, clean, pred, conf, thr):
    """adv_acc, label_changed_rate, high_conf_rate, clean_acc as fractions of N (Python floats)."""
    n, flip = len(y), pred != clean
    return (int((pred == y).sum()) / n, int(flip.sum()) / n, int((flip & (conf > thr)).sum()) / n,
            int((clean == y).sum()) / n)


def test_fit_logs_every_metric_each_epoch(fitted):
    trainer, cb = fitted["trainer"], fitted["cb"]
    keys = _expected_keys("tiny")
    assert keys <= set(trainer.callback_metrics)
    assert set(cb.last_metrics) == keys and cb.last_epoch == 1
    for k in keys:
        assert float(trainer.callback_metrics[k]) == pytest.approx(cb.last_metrics[k], abs=1e-6)
        assert 0.0 <= cb.last_metrics[k] <= 1.0
    # rates are counts over N images
    assert all(math.isclose(v * N_IMAGES, round(v * N_IMAGES), abs_tol=1e-9) for v in cb.last_metrics.values())
    # the CSV holds one row per validation epoch with every key (no sanity-check row)
    with open(f"{trainer.logger.log_dir}/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = [r for r in rows if r.get("val_attack/tiny/clean_acc")]
    assert [int(r["epoch"]) for r in logged] == [0, 1]
    assert all(r[k] != "" for r in logged for k in keys)
    assert "val/tiny/acc" in trainer.callback_metrics  # the module's own logging is unaffected


def test_subset_is_first_n_val_images(fitted):
    cb, dm = fitted["cb"], fitted["dm"]
    val = dm.split("val")
    assert torch.equal(cb.subset_images, val.images[:N_IMAGES])
    assert torch.equal(cb.subset_labels, val.labels[:N_IMAGES])
    assert torch.equal(cb.subset_indices, torch.arange(N_IMAGES))
    assert not cb.subset_images.is_inference()


def test_metrics_equal_fgsm_by_hand_on_final_weights(fitted):
    cb, module, dm = fitted["cb"], fitted["module"], fitted["dm"]
    model = module.model
    val = dm.split("val")
    x, y = val.images[:N_IMAGES].clone(), val.labels[:N_IMAGES].clone()
    was_training = model.training
    assert cb.evaluate(model, "cpu", name="tiny") == cb.last_metrics  # the last validation saw the final weights
    assert model.training == was_training
    # The barely trained net is rarely > 50% sure: lower thresholds make high_conf_rate non-trivial.
    thresholds = (0.5, 0.0, 0.15, 0.25)
    got = {0.5: cb.last_metrics}
    for thr in thresholds[1:]:
        other = FGSMEvalCallback(EPS_255, num_images=N_IMAGES, batch_size=BATCH, high_conf_threshold=thr)
        other.set_subset(val)
        got[thr] = other.evaluate(model, name="tiny")
    _check_against_hand(got, model, x, y, "tiny")
    # whether this trained net flips labels depends on the CPU's arithmetic: the non-vacuous case (flips,
    # split by a threshold) is test_rates_on_a_model_built_to_flip


def _check_against_hand(got: dict, model: nn.Module, x: torch.Tensor, y: torch.Tensor, name: str) -> None:
    """Every threshold's callback metrics equal FGSM by hand on the same images."""
    for e in EPS_255:
        outs = _by_hand(model, x, y, e / 255, BATCH)
        key = f"val_attack/{name}/eps={format_eps(e / 255)}"
        for thr, metrics in got.items():
            adv_acc, changed, high, clean = _rates(y, *outs, thr)
            assert metrics[f"{key}/adv_acc"] == adv_acc
            assert metrics[f"{key}/label_changed_rate"] == changed
            assert metrics[f"{key}/high_conf_rate"] == high
            assert metrics[f"val_attack/{name}/clean_acc"] == clean


def test_rates_on_a_model_built_to_flip():
    """Fixed weights, so the outcome holds on any CPU: logits +-a (mean(x) - 1/2) for two classes. Grey
    images of level c in (1/2, 1/2 + 32/255) are classified 0 (their label); FGSM at 32/255 lowers every
    pixel by 32/255 (the gradient sign is -1 everywhere), so each flips to class 1 with confidence
    sigmoid(2a (1/2 + 32/255 - c)): above 0.5 for every image, above 0.9 for the lower levels."""
    a, eps = 40.0, 32 / 255
    lin = nn.Linear(16, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([torch.full((16,), a / 16), torch.full((16,), -a / 16)]))
        lin.bias.copy_(torch.tensor([-a / 2, a / 2]))
    model = nn.Sequential(nn.Flatten(), lin).eval()
    levels = 0.5 + eps * torch.linspace(0.1, 0.9, N_IMAGES)
    x, y = levels[:, None, None, None].expand(-1, 1, 4, 4).contiguous(), torch.zeros(N_IMAGES, dtype=torch.long)
    got = {}
    for thr in (0.5, 0.9):
        cb = FGSMEvalCallback(EPS_255, num_images=N_IMAGES, batch_size=BATCH, high_conf_threshold=thr)
        cb.set_subset(list(zip(x, y.tolist())))
        got[thr] = cb.evaluate(model, name="built")
    _check_against_hand(got, model, x, y, "built")
    key = f"val_attack/built/eps={format_eps(eps)}"
    assert got[0.5]["val_attack/built/clean_acc"] == 1.0
    assert got[0.5][f"{key}/label_changed_rate"] == 1.0 and got[0.5][f"{key}/high_conf_rate"] == 1.0
    assert 0 < got[0.9][f"{key}/high_conf_rate"] < 1.0  # the threshold splits the flips


def test_eps_zero_is_clean(fitted):
    m = fitted["cb"].last_metrics
    assert m["val_attack/tiny/eps=0/adv_acc"] == m["val_attack/tiny/clean_acc"]
    assert m["val_attack/tiny/eps=0/label_changed_rate"] == 0.0
    assert m["val_attack/tiny/eps=0/high_conf_rate"] == 0.0


def test_hook_keeps_grads_and_training_mode_in_fit(fitted):
    probe = fitted["probe"]
    assert probe.grads_unchanged == [True, True]
    # epoch 0's validation is followed by epoch 1's first training step, in train mode throughout
    assert probe.mode_at_train_step == [(True, True, True)]


def test_evaluate_restores_mixed_modes_and_grads_under_inference_mode():
    torch.manual_seed(0)
    model = _tiny_vgg()
    x = torch.rand(8, 1, 32, 32)
    F.cross_entropy(model(x), torch.arange(8) % 10).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.train()
    model.net.drop7.eval()  # mixed flags must come back as they were, not as model.train()
    cb = FGSMEvalCallback([0, 4], num_images=8, batch_size=3)
    with torch.inference_mode():  # as inside trainer.validate
        items = [(x[i] * 1.0, i % 10) for i in range(8)]  # inference tensors, made by a "transform"
        cb.set_subset(items)
        out = cb.evaluate(model)
    assert not cb.subset_images.is_inference() and torch.equal(cb.subset_images, x)
    assert set(out) == _expected_keys("model", (0, 4))
    assert model.training and model.net.drop6.training and not model.net.drop7.training
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())
    assert torch.equal(cb.subset_indices, torch.arange(8))  # (image, label) items: index = position


class _Plain(pl.LightningModule):
    """No ``model`` / ``name`` attributes: the callback attacks the module itself under the name ``model``."""

    def __init__(self):
        super().__init__()
        self.net = build_shallow(10)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_every_n_epochs_plain_module_and_validate(tmp_path):
    pl.seed_everything(1)
    dm = DigitsDataModule(batch_size=32, eval_batch_size=64, seed=0)
    cb = FGSMEvalCallback([1.0], num_images=10_000, every_n_epochs=2, prefix="rob")

    class Count(pl.Callback):
        def __init__(self):
            self.epochs: list[int | None] = []

        def on_validation_epoch_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                self.epochs.append(cb.last_epoch)

    counter = Count()
    module = _Plain()
    trainer = pl.Trainer(max_epochs=3, limit_train_batches=1, limit_val_batches=1, accelerator="cpu", devices=1,
                         logger=CSVLogger(str(tmp_path)), callbacks=[cb, counter], enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    assert counter.epochs == [None, 1, 1]  # ran after epoch 1 only (epochs 0 and 2 skipped)
    assert len(cb.subset_labels) == len(dm.split("val"))  # fewer images than num_images: all of them
    assert _expected_keys("model", (1.0,), "rob") <= set(trainer.callback_metrics)
    # trainer.validate always evaluates, on the cached subset, and logs the same keys
    res = trainer.validate(module, datamodule=dm, verbose=False)
    assert _expected_keys("model", (1.0,), "rob") <= set(res[0])
    assert res[0]["rob/model/clean_acc"] == pytest.approx(cb.last_metrics["rob/model/clean_acc"], abs=1e-6)


@pytest.mark.parametrize(
    "kwargs, argname",
    [
        ({"epsilons": []}, "epsilons"),
        ({"epsilons": "8"}, "epsilons"),
        ({"epsilons": [300.0]}, "epsilons[0]"),
        ({"epsilons": [1.0, -1.0]}, "epsilons[1]"),
        ({"epsilons": [float("nan")]}, "epsilons[0]"),
        ({"epsilons": [2.0], "scale": 1.0}, "epsilons[0]"),
        ({"epsilons": [1.0, 1.00001]}, "epsilons"),
        ({"epsilons": [1.0], "scale": 0}, "scale"),
        ({"epsilons": [1.0], "num_images": 0}, "num_images"),
        ({"epsilons": [1.0], "num_images": 2.5}, "num_images"),
        ({"epsilons": [1.0], "batch_size": -1}, "batch_size"),
        ({"epsilons": [1.0], "every_n_epochs": 0}, "every_n_epochs"),
        ({"epsilons": [1.0], "prefix": ""}, "prefix"),
        ({"epsilons": [1.0], "high_conf_threshold": 1.5}, "high_conf_threshold"),
        ({"epsilons": [1.0], "dataloader_idx": -1}, "dataloader_idx"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, argname):
    with pytest.raises(ValueError, match=argname.replace("[", r"\[").replace("]", r"\]")):
        FGSMEvalCallback(**kwargs)


def test_evaluate_without_subset_raises():
    with pytest.raises(ValueError, match="set_subset"):
        FGSMEvalCallback([1.0]).evaluate(nn.Linear(4, 2))


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_two_processes_log_the_single_process_values(tmp_path):
    # Every rank attacks the same subset and logs the same keys with sync_dist: no hang, same values.
    pl.seed_everything(0)
    dm = DigitsDataModule(batch_size=32, eval_batch_size=64, seed=0)
    module = ClassifierModule(_tiny_vgg(), optimizer=functools.partial(torch.optim.SGD, lr=0.05), name="tiny")
    cb = FGSMEvalCallback([0, 8], num_images=N_IMAGES, batch_size=BATCH)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, accelerator="cpu", devices=2, strategy="ddp_spawn",
                         logger=CSVLogger(str(tmp_path)), callbacks=[cb], enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(module, datamodule=dm)  # ddp_spawn copies rank 0's weights and callback_metrics back
    single = FGSMEvalCallback([0, 8], num_images=N_IMAGES, batch_size=BATCH)
    single.set_subset(dm.split("val"))
    expected = single.evaluate(module.model, "cpu", name="tiny")
    assert set(expected) <= set(trainer.callback_metrics)
    for k, v in expected.items():
        assert float(trainer.callback_metrics[k]) == pytest.approx(v, abs=1e-6), k
