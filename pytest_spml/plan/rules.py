"""The plan gate's rules: one function per rule, one result per rule per plan.

Every rule yields a result for every plan (pass, fail, or skip with the
reason), because the JSON and JUnit outputs list every rule: a CI dashboard
shows "PG005 skipped: the plan does not train" rather than a silent gap.

=====  ===========================  ============================================================
id     name                         what it checks
=====  ===========================  ============================================================
PG001  single-integration           exactly one subtask heading carries ``[INTEGRATION]``
PG002  revision-markers             ``[x]`` / ``[ ] REVISED`` / ``[ ] NEW`` are read; one per heading
PG003  integration-reruns           a revised or new subtask the integration depends on re-flags
                                    the integration ``[ ] REVISED`` (it must re-run L0+L1)
PG004  eval-subtask                 a code subtask (not the integration) builds the evaluator core
PG005  eval-cadence-step-based      evaluation cadence is step-based, not epoch-end only
PG006  eval-scope                   evaluation scope is stated (passes, defaulted to full validation)
PG007  eval-entry-modes             both entry modes: checkpoint-based and in-memory
PG008  eval-shared-core             one evaluator core shared by both entry modes
PG009  eval-progress                evaluation progress is visible (bar, start/end messages)
PG010  eval-mode-aware-errors       errors at the evaluation boundary name the entry mode
PG011  runtime-check-cadence        the integration subtask checks at runtime that cadence fires
PG012  runtime-check-mode-report    the integration subtask checks at runtime that the mode is reported
=====  ===========================  ============================================================

PG004-PG012 apply only to a plan that trains *with evaluation*: it mentions
training and evaluation (or validation), and has no ``Evaluation: none``
line. Otherwise they are skipped with that reason.

The evaluation rules read the structured ``## Evaluation`` section of the
template and natural wording alike. They look at *evaluation context* lines:
the ``## Evaluation`` section, the evaluation subtask, and any line that
mentions evaluation or validation, so "checkpoint every 1000 steps" is not
mistaken for an evaluation cadence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..report import CheckResult, Status
from .model import DONE, NEW, REVISED, Line, Plan, Subtask

RULE_TABLE: dict[str, tuple[str, str]] = {
    "PG001": ("single-integration", "Exactly one subtask heading carries [INTEGRATION]."),
    "PG002": ("revision-markers", "Revision markers [x], [ ] REVISED, [ ] NEW are read; at most one per heading."),
    "PG003": ("integration-reruns",
              "A revised or new subtask the integration depends on re-flags the integration [ ] REVISED."),
    "PG004": ("eval-subtask", "A code subtask, not the integration, builds the evaluator core."),
    "PG005": ("eval-cadence-step-based", "Evaluation cadence is step-based, not epoch-end only."),
    "PG006": ("eval-scope", "Evaluation scope is stated; when it is not, it defaults to full validation."),
    "PG007": ("eval-entry-modes", "Evaluation has both entry modes: checkpoint-based and in-memory."),
    "PG008": ("eval-shared-core", "One evaluator core is shared by both entry modes."),
    "PG009": ("eval-progress", "Evaluation progress is visible: progress bar or output, start/end messages."),
    "PG010": ("eval-mode-aware-errors", "Failures at the evaluation boundary are reported with the entry mode."),
    "PG011": ("runtime-check-cadence", "The integration subtask has a runtime check that evaluation fires on cadence."),
    "PG012": ("runtime-check-mode-report",
              "The integration subtask has a runtime check that evaluation reports its mode."),
}

DEFAULT_SCOPE = "full validation"

# --- vocabulary ----------------------------------------------------------------
# Tolerant on purpose: plans are prose written by people and agents. Each
# pattern is tested against one line at a time.


def _re(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.I)


TRAINING = _re(r"\b(?:train|trains|trained|training|trainer|fine-?tun\w*|pre-?train\w*)\b")
EVALUATION = _re(r"\b(?:eval\w*|validat\w*|val[_ ](?:loss|acc\w*|set|split|metrics?|data)|held[- ]out)\b")
# SPML's own vocabulary says "validation" without meaning model evaluation.
NOT_EVALUATION = _re(r"\b(?:runtime|static)[- ]validat\w*|\bvalidation[- ]pyramid\b|\bL[01]\s+validat\w*")
EVAL_SUBTASK_NAME = _re(r"\b(?:eval\w*|validation|validator)\b")

_STEP_UNIT = r"(?:optimi[sz]er\s+|training\s+|train\s+|global\s+|gradient\s+)?(?:steps?|iterations?|iters?|updates?)"
STEP_CADENCE = _re(
    rf"\b(?:every|each)\s+(?:[\w`{{}}.,]+\s+)?{_STEP_UNIT}\b"  # every 500 steps, every N steps, each 1k iterations
    rf"|\bper\s+[\d,_]+k?\s+{_STEP_UNIT}\b"  # once per 500 steps (but not "loss per step")
    r"|\bstep[- ]based\b"
    r"|\b(?:eval|evaluation|val|validation)[_ -]?(?:interval|every|steps|freq|frequency|period)\b\s*[:=]?\s*\d"
    rf"|\bcadence\b[^\n]*?\b\d[\d,_]*\s*k?\s+{_STEP_UNIT}\b"  # Cadence: 500 steps
    r"|\bat\s+steps\s+\d[\d,_]*\s*(?:,|and)\s*\d"  # at steps 500, 1000, ... (not "at step 1500": one step)
)
EPOCH_CADENCE = _re(
    r"\b(?:every|each|per|after|end\s+of\s+(?:each|every|the))\s+(?:\d+\s+)?epochs?\b"
    r"|\bepoch[- ](?:end|based|level)\b|\bper[- ]epoch\b|\bend[- ]of[- ]epoch\b"
)
SCOPE = _re(
    r"\bfull\s+(?:validation|val|test|eval\w*|held[- ]out)\b"
    r"|\bscope\s*[:=]\s*(?!tbd|todo|none|n/a|\?)\w|\bevaluation\s+scope\s+is\b"
    r"|\bsubset\s+of\s+(?:the\s+)?(?:first\s+)?[\d,_]+"
    r"|\b(?:first|random|fixed)\s+[\d,_]+k?\s+(?:validation\s+|val\s+|held[- ]out\s+|test\s+)?"
    r"(?:examples|samples|batches|images|sequences|tokens)\b"
    r"|\b[\d,_]+k?\s+(?:validation|val|held[- ]out)\s+(?:examples|samples|batches|images|sequences)\b"
    r"|\b(?:entire|whole|complete)\s+(?:validation|val|held[- ]out|test)\b"
    r"|\bmax_?(?:eval|val)_?(?:batches|samples|steps)\b"
)
CHECKPOINT_MODE = _re(
    r"\bcheckpoint[- ]based\b|\bcheckpoint\s+(?:mode|entry)\b|--checkpoint\b"
    r"|\bfrom\s+(?:a|the)\s+(?:saved\s+|trained\s+|final\s+|best\s+)?checkpoint"
    r"|\b(?:load|loads|loading|reload\w*|restor\w*)\s+(?:a\s+|the\s+|its\s+)?(?:saved\s+|trained\s+)?checkpoint"
    r"|\beval\w*\s+(?:of\s+)?(?:a|the)\s+(?:saved\s+)?checkpoint"
)
IN_MEMORY_MODE = _re(
    r"\bin[- ]memory\b|\bin[- ]training\b|\bduring\s+training\b|\blive\s+model\b|\bin[- ]process\b"
    r"|\bcurrent\s+(?:model|weights|parameters)\b"
)
SHARED = _re(r"\b(?:one|single|same|shared|common|reused?)\b")
CORE = _re(r"\b(?:core|function|routine|code[- ]path|implementation|entry[- ]point)\b")
BOTH_MODES_USE = _re(r"\bboth\b[^\n]*\bmodes?\b[^\n]*\b(?:call|calls|use|uses|share|shares|reuse|reuses|through)\b"
                     r"|\b(?:used|called|shared|reused)\s+by\s+both\b")
PROGRESS = _re(
    r"\bprogress\b|\btqdm\b|\bphase[- ](?:start|end)\b|\bheartbeat\b"
    r"|\b(?:start|begin)\w*\b[^\n]{0,40}?\b(?:end|finish|complet)\w*"
)
FAILURE = _re(r"\b(?:error|errors|fail\w*|exception\w*|raise[sd]?|raising|crash\w*)\b")
MODE = _re(r"\bmode[sd]?\b|\bmode[- ]aware\b|\bcheckpoint[- ]based\b|\bin[- ]memory\b")
FIRES = _re(r"\b(?:fires?|fired|firing|triggers?|triggered|(?:runs?|ran|happens?|happened|occurs?|occurred)\s+at)\b")
FIRES_AT_STEPS = _re(r"\b(?:fires?|fired|firing|triggers?|triggered|runs?|ran|happens?|happened|occurs?|occurred)"
                     r"\s+(?:at|on|after)\s+(?:global\s+|optimizer\s+)?steps?\s+\d")
RUNTIME_CHECK = _re(r"\b(?:runtime|check\w*|verif\w*|assert\w*|confirm\w*|smoke|L1)\b")
CADENCE = _re(r"\bcadence\b")
ABOUT_EVALUATION = _re(
    r"\bcadence\b|\beval\w*|\bvalidat\w*|\bin[- ]memory\b|\bcheckpoint[- ]based\b|\bentry\s+modes?\b"
)
REPORTS = _re(r"\b(?:report\w*|log|logs|logged|logging|print\w*|announc\w*|emit\w*|says?|shows?|display\w*)\b")
BULLET_LINE = re.compile(r"^(\s*)(?:[-*+]|\d+[.)])\s+")
NOTHING = _re(r"^\s*(?:none|n/?a|no|tbd|todo|\?+|-+)?\s*[.]?\s*$")


# --- facts the rules share ----------------------------------------------------

@dataclass(frozen=True)
class PlanFacts:
    """What several rules need, worked out once per plan."""

    integration: Subtask | None  # the one integration subtask, if there is exactly one
    eval_subtask: Subtask | None
    applies: bool  # do the evaluation rules apply?
    reason: str  # why they do or do not
    applies_evidence: Mapping[str, Any]
    context: tuple[Line, ...]  # evaluation-context lines
    fix_line: int  # where a missing evaluation item should be written

    @classmethod
    def of(cls, plan: Plan) -> PlanFacts:
        integrations = plan.integrations
        integration = integrations[0] if len(integrations) == 1 else None
        eval_subtask = _find_eval_subtask(plan)
        applies, reason, evidence = _evaluation_applies(plan)
        fix_line = (plan.evaluation.line if plan.evaluation else
                    eval_subtask.line if eval_subtask else 1)
        return cls(integration, eval_subtask, applies, reason, evidence,
                   tuple(_evaluation_context(plan, eval_subtask)), fix_line)


def mentions_evaluation(text: str) -> bool:
    return bool(EVALUATION.search(NOT_EVALUATION.sub(" ", text)))


def _evaluation_applies(plan: Plan) -> tuple[bool, str, dict[str, Any]]:
    if plan.evaluation_opt_out is not None:
        line = plan.evaluation_opt_out.number
        return False, f"the plan opts out of evaluation with 'Evaluation: none' (line {line})", {"opt_out_line": line}
    training = next((ln for ln in plan.numbered() if TRAINING.search(ln.text)), None)
    if training is None:
        return False, "the plan does not train (no 'train'/'training'/'fine-tune' anywhere)", {}
    evaluation = next((ln for ln in plan.numbered() if mentions_evaluation(ln.text)), None)
    if evaluation is None:
        return False, "the plan trains but never mentions evaluation or validation", {"training_line": training.number}
    return True, "the plan trains with evaluation", {"training_line": training.number,
                                                       "evaluation_line": evaluation.number}


def _find_eval_subtask(plan: Plan) -> Subtask | None:
    named = _named_eval_subtask(plan)
    if named is not None and not named.is_integration:
        return named
    return next((s for s in plan.subtasks if not s.is_integration and EVAL_SUBTASK_NAME.search(s.name)), None)


def _named_eval_subtask(plan: Plan) -> Subtask | None:
    """The subtask the ``## Evaluation`` section names with ``- Subtask: N``."""
    item = plan.evaluation.item("subtask", "evaluation subtask", "evaluator subtask") if plan.evaluation else None
    number = re.search(r"\d+(?:\.\d+)*[a-z]?\b", item.value, re.I) if item else None
    return plan.subtask(number.group(0)) if number else None


