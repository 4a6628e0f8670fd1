"""Lightning callbacks: ``FGSMEvalCallback`` tracks FGSM robustness on a fixed validation subset while training."""
from advprior.callbacks.fgsm_eval import FGSMEvalCallback

__all__ = ["FGSMEvalCallback"]
