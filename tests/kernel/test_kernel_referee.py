"""The kernel as referee: RT-DRA's node-wide verdict must be the kernel's.

For seeded random sets of reservations, each one is put on a real sleeping
process with ``sched_setattr(SCHED_DEADLINE)``; before each call the model
(``rtdra.fit.fits_root_domain`` over ``rtdra.bandwidth`` arithmetic, with the
root-domain capacity ``rtdra.host`` read or measured on this machine) predicts
admitted or EBUSY, and the kernel's answer must agree, task by task. Some
admitted tasks are released (killed) along the way so release accounting is
refereed too.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rtdra import host, sched
from rtdra.bandwidth import BW_UNIT, NSEC_PER_MSEC, NSEC_PER_USEC, bandwidth
from rtdra.fit import fits_root_domain

pytestmark = pytest.mark.kernel

SEEDS = [1, 2, 3, 5, 8, 13]


def random_reservation(rng: random.Random) -> tuple[int, int, int]:
    """``(runtime, deadline, period)`` in ns: valid for the kernel, 2%..70% of a CPU."""
    period = rng.choice([rng.randint(100 * NSEC_PER_USEC, 2 * NSEC_PER_MSEC), rng.randint(1, 1000) * NSEC_PER_MSEC])
    runtime = max(1024, int(period * rng.uniform(0.02, 0.70)))
    deadline = rng.randint(runtime, period)
    return runtime, deadline, period


def kernel_admits(pid: int, runtime: int, deadline: int, period: int) -> bool:
    try:
        sched.sched_setattr(pid, sched.deadline(runtime, deadline, period))
    except sched.AdmissionRefused:
        return False
    return True


@pytest.mark.parametrize("seed", SEEDS)
def test_model_root_domain_verdict_equals_the_kernels_task_by_task(
    seed: int, sleepers: Any, dl_clean: int | None
) -> None:
    rng = random.Random(seed)
    cpus = frozenset(host.online_cpus())
    capacity = host.discover_capacity(cpus)
    assert capacity.tasks_bw == 0, f"other deadline tasks are alive: {capacity.notes}"
    root_free = capacity.free_bw
    admitted: dict[int, int] = {}  # pid -> bandwidth
    verdicts = []
    for step in range(24):
        if admitted and rng.random() < 0.2:
            pid = rng.choice(sorted(admitted))
            sleepers.kill(pid)  # killed while SCHED_DEADLINE: released at once
            del admitted[pid]
            continue
        runtime, deadline, period = random_reservation(rng)
        bw = bandwidth(runtime, period)
        model = fits_root_domain(sum(admitted.values()), bw, root_free)
        pid = sleepers.spawn(cpus)
        kernel = kernel_admits(pid, runtime, deadline, period)
        verdicts.append(kernel)
        assert model == kernel, (
            f"seed {seed} step {step}: model says {'admit' if model else 'EBUSY'}, kernel says "
            f"{'admit' if kernel else 'EBUSY'} for runtime={runtime} period={period} (bw {bw}); "
            f"held {sum(admitted.values())} of {root_free} ({capacity.source})"
        )
        if kernel:
            admitted[pid] = bw
            attr = sched.sched_getattr(pid)
            assert (attr.policy, attr.runtime_ns, attr.deadline_ns, attr.period_ns) == (
                sched.SCHED_DEADLINE,
                runtime,
                deadline,
                period,
            )
        else:
            sleepers.kill(pid)
    assert True in verdicts and False in verdicts, "a round must exercise both admission and refusal"


def test_model_and_kernel_agree_at_the_exact_edge_of_the_root_domain(sleepers: Any, dl_clean: int | None) -> None:
    cpus = frozenset(host.online_cpus())
    capacity = host.discover_capacity(cpus)
    period = 1 << 30  # bandwidth k is runtime k << 10 exactly
    held = 0
    while capacity.free_bw - held >= BW_UNIT:
        assert kernel_admits(sleepers.spawn(cpus), period, period, period)
        held += BW_UNIT
    rest = capacity.free_bw - held
    assert fits_root_domain(held, rest, capacity.free_bw)
    assert not fits_root_domain(held, rest + 1, capacity.free_bw)
    edge = sleepers.spawn(cpus)
    assert not kernel_admits(edge, (rest + 1) << 10, period, period), "one unit over the capacity was admitted"
    assert kernel_admits(edge, rest << 10, period, period), "the last unit of capacity was refused"


#: Each child imports, says it is ready, waits for the word, then measures - so the measurements overlap.
MEASURE_WHEN_TOLD = (
    "import json, sys\n"
    "from rtdra import host\n"
    "print('ready', flush=True)\n"
    "sys.stdin.readline()\n"
    "c = host.discover_capacity()\n"
    "print(json.dumps([c.free_bw, c.root_domain_capacity, min(c.per_cpu.values())]), flush=True)\n"
)


def test_processes_measuring_at_once_each_measure_what_one_alone_does(dl_clean: int | None) -> None:
    """Agents starting together on one machine (the test stack's real and simulated nodes) probe in turn.

    Unserialised, each probe counted the others' helpers as taken: 943719, 786431 and 419431 per CPU
    where one alone measures 943719 (``rtdra.host.measuring``).
    """
    alone = host.discover_capacity()
    assert alone.tasks_bw == 0, f"other deadline tasks are alive: {alone.notes}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", MEASURE_WHEN_TOLD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        for _ in range(3)
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        measured = [json.loads(child.communicate(timeout=120)[0]) for child in children]
    finally:
        for child in children:  # the group too: a child killed mid-probe must not leave its helpers reserved
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert measured == [[alone.free_bw, alone.root_domain_capacity, min(alone.per_cpu.values())]] * 3
