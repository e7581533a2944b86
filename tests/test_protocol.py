"""Protocol parsing: every bad field is exit 2 naming the field and its line."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import EXAMPLE

from pytest_spml.errors import InputError
from pytest_spml.protocol import load_protocol, parse_duration

GOOD = (EXAMPLE / "autoresearch-protocol.md").read_text()


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "autoresearch-protocol.md"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


def test_example_protocol_parses(tmp_path: Path) -> None:
    protocol = load_protocol(write(tmp_path, GOOD), tmp_path)
    assert protocol.baseline == 0.90 and protocol.target == 0.95
    assert protocol.time_limit_s == 120 and protocol.eval_direction == "maximize"
    assert protocol.fixed_files == ("train.py", "eval/", "data/") and protocol.relpath == "autoresearch-protocol.md"


@pytest.mark.parametrize("old, new, needle, message", [
    ("target: 0.95", "target: high", "target:", "protocol field 'target' must be a finite number or null, got 'high'"),
    ("baseline: 0.90", "baseline: .nan", "baseline:", "protocol field 'baseline' must be a finite number"),
    ("time_limit: 2m", "time_limit: .inf", "time_limit:", "protocol field 'fixed.time_limit' must be a positive duration"),
    ("max_rounds: 10", "max_rounds: 0", "max_rounds:", "protocol field 'max_rounds' must be a whole number of rounds >= 1"),
    ("direction: maximize", "direction: sideways", "direction:", "must be 'maximize' or 'minimize', got 'sideways'"),
    ('branch: "autoresearch/*"', 'brnach: "autoresearch/*"', "brnach:", "unknown protocol field 'brnach'"),
    ("  metric: val_accuracy", "  metric: val_accuracy\n  metrc: x", "metrc:", "unknown protocol field 'eval.metrc' under 'eval'"),
    ("target: 0.95", "target: 0.95\ntarget: 0.99", "target: 0.99", "field 'target' appears twice (first on line 3)"),
])
def test_bad_fields_name_field_and_line(tmp_path: Path, old: str, new: str, needle: str, message: str) -> None:
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    with pytest.raises(InputError) as info:
        load_protocol(write(tmp_path, text), tmp_path)
    assert message in info.value.message
    assert info.value.line == line_of(text, needle)


def test_missing_required_field(tmp_path: Path) -> None:
    text = GOOD.replace("  metric: val_accuracy\n", "")
    with pytest.raises(InputError) as info:
        load_protocol(write(tmp_path, text), tmp_path)
    assert info.value.message == "protocol field 'eval.metric' is missing"
    assert info.value.line == line_of(text, "eval:")


def test_target_may_be_null(tmp_path: Path) -> None:
    protocol = load_protocol(write(tmp_path, GOOD.replace("target: 0.95", "target: null")), tmp_path)
    assert protocol.target is None


def test_byte_order_mark_is_not_content(tmp_path: Path) -> None:
    assert load_protocol(write(tmp_path, "\ufeff" + GOOD), tmp_path).eval_metric == "val_accuracy"


def test_non_utf8_names_the_line(tmp_path: Path) -> None:
    data = GOOD.replace("research_question:", "research_question: caf\xe9 -").encode("latin-1")
    with pytest.raises(InputError) as info:
        load_protocol(write(tmp_path, data), tmp_path)
    assert "not UTF-8" in info.value.message and info.value.line == 2


def test_yaml_error_line(tmp_path: Path) -> None:
    text = GOOD.replace("max_rounds: 10", "max_rounds: [10")
    with pytest.raises(InputError) as info:
        load_protocol(write(tmp_path, text), tmp_path)
    assert info.value.message.startswith("invalid YAML in front matter")
    assert info.value.line is not None and info.value.line >= line_of(text, "max_rounds")


def test_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        load_protocol(tmp_path, tmp_path)
    assert "is a directory" in info.value.message


@pytest.mark.parametrize("value, seconds", [(300, 300), ("90s", 90), ("5m", 300), ("1.5h", 5400), ("00:05:00", 300),
                                            ("2 min", 120), ("abc", None), (True, None), ([], None)])
def test_parse_duration(value: object, seconds: float | None) -> None:
    assert parse_duration(value) == seconds
