"""The device plugin's RPCs (``v1beta1.DevicePlugin``): what kubelet asks, what the agent answers.

Each answer is a function of the slot count alone; the serving, registering and
re-registering are :mod:`agent.deviceplugin.plugin`'s.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Final

import grpc

from agent._generated.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc
from rtdra import names

#: ``Device.health`` values (upstream ``constants.go``).
HEALTHY: Final = "Healthy"
#: How often an open ListAndWatch stream checks whether it should end.
STREAM_CHECK_S: Final = 0.5


def device_ids(count: int) -> list[str]:
    """The slots' IDs: ``slot-0`` .. ``slot-<count-1>`` (upstream allows at most 63 characters)."""
    return [f"slot-{index}" for index in range(count)]


def container_allocation(cdi_device: bool = True) -> api_pb2.ContainerAllocateResponse:
    """What every container that requested a slot gets: our CDI device, nothing else.

    Nothing at all when the agent hears of container starts over NRI (``agent.nri``): the slot
    still routes and counts the pod, and no hook process runs.
    """
    if not cdi_device:
        return api_pb2.ContainerAllocateResponse()
    return api_pb2.ContainerAllocateResponse(cdi_devices=[api_pb2.CDIDevice(name=names.CDI_DEVICE_NAME)])


class DevicePluginService(api_pb2_grpc.DevicePluginServicer):
    """``count`` healthy slots of the routing resource; each allocation is the CDI device.

    :meth:`close` ends the open ListAndWatch streams (kubelet then sees the plugin gone).
    """

    def __init__(self, count: int, *, cdi_device: bool = True) -> None:
        if count <= 0:
            raise ValueError(f"a device plugin needs at least one device, not {count}")
        self.count = count
        self.cdi_device = cdi_device
        self._closed = threading.Event()

    def close(self) -> None:
        self._closed.set()

    def GetDevicePluginOptions(
        self, request: api_pb2.Empty, context: grpc.ServicerContext
    ) -> api_pb2.DevicePluginOptions:
        return options()

    def ListAndWatch(
        self, request: api_pb2.Empty, context: grpc.ServicerContext
    ) -> Iterator[api_pb2.ListAndWatchResponse]:
        yield api_pb2.ListAndWatchResponse(
            devices=[api_pb2.Device(ID=device_id, health=HEALTHY) for device_id in device_ids(self.count)]
        )
        # The slots never change: hold the stream open (kubelet reads a closed one as the plugin gone).
        while context.is_active() and not self._closed.wait(STREAM_CHECK_S):
            pass

    def GetPreferredAllocation(
        self, request: api_pb2.PreferredAllocationRequest, context: grpc.ServicerContext
    ) -> api_pb2.PreferredAllocationResponse:
        # Not advertised (options()); answered anyway: the first slots offered, as kubelet would pick.
        return api_pb2.PreferredAllocationResponse(
            container_responses=[
                api_pb2.ContainerPreferredAllocationResponse(
                    deviceIDs=[
                        *r.must_include_deviceIDs,
                        *[d for d in r.available_deviceIDs if d not in r.must_include_deviceIDs][
                            : max(0, r.allocation_size - len(r.must_include_deviceIDs))
                        ],
                    ]
                )
                for r in request.container_requests
            ]
        )

    def Allocate(self, request: api_pb2.AllocateRequest, context: grpc.ServicerContext) -> api_pb2.AllocateResponse:
        return api_pb2.AllocateResponse(
            container_responses=[container_allocation(self.cdi_device) for _ in request.container_requests]
        )

    def PreStartContainer(
        self, request: api_pb2.PreStartContainerRequest, context: grpc.ServicerContext
    ) -> api_pb2.PreStartContainerResponse:
        return api_pb2.PreStartContainerResponse()


def options() -> api_pb2.DevicePluginOptions:
    """Neither PreStartContainer nor GetPreferredAllocation is needed: all slots are the same."""
    return api_pb2.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=False)
