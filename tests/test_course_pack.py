"""Course packs: the plan's runs and a reference run's tables as one verified tar; pulls refuse anything else."""
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from zsadlab.grid import train_plan
from zsadlab.pack import MANIFEST, PackError, build, pull
from zsadlab.series import plan, session_for

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
LOSSES = NOTEBOOKS / "04_global_local_optimization.ipynb"


def _params(root: Path) -> dict:
    return {"profile": "smoke", "data_root": str(root / "data"), "steps_per_epoch": 1}


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """An instructor's machine: the plan of notebook 04 trained into its cache, a reference table, the pack."""
    home = tmp_path_factory.mktemp("instructor")
    runs = [r.as_json() for r in plan([LOSSES], _params(home), cache=home / "cache")]
    train_plan(runs, logs=home / "logs", device="cpu", echo=print)
    reference = home / "figures" / "04_global_local_optimization"
    reference.mkdir(parents=True)
    (reference / "loss_ablation.json").write_text(json.dumps({"both (AnomalyCLIP)": {"image_auroc": 0.5}}))
    (reference / "notes.txt").write_text("not a result table")
    build(home / "course.tar", runs, home / "cache", home / "figures", "smoke")
    return home, runs


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} \
        if folder.exists() else {}


def test_a_pulled_pack_makes_another_clone_reuse_every_run_with_equal_results(packed, tmp_path):
    home, runs = packed
    result = pull(str(home / "course.tar"), tmp_path / "cache")
    assert sorted(result["installed"]) == sorted(f"anomalyclip-{r['key']}" for r in runs)
    assert result["ledger"]["profile"] == "smoke" and len(result["ledger"]["runs"]) == 3
    assert all(run["wall_seconds"] is not None for run in result["ledger"]["runs"])
    # another data root and another cache: the same keys, so the notebooks load instead of training
    S = session_for({**_params(tmp_path), "_stem": "04_global_local_optimization"}, cache=tmp_path / "cache")
    their = session_for(_params(home), cache=home / "cache")
    for changes in ({"loss": "global"}, {"loss": "local"}, {"loss": "both"}):
        model, run = S.trained("anomalyclip", None, **changes)
        original, _ = their.trained("anomalyclip", None, **changes)
        assert run.action == "reused"
        for a, b in zip(model.prompt_learner.parameters(), original.prompt_learner.parameters()):
            assert a.detach().allclose(b.detach(), atol=1e-6)
    assert S.reference_run("loss_ablation.json") == {"both (AnomalyCLIP)": {"image_auroc": 0.5}}
    assert S.reference_run("notes.txt") is None  # only result tables and figures travel


def test_pulling_twice_is_a_no_op(packed, tmp_path):
    home, runs = packed
    pull(str(home / "course.tar"), tmp_path / "cache")
    before = _snapshot(tmp_path / "cache")
    again = pull(str(home / "course.tar"), tmp_path / "cache")
    assert again["installed"] == [] and len(again["present"]) == len(runs)
    assert _snapshot(tmp_path / "cache") == before


def _refused(pack: Path, cache: Path, words: str) -> None:
    cache.mkdir(exist_ok=True)
    (cache / "mine.txt").write_text("the user's")
    before = _snapshot(cache)
    with pytest.raises(PackError, match=words) as err:
        pull(str(pack), cache)
    assert "\n" not in str(err.value)
    assert _snapshot(cache) == before and not any(p.name.startswith(".pack") for p in cache.iterdir())


def test_a_pack_with_one_flipped_byte_is_refused_and_the_cache_is_unchanged(packed, tmp_path):
    home, _ = packed
    data = bytearray((home / "course.tar").read_bytes())
    with tarfile.open(home / "course.tar") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("run.json"))
    data[member.offset_data + 3] ^= 0x01
    (tmp_path / "flipped.tar").write_bytes(bytes(data))
    _refused(tmp_path / "flipped.tar", tmp_path / "cache", "does not match its sha256")


def test_a_truncated_pack_is_refused(packed, tmp_path):
    home, _ = packed
    data = (home / "course.tar").read_bytes()
    (tmp_path / "short.tar").write_bytes(data[: len(data) // 2])
    _refused(tmp_path / "short.tar", tmp_path / "cache", "refused")


def test_a_foreign_tar_is_refused(tmp_path):
    with tarfile.open(tmp_path / "foreign.tar", "w") as tar:
        info = tarfile.TarInfo("runs/x/run.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    _refused(tmp_path / "foreign.tar", tmp_path / "cache", "not a zsadlab course pack")
    (tmp_path / "text.tar").write_text("hello")
    _refused(tmp_path / "text.tar", tmp_path / "cache", "refused")


@pytest.mark.parametrize("name, kind", [("../evil.txt", tarfile.REGTYPE), ("/etc/evil", tarfile.REGTYPE),
                                        ("runs/x/link", tarfile.SYMTYPE), ("runs/x/hard", tarfile.LNKTYPE)])
def test_members_outside_the_pack_or_links_are_refused(packed, tmp_path, name, kind):
    home, _ = packed
    evil = tmp_path / "evil.tar"
    shutil.copyfile(home / "course.tar", evil)
    with tarfile.open(evil, "a") as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        if kind == tarfile.REGTYPE:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
        else:
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    _refused(evil, tmp_path / "cache", "refused")
    assert not (tmp_path / "evil.txt").exists()


def test_a_file_missing_from_the_manifest_is_refused(packed, tmp_path):
    home, _ = packed
    extra = tmp_path / "extra.tar"
    shutil.copyfile(home / "course.tar", extra)
    with tarfile.open(extra, "a") as tar:
        info = tarfile.TarInfo("runs/anomalyclip-0000/extra.pth")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"junk"))
    _refused(extra, tmp_path / "cache", f"not in the manifest|{MANIFEST}")


def test_a_pack_cannot_be_built_before_its_runs_are_trained(tmp_path):
    runs = [r.as_json() for r in plan([LOSSES], _params(tmp_path), cache=tmp_path / "cache")]
    with pytest.raises(PackError, match="course train"):
        build(tmp_path / "course.tar", runs, tmp_path / "cache", None, "smoke")
    assert not (tmp_path / "course.tar").exists()


def test_the_reference_run_of_a_comparison_comes_back_in_percent_from_the_notebooks_table(packed, tmp_path):
    home, _ = packed
    pull(str(home / "course.tar"), tmp_path / "cache")
    S = session_for({**_params(tmp_path), "_stem": "04_global_local_optimization"}, cache=tmp_path / "cache")
    assert S.reference_run("04_loss_ablation") == {"both (AnomalyCLIP)": {"image_auroc": 50.0}}
    assert S.reference_run("04_not_there") is None
    nothing = session_for({**_params(tmp_path), "_stem": "04_global_local_optimization"}, cache=tmp_path / "none")
    assert nothing.reference_run("04_loss_ablation") is None