def _evaluation_context(plan: Plan, eval_subtask: Subtask | None) -> Iterable[Line]:
    numbers: set[int] = set()
    if plan.evaluation is not None:
        numbers.add(plan.evaluation.line)
        numbers.update(ln.number for ln in plan.evaluation.body)
    if eval_subtask is not None:
        numbers.update(ln.number for ln in eval_subtask.lines())
    numbers.update(ln.number for ln in plan.numbered() if mentions_evaluation(ln.text))
    return (Line(n, plan.lines[n - 1]) for n in sorted(numbers))


def _first(lines: Iterable[Line], *patterns: re.Pattern[str]) -> Line | None:
    """The first line that every pattern matches."""
    return next((ln for ln in lines if all(p.search(ln.text) for p in patterns)), None)


def _with_list_intro(lines: Iterable[Line]) -> list[Line]:
    """Each list item's text prefixed with the line that introduces its list.

    Plans write "Runtime checks:" once and list the checks below it; a check
    in that list must still count as a runtime check.
    """
    out: list[Line] = []
    intro: tuple[int, bool, str] | None = None  # (indent, is a list item, text) of a line ending with ":"
    for line in lines:
        text = line.text.rstrip()
        if not text:  # blank lines may separate list items
            out.append(line)
            continue
        is_item = BULLET_LINE.match(text) is not None
        indent = len(text) - len(text.lstrip())
        if intro is not None:
            ends_nested_list = is_item and intro[1] and indent <= intro[0]  # a sibling of "- Runtime checks:"
            ends_list = not is_item  # a paragraph
            if ends_nested_list or ends_list:
                intro = None
        out.append(Line(line.number, f"{intro[2].strip()} {text}" if intro else text))
        if text.endswith(":"):
            intro = (indent, is_item, text)
    return out


