"""zsadlab: zero- and few-shot visual anomaly detection with CLIP, for teaching.

Layers (lowest first; a module imports only from layers below it, see ARCHITECTURE):

    utils, errors / data / metrics (a registry) / viz
    backbone
    dpam, prompts, maps, losses, fewshot        one paper concept each
    anomalyclip, inctrl                         one module per method (config dataclass + model)
    profiles                                    per-method configs and backbones (profile.config("inctrl"))
    methods                                     the registry: Method records (build, learns, recipe, checkpoints)
    engine/ building, training, evaluation, prediction
                                                one trainer (DDP under torchrun), result tables, user images
    calibration, export                         thresholds from normal images (conformal); ONNX graphs
    cli (python -m zsadlab), notebooks
"""
__version__ = "0.1.0"
