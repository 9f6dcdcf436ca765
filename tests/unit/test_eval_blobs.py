"""`marrowdx eval blobs`: outlined cells matched to the service's cells, one blob at a time."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from marrowdx.evaluation.blobs import evaluate_blobs, label_blobs, match_blobs


def cell(x0, y0, x1, y1, category="nucleated", countable=True, cell_class="plasma_cell"):
    return SimpleNamespace(box=SimpleNamespace(x_min=x0, y_min=y0, x_max=x1, y_max=y1),
                           detector_category=category, countable=countable, cell_class=cell_class)


def test_blobs_are_4_connected_components():
    mask = np.zeros((10, 10), bool)
    mask[1:3, 1:3] = True
    mask[3, 3] = True  # touches the first only diagonally: a blob of its own
    mask[6:9, 6:9] = True
    labels = label_blobs(mask)
    assert labels.max() == 3
    assert len(np.unique(labels[1:3, 1:3])) == 1


def test_each_blob_keeps_the_best_outcome_and_other_cells_are_ignored():
    mask = np.zeros((100, 100), bool)
    mask[10:30, 10:30] = True  # blob 1
    mask[50:70, 50:70] = True  # blob 2
    mask[80:95, 5:20] = True  # blob 3: never found
    labels = label_blobs(mask)
    cells = [
        cell(10, 10, 30, 30, countable=False),  # blob 1 found but excluded...
        cell(12, 12, 28, 28),  # ...and also found, counted and called: the best wins
        cell(50, 50, 70, 70, cell_class="lymphocyte"),  # blob 2: counted, called something else
        cell(30, 80, 50, 99),  # centred outside every blob: not a false positive, just unlabelled
        cell(50, 50, 70, 70, category="red_cell"),  # not a nucleated detection
    ]
    outcome = match_blobs(labels, cells, "plasma_cell")
    assert outcome == {int(labels[20, 20]): "called", int(labels[60, 60]): "counted"}


def test_no_image_with_a_mask_is_a_clear_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(ValueError, match="no image"):
        evaluate_blobs(client=None, images=tmp_path / "images", masks=tmp_path / "masks", cell_class="plasma_cell")


def test_the_cli_refuses_a_folder_without_masked_images(tmp_path, capsys):
    from marrowdx import cli

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    code = cli.main(["eval", "blobs", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"),
                     "--server", "127.0.0.1:1"])
    assert code == 1
    assert "no image" in capsys.readouterr().err
