"""The RT benchmark's pure parts: rt-app's config and log, the scenario arithmetic, the image's extra files.

No root, no node: ``bench/bench_rt.py`` runs the real thing (``make bench-rt``); these catch a wrong
reading of rt-app's log or a capacity fill that is not at the limit before a three-minute run does.
"""

from __future__ import annotations

import importlib.util
import io
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hack import bench_image  # noqa: E402
from hack.images import image_layout  # noqa: E402
from rtdra.bandwidth import BW_UNIT, bandwidth  # noqa: E402
from rtdra.fit import fits_on_cpu  # noqa: E402
from rtdra.ledger import Slot  # noqa: E402


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_rt", REPO / "bench" / "bench_rt.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_rt"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _load_bench()

HEADER = "#idx perf run period start end rel_st slack c_duration c_period wu_lat"  # rt-app pads it; we split


def _row(run: int, start: int, end: int, slack: int, wu_lat: int, period: int = 10_000) -> str:
    fields = (0, 41666, run, end - start, start, end, start - 900_000, slack, 1000, period, wu_lat)
    return " ".join(f"{v:8d}" for v in fields)


def test_a_log_gives_each_job_its_release_on_the_grid_and_its_completion_from_the_slack() -> None:
    # Releases every 10 ms from t0 = 1_000_000 us. Job 0 ends early and sleeps; job 1 runs past the next
    # release (negative slack, no sleep, wu_lat 0); job 2 starts late and ends in time. `end` is taken a
    # couple of microseconds after the wake-up, as rt-app does.
    log = "\n".join(
        [
            "# Policy : SCHED_OTHER priority : 0",
            HEADER,
            _row(run=1000, start=1_000_050, end=1_010_032, slack=8_900, wu_lat=30),
            _row(run=11_900, start=1_010_032, end=1_022_001, slack=-2_000, wu_lat=0),
            _row(run=900, start=1_022_001, end=1_030_012, slack=7_000, wu_lat=10),
        ]
    )
    jobs = bench.parse_rtapp_log(log, deadline_us=10_000)
    assert [j.response_us for j in jobs] == [1_100, 12_000, 3_000]
    assert [j.met for j in jobs] == [True, False, True]
    assert [j.release_us - jobs[0].release_us for j in jobs] == [0, 10_000, 20_000]
    assert abs(jobs[0].release_us - 1_000_000) <= 2
    assert [j.start_us - j.release_us for j in jobs] == [48, 30, 1_999]  # t0 is 2 us late
    assert [j.run_us for j in jobs] == [1000, 11_900, 900]
    # A tighter deadline turns the slow job 2 into a miss: misses are response > D, nothing else.
    assert [j.met for j in bench.parse_rtapp_log(log, deadline_us=2_999)] == [True, False, False]


def test_a_log_line_that_is_not_rt_app_1_0s_is_an_error_not_a_skipped_job() -> None:
    with pytest.raises(ValueError, match=r"rt-app 1\.0"):
        bench.parse_rtapp_log(HEADER + "\n   0 1 2 3\n", deadline_us=10)
    assert bench.parse_rtapp_log(HEADER + "\n", deadline_us=10) == []


def test_calibration_takes_the_fastest_job() -> None:
    log = "\n".join([HEADER, _row(30_000, 1, 40_000, 0, 0), _row(22_400, 1, 40_000, 0, 0)])
    assert bench.ns_per_loop_of(log.replace("41666", "1000000")) == 22
    with pytest.raises(ValueError):
        bench.ns_per_loop_of(HEADER)


@pytest.mark.parametrize("capacity", [943_719, BW_UNIT, 500_000, 104_858])
@pytest.mark.parametrize("pods", [1, 4, 6])
def test_filling_to_capacity_leaves_less_than_one_nanosecond_of_runtime(capacity: int, pods: int) -> None:
    period = 10_000_000
    runtimes = bench.fill_to_capacity(capacity, period, pods)
    assert len(runtimes) == pods
    used = sum(bandwidth(q, period) for q in runtimes)
    assert used <= capacity
    assert used - bandwidth(runtimes[-1], period) + bandwidth(runtimes[-1] + 1, period) > capacity
    assert max(runtimes) - min(runtimes) <= period * pods // BW_UNIT + 1  # equal pods, up to rounding


@pytest.mark.parametrize(("pods", "deadline"), [(1, 5_000_000), (2, 5_000_000), (3, 2_000_000), (2, 10_000_000)])
def test_the_edf_limit_fits_and_one_nanosecond_more_does_not(pods: int, deadline: int) -> None:
    capacity, period = 943_719, 10_000_000
    q = bench.edf_limit(capacity, period, deadline, pods)
    fit = [Slot(0, q, deadline, period)] * pods
    over = [Slot(0, q + 1, deadline, period)] * pods
    assert fits_on_cpu(fit[:-1], fit[-1], capacity)
    assert not fits_on_cpu(over[:-1], over[-1], capacity)
    if deadline == period:  # implicit deadlines: the bandwidth alone is the limit
        assert q == bench.fill_to_capacity(capacity, period, pods)[0]


