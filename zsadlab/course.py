"""Course tooling: the series' trainings for a class, student copies, Colab cells, the rendered site.

    zsadlab course plan [--profile P] [-p NAME VALUE ...] [--json FILE] [NOTEBOOK ...]
    zsadlab course train [--plan FILE] [--workers N] [--executor local|slurm|submitit-local]
    zsadlab course pack build OUT.tar [--plan FILE]
    zsadlab course pack pull FILE|URL

    python -m zsadlab.course student --out build/student notebooks/*.ipynb
    python -m zsadlab.course site --out build/site notebooks/*.ipynb                # public: no solutions, no guide
    python -m zsadlab.course site --instructor --out build/site-instructor notebooks/*.ipynb
    python -m zsadlab.course colab notebooks/*.ipynb          # add/refresh the Colab badge and set-up cell, in place

Cell roles are cell *tags* (``metadata.tags``), so Jupyter, nbconvert and papermill all see them:
``solution`` (removed from student copies), ``parameters`` (papermill's, always kept),
``colab-badge`` / ``colab-setup`` (the two cells :func:`add_colab_cells` owns). Every notebook
operation goes through nbformat/nbconvert; no JSON is parsed by hand here.
"""
from __future__ import annotations

import argparse
import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import nbformat
from nbconvert.preprocessors import ClearOutputPreprocessor, TagRemovePreprocessor

from .utils import check_writable, write_json_atomic, write_text_atomic

REPO_BRANCH = "main"
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"

SOLUTION_TAG = "solution"
PARAMETERS_TAG = "parameters"
COLAB_BADGE_TAG = "colab-badge"
COLAB_SETUP_TAG = "colab-setup"
# Before the solution cells were tagged, the series marked them by their first line.
LEGACY_SOLUTION_PREFIX = "if show_solutions:"
COLAB_CHECKPOINT = "anomalyclip-mvtec"  # pulled by `zsadlab pull` on Colab
INSTRUCTOR_GUIDE = Path("docs") / "INSTRUCTOR.md"  # published by the instructor build only

BOOK_TEMPLATE = Path(__file__).resolve().parent.parent / "book"  # _config.yml of the site
STAND_IN_NOTE = ("> **Stand-in page.** `build/notebooks/` had no executed copy of this notebook, so the site shows "
                 "its nbval smoke baseline (`tests/notebooks/baselines/`): tiny random CLIP, synthetic data, "
                 "figures removed. Run `make notebooks` and then `make site` for the real page.")


class CourseError(ValueError):
    """Bad input to the course tools; the message names the file and the fix."""


def repository_url(pyproject: Path = PYPROJECT) -> str | None:
    """THE repository address, set in one place: ``[project.urls] Repository`` of pyproject.toml
    (or the installed package's metadata). ``None`` when unset: then no Colab badge is written."""
    if pyproject.is_file() and sys.version_info >= (3, 11):
        import tomllib
        urls = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {}).get("urls", {})
        return urls.get("Repository")
    from importlib import metadata
    try:
        entries = metadata.metadata("zsadlab").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        return None
    return next((url.strip() for label, _, url in (e.partition(",") for e in entries) if label.strip() == "Repository"),
                None)


REPO_URL = repository_url()


