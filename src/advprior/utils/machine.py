"""What machine a number was measured on: CPU model and capability, cores, memory, GPU, library versions."""
from __future__ import annotations

import os
import platform
from functools import lru_cache
from importlib import metadata

PACKAGES = ("torch", "torchvision", "pytorch-lightning", "hydra-core", "scikit-learn", "scipy", "numpy", "wandb")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


@lru_cache(maxsize=1)
def machine_info() -> dict:
    """A JSON-able description of this machine and the versions that can change a result."""
    import torch

    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": _memory_gib(),
        "gpu": gpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def machine_line(info: dict | None = None) -> str:
    """One human line, e.g. ``2 cores AMD EPYC (AVX512), 23.4 GiB, no GPU, torch 2.14.1``."""
    m = info or machine_info()
    gpu = m.get("gpu") or "no GPU"
    return (f"{m['cores']} cores {m['cpu']} ({m['cpu_capability']}), {m.get('memory_gib')} GiB, {gpu}, "
            f"torch {m['versions'].get('torch')}, Python {m['python']}")
