"""The golden fixtures in tests/fixtures are byte-identical to the ones the reference code produced.

Each folder's FIXTURES.md lists ``<sha256>  <file>.npz`` for its files (InCTRL's lists none)."""
import hashlib
import re
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CHECKSUMMED = ("anomalyclip", "musc", "vand", "winclip")


def listed_checksums(folder: str) -> dict[str, str]:
    """sha256 per file as listed in the folder's FIXTURES.md (``<hex>  <name>`` lines)."""
    text = (FIXTURES / folder / "FIXTURES.md").read_text()
    return {name: digest for digest, name in re.findall(r"^([0-9a-f]{64})\s+(\S+\.npz)$", text, flags=re.M)}


@pytest.mark.parametrize("folder,name,digest", [(folder, name, digest) for folder in CHECKSUMMED
                                                 for name, digest in sorted(listed_checksums(folder).items())])
def test_fixture_is_unchanged(folder, name, digest):
    assert hashlib.sha256((FIXTURES / folder / name).read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("folder", CHECKSUMMED)
def test_every_fixture_file_has_a_checksum(folder):
    assert set(listed_checksums(folder)) == {p.name for p in (FIXTURES / folder).glob("*.npz")}