def _found(line: Line) -> dict[str, Any]:
    return {"line": line.number, "text": line.text.strip()}


def _result(rule_id: str, plan: Plan, status: Status, message: str, line: int | None,
            evidence: Mapping[str, Any] | None = None) -> CheckResult:
    name, _ = RULE_TABLE[rule_id]
    return CheckResult(rule_id, status, message, path=str(plan.path), line=line, name=name,
                       evidence=dict(evidence or {}))


# --- integration and revision rules -----------------------------------------

def check_single_integration(plan: Plan, facts: PlanFacts) -> CheckResult:
    """PG001: exactly one subtask heading carries [INTEGRATION]."""
    marked = plan.integrations
    stray = "".join(
        f"; line {ln.number} carries [INTEGRATION] but is not a subtask heading ('## Subtask N: name')"
        for ln in plan.stray_integration
    )
    evidence = {"lines": [s.line for s in marked], "stray_lines": [ln.number for ln in plan.stray_integration]}
    if len(marked) == 1:
        only = marked[0]
        return _result("PG001", plan, Status.PASS, f"integration subtask: {only.title}{stray}", only.line, evidence)
    if not plan.subtasks:
        return _result("PG001", plan, Status.FAIL,
                       "no subtask headings found: write '## Subtask N: name' headings and mark the one that "
                       f"assembles the training pipeline [INTEGRATION]{stray}", 1, evidence)
    if not marked:
        return _result("PG001", plan, Status.FAIL,
                       "no subtask is marked [INTEGRATION]: add [INTEGRATION] to the heading of the subtask that "
                       "assembles the final training pipeline (it alone runs L0+L1); send the plan back for "
                       f"revision{stray}", plan.subtasks[0].line, evidence)
    lines = ", ".join(str(s.line) for s in marked)
    return _result("PG001", plan, Status.FAIL,
                   f"{len(marked)} subtasks are marked [INTEGRATION] (lines {lines}): keep the marker only on the "
                   "one subtask that assembles the final training pipeline; the others are code subtasks",
                   marked[0].line, evidence)