def test_the_rt_app_config_leaves_the_threads_policy_alone_and_logs_every_job() -> None:
    cfg = bench.rtapp_config("x", jobs=7, period_us=10_000, work_us=500, delay_us=5_000_000, ns_per_loop=22)
    g = cfg["global"]
    assert (g["default_policy"], g["calibration"], g["lock_pages"], g["logdir"]) == ("SCHED_OTHER", 22, False, "/bench")
    assert "log_size" not in g  # rt-app 1.0: no log_size = each job written as it ends
    task = cfg["tasks"][bench.WORKER]
    assert "policy" not in task and "priority" not in task
    assert (task["loop"], task["delay"]) == (7, 5_000_000)
    phase = task["phases"]["p"]
    assert list(phase) == ["loop", "run", "timer"]  # rt-app runs events in this order: work, then sleep
    assert phase["timer"] == {"ref": "unique", "period": 10_000, "mode": "absolute"}


def test_an_rt_workload_asks_for_two_slots_main_thread_and_worker() -> None:
    w = bench.rt_workload("a", 2_250_000, 10_000_000, 5_000_000)
    assert w.rt == "runtime=2250us,period=10ms,deadline=5ms,cpus=2"
    assert (w.runtime_ns, w.deadline_ns, w.period_ns) == (2_250_000, 5_000_000, 10_000_000)
    assert bench.rt_workload("b", 1_500_034, 10_000_000).rt == "runtime=1500034ns,period=10ms,cpus=2"


def test_statistics() -> None:
    jobs = [bench.Job(0, r, 10, 0, r) for r in (1, 2, 3, 4, 11)]
    s = bench.stats_of(jobs)
    assert (s.jobs, s.misses, s.p50_us, s.max_us, s.deadline_us) == (5, 1, 3, 11, 10)
    assert s.max_over_deadline == pytest.approx(1.1)
    assert bench.percentile([1, 2, 3, 4, 11], 0.99) == pytest.approx(4 + 7 * 0.96)


def test_the_bench_image_carries_extra_files_with_their_directories() -> None:
    files = {"usr/bin/rt-app": b"elf", "lib/x86_64-linux-gnu/libjson-c.so.5": b"lib"}
    entries = bench_image._entries(files)
    _base, base_digest = image_layout(b"busybox", ["sh"], b"pause")
    data, digest = image_layout(b"busybox", ["sh"], b"pause", "rt-dra.local/rt-bench:1", extra=entries)
    assert digest != base_digest
    assert (data, digest) == image_layout(b"busybox", ["sh"], b"pause", "rt-dra.local/rt-bench:1", extra=entries)
    with tarfile.open(fileobj=io.BytesIO(data)) as outer:
        layer_name = max(
            (m for m in outer.getmembers() if m.name.startswith("blobs/") and m.isfile()), key=lambda m: m.size
        )
        layer = outer.extractfile(layer_name)
        assert layer is not None
        with tarfile.open(fileobj=io.BytesIO(layer.read())) as inner:
            members = {m.name: m for m in inner.getmembers()}
    for d in ("usr", "usr/bin", "lib", "lib/x86_64-linux-gnu"):
        assert members[d].isdir()
    assert members["usr/bin/rt-app"].mode == 0o755
    assert "bin/sh" in members and "pause" in members


def test_ldd_lines_name_every_library_and_the_loader() -> None:
    out = """\tlinux-vdso.so.1 (0x00007ffd)
\tlibjson-c.so.5 => /lib/x86_64-linux-gnu/libjson-c.so.5 (0x00007fdb53355000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fdb5308e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007fdb53387000)
"""
    found = sorted({m.group(1) for line in out.splitlines() if (m := bench_image._LDD_PATH.search(line))})
    assert found == [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib/x86_64-linux-gnu/libjson-c.so.5",
        "/lib64/ld-linux-x86-64.so.2",
    ]


# --------------------------------------------------------------------------- why a job missed (bench/sched_trace.py)
from bench import sched_trace  # noqa: E402

TID = 4242
#: Lines as tracefs writes them (the instance's ``trace`` file, trace clock mono), around a release at 100.000000 s.
TRACE_HEAD = """# tracer: nop
#
# entries-in-buffer/entries-written: 9/9   #P:2
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
"""


def wakeup(ts: str, cpu: int = 0, current: str = "<idle>-0") -> str:
    return (
        f"          {current}    [00{cpu}] dN.5. {ts}: sched_wakeup: comm=rt-app pid={TID} prio=-1 target_cpu=00{cpu}"
    )


