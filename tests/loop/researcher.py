"""A scripted researcher command for the loop's tests: it follows a plan, round by round.

The plan is a JSON file named by $PLAN: {"<round>": {action: ...}} with actions

    write:    {path: text}      files to write (relative to the repository)
    append:   {path: text}      text to append
    delete:   [path, ...]
    shell:    [command, ...]    run in the repository (e.g. a `git commit` of its own)
    strategy: text              written to $SPML_STRATEGY with `insight`
    insight:  text
    exit:     code              exit with this status after acting
    sleep:    seconds           sleep before exiting

A round without an entry changes nothing. Every call is logged to
$PLAN.calls (one line: round, prompt present) so tests can see what ran.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

plan = json.loads(Path(os.environ["PLAN"]).read_text())
round_n = os.environ["SPML_ROUND"]
step = plan.get(round_n, {})
with open(os.environ["PLAN"] + ".calls", "a") as calls:
    prompt = Path(os.environ["SPML_PROMPT"])
    calls.write(json.dumps({"round": int(round_n), "prompt": prompt.is_file(),
                            "prompt_has_question": "## Research question" in prompt.read_text()}) + "\n")
for path, text in step.get("write", {}).items():
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
for path, text in step.get("append", {}).items():
    with open(path, "a") as fh:
        fh.write(text)
for path in step.get("delete", []):
    Path(path).unlink()
for command in step.get("shell", []):
    subprocess.run(command, shell=True, check=True)
if "strategy" in step:
    Path(os.environ["SPML_STRATEGY"]).write_text(
        f"strategy: {step['strategy']}\n" + (f"insight: {step['insight']}\n" if "insight" in step else ""))
time.sleep(step.get("sleep", 0))
sys.exit(step.get("exit", 0))