def check_revision_markers(plan: Plan, facts: PlanFacts) -> CheckResult:
    """PG002: revision markers are read and reported; a heading carries at most one of them."""
    by_kind = {kind: [s.number for s in plan.subtasks if kind in s.markers] for kind in (DONE, REVISED, NEW)}
    evidence = {**by_kind, "fresh": [s.number for s in plan.subtasks if s.revision is None]}
    for subtask in plan.subtasks:
        kinds = sorted(k for k in (DONE, REVISED, NEW) if k in subtask.markers)
        if len(kinds) > 1:
            shown = " and ".join({DONE: "[x]", REVISED: "[ ] REVISED", NEW: "[ ] NEW"}[k] for k in kinds)
            return _result("PG002", plan, Status.FAIL,
                           f"{subtask.title} is marked both {shown}: keep one marker ([x] unchanged, "
                           "[ ] REVISED re-run on existing code, [ ] NEW fresh)", subtask.line, evidence)
    if not any(by_kind.values()):
        return _result("PG002", plan, Status.PASS, "no revision markers: every subtask runs fresh", None, evidence)
    summary = "; ".join(f"{kind} {', '.join(numbers)}" for kind, numbers in by_kind.items() if numbers)
    return _result("PG002", plan, Status.PASS, f"revision markers: {summary}", None, evidence)


