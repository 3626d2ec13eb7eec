"""What the agent and kubelet agree on outside any one protocol: kubelet's paths, the slots the agent advertises.

The agent's flag parsing (``agent.config``), its device plugin (``agent.deviceplugin``) and its DRA
plugin (``agent.dra.plugin``) all need them; they live here, apart from the plugins, so that
parsing flags does not load gRPC.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

#: kubelet's default ``--root-dir`` (its DRA plugin registry and plugin sockets live under it).
KUBELET_ROOT: Final = Path("/var/lib/kubelet")
#: kubelet's fixed device-plugin directory (k8s.io/kubelet deviceplugin/v1beta1 ``DevicePluginPath``).
DEVICE_PLUGIN_DIR: Final = KUBELET_ROOT / "device-plugins"
#: Slots of ``rt.resource.example.com/dl`` the device plugin advertises: how many RT containers kubelet
#: may run at once on the node. Not CPUs: bandwidth is admitted by the extender and the kernel, this
#: only has to be above any real count.
DEVICE_PLUGIN_DEVICES: Final = 256
