"""Property tests of the extender's wire: whatever arrives at /filter, /prioritize and /bind, the answer is
200 or 400 with a JSON body - never a 500, never a traceback - and no decision is made on garbage: a node
passes the filter only for a request the core reads as valid and that fits it; bind is attempted only with
well-formed arguments."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extender.app import create_app
from extender.bind import BindError, BindOutcome
from extender.cache import LedgerCache
from extender.config import ExtenderConfig
from rtdra import names
from rtdra.ledger import NodeLedger
from rtdra.placement import check_pod
from rtdra.request import InvalidRequest, read_pod_request

CAP = 943719
LEDGERS = {
    "n1": NodeLedger("n1", {0: CAP, 1: CAP}),
    "n2": NodeLedger("n2", {0: CAP}, ready=False),
    "full": NodeLedger("full", {0: 0}),
}
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class RecordingBinder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, str]] = []

    def bind(self, namespace: str, name: str, uid: str, node: str) -> BindOutcome:
        self.calls.append((namespace, name, uid, node))
        if node not in LEDGERS:
            raise BindError(f"node {node} has no ledger")
        return BindOutcome(None)


BINDER = RecordingBinder()
CLIENT = create_app(ExtenderConfig(), cache=LedgerCache(LEDGERS.values()), binder=BINDER).test_client()  # type: ignore[arg-type]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
values = st.one_of(
    st.sampled_from(["runtime=2ms,period=10ms", "runtime=2ms,period=10ms,cpus=2", "runtime=20ms,period=10ms", ""]),
    st.text(max_size=30),
)
keys = st.sampled_from(
    [names.CONTAINER_PREFIX + "app", names.CONTAINER_PREFIX + "ghost", names.SPEC, names.PLACEMENT, "other/x"]
)
pods = st.one_of(
    st.builds(
        lambda annotations, containers: {
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "annotations": annotations},
            "spec": {"containers": containers},
        },
        st.dictionaries(keys, values, max_size=3),
        st.one_of(st.just([{"name": "app"}]), st.lists(json_values, max_size=2), json_values),
    ),
    json_values,
)
node_names = st.lists(st.sampled_from(["n1", "n2", "full", "ghost", ""]), max_size=4)
args = st.one_of(
    st.builds(lambda pod, nodes: {"Pod": pod, "NodeNames": nodes, "Nodes": None}, pods, node_names),
    st.builds(
        lambda pod, nodes: {"Pod": pod, "Nodes": {"items": [{"metadata": {"name": n}} for n in nodes]}},
        pods,
        node_names,
    ),
    st.dictionaries(st.sampled_from(["Pod", "Nodes", "NodeNames", "x"]), json_values, max_size=3),
    json_values,
)
bodies = st.one_of(args.map(json.dumps), st.binary(max_size=50), st.text(max_size=50).map(str.encode))


def post(verb: str, body: bytes | str) -> Any:
    reply = CLIENT.post(f"/{verb}", data=body, content_type="application/json")
    assert reply.status_code in (200, 400), (reply.status_code, reply.data[:500])
    answer = reply.get_json()
    assert isinstance(answer, (dict, list)), reply.data[:200]
    assert b"Traceback" not in reply.data
    return answer


def valid_request(pod: Any) -> Any:
    try:
        return read_pod_request(pod)
    except (InvalidRequest, AttributeError, TypeError, ValueError):
        return None


@SETTINGS
@given(bodies)
def test_filter_answers_every_body_and_passes_nodes_only_for_a_valid_request_that_fits(body: bytes | str) -> None:
    answer = post("filter", body)
    if "Error" in answer and answer.get("Error"):
        return
    passed = answer.get("NodeNames") or [n["metadata"]["name"] for n in (answer.get("Nodes") or {}).get("items", [])]
    if not passed:
        return
    request_body = json.loads(body)
    request = valid_request(request_body["Pod"])
    if request is None:  # not an RT pod: the extender has no say, every candidate passes
        return
    for node in passed:
        assert node in LEDGERS and LEDGERS[node].ready and check_pod(LEDGERS[node], request) is None, node


def asked_names(candidates: Any) -> set[str]:
    """The node names a body offers, however malformed the rest of it (a fuzzed ``Nodes`` may be ``true``)."""
    if not isinstance(candidates, dict):
        return set()
    names = candidates.get("NodeNames")
    found = {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()
    nodes = candidates.get("Nodes")
    items = nodes.get("items") if isinstance(nodes, dict) else None
    for node in items if isinstance(items, list) else []:
        metadata = node.get("metadata") if isinstance(node, dict) else None
        if isinstance(metadata, dict) and isinstance(metadata.get("name"), str):
            found.add(metadata["name"])
    return found


@SETTINGS
@given(bodies)
def test_prioritize_answers_every_body_with_scores_for_the_candidates_only(body: bytes | str) -> None:
    answer = post("prioritize", body)
    if isinstance(answer, list):
        assert {entry["Host"] for entry in answer} <= asked_names(json.loads(body))
        assert all(0 <= entry["Score"] <= 10 for entry in answer)


binding_args = st.one_of(
    st.fixed_dictionaries(
        {
            "PodName": st.one_of(st.just("p"), json_values),
            "PodNamespace": st.one_of(st.just("ns"), json_values),
            "PodUID": st.one_of(st.just("u"), json_values),
            "Node": st.one_of(st.sampled_from(["n1", "ghost"]), json_values),
        }
    ),
    json_values,
)


@SETTINGS
@given(st.one_of(binding_args.map(json.dumps), st.binary(max_size=50)))
def test_bind_answers_every_body_and_binds_only_well_formed_arguments(body: bytes | str) -> None:
    before = len(BINDER.calls)
    answer = post("bind", body)
    if len(BINDER.calls) > before:
        namespace, name, uid, node = BINDER.calls[-1]
        assert all(isinstance(v, str) for v in (namespace, name, uid, node)) and namespace and name and node
        assert answer == {"Error": ""} if node in LEDGERS else answer["Error"]
    else:
        assert answer.get("Error"), answer


def test_a_pod_whose_containers_are_not_a_list_is_refused_in_words_not_a_500() -> None:
    """Found by the filter's property test in a full run: ``"containers": 1`` was a TypeError (HTTP 500)."""
    for containers in (1, True, "app", {"name": "app"}):
        pod = {
            "metadata": {
                "name": "p",
                "namespace": "ns",
                "uid": "u",
                "annotations": {names.CONTAINER_PREFIX + "app": "runtime=2ms,period=10ms"},
            },
            "spec": {"containers": containers},
        }
        for verb in ("filter", "prioritize"):
            answer = post(verb, json.dumps({"Pod": pod, "NodeNames": ["n1"], "Nodes": None}))
            if verb == "filter":
                assert (
                    answer["NodeNames"] in (None, [])
                    and "not a container of this pod" in answer["FailedAndUnresolvableNodes"]["n1"]
                ), answer