def switch(ts: str, prev: tuple[str, int, int, str], nxt: tuple[str, int, int], cpu: int = 0) -> str:
    (pc, pp, pprio, state), (nc, np_, nprio) = prev, nxt
    return (
        f"          {pc}-{pp}    [00{cpu}] d..2. {ts}: sched_switch: prev_comm={pc} prev_pid={pp} "
        f"prev_prio={pprio} prev_state={state} ==> next_comm={nc} next_pid={np_} next_prio={nprio}"
    )


IDLE = ("swapper/0", 0, 120)
WORKER = ("rt-app", TID, -1)


@dataclass(frozen=True)
class MissedJob:
    release_us: int
    completion_us: int


JOB = MissedJob(100_000_000, 100_012_000)  # released at 100 s, done 12 ms later: missed D = P = 10 ms


def explained(*lines: str, job: MissedJob = JOB) -> str:
    return sched_trace.explain(job, TID, 10_000, sched_trace.parse(TRACE_HEAD + "\n".join(lines)))


def test_tracefs_lines_are_read_on_the_microsecond() -> None:
    [wake, run] = sched_trace.parse(
        TRACE_HEAD + wakeup("100.000010") + "\n" + switch("100.000020", ("swapper/0", 0, 120, "R"), WORKER)
    )
    assert (wake.kind, wake.ts_us, wake.pid) == ("wakeup", 100_000_010, TID)
    assert (run.kind, run.ts_us, run.prev_comm, run.prev_state, run.next_pid, run.next_prio) == (
        "switch",
        100_000_020,
        "swapper/0",
        "R",
        TID,
        -1,
    )


def test_a_timer_that_fired_late_is_the_cause_before_anything_the_scheduler_did() -> None:
    assert explained(
        wakeup("100.010300"), switch("100.010310", (*IDLE, "R"), WORKER), switch("100.011900", (*WORKER, "S"), IDLE)
    ) == ("late timer (10.3 ms)")


def test_woken_on_time_but_run_late_names_the_task_it_waited_behind() -> None:
    assert explained(
        wakeup("100.000005"),
        switch("100.009500", ("kube-apiserver", 77, 120, "R"), WORKER),
        switch("100.011900", (*WORKER, "S"), IDLE),
    ) == ("waited for a CPU (9.5 ms, behind kube-apiserver)")


def test_run_again_only_at_the_next_period_is_a_throttle() -> None:
    assert explained(
        wakeup("100.000005"),
        switch("100.000010", (*IDLE, "R"), WORKER),
        switch("100.002010", (*WORKER, "R"), ("stress-ng", 99, 120)),  # runnable, yet a CFS task runs
        switch("100.010000", ("stress-ng", 99, 120, "R"), WORKER),  # back at the next period
        switch("100.011900", (*WORKER, "S"), IDLE),
    ) == ("throttled (8.0 ms off the CPU)")


def test_a_plain_worker_switched_out_runnable_was_preempted_not_throttled() -> None:
    lines = (
        wakeup("100.000005"),
        switch("100.000010", (*IDLE, "R"), ("rt-app", TID, 120)),
        switch("100.002010", ("rt-app", TID, 120, "R"), ("stress-ng", 99, 120)),
        switch("100.010000", ("stress-ng", 99, 120, "R"), ("rt-app", TID, 120)),
        switch("100.011900", ("rt-app", TID, 120, "S"), IDLE),
    )
    job_events = sched_trace.parse(TRACE_HEAD + "\n".join(lines))
    assert sched_trace.explain(JOB, TID, 10_000, job_events, deadline_task=False) == "preempted (stress-ng, 8.0 ms)"


def test_switched_out_runnable_for_another_deadline_task_is_named_so() -> None:
    assert explained(
        wakeup("100.000005"),
        switch("100.000010", (*IDLE, "R"), WORKER),
        switch("100.001000", (*WORKER, "R"), ("other-rt", 55, -1)),
        switch("100.009000", ("other-rt", 55, -1, "S"), WORKER),
        switch("100.011900", (*WORKER, "S"), IDLE),
    ) == ("deadline tasks first (other-rt, 8.0 ms)")


def test_a_job_whose_thread_never_slept_is_backlog_and_one_without_events_is_not_traced() -> None:
    # running since before the release: no wake-up in the window
    assert explained(switch("99.995000", (*IDLE, "R"), WORKER), switch("100.011900", (*WORKER, "S"), IDLE)) == (
        "backlog"
    )
    assert explained(wakeup("99.000000")) == "not traced"
    assert sched_trace.causes(["late timer (10.3 ms)", "late timer (7.0 ms)", "backlog"]) == {
        "late timer": 2,
        "backlog": 1,
    }
