"""Server settings: CLI flags > MLHARBOR_* environment > TOML config file > defaults."""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from mlharbor import model_packages

DEFAULT_ACCOUNT = "000000000000"
DEFAULT_ACCESS_KEY = "test"
DEFAULT_SECRET_KEY = "test"

# The TOML file is chosen at run time (--config), while pydantic-settings wants sources per class:
# a context variable carries the path into settings_customise_sources.
_config_file: ContextVar[Path | None] = ContextVar("mlharbor_config_file", default=None)


class Credential(BaseModel):
    access_key_id: str
    secret_access_key: str
    account_id: str = Field(pattern=r"^\d{12}$")


class ThrottleSettings(BaseModel):
    """Token bucket per (account, operation). Defaults are generous: a self-hosted user owns the box."""

    rate: float = Field(default=2000.0, gt=0, description="tokens per second per (account, operation)")
    burst: float = Field(default=4000.0, gt=0, description="bucket size")
    operations: dict[str, float] = Field(
        default_factory=dict,
        description="per-operation rate overrides, keyed 'Service.Operation' or 'Operation'",
    )
    max_in_flight: int = Field(
        default=256,
        gt=0,
        description="requests the server works on at once (bodies received) before load is shed",
    )
    max_receiving: int = Field(
        default=256,
        gt=0,
        description="request bodies being received at once; one more cuts off the slowest so far "
        "(400 RequestTimeout), so slow uploads can never lock other clients out",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MLHARBOR_", extra="forbid", env_nested_delimiter="__")

    host: str = "127.0.0.1"
    port: int = Field(default=4580, ge=0, le=65535)
    data_dir: Path = Path(".mlharbor")
    database_url: str | None = None
    credentials: Path | None = None
    video_stream: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # The config file's [video_streams] table (NAME = "URL"); --video-stream entries win per name.
    video_stream_table: dict[str, str] = Field(default_factory=dict, validation_alias="video_streams")
    video_stream_account: str = Field(
        default=DEFAULT_ACCOUNT,
        pattern=r"^\d{12}$",
        description="the account whose Kinesis Video streams the server pulls video streams into (one of its "
        "keys must be in the credentials file)",
    )
    video_stream_region: str = Field(
        default="us-east-1",
        description="the region of the Kinesis Video streams the server pulls video streams into",
    )
    video_stream_retention_hours: int = Field(
        default=24,
        ge=0,
        le=87_600,
        description="DataRetentionInHours of a Kinesis Video stream the server creates for a video stream "
        "(an existing stream keeps its own)",
    )
    log_format: Literal["text", "json"] = "text"
    runtime: str = Field(
        default="local",
        pattern=r"^(local|ray://[^/\s]+)$",
        description="where long work runs: local (worker processes of this server) or ray://HOST:PORT "
        "(actors on that Ray cluster, which outlive this server)",
    )
    worker_endpoint_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^/\s]+/?$",
        description="the URL workers that call the API (stream processors, built-in video producers) are "
        "given: a load balancer over every server of a deployment. By default the URL of the server that "
        "starts them; with it, such a worker on Ray goes on when that server dies",
    )
    insecure_open_bind: bool = False
    object_store: Literal["local", "s3"] = "local"
    # The web console at /console/ (sign in with a credential of this server).
    console: bool = True
    # 16 MiB: a Kinesis PutRecords or PutRecord carries up to 10 MiB of data, base64 in JSON (13.4 MiB).
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    request_body_timeout_seconds: float = Field(
        default=20.0,
        gt=0,
        description="a request body must arrive within this time after its headers, plus one second per "
        "request_body_min_rate bytes received (a slow but steady upload of a large body still fits); "
        "then 400 RequestTimeout and the connection is closed",
    )
    request_body_min_rate: float = Field(
        default=64 * 1024, gt=0, description="bytes per second that earn a body one more second"
    )
    request_body_idle_seconds: float = Field(
        default=10.0, gt=0, description="the longest pause between two pieces of a request body"
    )
    clock_skew_seconds: int = Field(default=300, ge=0)
    throttle: ThrottleSettings = Field(default_factory=ThrottleSettings)
    stream_processor_limit: int = Field(default=20, ge=0)
    training_slots: int = Field(default=2, ge=1, description="recognizers trained at the same time")
    models_bucket: str = Field(
        default="mlharbor-models", description="object-store bucket for model artifacts"
    )
    video_bucket: str = Field(
        default="mlharbor-video", description="object-store bucket for Kinesis Video fragments"
    )
    uploads_bucket: str = Field(
        default="mlharbor-uploads", description="object-store bucket for the parts of S3 multipart uploads"
    )
    video_idle_ack_seconds: float = Field(
        default=3.0, gt=0, description="PutMedia sends an IDLE ACK after this long without data"
    )
    video_idle_close_seconds: float = Field(
        default=30.0, gt=0, description="PutMedia ends a request that sent no data for this long (AWS: 30 s)"
    )
    video_max_connection_seconds: float = Field(
        default=40 * 60.0,
        gt=0,
        description="PutMedia ends a connection open this long with ERROR 4003 (the producer SDK reconnects "
        "after 40 minutes anyway)",
    )
    video_live_buffer_seconds: float = Field(
        default=300.0,
        gt=0,
        description="a stream with DataRetentionInHours 0 keeps fragments this long for live readers (AWS: 5 "
        "minutes), never archived",
    )
    video_get_media_idle_seconds: float = Field(
        default=3.0,
        gt=0,
        description="a GetMedia reader that has caught up and gets no new data for this long is answered to "
        "the end (it resumes with its continuation token)",
    )
    kinesis_iterator_lifetime_seconds: float = Field(
        default=300.0,
        gt=0,
        description="a Kinesis shard iterator expires this long after it was issued (AWS: 5 minutes)",
    )
    inference_unit_limits: bool = Field(
        default=True,
        description="enforce AWS's endpoint throughput per inference unit (100 characters/s and 2 "
        "documents/s); false lets an endpoint run as fast as the hardware allows",
    )
    endpoint_max_workers: int = Field(
        default=max(1, os.cpu_count() or 1),
        ge=1,
        description="serving processes per endpoint: one per inference unit, at most this many",
    )
    detection_job_slots: int = Field(
        default=2, ge=1, description="entities detection jobs run at the same time"
    )
    worker_stop_grace_seconds: float = Field(default=5.0, gt=0, description="cooperative stop before kill")
    lease_seconds: float = Field(
        default=3.0,
        gt=0,
        description="how long a server's claim on a piece of running work lasts unless renewed (twice a "
        "second): another server on the database takes over work whose owner stopped renewing",
    )
    stream_analysis_fps: float = Field(
        default=5.0, gt=0, le=60, description="frames per second a stream processor analyses (AWS: 5)"
    )
    stream_stable_run_seconds: float = Field(
        default=60.0,
        gt=0,
        description="a stream worker that ran this long before dying counts as a first death (a processor "
        "is FAILED after 3 deaths in a row, not 3 in its lifetime)",
    )
    stream_start_grace_seconds: float = Field(
        default=120.0,
        gt=0,
        description="how long past MaxDurationInSeconds a connected home session waits for its first frame "
        "(camera down, StartSelector in the future) before it ends FAILED",
    )
    face_detector: Literal["retinaface", "hog"] = Field(
        default="retinaface",
        description="the face detector of DetectFaces, IndexFaces, SearchFacesByImage and face search "
        "processors: retinaface (RetinaFace-MobileNet0.25: faces down to ~40 px in 1920x1080, turned and "
        "tilted ones) or hog (dlib's HOG frontal detector, also the fallback when RetinaFace's package is "
        "not installed); either way descriptors are dlib's, so collections stay comparable",
    )
    face_descriptor: Literal["onnx", "dlib"] = Field(
        default="onnx",
        description="how dlib's face descriptor network runs: onnx (converted at first use from dlib's own "
        "weights into <data-dir>/cache/models; the same descriptors, ~10x sooner) or dlib (dlib itself)",
    )
    person_detector: Literal["ssdlite", "nanodet", "hog"] = Field(
        default="ssdlite",
        description="connected home's PERSON detector: ssdlite (SSDLite-MobileNetV2 pedestrians), nanodet "
        "(NanoDet-g's COCO person) or hog (OpenCV's HOG people detector and dlib's faces, also the fallback "
        "when the chosen model's package is not installed); a labels.onnx model that maps PERSON replaces it",
    )
    model_packages_dir: Path = Field(
        default=model_packages.DEFAULT_DIR,
        description="where `mlharbor models fetch` installs the pinned packages holding the built-in label "
        "detectors' weights (SSDLite for PERSON, NanoDet for PET) and where stream workers look for them; "
        "default <virtual environment>/share/mlharbor/model-packages",
    )
    face_snapshot_min_faces: int = Field(
        default=10_000,
        ge=1,
        description="face collections at least this large keep an on-disk snapshot of their vectors, "
        "so a restart reads it plus the faces changed since instead of every face row",
    )

    @field_validator("video_stream", mode="before")
    @classmethod
    def _split_streams(cls, value: object) -> object:
        # The environment gives one string; accept "a=rtsp://x b=file:///y" or comma separated.
        if isinstance(value, str):
            return [part for part in value.replace(",", " ").split() if part]
        return value

    @field_validator("video_stream")
    @classmethod
    def _check_streams(cls, value: list[str]) -> list[str]:
        for item in value:
            name, sep, url = item.partition("=")
            if not sep or not name or not url:
                raise ValueError(f"--video-stream expects NAME=URL, got {item!r}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    # Derived values -------------------------------------------------------------------------------
    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'mlharbor.db'}"

    @property
    def models_dir(self) -> Path:
        """Where users put model files (e.g. the connected home label detector, ``labels.onnx``)."""
        return self.data_dir / "models"

    @property
    def model_cache_dir(self) -> Path:
        """Where the built-in label detectors' ONNX conversions are cached (made at first use)."""
        return self.data_dir / "cache" / "models"

    @property
    def video_streams(self) -> dict[str, str]:
        return {**self.video_stream_table, **dict(item.split("=", 1) for item in self.video_stream)}

    def load_credentials(self) -> dict[str, Credential]:
        """Access key id → credential. Without a file exactly one credential exists: test/test."""
        if self.credentials is None:
            default = Credential(
                access_key_id=DEFAULT_ACCESS_KEY,
                secret_access_key=DEFAULT_SECRET_KEY,
                account_id=DEFAULT_ACCOUNT,
            )
            return {default.access_key_id: default}
        data = tomllib.loads(Path(self.credentials).read_text())
        creds: dict[str, Credential] = {}
        for key_id, entry in data.items():
            if not isinstance(entry, dict):
                raise ValueError(f"credentials file: [{key_id}] must be a table")
            creds[key_id] = Credential(access_key_id=key_id, **entry)
        if not creds:
            raise ValueError("credentials file defines no credential")
        return creds


def load_settings(config_file: Path | None = None, **overrides: object) -> Settings:
    """Build settings from overrides (CLI), environment, then the TOML file."""
    if config_file is None:
        import os

        env_path = os.environ.get("MLHARBOR_CONFIG")
        config_file = Path(env_path) if env_path else None
    token = _config_file.set(config_file)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _config_file.reset(token)
