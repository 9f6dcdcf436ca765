"""Async client for the two models on Triton. tritonclient errors are
translated here, once, into ModelUnavailable / ModelTimeout / ModelError."""

from __future__ import annotations

import asyncio
import contextvars
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

DETECTOR = "detector"
CLASSIFIER = "classifier"


class ModelError(RuntimeError):
    """The model server answered with an error we cannot retry."""


class ModelUnavailable(ModelError):
    """The model server is unreachable or a model is not ready."""


class ModelTimeout(ModelError):
    """The model server did not answer within the deadline."""


class ModelContractError(ModelError):
    """A served model does not match the contract (tensor names, taxonomy)."""


# When the RPC being served must be answered (time.monotonic()); None: the caller set no deadline.
# Set once per call by the rpc wrapper; tasks and threads started for the call inherit it.
CALLER_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("marrowdx_caller_deadline",
                                                                               default=None)


def call_timeout(cap_s: float) -> float:
    """Seconds one Triton call may take: what is left of the caller's deadline, at most ``cap_s``.
    A deadline already passed raises ModelTimeout without calling Triton."""
    deadline = CALLER_DEADLINE.get()
    if deadline is None:
        return cap_s
    left = deadline - time.monotonic()
    if left <= 0:
        raise ModelTimeout("the caller's deadline passed before the model call")
    return min(cap_s, left)


