"""The alert rules of deploy/observability/prometheus-rules.yaml, unit-tested with
``promtool test rules`` against deploy/observability/tests/rules-test.yaml.

promtool needs a plain rule file, so each test writes the PrometheusRule's ``spec``
beside a copy of the test file. Without promtool the tests that run it are skipped;
``.ci/run`` installs it from the distribution's ``prometheus`` package.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "deploy" / "observability"
RULES = OBSERVABILITY / "prometheus-rules.yaml"
RULES_TEST = OBSERVABILITY / "tests" / "rules-test.yaml"
SKIP_REASON = (
    "promtool is not on PATH: install it with `apt-get install prometheus` "
    "(Debian, Ubuntu) or from a Prometheus release; .ci/run does this"
)


def rules_spec() -> dict[str, Any]:
    """The PrometheusRule's spec: a plain Prometheus rule file."""
    result: dict[str, Any] = yaml.safe_load(RULES.read_text())["spec"]
    return result


def alert_names() -> set[str]:
    """The name of every alert rule."""
    return {rule["alert"] for group in rules_spec()["groups"] for rule in group["rules"]}


def rules_test() -> dict[str, Any]:
    """The promtool unit-test file, parsed."""
    result: dict[str, Any] = yaml.safe_load(RULES_TEST.read_text())
    return result


def run_promtool(directory: Path, spec: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """Write ``spec`` as the rule file the test file names, and run promtool on both."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(SKIP_REASON)
    (rule_file,) = rules_test()["rule_files"]
    (directory / rule_file).write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copy(RULES_TEST, directory / RULES_TEST.name)
    return subprocess.run(
        [promtool, "test", "rules", str(directory / RULES_TEST.name)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_every_alert_has_a_firing_and_a_quiet_evaluation() -> None:
    """Each alert of the rules file is evaluated at least once where it must fire and once
    where it must not, and the test file names no alert that does not exist."""
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in rules_test()["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == alert_names()
    assert quiet == alert_names()


def test_promtool_passes_the_alert_rules(tmp_path: Path) -> None:
    """promtool runs every unit test of rules-test.yaml against the rules as written, and
    each passes: the alerts fire on their input series, with their labels and text, and
    stay quiet on the rest."""
    result = run_promtool(tmp_path, rules_spec())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_fails_when_an_alert_threshold_changes(tmp_path: Path) -> None:
    """The unit tests catch a changed rule: with the sign-failure threshold raised from 1%
    to 50%, the alert no longer fires where the test expects it, and promtool fails."""
    spec = rules_spec()
    (rule,) = [
        rule
        for group in spec["groups"]
        for rule in group["rules"]
        if rule["alert"] == "WispSidecarSignFailureRatioHigh"
    ]
    assert "> 0.01" in rule["expr"]
    rule["expr"] = rule["expr"].replace("> 0.01", "> 0.5")
    result = run_promtool(tmp_path, spec)
    assert result.returncode != 0
    assert "WispSidecarSignFailureRatioHigh" in result.stdout + result.stderr
