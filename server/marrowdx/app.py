"""Wire the parts together: Triton (managed or external), the models client,
the pipeline, the store, the gRPC server with health and reflection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import prometheus_client
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb
from marrowdx._proto.marrowdx.v1 import diagnosis_pb2_grpc as pb_grpc
from marrowdx.api.auth import Authenticator
from marrowdx.api.servicer import DiagnosisServicer
from marrowdx.domain.cells import Thresholds
from marrowdx.domain.diagnosis import default_rules
from marrowdx.domain.report import ModelVersions
from marrowdx.domain.taxonomy import default_taxonomy
from marrowdx.imaging.decode import Limits
from marrowdx.inference.launcher import ManagedTriton, start_triton
from marrowdx.inference.triton import ModelError, TritonModels
from marrowdx.pipeline import Pipeline
from marrowdx.security.access import ClientRegistry
from marrowdx.security.policy import exposure_problems
from marrowdx.service import MarrowService
from marrowdx.settings import Settings
from marrowdx.store.audit import AuditLog
from marrowdx.store.sqlite import ReportStore

log = structlog.get_logger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DiagnosisService"].full_name


@dataclass
class Runtime:
    settings: Settings
    models: TritonModels
    service: MarrowService
    store: ReportStore
    audit: AuditLog
    triton: ManagedTriton | None
    detector_categories: tuple[str, ...]

    async def close(self) -> None:
        await self.models.close()
        if self.triton is not None:
            await asyncio.to_thread(self.triton.stop)
        self.store.close()
        self.audit.close()


async def start_runtime(settings: Settings) -> Runtime:
    taxonomy = default_taxonomy()
    rules = default_rules()
    triton = None
    url = settings.triton_url
    if not url:
        triton = await asyncio.to_thread(start_triton, settings.model_repository, settings.state_dir)
        url = triton.url
    models = TritonModels(url, settings.triton_timeout_s, settings.classify_batch, settings.classify_in_flight)
    try:
        await models.load_contract(taxonomy.version, taxonomy.codes, taxonomy.detector_categories)
    except BaseException:
        await models.close()
        if triton:
            triton.stop()
        raise
    params_c, params_d = models.classifier.parameters, models.detector.parameters
    trained = frozenset(c for c in params_c.get("trained_classes", "").split(",") if c)
    thresholds = Thresholds(detection_score=settings.detection_score, reject_probability=settings.reject_probability,
                            overlap_iou=settings.overlap_iou, duplicate_iou=settings.duplicate_iou,
                            minimum_count=rules.minimum_count,
                            target_count=settings.target_count)
    pipeline = Pipeline(models, taxonomy, thresholds,
                        Limits(settings.max_image_bytes, settings.max_image_pixels, settings.min_image_side),
                        detector_input=int(params_d["input_size"]), crop_size=int(params_c["crop_size"]),
                        detector_categories=taxonomy.detector_categories)

    def versions() -> ModelVersions:
        return ModelVersions(models.detector.version, models.classifier.version, taxonomy.version, rules.version)

    store = ReportStore(settings.database_path)
    audit = AuditLog(settings.audit_path)
    service = MarrowService(pipeline, store, taxonomy, rules, trained, versions, thresholds)
    log.info("runtime.ready", triton=url, managed=triton is not None, detector=models.detector.version,
             classifier=models.classifier.version)
    return Runtime(settings, models, service, store, audit, triton, taxonomy.detector_categories)


async def set_health(health_servicer: health.aio.HealthServicer, status: int) -> None:
    """The overall status and the diagnosis service's move together."""
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)


async def watch_health(runtime: Runtime, health_servicer: health.aio.HealthServicer, period_s: float = 1.0) -> None:
    """Health follows model readiness; a managed Triton that died is restarted.
    A failing iteration is logged and the watch goes on: a dead watchdog would freeze health."""
    serving = None
    while True:
        try:
            serving = await _health_step(runtime, health_servicer, serving)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("health.watch_failed")
        await asyncio.sleep(period_s)


