"""Specification of downloads and extraction, against a real HTTP server on 127.0.0.1 only.

The server (http.server in a thread) supports ``Range`` requests; one path
sends half of its body and then drops the connection the first time it is
requested, to test resuming.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import re
import tarfile
import threading
import zipfile

import pytest

from zsadlab.data import AnomalyDataset, DatasetError, fetch_raw, prepare, registry
from zsadlab.data.download import download, extract


def tar_bytes(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    """An uncompressed tar holding ``files`` (name -> content) and symbolic ``links`` (name -> target)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return buffer.getvalue()


GOOD = tar_bytes({"pack/a.txt": b"alpha" * 1000, "pack/sub/b.txt": b"beta"})


class Server:
    """Serves ``files`` (path -> bytes) on 127.0.0.1 with Range support; records the Range headers seen."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.ranges, self.cut_once = files, [], {"/truncated.tar"}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                header = self.headers.get("Range")
                outer.ranges.append(header)
                if header:
                    start = int(re.fullmatch(r"bytes=(\d+)-", header).group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if self.path in outer.cut_once:
                    outer.cut_once.discard(self.path)
                    self.wfile.write(body[start : start + (len(body) - start) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server(monkeypatch):
    """A local server; proxies are disabled so nothing leaves 127.0.0.1."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    srv = Server({"/good.tar": GOOD, "/truncated.tar": GOOD})
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_verifies_sha256_and_leaves_no_part_file(server, tmp_path):
    path = download(server.url("/good.tar"), tmp_path / "good.tar", sha(GOOD), progress=False)
    assert path.read_bytes() == GOOD
    assert not (tmp_path / "good.tar.part").exists()


def test_sha256_mismatch_deletes_the_download_and_says_so(server, tmp_path):
    with pytest.raises(DatasetError, match="sha256"):
        download(server.url("/good.tar"), tmp_path / "good.tar", "0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_keeps_the_part_file_and_resumes_with_range(server, tmp_path):
    with pytest.raises(DatasetError, match="resume"):
        download(server.url("/truncated.tar"), tmp_path / "t.tar", sha(GOOD), progress=False)
    half = (tmp_path / "t.tar.part").stat().st_size
    assert 0 < half < len(GOOD) and not (tmp_path / "t.tar").exists()
    path = download(server.url("/truncated.tar"), tmp_path / "t.tar", sha(GOOD), progress=False)
    assert path.read_bytes() == GOOD
    assert server.ranges[-1] == f"bytes={half}-"


def test_http_error_is_a_dataset_error(server, tmp_path):
    with pytest.raises(DatasetError, match="404"):
        download(server.url("/missing.tar"), tmp_path / "m.tar", progress=False)


def test_extract_unpacks_tar_and_zip(tmp_path):
    (tmp_path / "a.tar").write_bytes(GOOD)
    (tmp_path / "a.zip").write_bytes(zip_bytes({"pack/a.txt": b"z"}))
    assert (extract(tmp_path / "a.tar", tmp_path / "t") / "pack/sub/b.txt").read_bytes() == b"beta"
    assert (extract(tmp_path / "a.zip", tmp_path / "z") / "pack/a.txt").read_bytes() == b"z"


def test_extract_keeps_only_selected_members(tmp_path):
    (tmp_path / "a.tar").write_bytes(GOOD)
    out = extract(tmp_path / "a.tar", tmp_path / "t", keep=lambda name: name.endswith("b.txt"))
    assert [p.name for p in out.rglob("*.txt")] == ["b.txt"]


@pytest.mark.parametrize(
    "archive",
    [
        tar_bytes({"pack/ok.txt": b"1", "../evil.txt": b"x"}),
        tar_bytes({"/tmp/evil.txt": b"x"}),
        tar_bytes({"pack/ok.txt": b"1"}, links={"pack/link": "../../outside"}),
        tar_bytes({"pack/ok.txt": b"1"}, links={"pack/abs": "/etc/passwd"}),
        zip_bytes({"pack/ok.txt": b"1", "../evil.txt": b"x"}),
    ],
    ids=["dotdot", "absolute", "relative-link-out", "absolute-link", "zip-dotdot"],
)
def test_unsafe_archives_are_refused_before_anything_is_written(archive, tmp_path):
    (tmp_path / "bad").write_bytes(archive)
    with pytest.raises(DatasetError, match="unsafe"):
        extract(tmp_path / "bad", tmp_path / "data" / "out")
    assert not (tmp_path / "evil.txt").exists()
    assert list((tmp_path / "data").iterdir()) == []  # no target, no temporary folder


def test_downloaded_traversal_archive_passes_sha256_but_is_not_extracted(server, tmp_path):
    evil = tar_bytes({"../../evil.txt": b"x"})
    server.files["/evil.tar"] = evil
    archive = download(server.url("/evil.tar"), tmp_path / "evil.tar", sha(evil), progress=False)
    with pytest.raises(DatasetError, match="outside the target folder"):
        extract(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar"]


def test_truncated_archive_leaves_no_half_extracted_folder(tmp_path):
    (tmp_path / "cut.tar").write_bytes(GOOD[: len(GOOD) // 2])
    with pytest.raises(DatasetError, match="truncated"):
        extract(tmp_path / "cut.tar", tmp_path / "data" / "out")
    assert list((tmp_path / "data").iterdir()) == []


def test_fetch_raw_downloads_extracts_and_feeds_prepare(server, tmp_path, monkeypatch, write_image, write_mask):
    raw = tmp_path / "build/BTech_Dataset_transformed"
    write_image(raw / "01/train/ok/0000.bmp")
    write_image(raw / "01/test/ok/0000.bmp")
    write_image(raw / "01/test/ko/0000.bmp")
    write_mask(raw / "01/ground_truth/ko/0000.png")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in raw.rglob("*"):
            zf.write(path, path.relative_to(raw.parent).as_posix())
    server.files["/btad.zip"] = buffer.getvalue()
    local = dataclasses.replace(registry.entry("btad"), url=server.url("/btad.zip"), sha256=sha(buffer.getvalue()))
    monkeypatch.setitem(registry.REGISTRY, "btad", local)
    fetched = fetch_raw("btad", tmp_path / "downloads", progress=False)
    assert fetched == tmp_path / "downloads/btad/BTech_Dataset_transformed"  # the archive's wrapper folder
    root = prepare("btad", raw=fetched, out=tmp_path / "btad")
    assert AnomalyDataset(root, "test", require_masks=True).labels.tolist() == [1, 0]


def test_fetch_raw_without_direct_url_gives_manual_steps(tmp_path):
    with pytest.raises(DatasetError, match="no direct download URL.*kaggle"):
        fetch_raw("brainmri", tmp_path)
