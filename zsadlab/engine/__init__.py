"""What drives every method: building, the one trainer, evaluation tables, prediction I/O.

* :mod:`.building` - :func:`build_model` (a registered method on a profile), :func:`dataset_for`,
  :func:`load_checkpoint`;
* :mod:`.training` - :func:`train` / :func:`fit`, the one trainer for every learning method
  (seeded plan, progress bar, resume, atomic official checkpoints, each method's precision, DDP
  under torchrun), :func:`train_step` (one optimisation step of it);
* :mod:`.evaluation` - :func:`predict_dataset`, :func:`evaluate`, :class:`ResultTable`,
  :func:`evaluate_fewshot`, :func:`test`;
* :mod:`.prediction` - :func:`predict_images` for the user's own images.

Methods are looked up in :mod:`zsadlab.methods` only.
"""
from .building import build_model, dataset_for, eval_batch_size, load_checkpoint, method_of, precision_of
from .evaluation import (
    FEWSHOT_METRICS,
    METRIC_COLUMNS,
    ResultTable,
    class_metrics,
    class_predictions,
    evaluate,
    evaluate_fewshot,
    fewshot_outputs,
    fewshot_prompts,
    load_or_sample_prompt_set,
    pixel_inputs,
    predict_dataset,
    prompt_set_path,
    support_set,
    test,
)
from .prediction import predict_images
from .training import completed_epochs, configure_for, fit, is_main_process, run_folder, run_record, train, train_step

__all__ = [
    "FEWSHOT_METRICS", "METRIC_COLUMNS", "ResultTable", "build_model", "class_metrics", "class_predictions",
    "completed_epochs", "configure_for", "dataset_for", "eval_batch_size", "evaluate", "evaluate_fewshot",
    "fewshot_outputs", "fewshot_prompts", "fit", "is_main_process", "load_checkpoint", "load_or_sample_prompt_set",
    "method_of", "pixel_inputs", "precision_of", "predict_dataset", "predict_images", "prompt_set_path", "run_folder",
    "run_record", "support_set", "test", "train", "train_step",
]
