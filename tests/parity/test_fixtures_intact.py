"""The golden fixtures in tests/fixtures are byte-identical to the ones the official code produced."""
import hashlib
import re
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def listed_checksums(folder: str) -> dict[str, str]:
    """sha256 per file as listed in the folder's FIXTURES.md (``<hex>  <name>`` lines)."""
    text = (FIXTURES / folder / "FIXTURES.md").read_text()
    return {name: digest for digest, name in re.findall(r"^([0-9a-f]{64})\s+(\S+\.npz)$", text, flags=re.M)}


@pytest.mark.parametrize("name,digest", sorted(listed_checksums("anomalyclip").items()))
def test_anomalyclip_fixture_is_unchanged(name, digest):
    assert hashlib.sha256((FIXTURES / "anomalyclip" / name).read_bytes()).hexdigest() == digest


def test_every_anomalyclip_fixture_file_has_a_checksum():
    assert set(listed_checksums("anomalyclip")) == {p.name for p in (FIXTURES / "anomalyclip").glob("*.npz")}
