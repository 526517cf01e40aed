"""Configuration of tracing: the ``tracing:`` section (OpenTelemetry, opt-in).

```yaml
tracing:
  enabled: false            # off by default: no span, no header, no cost
  sampling_ratio: 0.01      # share of changes (and of inbound requests without a parent)
  service_name: cdcsync
  exporter:
    endpoint: http://localhost:4318/v1/traces
    protocol: http/protobuf   # or grpc (needs opentelemetry-exporter-otlp-proto-grpc)
    headers: {authorization_env: OTLP_AUTH}   # every value is a secret
    timeout_s: 10
    export_interval_s: 5
```

What the traces hold is described in ``cdc.core.tracing``.

Invariants: frozen like every config model; every exporter header value is a
``SecretStr`` (whether given inline or by ``*_env``/``*_file``) and never printed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from cdc.config.fields import RedactedUrl, SecretishMap, Section
from cdc.core.tracing import TracingSettings

__all__ = ["TracingConfig", "TracingExporterConfig"]


class TracingExporterConfig(Section):
    """Where spans go: an OTLP endpoint."""

    endpoint: RedactedUrl = "http://localhost:4318/v1/traces"
    protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    headers: SecretishMap = Field(default_factory=dict)
    timeout_s: float = Field(default=10.0, gt=0)
    export_interval_s: float = Field(default=5.0, gt=0)

    @field_validator("headers", mode="after")
    @classmethod
    def _all_secret(cls, value: dict[str, object]) -> dict[str, object]:
        return {
            name: v if isinstance(v, SecretStr) else SecretStr(str(v)) for name, v in value.items()
        }


class TracingConfig(Section):
    """OpenTelemetry tracing of changes; see the module docstring."""

    enabled: bool = False
    sampling_ratio: float = Field(default=0.01, ge=0, le=1)
    service_name: str = Field(default="cdcsync", min_length=1)
    exporter: TracingExporterConfig = Field(default_factory=TracingExporterConfig)

    def settings(self) -> TracingSettings:
        """What ``cdc.core.tracing.configure`` takes."""
        exporter = self.exporter
        return TracingSettings(
            enabled=self.enabled,
            sampling_ratio=self.sampling_ratio,
            service_name=self.service_name,
            endpoint=str(exporter.endpoint),
            protocol=exporter.protocol,
            headers={
                name: v if isinstance(v, SecretStr) else SecretStr(str(v))
                for name, v in exporter.headers.items()
            },
            timeout_s=exporter.timeout_s,
            export_interval_s=exporter.export_interval_s,
        )
