"""The series' trainings, declared once: which runs each notebook requests under its parameters.

Each notebook of ``notebooks/`` has one entry in :data:`SERIES`: a function of the notebook's
parameters (its ``parameters`` cell, overridden as papermill would) and the session those
parameters make, returning the :class:`Request` list of every ``S.trained`` / ``S.official``
call the notebook makes - in the same order, with the same method, training data, config changes
and seed. A request is resolved by :meth:`zsadlab.notebook.Session.training`, the very path
``S.trained`` takes, so a planned key is the key the notebook trains or loads under (the run
cache's key: method, config, data identity, seed, epochs, batch, step budget). A student who
changes a parameter gets another key and load-or-train as before; ``tests/notebooks/test_plan.py``
checks that the plan's keys are exactly the keys the executed series logged.

:func:`plan` turns the requests of the notebooks into the distinct trainings with their cost
(:mod:`zsadlab.costs`): ``zsadlab course plan``. :data:`EVALUATIONS` declares, the same way, the
predictions each notebook makes (main path, solutions off), so that :func:`notebook_minutes` prices a
whole notebook - trainings plus evaluations - by the cost model: the README's cost columns,
``python -m zsadlab.series lab``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

from . import costs
from .data import DatasetError, registry
from .data.prepare import is_prepared
from .errors import UserError
from .methods import get_method
from .notebook import DataRef, Session, start
from .pretrained import official_for

PARAMETERS_TAG = "parameters"


@dataclass(frozen=True)
class Request:
    """One training a notebook requests: ``S.trained(method, data, **changes)`` with the session's
    ``seed`` replaced by ``seed`` when set; ``official`` names the checkpoint that replaces it where
    ``S.official`` finds one (a user file or, in meaningful profiles, a pulled official one)."""

    label: str
    method: str
    data: str | DataRef
    changes: tuple[tuple[str, Any], ...] = ()
    seed: int | None = None
    official: str | None = None


def request(label: str, method: str, data: str | DataRef, seed: int | None = None, official: str | None = None,
            **changes) -> Request:
    return Request(label, method, data, tuple(sorted(changes.items())), seed, official)


def _given(value, default):
    return default if value == "auto" else value


def _official(S: Session, label: str, checkpoint: str | None, name: str | None = None,
              method: str = "anomalyclip", data: str | None = None) -> list[Request]:
    """``S.official(name, method, data, checkpoint)``: nothing to train where it loads a checkpoint
    (``name`` None: the official checkpoint of ``method`` trained on ``data``, as ``S.official``)."""
    data = data or S.train_name
    name = name or official_for(method, data)
    if S.official_path(name, checkpoint) is not None:
        return []
    return [request(label, method, data, official=name)]


# --- one declaration per notebook (the notebook's own names in comments) -------------------------------
def _02(p: dict, S: Session) -> list[Request]:
    train = _given(p["dataset"], S.train_name)
    variants = {"no DPAM": dict(dpam_mode=None), "Q-Q": dict(dpam_mode="qq"), "K-K": dict(dpam_mode="kk"),
                "V-V (AnomalyCLIP default)": {}}
    seeds = [p["seed"] + i for i in range(p["n_seeds"])]
    runs = [request(f"{label}, seed {s}", "anomalyclip", train, seed=s, **changes)
            for s in seeds for label, changes in variants.items()]
    runs.append(request("V-V, blocks x4", "anomalyclip_multilayer", train, seed=p["seed"]))
    if p["show_solutions"]:
        half = max(1, S.profile.config("anomalyclip").dpam_blocks // 2)
        runs.append(request(f"V-V on the last {half} blocks", "anomalyclip", train, dpam_blocks=half))
    return runs


def _03(p: dict, S: Session) -> list[Request]:
    train, deep = _given(p["dataset"], S.train_name), p["deep_depth"]
    runs = [request("object-aware, depth 1", "anomalyclip", train, object_agnostic=False, depth=1),
            request("object-aware, deep", "anomalyclip", train, object_agnostic=False, depth=deep),
            request("object-agnostic, depth 1", "anomalyclip", train, depth=1),
            request("object-agnostic, deep (AnomalyCLIP)", "anomalyclip", train, depth=deep)]
    if p["targets"] == "auto":
        chosen = ([t for t in ("visa", "mpdd", "btad") if is_prepared(S.data_root / t)] if S.profile.meaningful
                  else [S.test_name])
    else:
        chosen = list(p["targets"])
    for target in chosen:
        source = "visa" if target == "mvtec" else train
        runs += [request(f"{target} / {method}", method, source) for method in ("anomalyclip", "coop")]
    return runs


def _04(p: dict, S: Session) -> list[Request]:
    train = _given(p["dataset"], S.train_name)
    runs = [request("global only", "anomalyclip", train, loss="global"),
            request("local only", "anomalyclip", train, loss="local")]
    runs += (_official(S, "both (AnomalyCLIP)", p["checkpoint"], data=train) if p["checkpoint"] else
             [request("both (AnomalyCLIP)", "anomalyclip", train, loss="both")])
    if p["show_solutions"]:
        runs += [request(f"lam = {lam:g}", "anomalyclip", train, lam=lam) for lam in (1.0, 16.0)]
    return runs


def _05(p: dict, S: Session) -> list[Request]:
    train = _given(p["dataset"], S.train_name)
    runs = [] if p["checkpoint"] else [request("the default run", "anomalyclip", train)]
    return runs + _official(S, "official (or the default run)", p["checkpoint"], data=train)


def _06(p: dict, S: Session) -> list[Request]:
    train = _given(p["dataset"], S.train_name)
    return (_official(S, "AnomalyCLIP", p["checkpoint"], data=train) + [request("CoOp", "coop", train)]
            + _official(S, "VAND", None, method="vand", data=train))


def _07(p: dict, S: Session) -> list[Request]:
    aux = _given(p["dataset"], S.train_name)
    target = _given(p["target"], "tn3k" if S.profile.meaningful else S.test_name)
    runs = _official(S, "zero-shot, MVTec", p["checkpoint"], data=aux)
    if S.profile.meaningful or p["visa_checkpoint"]:
        runs += _official(S, "zero-shot, VisA", p["visa_checkpoint"], "anomalyclip-visa", data="visa")
    finetune = "tn3k_trainval" if S.profile.meaningful else DataRef(target, "finetune_seed1", seed=1)
    runs.append(request("fine-tuned (trainval)", "anomalyclip", finetune))
    runs.append(request("trained on ColonDB", "anomalyclip", "colondb" if S.profile.meaningful else S.test_name))
    return runs  # the solution's curve reads the fine-tuning run's epoch checkpoints: nothing more to train


def _08(p: dict, S: Session) -> list[Request]:
    train = _given(p["dataset"], S.train_name)
    return (_official(S, "InCTRL", p["checkpoint"], "inctrl", "inctrl", data=train)
            + _official(S, "VAND (zero-shot layers)", None, method="vand", data=train)
            + _official(S, "zero-shot AnomalyCLIP", None))


def _09(p: dict, S: Session) -> list[Request]:
    return (_official(S, "AnomalyCLIP", p["checkpoint"])
            + _official(S, "InCTRL", p["inctrl_checkpoint"], "inctrl", "inctrl"))


def _10(p: dict, S: Session) -> list[Request]:
    aux = _given(p["dataset"], S.train_name if S.profile.meaningful else S.test_name)
    return _official(S, "AnomalyCLIP", p["checkpoint"], data=aux)


def _11(p: dict, S: Session) -> list[Request]:
    return (_official(S, "AnomalyCLIP", p["checkpoint"])
            + _official(S, "InCTRL", p["inctrl_checkpoint"], "inctrl", "inctrl"))


def _none(p: dict, S: Session) -> list:
    return []


SERIES: dict[str, Callable[[dict, Session], list[Request]]] = {
    "00_setup_and_data": _none, "01_clip_baseline_failure": _none, "02_dpam": _02,
    "03_object_agnostic_prompts": _03, "04_global_local_optimization": _04, "05_training_on_gpu": _05,
    "06_zero_shot_evaluation": _06, "07_tn3k_zero_shot_vs_finetuning": _07, "08_inctrl_few_shot": _08,
    "09_playground": _09, "10_protocol_and_decisions": _10, "11_zero_shot_without_training": _11,
}


# --- the predictions each notebook makes (main path, solutions off) -------------------------------------
@dataclass(frozen=True)
class Evaluation:
    """``passes`` predictions of every image of split ``split`` of ``dataset`` (within the session's budget) by
    ``method`` (its row of the cost model), or of ``images`` images; ``train``: training images instead."""

    method: str
    dataset: str
    passes: float = 1
    split: str = "test"
    images: int | None = None
    train: bool = False


def _benchmark_targets(S: Session, train: str) -> list[str]:
    """The targets ``S.zero_shot_targets(train)`` picks where every one is prepared (an upper bound)."""
    return [n for n in (registry.ANOMALYCLIP_BENCHMARK if S.profile.meaningful else (S.test_name,)) if n != train]


def _e01(p: dict, S: Session) -> list[Evaluation]:
    name = _given(p["dataset"], S.train_name if S.profile.meaningful else S.test_name)
    return [Evaluation(m, name) for m in ("clip", "clip_ac", "winclip")]


def _e02(p: dict, S: Session) -> list[Evaluation]:  # 4 DPAM variants x n_seeds + the multi-layer run (+ a checkpoint)
    return [Evaluation("anomalyclip", _given(p["eval_dataset"], S.test_name), 4 * p["n_seeds"] + 1 + bool(p["checkpoint"]))]


def _e03(p: dict, S: Session) -> list[Evaluation]:  # 4 prompt variants, then AnomalyCLIP and CoOp per target
    chosen = (["visa", "mpdd", "btad"] if S.profile.meaningful else [S.test_name]) if p["targets"] == "auto" \
        else list(p["targets"])
    return [Evaluation("anomalyclip", _given(p["eval_dataset"], S.test_name), 4)] + \
        [Evaluation(m, t) for t in chosen for m in ("anomalyclip", "coop")]


def _e04(p: dict, S: Session) -> list[Evaluation]:  # 3 loss settings
    return [Evaluation("anomalyclip", _given(p["eval_dataset"], S.test_name), 3)]


def _e05(p: dict, S: Session) -> list[Evaluation]:  # evaluation, a timed class, the official checkpoint's; the demos' 13 steps
    return [Evaluation("anomalyclip", _given(p["eval_dataset"], S.test_name), 3),
            Evaluation("anomalyclip", _given(p["dataset"], S.train_name), images=13 * 8, train=True)]


def _e06(p: dict, S: Session) -> list[Evaluation]:  # every method on every target, AnomalyCLIP's curves once more
    train = _given(p["dataset"], S.train_name)
    targets = _benchmark_targets(S, train) if p["eval_datasets"] == "auto" else list(p["eval_datasets"])
    methods = ["anomalyclip", "coop", "vand", "winclip"] + (["clip", "clip_ac"] if p["with_clip"] else [])
    return [Evaluation(m, t, 2 if m == "anomalyclip" else 1) for t in targets for m in methods]


def _e07(p: dict, S: Session) -> list[Evaluation]:  # 2-3 models on the target, the ColonDB run on 4 medical sets
    target = _given(p["target"], "tn3k" if S.profile.meaningful else S.test_name)
    cross = ["headct", "brainmri", "isic", "covid19"] if S.profile.meaningful else [S.train_name]
    return [Evaluation("anomalyclip", target, 3 if S.profile.meaningful or p["visa_checkpoint"] else 2)] + \
        [Evaluation("anomalyclip", name) for name in cross]


def _e08(p: dict, S: Session) -> list[Evaluation]:  # 3 methods x shots x prompt seeds, zero-shot AnomalyCLIP, the parts
    target, runs = _given(p["eval_dataset"], S.test_name), len(p["shots_list"]) * len(p["prompt_seeds"])
    return [Evaluation(m, target, runs) for m in ("inctrl", "winclip", "vand")] + \
        [Evaluation("anomalyclip", target), Evaluation("inctrl", target)]


def _e10(p: dict, S: Session) -> list[Evaluation]:  # predictions and the table of the target, its held-out normals
    target = _given(p["target"], S.test_name if S.profile.meaningful else S.train_name)
    return [Evaluation("anomalyclip", target, 2), Evaluation("anomalyclip", target, split="train")]


def _e11(p: dict, S: Session) -> list[Evaluation]:  # MuSc's table and its two ablations on one class, then 2 methods
    target = _given(p["dataset"], S.test_name)
    return [Evaluation("musc", target, 4), Evaluation("anomalyclip", target), Evaluation("inctrl", target)]


EVALUATIONS: dict[str, Callable[[dict, Session], list[Evaluation]]] = {
    "00_setup_and_data": _none, "01_clip_baseline_failure": _e01, "02_dpam": _e02, "03_object_agnostic_prompts": _e03,
    "04_global_local_optimization": _e04, "05_training_on_gpu": _e05, "06_zero_shot_evaluation": _e06,
    "07_tn3k_zero_shot_vs_finetuning": _e07, "08_inctrl_few_shot": _e08, "09_playground": _none,
    "10_protocol_and_decisions": _e10, "11_zero_shot_without_training": _e11,
}


def evaluation_images(e: Evaluation, S: Session) -> int | None:
    """Images of one pass of ``e`` within ``S``'s budget by the registry's split sizes; for a set without recorded
    sizes, the budget's cap (classes x images per class: an upper bound); None: unknown."""
    if e.images is not None:
        return e.images
    classes = len(S.classes) if S.classes else S.classes_per_dataset
    images = registry.split_images(e.dataset, e.split, classes, S.max_images_per_class)
    if images is None and classes and S.max_images_per_class:
        images = classes * S.max_images_per_class
    return images


def evaluation_minutes(evaluations: Sequence[Evaluation], S: Session) -> float | None:
    """Minutes of ``evaluations`` by the cost model in ``S``'s profile; None when an image count is unknown."""
    total = 0.0
    for e in evaluations:
        images = evaluation_images(e, S)
        if images is None:
            return None
        minutes = costs.training_minutes if e.train else costs.prediction_minutes
        total += minutes(S.profile.name, e.method, round(images * e.passes))
    return total


# --- notebook parameters -------------------------------------------------------------------------------
def notebook_parameters(path: str | Path, overrides: dict | None = None) -> dict:
    """The values of notebook ``path``'s ``parameters`` cell (plain assignments), then ``overrides``
    (as papermill injects them after that cell)."""
    import nbformat

    path = Path(path)
    try:
        nb = nbformat.read(path, as_version=4)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable notebook ({err.__class__.__name__}); give a notebook of the series")
    cells = [c for c in nb.cells if c.cell_type == "code" and PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise UserError(f"{path}: no cell tagged 'parameters'; the course plan reads a notebook's parameters there")
    values: dict = {}
    exec(compile(cells[0].source, str(path), "exec"), {}, values)  # the series' own notebooks: assignments only
    return {**values, **(overrides or {})}


def session_for(params: dict, cache: str | Path | None = None) -> Session:
    """The :class:`Session` ``start`` makes from notebook parameters ``params``, quietly, on the notebook's
    device (``auto``: what the notebook would pick here; ``-p device cuda`` plans for a GPU machine), so
    a key that depends on where a run trains is the notebook's."""
    keys = ("profile", "device", "data_root", "seed", "epochs", "image_size", "classes", "max_images_per_class",
            "steps_per_epoch")
    with contextlib.redirect_stdout(io.StringIO()):
        return start(output_dir=f"figures/{params.get('_stem', 'plan')}",
                     cache=None if cache is None else str(cache), **{k: params[k] for k in keys if k in params})


# --- the plan --------------------------------------------------------------------------------------------
@dataclass
class PlannedRun:
    """One distinct training of the plan, with where it is requested and what it costs."""

    key: str | None  # the run-cache key; None where the data (or weights) it needs are not on this machine
    method: str
    data: str | dict
    changes: dict
    config: dict  # the method's whole config (preset and profile applied, then the changes)
    seed: int
    epochs: int | None
    batch_size: int | None
    steps_per_epoch: int | None
    split: str
    images: int | None  # images per epoch (what its plan draws)
    images_x_epochs: int | None
    minutes: float | None
    cost_source: str
    session: dict  # what `course train` rebuilds the session from
    requested_by: list[str] = field(default_factory=list)
    needs: str | None = None
    done: bool = False

    def as_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


def _config(method: str, S: Session, changes: dict):
    """The method's config in this profile with ``changes``, without building a model."""
    from .anomalyclip import preset_config

    try:
        base = S.profile.config(method)
    except ValueError:  # an AnomalyCLIP preset without a setup of its own starts from AnomalyCLIP's
        base = preset_config(method, S.profile.config("anomalyclip"))
    return dataclasses.replace(base, **changes)


def _images_per_epoch(model, data, run) -> int:
    recipe = get_method(model.method_name).recipe
    batches = recipe.plan(model, data, run.batch_size, run.seed, **run.options)[:run.max_steps_per_epoch]
    return sum(len(batch) for batch in batches)


def _planned(req: Request, S: Session, stem: str, session: dict) -> PlannedRun:
    """Resolve ``req`` as ``S.trained`` does (key, images) or, without its data, price it by the registry."""
    if req.seed is not None:
        S = dataclasses.replace(S, seed=req.seed)
    changes = dict(req.changes)
    recipe = get_method(req.method).recipe
    data = dataclasses.asdict(req.data) if isinstance(req.data, DataRef) else req.data
    session = {**session, "seed": S.seed}
    try:
        model, dataset, run = S.training(req.method, req.data, **changes)
    except (DatasetError, UserError, RuntimeError) as err:  # data or weights not on this machine: price by the registry
        name = req.data.name if isinstance(req.data, DataRef) else str(req.data)
        # the recipe's choices for this training set (VAND: train.sh's run by set), from its registry name
        config = recipe.for_dataset(_config(req.method, S, changes), SimpleNamespace(root=S.data_root / name))
        epochs, batch = S.epochs or config.epochs, config.batch_size
        seed = get_method(req.method).seed if S.seed is None else S.seed
        steps = getattr(config, "steps_per_epoch", None)
        images = (S.steps_per_epoch or steps) * batch if steps else registry.split_images(
            name, recipe.training_split, len(S.classes) if S.classes else S.classes_per_dataset, S.max_images_per_class)
        if images is not None and S.steps_per_epoch and not steps:
            images = min(images, S.steps_per_epoch * batch)
        total = images * epochs if images is not None else None
        return PlannedRun(None, req.method, data, changes, dataclasses.asdict(config), seed, epochs, batch, S.steps_per_epoch,
                          recipe.training_split, images, total,
                          None if total is None else round(costs.training_minutes(S.profile.name, req.method, total), 1),
                          costs.cost(S.profile.name, req.method).source, session, [f"{stem}: {req.label}"],
                          needs=f"its key needs the data (and weights) on this machine: {str(err).splitlines()[0]}")
    images = _images_per_epoch(model, dataset, run)
    total = images * run.epochs
    return PlannedRun(run.key, req.method, data, changes, dataclasses.asdict(model.config), run.seed, run.epochs, run.batch_size,
                      run.max_steps_per_epoch, recipe.training_split, images, total,
                      round(costs.training_minutes(S.profile.name, req.method, total), 2),
                      costs.cost(S.profile.name, req.method).source, session, [f"{stem}: {req.label}"],
                      done=run.done(S.cache))


def plan(notebooks: Sequence[str | Path], overrides: dict | None = None, cache: str | Path | None = None) -> list[PlannedRun]:
    """The distinct trainings ``notebooks`` request with their parameters ``overrides`` (in order of first
    request; a run several notebooks request is listed once, with all of them in ``requested_by``)."""
    runs: dict[Any, PlannedRun] = {}
    for path in notebooks:
        path = Path(path)
        if path.stem not in SERIES:
            raise UserError(f"{path}: no declared trainings for {path.stem!r}; add its entry to SERIES in "
                            "zsadlab/series.py")
        params = notebook_parameters(path, overrides)
        S = session_for({**params, "_stem": path.stem}, cache)
        given = S.without_budget() or S  # the notebook's own budget: `course train`'s start applies the profile's again
        session = {"profile": S.profile.name, "data_root": str(S.data_root), "cache": str(S.cache),
                   "epochs": S.epochs, "image_size": S.image_size,
                   "classes": list(S.classes) if S.classes else None,
                   "max_images_per_class": given.max_images_per_class, "steps_per_epoch": given.steps_per_epoch}
        for req in SERIES[path.stem](params, S):
            planned = _planned(req, S, path.stem, session)
            ident = planned.key or json.dumps(  # without data: the same method, config, data, seed and budget
                [planned.method, planned.data, planned.config, planned.seed, planned.epochs, planned.split,
                 {k: v for k, v in planned.session.items() if k != "seed"}], sort_keys=True, default=str)
            if ident in runs:
                runs[ident].requested_by += planned.requested_by
            else:
                runs[ident] = planned
    return list(runs.values())


def minutes_by_notebook(runs: Sequence[PlannedRun]) -> dict[str, float]:
    """Training minutes per notebook by the cost model, each run counted once, where it is first requested
    (the run cache serves the later requests): the README's cost columns."""
    minutes: dict[str, float] = {}
    for run in runs:
        stem = run.requested_by[0].split(":")[0]
        minutes[stem] = minutes.get(stem, 0.0) + (run.minutes or 0.0)
    return minutes


def notebook_minutes(notebooks: Sequence[str | Path], overrides: dict | None = None,
                     cache: str | Path | None = None) -> dict[str, dict[str, float | None]]:
    """``{stem: {"training", "evaluation", "total"}}``: each notebook's device-minutes by the cost model - its
    planned trainings (:func:`minutes_by_notebook`: each run where first requested) plus its
    :data:`EVALUATIONS` - under parameters ``overrides`` (e.g. ``{"profile": "lab"}``); None: not priced."""
    training = minutes_by_notebook(plan(notebooks, overrides, cache))
    minutes = {}
    for path in map(Path, notebooks):
        params = notebook_parameters(path, overrides)
        S = session_for({**params, "_stem": path.stem}, cache)
        evaluation = evaluation_minutes(EVALUATIONS[path.stem](params, S), S)
        trained = training.get(path.stem, 0.0)
        minutes[path.stem] = {"training": trained, "evaluation": evaluation,
                              "total": None if evaluation is None else trained + evaluation}
    return minutes


def minutes_table(minutes: dict[str, dict[str, float | None]]) -> str:
    """:func:`notebook_minutes` as the README's markdown table, with the series' total."""
    def shown(value):
        return "?" if value is None else f"{value:.0f}" if value >= 1 else "< 1" if value else "0"
    lines = ["| # | trainings (min) | evaluations (min) | total (min) |", "|---|---|---|---|"]
    lines += [f"| {stem[:2]} | {shown(m['training'])} | {shown(m['evaluation'])} | {shown(m['total'])} |"
              for stem, m in minutes.items()]
    totals = [m["total"] for m in minutes.values()]
    lines.append(f"| all | | | {'?' if None in totals else f'{sum(totals):.0f}'} |")
    return "\n".join(lines)


def plan_table(runs: Sequence[PlannedRun]) -> str:
    """The plan as aligned text: one line per training and a total."""
    header = ("key", "method", "changes", "data", "seed", "epochs", "batch", "steps", "images x epochs", "minutes",
              "requested by")
    rows = [header]
    for r in runs:
        data = r.data if isinstance(r.data, str) else f"{r.data['folder']}/{r.data['name']} (seed {r.data['seed']})"
        rows.append((("(done) " if r.done else "") + (r.key or "needs data"), r.method,
                     ",".join(f"{k}={v}" for k, v in r.changes.items()) or "-", f"{data}/{r.split}", str(r.seed),
                     str(r.epochs), str(r.batch_size), str(r.steps_per_epoch or "-"), str(r.images_x_epochs or "?"),
                     "?" if r.minutes is None else f"{r.minutes:g}", "; ".join(r.requested_by)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    known = [r.minutes for r in runs if r.minutes is not None]
    lines.append(f"{len(runs)} trainings, {sum(r.done for r in runs)} already in the run cache; "
                 f"estimated {sum(known):.1f} device-minutes in all by the cost model (zsadlab/costs.py)"
                 + ("" if len(known) == len(runs) else f", {len(runs) - len(known)} not priced"))
    by_notebook = minutes_by_notebook(runs)
    if by_notebook:
        lines.append("training minutes by notebook (each run where first requested): "
                     + ", ".join(f"{stem[:2]} {m:.0f}" if m >= 1 else f"{stem[:2]} {m:.2f}"
                                 for stem, m in by_notebook.items()))
    needs = [r for r in runs if r.needs]
    if needs:
        lines.append(f"{len(needs)} key(s) need data not prepared here; e.g. {needs[0].needs}")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m zsadlab.series [PROFILE]: minutes per notebook by the cost model
    import sys

    from .course import SERIES_DIR, notebook_paths

    profile = sys.argv[1] if len(sys.argv) > 1 else "lab"
    sys.stdout.write(minutes_table(notebook_minutes(notebook_paths([SERIES_DIR]), {"profile": profile})) + "\n")
