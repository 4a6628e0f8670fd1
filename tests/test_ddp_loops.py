"""The image stages' Lightning loop (advprior.loops): the split over ranks, DDP == one process, bf16-mixed
and channels_last."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch

from advprior.analysis.outcomes import read_outcomes
from advprior.attacks.lit_sweep import TABLES, AttackStep
from advprior.attacks.sweep import FGSMSweep
from advprior.data.digits import DigitsDataModule, TensorImageDataset
from advprior.loops import RangeBatchSampler, plan_blocks, run_loop, stage_models
from advprior.models.vgg_small import build_vgg_small

EPS = [1 / 255, 8 / 255]


@pytest.mark.parametrize("n,shard,world,batch", [(37, 16, 2, 4), (100, 33, 3, 5), (5, 64, 2, 8), (64, 64, 4, 4)])
def test_blocks_cover_every_image_once_in_the_single_process_batches(n, shard, world, batch):
    plan = plan_blocks(n, shard, world, batch)
    positions = [p for ranges in plan for a, b in ranges for p in range(a, b)]
    assert sorted(positions) == list(range(n))
    # every rank's batches are batches of the one-process run, so results cannot depend on the rank count
    single = {tuple(b) for b in RangeBatchSampler(plan_blocks(n, shard, 1, batch)[0], batch).batches()}
    for ranges in plan:
        if ranges:
            assert {tuple(b) for b in RangeBatchSampler(ranges, batch).batches()} <= single


def test_resume_plans_only_what_is_missing_and_idle_ranks_get_an_empty_batch():
    plan = plan_blocks(40, 16, 2, 4, done=[(0, 8), (8, 16), (16, 24)])
    assert plan == [[(24, 28), (32, 36)], [(28, 32), (36, 40)]]
    assert RangeBatchSampler([], 4).batches() == [[]] and len(RangeBatchSampler([], 4)) == 1


def _tiny():
    torch.manual_seed(0)
    model = build_vgg_small(10, widths=(4, 4, 8, 8, 8), hidden=16, dropout=0.0).eval()
    test = DigitsDataModule(seed=0).split("test")
    return model, TensorImageDataset(test.images[:37], test.labels[:37])  # odd: ranks get unequal shares


def _attack(out: Path, devices: int, precision: str = "32-true", **kw) -> pd.DataFrame:
    model, ds = _tiny()
    models = stage_models({"m": model}, precision)

    def make_trainer(**overrides):
        return pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                          precision=precision, enable_model_summary=False, **overrides)

    run_loop(ds, AttackStep(models, EPS), models, TABLES, out, make_trainer=make_trainer, shard_size=16,
             batch_size=4, input_shape=(1, 32, 32), grad=True, **kw)
    return read_outcomes(out / "outcomes.parquet")


def _ddp_worker(rank: int, world: int, init_file: str, out: str) -> None:
    # what advprior.distributed.session sets up: LOCAL_RANK (Lightning starts nothing) and the group
    os.environ.update(LOCAL_RANK=str(rank), WORLD_SIZE=str(world), NODE_RANK="0")
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        _attack(Path(out), world)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.ddp
def test_two_processes_write_the_one_process_table(tmp_path, one_torch_thread):
    single = _attack(tmp_path / "single", 1)
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "ddp")), nprocs=2)
    ddp = read_outcomes(tmp_path / "ddp" / "outcomes.parquet")
    assert len(ddp) == 2 * 37 and not (tmp_path / "ddp" / "pieces").exists()
    pd.testing.assert_frame_equal(ddp, single)  # bit for bit: the same batches, whatever the rank count


def test_bf16_mixed_autocasts_the_forward_only_and_keeps_adversarial_images_float32(tmp_path, one_torch_thread):
    model, ds = _tiny()
    dtypes = []
    model.layer("conv1_1").register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    models = stage_models({"m": model}, "bf16-mixed")
    seen = {}

    def step(x, y, idx):
        res = FGSMSweep(models["m"], EPS).sweep(x, y)
        seen["logits"] = res.clean_logits.dtype
        for k, eps in enumerate(EPS):
            adv = res.adv_images(k)
            assert adv.dtype == torch.float32 and adv.min() >= 0 and adv.max() <= 1
            # the exact FGSM bound in float32: eps rounded to float32 plus half an ulp of 1
            eps32 = torch.tensor(eps, dtype=torch.float32).item()
            assert (adv - x).abs().max().item() <= eps32 + torch.finfo(torch.float32).eps / 4
        return AttackStep(models, EPS)(x, y, idx)

    def make_trainer(**overrides):
        return pl.Trainer(accelerator="cpu", devices=1, precision="bf16-mixed", enable_model_summary=False, **overrides)

    run_loop(ds, step, models, TABLES, tmp_path, make_trainer=make_trainer, shard_size=64, batch_size=8,
             input_shape=(1, 32, 32), grad=True)
    assert set(dtypes) == {torch.bfloat16} and seen["logits"] == torch.float32
    bf16 = read_outcomes(tmp_path / "outcomes.parquet")
    fp32 = _attack(tmp_path / "fp32", 1)
    assert len(bf16) == len(fp32) and (bf16["linf"] <= bf16["eps"] + 2 ** -24).all()
    # bfloat16 convolutions change the scores: the numerics are part of the stages' keys for that reason
    assert not bf16["clean_top1_prob"].equals(fp32["clean_top1_prob"])


def test_channels_last_runs_nhwc_and_restores_the_models(tmp_path, one_torch_thread):
    fp32 = _attack(tmp_path / "contiguous", 1)
    model, ds = _tiny()
    layouts = []
    model.layer("conv1_1").register_forward_hook(
        lambda m, i, o: layouts.append(o.is_contiguous(memory_format=torch.channels_last)))
    models = {"m": model}

    def make_trainer(**overrides):
        return pl.Trainer(accelerator="cpu", devices=1, enable_model_summary=False, **overrides)

    run_loop(ds, AttackStep(models, EPS), models, TABLES, tmp_path / "nhwc", make_trainer=make_trainer,
             shard_size=16, batch_size=4, input_shape=(1, 32, 32), grad=True, channels_last=True)
    nhwc = read_outcomes(tmp_path / "nhwc" / "outcomes.parquet")
    assert layouts and all(layouts)
    assert all(p.is_contiguous() for p in model.parameters())  # the shared model is left as it was
    # the clean pass differs only by float rounding; FGSM may flip the sign of a near-zero gradient entry,
    # so adversarial columns are not compared (channels_last is part of the stages' keys)
    pd.testing.assert_series_equal(nhwc["clean_top1"], fp32["clean_top1"])
    pd.testing.assert_series_equal(nhwc["clean_top1_prob"], fp32["clean_top1_prob"], atol=1e-5, rtol=0)
    assert (nhwc["linf"] <= nhwc["eps"] + 2 ** -24).all()
