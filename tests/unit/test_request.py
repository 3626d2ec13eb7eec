"""The request model: every parse and validation rule, with the exact error text."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtdra import names
from rtdra.request import (
    InvalidRequest,
    KernelLimits,
    PodRequest,
    Reservation,
    parse_container_value,
    parse_duration,
    parse_pod,
    read_pod_request,
    reservation_from_claim_parameters,
)

MS = 1_000_000
US = 1_000


def errors(value: str, container: str = "ctr0") -> list[str]:
    with pytest.raises(InvalidRequest) as info:
        parse_container_value(container, value)
    return [str(p) for p in info.value.problems]


def pod(annotations: dict[str, str], containers: tuple[str, ...] = ("ctr0",), **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "rt", "annotations": annotations},
        "spec": {"containers": [{"name": c, "image": "busybox"} for c in containers], **spec},
    }


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1024ns", 1024),
        ("500us", 500 * US),
        ("500µs", 500 * US),
        ("2ms", 2 * MS),
        ("1s", 1_000_000_000),
        ("100", 100 * US),  # a bare integer is microseconds, the seed's unit
        (" 7 ms ", 7 * MS),
        ("10MS", 10 * MS),
        ("0010us", 10 * US),
    ],
)
def test_durations_take_every_unit_and_bare_microseconds(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "has no value"),
        ("-5ms", "must not be negative, got -5ms"),
        ("1.5ms", "must be a whole number, got 1.5ms (use a smaller unit, e.g. 1500us rather than 1.5ms)"),
        ("10m", "has unknown unit 'm' (use ns, us, ms or s)"),
        ("ms", "'ms' is not a duration (write e.g. 500us, 2ms or 1s)"),
        ("1e3us", "'1e3us' is not a duration (write e.g. 500us, 2ms or 1s)"),
        ("9223372036854775808ns", "is too large (at most 9223372036854775807ns)"),
        ("9" * 5000, "is too large (at most 9223372036854775807ns)"),
    ],
)
def test_bad_durations_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + __import__("re").escape(message) + "$"):
        parse_duration(text)


def test_container_value_defaults_deadline_to_period_and_cpus_to_one() -> None:
    assert parse_container_value("c", "runtime=2ms,period=10ms") == Reservation(2 * MS, 10 * MS, 10 * MS, 1)


def test_container_value_reads_every_key_in_any_order_with_spaces() -> None:
    assert parse_container_value("c", " cpus = 2 , deadline=5ms,period=10ms , runtime=1ms") == Reservation(
        1 * MS, 5 * MS, 10 * MS, 2
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ['container "ctr0": the request is empty (write e.g. runtime=1ms,period=10ms)']),
        ("runtime=1ms", ['container "ctr0", period: is required']),
        ("period=1ms", ['container "ctr0", runtime: is required']),
        (
            "runtime=1ms,,period=10ms",
            ["container \"ctr0\": empty item in 'runtime=1ms,,period=10ms' (remove the extra comma)"],
        ),
        (
            "runtime=1ms,period=10ms,budget=3",
            ["container \"ctr0\": 'budget' is not a known key (use runtime, period, deadline, cpus)"],
        ),
        ("runtime=1ms,runtime=2ms,period=10ms", ['container "ctr0", runtime: is given more than once']),
        ("runtime=,period=10ms", ['container "ctr0", runtime: has no value']),
        ("runtime=1ms,period=10ms,oops", ["container \"ctr0\": 'oops' is not of the form key=value"]),
        (
            "runtime=1000ns,period=1ms",
            ['container "ctr0", runtime: must be at least 1024ns (the kernel\'s minimum), got 1000ns'],
        ),
        (
            "runtime=20us,period=50us",
            [
                'container "ctr0", period: must be between 100us and 4194304us '
                "(the kernel's sched_deadline_period_min_us/max_us), got 50us"
            ],
        ),
        (
            "runtime=1ms,period=5s",
            [
                'container "ctr0", period: must be between 100us and 4194304us '
                "(the kernel's sched_deadline_period_min_us/max_us), got 5s"
            ],
        ),
        (
            "runtime=20ms,period=10ms",
            ['container "ctr0", runtime: must not exceed the period, got runtime 20ms > period 10ms'],
        ),
        (
            "runtime=3ms,deadline=2ms,period=10ms",
            ['container "ctr0", runtime: must not exceed the deadline, got runtime 3ms > deadline 2ms'],
        ),
        (
            "runtime=1ms,deadline=20ms,period=10ms",
            ['container "ctr0", deadline: must not exceed the period, got deadline 20ms > period 10ms'],
        ),
        ("runtime=1ms,period=10ms,cpus=0", ['container "ctr0", cpus: must be at least 1, got 0']),
        ("runtime=1ms,period=10ms,cpus=-2", ['container "ctr0", cpus: must be at least 1, got -2']),
        ("runtime=1ms,period=10ms,cpus=1.5", ["container \"ctr0\", cpus: must be a whole number of CPUs, got '1.5'"]),
        ("runtime=1ms,period=10ms,cpus=5000", ['container "ctr0", cpus: must be at most 4096, got 5000']),
        (
            "runtime=-1ms,period=1.5ms",
            [
                'container "ctr0", runtime: must not be negative, got -1ms',
                'container "ctr0", period: must be a whole number, got 1.5ms '
                "(use a smaller unit, e.g. 1500us rather than 1.5ms)",
            ],
        ),
    ],
)
def test_each_rule_names_container_field_and_rule(value: str, expected: list[str]) -> None:
    assert errors(value) == expected


def test_limits_follow_the_nodes_sysctls() -> None:
    strict = KernelLimits(period_min_ns=1 * MS, period_max_ns=100 * MS)
    with pytest.raises(InvalidRequest, match="must be between 1ms and 100ms"):
        parse_container_value("c", "runtime=100us,period=500us", strict)


def test_spec_json_is_canonical_and_round_trips() -> None:
    request = PodRequest({"b": Reservation(1 * MS, 2 * MS, 4 * MS, 2), "a": Reservation(1024, 100 * US, 100 * US)})
    text = request.spec_json()
    assert text == (
        '{"a":{"cpus":1,"deadline":100000,"period":100000,"runtime":1024},'
        '"b":{"cpus":2,"deadline":2000000,"period":4000000,"runtime":1000000}}'
    )
    assert PodRequest.from_spec_json(text) == request


reservations = st.builds(
    lambda period, r, d, cpus: Reservation(
        runtime_ns=1024 + r * (period - 1024) // 1000,
        deadline_ns=max(1024 + r * (period - 1024) // 1000, d * period // 1000),
        period_ns=period,
        cpus=cpus,
    ),
    st.integers(100 * US, 4_194_304 * US),
    st.integers(0, 1000),
    st.integers(0, 1000),
    st.integers(1, 64),
)


@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True), reservations, max_size=5))
def test_canonical_form_round_trips_exactly(containers: dict[str, Reservation]) -> None:
    request = PodRequest(containers)
    assert PodRequest.from_spec_json(request.spec_json()) == request
    # and the user annotation written from it parses to the same value
    for name, r in containers.items():
        text = f"runtime={r.runtime_ns}ns,deadline={r.deadline_ns}ns,period={r.period_ns}ns,cpus={r.cpus}"
        assert parse_container_value(name, text) == r
        # and a record written by to_json (the DRA agent's prepared claims) reads back the same
        assert Reservation.from_json(json.loads(json.dumps(r.to_json()))) == r


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("not json", "rt.resource.example.com/spec: is not valid JSON"),
        ("[1]", "rt.resource.example.com/spec: must be an object"),
        (
            '{"a": {"runtime": 1.5, "deadline": 2, "period": 3, "cpus": 1}}',
            'container "a", runtime: must be a whole number',
        ),
        (
            '{"a": {"runtime": 2000, "deadline": 2000, "period": 3000000, "cpus": 1, "x": 1}}',
            'container "a", x: is not a known field',
        ),
        ('{"a": {"runtime": 2000, "period": 3000000, "cpus": 1}}', 'container "a", deadline: is required'),
        (
            '{"a": {"runtime": 5000000, "deadline": 3000000, "period": 3000000, "cpus": 1}}',
            "must not exceed the period",
        ),
        (
            '{"A_": {"runtime": 2000, "deadline": 3000000, "period": 3000000, "cpus": 1}}',
            "is not a valid container name",
        ),
    ],
)
def test_forged_or_broken_spec_annotations_are_refused(text: str, expected: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        PodRequest.from_spec_json(text)
    assert expected in str(info.value)


def test_claim_parameters_use_the_seed_defaults_and_microseconds() -> None:
    assert reservation_from_claim_parameters("c", {}) == Reservation(10 * US, 100 * US, 100 * US, 1)
    assert reservation_from_claim_parameters("c", {"count": 2, "runtime": 300, "period": 1000}) == Reservation(
        300 * US, 1000 * US, 1000 * US, 2
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"count": 0}, 'container "c", count: must be greater than or equal to 1 and less than or equal to 4096.'),
        ({"runtime": 1.5}, 'container "c", runtime: must be a whole number'),
        ({"runtime": "10"}, 'container "c", runtime: must be a whole number'),
        ({"cpus": 2}, 'container "c", cpus: is not a known field'),
        (
            {"runtime": 200, "period": 100},
            'container "c", runtime: must not exceed the period, got runtime 200us > period 100us',
        ),
        (
            {"runtime": 1, "period": 100},
            'container "c", runtime: must be at least 1024ns (the kernel\'s minimum), got 1000ns',
        ),
    ],
)
def test_claim_parameters_are_validated_like_annotations(spec: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        reservation_from_claim_parameters("c", spec)
    assert str(info.value) == expected


def test_pod_without_rt_annotations_asks_for_nothing() -> None:
    assert parse_pod(pod({"other": "x"})) is None
    assert parse_pod({"metadata": {}, "spec": {}}) is None


def test_pod_request_reads_containers_claims_and_placement() -> None:
    lookup = {("rt", "params"): {"count": 2, "runtime": 100, "period": 1000}}
    request = parse_pod(
        pod(
            {
                f"{names.CONTAINER_PREFIX}a": "runtime=1ms,period=10ms",
                f"{names.CLAIM_PARAMETERS_PREFIX}b": "params",
                names.PLACEMENT: "spread",
            },
            ("a", "b", "c"),
        ),
        lambda ns, name: lookup.get((ns, name)),
    )
    assert request == PodRequest(
        {"a": Reservation(1 * MS, 10 * MS, 10 * MS), "b": Reservation(100 * US, 1 * MS, 1 * MS, 2)}, "spread"
    )


def test_pod_problems_are_all_reported_at_once() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_pod(
            pod(
                {
                    f"{names.CONTAINER_PREFIX}ghost": "runtime=1ms,period=10ms",
                    f"{names.CONTAINER_PREFIX}ctr0": "runtime=1ms",
                    f"{names.CONTAINER_PREFIX}init": "runtime=1ms,period=10ms",
                    f"{names.CLAIM_PARAMETERS_PREFIX}ctr0": "params",
                    f"{names.CLAIM_PARAMETERS_PREFIX}side": "missing",
                    f"{names.CONTAINER_PREFIX}Bad_Name": "runtime=1ms,period=10ms",
                    names.PLACEMENT: "random",
                },
                ("ctr0", "side"),
                initContainers=[{"name": "init", "image": "busybox"}],
            ),
            lambda ns, name: {"count": 1} if name == "params" else None,
        )
    assert [str(p) for p in info.value.problems] == [
        "rt.resource.example.com/placement: must be one of pack, spread, got 'random'",
        "container \"side\", claim-parameters: RtClaimParameters 'missing' does not exist in namespace 'rt'",
        "container \"Bad_Name\": is not a valid container name (a DNS label: a-z, 0-9 and '-', at most 63)",
        'container "ctr0": has both a container.<name> and a claim-parameters.<name> request; keep one',
        'container "ghost": is not a container of this pod (its containers: ctr0, side)',
        'container "init": is an init container; only regular containers can hold a reservation',
    ]


def test_claim_parameters_cannot_be_resolved_without_a_lookup() -> None:
    with pytest.raises(InvalidRequest, match="RtClaimParameters 'p' cannot be resolved here"):
        parse_pod(pod({f"{names.CLAIM_PARAMETERS_PREFIX}ctr0": "p"}))


def test_read_pod_request_prefers_the_webhooks_spec_and_revalidates_it() -> None:
    spec = PodRequest({"ctr0": Reservation(1 * MS, 10 * MS, 10 * MS)}).spec_json()
    annotations = {names.SPEC: spec, f"{names.CONTAINER_PREFIX}ctr0": "runtime=2ms,period=10ms"}
    assert read_pod_request(pod(annotations)) == PodRequest({"ctr0": Reservation(1 * MS, 10 * MS, 10 * MS)})
    forged = json.dumps({"ctr0": {"runtime": 20 * MS, "deadline": 10 * MS, "period": 10 * MS, "cpus": 1}})
    with pytest.raises(InvalidRequest, match="must not exceed"):
        read_pod_request(pod({names.SPEC: forged}))
    with pytest.raises(InvalidRequest, match='container "other": is not a container of this pod'):
        read_pod_request(pod({names.SPEC: spec.replace("ctr0", "other")}))


def test_read_pod_request_falls_back_to_user_annotations() -> None:
    assert read_pod_request(pod({f"{names.CONTAINER_PREFIX}ctr0": "runtime=1ms,period=10ms"})) == PodRequest(
        {"ctr0": Reservation(1 * MS, 10 * MS, 10 * MS)}
    )


@given(st.text(max_size=80))
def test_any_annotation_text_parses_or_fails_cleanly(text: str) -> None:
    try:
        r = parse_container_value("c", text)
    except InvalidRequest as err:
        assert err.problems and all(p.message for p in err.problems)
    else:
        assert 1024 <= r.runtime_ns <= r.deadline_ns <= r.period_ns <= 4_194_304 * US
