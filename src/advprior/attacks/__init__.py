"""Adversarial attacks on [0,1]-pixel classifiers (torchattacks-style): FGSM, an FGSM eps sweep, PGD, and
PGD against a classifier with a density detector.

Every attack takes any ``nn.Module`` returning scores ``(B, num_classes)``, images ``(B, C, H, W)`` in
[0,1] and eps in [0,1] pixel units (the paper's 0.85 on the 0-255 scale is ``0.85/255``), and a ``loss``
(``"ce"`` or ``"margin"``, see ``advprior.attacks.losses``).
"""
from advprior.attacks.base import Attack
from advprior.attacks.detector_aware import DetectorAwarePGD
from advprior.attacks.fgsm import FGSM
from advprior.attacks.losses import cross_entropy, margin
from advprior.attacks.pgd import PGD
from advprior.attacks.sweep import FGSMSweep, SweepResult

__all__ = ["Attack", "FGSM", "FGSMSweep", "SweepResult", "PGD", "DetectorAwarePGD", "cross_entropy", "margin"]