# ----------------------------------------------------------------------------- notebooks in and out
def read_notebook(path: str | Path) -> nbformat.NotebookNode:
    """The notebook at ``path`` (nbformat 4), or a :class:`CourseError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CourseError(f"{path}: no such notebook (give a path to an .ipynb file, e.g. notebooks/02_dpam.ipynb)")
    try:
        return nbformat.read(path, as_version=4)
    except Exception as err:  # nbformat raises several JSON/schema errors; one line for the user
        raise CourseError(f"{path}: not a readable notebook ({err.__class__.__name__}); "
                          f"restore it from git (git checkout -- {path})") from err


def write_notebook(nb: nbformat.NotebookNode, path: str | Path) -> Path:
    """Validate ``nb`` and write it to ``path`` atomically."""
    nbformat.validate(nb)
    return write_text_atomic(nbformat.writes(nb), path)


def cell_tags(cell: nbformat.NotebookNode) -> list[str]:
    """The tags of ``cell`` (an empty list when it has none)."""
    return list(cell.get("metadata", {}).get("tags", []))


def add_tag(cell: nbformat.NotebookNode, tag: str) -> None:
    """Give ``cell`` the tag ``tag`` (once)."""
    tags = cell.setdefault("metadata", {}).setdefault("tags", [])
    if tag not in tags:
        tags.append(tag)


# ----------------------------------------------------------------------------- student copies
def tag_solutions(nb: nbformat.NotebookNode) -> int:
    """Tag ``solution`` every code cell that starts with ``if show_solutions:`` (the series'
    convention before tags); returns how many cells carry the tag afterwards. Idempotent."""
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.lstrip().startswith(LEGACY_SOLUTION_PREFIX):
            add_tag(cell, SOLUTION_TAG)
    return sum(SOLUTION_TAG in cell_tags(cell) for cell in nb.cells)


def without_solutions(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` without its ``solution`` cells - source and outputs (nbconvert's
    TagRemovePreprocessor); every other cell keeps its outputs."""
    nb = copy.deepcopy(nb)
    tag_solutions(nb)
    nb, _ = TagRemovePreprocessor(remove_cell_tags={SOLUTION_TAG}).preprocess(nb, {})
    return nb


