"""``incident.md``: the report an engineer reads, rendered from what the diagnosis found (nothing computed here).

Sections follow the triage procedure's output format: incident summary and
constraints, evidence, reproduction steps (a command that reproduces),
hypotheses and experiments, the fix with before/after metrics when one was
validated, prevention, rollback, and a confidence statement with its ceiling.
"""

from __future__ import annotations

import json
from typing import Any

from .hypotheses import CEILINGS, Hypothesis


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, default=str)
    else:
        text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return out


def _metrics_rows(before: dict[str, Any], after: dict[str, Any]) -> list[list[Any]]:
    keys = [k for k in ("healthy", "final_loss", "nonfinite_from_step", "steps", "problem", "verdict", "reason")
            if k in before or k in after]
    return [[k, before.get(k), after.get(k)] for k in keys]


def headline(hypotheses: list[Hypothesis], repro: dict[str, Any] | None) -> str:
    confirmed = [h for h in hypotheses if h.verdict == "confirmed"]
    if repro and repro.get("broken"):
        return f"The pipeline itself crashes (an incident, not a healthy run): {repro['broken']}"
    if confirmed:
        return "Cause found: " + "; ".join(f"{h.cause} — {h.summary}" for h in confirmed)
    if repro and repro.get("reproduced"):
        return "Reproduced, cause not isolated: " + str(repro.get("detail"))
    errors = [h for h in hypotheses if h.verdict == "error"]
    if errors:
        return ("Not healthy: a check could not run — "
                + "; ".join(f"{h.id} {h.summary}" for h in errors))
    return "Nothing reproduces: the checks that ran found the pipeline healthy"


def confidence_statement(hypotheses: list[Hypothesis], repro: dict[str, Any] | None) -> str:
    confirmed = sorted((h for h in hypotheses if h.verdict == "confirmed"), key=lambda h: -(h.confidence or 0))
    ceilings = ", ".join(f"{k} {v:.2f}" for k, v in CEILINGS.items())
    if confirmed:
        top = confirmed[0]
        return (f"Root cause: {top.cause} — confidence {top.confidence:.2f} (basis: {top.basis}; ceiling "
                f"{top.ceiling:.2f}). Ceilings: {ceilings}.")
    supported = [h for h in hypotheses if h.verdict == "supported"]
    if supported:
        h = supported[0]
        return (f"Most likely: {h.cause} — confidence {h.confidence:.2f} (basis: {h.basis}; ceiling {h.ceiling:.2f})"
                f", not isolated by an experiment. Ceilings: {ceilings}.")
    if (repro and repro.get("broken")) or any(h.verdict == "error" for h in hypotheses):
        return (f"No cause found, and no health claim: a run crashed or saw no data (see the errors above). "
                f"Ceilings: {ceilings}.")
    if repro and repro.get("reproduced"):
        return f"No cause confirmed; the incident reproduces (observation). Ceilings: {ceilings}."
    return (f"No cause found: confidence 0.60 that the problem is outside what was tested (environment, hardware, "
            f"data not reached) (basis: inference; ceiling {CEILINGS['inference']:.2f}). Ceilings: {ceilings}.")


