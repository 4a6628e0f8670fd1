"""advprior: reproduce and extend "Hitting Depth" (FGSM studies, fooling images, activation maps, a prior defense)."""
from __future__ import annotations

import os
import warnings

from omegaconf import OmegaConf

# ``${advprior.abspath:PATH}``: PATH made absolute against the current directory. Registered on import so
# that paths resolve the same way in single runs and in multirun sweeps (where ``${hydra:runtime.cwd}`` is
# not yet set when Hydra resolves ``hydra.sweep.dir``).
OmegaConf.register_new_resolver(
    "advprior.abspath", lambda p=".": os.path.abspath(os.path.expanduser(str(p))), replace=True
)
# ``${advprior.parallel_jobs:GPUS_PER_JOB,DEVICES}``: how many sweep jobs run at once under
# hydra/launcher=joblib (visible GPUs // GPUs per job; 1 without GPUs). See advprior.distributed.
OmegaConf.register_new_resolver(
    "advprior.parallel_jobs",
    lambda per_job=None, devices=1: __import__("advprior.distributed", fromlist=["x"]).parallel_jobs(per_job, devices),
    replace=True,
)
# conf/hydra/launcher/joblib.yaml is complete on its own (its _target_ and every field); Hydra still
# validates it against the plugin's schema of the same name and warns that this matching is deprecated.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/joblib' is validated against ConfigStore schema")

from . import config as _config  # noqa: E402,F401  registers the config schemas in Hydra's ConfigStore
