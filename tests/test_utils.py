"""Seeding, device choice, atomic writes (checked before compute, one line per failure) and safe checkpoint reads."""
import errno
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from zsadlab.utils import (
    FolderBusyError,
    OutputError,
    atomic_path,
    check_writable,
    folder_lock,
    load_torch_file,
    pick_device,
    save_torch_atomic,
    seed_everything,
    write_json_atomic,
    write_text_atomic,
)


def test_seed_everything_repeats_python_numpy_and_torch_draws():
    draws = []
    for _ in range(2):
        seed_everything(7)
        draws.append((random.random(), np.random.rand(), torch.rand(1).item()))
    assert draws[0] == draws[1]


def test_pick_device_honours_an_explicit_choice_and_the_environment(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("ZSADLAB_DEVICE", "cpu")
    assert pick_device() == torch.device("cpu")
    monkeypatch.delenv("ZSADLAB_DEVICE")
    assert pick_device().type in {"cpu", "cuda", "mps"}


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_json_atomic({"a": 1}, tmp_path / "result.json")
    with pytest.raises(TypeError):
        write_json_atomic({"a": object()}, path)
    assert path.read_text().strip().startswith("{") and '"a": 1' in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_checkpoints_roundtrip_and_bad_files_are_named(tmp_path):
    path = save_torch_atomic({"w": torch.ones(2)}, tmp_path / "ckpt.pt")
    assert torch.equal(load_torch_file(path)["w"], torch.ones(2))
    (tmp_path / "truncated.pt").write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match="truncated.pt"):
        load_torch_file(tmp_path / "truncated.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_torch_file(tmp_path / "nope.pt")


class Arbitrary:
    """Any class: unpickling it would run code from the file."""


def test_pickled_objects_are_refused_without_suggesting_unsafe_loading(tmp_path):
    torch.save({"obj": Arbitrary()}, tmp_path / "evil.pt")
    (tmp_path / "garbage.pt").write_bytes(b"garbage, not a checkpoint")
    for name, reason in (("evil.pt", "pickled Python object"), ("garbage.pt", "not a torch.save file")):
        with pytest.raises(ValueError, match=reason) as err:
            load_torch_file(tmp_path / name)
        message = str(err.value)
        assert name in message and "weights_only" not in message and "\n" not in message


# ---------------------------------------------------------------------------
# Outputs: checked before any compute, one line per write failure, housekeeping
# ---------------------------------------------------------------------------

def test_an_output_folder_equal_to_or_below_a_file_is_refused_naming_it(tmp_path):
    (tmp_path / "file").write_text("mine")
    for folder in (tmp_path / "file", tmp_path / "file" / "run", tmp_path / "file" / "a" / "b"):
        with pytest.raises(OutputError, match="a file, not a folder") as err:
            check_writable(folder)
        assert str(folder) in str(err.value)
    assert (tmp_path / "file").read_text() == "mine"


def test_a_writable_output_folder_is_created_and_left_without_a_probe_file(tmp_path):
    assert check_writable(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    assert list((tmp_path / "new" / "run").iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused_naming_it(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="ro"):
            check_writable(folder)
    finally:
        folder.chmod(0o755)


def test_a_folder_the_system_refuses_to_write_is_refused_naming_it_even_as_root(tmp_path, monkeypatch):
    def read_only(*args, dir=None, **kwargs):
        raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), os.path.join(dir, "probe"))

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    with pytest.raises(OutputError, match=f"cannot write {tmp_path / 'ro'}: Read-only file system"):
        check_writable(tmp_path / "ro")


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_is_found_by_the_check_and_by_every_writer(tmp_path, monkeypatch):
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f: real_save(obj, "/dev/full"))  # torch: "unexpected pos"
    with pytest.raises(OutputError, match="disk is full") as err:
        save_torch_atomic({"w": torch.ones(1000)}, tmp_path / "ckpt.pt")
    assert str(tmp_path / "ckpt.pt") in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OutputError, match="no space left"):
        check_writable(tmp_path / "out")
    with pytest.raises(OutputError, match="result.json: no space left"):
        write_json_atomic({"a": 1}, tmp_path / "result.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_write_below_a_file_names_the_target(tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(OutputError, match="cannot write .*file/a/b/result.txt"):
        write_text_atomic("x", tmp_path / "file" / "a" / "b" / "result.txt")


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporaries_of_a_killed_writer_are_removed_on_the_next_write_of_that_target(tmp_path):
    orphan = tmp_path / f".result.json.{dead_pid()}-abc123.tmp"
    running = tmp_path / f".result.json.{os.getpid()}-def456.tmp"  # a writer that is still alive
    other = tmp_path / f".other.json.{dead_pid()}-abc123.tmp"  # another target's: not touched now
    mine = tmp_path / ".result.json.notes.tmp"  # not our naming: the user's
    for path in (orphan, running, other, mine):
        path.write_text("partial")
    write_json_atomic({"a": 1}, tmp_path / "result.json")
    assert not orphan.exists() and running.exists() and other.exists() and mine.exists()


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_get_the_users_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = write_text_atomic("x", tmp_path / "a.txt")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_the_file_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: calls.append("replace") or real_replace(a, b))
    with atomic_path(tmp_path / "a.bin") as tmp:
        tmp.write_bytes(b"data")
    assert calls == ["fsync", "replace"]
    assert (tmp_path / "a.bin").read_bytes() == b"data"


def test_a_folder_locked_by_another_process_is_refused_naming_it_and_the_pid(tmp_path, lock_holder):
    holder = lock_holder(tmp_path / "run")
    with pytest.raises(FolderBusyError, match=rf"{tmp_path / 'run'} is being written .*pid {holder.pid}\)"):
        with folder_lock(tmp_path / "run"):
            pass


def test_the_lock_of_a_killed_process_is_taken_over_and_is_reentrant_in_one_process(tmp_path, lock_holder):
    holder = lock_holder(tmp_path)
    holder.kill()
    holder.wait()
    assert str(holder.pid) in (tmp_path / ".zsadlab.lock").read_text()  # stale: the file stays, the lock is gone
    with folder_lock(tmp_path), folder_lock(tmp_path):
        assert (tmp_path / ".zsadlab.lock").read_text().strip() == str(os.getpid())
    assert list(tmp_path.iterdir()) == []  # released: no lock file left behind