def render(doc: dict[str, Any], hypotheses: list[Hypothesis]) -> str:
    """The markdown of ``incident.md`` from the diagnosis document (the same one ``--format json`` prints)."""
    intake = doc.get("intake", {})
    incident = intake.get("incident") or {}
    repro = doc.get("reproduction")
    lines = [f"# Incident report — {doc.get('pipeline')}", "",
             f"Generated {doc.get('generated')} by pytest-spml {intake.get('versions', {}).get('pytest-spml')} "
             f"(`spml diagnose`). Nothing of the user's (code, data, checkpoints, git history) was modified; code "
             "bisection ran in a temporary clone that is deleted.", "",
             "## Summary", "", f"**{headline(hypotheses, repro)}**", ""]
    if incident:
        lines.append(f"- Incident in the log: {incident.get('kind') or 'none found'}"
                     + (f" at step {incident.get('step')}" if incident.get("step") is not None else "")
                     + f" — {incident.get('detail')} ({incident.get('source')})")
    else:
        lines.append("- No metrics log given (--log): the incident is what the runs below show.")
    if repro:
        lines.append(f"- Reproduction: {repro.get('detail')}")
    lines += ["", "### Constraints", ""]
    constraints = doc.get("constraints", {})
    lines += [f"- {k}: {_cell(v)}" for k, v in constraints.items() if v is not None]
    versions = intake.get("versions", {})
    lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v is not None))
    checkpoints = intake.get("checkpoints") or {}
    if checkpoints:
        lines.append(f"- checkpoints: nearest before the incident {checkpoints.get('before') or 'none'}, nearest "
                     f"after {checkpoints.get('after') or 'none'} ({checkpoints.get('count')} in "
                     f"{checkpoints.get('dir')})")
    git = intake.get("git") or {}
    if git:
        lines.append(f"- git: HEAD {str(git.get('head'))[:12]} on {git.get('branch') or 'a detached HEAD'}, "
                     f"{len(git.get('uncommitted', []))} uncommitted change(s)")

    lines += ["", "## Evidence", ""]
    window = incident.get("window") or []
    if window:
        keys = sorted({k for row in window for k in row if k not in ("step", "line")})[:6]
        lines += ["Metric history around the incident (from the log):", ""]
        lines += _table(["step", *keys], [[row.get("step"), *(row.get(k) for k in keys)] for row in window])
        lines.append("")
    if git.get("commits_since_good"):
        lines += [f"Commits since the last good commit {str(git.get('good'))[:12]}:", "", "```",
                  *git["commits_since_good"], "```", ""]
    if git.get("diff_stat"):
        lines += ["Diff since the last good commit:", "", "```", git["diff_stat"], "```", ""]
    if doc.get("config"):
        lines += ["Config: " + _cell(doc["config"]), ""]
    if not window and not git.get("commits_since_good") and not doc.get("config"):
        lines += ["No log, config or commit range was given; the evidence is the runs below.", ""]

    lines += ["## Reproduction", ""]
    if repro:
        lines.append(f"- Result: {repro.get('detail')}")
        if repro.get("matches_log") is not None:
            lines.append(f"- Matches the logged incident ({incident.get('kind')} at step {incident.get('step')}): "
                         f"{'yes' if repro['matches_log'] else 'no'} (replay: {repro.get('kind')} at step "
                         f"{repro.get('step')})")
        lines.append(f"- Started from: {repro.get('checkpoint') or 'scratch'} (step {repro.get('start_step')}); "
                     f"{repro.get('steps_run')} steps in {repro.get('seconds')} s, seed "
                     f"{constraints.get('seed')}, deterministic kernels")
        if repro.get("skipped_checkpoints"):
            lines.append(f"- Nearer checkpoints not used: {', '.join(repro['skipped_checkpoints'])}")
        if repro.get("smallest_slice_batches") is not None:
            lines.append(f"- Smallest slice that still reproduces: {repro['smallest_slice_batches']} batch(es) "
                         f"ending at step {repro.get('step')}, from the same start")
        if repro.get("shrink_trials"):
            lines += ["", *_table(["batches trained", "steps", "reproduces"],
                                  [[t["batches"], f"{t['from_step']}..{t['to_step']}", t["reproduces"]]
                                   for t in repro["shrink_trials"]])]
        batch = doc.get("batch")
        if batch and batch.get("saved"):
            lines += ["", f"- The first bad batch (step {batch['step']}) is saved as `{batch['saved']}`: "
                          f"`torch.load(path, weights_only=False)`; tensors {', '.join(batch.get('tensors', []))}"]
    else:
        lines.append("- Not run (--checks without reproduce).")
    lines += ["", "Command that reproduces:", "", "```sh", doc.get("reproduce_command", ""), "```", ""]

    lines += ["## Hypotheses and experiments", ""]
    lines += _table(["id", "candidate cause", "verdict", "confidence", "summary"],
                    [[h.id, h.cause, h.verdict, f"{h.confidence:.2f} ({h.basis}, ceiling {h.ceiling:.2f})"
                      if h.confidence is not None else "—", h.summary] for h in hypotheses])
    for h in hypotheses:
        if not h.experiments:
            continue
        lines += ["", f"### {h.id}: {h.cause} — {h.verdict}", ""]
        lines += _table(["experiment", "result", "verdict"], [[e.name, e.result, e.verdict] for e in h.experiments])
    code = doc.get("code") or {}
    if code.get("first_bad"):
        lines += ["", f"First bad commit `{code['first_bad']}`: {code.get('subject')}", "", "```",
                  code.get("stat", ""), "```", "", "```diff", doc.get("code_patch", ""), "```"]

    lines += ["", "## Fix", ""]
    fixes, shown = [], set()
    for h in hypotheses:  # one fix validates several hypotheses (the config revert, the optimizer): show it once
        if h.fix and _cell(h.fix.get("change")) not in shown:
            shown.add(_cell(h.fix.get("change")))
            fixes.append(h)
    if not fixes:
        lines.append("No fix was validated by an experiment.")
    for h in fixes:
        change = h.fix.get("change")
        lines += [f"**{h.id}** — {change if isinstance(change, str) else _cell(change)} (validated by a run):", ""]
        lines += _table(["metric", "before", "after"], _metrics_rows(h.fix.get("before") or {},
                                                                     h.fix.get("after") or {}))
        lines.append("")

    lines += ["", "## Prevention", ""]
    relevant = [h for h in hypotheses if h.verdict in ("confirmed", "supported")] or hypotheses
    lines += [f"- {h.cause}: {h.prevention}" for h in relevant if h.prevention]

    lines += ["", "## Rollback", ""]
    rollbacks = [f"- {h.cause}: {h.rollback}" for h in hypotheses if h.rollback and h.verdict in
                 ("confirmed", "supported")]
    lines += rollbacks or ["- Nothing to roll back: no cause was confirmed."]
    if checkpoints.get("before"):
        lines.append(f"- The last checkpoint before the incident, `{checkpoints['before']}`, is intact: resume "
                     "from it once the cause is fixed.")

    lines += ["", "## Confidence", "", confidence_statement(hypotheses, repro), ""]
    return "\n".join(lines)
