"""Shared fixtures: compose the Hydra config once per test with outputs under ``tmp_path``."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import advprior.config  # noqa: F401  registers the config schemas (conf/ extends them) before composing

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def compose_cfg(tmp_path: Path, overrides: list[str] | None = None, fast: bool = True) -> DictConfig:
    """The composed config with debug=fast, CSV logging only and every path under ``tmp_path``."""
    GlobalHydra.instance().clear()
    over = (["debug=fast", "logger=[csv]"] if fast else []) + list(overrides or [])
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=over, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    def _make(overrides=None, fast=True, sub: str = ""):
        return compose_cfg(tmp_path / sub if sub else tmp_path, overrides, fast)
    yield _make
    GlobalHydra.instance().clear()


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for the test: on 2 shared cores, small ops (ToTensor, tiny matmuls) run many
    times slower with 2 threads than with 1 (oversubscription)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
