"""Renderers: turn a :class:`~pytest_spml.report.Report` into text, JSON or JUnit XML.

Renderers never decide anything; the exit code and every line they print come
from the report itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from .report import CheckResult, Report, Status

if TYPE_CHECKING:
    import xml.etree.ElementTree as ET

# json, xml.etree and tempfile are imported where used: the hooks print text
# and should not pay for the other formats at start-up.


def format_result(result: CheckResult) -> str:
    """``path:line: ID message`` (or ``ID message`` without a location)."""
    where = result.location
    head = f"{where}: " if where else ""
    return f"{head}{result.id} {result.message}"


def render(report: Report, fmt: str, stream: TextIO, verbose: bool = False) -> None:
    """Render in ``fmt``: text, json, or a format the command added to ``report.documents``."""
    if fmt == "text":
        render_text(report, stream, verbose)
    elif fmt == "json":
        render_json(report, stream)
    else:
        import json

        json.dump(report.documents[fmt], stream, indent=2)
        stream.write("\n")


def render_text(report: Report, stream: TextIO, verbose: bool = False) -> None:
    if report.text is not None:
        stream.write(report.text)
        return
    for note in report.notes:
        stream.write(f"{report.tool}: {note}\n")
    for result in report.results:
        if result.is_failure or verbose:
            prefix = "" if result.is_failure else f"[{result.status.value}] "
            stream.write(prefix + format_result(result) + "\n")
    counts = report.counts()
    advisory = len(report.advisories)
    counts["fail"] -= advisory
    parts = [f"{counts[s.value]} {label}" for s, label in
             ((Status.FAIL, "failed"), (Status.ERROR, "errors"), (Status.PASS, "passed"), (Status.SKIP, "skipped"))
             if counts[s.value]]
    if advisory:
        parts.insert(2, f"{advisory} advisory")
    verdict = "ok" if report.ok else "FAILED"
    stream.write(f"{report.tool}: {verdict} ({', '.join(parts) or 'nothing checked'})\n")


def render_json(report: Report, stream: TextIO) -> None:
    import json

    # compact separators keep json on its C encoder: violation lists can be long
    json.dump(report.to_dict(), stream)
    stream.write("\n")


def junit_tree(report: Report) -> "ET.ElementTree":
    import xml.etree.ElementTree as ET

    counts = report.counts()
    suite = ET.Element(
        "testsuite",
        name=report.tool,
        tests=str(len(report.results)),
        failures=str(counts["fail"] - len(report.advisories)),
        errors=str(counts["error"]),
        skipped=str(counts["skip"]),
    )
    for result in report.results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=(result.path or report.tool).replace("/", "."),
            name=f"{result.id} {result.name}".strip(),
        )
        if result.path:
            case.set("file", result.path)
        if result.line:
            case.set("line", str(result.line))
        tag = {Status.FAIL: "failure", Status.ERROR: "error", Status.SKIP: "skipped"}.get(result.status)
        if result.is_failure and not result.blocking:
            ET.SubElement(case, "system-out").text = "advisory: " + format_result(result)
        elif tag:
            ET.SubElement(case, tag, message=result.message).text = format_result(result)
        elif result.message:
            ET.SubElement(case, "system-out").text = result.message
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(report: Report, path: str | Path) -> None:
    """Write JUnit XML atomically, so a killed run never leaves half a file for CI."""
    import io

    from .fsutil import atomic_write

    buffer = io.BytesIO()
    junit_tree(report).write(buffer, encoding="utf-8", xml_declaration=True)
    atomic_write(path, buffer.getvalue())
