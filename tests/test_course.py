"""zsadlab.course: student copies, Colab cells and the site's sources, on small notebooks made with nbformat."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from zsadlab import course


def lab_notebook() -> nbformat.NotebookNode:
    """Title, parameters, an executed experiment, exercises, a tagged and a legacy (untagged) solution."""
    parameters = new_code_cell("profile = 'auto'\nshow_solutions = False", metadata={"tags": ["parameters"]})
    experiment = new_code_cell("print(1 + 1)", execution_count=3,
                               outputs=[new_output("stream", name="stdout", text="2\n")])
    solution = new_code_cell("answer = 42", metadata={"tags": ["solution"]}, execution_count=4,
                             outputs=[new_output("execute_result", data={"text/plain": "42"}, execution_count=4)])
    legacy = new_code_cell("if show_solutions:\n    print('old-style answer')")
    return new_notebook(cells=[new_markdown_cell("# 99 · Title"), parameters, experiment,
                               new_markdown_cell("## Exercises\n\n1. Predict, then implement."), solution, legacy])


def sources(nb: nbformat.NotebookNode) -> list[str]:
    return [cell.source for cell in nb.cells]


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    path = tmp_path / "notebooks" / "99_lab.ipynb"
    path.parent.mkdir()
    nbformat.write(lab_notebook(), path)
    return path


def test_student_copy_removes_tagged_and_legacy_solution_cells(lab, tmp_path):
    removed = course.student_copy(lab, tmp_path / "student" / lab.name)
    student = nbformat.read(tmp_path / "student" / lab.name, as_version=4)
    assert removed == 2
    assert "answer = 42" not in sources(student)
    assert not any(s.startswith("if show_solutions:") for s in sources(student))


def test_student_copy_keeps_parameters_exercises_and_experiment(lab, tmp_path):
    course.student_copy(lab, tmp_path / "student.ipynb")
    student = nbformat.read(tmp_path / "student.ipynb", as_version=4)
    assert student.cells[1].metadata.tags == ["parameters"]
    assert "show_solutions = False" in student.cells[1].source
    assert any("## Exercises" in s for s in sources(student))
    assert "print(1 + 1)" in sources(student)
    nbformat.validate(student)


def test_student_copy_clears_every_output_and_execution_count(lab, tmp_path):
    course.student_copy(lab, tmp_path / "student.ipynb")
    student = nbformat.read(tmp_path / "student.ipynb", as_version=4)
    code = [cell for cell in student.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)


def test_student_copy_leaves_the_source_notebook_untouched(lab, tmp_path):
    before = lab.read_text()
    course.student_copy(lab, tmp_path / "student.ipynb")
    assert lab.read_text() == before


def test_student_copy_refuses_to_overwrite_its_source(lab):
    with pytest.raises(course.CourseError, match="overwrite its source"):
        course.student_copy(lab, lab)


def test_missing_notebook_is_one_clear_error(tmp_path):
    with pytest.raises(course.CourseError, match="no such notebook"):
        course.student_copy(tmp_path / "nope.ipynb", tmp_path / "out.ipynb")


def test_tag_solutions_tags_legacy_cells_once():
    nb = lab_notebook()
    assert course.tag_solutions(nb) == 2
    assert course.tag_solutions(nb) == 2
    assert nb.cells[5].metadata.tags == ["solution"]


REPO = "https://github.com/example/zsadlab"


def test_colab_cells_are_a_badge_after_the_title_and_a_setup_cell_after_parameters():
    nb = course.add_colab_cells(lab_notebook(), REPO, notebook_path="notebooks/99_lab.ipynb")
    title, badge, parameters, setup = nb.cells[:4]
    assert badge.metadata.tags == ["colab-badge"]
    assert ("https://colab.research.google.com/github/example/zsadlab/blob/main/notebooks/99_lab.ipynb"
            in badge.source)
    assert title.source.startswith("# 99")
    assert setup.cell_type == "code" and setup.metadata.tags == ["colab-setup"]
    assert '"google.colab" in sys.modules' in setup.source
    assert "anomalyclip-mvtec" in setup.source and REPO in setup.source
    assert parameters.metadata.tags == ["parameters"]


def test_colab_setup_installs_the_package_and_selects_a_real_weights_profile_explicitly():
    setup = course.colab_setup_source(REPO)
    assert "pip" in setup and "install" in setup
    assert course.colab_profile() in ("full", "lab")
    assert f'profile = "{course.colab_profile()}"' in setup and 'if profile == "auto"' in setup


def test_repository_url_is_read_from_the_project_urls_of_pyproject(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\n[project.urls]\nRepository = "https://github.com/o/r"\n')
    assert course.repository_url(pyproject) == "https://github.com/o/r"
    pyproject.write_text('[project]\nname = "x"\n')
    assert course.repository_url(pyproject) is None


def test_no_badge_is_written_without_a_repository_and_an_old_one_is_removed():
    nb = course.add_colab_cells(lab_notebook(), None, notebook_path="notebooks/99_lab.ipynb")
    assert not any("colab-badge" in course.cell_tags(cell) for cell in nb.cells)
    nb = course.add_colab_cells(course.add_colab_cells(lab_notebook(), REPO, notebook_path="notebooks/99_lab.ipynb"),
                                None, notebook_path="notebooks/99_lab.ipynb")
    assert not any("colab.research.google.com" in cell.source for cell in nb.cells)
    assert "no repository configured" in nb.cells[2].source


def test_the_series_carries_no_badge_to_a_repository_other_than_the_configured_one():
    for path in sorted((Path(course.__file__).parent.parent / "notebooks").glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if "colab.research.google.com/github/" in cell.source:
                assert course.REPO_URL and course.REPO_URL.split("github.com/")[-1] in cell.source, path


def test_add_colab_cells_is_idempotent_and_updates_the_repository(lab):
    nb = course.add_colab_cells(lab_notebook(), REPO, notebook_path="notebooks/99_lab.ipynb")
    once = sources(nb)
    course.add_colab_cells(nb, REPO, notebook_path="notebooks/99_lab.ipynb")
    assert sources(nb) == once
    course.add_colab_cells(nb, "https://github.com/someone/fork", notebook_path="notebooks/99_lab.ipynb")
    assert len(nb.cells) == len(once)
    assert "github/someone/fork/blob/main/notebooks/99_lab.ipynb" in nb.cells[1].source
    assert "https://github.com/someone/fork" in nb.cells[3].source


def test_colab_setup_cell_does_nothing_outside_colab():
    for repo in (REPO, None):
        namespace: dict = {"profile": "auto"}
        exec(course.colab_setup_source(repo), namespace)  # noqa: S102 - the cell's own code, without Colab
        assert "REPO" not in namespace and namespace["profile"] == "auto"


def test_site_sources_prefer_executed_notebooks_and_fall_back_to_baselines(tmp_path, lab):
    executed, baselines = tmp_path / "executed", tmp_path / "baselines"
    other = lab.with_name("98_other.ipynb")
    nbformat.write(lab_notebook(), other)
    for folder, path in ((executed, lab), (baselines, lab), (baselines, other)):
        folder.mkdir(exist_ok=True)
        nbformat.write(lab_notebook(), folder / path.name)
    chosen = course.site_sources([other, lab], executed, baselines)
    assert chosen == [(baselines / other.name, True), (executed / lab.name, False)]


GUIDE = "# Instructor guide\nThe answer to exercise 1 is CoOp.\n"


@pytest.fixture
def site_repo(tmp_path):
    repo = tmp_path / "repo"
    (repo / "book").mkdir(parents=True)
    (repo / "book" / "_config.yml").write_text("title: t\n")
    (repo / "README.md").write_text("# zsadlab\n")
    (repo / "PROTOCOL.md").write_text("# Protocol\n")
    (repo / "docs").mkdir()
    (repo / "docs" / "INSTRUCTOR.md").write_text(GUIDE)
    return repo


def site_text(out: Path) -> str:
    """Everything the site preparation wrote, as one text (what jupyter-book would publish)."""
    return "\n".join(p.read_text(errors="replace") for p in sorted(out.rglob("*")) if p.is_file())


def test_prepare_site_writes_toc_intro_notebooks_and_marks_stand_ins(tmp_path, lab, site_repo):
    baselines = tmp_path / "baselines"
    baselines.mkdir()
    nbformat.write(lab_notebook(), baselines / lab.name)
    out = tmp_path / "site"
    stand_ins = course.prepare_site([lab], out, tmp_path / "missing", baselines, repo=site_repo)
    assert stand_ins == [lab.name]
    assert (out / "intro.md").read_text() == "# zsadlab\n"
    toc = (out / "_toc.yml").read_text()
    assert "root: intro" in toc and "file: notebooks/99_lab" in toc and "file: PROTOCOL" in toc
    page = nbformat.read(out / "notebooks" / lab.name, as_version=4)
    assert "Stand-in page" in page.cells[0].source


def test_public_site_publishes_no_solution_and_not_the_instructor_guide(tmp_path, lab, site_repo):
    executed = tmp_path / "executed"
    executed.mkdir()
    nbformat.write(lab_notebook(), executed / lab.name)  # executed copy: solution source and its output "42"
    out = tmp_path / "site"
    course.prepare_site([lab], out, executed, tmp_path / "missing", repo=site_repo)
    text = site_text(out)
    assert "answer = 42" not in text and "old-style answer" not in text and '"42"' not in text
    assert "Instructor guide" not in text and "exercise 1 is CoOp" not in text
    assert not (out / "INSTRUCTOR.md").exists() and "INSTRUCTOR" not in (out / "_toc.yml").read_text()
    page = nbformat.read(out / "notebooks" / lab.name, as_version=4)
    assert any(cell.get("outputs") for cell in page.cells)  # the experiment keeps its outputs


def test_instructor_site_keeps_the_solutions_and_the_guide_and_a_public_rebuild_drops_them(tmp_path, lab, site_repo):
    executed = tmp_path / "executed"
    executed.mkdir()
    nbformat.write(lab_notebook(), executed / lab.name)
    out = tmp_path / "site"
    course.prepare_site([lab], out, executed, tmp_path / "missing", repo=site_repo, instructor=True)
    assert "answer = 42" in site_text(out) and "exercise 1 is CoOp" in site_text(out)
    assert "file: INSTRUCTOR" in (out / "_toc.yml").read_text()
    course.prepare_site([lab], out, executed, tmp_path / "missing", repo=site_repo)  # public, same folder
    assert "answer = 42" not in site_text(out) and "exercise 1 is CoOp" not in site_text(out)


def test_public_site_of_the_series_leaks_no_solution_cell(tmp_path):
    repo = Path(course.__file__).resolve().parent.parent
    series = sorted((repo / "notebooks").glob("*.ipynb"))
    out = tmp_path / "site"
    course.prepare_site(series, out, repo / "notebooks", tmp_path / "missing", repo=repo)
    text = site_text(out)
    for path in series:
        for cell in nbformat.read(path, as_version=4).cells:
            if "solution" in course.cell_tags(cell) or cell.source.startswith("if show_solutions:"):
                assert cell.source not in text, f"{path.name}: a solution cell reached the public site"
    assert not (out / "INSTRUCTOR.md").exists()


def test_command_line_site_has_an_instructor_option(tmp_path, lab):
    args = course.parser().parse_args(["site", "--instructor", "--no-build", str(lab)])
    assert args.instructor and args.no_build
    assert not course.parser().parse_args(["site", str(lab)]).instructor


def test_command_line_student_writes_one_copy_per_notebook(lab, tmp_path, capsys):
    assert course.main(["student", "--out", str(tmp_path / "student"), str(lab.parent)]) == 0
    assert (tmp_path / "student" / lab.name).is_file()
    assert "2 solution cell(s) removed" in capsys.readouterr().out


def test_command_line_names_a_missing_notebook_in_one_line(tmp_path, capsys):
    assert course.main(["student", "--out", str(tmp_path), str(tmp_path / "nope.ipynb")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.ipynb" in err


def test_student_facing_text_cites_no_document_students_lack_and_carries_no_authoring_note():
    repo = Path(course.__file__).resolve().parent.parent
    pattern = re.compile(r"seed write-?up|could not be read|no readable copy|not visible|SPEC §|issue #", re.I)
    texts = {p: p.read_text() for p in [*sorted((repo / "notebooks").glob("*.ipynb")), *sorted((repo / "docs").rglob("*.md"))]}
    assert {p.name: pattern.findall(t) for p, t in texts.items() if pattern.search(t)} == {}


def test_no_exercise_text_gives_its_answer_away():
    for path in sorted((Path(course.__file__).resolve().parent.parent / "notebooks").glob("*.ipynb")):
        text = "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "markdown")
        exercises = text[text.find("## Exercises"):] if "## Exercises" in text else ""
        assert not re.search(r"\bExpected\b|Depends on your run", exercises), path.name
