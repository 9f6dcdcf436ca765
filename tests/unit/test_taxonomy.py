"""The taxonomy data file and the dataset label maps."""

from __future__ import annotations

import json

import pytest

from marrowdx.domain.taxonomy import default_taxonomy, load_taxonomy

TAX = default_taxonomy()


def test_carries_the_classes_the_diagnosis_needs():
    for code in ("myeloblast", "lymphoblast", "blast", "promyelocyte", "abnormal_promyelocyte", "myelocyte",
                 "metamyelocyte", "band_neutrophil", "segmented_neutrophil", "eosinophil", "basophil", "monocyte",
                 "lymphocyte", "plasma_cell", "proerythroblast", "erythroblast", "megakaryoblast",
                 "promegakaryocyte", "megakaryocyte", "lymphoma_cell", "neuroblastoma_cell", "other"):
        assert TAX.by_code(code).countable, code
    assert len(TAX.countable_codes) >= 20
    assert set(TAX.excluded_categories) >= {"smudge", "uncountable", "artefact", "red_cell", "platelet"}


def test_blast_equivalents():
    assert TAX.blast_codes == {"myeloblast", "lymphoblast", "blast", "abnormal_promyelocyte", "megakaryoblast"}


@pytest.mark.parametrize(("dataset", "folder", "filename", "expected"), [
    ("matek", "BLA", "BLA_00001.jpg", ("blast",)),
    ("matek", "NIF", "NIF_00001.jpg", ("uncountable",)),
    ("pbc", "ig", "MY_1234.jpg", ("myelocyte",)),
    ("pbc", "ig", "PMY_1.jpg", ("promyelocyte",)),
    ("pbc", "ig", "IG_77.jpg", ("promyelocyte", "myelocyte", "metamyelocyte")),  # coarse label
    ("pbc", "neutrophil", "BNE_5.jpg", ("band_neutrophil",)),
    ("pbc", "neutrophil", "NEUTROPHIL_5.jpg", ("band_neutrophil", "segmented_neutrophil")),
])
def test_dataset_labels_map_to_taxonomy(dataset, folder, filename, expected):
    assert TAX.dataset_targets(dataset, folder, filename) == expected


def test_predictions_are_scored_at_the_dataset_granularity():
    assert TAX.dataset_label_of("pbc", "myelocyte") == "ig"
    assert TAX.dataset_label_of("matek", "segmented_neutrophil") == "NGS"
    assert TAX.dataset_label_of("matek", "basophil") == "BAS"
    assert TAX.dataset_label_of("pbc", "lymphoblast") == "other"


def test_unknown_folder_is_refused():
    with pytest.raises(KeyError):
        TAX.dataset_targets("matek", "XYZ")


def test_duplicate_codes_are_refused(tmp_path):
    from importlib import resources

    raw = json.loads(resources.files("marrowdx.data").joinpath("taxonomy.json").read_text())
    raw["classes"].append(dict(raw["classes"][0]))
    path = tmp_path / "t.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="duplicate"):
        load_taxonomy(path)
