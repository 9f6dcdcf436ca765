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
    # WHO/ICC count monoblasts and promonocytes as blast equivalents (taxonomy 2026.12-1).
    assert TAX.blast_codes == {"myeloblast", "lymphoblast", "blast", "abnormal_promyelocyte", "megakaryoblast",
                               "monoblast", "promonocyte"}


def test_new_classes_are_appended_so_the_old_output_order_holds():
    assert TAX.codes[:3] == ("myeloblast", "lymphoblast", "blast")
    assert TAX.codes[-4:] == ("promonocyte", "monoblast", "reactive_lymphocyte", "smudge")
    assert not TAX.by_code("smudge").countable


@pytest.mark.parametrize(("dataset", "folder", "filename", "expected"), [
    # A Matek blast is a blast of some lineage; a not-identifiable cell may be a smudge.
    ("matek", "BLA", "BLA_00001.jpg", ("myeloblast", "lymphoblast", "promonocyte", "monoblast", "megakaryoblast")),
    ("matek", "NIF", "NIF_00001.jpg", ("uncountable", "smudge")),
    ("aria", "benign", "WBC-Benign-001.jpg", ("lymphocyte", "reactive_lymphocyte", "segmented_neutrophil",
                                              "band_neutrophil", "monocyte", "eosinophil", "basophil",
                                              "erythroblast")),
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
    assert TAX.dataset_label_of("matek", "myeloblast") == "BLA"  # any lineage's blast is right for BLA
    assert TAX.dataset_label_of("matek", "smudge") == "NIF"


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
