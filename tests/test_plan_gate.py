"""The plan gate: parser, rules, ``spml plan-gate`` and the pre-commit hook.

Fixture plans live in tests/data/plans/. Each ``fail_*.md`` plan breaks
exactly one rule; the tests assert that rule's id, status and line, and that
no other rule fails, so a fixture cannot quietly start testing something else.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_spml.cli import main as spml
from pytest_spml.errors import InputError
from pytest_spml.hooks.plan_gate import main as hook
from pytest_spml.plan.model import DONE, INTEGRATION, NEW, REVISED, parse_plan
from pytest_spml.plan.rules import RULE_TABLE, RULES, check_plan
from pytest_spml.report import CheckResult, Status

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data" / "plans"
ALL_IDS = list(RULE_TABLE)
EVAL_IDS = [f"PG{n:03d}" for n in range(4, 13)]


def gate(text: str, name: str = "plan.md") -> dict[str, CheckResult]:
    results = check_plan(parse_plan(Path(name), text))
    assert [r.id for r in results] == ALL_IDS  # one result per rule, in order
    return {r.id: r for r in results}


def gate_file(name: str) -> dict[str, CheckResult]:
    return gate(read(name), name)


def read(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def insert_after(text: str, anchor: str, line: str) -> str:
    """``text`` with ``line`` added right after the line that starts with ``anchor``."""
    lines = text.splitlines()
    index = next(i for i, ln in enumerate(lines) if ln.startswith(anchor))
    return "\n".join([*lines[: index + 1], line, *lines[index + 1:]]) + "\n"


def failing(results: dict[str, CheckResult]) -> list[str]:
    return [rid for rid, r in results.items() if r.status is Status.FAIL]


# --- the rule table -------------------------------------------------------------

def test_rule_table_lists_every_rule_once_in_order():
    assert [rid for rid, _ in RULES] == ALL_IDS == sorted(ALL_IDS)
    assert len({name for name, _ in RULE_TABLE.values()}) == len(RULE_TABLE)
    for rid, rule in RULES:
        assert rule.__doc__ and rule.__doc__.startswith(f"{rid}:"), rid


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.md")))
def test_every_rule_reports_on_every_fixture(name):
    results = gate_file(name)
    for result in results.values():
        assert result.status in (Status.PASS, Status.FAIL, Status.SKIP)
        assert result.name == RULE_TABLE[result.id][0]
        assert result.path == name
        assert result.message and "\n" not in result.message
        if result.status is Status.FAIL:
            assert isinstance(result.line, int) and result.line >= 1


# --- passing plans ------------------------------------------------------------

PASSING = [
    "pass_structured.md",  # ## Subtask N: name, structured ## Evaluation section
    "pass_task_dash_prose.md",  # ### Task N - name, prose only, cadence in a yaml fence, marker first
    "pass_emdash_levels.md",  # #### Step N with em dash, dot, en dash and colon; lower-case [integration]
    "pass_markers_in_prose.md",  # markers quoted in prose, inline code and fences; Evaluation: none
    "not_training.md",  # no training: evaluation rules skip
    "scope_defaulted.md",  # no scope: passes, defaulted
    "revision_integration_revised.md",  # revised and new dependencies, integration revised too
]


@pytest.mark.parametrize("name", PASSING)
def test_passing_plans_pass(name):
    assert failing(gate_file(name)) == []


@pytest.mark.parametrize("plan", ["templates/plan.md", *sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*/docs/plans/*.md"))])
def test_shipped_template_and_example_plans_pass(plan):
    results = gate((ROOT / plan).read_text(encoding="utf-8"), plan)
    assert failing(results) == []
    assert all(results[rid].status is Status.PASS for rid in EVAL_IDS), "shipped plans state the whole contract"


def test_structured_plan_reports_where_each_item_is():
    results = gate_file("pass_structured.md")
    assert results["PG001"].line == 20
    assert results["PG004"].evidence == {"subtask": "3", "line": 16}
    assert results["PG006"].evidence["defaulted"] is False
    assert results["PG011"].line == 24 and results["PG012"].line == 25


# --- failing plans: one per rule ------------------------------------------------

@pytest.mark.parametrize("name, rule_id, line", [
    ("fail_no_integration.md", "PG001", 5),  # the first subtask heading
    ("fail_two_integrations.md", "PG001", 9),
    ("fail_conflicting_markers.md", "PG002", 9),
    ("fail_revised_dependency.md", "PG003", 13),  # the integration heading
    ("fail_no_eval_subtask.md", "PG004", 14),  # the ## Evaluation heading
    ("fail_epoch_cadence.md", "PG005", 16),  # the epoch-only cadence line
    ("fail_no_cadence.md", "PG005", 14),
    ("fail_one_entry_mode.md", "PG007", 14),
    ("fail_no_shared_core.md", "PG008", 14),
    ("fail_no_progress.md", "PG009", 14),
    ("fail_no_mode_errors.md", "PG010", 14),
    ("fail_cadence_check_outside_integration.md", "PG011", 9),
    ("fail_no_mode_report_check.md", "PG012", 9),
])
def test_failing_plan_fails_exactly_one_rule(name, rule_id, line):
    results = gate_file(name)
    assert failing(results) == [rule_id]
    assert results[rule_id].status is Status.FAIL
    assert results[rule_id].line == line
    assert results[rule_id].path == name


def test_no_integration_marker():
    result = gate_file("fail_no_integration.md")["PG001"]
    assert "no subtask is marked [INTEGRATION]" in result.message
    assert "add [INTEGRATION]" in result.message


def test_no_subtasks_at_all_fails_at_line_1():
    result = gate("# Plan\n\nJust prose about training and evaluation.\n")["PG001"]
    assert (result.status, result.line) == (Status.FAIL, 1)
    assert "no subtask headings" in result.message


def test_two_integration_markers_name_both_lines():
    result = gate_file("fail_two_integrations.md")["PG001"]
    assert "lines 9, 14" in result.message
    assert result.evidence["lines"] == [9, 14]


def test_integration_marker_on_a_non_subtask_heading_is_pointed_out():
    text = "# P\n\n## Subtask 1: Data\n\n## Final pipeline [INTEGRATION]\n"
    result = gate(text)["PG001"]
    assert result.status is Status.FAIL
    assert "line 5 carries [INTEGRATION] but is not a subtask heading" in result.message


def test_markers_in_prose_inline_code_and_fences_do_not_count():
    plan = parse_plan(Path("p.md"), read("pass_markers_in_prose.md"))
    assert [(s.number, s.line) for s in plan.subtasks] == [("1", 14), ("2", 18)]
    assert [s.number for s in plan.integrations] == ["2"]
    assert all(s.revision is None for s in plan.subtasks)  # "[x]" and "[ ] REVISED" were prose
    assert plan.stray_integration == ()


def test_conflicting_markers_message():
    result = gate_file("fail_conflicting_markers.md")["PG002"]
    assert "marked both [x] and [ ] REVISED" in result.message


def test_epoch_only_cadence_says_it_is_not_step_based():
    result = gate_file("fail_epoch_cadence.md")["PG005"]
    assert "epoch-end only" in result.message and "not step-based" in result.message
    assert result.evidence["line"] == 16


def test_missing_entry_mode_is_named():
    result = gate_file("fail_one_entry_mode.md")["PG007"]
    assert "the in-memory evaluation entry mode is missing" in result.message
    text = read("fail_one_entry_mode.md").replace(
        "- Entry modes: checkpoint-based (`evaluate.py --checkpoint PATH`)", "- Entry modes: in-memory only")
    assert "the checkpoint-based evaluation entry mode is missing" in gate(text)["PG007"].message


def test_runtime_check_outside_the_integration_is_pointed_out():
    result = gate_file("fail_cadence_check_outside_integration.md")["PG011"]
    assert "line 20 states it outside the integration subtask: move it there" in result.message


# --- revision mode ----------------------------------------------------------------

def test_revision_markers_are_reported():
    result = gate_file("revision_integration_revised.md")["PG002"]
    assert result.status is Status.PASS
    assert result.evidence == {"done": ["1"], "revised": ["2", "4"], "new": ["3"], "fresh": []}


def test_revised_dependency_requires_the_integration_to_rerun():
    result = gate_file("fail_revised_dependency.md")["PG003"]
    assert "mark the integration `[ ] REVISED`: it must re-run L0+L1" in result.message
    assert result.evidence["changed_dependencies"] == ["2"]
    assert result.evidence["explicit_depends_on"] is False


def test_revised_integration_passes_and_says_why():
    result = gate_file("revision_integration_revised.md")["PG003"]
    assert result.status is Status.PASS
    assert "re-runs L0+L1" in result.message and "Subtask 2 (Model)" in result.message
    assert result.evidence["changed_dependencies"] == ["2", "3"]


def test_revised_subtask_outside_explicit_dependencies_keeps_integration_results():
    text = insert_after(read("fail_revised_dependency.md"), "## [x] Subtask 3", "Depends on: Subtask 1")
    result = gate(text)["PG003"]
    assert result.status is Status.PASS
    assert result.evidence["depends_on"] == ["1"]


def test_new_dependency_also_requires_the_integration_to_rerun():
    text = read("fail_revised_dependency.md").replace("## [ ] REVISED Subtask 2", "## [ ] NEW Subtask 2")
    result = gate(text)["PG003"]
    assert result.status is Status.FAIL
    assert "Subtask 2 (Model) is [ ] NEW" in result.message


def test_integration_rerun_rule_skips_a_fresh_plan():
    result = gate_file("pass_structured.md")["PG003"]
    assert result.status is Status.SKIP
    assert "not a revision" in result.message


# --- evaluation applicability ---------------------------------------------------------

def test_non_training_plan_skips_evaluation_rules_with_reason():
    results = gate_file("not_training.md")
    for rid in EVAL_IDS:
        assert results[rid].status is Status.SKIP
        assert "does not train" in results[rid].message


def test_evaluation_none_opts_out():
    results = gate_file("pass_markers_in_prose.md")
    for rid in EVAL_IDS:
        assert results[rid].status is Status.SKIP
        assert "Evaluation: none" in results[rid].message


def test_training_without_evaluation_skips():
    results = gate("# P\n\n## Subtask 1: Train the model [INTEGRATION]\n\nTrain for 100 steps.\n")
    assert results["PG005"].status is Status.SKIP
    assert "never mentions evaluation" in results["PG005"].message


def test_runtime_validation_alone_is_not_evaluation():
    text = "# P\n\n## Subtask 1: Training [INTEGRATION]\n\nTrain; L1 runtime validation must pass.\n"
    assert gate(text)["PG004"].status is Status.SKIP


def test_scope_not_stated_defaults_to_full_validation():
    result = gate_file("scope_defaulted.md")["PG006"]
    assert result.status is Status.PASS
    assert result.message.startswith("evaluation scope not stated: defaulted to `full validation`")
    assert result.evidence == {"defaulted": True, "scope": "full validation"}
    assert result.line == 14  # the ## Evaluation heading: where a Scope line would go


def test_evaluation_only_in_the_integration_is_not_an_eval_subtask():
    text = read("fail_no_eval_subtask.md").replace("## Subtask 2: Training loop", "## Subtask 2: Train and evaluate")
    result = gate(text)["PG004"]
    assert (result.status, result.line) == (Status.FAIL, 9)
    assert "only the [INTEGRATION] Subtask 2" in result.message


def test_evaluation_section_naming_a_missing_subtask_fails_at_that_line():
    text = read("pass_structured.md").replace("- Subtask: 3", "- Subtask: 7")
    result = gate(text)["PG004"]
    assert result.status is Status.FAIL and result.line == 29
    assert "'7'" in result.message


def test_missing_items_without_evaluation_section_point_at_the_eval_subtask():
    text = "# P\n\nWe train and evaluate.\n\n## Subtask 1: Evaluator\n\n## Subtask 2: Trainer [INTEGRATION]\n"
    result = gate(text)["PG005"]
    assert (result.status, result.line) == (Status.FAIL, 5)
    assert "write it in Subtask 1 (Evaluator)" in result.message


# --- wording: each item accepts natural phrasings -------------------------------------

@pytest.mark.parametrize("line", [
    "- Cadence: every 1,000 optimizer steps",
    "- Cadence: eval_interval: 250",
    "- Cadence: eval_every=500",
    "- Cadence: 2000 steps",
    "Evaluation is step-based.",
    "Evaluate each 1k iterations.",
    "Evaluate every N steps, N from the config.",
    "Evaluation runs once per 500 steps.",
])
def test_step_cadence_phrasings(line):
    assert gate(read("fail_no_cadence.md") + line + "\n")["PG005"].status is Status.PASS


@pytest.mark.parametrize("line", [
    "- Cadence: every epoch",
    "- Cadence: once per epoch",
    "- Cadence: at the end of every epoch",
    "- Cadence: epoch-end",
    "- Cadence: after each epoch",
])
def test_epoch_cadence_phrasings_fail_as_not_step_based(line):
    text = read("fail_no_cadence.md") + line + "\n"
    result = gate(text)["PG005"]
    assert result.status is Status.FAIL and result.line == len(text.splitlines())  # the epoch line itself
    assert "not step-based" in result.message


@pytest.mark.parametrize("line", [
    "- Save a checkpoint every 500 steps.",  # a cadence, but not for evaluation
    "- Log the training loss per step.",
])
def test_non_evaluation_step_cadence_does_not_count(line):
    text = insert_after(read("fail_no_cadence.md"), "## Subtask 2", line)
    assert gate(text)["PG005"].status is Status.FAIL


@pytest.mark.parametrize("line", [
    "- Scope: subset of 512 examples",
    "Evaluate on the first 1,000 validation examples.",
    "Evaluation runs on the full validation split.",
    "The evaluation scope is the whole validation set.",
    "Validation uses 2,000 held-out samples.",
])
def test_scope_phrasings(line):
    result = gate(read("scope_defaulted.md") + line + "\n")["PG006"]
    assert result.status is Status.PASS and result.evidence["defaulted"] is False


@pytest.mark.parametrize("line", [
    "- The trainer evaluates its in-memory model.",
    "Evaluation also runs during training on the live model.",
    "In-training evaluation uses the current weights.",
])
def test_in_memory_mode_phrasings(line):
    assert gate(read("fail_one_entry_mode.md") + line + "\n")["PG007"].status is Status.PASS


@pytest.mark.parametrize("line", [
    "- Shared core: yes, `evaluate()`",
    "- Evaluator core: evaluate(model, loader)",
    "Both entry modes call the same `evaluate()` function.",
    "A single evaluation routine serves both modes.",
    "The evaluation loop is used by both entry modes.",
])
def test_shared_core_phrasings(line):
    assert gate(read("fail_no_shared_core.md") + line + "\n")["PG008"].status is Status.PASS


def test_shared_core_placeholder_does_not_count():
    text = read("fail_no_shared_core.md") + "- Shared core: TBD\n"
    result = gate(text)["PG008"]
    assert (result.status, result.line) == (Status.FAIL, len(text.splitlines()))
    assert "placeholder" in result.message


@pytest.mark.parametrize("line", [
    "- Progress: a tqdm bar",
    "Evaluation prints start and end messages.",
    "Show evaluation progress output every 10 batches.",
])
def test_progress_phrasings(line):
    assert gate(read("fail_no_progress.md") + line + "\n")["PG009"].status is Status.PASS


@pytest.mark.parametrize("line, status", [
    ("- Failure handling: mode-aware errors", Status.PASS),
    ("If evaluation fails, the exception includes the entry mode.", Status.PASS),
    ("Errors raised in checkpoint-based evaluation carry the checkpoint path.", Status.PASS),
    ("- Failure handling: errors are logged", Status.FAIL),
])
def test_failure_handling_phrasings(line, status):
    assert gate(read("fail_no_mode_errors.md") + line + "\n")["PG010"].status is status


@pytest.mark.parametrize("lines, status", [
    (["- Runtime check: the evaluation cadence is verified in a smoke run."], Status.PASS),
    (["- Verify that evaluation fires every 500 steps."], Status.PASS),
    (["Runtime checks:", "- evaluation is triggered at steps 500 and 1000"], Status.PASS),
    (["- Runtime checks:", "  - evaluation fires on the planned cadence"], Status.PASS),
    (["- The trainer decides when evaluation fires."], Status.FAIL),  # a design note, not a check
])
def test_cadence_runtime_check_phrasings(lines, status):
    text = insert_after(read("fail_cadence_check_outside_integration.md"), "## Subtask 2", "\n".join(lines))
    assert gate(text)["PG011"].status is status


@pytest.mark.parametrize("line, status", [
    ("- Runtime check: evaluation prints `mode=in-memory`.", Status.PASS),
    ("- Check that every evaluation reports its entry mode.", Status.PASS),
    ("- Train in bf16 mixed-precision mode and log the loss.", Status.FAIL),
])
def test_mode_report_runtime_check_phrasings(line, status):
    text = insert_after(read("fail_no_mode_report_check.md"), "## Subtask 2", line)
    assert gate(text)["PG012"].status is status


# --- parser -------------------------------------------------------------------------

@pytest.mark.parametrize("heading, kind, number, name, level", [
    ("## Subtask 1: Data", "Subtask", "1", "Data", 2),
    ("### Task 2 - Model", "Task", "2", "Model", 3),
    ("## Subtask 3. Loss", "Subtask", "3", "Loss", 2),
    ("#### Task 4 — Trainer", "Task", "4", "Trainer", 4),
    ("## STEP 5 \u2013 Sweep", "Step", "5", "Sweep", 2),  # en dash
    ("## subtask 6:Eval", "Subtask", "6", "Eval", 2),
    ("## **Subtask 7: Bold**", "Subtask", "7", "Bold", 2),
    ("## Subtask 2a: Follow-up", "Subtask", "2a", "Follow-up", 2),
    ("## Subtask 8", "Subtask", "8", "", 2),
])
def test_subtask_heading_styles(heading, kind, number, name, level):
    (subtask,) = parse_plan(Path("p.md"), f"# T\n\n{heading}\n\nbody\n").subtasks
    assert (subtask.kind, subtask.number, subtask.name, subtask.level, subtask.line) == (kind, number, name, level, 3)
    assert [ln.text for ln in subtask.body] == ["", "body"]


@pytest.mark.parametrize("heading", [
    "# Subtask 1: level one is the title",
    "##### Subtask 1: level five is too deep",
    "## Subtasks",
    "## Taskforce 1: not a keyword",
    "    ## Subtask 1: indented code",
])
def test_not_subtask_headings(heading):
    assert parse_plan(Path("p.md"), f"{heading}\n").subtasks == ()


@pytest.mark.parametrize("heading, markers", [
    ("## Subtask 1: Train [INTEGRATION]", {INTEGRATION}),
    ("## [INTEGRATION] Subtask 1: Train", {INTEGRATION}),
    ("## Subtask 1 [integration]: Train", {INTEGRATION}),
    ("## [x] Subtask 1: Data", {DONE}),
    ("## Subtask 1: Data [X]", {DONE}),
    ("## [ ] REVISED Subtask 1: Model", {REVISED}),
    ("## Subtask 1: Model [ ] revised", {REVISED}),
    ("## [ ] NEW Subtask 1: Schedule", {NEW}),
    ("## Subtask 1: Train [INTEGRATION] [ ] REVISED", {INTEGRATION, REVISED}),
    ("## [ ] Subtask 1: Planned", set()),
    ("## Subtask 1: Parse `[INTEGRATION]` tags", set()),
])
def test_heading_markers(heading, markers):
    (subtask,) = parse_plan(Path("p.md"), heading + "\n").subtasks
    assert set(subtask.markers) == markers
    assert subtask.number == "1" and "[" not in subtask.name.replace("`[INTEGRATION]`", "")


@pytest.mark.parametrize("line, expected", [
    ("Depends on: Subtask 1, 2", ("1", "2")),
    ("**Depends on:** Subtasks 1 and 3", ("1", "3")),
    ("- Depends on: Task 2 (the 128-dim encoder)", ("2",)),
    ("Depends on: none", ()),
    ("Depends on: all subtasks", ("1", "2")),
])
def test_depends_on(line, expected):
    text = f"## Subtask 1: A\n## Subtask 2: B\n## Subtask 3: C [INTEGRATION]\n{line}\n"
    integration = parse_plan(Path("p.md"), text).subtasks[2]
    assert integration.depends_on == expected
    assert integration.depends_line == 4


def test_depends_on_inside_a_fence_is_ignored():
    text = "## Subtask 1: A\n```\nDepends on: Subtask 9\n```\n"
    assert parse_plan(Path("p.md"), text).subtasks[0].depends_on is None


def test_subtask_body_ends_at_next_heading_of_same_level_but_keeps_subsections():
    text = "## Subtask 1: A\nfirst\n### Details\nmore\n## Notes\nafter\n"
    (subtask,) = parse_plan(Path("p.md"), text).subtasks
    assert [ln.number for ln in subtask.body] == [2, 3, 4]


def test_evaluation_section_items():
    plan = parse_plan(Path("p.md"), read("pass_structured.md"))
    section = plan.evaluation
    assert section is not None and section.line == 27
    assert section.items["cadence"].value == "every 500 steps"
    assert section.items["cadence"].line == 30
    assert section.items["entry modes"].value == "checkpoint-based and in-memory"


def test_evaluation_item_continuation_lines():
    text = "## Evaluation\n- **Entry modes:**\n  - checkpoint-based\n  - in-memory\n- Scope: full validation\n"
    items = parse_plan(Path("p.md"), text).evaluation.items
    assert items["entry modes"].value == "checkpoint-based in-memory"
    assert [ln.number for ln in items["entry modes"].lines] == [2, 3, 4]
    assert items["scope"].line == 5


def test_title_and_crlf_line_numbers():
    plan = parse_plan(Path("p.md"), "# My plan\r\n\r\n## Subtask 1: A [INTEGRATION]\r\n")
    assert plan.title == "My plan"
    assert plan.subtasks[0].line == 3 and plan.subtasks[0].heading == "## Subtask 1: A [INTEGRATION]"


def test_unreadable_plans_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not found") as missing:
        parse_plan(tmp_path / "nope.md")
    assert missing.value.path == str(tmp_path / "nope.md")
    latin1 = tmp_path / "latin1.md"
    latin1.write_bytes("# Plan f\xfcr Daten\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8") as bad:
        parse_plan(latin1)
    assert bad.value.path == str(latin1)


# --- spml plan-gate, end to end --------------------------------------------------------

def test_cli_text_output_and_exit_codes(capsys, monkeypatch):
    monkeypatch.chdir(DATA)
    assert spml(["plan-gate", "pass_structured.md"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["spml plan-gate: ok (11 passed, 1 skipped)"]

    assert spml(["plan-gate", "fail_two_integrations.md", "fail_epoch_cadence.md"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("fail_two_integrations.md:9: PG001 2 subtasks are marked [INTEGRATION] (lines 9, 14)")
    assert out[1].startswith("fail_epoch_cadence.md:16: PG005 evaluation cadence 'end of each epoch'")
    assert out[-1].startswith("spml plan-gate: FAILED (2 failed")


def test_cli_verbose_lists_every_rule(capsys):
    plan = str(DATA / "not_training.md")
    assert spml(["plan-gate", "-v", plan]) == 0
    lines = capsys.readouterr().out.splitlines()[:-1]
    assert len(lines) == len(RULE_TABLE)
    assert lines[4].startswith(f"[skip] {plan}: PG005 does not apply")


def test_cli_json_lists_every_rule_for_every_plan(capsys):
    plans = [str(DATA / "pass_structured.md"), str(DATA / "fail_no_integration.md")]
    assert spml(["plan-gate", "--format", "json", *plans]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["tool"] == "spml plan-gate" and doc["ok"] is False
    assert {(r["path"], r["id"]) for r in doc["results"]} == {(p, rid) for p in plans for rid in ALL_IDS}
    assert len(doc["results"]) == 2 * len(RULE_TABLE)
    assert all(r["status"] in ("pass", "fail", "skip") for r in doc["results"])
    assert doc["plans"] == [
        {"path": plans[0], "integration": "Training loop", "passed": True},
        {"path": plans[1], "integration": None, "passed": False},
    ]


def test_cli_junitxml_has_one_testcase_per_rule(tmp_path, capsys):
    report = tmp_path / "out" / "plan-gate.xml"
    plans = [str(DATA / "fail_no_progress.md"), str(DATA / "not_training.md")]
    assert spml(["plan-gate", "--junitxml", str(report), *plans]) == 1
    capsys.readouterr()
    cases = ET.parse(report).getroot().findall("./testsuite/testcase")
    assert len(cases) == 2 * len(RULE_TABLE)
    failures = [c for c in cases if c.find("failure") is not None]
    assert [c.get("name") for c in failures] == ["PG009 eval-progress"]
    assert failures[0].get("line") == "14"
    assert sum(c.find("skipped") is not None for c in cases) == 1 + len(EVAL_IDS) + 1


def test_cli_missing_plan_exits_2_with_one_line(capsys):
    assert spml(["plan-gate", str(DATA / "pass_structured.md"), "no/such/plan.md"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert "no/such/plan.md" in captured.err and "Traceback" not in captured.err


def test_cli_not_utf8_plan_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.md"
    bad.write_bytes(b"# Plan \xff\n")
    assert spml(["plan-gate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "UTF-8" in err


def test_cli_discovers_plans_under_repo(tmp_path, capsys):
    plans = tmp_path / "docs" / "plans"
    plans.mkdir(parents=True)
    (plans / "a.md").write_text(read("pass_structured.md"), encoding="utf-8")
    (plans / "b.md").write_text(read("fail_no_progress.md"), encoding="utf-8")
    assert spml(["plan-gate", "--repo", str(tmp_path), "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [p["path"] for p in doc["plans"]] == ["docs/plans/a.md", "docs/plans/b.md"]
    assert [p["passed"] for p in doc["plans"]] == [True, False]


def test_cli_discovery_uses_tool_spml_plans_from_the_enclosing_repo(tmp_path, capsys, monkeypatch):
    (tmp_path / ".git").mkdir()
    (tmp_path / "pyproject.toml").write_text('[tool.spml]\nplans = ["experiments/*.md"]\n', encoding="utf-8")
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "p.md").write_text(read("fail_no_integration.md"), encoding="utf-8")
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path / "src")
    assert spml(["plan-gate"]) == 1
    out = capsys.readouterr().out
    assert "experiments/p.md:5: PG001 no subtask is marked [INTEGRATION]" in out


def test_cli_no_plan_found_says_where_it_looked(tmp_path, capsys):
    assert spml(["plan-gate", "--repo", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "docs/plans/*.md" in err and str(tmp_path) in err and "pass plan files" in err


# --- the pre-commit hook -----------------------------------------------------------

def test_hook_without_files_passes_silently(capsys):
    assert hook([]) == 0
    assert capsys.readouterr() == ("", "")


def test_hook_gates_the_given_files(capsys):
    assert hook([str(DATA / "pass_structured.md"), str(DATA / "pass_emdash_levels.md")]) == 0
    assert "ok (22 passed, 2 skipped)" in capsys.readouterr().out
    failing_plan = str(DATA / "fail_no_mode_errors.md")
    assert hook([failing_plan]) == 1
    assert f"{failing_plan}:14: PG010 " in capsys.readouterr().out


def test_hook_missing_file_exits_2(capsys):
    assert hook(["gone.md"]) == 2
    err = capsys.readouterr().err
    assert "gone.md" in err and "Traceback" not in err
