"""The researcher's prompt: the protocol, the experiences summary, the last rounds, and the rules of a round."""

from __future__ import annotations

from typing import Any

from ..protocol import Protocol
from .experiences import RoundRow, fmt_metric, summary_for_prompt
from .state import LoopState

# Environment variables every researcher command gets (documented in `spml-loop run --help`).
ENV_DOC = {
    "SPML_ROUND": "the round number",
    "SPML_PROMPT": "this prompt, as a markdown file",
    "SPML_STRATEGY": "a file to write 'strategy: ...' and 'insight: ...' lines to",
    "SPML_PROTOCOL": "the protocol file",
    "SPML_EXPERIENCES": "experiences.md (summary and every round so far)",
    "SPML_RESULTS": "results.jsonl (machine-readable history)",
    "SPML_BASE": "the commit this round starts from",
    "SPML_BRANCH": "the loop's branch",
    "SPML_ROUND_DIR": "this round's folder under .spml/rounds/",
    "SPML_REPO": "the repository root",
}


def _protocol_body(protocol: Protocol) -> str:
    try:
        text = protocol.path.read_text(encoding="utf-8")
    except OSError:
        return ""
    if text.startswith("---"):
        parts = text.split("\n---", 2)
        if len(parts) >= 2:
            return parts[-1].lstrip("-\n").strip()
    return text.strip()


def _ranges(value: Any) -> str:
    if not value:
        return "none declared"
    import yaml

    return "\n" + yaml.safe_dump(value, sort_keys=False, default_flow_style=None).strip()


def build_prompt(protocol: Protocol, state: LoopState, rows: list[RoundRow], round_n: int, last: int = 5) -> str:
    target = fmt_metric(protocol.target) if protocol.target is not None else "none (run max_rounds)"
    margin = state.effective_min_delta
    body = _protocol_body(protocol)
    lines = [
        f"# Autoresearch round {round_n} of {state.max_rounds}",
        "",
        "You are the Researcher of an autoresearch loop. Make ONE focused change that you expect to improve "
        "the metric, then exit. The loop checks your change, trains, runs the fixed evaluation, commits the "
        "change if the metric improves and rolls it back otherwise.",
        "",
        "## Research question",
        "",
        protocol.research_question,
        "",
        "## Goal",
        "",
        f"- metric: `{protocol.eval_metric}` ({protocol.eval_direction}); best so far {fmt_metric(state.best)}; "
        f"baseline {fmt_metric(protocol.baseline)}; target {target}",
        f"- an improvement must be strictly better than the best by more than {fmt_metric(margin)}; ties are not "
        "improvements",
        "",
        *round_rules(protocol),
        "## Experiences so far",
        "",
        summary_for_prompt(state, rows, last).rstrip(),
    ]
    if body:
        lines += ["", "## Protocol notes", "", body]
    return "\n".join(lines) + "\n"


def round_rules(protocol: Any, *, step_log: bool = False) -> list[str]:
    """What a researcher may change, must not change, and how its round is judged: the same for every loop."""
    training = (f"- training: `{protocol.train_command}` under a time limit of {protocol.time_limit_s:g} s (killed at "
                "twice that); a run that goes NaN is stopped early")
    if step_log:
        training += "; it should append one JSON object per step to $SPML_METRICS_LOG (the step log the criteria read)"
    return [
        "## What you may change",
        "",
        "- Variable files (only these may differ from the base): " + ", ".join(f"`{g}`" for g in protocol.variable_files),
        f"- allowed ranges: {_ranges(protocol.variable_range)}",
        "",
        "## What you must not change",
        "",
        "- Fixed files: " + ", ".join(f"`{g}`" for g in protocol.fixed_files) + f", and `{protocol.relpath}` itself. "
        "Any other change (Fixed files, new files outside the Variable files, planted bytecode) fails the round "
        "before training.",
        "- Do not commit, switch branches or rewrite history: the loop is the only writer of git history; your "
        "commits are folded back into uncommitted changes.",
        "",
        "## How the round is judged",
        "",
        training,
        f"- evaluation (fixed, the only source of truth): `{protocol.eval_command}`; only the result file it writes "
        "counts, never printed lines or other files",
        "- write one line `strategy: <what you changed and why>` and optionally `insight: <what you learned>` to "
        "the file named by $SPML_STRATEGY",
        "",
    ]
