"""Connecting to the Kubernetes API, the same way in every component.

``--kubeconfig FILE`` wins; without it we use the in-cluster service account
when running in a pod, then ``$KUBECONFIG`` / ``~/.kube/config``.
"""

from __future__ import annotations

import os

from kubernetes import client, config


def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """An API client for ``kubeconfig``, else in-cluster, else the default kubeconfig."""
    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
    return config.new_client_from_config(config_file=os.environ.get("KUBECONFIG") or None)
