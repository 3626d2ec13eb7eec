"""The DRA-mode contract (resource.k8s.io/v1 with consumable capacity).

In DRA mode a node's RT CPUs are devices of one ResourceSlice pool that the node
agent publishes, and the stock kube-scheduler's DRA allocator books bandwidth on
them: each device allows multiple allocations and has one capacity, its CPU's
deadline bandwidth in the kernel's fixed point (``rtdra.bandwidth``), so
"Σ consumed ≤ capacity per device" is exactly the per-CPU admission test the
extender runs in extender mode. This module names that contract once, for the
webhook (which writes claims' capacity requests), the agent (which publishes the
slices and prepares claims) and the extender (which may score DRA pods).
"""

from __future__ import annotations

from typing import Final

from rtdra.names import DOMAIN
from rtdra.request import Reservation

#: The DRA driver name, the DeviceClass name and the capacity's domain.
DRIVER: Final = DOMAIN
DEVICE_CLASS: Final = DOMAIN
#: The consumable capacity of each CPU device, in kernel bandwidth units (1 CPU = 1 << 20).
CAPACITY: Final = f"{DOMAIN}/bandwidth"
#: Device attributes a claim can select on (CEL: ``device.attributes["rt.resource.example.com"].cpu``).
ATTRIBUTE_CPU: Final = "cpu"
ATTRIBUTE_CORE: Final = "core"
#: The standard attribute name for a device's NUMA node (upstream ``resource.kubernetes.io``).
ATTRIBUTE_NUMA: Final = "resource.kubernetes.io/numaNode"
#: The opaque driver config's parameters, as the old driver's users wrote them.
PARAMETERS_API_VERSION: Final = f"{DOMAIN}/v1alpha1"
PARAMETERS_KIND: Final = "RtClaimParameters"


def device_name(cpu: int) -> str:
    """The device that stands for one CPU (DNS label)."""
    return f"cpu-{cpu}"


def cpu_of_device(name: str) -> int:
    """The CPU a device name stands for; ``ValueError`` for a name that is not ours."""
    prefix, _, number = name.partition("-")
    if prefix != "cpu" or not number.isdigit():
        raise ValueError(f"{name!r} is not an RT-DRA CPU device (expected cpu-<n>)")
    return int(number)


def capacity_request(r: Reservation) -> int:
    """What one claim consumes on each CPU it is given: the kernel-exact bandwidth, or the
    density runtime/deadline when the deadline is shorter than the period (the sufficient
    per-CPU EDF test that a sum of capacities can express)."""
    return r.density if r.constrained else r.bandwidth
