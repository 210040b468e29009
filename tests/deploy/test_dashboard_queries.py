"""The Grafana dashboard and the alert rules in deploy/observability/: they load, every
query parses as PromQL, and every metric they query is on a live /metrics page.

"Exists" means the page carries at least one *sample* of that exact name after
``full_cycle``. A labelled family that has never been incremented still prints
its ``# HELP`` and ``# TYPE`` lines, but that does not count: the cycle drives
every path the panels and alerts watch, so a family without samples means either
a name the sidecar does not really emit or a path the cycle misses, and only
samples let the label names and values of a query be checked too.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import redis
import yaml
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from support import (
    ALICE,
    CREATE,
    DELETE,
    LIST,
    ROTATE,
    AiohttpClient,
    Keys,
    SidecarFactory,
    call,
    sign_body,
)

from sidecar.app import create_ops_app, create_sign_app, create_xrpc_app
from sidecar.auth.api_keys import generate_api_key

Client = TestClient[Any, Any]

OBSERVABILITY = Path(__file__).resolve().parents[2] / "deploy" / "observability"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
RULES = OBSERVABILITY / "prometheus-rules.yaml"

# Series that other exporters provide; the sidecar never serves them.
EXTERNAL_METRICS = {
    "up": "Prometheus, for every scrape target",
    "kube_pod_status_ready": "kube-state-metrics",
}
# Labels Prometheus attaches to every series it scrapes through the ServiceMonitor.
TARGET_LABELS = frozenset({"namespace", "pod", "job", "instance", "service", "container"})
# Issue #4's fixed outcome set: alerts may match outcomes that one cycle does not produce.
OUTCOMES = frozenset(
    {
        "ok",
        "not_found",
        "invalid",
        "unauthenticated",
        "encryption_unavailable",
        "storage_unavailable",
        "error",
    }
)
# What Grafana puts in place of its interval variables before a query runs.
GRAFANA_INTERVALS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}

# The panels and alerts issue #4 asks for.
PANELS = {
    "Rotations per minute by outcome",
    "Rotation latency p50 / p99",
    "Time since last rotation",
    "Signatures per second by scheme and outcome",
    "Sign latency p50 / p99",
    "Redis errors per second by operation",
    "Auth failures per second by reason",
    "Readiness",
}
ALERTS = {
    "WispSidecarSignFailureRatioHigh",
    "WispSidecarStorageUnavailable",
    "WispSidecarRotationErrors",
    "WispSidecarSignLatencyHigh",
    "WispSidecarAuthFailureSpike",
    # Issue #10: changes answered 503 because replicas (or fsync) did not confirm them.
    "WispSidecarChangesNotDurable",
    # Issue #12: stored tokens this pod cannot open (a KEK missing from its ring).
    "WispSidecarEnvelopesUnopenable",
    # Issue #19: requests refused by a rate limit or a DID resolution bound, sustained.
    "WispSidecarRateLimiting",
}


@dataclass(frozen=True)
class Query:
    """One PromQL expression and where it was written."""

    where: str
    expr: str


def load_rules() -> list[dict[str, Any]]:
    """Every rule of the PrometheusRule, across its groups."""
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["spec"]["groups"] for rule in group["rules"]]


def load_dashboard() -> dict[str, Any]:
    """The Grafana dashboard, parsed."""
    result: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return result


def rule_queries() -> list[Query]:
    """The expression of every alert rule, named by its alert."""
    return [Query(f"alert {rule['alert']}", rule["expr"]) for rule in load_rules()]


def dashboard_queries() -> list[Query]:
    """Every PromQL query of the dashboard: panel targets and query variables' selectors."""
    dashboard = load_dashboard()
    queries = [
        Query(f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        found = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"]["query"])
        assert found, f"variable {variable['name']}: not a label_values(selector, label) query"
        queries.append(Query(f"variable ${variable['name']}", found.group(1)))
    return queries


def grafana_variables() -> set[str]:
    """The names of the dashboard's template variables."""
    return {variable["name"] for variable in load_dashboard()["templating"]["list"]}


def parse(query: Query) -> promql_parser.Expr:
    """Parse the query as Prometheus would see it, Grafana's variables filled in."""
    text = query.expr
    for variable, value in GRAFANA_INTERVALS.items():
        text = text.replace(variable, value)
    for name in grafana_variables():
        # The dashboard uses its own variables only inside regex matchers.
        text = text.replace(f"${{{name}}}", ".*").replace(f"${name}", ".*")
    return promql_parser.parse(text)


@dataclass
class Uses:
    """The metric names, label matchers and grouping labels one expression uses."""

    selectors: list[promql_parser.VectorSelector] = field(default_factory=list)
    # (grouping labels, metric names beneath that aggregation)
    groupings: list[tuple[list[str], set[str]]] = field(default_factory=list)


def uses_of(expr: promql_parser.Expr) -> Uses:
    """The vector selectors in ``expr``, and the labels each aggregation in it groups by."""
    uses = Uses()

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            uses.selectors.append(node)
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            beneath = {selector.name or "" for selector in uses_of(node.expr).selectors}
            uses.groupings.append((list(node.modifier.labels), beneath))
        return True

    promql_parser.walk(expr, visit)
    return uses


@dataclass
class Page:
    """A /metrics page: the label sets of every sample, by sample name."""

    samples: dict[str, list[dict[str, str]]]

    @classmethod
    def parse(cls, text: str) -> Page:
        samples: dict[str, list[dict[str, str]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append(dict(sample.labels))
        return cls(samples)

    def label_names(self, metric: str) -> set[str]:
        return {name for labels in self.samples[metric] for name in labels}

    def label_values(self, metric: str, label: str) -> set[str]:
        return {labels[label] for labels in self.samples[metric] if label in labels}


def problems_with(query: Query, page: Page) -> list[str]:
    """Everything in ``query`` that the page does not back up, as readable lines."""
    uses = uses_of(parse(query))
    problems: list[str] = []
    for selector in uses.selectors:
        metric = selector.name or ""
        if metric in EXTERNAL_METRICS:
            continue
        if metric not in page.samples:
            problems.append(f"{query.where}: {metric!r} has no sample on /metrics")
            continue
        for matcher in selector.matchers.matchers:
            if matcher.name in TARGET_LABELS:
                continue
            if matcher.name not in page.label_names(metric):
                problems.append(f"{query.where}: {metric} has no label {matcher.name!r}")
                continue
            if matcher.op in (promql_parser.MatchOp.Equal, promql_parser.MatchOp.NotEqual):
                wanted = {matcher.value}
            else:
                # Regex matchers here are plain alternations of values.
                wanted = set(matcher.value.split("|"))
            known = page.label_values(metric, matcher.name)
            if matcher.name == "outcome":
                known |= OUTCOMES
            for value in sorted(wanted - known):
                problems.append(f"{query.where}: {metric}{{{matcher.name}}} never is {value!r}")
    for labels, beneath in uses.groupings:
        ours = [metric for metric in beneath if metric in page.samples]
        for label in labels:
            if label in TARGET_LABELS or not ours:
                continue
            if not any(label in page.label_names(metric) for metric in ours):
                problems.append(f"{query.where}: no series beneath 'by ({label})' has that label")
    return problems


@contextlib.contextmanager
def writes_stalled(client: redis.Redis) -> Iterator[None]:
    """Redis holds every write (scripts included) while reads still answer: a real outage."""
    client.execute_command("CLIENT", "PAUSE", "30000", "WRITE")  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        client.execute_command("CLIENT", "UNPAUSE")  # type: ignore[no-untyped-call]


async def full_cycle(xrpc: Client, sign: Client, key: str, raw_redis: redis.Redis) -> None:
    """Drive every XRPC procedure and the sign API once, with each failure the files watch.

    Add a call here when a panel or alert starts watching a new path.
    """
    body = b'{"event":"create"}'
    assert (await call(xrpc, CREATE, key, {"name": "orders"}))[0] == 200
    assert (await call(xrpc, LIST, key, method="GET"))[0] == 200
    assert (await call(xrpc, ROTATE, key, {"name": "orders"}))[0] == 200

    for scheme in ("wisp", "standard"):
        status, signed = await sign_body(sign, ALICE, "orders", body, scheme=scheme)
        assert status == 200, signed
    params = {"did": ALICE, "name": "orders", "scheme": "standard"}
    async with sign.post("/v1/verify", params=params, data=body, headers=signed["headers"]) as ok:
        assert (await ok.json())["valid"] is True
    async with sign.post("/v1/verify", params=params, data=b"tampered") as bad:
        assert (await bad.json())["valid"] is False
    assert (await sign_body(sign, ALICE, "no-such-secret", body))[0] == 404

    assert (await call(xrpc, CREATE, key, {"name": "../escape"}))[0] == 400
    assert (await call(xrpc, LIST, None, method="GET"))[0] == 401
    assert (await call(xrpc, LIST, generate_api_key(), method="GET"))[0] == 401

    with writes_stalled(raw_redis):
        assert (await call(xrpc, ROTATE, key, {"name": "orders"}))[0] == 503
    assert (await call(xrpc, DELETE, key, {"name": "orders"}))[0] == 200


@pytest.fixture
async def cycled_page(
    make_sidecar: SidecarFactory, aiohttp_client: AiohttpClient, keys: Keys, raw_redis: redis.Redis
) -> Page:
    """The ops listener's /metrics page after ``full_cycle`` on the same sidecar."""
    # The suite's generous deadline: the stalled write fails when it passes, and no
    # healthy call of the cycle can miss it on a loaded machine.
    sidecar = await make_sidecar()
    xrpc: Client = await aiohttp_client(create_xrpc_app(sidecar))
    sign: Client = await aiohttp_client(create_sign_app(sidecar))
    ops: Client = await aiohttp_client(create_ops_app(sidecar))
    await full_cycle(xrpc, sign, keys.alice, raw_redis)
    async with ops.get("/metrics") as response:
        assert response.status == 200
        return Page.parse(await response.text())


def test_dashboard_is_importable_and_has_the_issue_panels() -> None:
    """The dashboard is one JSON object Grafana imports: titled, with a uid, unique panel
    ids, every query on the dashboard's data source variable, and every panel issue #4 lists."""
    dashboard = load_dashboard()
    assert dashboard["title"]
    assert dashboard["uid"]
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["id"] is None, "an exported id would clash on import"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert {panel["title"] for panel in dashboard["panels"]} == PANELS
    variables = grafana_variables()
    assert "datasource" in variables
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_rules_have_the_issue_alerts_with_severity_and_text() -> None:
    """The rules file holds each alert issues #4, #10 and #12 list, once, each with a severity,
    a summary, a description and a valid `for` duration."""
    rules = load_rules()
    names = [rule["alert"] for rule in rules]
    assert sorted(names) == sorted(ALERTS)
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]
        if "for" in rule:
            assert promql_parser.parse_duration(rule["for"]).total_seconds() > 0


@pytest.mark.parametrize(
    "query", rule_queries() + dashboard_queries(), ids=lambda query: query.where
)
def test_every_query_parses_as_promql(query: Query) -> None:
    """Each alert expression, panel query and variable query is valid PromQL."""
    parse(query)


async def test_every_queried_metric_is_on_a_live_page_after_one_cycle(cycled_page: Page) -> None:
    """Every metric, label and label value the dashboard and alerts query is on the live
    /metrics page after one full cycle of real requests."""
    problems = [
        problem
        for query in rule_queries() + dashboard_queries()
        for problem in problems_with(query, cycled_page)
    ]
    assert problems == []


async def test_the_check_refuses_what_the_page_does_not_back(cycled_page: Page) -> None:
    """The check flags a misspelled metric, an unknown label, an unseen label value, and a
    family that only has its # TYPE line."""
    declared_only = Page.parse(
        "# HELP wisp_sidecar_rotations_total Rotate requests.\n"
        "# TYPE wisp_sidecar_rotations_total counter\n"
    )
    cases = [
        (cycled_page, "rate(wisp_sidecar_rotation_total[5m])", "no sample"),
        (cycled_page, 'wisp_sidecar_rotations_total{result="ok"}', "no label 'result'"),
        (cycled_page, 'wisp_sidecar_auth_failures_total{reason="bad_luck"}', "never is"),
        (cycled_page, "sum by (scheme) (wisp_sidecar_rotations_total)", "by (scheme)"),
        (declared_only, "wisp_sidecar_rotations_total", "no sample"),
    ]
    for page, expr, expected in cases:
        problems = problems_with(Query("probe", expr), page)
        assert len(problems) == 1, (expr, problems)
        assert expected in problems[0], (expr, problems)