async def _health_step(runtime: Runtime, health_servicer: health.aio.HealthServicer, serving: bool | None) -> bool:
    ready = await runtime.models.ready()
    if ready != serving:
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        await set_health(health_servicer, status)
        log.info("health.changed", serving=ready)
    if runtime.triton is not None and not runtime.triton.alive():
        log.warning("triton.died", returncode=runtime.triton.process.returncode)
        if ready:  # the port still answered a moment ago: say NOT_SERVING before the restart
            await set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
            ready = False
        try:
            runtime.triton = await asyncio.to_thread(start_triton, runtime.settings.model_repository,
                                                     runtime.settings.state_dir, runtime.triton.grpc_port)
        except Exception as exc:
            log.error("triton.restart_failed", error=str(exc))
    return ready


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS when a certificate and key are set; mutual TLS (client certificate required) with a client CA."""
    if not settings.tls_cert and not settings.tls_key:
        if settings.tls_client_ca:
            raise ValueError("tls_client_ca needs tls_cert and tls_key: mutual TLS is TLS first")
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise ValueError("set both tls_cert and tls_key")
    try:
        chain, key = settings.tls_cert.read_bytes(), settings.tls_key.read_bytes()
        client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    except OSError as exc:
        raise ValueError(f"cannot read TLS material: {exc}") from None
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def load_registry(settings: Settings) -> ClientRegistry | None:
    return ClientRegistry.load(settings.clients_file) if settings.clients_file else None


def check_exposure(settings: Settings, tls: bool, registry: bool) -> None:
    """Refuse an unsafe non-loopback bind unless the operator said so; warn loudly either way."""
    problems = exposure_problems(settings.host, tls, registry)
    if problems and not settings.allow_insecure:
        raise ValueError("refusing to serve: " + "; ".join(problems) + " (or set allow_insecure)")
    for problem in problems:
        log.warning("security.insecure_exposure", problem=problem)
    if not tls and not problems:
        log.warning("security.plaintext_loopback", host=settings.host,
                    note="plaintext gRPC: fine on loopback only; set tls_cert/tls_key before exposing the port")


def create_server(settings: Settings, runtime: Runtime) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """A gRPC server with the diagnosis service, health and reflection; returns the bound port."""
    credentials = server_credentials(settings)
    registry = load_registry(settings)
    limit = settings.max_message_mb * 1024 * 1024
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", limit)])
    pb_grpc.add_DiagnosisServiceServicer_to_server(
        DiagnosisServicer(runtime.service, settings, runtime.detector_categories, Authenticator(registry),
                          runtime.audit), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{settings.host}:{settings.port}"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not bind {address}")
    log.info("server.security", tls=credentials is not None, mutual_tls=bool(settings.tls_client_ca),
             clients=len({*registry.by_token_digest.values(), *registry.by_certificate_cn.values()}) if registry else 0)
    return server, port, health_servicer


@contextlib.asynccontextmanager
async def running_service(settings: Settings) -> AsyncIterator[tuple[Runtime, int]]:
    """Triton + front service, serving until the block exits (graceful stop)."""
    # Fail on bad security settings before the minutes of starting Triton.
    check_exposure(settings, server_credentials(settings) is not None, load_registry(settings) is not None)
    runtime = await start_runtime(settings)
    if settings.metrics_port:
        # Loopback only: scrape through a sidecar or reverse proxy, never expose it directly.
        prometheus_client.start_http_server(settings.metrics_port, addr="127.0.0.1")
    server, port, health_servicer = create_server(settings, runtime)
    await server.start()
    watcher = asyncio.create_task(watch_health(runtime, health_servicer))
    log.info("server.started", port=port)
    try:
        yield runtime, port
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.stop(settings.grace_seconds)
        await runtime.close()
        log.info("server.stopped")


__all__ = ["ModelError", "Runtime", "create_server", "running_service", "start_runtime"]
