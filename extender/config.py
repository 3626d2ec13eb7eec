"""The extender's configuration, read once from the environment (prefix ``RTDRA_EXTENDER_``) and flags.

Every setting has an environment variable, read by the services' common
rules (``rtdra.settings``: typed by the field, booleans as true/false, errors
naming the variable); ``rtdra-extender`` flags override them (see
``extender.cli``). The value is frozen: the app, the cache, the binder and
the reconciler are all built from one :class:`ExtenderConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from rtdra import names
from rtdra.request import DEFAULT_PLACEMENT, PLACEMENTS, Placement
from rtdra.settings import ConfigError, Env, Listen, dataclass_from_env

__all__ = ["ENV_PREFIX", "ConfigError", "ExtenderConfig"]

ENV_PREFIX: Final = "RTDRA_EXTENDER_"


@dataclass(frozen=True)
class ExtenderConfig(Listen):
    """How the extender listens (:class:`rtdra.settings.Listen`), talks to the API and decides."""

    #: The listening settings' defaults for the extender (every thread may be in a bind at once); a client
    #: CA (``client_ca_file``) checks the scheduler's certificate (its ``tlsConfig.certFile``).
    bind: str = "0.0.0.0:8888"
    threads: int = 32
    log_level: str = "INFO"
    #: Path prefix of the verbs: ``<prefix>/filter``, ``/prioritize``, ``/bind`` (match the scheduler's urlPrefix).
    url_prefix: str = ""
    #: Kubeconfig file; empty: in-cluster, then ``$KUBECONFIG``.
    kubeconfig: str = ""
    #: Namespace of the NodeAllocationState objects.
    namespace: str = names.DEFAULT_NAMESPACE
    #: Placement of pods that do not say (``pack`` or ``spread``).
    default_placement: Placement = DEFAULT_PLACEMENT
    #: Release reservations whose pod is still unbound this long after ``reservedAt``.
    bind_grace_seconds: float = 60.0
    #: How often the reconcile loop runs (0 disables it).
    reconcile_interval_seconds: float = 30.0
    #: A node whose agent has not renewed its Lease for this long is not ready for RT pods (0: do not check).
    agent_lease_seconds: float = 40.0
    #: Server-side timeout of one watch request (the cache re-watches after it).
    watch_timeout_seconds: int = 300
    #: DRA mode: serve ``<prefix>/dra/prioritize``, scoring pods with RT ResourceClaims from the
    #: ResourceSlices and allocated claims it watches (manifests/scheduler/dra-scoring.yaml).
    dra_scoring: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.default_placement not in PLACEMENTS:
            raise ConfigError(
                f"default placement must be one of {', '.join(PLACEMENTS)}, got {self.default_placement!r}"
            )
        if self.url_prefix and not self.url_prefix.startswith("/"):
            raise ConfigError(f"the URL prefix must start with '/', got {self.url_prefix!r}")
        if self.agent_lease_seconds < 0:
            raise ConfigError(f"the agent lease bound must not be negative, got {self.agent_lease_seconds}")

    @property
    def prefix(self) -> str:
        """The URL prefix without a trailing slash."""
        return self.url_prefix.rstrip("/")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ExtenderConfig:
        """Settings from ``RTDRA_EXTENDER_<FIELD>`` variables, then ``overrides`` (flags) on top."""
        return dataclass_from_env(cls, Env(ENV_PREFIX, environ), overrides)
