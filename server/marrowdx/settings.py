"""One settings object: defaults, overridden by MARROWDX_* environment
variables, overridden by command-line flags. Read once in main, passed down."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _default_repository() -> Path:
    return PROJECT_ROOT / "model_repository"


@dataclass(frozen=True)
class Settings:
    # gRPC front service
    host: str = "127.0.0.1"
    port: int = 50051
    max_message_mb: int = 64
    max_in_flight: int = 64
    grace_seconds: float = 10.0
    # A case stream that sends nothing for this long is ended (DEADLINE_EXCEEDED), so a stalled
    # client does not hold an in-flight slot for the stream's life.
    stream_idle_timeout_s: float = 60.0
    # Fields analysed at once across all cases, shared round robin between cases (service.FairSlots).
    field_concurrency: int = 4
    metrics_port: int = 0  # Prometheus /metrics; 0 = off
    metrics_host: str = "127.0.0.1"  # loopback by default (scrape through a sidecar or proxy)
    # transport security and access (see docs/security.md)
    tls_cert: Path | None = None  # server certificate chain (PEM); with tls_key turns TLS on
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # CA for client certificates: mutual TLS, required
    clients_file: Path | None = None  # client registry (tokens / certificate names, roles); none = open, loopback only
    allow_insecure: bool = False  # let a non-loopback bind go without TLS or without a registry (loud warning)
    # images
    max_image_bytes: int = 40 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    min_image_side: int = 32
    max_crops_per_request: int = 2048
    max_images_per_case: int = 2000
    # models / Triton
    # Empty: start the bundled tritonserver. Several, comma-separated, or dns:///NAME:PORT (every
    # address of NAME): the front balances over them and fails over (inference/pool.py).
    triton_url: str = ""
    model_repository: Path = field(default_factory=_default_repository)
    state_dir: Path = field(default_factory=lambda: PROJECT_ROOT / "var")
    # The most one model call may take; a caller's deadline, when nearer, shortens it (inference/triton.py).
    triton_timeout_s: float = 30.0
    # TLS to an external Triton (triton_url): on with triton_tls, or by giving triton_ca or a client
    # certificate; triton_ca None trusts the system's roots; triton_cert/key for mutual TLS.
    triton_tls: bool = False
    triton_ca: Path | None = None
    triton_cert: Path | None = None
    triton_key: Path | None = None
    # Crops per classifier request and requests in flight per field or case: small requests
    # keep each call far inside triton_timeout_s (a crop costs tens of ms on CPU) and let
    # the model instances share a case.
    classify_batch: int = 32
    classify_in_flight: int = 2
    # counting and thresholds
    # Detector 2026.12.02a: the threshold keeping TXL-PBC *train* white-cell recall >= 0.97 at the best
    # train precision (0.959 at 0.36); no threshold reaches 0.98 train precision with it (docs/model-card.md).
    detection_score: float = 0.36
    reject_probability: float = 0.5
    overlap_iou: float = 0.25
    duplicate_iou: float = 0.5
    # (No target_count: a case's default target is the rule set's default_target_count.)
    top_k: int = 3
    # Any lab's images (docs/any-lab.md): each field at the detector's physical scale (from its
    # pixel_spacing_um or its red cells), tiled with this overlap, inadequate fields left out;
    # crops re-framed around their cell (off by default: it costs marrow crops accuracy).
    physical_scale: bool = True
    tile_overlap_px: int = 160
    field_adequacy: bool = True
    frame_crops: bool = False
    # storage
    # A SQLite file (default: state_dir / reports.sqlite3; the audit log beside it), or a
    # postgresql://USER@HOST:PORT/DB URL that several front replicas share (reports and audit log
    # there; the password from PGPASSWORD/PGPASSFILE, never the URL): docs/scaling.md.
    database: str | Path | None = None
    log_level: str = "info"
    log_json: bool = True

    def __post_init__(self) -> None:
        for name in ("classify_batch", "classify_in_flight", "max_in_flight", "field_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.stream_idle_timeout_s <= 0:
            raise ValueError(f"stream_idle_timeout_s must be positive, not {self.stream_idle_timeout_s}")

    @property
    def triton_tls_on(self) -> bool:
        return bool(self.triton_tls or self.triton_ca or self.triton_cert or self.triton_key)

    @property
    def database_is_postgres(self) -> bool:
        return isinstance(self.database, str) and self.database.startswith(("postgresql://", "postgres://"))

    @property
    def database_path(self) -> Path:
        """The SQLite file (meaningless for a PostgreSQL database)."""
        return Path(self.database) if self.database else self.state_dir / "reports.sqlite3"

    @property
    def audit_path(self) -> Path:
        """Beside the reports, in a file of its own: an audit write (on the event loop) never
        waits for the reports' write lock while a report is being fsynced."""
        return self.database_path.with_name(self.database_path.stem + ".audit.sqlite3")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> Settings:
        """Defaults <- MARROWDX_<FIELD> env vars <- explicit overrides (flags); None overrides are ignored."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = environ.get(f"MARROWDX_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _parse(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)


def _parse(f: dataclasses.Field, raw: str) -> object:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("bool"):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        if kind.startswith("Path"):
            return Path(raw) if raw else None
    except ValueError:
        raise ValueError(f"MARROWDX_{f.name.upper()}={raw!r} is not a valid {kind}") from None
    return raw
