"""advprior.distributed: settings checked up front, the command that re-creates a job as another rank,
rank 0's failure reaching the others, and one GPU slot per parallel sweep worker."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from advprior import distributed
from advprior.validation import ConfigError
from conftest import ROOT


@pytest.mark.parametrize("override,message", [
    ("trainer.strategy=ddp_spawn", "use trainer=ddp"),
    ("trainer.precision=16-mixed", "must be 32-true or bf16-mixed"),
    ("trainer.precision=bf16-true", "adversarial images stay float32"),
    ("compute.timeout_minutes=0", "compute.timeout_minutes"),
])
def test_bad_compute_settings_fail_before_any_work(make_cfg, override, message):
    from advprior.validation import validate_config

    cfg = make_cfg([override])
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


def test_a_rank_re_runs_this_job_only(make_cfg):
    cfg = make_cfg(["trainer=ddp", "trainer.accelerator=cpu", "model=[shallow]"])
    assert distributed.requested_processes(cfg.trainer) == 2
    cmd, cwd = distributed.child_command(1)
    assert cmd[:3] == [sys.executable, "-m", "advprior"] and "-m" not in cmd[3:]
    assert cmd[cmd.index("--config-path") + 1] == str(ROOT / "conf")
    overrides = [a for a in cmd if a.startswith(("trainer", "model"))]
    assert overrides == ["trainer=ddp", "trainer.accelerator=cpu", "model=[shallow]"]
    assert f'hydra.run.dir="{cfg.paths.output_dir}"' in cmd and "hydra.output_subdir=null" in cmd
    assert distributed.requested_processes(make_cfg(["model=[shallow]"], sub="one").trainer) == 1


def _rank_zero_fails(rank: int, world: int, init_file: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        def compute():
            assert not distributed.active()  # rank 0 is alone inside: nothing may wait for the others
            raise ValueError("the prior does not fit")
        try:
            distributed.run_on_rank_zero(compute, lambda: "loaded")
        except Exception as e:  # noqa: BLE001 - the test records what each rank saw
            Path(f"{out}.{rank}").write_text(f"{type(e).__name__}: {e}")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.ddp
def test_rank_zero_failure_reaches_the_other_ranks(tmp_path):
    torch.multiprocessing.spawn(_rank_zero_fails, args=(2, str(tmp_path / "init"), str(tmp_path / "err")), nprocs=2)
    assert (tmp_path / "err.0").read_text() == "ValueError: the prior does not fit"
    assert (tmp_path / "err.1").read_text() == "RankZeroError: rank 0 failed, so this rank stops too: " \
                                               "ValueError: the prior does not fit"


def test_parallel_sweep_workers_claim_different_gpus(tmp_path, monkeypatch):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from advprior.distributed import "
         "claim_gpu_slot; print(','.join(claim_gpu_slot(Path(sys.argv[1]), ['0','1','2','3'], 2)), flush=True); "
         "time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    try:
        assert holder.stdout.readline().strip() == "0,1"
        monkeypatch.setattr(distributed, "_held_slot", None)
        assert distributed.claim_gpu_slot(tmp_path, ["0", "1", "2", "3"], 2) == ["2", "3"]
        assert distributed.claim_gpu_slot(tmp_path, ["0", "1", "2", "3"], 2) == ["2", "3"]  # kept for life
    finally:
        holder.kill()
        holder.wait()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7,9")
    assert distributed.visible_gpus() == ["4", "5", "6", "7", "9"]
    assert distributed.parallel_jobs(None, 2) == 2 and distributed.parallel_jobs(1, 8) == 5
    with pytest.raises(ConfigError, match="only 5 GPU"):
        monkeypatch.setattr(distributed, "_held_slot", None)
        distributed.claim_gpu_slot(tmp_path / "other", distributed.visible_gpus(), 8)


def test_run_task_from_python_refuses_several_processes(make_cfg):
    from advprior.cli import run_task

    with pytest.raises(ConfigError, match="asks for several processes"):
        run_task(make_cfg(["trainer=ddp", "trainer.accelerator=cpu", "model=[shallow]", "stages=[train]"]))
