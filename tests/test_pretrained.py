"""Official checkpoints: pulled from a 127.0.0.1 server, verified by git blob SHA-1, nothing kept on a mismatch."""
from __future__ import annotations

import dataclasses
import functools
import http.server
import shutil
import socket
import subprocess
import threading
import time

import pytest
import torch

from zsadlab import pretrained
from zsadlab.backbone import WeightsUnavailableError
from zsadlab.pretrained import PRETRAINED, git_blob_sha1, pull

STAND_IN = torch.arange(1000, dtype=torch.float32).numpy().tobytes()  # the real bytes are not available here


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving the files of a folder; yields (folder, base URL)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def serve_as(monkeypatch, served, base, name: str, content: bytes, expected_sha1: str) -> None:
    """Point registry entry ``name`` at ``content`` on the local server, expecting ``expected_sha1``."""
    (served / f"{name}.pth").write_bytes(content)
    monkeypatch.setitem(PRETRAINED, name, dataclasses.replace(PRETRAINED[name], url=f"{base}/{name}.pth",
                                                              git_sha1=expected_sha1))


def test_the_blob_hash_is_what_git_hash_object_prints(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    for content in (b"", b"hello\n", STAND_IN):
        (tmp_path / "f").write_bytes(content)
        printed = subprocess.run(["git", "hash-object", str(tmp_path / "f")], capture_output=True, text=True,
                                 check=True).stdout.strip()
        assert git_blob_sha1(tmp_path / "f") == printed
    (tmp_path / "f").write_bytes(b"hello\n")
    assert git_blob_sha1(tmp_path / "f") == "ce013625030ba8dba906f756967f9e9ca394464a"  # git's documented example


def test_the_registry_pins_the_official_files_with_their_inverted_folder_names():
    commit = "45ed4dd35c05797d854294b5e8d585c545920089"
    base = f"https://raw.githubusercontent.com/zqhang/AnomalyCLIP/{commit}/checkpoints/"
    assert PRETRAINED["anomalyclip-mvtec"].url == base + "9_12_4_multiscale_visa/epoch_15.pth"
    assert PRETRAINED["anomalyclip-mvtec"].git_sha1 == "72adc786e031b49ea288ba5f815f0d38cf158708"
    assert PRETRAINED["anomalyclip-visa"].url == base + "9_12_4_multiscale/epoch_15.pth"
    assert PRETRAINED["anomalyclip-visa"].git_sha1 == "c90f1d9d92d158b436a8fc193f984d4cec8b1fc8"
    assert PRETRAINED["inctrl"].url is None


def test_both_anomalyclip_checkpoints_are_pulled_verified_into_the_cache_folder(tmp_path, server, monkeypatch):
    served, base = server
    monkeypatch.setenv("ZSADLAB_HOME", str(tmp_path / "home"))
    for name, fetch in (("anomalyclip-mvtec", pull), ("anomalyclip-visa", pretrained.path)):  # path: load-or-pull
        (served / "probe").write_bytes(STAND_IN + name.encode())
        serve_as(monkeypatch, served, base, name, STAND_IN + name.encode(), git_blob_sha1(served / "probe"))
        assert not pretrained.available(name)
        path = fetch(name)
        assert path == tmp_path / "home" / name / "epoch_15.pth"
        assert path.read_bytes() == STAND_IN + name.encode()
        assert pretrained.available(name) and pretrained.path(name) == path
        assert sorted(p.name for p in path.parent.iterdir()) == ["epoch_15.pth"]


def test_a_wrong_download_is_refused_and_leaves_nothing(tmp_path, server, monkeypatch):
    served, base = server
    serve_as(monkeypatch, served, base, "anomalyclip-mvtec", b"tampered", "72adc786e031b49ea288ba5f815f0d38cf158708")
    with pytest.raises(ValueError, match="git blob SHA-1 is .* expected 72adc786") as err:
        pull("anomalyclip-mvtec", home=tmp_path / "home")
    assert "Nothing was kept" in str(err.value)
    assert not pretrained.available("anomalyclip-mvtec", tmp_path / "home")
    assert list((tmp_path / "home" / "anomalyclip-mvtec").iterdir()) == []


def test_a_file_downloaded_by_hand_is_registered_with_the_same_verification(tmp_path, monkeypatch):
    good, bad = tmp_path / "good.pth", tmp_path / "bad.pth"
    good.write_bytes(STAND_IN)
    bad.write_bytes(STAND_IN[:-1])
    monkeypatch.setitem(PRETRAINED, "anomalyclip-visa",
                        dataclasses.replace(PRETRAINED["anomalyclip-visa"], git_sha1=git_blob_sha1(good)))
    with pytest.raises(ValueError, match="bad.pth is not the official anomalyclip-visa"):
        pull("anomalyclip-visa", from_file=bad, home=tmp_path / "home")
    assert list((tmp_path / "home" / "anomalyclip-visa").iterdir()) == []
    path = pull("anomalyclip-visa", from_file=good, home=tmp_path / "home")
    assert path.read_bytes() == STAND_IN and good.exists()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_the_pull_fails_within_seconds_with_the_url_and_the_manual_fix(tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}/epoch_15.pth"
    monkeypatch.setitem(PRETRAINED, "anomalyclip-mvtec", dataclasses.replace(PRETRAINED["anomalyclip-mvtec"], url=url))
    started = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as err:
        pull("anomalyclip-mvtec", home=tmp_path / "home")
    assert time.monotonic() - started < 5
    assert url in str(err.value) and "zsadlab pull anomalyclip-mvtec --from FILE" in str(err.value)


def test_inctrl_weights_are_accepted_from_a_file_only_and_checked_by_their_layout(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="drive.google.com.*--from FILE"):
        pull("inctrl", home=tmp_path / "home")
    heads = {"adapter.fc.weight": torch.ones(2), "diff_head.fc.weight": torch.ones(2),
             "diff_head_ref.fc.weight": torch.ones(2)}
    torch.save({"model_state": heads}, tmp_path / "inctrl.pth")
    torch.save({"prompt_learner": {}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth is not an InCTRL checkpoint"):
        pull("inctrl", from_file=tmp_path / "other.pth", home=tmp_path / "home")
    path = pull("inctrl", from_file=tmp_path / "inctrl.pth", home=tmp_path / "home")
    assert set(torch.load(path, weights_only=True)["model_state"]) == set(heads)


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="anomalyclip-mvtec"):
        pull("anomalyclip-mvtc")


def test_a_truncated_file_given_with_from_is_named_not_its_temporary_copy(tmp_path):
    heads = {f"{h}.fc.weight": torch.ones(64) for h in ("adapter", "diff_head", "diff_head_ref")}
    torch.save(heads, tmp_path / "full.pth")
    (tmp_path / "inctrl.pth").write_bytes((tmp_path / "full.pth").read_bytes()[:300])
    with pytest.raises(ValueError) as err:
        pull("inctrl", from_file=tmp_path / "inctrl.pth", home=tmp_path / "home")
    assert str(tmp_path / "inctrl.pth") in str(err.value) and ".tmp" not in str(err.value)
    assert "truncated" in str(err.value) and not list((tmp_path / "home").rglob("*.pth"))


def test_a_zsadlab_home_that_is_a_file_names_the_variable(tmp_path, monkeypatch, capsys):
    from zsadlab import cli

    (tmp_path / "home").write_text("not a folder")
    monkeypatch.setenv("ZSADLAB_HOME", str(tmp_path / "home"))
    torch.save({"prompt_learner": {}}, tmp_path / "x.pth")
    assert cli.main(["pull", "anomalyclip-mvtec", "--from", str(tmp_path / "x.pth")]) == 2
    err = capsys.readouterr().err
    assert "$ZSADLAB_HOME=" in err and "is a file" in err and "Free some space" not in err


def test_the_registry_pins_the_official_vand_checkpoints_committed_to_vand_april_gan():
    base = "https://raw.githubusercontent.com/ByChelsea/VAND-APRIL-GAN/f13b8a634e04f9fde8fa03db125b25af5695d8e1/"
    assert PRETRAINED["vand-mvtec"].url == base + "exps/pretrained/mvtec_pretrained.pth"
    assert PRETRAINED["vand-mvtec"].git_sha1 == "a057cec6c2ba5996baa0160a51e155908156813f"
    assert PRETRAINED["vand-visa"].url == base + "exps/pretrained/visa_pretrained.pth"
    assert PRETRAINED["vand-visa"].git_sha1 == "86d6848c543f8393663d35c0333498ffb5ce9b68"
    assert {PRETRAINED[n].method for n in ("vand-mvtec", "vand-visa")} == {"vand"}


def test_both_vand_checkpoints_are_pulled_verified_by_git_blob_sha1_and_a_wrong_file_is_refused(
        tmp_path, server, monkeypatch):
    served, base = server
    monkeypatch.setenv("ZSADLAB_HOME", str(tmp_path / "home"))
    for name, filename in (("vand-mvtec", "mvtec_pretrained.pth"), ("vand-visa", "visa_pretrained.pth")):
        content = STAND_IN + name.encode()
        (served / "probe").write_bytes(content)
        serve_as(monkeypatch, served, base, name, content, git_blob_sha1(served / "probe"))
        path = pull(name)
        assert path == tmp_path / "home" / name / filename and path.read_bytes() == content
        assert pretrained.path(name) == path
    official = PRETRAINED["vand-visa"].git_sha1
    monkeypatch.undo()  # the real pinned hashes again
    monkeypatch.setenv("ZSADLAB_HOME", str(tmp_path / "home2"))
    serve_as(monkeypatch, served, base, "vand-visa", b"not the official file", official)
    with pytest.raises(ValueError, match=f"not the official vand-visa checkpoint: its git blob SHA-1 is .* expected {official}"):
        pull("vand-visa")
    assert list((tmp_path / "home2" / "vand-visa").iterdir()) == []
    (tmp_path / "by_hand.pth").write_bytes(b"also not it")  # --from gets the same verification
    with pytest.raises(ValueError, match="by_hand.pth is not the official vand-visa"):
        pull("vand-visa", from_file=tmp_path / "by_hand.pth")
    assert not pretrained.available("vand-visa")


def test_offline_a_vand_pull_fails_within_seconds_naming_the_url_and_the_from_fix(tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}/mvtec_pretrained.pth"
    monkeypatch.setitem(PRETRAINED, "vand-mvtec", dataclasses.replace(PRETRAINED["vand-mvtec"], url=url))
    started = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as err:
        pull("vand-mvtec", home=tmp_path / "home")
    assert time.monotonic() - started < 5
    assert url in str(err.value) and "zsadlab pull vand-mvtec --from FILE" in str(err.value)


def test_each_method_finds_the_official_checkpoint_of_its_training_set():
    from zsadlab.pretrained import official_for

    assert official_for("vand", "mvtec") == official_for("vand_fewshot", "mvtec") == "vand-mvtec"
    assert official_for("vand", "visa") == "vand-visa"
    assert official_for("anomalyclip", "mvtec") == "anomalyclip-mvtec" and official_for("anomalyclip", "visa") == "anomalyclip-visa"
    assert official_for("vand", "synthetic_industrial") is None and official_for("coop", "mvtec") is None
