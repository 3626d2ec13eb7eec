"""DRA mode, node side, without a cluster: the ResourceSlices the agent publishes, reading an allocated
ResourceClaim, the prepare decision and its capacity re-check, the per-claim CDI spec, the persisted
state, and the enforcer taking a container's slots from the claim its hook names.

Claims here are upstream ``resource.k8s.io/v1`` objects as kube-apiserver returns them after the
scheduler allocated them (``consumedCapacity`` as the quantity string the API writes, e.g. ``"1Mi"``).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import cdi, hook
from agent.backends.none import NoneBackend
from agent.config import parse_args
from agent.dra.claims import ClaimState, claim_key, plan
from agent.dra.plugin import DraPlugin
from agent.dra.prepare import Preparer, answer
from agent.enforce import Enforcer
from agent.server import HookServer
from agent.store import FileStore
from rtdra import dra, names
from rtdra.bandwidth import BW_UNIT
from rtdra.kube import StoreError
from rtdra.ledger import NodeLedger, Slot
from rtdra.request import Reservation
from tests.unit.test_agent_units import CONTAINERD, RecordingEvents, cdi_validator

NODE = "node-a"
CAPACITY = 996147  # what this kind of machine measures per CPU (95% of 1 << 20, minus the kernel's rounding)
PARAMS = {
    "apiVersion": dra.PARAMETERS_API_VERSION,
    "kind": dra.PARAMETERS_KIND,
    "spec": {"runtime": 2000, "period": 10000},
}


def claim(
    uid: str = "c-1",
    results: list[tuple[str, int, str | None]] | None = None,
    parameters: dict[str, Any] | None = PARAMS,
    *,
    name: str = "rt",
    pool: str = NODE,
) -> dict[str, Any]:
    """An allocated claim: ``results`` as (request, cpu, consumed quantity or None)."""
    results = results if results is not None else [("cpu", 0, str(dra.capacity_request(RES)))]
    config = []
    if parameters is not None:
        config = [{"source": "FromClaim", "requests": [], "opaque": {"driver": dra.DRIVER, "parameters": parameters}}]
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": "ns", "uid": uid},
        "spec": {"devices": {"requests": [{"name": "cpu", "exactly": {"deviceClassName": dra.DEVICE_CLASS}}]}},
        "status": {
            "allocation": {
                "devices": {
                    "results": [
                        {
                            "request": request,
                            "driver": dra.DRIVER,
                            "pool": pool,
                            "device": dra.device_name(cpu),
                            **({"consumedCapacity": {dra.CAPACITY: consumed}} if consumed is not None else {}),
                            "shareID": f"share-{uid}-{cpu}",
                        }
                        for request, cpu, consumed in results
                    ],
                    "config": config,
                }
            }
        },
    }


RES = Reservation(2_000_000, 10_000_000, 10_000_000)


# -- ResourceSlices ------------------------------------------------------------------------------------


def test_a_slice_device_is_a_shareable_cpu_with_its_measured_bandwidth_as_capacity() -> None:
    device = dra.slice_device(dra.CpuDevice(3, CAPACITY, core=1, numa=0))
    assert device == {
        "name": "cpu-3",
        "allowMultipleAllocations": True,
        "attributes": {"cpu": {"int": 3}, "core": {"int": 1}, "resource.kubernetes.io/numaNode": {"int": 0}},
        "capacity": {"rt.resource.example.com/bandwidth": {"value": str(CAPACITY)}},
    }


def test_unknown_topology_is_not_published() -> None:
    assert dra.slice_device(dra.CpuDevice(0, CAPACITY))["attributes"] == {"cpu": {"int": 0}}


def test_the_pool_is_one_slice_per_128_cpus_owned_by_the_node() -> None:
    devices = [dra.CpuDevice(cpu, CAPACITY) for cpu in range(130)]
    slices = dra.resource_slices(NODE, 7, devices, {"name": NODE, "uid": "node-uid"})
    assert [len(s["spec"]["devices"]) for s in slices] == [128, 2]
    for index, s in enumerate(slices):
        assert s["apiVersion"] == "resource.k8s.io/v1" and s["kind"] == "ResourceSlice"
        assert s["metadata"]["name"] == f"{NODE}-rt.resource.example.com-{index}"
        assert s["metadata"]["ownerReferences"] == [
            {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": "node-uid", "controller": True}
        ]
        assert s["spec"]["driver"] == dra.DRIVER and s["spec"]["nodeName"] == NODE
        assert s["spec"]["pool"] == {"name": NODE, "generation": 7, "resourceSliceCount": 2}
    assert slices[1]["spec"]["devices"][-1]["name"] == "cpu-129"


def test_a_node_without_rt_cpus_still_says_so_with_an_empty_slice() -> None:
    slices = dra.resource_slices(NODE, 1, [])
    assert len(slices) == 1 and slices[0]["spec"]["devices"] == []
    assert "ownerReferences" not in slices[0]["metadata"]


def test_pool_content_ignores_the_generation_but_not_a_capacity_change() -> None:
    published = dra.resource_slices(NODE, 3, [dra.CpuDevice(0, CAPACITY)])
    published[0]["metadata"]["resourceVersion"] = "42"  # what the API adds
    assert dra.same_pool_content(published, dra.resource_slices(NODE, 4, [dra.CpuDevice(0, CAPACITY)]))
    assert not dra.same_pool_content(published, dra.resource_slices(NODE, 3, [dra.CpuDevice(0, CAPACITY - 1)]))
    assert not dra.same_pool_content(published, dra.resource_slices(NODE, 3, [dra.CpuDevice(1, CAPACITY)]))
    whole = dra.resource_slices(NODE, 3, [dra.CpuDevice(0, BW_UNIT)])
    whole[0]["spec"]["devices"][0]["capacity"][dra.CAPACITY]["value"] = "1Mi"  # as the API gives it back
    assert dra.same_pool_content(whole, dra.resource_slices(NODE, 3, [dra.CpuDevice(0, BW_UNIT)]))


@pytest.mark.parametrize(
    ("text", "value"),
    [("1Mi", 1 << 20), ("209716", 209716), ("512Ki", 1 << 19), ("1e3", 1000), ("1k", 1000), ("1500m", 2), (7, 7)],
)
def test_quantities_read_as_the_api_writes_them(text: str | int, value: int) -> None:
    assert dra.parse_quantity(text) == value


def test_a_bad_quantity_is_refused() -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        dra.parse_quantity("12 apples")


# -- reading claims -----------------------------------------------------------------------------------


def test_the_claims_parameters_give_the_reservation_with_an_optional_deadline() -> None:
    assert dra.reservation_from_parameters(PARAMS, "x") == RES
    constrained = {**PARAMS, "spec": {"runtime": 2000, "period": 10000, "deadline": 5000}}
    assert dra.reservation_from_parameters(constrained, "x").deadline_ns == 5_000_000
    assert dra.reservation_from_parameters(None, "x") == Reservation(10_000, 100_000, 100_000)  # the seed's defaults


@pytest.mark.parametrize(
    ("parameters", "words"),
    [
        ({**PARAMS, "kind": "Other"}, "must be apiVersion rt.resource.example.com/v1alpha1, kind RtClaimParameters"),
        ({**PARAMS, "spec": {"runtime": 20000, "period": 10000}}, "runtime"),
        ({**PARAMS, "spec": {"runtime": 2000, "period": 10000, "deadline": 20000}}, "deadline"),
        ({**PARAMS, "spec": {"runtime": 2000, "period": 10000, "deadline": "5ms"}}, "whole number of microseconds"),
    ],
)
def test_bad_parameters_are_a_claim_error_in_words(parameters: dict[str, Any], words: str) -> None:
    with pytest.raises(dra.ClaimError, match=words):
        dra.reservation_from_parameters(parameters, "ResourceClaim ns/rt")


def test_class_config_is_overridden_by_the_claims_and_scoped_to_requests() -> None:
    obj = claim()
    from_class = {"source": "FromClass", "requests": [], "opaque": {"driver": dra.DRIVER, "parameters": {"a": 1}}}
    other = {"source": "FromClaim", "requests": ["gpu"], "opaque": {"driver": dra.DRIVER, "parameters": {"b": 2}}}
    devices = obj["status"]["allocation"]["devices"]
    devices["config"] = [devices["config"][0], other, from_class]
    assert dra.request_parameters(obj, "cpu") == PARAMS
    assert dra.request_parameters(obj, "gpu") == {"b": 2}
    devices["config"] = [from_class]
    assert dra.request_parameters(obj, "cpu/sub") == {"a": 1}


def test_results_of_other_drivers_are_not_ours_and_a_foreign_pool_is_refused() -> None:
    obj = claim()
    obj["status"]["allocation"]["devices"]["results"].append(
        {"request": "gpu", "driver": "gpu.example.com", "pool": "x", "device": "gpu-0"}
    )
    assert [d.device for d in dra.allocated_devices(obj, NODE)] == ["cpu-0"]
    with pytest.raises(dra.ClaimError, match="not on node other"):
        dra.allocated_devices(obj, "other")
    with pytest.raises(dra.ClaimError, match="not allocated"):
        dra.allocated_devices({**obj, "status": {}}, NODE)


# -- the prepare decision ------------------------------------------------------------------------------------


CAPS = {0: CAPACITY, 1: CAPACITY}


def test_plan_gives_each_request_its_cpus_timing_and_booking() -> None:
    need = dra.capacity_request(RES)
    prepared = plan(claim(results=[("cpu", 1, str(need)), ("cpu", 0, str(need))]), NODE, CAPS, {})
    (request,) = prepared.requests
    assert request.name == "cpu" and request.reservation == RES
    assert request.slots == (Slot(1, *_timing()), Slot(0, *_timing()))
    assert prepared.consumed_on(0) == prepared.consumed_on(1) == need


def _timing() -> tuple[int, int, int]:
    return RES.runtime_ns, RES.deadline_ns, RES.period_ns


def test_a_booking_smaller_than_the_reservation_is_refused() -> None:
    too_little = str(dra.capacity_request(RES) - 1)
    with pytest.raises(dra.ClaimError, match="capacity request must be at least"):
        plan(claim(results=[("cpu", 0, too_little)]), NODE, CAPS, {})


def test_a_constrained_deadline_must_book_its_density() -> None:
    constrained = {**PARAMS, "spec": {"runtime": 2000, "period": 10000, "deadline": 4000}}
    r = dra.reservation_from_parameters(constrained, "x")
    bandwidth_only = str(r.bandwidth)
    with pytest.raises(dra.ClaimError, match="capacity request"):
        plan(claim(results=[("cpu", 0, bandwidth_only)], parameters=constrained), NODE, CAPS, {})
    assert plan(claim(results=[("cpu", 0, str(r.density))], parameters=constrained), NODE, CAPS, {})


def test_a_result_without_consumed_capacity_booked_the_whole_cpu() -> None:
    prepared = plan(claim(results=[("cpu", 0, None)]), NODE, CAPS, {})
    assert prepared.consumed_on(0) == CAPACITY
    with pytest.raises(dra.ClaimError, match="does not fit"):
        plan(claim("c-2", results=[("cpu", 0, str(dra.capacity_request(RES)))]), NODE, CAPS, {prepared.uid: prepared})


def test_the_recheck_refuses_what_the_cpu_cannot_hold_and_counts_no_claim_twice() -> None:
    half = str(CAPACITY // 2 + 1)  # two of these overbook CPU 0: the scheduler's double allocation
    first = plan(claim("c-1", results=[("cpu", 0, half)]), NODE, CAPS, {})
    with pytest.raises(dra.ClaimError, match=r"CPU 0 has 996147 .* already book 498074 and this one books 498074"):
        plan(claim("c-2", results=[("cpu", 0, half)]), NODE, CAPS, {"c-1": first})
    assert plan(claim("c-1", results=[("cpu", 0, half)]), NODE, CAPS, {"c-1": first}) == first  # itself: no
    assert plan(claim("c-2", results=[("cpu", 1, half)]), NODE, CAPS, {"c-1": first})  # another CPU: fine


def test_a_device_that_is_not_an_rt_cpu_here_is_refused() -> None:
    with pytest.raises(dra.ClaimError, match="cpu-5 is not one of this node's RT CPUs"):
        plan(claim(results=[("cpu", 5, "1Ki")]), NODE, CAPS, {})


# -- the preparer: CDI spec, answer, state -------------------------------------------------------------------------


@pytest.fixture
def preparer(tmp_path: Path) -> Iterator[tuple[Preparer, dict[str, dict[str, Any]]]]:
    claims: dict[str, dict[str, Any]] = {}

    def read(namespace: str, name: str) -> dict[str, Any] | None:
        if name == "unreadable":
            raise StoreError("reading ns/unreadable (read_namespaced_resource_claim): 403 Forbidden", 403)
        return claims.get(f"{namespace}/{name}")

    released: list[str] = []
    state = ClaimState(tmp_path / "state" / "dra-claims.json")
    hook_argv = cdi.hook_command(tmp_path / "agent.sock", hook_dir=tmp_path / "hooks", python="/usr/bin/python3")
    p = Preparer(state, read, pool=NODE, capacities=CAPS, cdi_dir=tmp_path / "cdi", hook_argv=hook_argv)
    p.release_claim = released.append
    yield p, claims


def test_prepare_writes_a_valid_cdi_spec_whose_hooks_name_the_claim_and_answers_its_id(
    preparer: tuple[Preparer, dict[str, dict[str, Any]]], tmp_path: Path
) -> None:
    p, claims = preparer
    need = str(dra.capacity_request(RES))
    claims["ns/rt"] = claim(results=[("cpu", 0, need), ("cpu", 1, need)])
    devices = p.prepare("ns", "c-1", "rt")
    cdi_id = "rt.resource.example.com/cpu=claim-c-1-cpu"
    assert [(d.device_name, d.cdi_device_ids, d.request_names, d.share_id) for d in devices] == [
        ("cpu-0", (cdi_id,), ("cpu",), "share-c-1-0"),
        ("cpu-1", (), ("cpu",), "share-c-1-1"),
    ]
    spec = json.loads(cdi.claim_spec_path(tmp_path / "cdi", "c-1").read_text())
    cdi_validator().validate(spec)
    (device,) = spec["devices"]
    assert f"{spec['kind']}={device['name']}" == cdi_id
    edits = device["containerEdits"]
    assert sorted(edits["env"]) == sorted(f"{k}={v}" for k, v in names.container_env(*_timing(), 2).items())
    assert [(h["hookName"], h["args"][-4:]) for h in edits["hooks"]] == [
        ("createRuntime", ["--stage", "createRuntime", "--claim", "c-1/cpu"]),
        ("poststop", ["--stage", "poststop", "--claim", "c-1/cpu"]),
    ]


def test_prepare_is_idempotent_and_survives_a_restart(
    preparer: tuple[Preparer, dict[str, dict[str, Any]]], tmp_path: Path
) -> None:
    p, claims = preparer
    claims["ns/rt"] = claim()
    first = p.prepare("ns", "c-1", "rt")
    del claims["ns/rt"]  # not read again: the answer is the recorded one
    cdi.remove_claim_spec(tmp_path / "cdi", "c-1")
    assert p.prepare("ns", "c-1", "rt") == first
    assert cdi.claim_spec_path(tmp_path / "cdi", "c-1").exists()  # written again
    restarted = ClaimState(p.state.path)
    restarted.load()
    assert restarted.claims == p.state.claims
    assert restarted.slots(claim_key("c-1", "cpu")) == (Slot(0, *_timing()),)
    assert restarted.slots(claim_key("c-1", "other")) is None and restarted.slots("c-9/cpu") is None


def test_a_claim_recreated_under_the_same_name_is_refused(preparer: tuple[Preparer, dict[str, dict[str, Any]]]) -> None:
    p, claims = preparer
    claims["ns/rt"] = claim("c-new")
    with pytest.raises(dra.ClaimError, match="its uid is c-new, not c-old"):
        p.prepare("ns", "c-old", "rt")
    with pytest.raises(dra.ClaimError, match="ResourceClaim ns/missing: not found"):
        p.prepare("ns", "c-1", "missing")
    with pytest.raises(dra.ClaimError, match=r"ResourceClaim ns/unreadable: cannot read it: .*403 Forbidden$"):
        p.prepare("ns", "c-1", "unreadable")


def test_the_agents_claim_reader_says_none_for_a_missing_claim_and_one_line_for_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from agent.kubeapi import ClaimReader

    class Resource:
        def read_namespaced_resource_claim(self, name: str, namespace: str, **_: Any) -> Any:
            if name == "there":
                return type("Reply", (), {"data": json.dumps({"metadata": {"name": name, "uid": "u"}})})()
            raise ApiException(status=404 if name == "gone" else 500, reason="Not Found" if name == "gone" else "Oops")

    monkeypatch.setattr(client, "ResourceV1Api", lambda api: Resource())
    read = ClaimReader(client.ApiClient())
    assert read("ns", "there") == {"metadata": {"name": "there", "uid": "u"}}
    assert read("ns", "gone") is None
    with pytest.raises(StoreError) as failed:
        read("ns", "broken")
    assert str(failed.value) == "reading ns/broken (read_namespaced_resource_claim): 500 Oops"


def test_unprepare_releases_the_claims_containers_spec_and_record(
    preparer: tuple[Preparer, dict[str, dict[str, Any]]], tmp_path: Path
) -> None:
    p, claims = preparer
    claims["ns/rt"] = claim()
    p.prepare("ns", "c-1", "rt")
    p.unprepare("ns", "c-1", "rt")
    assert not cdi.claim_spec_path(tmp_path / "cdi", "c-1").exists()
    assert p.state.claims == {} and json.loads(p.state.path.read_text()) == {"claims": {}}
    p.unprepare("ns", "c-1", "rt")  # again: nothing left, no error
    assert p.release_claim.__self__ == ["c-1", "c-1"]  # type: ignore[attr-defined]  # both times: idempotent


def test_answer_puts_the_cdi_device_on_the_first_device_of_each_request() -> None:
    need = str(dra.capacity_request(RES))
    prepared = plan(claim(results=[("a", 0, need), ("b", 1, need), ("b", 0, need)]), NODE, CAPS, {})
    assert [(d.request_names, d.device_name, d.cdi_device_ids) for d in answer(prepared)] == [
        (("a",), "cpu-0", ("rt.resource.example.com/cpu=claim-c-1-a",)),
        (("b",), "cpu-1", ("rt.resource.example.com/cpu=claim-c-1-b",)),
        (("b",), "cpu-0", ()),
    ]


# -- the enforcer, for a container whose hook names a claim -------------------------------------------------


@pytest.fixture
def sleeper() -> Iterator[int]:
    proc = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def oci_state(pid: int, uid: str = "pod-1", container: str = "c") -> bytes:
    annotations = {**CONTAINERD, "io.kubernetes.cri.sandbox-uid": uid, "io.kubernetes.cri.container-name": container}
    return json.dumps({"id": f"ctr-{uid}-{container}", "pid": pid, "annotations": annotations}).encode()


def test_a_claims_container_takes_its_slots_from_the_claim_and_keeps_them_while_prepared(
    tmp_path: Path, sleeper: int
) -> None:
    store = FileStore(NODE, tmp_path / "nas.json")
    store.update(lambda _: NodeLedger(NODE, CAPS, ready=False, reason="DRA"))  # no NAS allocation at all
    state = ClaimState(tmp_path / "dra-claims.json")
    state.put(plan(claim(), NODE, CAPS, {}))
    enforcer = Enforcer(store, NoneBackend(), RecordingEvents(), tmp_path / "prepared.json", claim_slots=state.slots)
    enforcer.load()
    outcome = enforcer.handle("createRuntime", oci_state(sleeper), claim="c-1/cpu")
    assert outcome.ok, outcome.message
    held = enforcer.applied["pod-1"]["c"]
    assert held.claim == "c-1/cpu" and held.slots == (Slot(0, *_timing()),)
    assert json.loads((tmp_path / "prepared.json").read_text())["pod-1"]["containers"]["c"]["claim"] == "c-1/cpu"
    assert enforcer.handle("createRuntime", oci_state(sleeper), claim="c-1/cpu").message.endswith("already reserved")
    other = enforcer.handle("createRuntime", oci_state(sleeper, "pod-2"), claim="c-1/cpu")
    assert not other.ok and "already serves container c of pod uid pod-1" in other.message
    enforcer.reconcile()  # the NAS has no pods: a claim's container stays
    assert "c" in enforcer.applied["pod-1"]
    state.remove("c-1")
    enforcer.reconcile()
    assert enforcer.applied == {}


def test_a_claim_not_prepared_here_is_refused_and_unprepare_releases_its_containers(
    tmp_path: Path, sleeper: int
) -> None:
    store = FileStore(NODE, tmp_path / "nas.json")
    state = ClaimState(tmp_path / "dra-claims.json")
    enforcer = Enforcer(store, NoneBackend(), RecordingEvents(), tmp_path / "prepared.json", claim_slots=state.slots)
    enforcer.load()
    refused = enforcer.handle("createRuntime", oci_state(sleeper), claim="c-1/cpu")
    assert not refused.ok and f"DRA claim c-1/cpu is not prepared on node {NODE}" in refused.message
    state.put(plan(claim(), NODE, CAPS, {}))
    assert enforcer.handle("createRuntime", oci_state(sleeper), claim="c-1/cpu").ok
    assert enforcer.release_claim("c-1") == 1 and enforcer.applied == {}


def test_a_dra_nodes_nas_is_not_ready_with_its_reason() -> None:
    ledger = NodeLedger(NODE, CAPS, ready=False, reason="node serves RT pods through DRA")
    nas = ledger.to_nas()
    assert nas["status"] == "NotReady" and nas["statusReason"] == "node serves RT pods through DRA"
    assert NodeLedger.from_nas(nas).reason == ledger.reason
    assert "statusReason" not in NodeLedger(NODE, CAPS).to_nas()


def test_dra_mode_flags() -> None:
    config = parse_args(["--node-name", NODE, "--mode", "dra", "--kubelet-root-dir", "/k"])
    assert config.mode == "dra" and config.kubelet_root == Path("/k") and config.device_plugin_dir is None
    with pytest.raises(SystemExit):
        parse_args(["--node-name", NODE, "--mode", "dra", "--nas-file", "/x"])


def test_bandwidth_unit_is_the_capacitys_unit() -> None:
    assert dra.capacity_request(Reservation(1_000_000, 1_000_000, 1_000_000)) == BW_UNIT


def test_the_hook_hands_the_claim_it_carries_to_the_agent_over_its_socket(tmp_path: Path, sleeper: int) -> None:
    state = ClaimState(tmp_path / "dra-claims.json")
    state.put(plan(claim(), NODE, CAPS, {}))
    enforcer = Enforcer(
        FileStore(NODE, tmp_path / "nas.json"),
        NoneBackend(),
        RecordingEvents(),
        tmp_path / "prepared.json",
        claim_slots=state.slots,
    )
    enforcer.load()
    server = HookServer(tmp_path / "agent.sock", enforcer)
    server.start()
    try:
        socket_arg = ["--socket", str(tmp_path / "agent.sock")]
        assert hook.run([*socket_arg, "--stage", "createRuntime", "--claim", "c-1/cpu"], oci_state(sleeper)) == (0, "")
        assert enforcer.applied["pod-1"]["c"].claim == "c-1/cpu"
        code, line = hook.run([*socket_arg, "--claim", "c-9/cpu"], oci_state(sleeper, "pod-2"))
        assert code == 1 and "DRA claim c-9/cpu is not prepared" in line
        assert hook.run([*socket_arg, "--stage", "poststop", "--claim", "c-1/cpu"], oci_state(sleeper)) == (0, "")
        assert enforcer.applied == {}
    finally:
        server.stop()


def test_a_kubelet_root_too_deep_for_a_unix_socket_is_refused_in_words(
    preparer: tuple[Preparer, dict[str, dict[str, Any]]], tmp_path: Path
) -> None:
    p, _ = preparer
    plugin = DraPlugin(p, kubelet_root=tmp_path / ("d" * 80))
    with pytest.raises(OSError, match=r"at most 107 bytes; give kubelet .* a shorter --root-dir"):
        plugin.start()


def test_the_slice_publisher_fails_in_one_line_naming_the_step_and_ignores_a_slice_already_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from agent.dra.slices import SlicePublisher

    class Objects:
        def list_cluster_custom_object(self, *_: Any, **__: Any) -> Any:
            raise ApiException(status=403, reason="Forbidden")

        def delete_cluster_custom_object(self, *_: Any, **__: Any) -> Any:
            raise ApiException(status=404, reason="Not Found")

    monkeypatch.setattr(client, "CustomObjectsApi", lambda api: Objects())
    publisher = SlicePublisher(client.ApiClient(), NODE, list)
    with pytest.raises(StoreError) as failed:
        publisher.sync()
    assert str(failed.value) == "listing the node's ResourceSlices: 403 Forbidden"
    publisher._delete("gone-slice")  # already deleted: nothing to do