def integration_dependencies(plan: Plan, integration: Subtask) -> tuple[list[Subtask], bool]:
    """The subtasks the integration depends on, and whether the plan says so explicitly.

    Without a ``Depends on:`` line the integration assembles every code subtask.
    """
    if integration.depends_on is None:
        return [s for s in plan.subtasks if s is not integration], False
    return [s for s in plan.subtasks if s.number in integration.depends_on and s is not integration], True


def check_integration_reruns(plan: Plan, facts: PlanFacts) -> CheckResult:
    """PG003: a revised or new dependency of the integration forces it to re-run L0+L1."""
    integration = facts.integration
    if integration is None:
        return _result("PG003", plan, Status.SKIP, "needs exactly one [INTEGRATION] subtask (see PG001)", None)
    if not any(s.revision for s in plan.subtasks):
        return _result("PG003", plan, Status.SKIP,
                       "not a revision: no [x], [ ] REVISED or [ ] NEW markers", None)
    deps, explicit = integration_dependencies(plan, integration)
    changed = [s for s in deps if s.revision in (REVISED, NEW)]
    evidence = {"integration": integration.number, "depends_on": [s.number for s in deps],
                "explicit_depends_on": explicit, "changed_dependencies": [s.number for s in changed],
                "integration_marker": integration.revision}
    how = ("through its Depends on: line" if explicit
           else "as it has no Depends on: line, it assembles every code subtask")
    if integration.revision in (REVISED, NEW):
        why = (f"it depends on {', '.join(s.title for s in changed)}, which changed" if changed
               else f"the integration itself is [ ] {integration.revision.upper()}")
        return _result("PG003", plan, Status.PASS,
                       f"{integration.title} re-runs L0+L1: {why}", integration.line, evidence)
    if changed:
        names = ", ".join(f"{s.title} is [ ] {(s.revision or '').upper()}" for s in changed)
        them = "it" if len(changed) == 1 else "them"
        return _result("PG003", plan, Status.FAIL,
                       f"{names}, and the [INTEGRATION] {integration.title} depends on {them} ({how}), but the "
                       "integration is not re-flagged: mark the integration `[ ] REVISED`: it must re-run L0+L1",
                       integration.line, evidence)
    return _result("PG003", plan, Status.PASS,
                   f"{integration.title} keeps its results: no subtask it depends on is revised or new",
                   integration.line, evidence)


# --- evaluation rules (PG004-PG012) ------------------------------------------

def _skip_unless_applies(rule_id: str, plan: Plan, facts: PlanFacts) -> CheckResult | None:
    if facts.applies:
        return None
    return _result(rule_id, plan, Status.SKIP, f"does not apply: {facts.reason}", None,
                   {"applies": False, **facts.applies_evidence})


