"""The webhook's configuration: one frozen value, read once from the environment.

Every setting has an ``RTDRA_WEBHOOK_`` environment variable so the same
container image is configured by the Deployment alone, read by the services'
common rules (``rtdra.settings``: booleans as true/false, errors naming the
variable); the command line
(:mod:`webhook.cli`) only chooses how the server listens (:class:`WebhookServer`,
read by the same rules as the extender's settings, flags on top). Nothing else in
the package reads ``os.environ``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from rtdra.bandwidth import NSEC_PER_USEC, PERIOD_MAX_US_DEFAULT, PERIOD_MIN_US_DEFAULT
from rtdra.request import KernelLimits
from rtdra.settings import ConfigError, Env, Listen, dataclass_from_env

ENV_PREFIX: Final = "RTDRA_WEBHOOK_"

TaintEffect = Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]
_EFFECTS: Final = ("NoSchedule", "PreferNoSchedule", "NoExecute")
#: kubectl's taint syntax: ``key[=value]:Effect``.
_TAINT = re.compile(r"^(?P<key>[^=:\s]+)(?:=(?P<value>[^:\s]*))?:(?P<effect>\w+)$")
#: Qualified resource names (``domain/name``).
_RESOURCE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class Toleration:
    """A toleration for the taint that keeps ordinary pods off real-time nodes."""

    key: str
    effect: TaintEffect
    value: str | None = None

    def to_json(self) -> dict[str, str]:
        out = {"key": self.key, "operator": "Equal" if self.value is not None else "Exists", "effect": self.effect}
        if self.value is not None:
            out["value"] = self.value
        return out

    @classmethod
    def parse(cls, text: str) -> Toleration:
        """``key[=value]:Effect``, as in ``kubectl taint``."""
        match = _TAINT.match(text.strip())
        if match is None or match["effect"] not in _EFFECTS:
            raise ValueError(f"{text!r} is not a taint (write key[=value]:Effect, Effect one of {', '.join(_EFFECTS)})")
        effect: TaintEffect = match["effect"]  # type: ignore[assignment]
        return cls(key=match["key"], value=match["value"], effect=effect)


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """What the webhook adds to real-time pods and what it checks."""

    #: Add ``rt.resource.example.com/dl: 1`` to each RT container: it routes the pod to the extender, and the
    #: agent's kubelet device plugin answers it with the CDI device (off: something else must bring that).
    extended_resource: bool = True
    #: Set ``spec.schedulerName`` to this profile (``None``: leave it).
    scheduler_name: str | None = None
    #: Tolerate the RT-node taint (``None``: add no toleration).
    toleration: Toleration | None = None
    #: Also request this extended resource, in milli-CPUs of deadline bandwidth, so a
    #: ResourceQuota can cap a namespace's total reservation (``None``: off).
    bandwidth_resource: str | None = None
    #: DRA mode's scoring: add ``rt.resource.example.com/dra: 1`` (``rtdra.dra.SCORING_RESOURCE``) to the
    #: first container of pods with ResourceClaims, for the scheduler's scoring entry's managedResources.
    #: Only with that entry configured (manifests/scheduler/dra-scoring-config.yaml): without it,
    #: kube-scheduler's resource fit would find no node offering the resource.
    dra_scoring: bool = False
    #: Check the namespace's opt-in label in the webhook too (needs API access; cached).
    verify_namespace: bool = False
    namespace_cache_ttl_s: float = 30.0
    #: Timeout for reading RtClaimParameters / Namespaces from the API.
    api_timeout_s: float = 2.0
    kubeconfig: str | None = None
    #: The kernel's ``sched_deadline_period_{min,max}_us`` on the cluster's nodes.
    limits: KernelLimits = field(default_factory=KernelLimits)
    #: Serving certificate, for ``/readyz`` to report expiry (the server itself is configured by the CLI).
    tls_cert: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WebhookConfig:
        """Read every ``RTDRA_WEBHOOK_*`` variable; a bad value raises ``ConfigError`` naming it."""
        env = Env(ENV_PREFIX, environ)

        def resource(text: str) -> str:
            if not _RESOURCE.match(text):
                raise ValueError("is not a domain/name resource")
            return text

        period_min_us = int(env.number("PERIOD_MIN_US", PERIOD_MIN_US_DEFAULT, positive=True))
        period_max_us = int(env.number("PERIOD_MAX_US", PERIOD_MAX_US_DEFAULT, positive=True))
        if period_min_us > period_max_us:
            raise ConfigError(f"{ENV_PREFIX}PERIOD_MIN_US must not exceed {ENV_PREFIX}PERIOD_MAX_US")
        return cls(
            extended_resource=env.flag("EXTENDED_RESOURCE", True),
            scheduler_name=env.text("SCHEDULER_NAME"),
            toleration=env.parsed("TOLERATION", Toleration.parse, None),
            bandwidth_resource=env.parsed("BANDWIDTH_RESOURCE", resource, None),
            dra_scoring=env.flag("DRA_SCORING", False),
            verify_namespace=env.flag("VERIFY_NAMESPACE", False),
            namespace_cache_ttl_s=env.number("NAMESPACE_CACHE_TTL", 30.0, positive=True),
            api_timeout_s=env.number("API_TIMEOUT", 2.0, positive=True),
            kubeconfig=env.text("KUBECONFIG"),
            limits=KernelLimits(
                period_min_ns=period_min_us * NSEC_PER_USEC, period_max_ns=period_max_us * NSEC_PER_USEC
            ),
            tls_cert=env.text("TLS_CERT"),
        )


@dataclass(frozen=True)
class WebhookServer(Listen):
    """How ``rtdra-webhook`` listens (:class:`rtdra.settings.Listen`): always HTTPS, the webhook's defaults."""

    bind: str = "0.0.0.0:8443"
    workers: int = 2
    threads: int = 4
    #: ``--tls-cert``/``--tls-key``, ``RTDRA_WEBHOOK_TLS_CERT``/``_TLS_KEY``: kube-apiserver only calls HTTPS.
    tls_cert_file: str = field(default="", metadata={"env": "TLS_CERT"})
    tls_key_file: str = field(default="", metadata={"env": "TLS_KEY"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.https:
            raise ConfigError("--tls-cert and --tls-key are required: kube-apiserver only calls webhooks over HTTPS")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> WebhookServer:
        """Settings from ``RTDRA_WEBHOOK_*`` variables, then ``overrides`` (flags) on top."""
        return dataclass_from_env(cls, Env(ENV_PREFIX, environ), overrides)
