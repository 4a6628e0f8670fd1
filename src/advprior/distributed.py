"""The run's processes and process group: set up once before the first stage, shared by every Lightning loop
of every stage, destroyed at the end (also on error).

When the trainer config asks for several processes (``trainer=ddp trainer.devices=N``), rank 0 starts the
other ranks itself, each re-running *this* Hydra job (its overrides, its output directory; never the whole
sweep), then sets up the group with ``lightning_fabric.Fabric(...).launch()``. Every later ``Trainer``
finds ``LOCAL_RANK`` in the environment (so it launches nothing) and an initialized group (so it reuses
it). Lightning's own launcher is not used because it re-runs ``sys.argv``: inside a Hydra multirun that is
the whole sweep, and inside a joblib worker it is not our command at all. Processes started by a cluster
(torchrun, SLURM/submitit) are joined as they are.

Stages use the helpers below: ``is_rank_zero``, ``barrier``, ``broadcast_object`` and ``run_on_rank_zero``
(rank 0 computes and writes to the store while the others wait, then read it). Inside ``alone()`` (code
that runs on one rank only) the helpers do no collective communication, so shared code such as the
datamodules' decode check can be called from there without deadlocking.

The group is destroyed explicitly: a gloo group still alive at interpreter exit aborts the process with
"terminate called without an active exception" in about 1 run in 5 (docs/notes/ddp.md has the count).
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

T = TypeVar("T")

ENV_KEYS = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES")

_alone_depth = 0


# ---------------------------------------------------------------------------------------------- queries
def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if initialized() else 1


def is_rank_zero() -> bool:
    return rank() == 0


def active() -> bool:
    """True when collectives are allowed: a group of several processes exists and we are not ``alone()``."""
    return initialized() and _alone_depth == 0 and dist.get_world_size() > 1


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Mark code that runs on one rank only (rank 0's summaries, figures, the prior fit): inside it the
    helpers here act as in a single process, so nothing waits for ranks that are not there."""
    global _alone_depth
    _alone_depth += 1
    try:
        yield
    finally:
        _alone_depth -= 1


