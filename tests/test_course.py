"""zsadlab.course: student copies, Colab cells and the site's sources, on small notebooks made with nbformat."""
from __future__ import annotations

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


def test_colab_cells_are_a_badge_after_the_title_and_a_setup_cell_after_parameters():
    nb = course.add_colab_cells(lab_notebook(), course.REPO_URL, notebook_path="notebooks/99_lab.ipynb")
    title, badge, parameters, setup = nb.cells[:4]
    assert badge.metadata.tags == ["colab-badge"]
    assert ("https://colab.research.google.com/github/zsadlab/zsadlab/blob/main/notebooks/99_lab.ipynb"
            in badge.source)
    assert title.source.startswith("# 99")
    assert setup.cell_type == "code" and setup.metadata.tags == ["colab-setup"]
    assert '"google.colab" in sys.modules' in setup.source
    assert "anomalyclip-mvtec" in setup.source and course.REPO_URL in setup.source
    assert parameters.metadata.tags == ["parameters"]


def test_add_colab_cells_is_idempotent_and_updates_the_repository(lab):
    nb = course.add_colab_cells(lab_notebook(), notebook_path="notebooks/99_lab.ipynb")
    once = sources(nb)
    course.add_colab_cells(nb, notebook_path="notebooks/99_lab.ipynb")
    assert sources(nb) == once
    course.add_colab_cells(nb, "https://github.com/someone/fork", notebook_path="notebooks/99_lab.ipynb")
    assert len(nb.cells) == len(once)
    assert "github/someone/fork/blob/main/notebooks/99_lab.ipynb" in nb.cells[1].source
    assert "https://github.com/someone/fork" in nb.cells[3].source


def test_colab_setup_cell_does_nothing_outside_colab():
    namespace: dict = {}
    exec(course.colab_setup_source(), namespace)  # noqa: S102 - the cell's own code, on a machine without Colab
    assert "REPO" not in namespace


def test_site_sources_prefer_executed_notebooks_and_fall_back_to_baselines(tmp_path, lab):
    executed, baselines = tmp_path / "executed", tmp_path / "baselines"
    other = lab.with_name("98_other.ipynb")
    nbformat.write(lab_notebook(), other)
    for folder, path in ((executed, lab), (baselines, lab), (baselines, other)):
        folder.mkdir(exist_ok=True)
        nbformat.write(lab_notebook(), folder / path.name)
    chosen = course.site_sources([other, lab], executed, baselines)
    assert chosen == [(baselines / other.name, True), (executed / lab.name, False)]


def test_prepare_site_writes_toc_intro_notebooks_and_marks_stand_ins(tmp_path, lab):
    repo = tmp_path / "repo"
    (repo / "book").mkdir(parents=True)
    (repo / "book" / "_config.yml").write_text("title: t\n")
    (repo / "README.md").write_text("# zsadlab\n")
    (repo / "docs").mkdir()
    (repo / "docs" / "INSTRUCTOR.md").write_text("# Instructor guide\n")
    baselines = tmp_path / "baselines"
    baselines.mkdir()
    nbformat.write(lab_notebook(), baselines / lab.name)
    out = tmp_path / "site"
    stand_ins = course.prepare_site([lab], out, tmp_path / "missing", baselines, repo=repo)
    assert stand_ins == [lab.name]
    assert (out / "intro.md").read_text() == "# zsadlab\n"
    toc = (out / "_toc.yml").read_text()
    assert "root: intro" in toc and "file: notebooks/99_lab" in toc and "file: INSTRUCTOR" in toc
    page = nbformat.read(out / "notebooks" / lab.name, as_version=4)
    assert "Stand-in page" in page.cells[0].source


def test_command_line_student_writes_one_copy_per_notebook(lab, tmp_path, capsys):
    assert course.main(["student", "--out", str(tmp_path / "student"), str(lab.parent)]) == 0
    assert (tmp_path / "student" / lab.name).is_file()
    assert "2 solution cell(s) removed" in capsys.readouterr().out


def test_command_line_names_a_missing_notebook_in_one_line(tmp_path, capsys):
    assert course.main(["student", "--out", str(tmp_path), str(tmp_path / "nope.ipynb")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.ipynb" in err
