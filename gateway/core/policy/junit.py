"""`gateway policy test --junit FILE`: the run as JUnit XML, which CI systems (GitHub Actions, GitLab, Jenkins)
show per test. One testsuite per schema; one testcase per case and one per fuzz run. The messages are the
report's (actions and paths, never a value of a tokenized or encrypted field)."""

from __future__ import annotations

import xml.etree.ElementTree as ET  # noqa: S405 - writing only, no parsing of untrusted XML

from gateway.core.policy.runner import CaseResult, FuzzResult, PolicyTestReport

MAX_LEAKS_LISTED = 50  # a fuzz failure lists this many leaks, then counts the rest


def junit_xml(report: PolicyTestReport) -> bytes:
    root = ET.Element("testsuites", name="gateway policy test")
    suites: dict[str, ET.Element] = {}

    def suite(schema: str) -> ET.Element:
        if schema not in suites:
            suites[schema] = ET.SubElement(root, "testsuite", name=schema)
        return suites[schema]

    for case in report.cases:
        _case(suite(case.schema), case)
    for run in report.fuzz:
        _fuzz(suite(run.schema), run)
    total = failures = 0
    seconds = 0.0
    for element in suites.values():
        cases = element.findall("testcase")
        failed = sum(1 for c in cases if c.find("failure") is not None)
        took = sum(float(c.get("time", "0")) for c in cases)
        element.set("tests", str(len(cases)))
        element.set("failures", str(failed))
        element.set("errors", "0")
        element.set("skipped", "0")
        element.set("time", f"{took:.3f}")
        total, failures, seconds = total + len(cases), failures + failed, seconds + took
    root.set("tests", str(total))
    root.set("failures", str(failures))
    root.set("errors", "0")
    root.set("time", f"{seconds:.3f}")
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _case(suite: ET.Element, case: CaseResult) -> None:
    element = ET.SubElement(suite, "testcase", classname=case.schema, name=case.case, file=case.file,
                            time=f"{case.seconds:.3f}")
    if case.failures:
        failure = ET.SubElement(element, "failure", type="expectation",
                                message=f"{len(case.failures)} expectation(s) unmet")
        failure.text = "\n".join(str(f) for f in case.failures)


def _fuzz(suite: ET.Element, run: FuzzResult) -> None:
    element = ET.SubElement(suite, "testcase", classname=run.schema, name=f"fuzz ({run.events} events)",
                            time=f"{run.seconds:.3f}")
    out = ET.SubElement(element, "system-out")
    out.text = fuzz_summary(run)
    if run.leaks:
        failure = ET.SubElement(element, "failure", type="canary",
                                message=f"{len(run.leaks)} canary survival(s)")
        lines = [str(leak) for leak in run.leaks[:MAX_LEAKS_LISTED]]
        if len(run.leaks) > MAX_LEAKS_LISTED:
            lines.append(f"... and {len(run.leaks) - MAX_LEAKS_LISTED} more")
        failure.text = "\n".join(lines)


def fuzz_summary(run: FuzzResult) -> str:
    planted = ", ".join(f"{path} ({n})" for path, n in run.planted.items()) or "(none)"
    text = (f"{run.events} events: {run.sanitized} sanitized, {run.dead_lettered} dead-lettered; "
            f"canaries planted in {planted}")
    if run.unplanted:
        text += f"; not planted (no string value): {', '.join(run.unplanted)}"
    return text
