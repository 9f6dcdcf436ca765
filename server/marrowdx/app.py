"""Wire the parts together: Triton (managed or external), the models client,
the pipeline, the store, the gRPC server with health and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import prometheus_client
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb
from marrowdx.api.auth import Authenticator
from marrowdx.api.servicer import DiagnosisServicer
from marrowdx.api.wire import AuditOpenMethods, add_service, enable_reflection
from marrowdx.domain.cells import Thresholds
from marrowdx.domain.diagnosis import RuleSet, default_rules
from marrowdx.domain.report import ModelVersions
from marrowdx.domain.taxonomy import default_taxonomy
from marrowdx.imaging.decode import Limits
from marrowdx.inference.launcher import ManagedTriton, start_triton
from marrowdx.inference.pool import TritonPool, is_pool, split_urls
from marrowdx.inference.triton import ModelError, TritonModels, TritonTLS
from marrowdx.pipeline import Pipeline
from marrowdx.scanning import ScanConfig
from marrowdx.security.access import ClientRegistry
from marrowdx.security.policy import LOOPBACK_HOSTS, exposure_problems
from marrowdx.service import MarrowService
from marrowdx.settings import Settings
from marrowdx.store import AuditLog, ReportStore, open_stores

log = structlog.get_logger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DiagnosisService"].full_name


@dataclass
class Runtime:
    settings: Settings
    models: TritonModels | TritonPool
    service: MarrowService
    store: ReportStore
    audit: AuditLog
    triton: ManagedTriton | None
    detector_categories: tuple[str, ...]
    # Set at shutdown: a watchdog restart still starting Triton stops, and stops what it started.
    stopping: threading.Event = field(default_factory=threading.Event)
    restart: asyncio.Future | None = None  # the watchdog's restart in progress

    async def close(self) -> None:
        self.stopping.set()
        await self.models.close()
        await stop_restart(self)
        if self.triton is not None:
            await asyncio.to_thread(self.triton.stop)
        self.store.close()
        self.audit.close()


async def stop_restart(runtime: Runtime) -> None:
    """Wait for a watchdog restart cut short by shutdown, and stop the server it started: its
    thread runs on after the watchdog is cancelled, and what it returns was never assigned."""
    restart, runtime.restart = runtime.restart, None
    if restart is None:
        return
    try:
        started = await restart
    except Exception:
        return  # it saw ``stopping`` and stopped its own server
    if started is not runtime.triton:
        await asyncio.to_thread(started.stop)


async def start_managed_triton(settings: Settings) -> ManagedTriton:
    """start_triton in a worker thread. If this task is cancelled meanwhile (Ctrl-C, a start
    timeout), the start is told to stop and the server it started is stopped: the thread would
    otherwise run on and leave it behind."""
    cancel = threading.Event()
    starting = asyncio.ensure_future(asyncio.to_thread(start_triton, settings.model_repository, settings.state_dir,
                                                       cancel=cancel))
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        cancel.set()
        with contextlib.suppress(Exception):
            started = await starting  # soon: the start checks ``cancel`` and stops what it began
            await asyncio.to_thread(started.stop)
        raise


def service_thresholds(settings: Settings, rules: RuleSet) -> Thresholds:
    """The thresholds the service applies and GetModelInfo advertises. Counts come from the rule
    set (a case's default target is the rule set's, as its reports say), the rest from settings."""
    return Thresholds(detection_score=settings.detection_score, reject_probability=settings.reject_probability,
                      overlap_iou=settings.overlap_iou, duplicate_iou=settings.duplicate_iou,
                      minimum_count=rules.minimum_count, target_count=rules.default_target_count)


async def start_runtime(settings: Settings) -> Runtime:
    taxonomy = default_taxonomy()
    rules = default_rules()
    triton = None
    url = settings.triton_url
    tls = None
    if settings.triton_tls_on:
        if not url:
            raise ValueError("TLS to Triton (triton_tls, triton_ca, triton_cert, triton_key) is for an external "
                             "triton_url; the bundled tritonserver listens on loopback only")
        tls = TritonTLS(settings.triton_ca, settings.triton_cert, settings.triton_key)
        tls.client_options()  # fail now on unreadable files, not at the first call
    if not url:
        triton = await start_managed_triton(settings)
        url = triton.url
    def connect(endpoint: str) -> TritonModels:
        return TritonModels(endpoint, settings.triton_timeout_s, settings.classify_batch, settings.classify_in_flight,
                            tls)

    models = TritonPool(split_urls(url), connect) if is_pool(url) else connect(url)
    try:
        await models.load_contract(taxonomy.version, taxonomy.codes, taxonomy.detector_categories)
    except BaseException:
        await models.close()
        if triton:
            triton.stop()
        raise
    params_c, params_d = models.classifier.parameters, models.detector.parameters
    trained = frozenset(c for c in params_c.get("trained_classes", "").split(",") if c)
    thresholds = service_thresholds(settings, rules)
    pipeline = Pipeline(models, taxonomy, thresholds,
                        Limits(settings.max_image_bytes, settings.max_image_pixels, settings.min_image_side),
                        detector_input=int(params_d["input_size"]), crop_size=int(params_c["crop_size"]),
                        detector_categories=taxonomy.detector_categories,
                        scan=ScanConfig(settings.tile_overlap_px, max(1, models.detector.max_batch_size),
                                        settings.field_adequacy) if settings.physical_scale else None,
                        frame_crops=settings.frame_crops)

    def versions() -> ModelVersions:
        return ModelVersions(models.detector.version, models.classifier.version, taxonomy.version, rules.version)

    try:
        store, audit = await asyncio.to_thread(
            open_stores, settings.database if settings.database_is_postgres else settings.database_path,
            settings.audit_path)
    except BaseException:
        await models.close()
        if triton:
            triton.stop()
        raise
    service = MarrowService(pipeline, store, taxonomy, rules, trained, versions, thresholds,
                            field_concurrency=settings.field_concurrency)
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
        # The restart is kept on the runtime and shielded: if shutdown cancels this watchdog
        # meanwhile, Runtime.close still gets hold of the new server and stops it.
        runtime.restart = asyncio.ensure_future(asyncio.to_thread(
            start_triton, runtime.settings.model_repository, runtime.settings.state_dir, runtime.triton.grpc_port,
            cancel=runtime.stopping))
        try:
            runtime.triton = await asyncio.shield(runtime.restart)
            runtime.restart = None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            runtime.restart = None
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
    if not registry and settings.host not in LOOPBACK_HOSTS:
        # Not even allow_insecure opens a non-loopback port to anonymous callers with every role.
        raise ValueError(f"refusing to serve: {settings.host} is not loopback and no client registry is set "
                         "(clients_file); allow_insecure allows plaintext, never anonymous callers")
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
    server = grpc.aio.server(interceptors=[AuditOpenMethods(runtime.audit)],
                             options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", limit)])
    # With no registry only a loopback listener is open (to the local client); elsewhere nobody is.
    auth = Authenticator(registry, open_local=settings.host in LOOPBACK_HOSTS)
    add_service(DiagnosisServicer(runtime.service, settings, runtime.detector_categories, auth, runtime.audit),
                server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection((SERVICE_NAME, health.SERVICE_NAME), server)
    address = f"{settings.host}:{settings.port}"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not bind {address}")
    log.info("server.security", tls=credentials is not None, mutual_tls=bool(settings.tls_client_ca),
             clients=len({*registry.by_token_digest.values(), *registry.by_certificate_cn.values(),
                          *registry.by_certificate_san.values(), *registry.by_pin.values()}) if registry else 0)
    return server, port, health_servicer


def start_metrics(settings: Settings):
    """Prometheus /metrics on ``metrics_host:metrics_port`` (None when the port is 0). Loopback by
    default: scrape through a sidecar or reverse proxy; another host only where the network is
    trusted (the metrics name no patient, but show load and error rates)."""
    if not settings.metrics_port:
        return None
    try:
        server, _ = prometheus_client.start_http_server(settings.metrics_port, addr=settings.metrics_host)
    except OSError as exc:
        raise ValueError(f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: {exc}") from None
    if settings.metrics_host not in LOOPBACK_HOSTS:
        log.warning("security.metrics_exposed", host=settings.metrics_host, port=settings.metrics_port)
    return server


@contextlib.asynccontextmanager
async def running_service(settings: Settings) -> AsyncIterator[tuple[Runtime, int]]:
    """Triton + front service, serving until the block exits (graceful stop)."""
    # Fail on bad security settings before the minutes of starting Triton.
    check_exposure(settings, server_credentials(settings) is not None, load_registry(settings) is not None)
    runtime = await start_runtime(settings)
    metrics = start_metrics(settings)
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
        if metrics is not None:
            metrics.shutdown()
            metrics.server_close()
        log.info("server.stopped")


__all__ = ["ModelError", "Runtime", "create_server", "running_service", "start_runtime"]