def _missing(rule_id: str, plan: Plan, facts: PlanFacts, what: str, fix: str,
             evidence: Mapping[str, Any] | None = None) -> CheckResult:
    where = "the ## Evaluation section" if plan.evaluation else (
        facts.eval_subtask.title if facts.eval_subtask else "the plan")
    return _result(rule_id, plan, Status.FAIL, f"{what}: {fix}; write it in {where}", facts.fix_line, evidence)


def check_eval_subtask(plan: Plan, facts: PlanFacts) -> CheckResult:
    """PG004: a dedicated evaluation code subtask builds the evaluator core."""
    if (skipped := _skip_unless_applies("PG004", plan, facts)) is not None:
        return skipped
    item = plan.evaluation.item("subtask", "evaluation subtask", "evaluator subtask") if plan.evaluation else None
    named = _named_eval_subtask(plan)
    if item is not None and named is None:
        return _result("PG004", plan, Status.FAIL,
                       f"the ## Evaluation section names subtask '{item.value}', which is not a subtask heading "
                       "of this plan: point 'Subtask:' at the code subtask that builds the evaluator core",
                       item.line, {"value": item.value})
    if named is not None and named.is_integration:
        return _result("PG004", plan, Status.FAIL,
                       f"the ## Evaluation section names the [INTEGRATION] {named.title} as the evaluation subtask: "
                       "the evaluator core is a code subtask of its own; the integration only decides when it fires",
                       item.line if item else named.line, {"subtask": named.number})
    if facts.eval_subtask is not None:
        s = facts.eval_subtask
        return _result("PG004", plan, Status.PASS, f"evaluation subtask: {s.title}", s.line,
                       {"subtask": s.number, "line": s.line})
    integration_only = next((s for s in plan.integrations if EVAL_SUBTASK_NAME.search(s.name)), None)
    if integration_only is not None:
        return _result("PG004", plan, Status.FAIL,
                       f"only the [INTEGRATION] {integration_only.title} names evaluation: add a code subtask "
                       "'Subtask N: Evaluator core' that builds the one evaluator core, so the trainer only decides "
                       "when evaluation fires", integration_only.line, {"integration": integration_only.number})
    return _missing("PG004", plan, facts, "no dedicated evaluation subtask",
                    "add a code subtask (e.g. '## Subtask N: Evaluator core') that builds the one evaluator core "
                    "both entry modes call, or write 'Evaluation: none' if the plan has no evaluation")


def check_step_cadence(plan: Plan, facts: PlanFacts) -> CheckResult:
    """PG005: evaluation cadence is step-based ("every 500 steps"), not epoch-end only."""
    if (skipped := _skip_unless_applies("PG005", plan, facts)) is not None:
        return skipped
    step = _first(facts.context, STEP_CADENCE)
    if step is not None:
        return _result("PG005", plan, Status.PASS, f"step-based evaluation cadence (line {step.number})",
                       step.number, _found(step))
    epoch = _first(facts.context, EPOCH_CADENCE)
    if epoch is not None:
        match = EPOCH_CADENCE.search(epoch.text)
        said = match.group(0) if match else "per epoch"
        return _result("PG005", plan, Status.FAIL,
                       f"evaluation cadence '{said}' is epoch-end only, which is not step-based: a long run goes "
                       "hours without an evaluation signal; state a step cadence such as 'Cadence: every 500 steps'",
                       epoch.number, _found(epoch))
    return _missing("PG005", plan, facts, "no step-based evaluation cadence",
                    "state how many optimizer steps apart evaluation fires, e.g. '- Cadence: every 500 steps' "
                    "(the trainer decides when evaluation runs)")


def check_eval_scope(plan: Plan, facts: PlanFacts) -> CheckResult:
    """PG006: the evaluation scope is stated; if not, it defaults to full validation (a pass)."""
    if (skipped := _skip_unless_applies("PG006", plan, facts)) is not None:
        return skipped
    item = plan.evaluation.item("scope", "evaluation scope") if plan.evaluation else None
    if item is not None and not NOTHING.match(item.value):
        return _result("PG006", plan, Status.PASS, f"evaluation scope: {item.value}", item.line,
                       {**_found(Line(item.line, item.value)), "defaulted": False})
    stated = _first(facts.context, SCOPE)
    if stated is not None:
        return _result("PG006", plan, Status.PASS, f"evaluation scope stated (line {stated.number})",
                       stated.number, {**_found(stated), "defaulted": False})
    return _result("PG006", plan, Status.PASS,
                   f"evaluation scope not stated: defaulted to `{DEFAULT_SCOPE}`; add '- Scope: ...' to override",
                   facts.fix_line, {"defaulted": True, "scope": DEFAULT_SCOPE})