# ---------------------------------------------------------------------------------------------- collectives
def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` as rank ``src`` has it, on every rank (picklable objects)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class RankZeroError(RuntimeError):
    """Raised on the other ranks when rank 0 failed inside ``run_on_rank_zero``."""


def run_on_rank_zero(compute: Callable[[], T], load: Callable[[], T] | None = None) -> T | None:
    """Work that is not data-parallel: rank 0 runs ``compute`` (which writes its result to the store) while
    the other ranks wait, then they run ``load`` (which reads it back) and return its value; without
    ``load`` they return None. An exception on rank 0 is re-raised there and reaches the others as
    ``RankZeroError`` (instead of leaving them blocked)."""
    if not active():
        return compute()
    if is_rank_zero():
        try:
            with alone():
                result = compute()
        except BaseException as e:
            broadcast_object(f"{type(e).__name__}: {e}")
            raise
        broadcast_object(None)
        return result
    error = broadcast_object(None)
    if error is not None:
        raise RankZeroError(f"rank 0 failed, so this rank stops too: {error}")
    return load() if load is not None else None


@contextlib.contextmanager
def claim(store: Any, stage: str, key: str) -> Iterator[Any]:
    """A store artifact for every rank of the run (``ArtifactStore.claim`` in one process): rank 0 holds its
    lock (while another job computes it, rank 0 waits and the other ranks with it) and verifies it; the
    other ranks take rank 0's verdict and never write its manifest (``Artifact.writer``). The body computes
    when not ``art.done`` (together, for data-parallel work) and calls ``commit``; every rank leaves together,
    after rank 0's commit."""
    if not active():
        with store.claim(stage, key) as art:
            yield art
        return
    if is_rank_zero():
        with store.claim(stage, key) as art:
            broadcast_object((art.done, art.meta))
            yield art
            barrier()
        return
    from .store import Artifact

    done, meta = broadcast_object(None)
    art = Artifact(store, stage, key, store.root / stage / key, done=done, meta=meta, writer=False)
    yield art
    barrier()


# ---------------------------------------------------------------------------------------------- config
def requested_processes(tcfg: Any) -> int:
    """How many processes the trainer config asks for (devices x nodes), as Lightning would count them."""
    from lightning_fabric import Fabric

    if tcfg.get("devices", 1) in (1, "1") and int(tcfg.get("num_nodes", 1) or 1) == 1:
        return 1
    strategy = tcfg.get("strategy", "auto")
    fabric = Fabric(accelerator=tcfg.get("accelerator", "auto"), devices=tcfg.get("devices", "auto"),
                    num_nodes=int(tcfg.get("num_nodes", 1) or 1),
                    strategy="ddp" if _is_parallel_name(strategy) else strategy)
    return int(fabric.world_size)


def _is_parallel_name(strategy: Any) -> bool:
    return isinstance(strategy, str) and (strategy == "auto" or strategy.startswith("ddp"))


def check_processes(cfg: Any) -> None:
    """Several processes need ``session`` (the ``advprior`` command) or a cluster launcher to start them:
    without one, Lightning's own launcher would re-run whatever command this Python process came from."""
    if not initialized() and requested_processes(cfg.trainer) > 1:
        from .validation import ConfigError
        raise ConfigError(
            f"trainer.devices={cfg.trainer.get('devices')} asks for several processes, but none were started: run "
            "the `advprior` command (or torchrun/SLURM), or use one device from Python (trainer.devices=1)")


# ---------------------------------------------------------------------------------------------- session
@contextlib.contextmanager
def session(cfg: Any) -> Iterator[None]:
    """The run's processes (the config is validated already): on entry, give a parallel sweep job its GPUs, start
    the other ranks (if this process is the first of several and nobody else starts them) and set up the
    process group; on exit wait for every rank, destroy the group and reap the other ranks. On an error
    the other ranks are stopped. Without several processes this only does the checks."""
    saved_env = {k: os.environ.get(k) for k in ENV_KEYS}
    assign_sweep_gpus(cfg)
    n = requested_processes(cfg.trainer)
    if n <= 1 or initialized():
        try:
            yield
        finally:
            _restore_env(saved_env)
        return
    children: list[subprocess.Popen] = []
    watcher: _RankWatcher | None = None
    try:
        if not _launched_externally():
            children = _start_other_ranks(n)
            watcher = _RankWatcher(children)
            watcher.start()
        _init_group(cfg)
        _log_from_rank_zero_only()
        log.info("distributed: %d processes (%s), rank 0 of %d", n, dist.get_backend(), dist.get_world_size())
        yield
        dist.barrier()  # every rank finished the run before any tears down
    except BaseException:
        if watcher is not None:
            watcher.stop()
        _stop(children)
        raise
    finally:
        if watcher is not None:
            watcher.stop()
        if initialized():
            dist.destroy_process_group()
        _restore_env(saved_env)
    failed = [(r, c.wait()) for r, c in enumerate(children, start=1)]
    failed = [(r, rc) for r, rc in failed if rc != 0]
    if failed:
        raise RuntimeError(f"rank(s) {[r for r, _ in failed]} exited with codes {[rc for _, rc in failed]}; "
                           "see their messages above")


def _launched_externally() -> bool:
    """Processes started by torchrun, SLURM or our own launcher (``LOCAL_RANK`` set)."""
    from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    return "LOCAL_RANK" in os.environ or TorchElasticEnvironment.detect() or SLURMEnvironment.detect()


def child_command(local_rank: int) -> tuple[list[str], str]:
    """The command that re-creates this Hydra job as another rank: same config source and overrides,
    same output directory, no ``.hydra`` folder of its own; run from the current directory."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        from .validation import ConfigError
        raise ConfigError("several processes (trainer.devices > 1) need the `advprior` command (or torchrun/SLURM "
                          "to start the ranks); run_task() called from Python cannot start them")
    hc = HydraConfig.get()
    cmd = [sys.executable, "-m", "advprior"]
    for src in hc.runtime.config_sources:
        if src.provider == "main" and src.schema == "file":
            cmd += ["--config-path", str(src.path)]
        elif src.provider == "command-line" and src.schema == "file":
            cmd += ["--config-dir", str(src.path)]
    if hc.job.config_name:
        cmd += ["--config-name", str(hc.job.config_name)]
    cmd += list(hc.overrides.task)
    cmd += [f'hydra.run.dir="{hc.runtime.output_dir}"', "hydra.output_subdir=null",
            f"hydra.job.name={hc.job.name}_rank{local_rank}"]
    return cmd, os.getcwd()


def _start_other_ranks(n: int) -> list[subprocess.Popen]:
    from lightning_fabric.plugins.environments.lightning import find_free_network_port

    os.environ.update(MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"), MASTER_PORT=str(find_free_network_port()),
                      NODE_RANK="0", LOCAL_RANK="0", WORLD_SIZE=str(n))
    children = []
    for r in range(1, n):
        cmd, cwd = child_command(r)
        children.append(subprocess.Popen(cmd, env=dict(os.environ, LOCAL_RANK=str(r)), cwd=cwd))
    log.info("distributed: started ranks 1..%d (port %s)", n - 1, os.environ["MASTER_PORT"])
    return children


def _init_group(cfg: Any) -> None:
    from lightning_fabric import Fabric
    from lightning_fabric.strategies import DDPStrategy

    t = cfg.trainer
    minutes = float((cfg.get("compute") or {}).get("timeout_minutes", 240))
    fabric = Fabric(accelerator=t.get("accelerator", "auto"), devices=t.get("devices", "auto"),
                    num_nodes=int(t.get("num_nodes", 1) or 1),
                    strategy=DDPStrategy(timeout=datetime.timedelta(minutes=minutes)))
    fabric.launch()  # LOCAL_RANK is set: no new processes, only the process group (and the CUDA device)


class _RankFilter(logging.Filter):
    """On ranks > 0: warnings and errors only, prefixed with the rank."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.prefix = f"[rank {rank}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        if not str(record.msg).startswith(self.prefix):
            record.msg = self.prefix + str(record.msg)
        return True


def _log_from_rank_zero_only() -> None:
    if is_rank_zero():
        return
    f = _RankFilter(rank())
    for h in logging.getLogger().handlers:
        h.addFilter(f)


def _stop(children: list[subprocess.Popen], grace: float = 10.0) -> None:
    """Terminate the other ranks (they may be blocked in a collective), then kill what is left."""
    for c in children:
        if c.poll() is None:
            c.terminate()
    deadline = time.monotonic() + grace
    for c in children:
        try:
            c.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.kill()
            c.wait()


class _RankWatcher(threading.Thread):
    """Rank 0's guard against a hang: when another rank dies with an error while rank 0 sits in a collective
    that never returns (NCCL does not notice a dead peer), stop everything after ``grace`` seconds.
    Gloo notices, and rank 0 then fails normally and stops the watcher first."""

    def __init__(self, children: list[subprocess.Popen], grace: float = 60.0, period: float = 2.0) -> None:
        super().__init__(daemon=True, name="advprior-rank-watcher")
        self.children, self.grace, self.period = children, grace, period
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        while not self._stopped.wait(self.period):
            dead = [(r, c.returncode) for r, c in enumerate(self.children, start=1) if c.poll() not in (None, 0)]
            if not dead:
                continue
            if self._stopped.wait(self.grace):
                return
            log.error("rank %d exited with code %d and rank 0 is stuck; stopping every rank", *dead[0])
            _stop(self.children)
            os.kill(os.getpid(), signal.SIGKILL)


def _restore_env(saved: dict[str, str | None]) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# ---------------------------------------------------------------------------------------------- parallel sweeps
def assign_sweep_gpus(cfg: Any) -> list[str] | None:
    """A job of a parallel sweep (``hydra/launcher=joblib``) claims its own GPUs: its worker process takes
    the first free slot of ``compute.gpus_per_job`` GPUs (default ``trainer.devices``, else 1) among the
    visible ones and sets ``CUDA_VISIBLE_DEVICES`` to them before CUDA starts. The slot is a lock file in
    the sweep directory held until the worker exits, so a reused worker keeps its GPUs and two running
    jobs never share one. Returns the GPU ids given, or None when not in such a sweep or without GPUs."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN or "joblib" not in str(hc.launcher.get("_target_", "")).lower():
        return None
    if str(cfg.trainer.get("accelerator", "auto")) == "cpu":
        return None
    gpus = visible_gpus()
    if not gpus:
        return None
    per_job = gpus_per_job((cfg.get("compute") or {}).get("gpus_per_job"), cfg.trainer.get("devices", 1))
    ids = claim_gpu_slot(Path(hc.sweep.dir) / ".gpu_slots", gpus, per_job)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    log.info("parallel sweep: job %s runs on GPU(s) %s", hc.job.num, ",".join(ids))
    return ids


def gpus_per_job(per_job: Any, devices: Any) -> int:
    """``compute.gpus_per_job``, else ``trainer.devices`` when it is a count, else 1."""
    if per_job is not None:
        return int(per_job)
    return int(devices) if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0 else 1


def parallel_jobs(per_job: Any = None, devices: Any = 1) -> int:
    """Sweep jobs to run at once on this machine: visible GPUs // GPUs per job (at least 1; 1 without GPUs)."""
    return max(1, len(visible_gpus()) // gpus_per_job(per_job, devices))


def visible_gpus() -> list[str]:
    """GPU ids this process may use, without starting CUDA (``CUDA_VISIBLE_DEVICES``, else NVML's count)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    return [str(i) for i in range(torch.cuda.device_count())]  # NVML: does not initialize CUDA


_held_slot: tuple[Any, list[str]] | None = None


def claim_gpu_slot(folder: Path, gpus: list[str], per_job: int) -> list[str]:
    """This process's slot of ``per_job`` consecutive GPUs from ``gpus``: the first slot whose lock file in
    ``folder`` no other process holds (kept for the life of the process)."""
    global _held_slot
    from filelock import FileLock, Timeout

    if _held_slot is not None:
        return _held_slot[1]
    slots = len(gpus) // per_job
    if slots < 1:
        from .validation import ConfigError
        raise ConfigError(f"compute.gpus_per_job={per_job} but only {len(gpus)} GPU(s) are visible")
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        for s in range(slots):
            lock = FileLock(str(folder / f"slot{s}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            _held_slot = (lock, gpus[s * per_job:(s + 1) * per_job])
            return _held_slot[1]
        # more parallel jobs than slots (hydra.launcher.n_jobs too high): wait for a job to end
        time.sleep(5)
