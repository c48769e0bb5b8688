"""Specification of the dataset registry."""
from __future__ import annotations

import dataclasses

import pytest

from zsadlab.data import DatasetError, registry

SEED_DATASETS = {
    "mvtec", "visa", "mpdd", "btad", "sdd", "dagm", "dtd_synthetic",  # industrial
    "isic", "clinicdb", "colondb", "kvasir", "endo", "tn3k", "headct", "brainmri", "br35h", "covid19",  # medical
}
INCTRL_PROTOCOL = {"sdd_inctrl", "headct_inctrl", "brainmri_inctrl"}  # where InCTRL's protocol differs
EXTRA = {"tn3k_trainval", "elpv", "magnetic_tile", "mpdd_metal_plate", "synthetic_industrial", "synthetic_ultrasound"}


def test_names_lists_the_17_seed_datasets_their_inctrl_variants_and_the_extras():
    assert set(registry.names()) == SEED_DATASETS | INCTRL_PROTOCOL | EXTRA
    assert len(registry.names()) == len(set(registry.names()))


@pytest.mark.parametrize("name", registry.names())
def test_every_entry_documents_domain_masks_source_license_layout_and_builder(name):
    item = registry.entry(name)
    assert dataclasses.is_dataclass(item) and item.name == name
    assert item.domain in {"industrial", "medical"} and isinstance(item.masks, bool)
    assert item.source and item.license and item.raw_layout
    assert (item.convert is None) != (item.generate is None)
    assert item.url is None or (item.sha256 and len(item.sha256) == 64 and item.archive)
    assert item.synthetic or item.url or item.manual_steps


def test_entries_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        registry.entry("mvtec").masks = False


def test_image_level_sets_are_those_without_masks():
    assert {n for n in registry.names() if not registry.entry(n).masks} == {
        "headct", "headct_inctrl", "brainmri", "brainmri_inctrl", "br35h", "covid19", "elpv"
    }


@pytest.mark.parametrize("name", sorted(SEED_DATASETS | INCTRL_PROTOCOL | {"elpv", "tn3k_trainval"}))
def test_every_official_dataset_names_the_official_script_it_reproduces(name):
    assert registry.entry(name).protocol.startswith(("AnomalyCLIP generate_dataset_json/", "InCTRL datasets/"))


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(DatasetError, match="known datasets: mvtec"):
        registry.entry("mvtc")


def test_table_has_a_header_and_one_row_per_dataset():
    lines = registry.table().splitlines()
    assert lines[0].split()[:3] == ["name", "domain", "masks"]
    assert [line.split()[0] for line in lines[1:]] == registry.names()
