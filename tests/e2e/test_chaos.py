"""The chaos suite's short form (``hack/chaos.py --short``): faults one after another during a burst of RT
pods larger than the cluster's bandwidth, then the invariants read from the API and the kernel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hack import chaos

pytestmark = [pytest.mark.e2e, pytest.mark.kernel, pytest.mark.slow]


def test_faults_during_a_burst_leave_nothing_overcommitted_leaked_or_stuck(k8s_binaries: Any, tmp_path: Path) -> None:
    report = chaos.run(
        tmp_path / "cluster", pods=40, faults=chaos.SHORT_FAULTS, log=lambda _m: None, binaries=k8s_binaries
    )
    text = "\n".join(report.lines())
    assert report.faults == list(chaos.SHORT_FAULTS), text
    assert report.pods_created == 40, text
    assert report.bound > 0 and report.pending > 0, f"the burst must overfill the cluster:\n{text}"
    assert report.refused_without_webhook == 1, f"failurePolicy Fail refuses RT pods without the webhook:\n{text}"
    assert not report.broken, text