def student_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` without its ``solution`` cells and without outputs (nbconvert's
    TagRemovePreprocessor and ClearOutputPreprocessor); exercises and ``parameters`` stay."""
    nb, _ = ClearOutputPreprocessor().preprocess(without_solutions(nb), {})
    return nb


def student_copy(src: str | Path, dst: str | Path) -> int:
    """Write the student copy of notebook ``src`` to ``dst``; returns the number of solution cells removed."""
    nb = read_notebook(src)
    student = student_notebook(nb)
    if Path(dst).resolve() == Path(src).resolve():
        raise CourseError(f"{dst}: the student copy would overwrite its source; choose another folder (--out)")
    write_notebook(student, dst)
    return len(nb.cells) - len(student.cells)


# ----------------------------------------------------------------------------- Colab
def colab_url(notebook_path: str, repo_url: str = REPO_URL, branch: str = REPO_BRANCH) -> str:
    """Colab's address for ``notebook_path`` (relative to the repository root) on GitHub."""
    owner_repo = repo_url.rstrip("/").removesuffix(".git").split("github.com/", 1)[-1]
    return f"https://colab.research.google.com/github/{owner_repo}/blob/{branch}/{notebook_path}"


def colab_badge_source(notebook_path: str, repo_url: str = REPO_URL) -> str:
    """The markdown of the "Open in Colab" badge line."""
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"({colab_url(notebook_path, repo_url)})")


def colab_profile() -> str:
    """The profile the Colab set-up cell selects: Colab has a GPU and network, so real weights -
    the course's ``lab`` profile where this version has one, else ``full``; never ``auto``, which
    would fall back to smoke on a fresh machine without cached weights."""
    from .profiles import PROFILES
    return "lab" if "lab" in PROFILES else "full"


def colab_setup_source(repo_url: str | None = REPO_URL) -> str:
    """The code cell after ``parameters``: on Colab only, clone and install zsadlab, pull the
    official checkpoint and choose a real-weights profile (open_clip downloads the CLIP weights
    on first use: Colab has network); elsewhere it does nothing."""
    chosen = colab_profile()
    if repo_url is None:
        return f'''# Colab only. This copy of the course names no repository ([project.urls] Repository in pyproject.toml),
# so it cannot install itself on Colab: open the notebook from your instructor's Colab link instead.
import sys

if "google.colab" in sys.modules:
    raise SystemExit("zsadlab: no repository configured for Colab; use the course's own Colab link")'''
    return f'''# Colab only: install zsadlab, pull the official checkpoint, use the real CLIP weights. Does nothing elsewhere.
import sys

if "google.colab" in sys.modules:
    import os
    import subprocess

    REPO = "/content/zsadlab"
    if not os.path.isdir(REPO):
        subprocess.run(["git", "clone", "--depth", "1", "{repo_url}", REPO], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-e", REPO + "[notebooks]"], check=True)
    os.chdir(REPO)  # the notebooks resolve data/ and figures/ from the repository root
    sys.path.insert(0, REPO)
    subprocess.run(["zsadlab", "pull", "{COLAB_CHECKPOINT}"], check=True)
    # Colab has network, so open_clip downloads the real weights on first use: choose their profile
    # explicitly ("auto" would pick smoke on a fresh machine, where no weights are cached yet).
    if profile == "auto":
        profile = "{chosen}"
    print(f"Colab: profile {{profile!r}}")'''


def upsert_cell(nb: nbformat.NotebookNode, tag: str, new_cell: nbformat.NotebookNode, index: int) -> None:
    """Replace the source of the cell tagged ``tag`` by ``new_cell``'s, or insert ``new_cell`` at ``index``."""
    for cell in nb.cells:
        if tag in cell_tags(cell):
            cell.source = new_cell.source
            return
    add_tag(new_cell, tag)
    nb.cells.insert(index, new_cell)


def add_colab_cells(nb: nbformat.NotebookNode, repo_url: str | None = REPO_URL, *,
                    notebook_path: str) -> nbformat.NotebookNode:
    """Insert (or refresh) the Colab badge right after the title cell (which states the question
    and the cost) and the Colab set-up code cell right after the ``parameters`` cell, which stays
    the first code cell (papermill injects its values after it). Without a repository address
    (:func:`repository_url`) no badge is written and an existing one is removed. Idempotent; returns ``nb``."""
    if repo_url is None:
        nb.cells = [cell for cell in nb.cells if COLAB_BADGE_TAG not in cell_tags(cell)]
    else:
        upsert_cell(nb, COLAB_BADGE_TAG, nbformat.v4.new_markdown_cell(colab_badge_source(notebook_path, repo_url)),
                    min(1, len(nb.cells)))
    tags = [cell_tags(cell) for cell in nb.cells]
    after_parameters = next((i + 1 for i, t in enumerate(tags) if PARAMETERS_TAG in t), len(nb.cells))
    upsert_cell(nb, COLAB_SETUP_TAG, nbformat.v4.new_code_cell(colab_setup_source(repo_url)), after_parameters)
    return nb


# ----------------------------------------------------------------------------- the site (Jupyter Book 1)
def site_sources(series: Sequence[Path], executed: Path, fallback: Path) -> list[tuple[Path, bool]]:
    """For each notebook of the series, its executed copy in ``executed`` or else its nbval
    baseline in ``fallback``, with a flag saying whether it is that stand-in."""
    chosen = []
    for nb in series:
        if (executed / nb.name).is_file():
            chosen.append((executed / nb.name, False))
        elif (fallback / nb.name).is_file():
            chosen.append((fallback / nb.name, True))
        else:
            raise CourseError(f"{nb.name}: no executed copy in {executed}/ and no baseline in {fallback}/; "
                              f"run `make notebooks` first")
    return chosen


def toc_yaml(notebooks: Sequence[str], guides: Sequence[str]) -> str:
    """Jupyter Book's ``_toc.yml``: the README as the intro, the notebooks in order, then the guides."""
    lines = ["# Generated by `python -m zsadlab.course site`; edit zsadlab/course.py, not this file.",
             "format: jb-book", "root: intro", "parts:", "  - caption: Notebooks", "    chapters:"]
    lines += [f"      - file: notebooks/{stem}" for stem in notebooks]
    if guides:
        lines += ["  - caption: For instructors", "    chapters:"]
        lines += [f"      - file: {stem}" for stem in guides]
    return "\n".join(lines) + "\n"


def prepare_site(series: Sequence[Path], out: Path, executed: Path, fallback: Path,
                 repo: Path = BOOK_TEMPLATE.parent, instructor: bool = False) -> list[str]:
    """Fill ``out`` with a Jupyter Book: config from ``book/``, README as intro, the executed
    notebooks (stand-ins marked on their page) and PROTOCOL.md when present.

    The public site (default) shows **no answers**: every ``solution`` cell is removed, source and
    outputs, and the instructor guide (docs/INSTRUCTOR.md) is not published. ``instructor=True``
    keeps the solutions and adds the guide - build it into another folder and keep it private.
    Returns the names of the stand-in notebooks."""
    for stale in (out / "notebooks", out / "_build"):  # what an earlier (e.g. instructor) build wrote here
        shutil.rmtree(stale, ignore_errors=True)
    (out / INSTRUCTOR_GUIDE.name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(repo / "book" / "_config.yml", out / "_config.yml")
    shutil.copyfile(repo / "README.md", out / "intro.md")
    stand_ins = []
    for source, stand_in in site_sources(series, executed, fallback):
        nb = read_notebook(source) if instructor else without_solutions(read_notebook(source))
        if stand_in:
            nb.cells.insert(0, nbformat.v4.new_markdown_cell(STAND_IN_NOTE))
            stand_ins.append(source.name)
        write_notebook(nb, out / "notebooks" / source.name)
    guides = []
    docs = [repo / "PROTOCOL.md", repo / "docs" / "PROTOCOL.md"] + ([repo / INSTRUCTOR_GUIDE] if instructor else [])
    for doc in docs:
        if doc.is_file() and doc.stem not in guides:
            shutil.copyfile(doc, out / doc.name)
            guides.append(doc.stem)
    write_text_atomic(toc_yaml([nb.stem for nb in series], guides), out / "_toc.yml")
    return stand_ins


def build_site(out: Path, jupyter_book: str | None = None) -> Path:
    """Run ``jupyter-book build`` (1.x, sphinx; no execution) on ``out``; returns the HTML folder."""
    command = jupyter_book or shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) \
        or shutil.which("jupyter-book")
    if not command:
        raise CourseError("jupyter-book not found: install the site extra (pip install -e '.[site]') or run `make site`")
    subprocess.run([command, "build", "--builder", "html", str(out)], check=True)
    return out / "_build" / "html"


# ----------------------------------------------------------------------------- command line
def notebook_paths(paths: Sequence[Path]) -> list[Path]:
    """The given notebooks in order; a folder stands for its ``*.ipynb``."""
    found = []
    for path in paths:
        found += sorted(path.glob("*.ipynb")) if path.is_dir() else [path]
    return found


def run_student(args: argparse.Namespace) -> int:
    for src in notebook_paths(args.notebooks):
        removed = student_copy(src, args.out / src.name)
        print(f"{args.out / src.name}: {removed} solution cell(s) removed, outputs cleared")
    return 0


def run_site(args: argparse.Namespace) -> int:
    series = notebook_paths(args.notebooks)
    stand_ins = prepare_site(series, args.out, args.executed, args.fallback, instructor=args.instructor)
    if stand_ins:
        print(f"note: {len(stand_ins)}/{len(series)} notebooks have no executed copy in {args.executed}/; the site "
              f"shows their nbval smoke baselines from {args.fallback}/ as stand-ins (no figures): "
              f"{', '.join(stand_ins)}. Run `make notebooks` for the real pages.")
    if args.no_build:
        return 0
    html = build_site(args.out, args.jupyter_book)
    print(f"site: {html / 'index.html'}")
    return 0


def run_colab(args: argparse.Namespace) -> int:
    for path in notebook_paths(args.notebooks):
        nb = read_notebook(path)
        add_colab_cells(nb, args.repo_url, notebook_path=f"notebooks/{path.name}")
        write_notebook(nb, path)
        print(f"{path}: Colab badge and set-up cell up to date")
    return 0


def run_tag(args: argparse.Namespace) -> int:
    for path in notebook_paths(args.notebooks):
        nb = read_notebook(path)
        count = tag_solutions(nb)
        write_notebook(nb, path)
        print(f"{path}: {count} cell(s) tagged {SOLUTION_TAG!r}")
    return 0


# ----------------------------------------------------------------------------- plan, train, pack
SERIES_DIR = BOOK_TEMPLATE.parent / "notebooks"


def _parameter_values(pairs: Sequence[Sequence[str]]) -> dict:
    """``-p NAME VALUE`` pairs, each value parsed as JSON when it is (as ``run_notebooks`` does)."""
    import json

    values = {}
    for name, value in pairs:
        try:
            values[name] = json.loads(value)
        except ValueError:
            values[name] = value
    return values


def _plan_runs(args: argparse.Namespace) -> list:
    from .series import plan

    overrides = _parameter_values(args.parameter)
    if args.profile:
        overrides["profile"] = args.profile
    notebooks = notebook_paths(args.notebooks or [SERIES_DIR])
    return plan(notebooks, overrides, cache=args.cache)


def _read_plan(path: Path) -> dict:
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CourseError(f"{path}: not a readable plan ({err.__class__.__name__}); write one with "
                          "`zsadlab course plan --json FILE`")
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise CourseError(f"{path}: not a course plan (no \"runs\" list); write one with `zsadlab course plan --json FILE`")
    return data


def _runs_of(args: argparse.Namespace) -> tuple[list[dict], str]:
    """The plan's runs (from ``--plan`` or planned now) and its profile."""
    if args.plan:
        data = _read_plan(args.plan)
        return data["runs"], data.get("profile", "?")
    runs = [r.as_json() for r in _plan_runs(args)]
    return runs, runs[0]["session"]["profile"] if runs else "?"


def run_plan(args: argparse.Namespace) -> int:
    from .series import plan_table

    if args.json:
        check_writable(args.json.parent)  # before planning (which builds every model)
    runs = _plan_runs(args)
    print(plan_table(runs))
    if args.json:
        write_json_atomic({"profile": runs[0].session["profile"] if runs else None,
                           "runs": [r.as_json() for r in runs]}, args.json)
        print(f"plan: {args.json}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from .grid import train_plan

    runs, _ = _runs_of(args)
    report = train_plan(runs, executor=args.executor, workers=args.workers, logs=args.logs, cache=args.run_cache,
                        data_root=args.data_root, gpus_per_run=args.gpus_per_run, partition=args.slurm_partition,
                        time_min=args.time, device=args.device)
    print(f"course train: {len(report['trained'])} trained, {len(report['skipped'])} already in the run cache, "
          f"{len(report['failed'])} failed" + (f" (logs in {args.logs})" if report["failed"] else ""))
    return 1 if report["failed"] else 0


def run_pack_build(args: argparse.Namespace) -> int:
    from .pack import build

    runs, profile = _runs_of(args)
    cache = Path(args.run_cache or (runs[0]["session"]["cache"] if runs else "runs/cache"))
    record = build(args.out, runs, cache, args.reference, profile)
    print(f"{args.out}: {len(record['runs'])} runs, reference tables from {args.reference}, profile {profile}")
    return 0


def run_pack_pull(args: argparse.Namespace) -> int:
    from .notebook import CACHE
    from .pack import pull
    from .viz import resolve_path

    cache = Path(args.run_cache) if args.run_cache else resolve_path(os.environ.get("ZSADLAB_CACHE", CACHE))
    result = pull(args.source, cache)
    print(f"{args.source}: {len(result['installed'])} runs installed, {len(result['present'])} already in {cache} "
          f"(pack of {result['ledger'].get('profile')} profile, zsadlab {result['ledger'].get('zsadlab')}, "
          f"commit {str(result['ledger'].get('commit'))[:10]})")
    return 0


def _plan_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("notebooks", nargs="*", type=Path, help="notebooks of the series (default: notebooks/)")
    command.add_argument("--profile", default=None, help="the profile (default: each notebook's, i.e. auto)")
    command.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                         help="a notebook parameter for every notebook (value parsed as JSON when possible)")
    command.add_argument("--cache", default=None, help="the run cache (default $ZSADLAB_CACHE, else runs/cache)")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="zsadlab course", description=__doc__.splitlines()[0])
    commands = root.add_subparsers(dest="command", required=True)
    plan = commands.add_parser("plan", help="list every distinct training the series requests, with its cost")
    _plan_options(plan)
    plan.add_argument("--json", type=Path, default=None, help='write {"runs": [...]} here')
    plan.set_defaults(func=run_plan)
    train = commands.add_parser("train", help="train the plan's runs not yet in the run cache, side by side")
    _plan_options(train)
    train.add_argument("--plan", type=Path, default=None, help="a plan written by `course plan --json`")
    train.add_argument("--workers", type=int, default=1, help="runs at once (local: one per GPU, or CPU processes)")
    train.add_argument("--executor", default="local", choices=["local", "slurm", "submitit-local", "submitit-debug"])
    train.add_argument("--slurm-partition", default=None)
    train.add_argument("--gpus-per-run", type=int, default=1, help="> 1: each run is torchrun DDP inside its job")
    train.add_argument("--time", type=int, default=240, help="time limit per run, minutes (SLURM)")
    train.add_argument("--logs", type=Path, default=Path("build/course/logs"), help="one log per run here")
    train.add_argument("--run-cache", default=None, help="train into this run cache instead of the plan's")
    train.add_argument("--data-root", default=None, help="read the data here instead of the plan's data root")
    train.add_argument("--device", default="auto")
    train.set_defaults(func=run_train)
    pack = commands.add_parser("pack", help="course packs: build one from the run cache, or pull one into it")
    packs = pack.add_subparsers(dest="pack_command", required=True)
    build = packs.add_parser("build", help="the plan's runs + the reference execution's tables, verified")
    build.add_argument("out", type=Path)
    _plan_options(build)
    build.add_argument("--plan", type=Path, default=None)
    build.add_argument("--reference", type=Path, default=Path("figures"),
                       help="the reference execution's output folders (figures/<notebook>/)")
    build.add_argument("--run-cache", default=None)
    build.set_defaults(func=run_pack_build, notebooks=[])
    pull = packs.add_parser("pull", help="verify a pack (file or URL) and install it into the run cache")
    pull.add_argument("source")
    pull.add_argument("--run-cache", default=None, help="default $ZSADLAB_CACHE, else runs/cache")
    pull.set_defaults(func=run_pack_pull)
    student = commands.add_parser("student", help="student copies: solution cells removed, outputs cleared")
    student.add_argument("notebooks", nargs="+", type=Path)
    student.add_argument("--out", type=Path, default=Path("build/student"))
    student.set_defaults(func=run_student)
    site = commands.add_parser("site", help="the Jupyter Book site of the executed notebooks")
    site.add_argument("notebooks", nargs="+", type=Path, help="the series (its order and names)")
    site.add_argument("--executed", type=Path, default=Path("build/notebooks"), help="executed copies (make notebooks)")
    site.add_argument("--fallback", type=Path, default=Path("tests/notebooks/baselines"),
                      help="stand-ins for notebooks without an executed copy")
    site.add_argument("--out", type=Path, default=Path("build/site"))
    site.add_argument("--jupyter-book", default=None, help="the jupyter-book executable (default: beside python)")
    site.add_argument("--no-build", action="store_true", help="only write the book's sources")
    site.add_argument("--instructor", action="store_true",
                      help="the instructor's site: keeps the solution cells and adds docs/INSTRUCTOR.md (keep it private)")
    site.set_defaults(func=run_site)
    colab = commands.add_parser("colab", help="add or refresh the Colab badge and set-up cell (in place)")
    colab.add_argument("notebooks", nargs="+", type=Path)
    colab.add_argument("--repo-url", default=REPO_URL,
                       help="default: [project.urls] Repository of pyproject.toml; unset: no badge is written")
    colab.set_defaults(func=run_colab)
    tag = commands.add_parser("tag-solutions", help=f"tag {SOLUTION_TAG!r} the cells starting with "
                                                    f"{LEGACY_SOLUTION_PREFIX!r} (in place)")
    tag.add_argument("notebooks", nargs="+", type=Path)
    tag.set_defaults(func=run_tag)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import UserError
    from .utils import OutputError

    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (CourseError, UserError, OutputError, subprocess.CalledProcessError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
