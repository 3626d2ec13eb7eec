"""The names RT-DRA shares with Kubernetes: annotation keys, API groups,
resource names, environment variables.

Every component reads these from here so that the wire contract between the
webhook, the extender and the node agent is written down exactly once.
"""

from typing import Final

DOMAIN: Final = "rt.resource.example.com"
PREFIX: Final = f"{DOMAIN}/"

# User-facing request annotations.
CONTAINER_PREFIX: Final = f"{PREFIX}container."
CLAIM_PARAMETERS_PREFIX: Final = f"{PREFIX}claim-parameters."
PLACEMENT: Final = f"{PREFIX}placement"

# Written by RT-DRA only (a user-supplied value is replaced or refused).
SPEC: Final = f"{PREFIX}spec"
ALLOCATION: Final = f"{PREFIX}allocation"
#: Touched on pending RT pods after bandwidth is released, so kube-scheduler
#: tries them again (it never sees a ledger change by itself).
REQUEUE: Final = f"{PREFIX}requeue"
#: Set by the extender's reconciler on a pod that is still unbound after the bind grace period, before
#: it releases the pod's reservation: ``{"node": N, "reservedAt": T}`` names the released reservation,
#: and the write changes the pod's resourceVersion, so a bind that stalled holding it (its Binding is
#: conditional on that version) cannot complete, and one that reads the pod again sees it released.
RELEASED: Final = f"{PREFIX}released"

# CDI: our device (the agent's device plugin hands it to every container that requests DL_RESOURCE).
CDI_KIND: Final = f"{DOMAIN}/cpu"
CDI_DEVICE: Final = "deadline"
CDI_DEVICE_NAME: Final = f"{CDI_KIND}={CDI_DEVICE}"

# The extended resource each RT container requests: it routes the pod to the extender, and it is
# the agent's kubelet device plugin resource (its allocation carries the CDI device).
DL_RESOURCE: Final = f"{DOMAIN}/dl"
# Namespace label that opts a namespace in.
NAMESPACE_OPT_IN_LABEL: Final = f"{DOMAIN}/enabled"

# Environment injected into real-time containers.
ENV_RUNTIME: Final = "RT_RUNTIME_NS"
ENV_DEADLINE: Final = "RT_DEADLINE_NS"
ENV_PERIOD: Final = "RT_PERIOD_NS"
ENV_CPUS: Final = "RT_CPUS"


def container_env(runtime_ns: int, deadline_ns: int, period_ns: int, cpus: int) -> dict[str, str]:
    """The environment an RT container is given (values are strings, as in a pod): by the webhook,
    or by the agent's NRI plugin for a pod that bypassed it."""
    return {
        ENV_RUNTIME: str(runtime_ns),
        ENV_DEADLINE: str(deadline_ns),
        ENV_PERIOD: str(period_ns),
        ENV_CPUS: str(cpus),
    }


# The ledger (the seed driver's NodeAllocationState) and claim parameters.
NAS_GROUP: Final = f"nas.{DOMAIN}"
NAS_VERSION: Final = "v1alpha1"
NAS_PLURAL: Final = "nodeallocationstates"
NAS_KIND: Final = "NodeAllocationState"
CLAIM_PARAMETERS_GROUP: Final = DOMAIN
CLAIM_PARAMETERS_VERSION: Final = "v1alpha1"
CLAIM_PARAMETERS_PLURAL: Final = "rtclaimparameters"
CLAIM_PARAMETERS_KIND: Final = "RtClaimParameters"

DEFAULT_NAMESPACE: Final = "rt-dra"
