"""The webhook's reads from the cluster: the API connection is opened when a worker starts."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from webhook.admission import Lookups, LookupUnavailable
from webhook.app import create_app
from webhook.config import WebhookConfig
from webhook.lookups import warm_up


def test_warm_up_reads_a_namespace_in_the_background() -> None:
    asked: list[str] = []

    def labels(namespace: str) -> dict[str, str]:
        asked.append(namespace)
        return {}

    thread = warm_up(Lookups(namespace_labels=labels))
    assert thread is not None
    thread.join(10)
    assert asked == ["default"]


def test_a_warm_up_that_cannot_reach_the_api_only_logs(caplog: pytest.LogCaptureFixture) -> None:
    def labels(namespace: str) -> dict[str, str]:
        raise LookupUnavailable("the API server did not answer (ConnectionRefusedError)")

    with caplog.at_level(logging.WARNING, logger="webhook.lookups"):
        thread = warm_up(Lookups(namespace_labels=labels))
        assert thread is not None
        thread.join(10)
    assert "warming up the API connection: the API server did not answer" in caplog.text


def test_without_a_namespace_lookup_there_is_nothing_to_warm_up() -> None:
    assert warm_up(Lookups()) is None


def test_a_webhook_whose_api_is_unreachable_still_starts_and_serves(tmp_path: Path) -> None:
    # A kubeconfig naming a closed port: the worker's warm-up fails in the background, the app serves.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\nusers: [{name: u, user: {token: t}}]\n"
    )
    app = create_app(WebhookConfig(kubeconfig=str(kubeconfig)))
    assert app.test_client().get("/healthz").status_code == 200
