"""Training runs a few steps in CI; export writes a repository whose ONNX and
TorchScript outputs equal the eager model's."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from PIL import Image
from tritonclient.grpc import model_config_pb2

from marrowdx.domain.taxonomy import default_taxonomy
from training import compare_classifiers, crop_pack, crossfit, export, learning_curve, train_classifier, train_detector
from training.data import folds_of
from training.ema import WeightAverage
from training.models import CellClassifier, CellDetector, ClassifierEnsemble, DihedralAverage, load_classifier

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
N_CLASSES = len(default_taxonomy().codes)


def test_classifier_smoke_trains_and_logs_each_epoch(shared_data, tmp_path):
    args = train_classifier.parse_args(["--data", str(shared_data), "--out", str(tmp_path), "--max-steps", "2",
                                        "--limit", "8", "--batch", "8", "--crop-size", "64", "--ema", "0.9", "--quiet",
                                        "--dataset-weights", "matek=2", "--mixup", "0.2", "--label-smoothing", "0.1"])
    summary = train_classifier.train(args)
    assert summary["crop_size"] == 64 and summary["ema"] == 0.9
    assert summary["mixup"] == 0.2 and summary["dataset_weights"] == {"matek": 2.0}
    assert summary["label_smoothing"] == 0.1 and summary["kept"] == "best" and summary["held_out"] == "val"
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == summary["epochs"] >= 1
    assert "val_matek_accuracy" in json.loads(lines[0])
    assert (tmp_path / "best.pt").exists() and summary["temperature"] > 0
    # A Matek blast teaches "some lineage's blast": no single lineage is trained by it alone.
    assert "eosinophil" in summary["trained_classes"] and "lymphoblast" not in summary["trained_classes"]


def test_a_pack_carries_the_crops_and_their_labels(tmp_path):
    crops = _sample_crops(5, side=75)
    items = [train_classifier.CropItem(path=Path(f"/data/matek_bm/BLA/BLA_{i}.jpg"), dataset="matek", folder="BLA",
                                       targets=("blast",), split="train" if i < 3 else "val") for i in range(5)]
    crop_pack.write_pack(tmp_path / "pack.npz", items, crops)
    read_items, read_crops, size = crop_pack.read_pack(tmp_path / "pack.npz")
    assert size == 75 and read_crops.shape == crops.shape
    assert [(i.path.name, i.folder, i.targets, i.split) for i in read_items] == \
        [(i.path.name, i.folder, i.targets, i.split) for i in items]
    # Lossy, but no further from the source than its own JPEG compression.
    assert np.abs(read_crops.astype(float) - crops).mean() < 4.0
    with pytest.raises(ValueError, match="test split"):
        crop_pack.write_pack(tmp_path / "bad.npz", [dataclasses.replace(items[0], split="test")], crops[:1])


def test_training_from_a_pack_stops_early_when_told_and_still_saves(shared_data, tmp_path):
    crop_pack.main(["--data", str(shared_data), "--crop-size", "64", "--limit", "16", "--out", str(tmp_path / "p.npz")])
    args = train_classifier.parse_args(["--pack", str(tmp_path / "p.npz"), "--out", str(tmp_path / "run"),
                                        "--crop-size", "64", "--batch", "4", "--epochs", "3", "--stop-after", "1e-9",
                                        "--width", "16", "--weight-decay", "0.05", "--quiet", "--train-fraction", "pbc=0.5"])
    summary = train_classifier.train(args)
    assert summary["epochs"] == 1 and summary["epochs_planned"] == 3
    # 16 train crops a dataset: all of Matek's, half of each PBC class's (rounded up).
    pbc_folders = Counter(i.folder for i in crop_pack.read_pack(tmp_path / "p.npz")[0]
                          if i.dataset == "pbc" and i.split == "train")
    assert summary["train_fractions"] == {"pbc": 0.5}
    assert summary["train_crops"] == 16 + sum(math.ceil(n / 2) for n in pbc_folders.values()) < 32
    assert summary["width"] == 16 and summary["weight_decay"] == 0.05
    assert load_classifier(torch.load(tmp_path / "run" / "best.pt"), N_CLASSES).width == 16
    with pytest.raises(ValueError, match="needs 93 or more"):
        train_classifier.pack_splits(tmp_path / "p.npz", None, ("matek",), crop_size=80)


def test_a_pack_of_larger_crops_serves_a_smaller_crop_size_as_the_source_would(shared_data, tmp_path):
    crop_pack.main(["--data", str(shared_data), "--crop-size", "64", "--limit", "6", "--out", str(tmp_path / "p.npz")])
    splits = train_classifier.pack_splits(tmp_path / "p.npz", None, ("matek", "pbc"), crop_size=48)
    items, crops = splits["val"]
    _, from_source = train_classifier.load_split(shared_data, default_taxonomy(), "val", 6, crop_size=48)
    assert crops.shape == from_source.shape == (len(items), 56, 56, 3)
    # Scaled from the (lossy) pack, not from the source: close, not equal (a mismatch is ~50).
    assert (crops.float() - from_source.float()).abs().mean() < 4.0


def test_load_classifier_builds_the_width_the_weights_were_trained_at():
    torch.manual_seed(3)
    narrow = CellClassifier(N_CLASSES, width=20).eval()
    loaded = load_classifier(narrow.state_dict(), N_CLASSES).eval()
    crops = torch.from_numpy(_sample_crops(2, side=64))
    assert loaded.width == 20
    with torch.no_grad():
        torch.testing.assert_close(loaded(crops), narrow(crops))


def test_weight_average_moves_toward_the_model_by_one_minus_decay():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.75)
    start = {k: v.clone() for k, v in average.model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.randn(8, 3))  # moves BatchNorm's statistics and step counter
    average.update(model)
    now = model.state_dict()
    for name, value in average.model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.75 * start[name] + 0.25 * now[name])
        else:
            assert torch.equal(value, now[name])  # the step counter is copied, not averaged
    assert not any(p.requires_grad for p in average.model.parameters())
    with pytest.raises(ValueError):
        WeightAverage(model, decay=1.0)


def test_mixup_loss_blends_the_two_label_sets_by_lam():
    logits = torch.randn(4, 5)
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[torch.arange(4), torch.tensor([0, 1, 2, 3])] = True
    mask[0, 4] = True  # a coarse (set-valued) label
    partner = torch.tensor([2, 3, 0, 1])
    own, other = train_classifier.set_nll(logits, mask), train_classifier.set_nll(logits, mask[partner])
    assert not torch.isclose(own, other)
    torch.testing.assert_close(train_classifier.mixup_nll(logits, mask, partner, 1.0), own)
    torch.testing.assert_close(train_classifier.mixup_nll(logits, mask, partner, 0.0), other)
    torch.testing.assert_close(train_classifier.mixup_nll(logits, mask, partner, 0.3), 0.3 * own + 0.7 * other)


def test_label_smoothing_moves_e_of_the_target_onto_every_output():
    logits = torch.randn(3, 4)
    mask = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    log_p = torch.log_softmax(logits, dim=1)
    on_set = -torch.logsumexp(log_p.masked_fill(~mask, float("-inf")), dim=1)
    torch.testing.assert_close(train_classifier.set_nll(logits, mask), on_set.mean())
    expected = (0.9 * on_set - 0.1 * log_p.mean(dim=1)).mean()
    torch.testing.assert_close(train_classifier.set_nll(logits, mask, smoothing=0.1), expected)
    # A confident, right answer costs more when smoothed: the logits cannot grow for free.
    sure = torch.tensor([[20.0, 0.0, 0.0, 0.0]])
    assert train_classifier.set_nll(sure, mask[:1], 0.1) > train_classifier.set_nll(sure, mask[:1]) + 1.0


def test_class_bias_recovers_a_systematic_shift_and_leaves_untrained_classes_alone():
    torch.manual_seed(0)
    true_log_p = torch.log_softmax(torch.randn(20000, 4) * 2, dim=1)
    labels = torch.distributions.Categorical(logits=true_log_p[:, :3]).sample()  # class 3: never a target
    mask = torch.nn.functional.one_hot(labels, 4).bool()
    shift = torch.tensor([0.6, -0.2, -0.4, 0.0])
    bias = train_classifier.fit_class_bias(true_log_p - shift, mask)  # a model that under-rates class 0
    assert torch.allclose(bias, shift, atol=0.08) and bias[3] == 0 and abs(float(bias[:3].sum())) < 1e-5


def test_the_8_view_average_applies_the_class_bias_and_is_unchanged_without_one():
    torch.manual_seed(0)
    model = DihedralAverage(CellClassifier(N_CLASSES, width=8).eval()).eval()
    crops = torch.from_numpy(_sample_crops(3, 48))
    with torch.no_grad():
        plain = model(crops)
        assert torch.allclose(plain, torch.stack(model.view_logits(crops).softmax(2).unbind()).mean(0), atol=1e-6)
        model.class_bias[5] = 1.0
        shifted = model(crops)
    expected = plain.clone()
    expected[:, 5] *= math.e
    assert torch.allclose(shifted, expected / expected.sum(1, keepdim=True), atol=1e-6)


def test_dataset_weights_favour_one_dataset_and_refuse_nonsense():
    items = [train_classifier.CropItem(path=Path(f"{d}.jpg"), dataset=d, folder="x", targets=("blast",), split="train")
             for d in ("matek", "pbc", "matek")]
    weights = train_classifier.sampling_weights(items, train_classifier.parse_dataset_weights("matek=2"))
    assert weights.tolist() == [2.0, 1.0, 2.0]
    assert train_classifier.parse_dataset_weights("") == {}
    with pytest.raises(ValueError):
        train_classifier.parse_dataset_weights("matek=0")
    with pytest.raises(ValueError):
        train_classifier.parse_dataset_weights("raabin=2")
    with pytest.raises(ValueError):
        train_classifier.parse_dataset_weights("matek")


def test_a_train_fraction_keeps_that_share_of_each_class_and_smaller_shares_nest():
    items = [train_classifier.CropItem(path=Path(f"{d}{f}{i}.jpg"), dataset=d, folder=f, targets=("blast",),
                                       split="train")
             for d, f, n in (("matek", "BLA", 10), ("matek", "EOS", 4), ("pbc", "basophil", 6)) for i in range(n)]
    half = train_classifier.train_subset(items, train_classifier.parse_train_fractions("matek=0.5"))
    quarter = train_classifier.train_subset(items, {"matek": 0.25})
    folders = [items[r].folder for r in half]
    assert (folders.count("BLA"), folders.count("EOS"), folders.count("basophil")) == (5, 2, 6)
    assert set(quarter) < set(half)
    assert train_classifier.train_subset(items, {}) == list(range(len(items)))
    with pytest.raises(ValueError, match="at most 1"):
        train_classifier.parse_train_fractions("matek=1.5")


def _items(counts, split="train"):
    return [train_classifier.CropItem(path=Path(f"/d/{f}/{f}_{i}.jpg"), dataset=d, folder=f, targets=("blast",), split=split)
            for d, f, n in counts for i in range(n)]


def test_folds_share_out_each_class_and_do_not_depend_on_listing_order():
    items = _items((("matek", "BLA", 10), ("matek", "EOS", 4), ("pbc", "basophil", 7)))
    folds = folds_of(items, 3)
    per_class = Counter((items[r].folder, f) for r, f in enumerate(folds))
    assert [per_class["BLA", f] for f in range(3)] in ([4, 3, 3], [3, 4, 3], [3, 3, 4])
    assert sorted(per_class["basophil", f] for f in range(3)) == [2, 2, 3]
    assert sorted(per_class["EOS", f] for f in range(3)) == [1, 1, 2]
    shuffled = [items[r] for r in np.random.default_rng(1).permutation(len(items))]
    assert dict(zip(shuffled, folds_of(shuffled, 3), strict=True)) == dict(zip(items, folds, strict=True))
    with pytest.raises(ValueError, match="at least 2"):
        folds_of(items, 1)


def test_held_out_pools_train_and_val_and_holds_out_one_fold():
    train_items, val_items = _items((("matek", "BLA", 6),)), _items((("matek", "BLA", 3),), split="val")
    val_items = [dataclasses.replace(i, path=i.path.with_name("v" + i.path.name)) for i in val_items]
    splits = {"train": (train_items, torch.arange(6)), "val": (val_items, torch.arange(6, 9))}
    (items, x), (held, held_x) = train_classifier.held_out(splits, ("train",))
    assert items == train_items and held == val_items and held_x.tolist() == [6, 7, 8]
    (items, x), (held, held_x) = train_classifier.held_out(splits, ("train", "val"))
    assert items == train_items + val_items and x.tolist() == list(range(9)) and held == []
    (items, x), (held, held_x) = train_classifier.held_out(splits, ("train", "val"), folds=3, fold=1)
    assert len(held) == 3 and not set(items) & set(held) and set(items) | set(held) == set(train_items + val_items)
    pool = train_items + val_items
    assert [pool[i] for i in held_x.tolist()] == held and [pool[i] for i in x.tolist()] == items
    with pytest.raises(ValueError, match="not one of the 3 folds"):
        train_classifier.held_out(splits, ("train", "val"), folds=3, fold=3)
    with pytest.raises(ValueError, match="train,val"):
        train_classifier.held_out(splits, ("train",), folds=3, fold=0)


def test_crossfit_scores_each_crop_by_the_run_that_held_it_out_and_calibrates_the_full_run(shared_data, tmp_path):
    common = ["--data", str(shared_data), "--limit", "9", "--max-steps", "1", "--batch", "4", "--crop-size", "48",
              "--width", "8", "--quiet", "--train-splits", "train,val"]
    summaries = [train_classifier.train(train_classifier.parse_args(
        common + ["--folds", "3", "--fold", str(f), "--keep", "last", "--out", str(tmp_path / f"fold{f}")]))
        for f in range(3)]
    full = train_classifier.train(train_classifier.parse_args(common + ["--out", str(tmp_path / "all")]))
    assert full["held_out"] is None and full["temperature"] is None and full["kept"] == "last"
    assert full["train_crops"] == summaries[0]["train_crops"] + summaries[0]["held_out_crops"]
    runs = [str(tmp_path / f"fold{f}") for f in range(3)]
    crossfit.main(runs + ["--full", str(tmp_path / "all"), "--data", str(shared_data), "--limit", "9",
                          "--threads", "1", "--json", str(tmp_path / "cf.json"), "--save-views", str(tmp_path / "v.pt")])
    report = json.loads((tmp_path / "cf.json").read_text())
    saved = torch.load(tmp_path / "v.pt")
    assert saved["views"].shape == (8, report["n"], N_CLASSES) and len(set(saved["paths"])) == report["n"]
    assert [int((saved["fold"] == f).sum()) for f in range(3)] == [s["held_out_crops"] for s in summaries]
    # Saved views calibrate again without scoring, to the same temperature, and with
    # --class-bias the bias (fitted on every held-out crop) lands in the full run.
    crossfit.main(runs + ["--full", str(tmp_path / "all"), "--data", str(shared_data), "--from-views", str(tmp_path / "v.pt"),
                          "--class-bias", "--json", str(tmp_path / "cf-bias.json")])
    biased = json.loads((tmp_path / "cf-bias.json").read_text())
    assert biased["temperature"] == pytest.approx(report["temperature"]) and biased["held_out"] == report["held_out"]
    assert set(biased["class_bias"]["held_out_nested"]) == set(report["held_out"])
    stored = torch.load(tmp_path / "all" / "best.pt")["class_bias"]
    codes = default_taxonomy().codes
    assert {codes[i]: round(float(b), 4) for i, b in enumerate(stored) if b != 0} == biased["class_bias"]["values"] != {}
    with pytest.raises(SystemExit, match="not of these runs"):
        crossfit.main(runs[::-1] + ["--data", str(shared_data), "--from-views", str(tmp_path / "v.pt")])
    # crossfit finds the same held-out crops that training held out, fold by fold.
    assert [sum(d["n"] for d in report["by_fold"][str(f)].values()) for f in range(3)] == \
        [s["held_out_crops"] for s in summaries]
    assert report["n"] == full["train_crops"] == sum(d["n"] for d in report["held_out"].values())
    assert sum(d["n"] for split in report["by_original_split"].values() for d in split.values()) == report["n"]
    calibrated = torch.load(tmp_path / "all" / "best.pt")["temperature"].item()
    assert calibrated == pytest.approx(report["temperature"]) and calibrated != 1.0
    assert json.loads((tmp_path / "all" / "summary.json").read_text())["temperature"] == pytest.approx(calibrated)
    with pytest.raises(ValueError, match="each of the 3 folds"):
        crossfit.check_folds([summaries[0], summaries[0], summaries[2]])
    with pytest.raises(SystemExit, match="not a run on all train and val"):
        crossfit.main(runs + ["--full", runs[0], "--data", str(shared_data), "--limit", "9", "--threads", "1"])


def test_learning_curve_compares_runs_at_the_last_step_all_reached(tmp_path):
    def log(name, accuracies, steps_per_epoch):
        rows = [{"epoch": e + 1, "step": (e + 1) * steps_per_epoch, "val_matek_accuracy": a, "val_matek_macro_f1": a}
                for e, a in enumerate(accuracies)]
        (tmp_path / f"{name}_experiment_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return tmp_path / f"{name}_experiment_log.jsonl"

    short = log("short", [0.5, 0.6, 0.7], 10)  # ends at step 30
    long = log("long", [0.1, 0.2, 0.3, 0.4, 0.5, 0.9], 6)  # steps 6..36: 0.9 only after step 30
    learning_curve.main([str(short), str(long), "--epochs", "2", "--json", str(tmp_path / "c.json")])
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["step"] == 30
    assert report["runs"]["short"]["val_matek_accuracy"] == pytest.approx(0.65)
    assert report["runs"]["long"]["val_matek_accuracy"] == pytest.approx(0.45)
    assert report["runs"]["long"]["last_step"] == 30 and "val_pbc_accuracy" not in report["runs"]["long"]


def test_detector_smoke_trains(shared_data, tmp_path):
    args = train_detector.parse_args(["--data", str(shared_data), "--out", str(tmp_path), "--max-steps", "2",
                                      "--limit", "4", "--batch", "2", "--quiet"])
    summary = train_detector.train(args)
    assert summary["steps"] == 2 and (tmp_path / "best.pt").exists()


def _sample_crops(n: int, side: int = 96) -> np.ndarray:
    files = sorted((SAMPLES / "demo-case" / "crops").glob("*.jpg"))[:n]
    return np.stack([np.asarray(Image.open(f).convert("RGB").resize((side, side))) for f in files])


def test_export_outputs_equal_eager(tmp_path):
    torch.manual_seed(0)
    classifier = CellClassifier(N_CLASSES)
    detector = CellDetector(4)
    torch.save(classifier.state_dict(), tmp_path / "c.pt")
    torch.save(detector.state_dict(), tmp_path / "d.pt")
    np.save(tmp_path / "crops.npy", _sample_crops(6))
    repo = tmp_path / "repo"
    export.main(["--classifier", str(tmp_path / "c.pt"), "--detector", str(tmp_path / "d.pt"), "--version", "test",
                 "--repo", str(repo), "--example-crops", str(tmp_path / "crops.npy"), "--data", str(tmp_path)])
    for name in ("classifier", "detector"):
        config = text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert config.name == name and config.backend == "python"
    crops = torch.from_numpy(_sample_crops(6))
    diffs = export.check_equal(classifier.eval(), "classifier", crops, repo)
    assert diffs["onnx"] < 1e-4 and diffs["torchscript"] < 1e-5


def test_export_serves_the_crop_size_the_classifier_was_trained_at(tmp_path):
    torch.manual_seed(0)
    torch.save(CellClassifier(N_CLASSES, width=16).state_dict(), tmp_path / "c.pt")  # a width export must infer
    (tmp_path / "summary.json").write_text(json.dumps({"crop_size": 80}))
    torch.save(CellDetector(4).state_dict(), tmp_path / "d.pt")
    repo = tmp_path / "repo"
    export.main(["--classifier", str(tmp_path / "c.pt"), "--detector", str(tmp_path / "d.pt"), "--version", "test",
                 "--repo", str(repo), "--data", str(tmp_path)])
    for path in repo.rglob("classifier/config.pbtxt"):
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        assert list(config.input[0].dims) == [80, 80, 3]
        assert config.parameters["crop_size"].string_value == "80"


def test_export_keeps_a_cross_fitted_temperature_and_refuses_an_uncalibrated_all_data_run(tmp_path):
    torch.manual_seed(0)
    classifier = CellClassifier(N_CLASSES, width=8)
    classifier.temperature.fill_(1.7)
    classifier.class_bias[[2, 22]] = torch.tensor([0.75, -0.75])
    torch.save(classifier.state_dict(), tmp_path / "c.pt")
    torch.save(CellDetector(4).state_dict(), tmp_path / "d.pt")
    summary = {"crop_size": 48, "train_splits": ["train", "val"], "temperature": 1.7}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    repo = tmp_path / "repo"
    # --data points at no data: a val refit would have nothing to read, so the 1.7 must be kept.
    export.main(["--classifier", str(tmp_path / "c.pt"), "--detector", str(tmp_path / "d.pt"), "--version", "t",
                 "--repo", str(repo), "--data", str(tmp_path / "none"), "--tta"])
    config = text_format.Parse((repo / "classifier" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.parameters["temperature"].string_value == "1.7000"
    codes = default_taxonomy().codes
    assert config.parameters["class_bias"].string_value == f"{codes[2]}=0.7500,{codes[22]}=-0.7500"
    # The bias is inside the exported graph, not only in its config.
    crops = torch.from_numpy(_sample_crops(4, 48))
    served = DihedralAverage(classifier.eval()).eval()
    assert export.check_equal(served, "classifier", crops, repo)["onnx"] < 1e-4
    with pytest.raises(SystemExit, match="8-view average"):
        export.main(["--classifier", str(tmp_path / "c.pt"), "--detector", str(tmp_path / "d.pt"), "--version", "t",
                     "--repo", str(repo), "--data", str(tmp_path / "none")])
    (tmp_path / "summary.json").write_text(json.dumps({**summary, "temperature": None}))
    with pytest.raises(SystemExit, match="training.crossfit"):
        export.main(["--classifier", str(tmp_path / "c.pt"), "--detector", str(tmp_path / "d.pt"), "--version", "t",
                     "--repo", str(repo), "--data", str(tmp_path / "none"), "--tta"])


def test_an_ensemble_averages_its_members_and_fits_one_temperature_over_all_views():
    torch.manual_seed(0)
    small, large = CellClassifier(N_CLASSES).eval(), CellClassifier(N_CLASSES).eval()
    ensemble = ClassifierEnsemble([small, large], [64, 80]).eval()
    ensemble.set_temperature(1.7)
    crops = torch.from_numpy(_sample_crops(4, side=80))
    with torch.no_grad():
        out = ensemble(crops)
        shrunk = torch.nn.functional.interpolate(crops.permute(0, 3, 1, 2).float(), size=(64, 64), mode="bilinear",
                                                 align_corners=False).permute(0, 2, 3, 1)
        members = (DihedralAverage(small)(shrunk) + DihedralAverage(large)(crops)) / 2
        from_views = torch.softmax(ensemble.view_logits(crops) / 1.7, dim=2).mean(0)
    assert ensemble.view_logits(crops).shape[0] == 16
    assert torch.allclose(out, members, atol=1e-6)
    assert torch.allclose(out, from_views, atol=1e-6)
    assert float(small.temperature) == float(large.temperature) == pytest.approx(1.7)


def test_an_exported_ensemble_equals_eager(tmp_path):
    torch.manual_seed(1)
    ensemble = ClassifierEnsemble([CellClassifier(N_CLASSES), CellClassifier(N_CLASSES)], [64, 80]).eval()
    crops = torch.from_numpy(_sample_crops(3, side=80))
    export.export_model(ensemble, "classifier", crops, ["CROPS"], ["PROBS"], export.classifier_io(N_CLASSES, 80), 8, 0,
                        {"weights_version": "test"}, tmp_path)
    diffs = export.check_equal(ensemble, "classifier", crops, tmp_path)
    assert diffs["onnx"] < 1e-4 and diffs["torchscript"] < 1e-5


def test_comparison_scores_each_run_and_their_ensemble_on_val(shared_data, tmp_path):
    torch.manual_seed(2)
    runs = []
    for name, side in (("small", 48), ("large", 64)):
        (tmp_path / name).mkdir()
        torch.save(CellClassifier(N_CLASSES).state_dict(), tmp_path / name / "best.pt")
        (tmp_path / name / "summary.json").write_text(json.dumps({"crop_size": side}))
        runs.append(str(tmp_path / name))
    out = tmp_path / "selection.json"
    compare_classifiers.main([*runs, "--data", str(shared_data), "--limit", "12", "--threads", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["split"] == "val"
    assert set(report["runs"]) == {*runs, "ensemble_of_all"}
    assert report["runs"]["ensemble_of_all"]["crop_size"] == 64
    assert report["runs"][runs[0]]["speed_vs_first"] == 1.0
    assert 0.0 <= report["runs"][runs[1]]["matek"]["accuracy"] <= 1.0


def test_comparison_can_score_runs_on_one_view_without_an_ensemble(shared_data, tmp_path):
    torch.manual_seed(4)
    runs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        torch.save(CellClassifier(N_CLASSES, width=8).state_dict(), tmp_path / name / "best.pt")
        (tmp_path / name / "summary.json").write_text(json.dumps({"crop_size": 48}))
        runs.append(str(tmp_path / name))
    out = tmp_path / "single.json"
    compare_classifiers.main([*runs, "--data", str(shared_data), "--limit", "6", "--threads", "1", "--single-view",
                              "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["views"] == 1 and set(report["runs"]) == set(runs)


def test_detection_difference_sees_a_moved_box():
    boxes = torch.tensor([[[10.0, 10.0, 50.0, 50.0], [0, 0, 1, 1]]])
    scores = torch.tensor([[0.9, 0.01]])
    cats = torch.tensor([[0, 0]], dtype=torch.int32)
    same = export.detection_difference((boxes, scores, cats), (boxes.numpy(), scores.numpy(), cats.numpy()))
    moved = boxes.clone()
    moved[0, 0, 0] += 3
    assert same == 0.0
    assert export.detection_difference((boxes, scores, cats), (moved.numpy(), scores.numpy(), cats.numpy())) == 3.0
