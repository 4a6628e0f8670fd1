"""BatchedAutoencoder == independent per-class nn.Sequential autoencoders (forward and Adam steps)."""
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from advprior.prior import AutoencoderModule, BatchedAutoencoder, fit_autoencoder
from advprior.prior.autoencoder import ClassBalancedBatches, layer_widths


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_widths_and_shapes():
    assert layer_widths(128, 8) == [128, 64, 32, 16, 8]
    assert layer_widths(128, 8, depth=2) == [128, 64, 32, 8]
    assert layer_widths(128, 8, depth=0) == [128, 8]
    assert layer_widths(100, 8) == [100, 50, 25, 12, 8]
    ae = BatchedAutoencoder(5)
    x = torch.randn(5, 7, 128)
    assert ae.encode(x).shape == (5, 7, 8)
    assert ae(x).shape == (5, 7, 128)
    assert [tuple(w.shape) for w in ae.enc_weight] == [(5, 64, 128), (5, 32, 64), (5, 16, 32), (5, 8, 16)]
    assert [tuple(b.shape) for b in ae.dec_bias] == [(5, 16), (5, 32), (5, 64), (5, 128)]
    # Same seed, same weights; nn.Linear's init range U(-1/sqrt(in), 1/sqrt(in)).
    torch.testing.assert_close(BatchedAutoencoder(5, seed=3).enc_weight[0], BatchedAutoencoder(5, seed=3).enc_weight[0])
    w = ae.enc_weight[0]
    assert w.abs().max() <= 1 / 128**0.5 and w.abs().max() > 0.9 / 128**0.5
    with pytest.raises(ValueError, match="bottleneck"):
        BatchedAutoencoder(2, in_dim=4, bottleneck=8)
    with pytest.raises(ValueError, match="input must be"):
        ae.encode(torch.randn(4, 7, 128))


@pytest.mark.parametrize("depth,activate_code", [(None, False), (2, False), (None, True)])
def test_batched_equals_per_class_modules(depth, activate_code):
    ae = BatchedAutoencoder(4, in_dim=32, bottleneck=4, depth=depth, activate_code=activate_code, seed=1)
    mods = ae.to_modules()
    n_lin = sum(isinstance(m, nn.Linear) for m in mods[0])
    n_act = sum(isinstance(m, nn.LeakyReLU) for m in mods[0])
    assert n_act == n_lin - (1 if activate_code else 2)  # code and output layers linear by default
    x = torch.randn(4, 6, 32)
    out = ae(x)
    codes = ae.encode(x)
    n_enc = len(ae.enc_weight)
    for c, m in enumerate(mods):
        torch.testing.assert_close(out[c], m(x[c]), rtol=1e-6, atol=1e-6)
        enc = m[: 2 * n_enc - (0 if activate_code else 1)]
        torch.testing.assert_close(codes[c], enc(x[c]), rtol=1e-6, atol=1e-6)
    # Round trip from independently initialized modules.
    fresh = [BatchedAutoencoder(1, 32, 4, depth, activate_code=activate_code, seed=10 + c).to_modules()[0]
             for c in range(4)]
    stacked = BatchedAutoencoder.from_modules(fresh)
    assert stacked.widths == ae.widths and stacked.activate_code == activate_code
    for c, m in enumerate(fresh):
        torch.testing.assert_close(stacked(x)[c], m(x[c]), rtol=1e-6, atol=1e-6)
    # Gathered weights (top-K path).
    cls = torch.tensor([2, 0, 2])
    torch.testing.assert_close(ae.encode(x[cls], cls), codes[cls])


def test_one_adam_step_equals_per_class_steps():
    torch.manual_seed(0)
    C, B, d = 3, 5, 16
    ae = BatchedAutoencoder(C, in_dim=d, bottleneck=2, seed=2)
    mods = ae.to_modules()
    module = AutoencoderModule(ae, lr=1e-2)
    opt = module.make_optimizer()
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in mods]
    for step in range(3):
        x = torch.randn(C, B, d) * (torch.arange(C)[:, None, None] + 1.0)  # different scales per class
        opt.zero_grad()
        objective, mean_loss = module.step_loss(x)
        objective.backward()
        opt.step()
        losses = []
        for c, (m, o) in enumerate(zip(mods, opts)):
            o.zero_grad()
            loss = nn.functional.mse_loss(m(x[c]), x[c])
            loss.backward()
            o.step()
            losses.append(loss.item())
        assert mean_loss.item() == pytest.approx(sum(losses) / C, rel=1e-5)
        for c, m in enumerate(mods):
            lins = [l for l in m if isinstance(l, nn.Linear)]
            for (W, b), lin in zip(ae._layers(), lins):
                torch.testing.assert_close(W[c], lin.weight, rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(b[c], lin.bias, rtol=1e-5, atol=1e-6)


def test_class_balanced_batches():
    C, n_max, d = 3, 10, 2
    counts = torch.tensor([10, 4, 7])
    # Point j of class c is encoded as the value 100*c + j so batches can be traced.
    codes = (100 * torch.arange(C)[:, None] + torch.arange(n_max)[None, :]).float()[..., None].expand(C, n_max, d)
    data = ClassBalancedBatches(codes.contiguous(), counts, batch_size=3, seed=0)
    assert len(data) == 4
    seen = [set() for _ in range(C)]
    for batch in data:
        assert batch.shape == (C, 3, d)
        for c in range(C):
            vals = batch[c, :, 0] - 100 * c
            assert ((vals >= 0) & (vals < counts[c])).all()  # only real rows of the right class
            seen[c].update(vals.long().tolist())
    assert all(seen[c] == set(range(int(counts[c]))) for c in range(C))


def _low_rank_codes(C=4, n=60, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(C, n, 2, generator=g)
    mix = torch.randn(C, 2, d, generator=g)
    return torch.tanh(latent @ mix) * 3


def test_loss_falls_and_lightning_logs():
    codes = _low_rank_codes()
    counts = torch.tensor([60, 40, 55, 30])
    ae, history = fit_autoencoder(codes, counts, epochs=25, batch_size=16, lr=1e-2, bottleneck=2, seed=0)
    assert len(history) == 25
    assert history[-1] < 0.3 * history[0]
    # The LightningModule logs prior/ae_recon_loss per epoch (= the last entry of loss_history).
    module = AutoencoderModule(BatchedAutoencoder(4, 16, 2, seed=0), lr=3e-3)
    loader = torch.utils.data.DataLoader(ClassBalancedBatches(codes, counts, 16), batch_size=None)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)
    assert trainer.callback_metrics["prior/ae_recon_loss"].item() == pytest.approx(module.loss_history[-1],
                                                                                   rel=1e-5)


def test_lightning_and_torch_engines_agree():
    codes = _low_rank_codes(C=3, n=20, d=8, seed=1)
    kw = dict(epochs=3, batch_size=8, lr=1e-3, bottleneck=2, seed=4)
    a, ha = fit_autoencoder(codes, **kw)
    b, hb = fit_autoencoder(codes, engine="torch", **kw)
    assert ha == pytest.approx(hb, rel=1e-6)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)
