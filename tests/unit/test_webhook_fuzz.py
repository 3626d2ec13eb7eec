"""Property tests: whatever arrives, the webhook answers 200 or 400 - never a 500,
never a traceback - and never allows a request the core considers invalid."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import jsonpatch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtdra import names
from rtdra.request import InvalidRequest, parse_pod, read_pod_request
from webhook.admission import Lookups
from webhook.app import create_app
from webhook.config import WebhookConfig

CLAIMS = {"ok": {"count": 2, "runtime": 100, "period": 1000}, "bad": {"runtime": 5000, "period": 1000}, "odd": {"x": 1}}
APP = create_app(WebhookConfig(), Lookups(claim_parameters=lambda ns, name: CLAIMS.get(name)))
CLIENT = APP.test_client()
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

durations = st.one_of(
    st.integers(min_value=-5, max_value=10**20).map(str),
    st.tuples(st.integers(0, 10**7), st.sampled_from(["ns", "us", "µs", "ms", "s", "", "m", "US"])).map(
        lambda t: f"{t[0]}{t[1]}"
    ),
    st.text(max_size=8),
)
items = st.one_of(
    st.tuples(st.sampled_from(["runtime", "period", "deadline", "cpus", "bogus", ""]), durations).map(
        lambda t: f"{t[0]}={t[1]}"
    ),
    st.text(max_size=10),
)
container_values = st.one_of(st.lists(items, max_size=5).map(",".join), st.text(max_size=40))
container_names = st.sampled_from(["app", "side", "app", "side", "init", "ghost", "App", "a" * 70, "x/y", "~", ""])
annotation_keys = st.one_of(
    container_names.map(lambda n: names.CONTAINER_PREFIX + n),
    container_names.map(lambda n: names.CLAIM_PARAMETERS_PREFIX + n),
    container_names.map(lambda n: "cdi-devices.noderesource.dev/container." + n),  # no longer ours: left alone
    st.sampled_from([names.SPEC, names.ALLOCATION, names.PLACEMENT, "other/key", "a~b/c"]),
)
plausible_values = st.builds(
    lambda runtime, period, deadline, cpus: ",".join(
        [f"runtime={runtime}us", f"period={period}us"]
        + ([f"deadline={deadline}us"] if deadline is not None else [])
        + ([f"cpus={cpus}"] if cpus is not None else [])
    ),
    st.integers(0, 5000),
    st.integers(50, 5000),
    st.one_of(st.none(), st.integers(0, 5000)),
    st.one_of(st.none(), st.integers(0, 5)),
)
annotation_values = st.one_of(
    plausible_values,
    container_values,
    st.sampled_from(["ok", "bad", "odd", "missing", f"- {names.CDI_DEVICE_NAME}", "- [", "{}", "pack", "spread"]),
    st.just('{"app":{"runtime":1000000,"deadline":10000000,"period":10000000,"cpus":1}}'),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def pod(annotations: dict[str, str], env: Any = None, resources: Any = None) -> dict[str, Any]:
    app: dict[str, Any] = {"name": "app", "image": "x"}
    if env is not None:
        app["env"] = env
    if resources is not None:
        app["resources"] = resources
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": "default", "annotations": annotations},
        "spec": {
            "initContainers": [{"name": "init", "image": "x"}],
            "containers": [app, {"name": "side", "image": "x"}],
        },
    }


def review(obj: Any, **request: Any) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "fuzz",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "default",
            "operation": "CREATE",
            "userInfo": {"username": "fuzz"},
            "object": obj,
            **request,
        },
    }


def post(body: bytes) -> tuple[int, Any]:
    reply = CLIENT.post("/mutate", data=body, content_type="application/json")
    text = reply.get_data(as_text=True)
    assert reply.status_code in (200, 400), text
    assert "Traceback" not in text
    return reply.status_code, json.loads(text)


@SETTINGS
@given(
    annotations=st.dictionaries(annotation_keys, annotation_values, max_size=5),
    env=st.one_of(
        st.none(),
        st.just([]),
        st.lists(
            st.fixed_dictionaries({"name": st.sampled_from(["RT_CPUS", "A"]), "value": st.text(max_size=3)}), max_size=3
        ),
    ),
    resources=st.one_of(st.none(), st.just({}), st.just({"requests": {"cpu": "1"}}), st.just({"limits": None})),
)
def test_random_annotations_never_crash_and_never_allow_an_invalid_request(
    annotations: dict[str, str], env: Any, resources: Any
) -> None:
    check_admission(pod(annotations, env, resources))


@SETTINGS
@given(
    requests=st.dictionaries(st.sampled_from(["app", "side"]), plausible_values, min_size=1),
    extra=st.dictionaries(annotation_keys, annotation_values, max_size=1),
    env=st.one_of(st.none(), st.just([{"name": "RT_CPUS", "value": "7"}])),
)
def test_plausible_requests_are_patched_consistently_and_idempotently(
    requests: dict[str, str], extra: dict[str, str], env: Any
) -> None:
    annotations = {**extra, **{names.CONTAINER_PREFIX + name: value for name, value in requests.items()}}
    check_admission(pod(annotations, env))


def check_admission(original: dict[str, Any]) -> None:
    status, body = post(json.dumps(review(original)).encode())
    assert status == 200
    response = body["response"]
    assert response["uid"] == "fuzz"
    if not response["allowed"]:
        assert response["status"]["code"] in (400, 403, 422, 503) and response["status"]["message"]
        return
    patched = copy.deepcopy(original)
    if "patch" in response:
        patched = jsonpatch.apply_patch(patched, json.loads(base64.b64decode(response["patch"])))
    lookup = CLAIMS.get
    try:
        user_request = parse_pod(original, lambda ns, name: lookup(name))
    except InvalidRequest as err:
        raise AssertionError(f"allowed an invalid request: {err}") from None
    # what the extender and the agent will read is exactly what the user asked for
    assert read_pod_request(patched) == user_request
    assert names.ALLOCATION not in (patched["metadata"].get("annotations") or {})
    # and a second pass changes nothing
    _, again = post(json.dumps(review(patched)).encode())
    assert again["response"]["allowed"] and "patch" not in again["response"]


@SETTINGS
@given(obj=json_values, operation=st.sampled_from(["CREATE", "UPDATE", 5]), dry_run=st.sampled_from([True, False, "x"]))
def test_random_objects_in_a_review_are_answered_without_a_500(obj: Any, operation: Any, dry_run: Any) -> None:
    status, body = post(json.dumps(review(obj, operation=operation, dryRun=dry_run)).encode())
    if status == 200:
        assert body["response"]["uid"] == "fuzz"
        if isinstance(obj, dict) and operation == "CREATE" and body["response"]["allowed"]:
            assert "patch" not in body["response"]  # nothing real-time in random objects
    else:
        assert body["error"]


@SETTINGS
@given(body=st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200)))
def test_random_bodies_are_answered_with_200_or_400(body: bytes) -> None:
    post(body)
