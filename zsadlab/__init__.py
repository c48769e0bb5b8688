"""zsadlab: zero- and few-shot visual anomaly detection with CLIP, for teaching.

Layers (lowest first, see ARCHITECTURE): utils / data / metrics / viz ->
backbone / profiles -> dpam, prompts, maps, losses -> anomalyclip, inctrl ->
engine -> cli and notebooks.
"""
__version__ = "0.1.0"
