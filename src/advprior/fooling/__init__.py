"""Fooling images (paper section 4.2; Nguyen, Yosinski & Clune 2015): CPPN genomes and their batched
renderer, the direct (pixel) encoding, MAP-Elites with one bin per class, and cross-model scoring.

The search itself is ``advprior.fooling.map_elites.map_elites`` (the module keeps its name here)."""
from advprior.fooling.config import CPPNConfig, DirectConfig, FoolingConfig
from advprior.fooling.cppn import ACTIVATIONS, Genome, check_genome, from_json, mutate, random_genome, to_json
from advprior.fooling.encodings import CPPNEncoding, DirectEncoding, build_encoding
from advprior.fooling.map_elites import EliteArchive, class_probabilities
from advprior.fooling.render import render_cppns
from advprior.fooling.scoring import fooling_summary, score_elites

__all__ = [
    "ACTIVATIONS", "CPPNConfig", "CPPNEncoding", "DirectConfig", "DirectEncoding", "EliteArchive", "FoolingConfig",
    "Genome", "build_encoding", "check_genome", "class_probabilities", "fooling_summary", "from_json",
    "mutate", "random_genome", "render_cppns", "score_elites", "to_json",
]