def check_entry_modes(plan: Plan, facts: PlanFacts) -> CheckResult:
    """PG007: both entry modes are planned, checkpoint-based and in-memory (during training)."""
    if (skipped := _skip_unless_applies("PG007", plan, facts)) is not None:
        return skipped
    checkpoint = _first(facts.context, CHECKPOINT_MODE)
    in_memory = _first(facts.context, IN_MEMORY_MODE)
    evidence = {"checkpoint_based": _found(checkpoint) if checkpoint else None,
                "in_memory": _found(in_memory) if in_memory else None}
    if checkpoint and in_memory:
        return _result("PG007", plan, Status.PASS,
                       f"both entry modes: checkpoint-based (line {checkpoint.number}), "
                       f"in-memory (line {in_memory.number})", checkpoint.number, evidence)
    missing = [name for name, found in (("checkpoint-based", checkpoint), ("in-memory", in_memory)) if not found]
    what = (f"the {missing[0]} evaluation entry mode is missing" if len(missing) == 1
            else "the checkpoint-based and in-memory evaluation entry modes are missing")
    return _missing("PG007", plan, facts, what,
                    "plan both entry modes, checkpoint-based (load a saved checkpoint, then evaluate) and "
                    "in-memory (the trainer evaluates its live model during training)", evidence)


def check_shared_core(plan: Plan, facts: PlanFacts) -> CheckResult:
    """PG008: one evaluator core is shared by both entry modes."""
    if (skipped := _skip_unless_applies("PG008", plan, facts)) is not None:
        return skipped
    item = plan.evaluation.item("shared core", "core", "evaluator core") if plan.evaluation else None
    if item is not None and not NOTHING.match(item.value):
        return _result("PG008", plan, Status.PASS, f"shared evaluator core: {item.value}", item.line,
                       _found(Line(item.line, item.value)))
    # "- Shared core: TBD" names the item without stating it; do not let its own words count.
    context = [ln for ln in facts.context if item is None or ln.number not in {x.number for x in item.lines}]
    shared = _first(context, SHARED, CORE) or _first(context, BOTH_MODES_USE)
    if shared is not None:
        return _result("PG008", plan, Status.PASS, f"one evaluator core shared by both modes (line {shared.number})",
                       shared.number, _found(shared))
    if item is not None:
        return _result("PG008", plan, Status.FAIL,
                       f"'{item.key}' in the ## Evaluation section is a placeholder ('{item.value}'): name the one "
                       "evaluator core both entry modes call, e.g. '- Shared core: evaluate(model, loader)'",
                       item.line, {"value": item.value})
    return _missing("PG008", plan, facts, "no shared evaluator core",
                    "say that both entry modes call one evaluator core (e.g. '- Shared core: "
                    "evaluate(model, loader)'), so checkpoint and in-training numbers cannot drift apart")


def check_progress(plan: Plan, facts: PlanFacts) -> CheckResult:
    """PG009: evaluation progress is visible during long runs."""
    if (skipped := _skip_unless_applies("PG009", plan, facts)) is not None:
        return skipped
    progress = _first(facts.context, PROGRESS)
    if progress is not None:
        return _result("PG009", plan, Status.PASS, f"evaluation progress is visible (line {progress.number})",
                       progress.number, _found(progress))
    return _missing("PG009", plan, facts, "evaluation progress visibility not planned",
                    "require start/end messages and a progress bar or progress output for each evaluation "
                    "(e.g. '- Progress: tqdm over validation batches; start and end lines with the step')")


