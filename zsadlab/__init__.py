"""zsadlab: zero- and few-shot visual anomaly detection with CLIP, for teaching.

Layers, lowest first; a module imports only from layers below it, never sideways into a
sibling method and never upward:

    utils, errors, checkpoints / data/ / metrics (a registry) / viz
    backbone                                    open_clip models (real and tiny), tokens from any block
    dpam, prompts, maps, losses, fewshot        one paper concept each
    methods                                     the registry only: Method, Recipe, Setup, the model Protocol;
                                                imports no method
    anomalyclip, inctrl, musc, vand, winclip    one module per method: config dataclass, model, recipe,
                                                per-profile setups and its own register_method(...) call
    profiles                                    profiles: datasets and profile-wide settings; the per-method
                                                setups are looked up in the registry (profile.config("inctrl"))
    engine/ building, training, evaluation, prediction, cache
                                                one trainer for every learning method (DDP under torchrun),
                                                result tables, the user's images, the run cache
    calibration, export                         thresholds from normal images (conformal); ONNX graphs
    cli (python -m zsadlab), notebook, notebooks/

The line below is the one place that imports the built-in methods, so that
``methods.get_method`` / ``methods.method_names`` know them however zsadlab is imported;
a new method module is one more name on it.
"""
from . import anomalyclip, inctrl, musc, vand, winclip  # noqa: F401  (built-in methods register themselves)

__version__ = "0.1.0"
