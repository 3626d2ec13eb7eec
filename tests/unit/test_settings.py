"""The three services read their environment by the same rules (``rtdra.settings``)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config import parse_args
from extender.config import ExtenderConfig
from rtdra.settings import ConfigError
from webhook.config import WebhookConfig, WebhookServer

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ExtenderWithSwitch(ExtenderConfig):
    """The extender's configuration the day it gains a boolean setting."""

    switch: bool = True


@pytest.mark.parametrize(("text", "value"), [("false", False), ("OFF", False), ("0", False), ("yes", True)])
def test_a_boolean_setting_means_what_it_says_in_every_service(text: str, value: bool) -> None:
    assert ExtenderWithSwitch.from_env({"RTDRA_EXTENDER_SWITCH": text}).switch is value
    assert WebhookConfig.from_env({"RTDRA_WEBHOOK_VERIFY_NAMESPACE": text}).verify_namespace is value
    agent = parse_args(["--node-name", "n"], env={"RTDRA_AGENT_FAIL_OPEN": text})
    assert agent.fail_open is value


def test_a_value_that_is_not_a_boolean_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"RTDRA_EXTENDER_SWITCH='maybe': is not a boolean \(use true or false\)"):
        ExtenderWithSwitch.from_env({"RTDRA_EXTENDER_SWITCH": "maybe"})
    with pytest.raises(ConfigError, match="RTDRA_WEBHOOK_VERIFY_NAMESPACE='maybe'"):
        WebhookConfig.from_env({"RTDRA_WEBHOOK_VERIFY_NAMESPACE": "maybe"})


def test_both_http_services_read_how_they_listen_by_the_same_rules_and_flags_win() -> None:
    env = {
        "RTDRA_WEBHOOK_TLS_CERT": "c.pem",
        "RTDRA_WEBHOOK_TLS_KEY": "k.pem",
        "RTDRA_WEBHOOK_ACCESS_LOG": "off",
        "RTDRA_WEBHOOK_WORKERS": "3",
    }
    server = WebhookServer.from_env(env, workers=5)
    assert (server.tls_cert_file, server.tls_key_file, server.access_log, server.workers) == (
        "c.pem",
        "k.pem",
        False,
        5,
    )
    assert WebhookServer.from_env(env).workers == 3 and WebhookServer.from_env(env).bind == "0.0.0.0:8443"
    assert ExtenderConfig.from_env({"RTDRA_EXTENDER_ACCESS_LOG": "on"}).access_log is True
    with pytest.raises(ConfigError, match="RTDRA_WEBHOOK_ACCESS_LOG='maybe': is not a boolean"):
        WebhookServer.from_env({**env, "RTDRA_WEBHOOK_ACCESS_LOG": "maybe"})
    with pytest.raises(ConfigError, match="--tls-cert and --tls-key are required"):
        WebhookServer.from_env({})


def test_a_blank_variable_is_the_default() -> None:
    assert ExtenderWithSwitch.from_env({"RTDRA_EXTENDER_SWITCH": " ", "RTDRA_EXTENDER_WORKERS": ""}).switch is True


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"RTDRA_AGENT_PARTITIONED": "maybe"}, "RTDRA_AGENT_PARTITIONED='maybe': is not a boolean (use true or false)"),
        ({"RTDRA_AGENT_RECONCILE_INTERVAL": "soon"}, "RTDRA_AGENT_RECONCILE_INTERVAL='soon': is not a number"),
        ({"RTDRA_AGENT_CPUS": "0"}, "RTDRA_AGENT_CPUS='0': must be at least 1"),
    ],
)
def test_the_agent_refuses_a_bad_variable_in_one_line_with_status_2(env: dict[str, str], words: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "--node-name", "n", "--backend", "none"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == f"rtdra-agent: {words}\n"


def test_the_agent_that_cannot_create_its_state_directory_says_so_in_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    argv = ["--node-name", "n", "--backend", "none", "--state-dir", str(blocker / "state")]
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", *argv, "--nas-file", str(tmp_path / "nas.json")],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"rtdra-agent: creating the state directory {blocker / 'state'}: ")
