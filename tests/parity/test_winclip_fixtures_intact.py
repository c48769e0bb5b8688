"""The WinCLIP golden fixtures in tests/fixtures/winclip are byte-identical to the ones anomalib produced."""
import hashlib
import re
from pathlib import Path

import pytest

FOLDER = Path(__file__).resolve().parents[1] / "fixtures" / "winclip"


def listed_checksums() -> dict[str, str]:
    """sha256 per file as listed in FIXTURES.md §12 (``<hex>  <name>`` lines)."""
    text = (FOLDER / "FIXTURES.md").read_text()
    return {name: digest for digest, name in re.findall(r"^([0-9a-f]{64})\s+(\S+\.npz)$", text, flags=re.M)}


@pytest.mark.parametrize("name,digest", sorted(listed_checksums().items()))
def test_winclip_fixture_is_unchanged(name, digest):
    assert hashlib.sha256((FOLDER / name).read_bytes()).hexdigest() == digest


def test_every_winclip_fixture_file_has_a_checksum():
    assert set(listed_checksums()) == {p.name for p in FOLDER.glob("*.npz")}
    assert len(listed_checksums()) == 7
