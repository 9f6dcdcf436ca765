"""Every config.pbtxt parses, names its folder, and keeps the one tensor contract."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from marrowdx.domain.taxonomy import default_taxonomy

REPO = Path(__file__).resolve().parents[2] / "model_repository"
CONFIGS = sorted(REPO.rglob("config.pbtxt"))
CONTRACT = {
    "detector": ({"IMAGE": (model_config_pb2.TYPE_UINT8, [320, 320, 3])},
                 {"BOXES": model_config_pb2.TYPE_FP32, "SCORES": model_config_pb2.TYPE_FP32,
                  "CATEGORIES": model_config_pb2.TYPE_INT32, "COUNT": model_config_pb2.TYPE_INT32}),
    # The crop side is the one the classifier was trained at: its crop_size parameter.
    "classifier": ({"CROPS": (model_config_pb2.TYPE_UINT8, ["crop_size", "crop_size", 3])},
                   {"PROBS": model_config_pb2.TYPE_FP32}),
}


def parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_cpu_and_both_gpu_variants_exist():
    names = {str(p.relative_to(REPO).parent) for p in CONFIGS}
    assert names >= {"detector", "classifier", "variants/gpu-libtorch/detector", "variants/gpu-libtorch/classifier",
                     "variants/gpu-tensorrt/detector", "variants/gpu-tensorrt/classifier"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_config_matches_the_contract(path):
    config = parse(path)
    assert config.name == path.parent.name, "model name must equal its folder"
    assert config.max_batch_size > 0
    assert config.HasField("dynamic_batching")
    inputs, outputs = CONTRACT[config.name]
    params = {k: v.string_value for k, v in config.parameters.items()}
    expected = {name: (dtype, [int(params[d]) if isinstance(d, str) else d for d in dims])
                for name, (dtype, dims) in inputs.items()}
    assert {i.name: (i.data_type, list(i.dims)) for i in config.input} == expected
    assert {o.name: o.data_type for o in config.output} == outputs
    assert params["weights_version"]
    assert params["taxonomy_version"] == default_taxonomy().version


def test_classifier_outputs_are_the_taxonomy_in_order():
    tax = default_taxonomy()
    for path in REPO.rglob("classifier/config.pbtxt"):
        config = parse(path)
        params = {k: v.string_value for k, v in config.parameters.items()}
        assert params["classes"].split(",") == list(tax.codes)
        assert [o.dims for o in config.output][0] == [len(tax.codes)]
        assert set(params["trained_classes"].split(",")) <= set(tax.codes)


def test_every_classifier_variant_takes_the_same_crop_size():
    sizes = {parse(p).input[0].dims[0] for p in REPO.rglob("classifier/config.pbtxt")}
    assert len(sizes) == 1


def test_detector_categories_match_the_taxonomy():
    for path in REPO.rglob("detector/config.pbtxt"):
        params = {k: v.string_value for k, v in parse(path).parameters.items()}
        assert tuple(params["categories"].split(",")) == default_taxonomy().detector_categories


def test_cpu_models_have_their_files_and_stay_small():
    for name, files in (("detector", ["model.onnx", "model.py"]), ("classifier", ["model.onnx", "model.py"])):
        for f in files:
            assert (REPO / name / "1" / f).exists()
    for weights in list(REPO.rglob("*.onnx")) + list(REPO.rglob("*.pt")):
        assert weights.stat().st_size < 15 * 1024 * 1024, weights


def test_platforms():
    assert parse(REPO / "detector" / "config.pbtxt").backend == "python"
    assert parse(REPO / "variants/gpu-libtorch/detector/config.pbtxt").platform == "pytorch_libtorch"
    assert parse(REPO / "variants/gpu-tensorrt/classifier/config.pbtxt").platform == "tensorrt_plan"