def check_mode_aware_errors(plan: Plan, facts: PlanFacts) -> CheckResult:
    """PG010: failures at the evaluation boundary are reported with the entry mode."""
    if (skipped := _skip_unless_applies("PG010", plan, facts)) is not None:
        return skipped
    handled = _first(facts.context, FAILURE, MODE)
    if handled is not None:
        return _result("PG010", plan, Status.PASS, f"mode-aware failure handling (line {handled.number})",
                       handled.number, _found(handled))
    return _missing("PG010", plan, facts, "no mode-aware failure handling at the evaluation boundary",
                    "require evaluation errors to name the entry mode (checkpoint-based or in-memory) and what "
                    "failed, e.g. '- Failure handling: errors name the mode and the checkpoint or step'")


def _integration_check(rule_id: str, plan: Plan, facts: PlanFacts, what: str,
                       alternatives: Sequence[tuple[re.Pattern[str], ...]], fix: str) -> CheckResult:
    """A runtime check that must be written in the integration subtask's own text.

    A line counts when it matches every pattern of any one of ``alternatives``.
    """
    if (skipped := _skip_unless_applies(rule_id, plan, facts)) is not None:
        return skipped
    integration = facts.integration
    if integration is None:
        return _result(rule_id, plan, Status.SKIP, "needs exactly one [INTEGRATION] subtask (see PG001)", None)

    def first(lines: Iterable[Line]) -> Line | None:
        candidates = _with_list_intro(lines)
        found = next((hit for group in alternatives if (hit := _first(candidates, *group)) is not None), None)
        return Line(found.number, plan.lines[found.number - 1]) if found else None  # as written, without its intro

    found = first(integration.body)
    if found is not None:
        return _result(rule_id, plan, Status.PASS, f"{what} in {integration.title} (line {found.number})",
                       found.number, _found(found))
    inside = {ln.number for ln in integration.lines()}
    elsewhere = first(ln for ln in plan.numbered() if ln.number not in inside)
    hint = (f"; line {elsewhere.number} states it outside the integration subtask: move it there"
            if elsewhere else "")
    return _result(rule_id, plan, Status.FAIL,
                   f"the [INTEGRATION] {integration.title} has no {what}: {fix}{hint}", integration.line,
                   {"elsewhere": _found(elsewhere) if elsewhere else None})


def check_cadence_runtime_check(plan: Plan, facts: PlanFacts) -> CheckResult:
    """PG011: the integration subtask checks at runtime that evaluation fires on the planned cadence."""
    return _integration_check(
        "PG011", plan, facts, "runtime check that evaluation fires on cadence",
        alternatives=((RUNTIME_CHECK, FIRES, ABOUT_EVALUATION), (RUNTIME_CHECK, CADENCE),
                      (FIRES_AT_STEPS, ABOUT_EVALUATION)),
        fix="add a runtime check such as 'Runtime check: in a short run, evaluation fires at steps 500 and 1000'",
    )


def check_mode_report_runtime_check(plan: Plan, facts: PlanFacts) -> CheckResult:
    """PG012: the integration subtask checks at runtime that evaluation reports its entry mode."""
    return _integration_check(
        "PG012", plan, facts, "runtime check that evaluation reports its mode",
        alternatives=((REPORTS, MODE, ABOUT_EVALUATION),),
        fix="add a runtime check such as 'Runtime check: each evaluation logs its mode (in-memory or "
            "checkpoint-based)'",
    )


Rule = Callable[[Plan, PlanFacts], CheckResult]

RULES: tuple[tuple[str, Rule], ...] = (
    ("PG001", check_single_integration),
    ("PG002", check_revision_markers),
    ("PG003", check_integration_reruns),
    ("PG004", check_eval_subtask),
    ("PG005", check_step_cadence),
    ("PG006", check_eval_scope),
    ("PG007", check_entry_modes),
    ("PG008", check_shared_core),
    ("PG009", check_progress),
    ("PG010", check_mode_aware_errors),
    ("PG011", check_cadence_runtime_check),
    ("PG012", check_mode_report_runtime_check),
)


def check_plan(plan: Plan) -> list[CheckResult]:
    """Every rule applied to ``plan``: exactly one result per rule, in rule-id order."""
    facts = PlanFacts.of(plan)
    return [rule(plan, facts) for _, rule in RULES]