@dataclass(frozen=True)
class TritonTLS:
    """TLS to a remote Triton: the CA that signed its certificate (None: the system's roots),
    and a client certificate and key when it requires mutual TLS. Paths, read by tritonclient."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def client_options(self) -> dict:
        if bool(self.cert) != bool(self.key):
            raise ValueError("TLS to Triton: give both triton_cert and triton_key, or neither")
        for path in (self.ca, self.cert, self.key):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"TLS to Triton: cannot read {path}")
        return {"ssl": True, "root_certificates": str(self.ca) if self.ca else None,
                "private_key": str(self.key) if self.key else None,
                "certificate_chain": str(self.cert) if self.cert else None}


def translate(exc: InferenceServerException) -> ModelError:
    """The one place tritonclient's errors become ours (its status is a string like
    ``StatusCode.UNAVAILABLE``, or None for errors raised on the client side)."""
    status = str(exc.status() or "")
    if "DEADLINE_EXCEEDED" in status:
        return ModelTimeout(f"model server timed out: {exc.message()}")
    if "UNAVAILABLE" in status or "CANCELLED" in status or "not ready" in (exc.message() or "").lower():
        return ModelUnavailable(f"model server unavailable: {exc.message()}")
    return ModelError(f"model server error: {exc.message()}")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    weights_version: str
    taxonomy_version: str
    max_batch_size: int
    parameters: dict[str, str]

    @property
    def version(self) -> str:
        return f"{self.name}:{self.weights_version}"


@dataclass(frozen=True)
class Detections:
    boxes: np.ndarray  # B x K x 4, model-input pixels
    scores: np.ndarray  # B x K
    categories: np.ndarray  # B x K
    count: np.ndarray | None = None  # B x 1: objects found; == K means every slot is full and some may be missing

    def saturated(self, i: int = 0) -> bool:
        return self.count is not None and int(np.asarray(self.count[i]).reshape(-1)[0]) >= self.boxes.shape[1]


EXPECTED_TENSORS = {
    DETECTOR: ({"IMAGE"}, {"BOXES", "SCORES", "CATEGORIES", "COUNT"}),
    CLASSIFIER: ({"CROPS"}, {"PROBS"}),
}


class TritonModels:
    def __init__(self, url: str, timeout_s: float, classify_batch: int = 32, classify_in_flight: int = 2,
                 tls: TritonTLS | None = None) -> None:
        self.url = url
        self.timeout_s = timeout_s  # the most one call may take; less when the caller's deadline is nearer
        self.classify_batch = classify_batch
        self.classify_in_flight = classify_in_flight
        self._client = grpcclient.InferenceServerClient(url, **(tls.client_options() if tls else {}))
        self.detector: ModelInfo | None = None
        self.classifier: ModelInfo | None = None

    async def close(self) -> None:
        await self._client.close()

    async def ready(self) -> bool:
        """Both models ready. Any failure to ask (refused, reset, timed out) means not ready."""
        try:
            return bool(await self._client.is_server_ready(client_timeout=2.0)
                        and await self._client.is_model_ready(DETECTOR, client_timeout=2.0)
                        and await self._client.is_model_ready(CLASSIFIER, client_timeout=2.0))
        except asyncio.CancelledError:
            raise
        except Exception:
            return False

    async def load_contract(self, taxonomy_version: str, taxonomy_codes: tuple[str, ...],
                            detector_categories: tuple[str, ...]) -> None:
        """Fetch both configs and refuse models that do not match our taxonomy."""
        self.detector = await self._model_info(DETECTOR)
        self.classifier = await self._model_info(CLASSIFIER)
        for info in (self.detector, self.classifier):
            if info.taxonomy_version != taxonomy_version:
                raise ModelContractError(f"{info.name} was trained for taxonomy {info.taxonomy_version!r}; "
                                         f"the service runs {taxonomy_version!r}")
        if tuple(self.classifier.parameters.get("classes", "").split(",")) != taxonomy_codes:
            raise ModelContractError("classifier output classes differ from the taxonomy order")
        if tuple(self.detector.parameters.get("categories", "").split(",")) != detector_categories:
            raise ModelContractError("detector categories differ from the taxonomy's detector_categories")

    async def _model_info(self, name: str) -> ModelInfo:
        try:
            response = await self._client.get_model_config(name, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise translate(exc) from exc
        config = response.config
        inputs = {i.name for i in config.input}
        outputs = {o.name for o in config.output}
        want_in, want_out = EXPECTED_TENSORS[name]
        if inputs != want_in or not want_out <= outputs:
            raise ModelContractError(f"{name}: tensors {sorted(inputs)} -> {sorted(outputs)} do not match the contract")
        params = {k: v.string_value for k, v in config.parameters.items()}
        return ModelInfo(name, params.get("weights_version", "unknown"), params.get("taxonomy_version", ""),
                         int(config.max_batch_size), params)

    async def _infer(self, model: str, input_name: str, array: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
        tensor = grpcclient.InferInput(input_name, list(array.shape), "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(array))
        requested = [grpcclient.InferRequestedOutput(o) for o in outputs]
        try:
            result = await self._client.infer(model, [tensor], outputs=requested,
                                              client_timeout=call_timeout(self.timeout_s))
        except InferenceServerException as exc:
            raise translate(exc) from exc
        return [result.as_numpy(o) for o in outputs]

    async def detect(self, images: np.ndarray) -> Detections:
        boxes, scores, categories, count = await self._infer(DETECTOR, "IMAGE", images,
                                                             ["BOXES", "SCORES", "CATEGORIES", "COUNT"])
        return Detections(boxes, scores, categories, count)

    async def classify(self, crops: np.ndarray) -> np.ndarray:
        """Probabilities for the crops, in order. A case's crops go in small requests, a few
        in flight: each request then stays far inside the timeout (on CPU a crop costs tens of
        milliseconds with the 8-view average), the model instances share the work, and
        Triton's dynamic batcher can still merge requests from concurrent fields and cases."""
        limit = min(self.classify_batch, self.classifier.max_batch_size) if self.classifier else self.classify_batch
        gate = asyncio.Semaphore(self.classify_in_flight)

        async def one(chunk: np.ndarray) -> np.ndarray:
            async with gate:
                return (await self._infer(CLASSIFIER, "CROPS", chunk, ["PROBS"]))[0]

        parts = await asyncio.gather(*(one(crops[i : i + limit]) for i in range(0, len(crops), limit)))
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
