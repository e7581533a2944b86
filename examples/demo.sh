#!/usr/bin/env bash
# pytest-spml demo: runs the gates, L1, the training check, the watchdog, autoresearch rounds and
# diagnose on the example projects end to end.
# Run it through `make demo` (which installs everything first), or directly with
# `spml` on PATH. It works in a temporary copy: nothing in this checkout changes.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo_root="$(cd "$here/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/spml-demo.XXXXXX")"
trap 'rm -rf "$work"' EXIT
export GIT_CONFIG_GLOBAL="$work/gitconfig" GIT_CONFIG_NOSYSTEM=1
git config --global user.name "SPML demo"
git config --global user.email "demo@example.com"
git config --global init.defaultBranch main

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
expect() {  # expect RC command...: run, show output, insist on the exit code
    local want=$1; shift
    printf '$ %s\n' "$*"
    set +e; "$@"; local got=$?; set -e
    if [ "$got" -ne "$want" ]; then
        echo "demo: expected exit $want from '$*', got $got" >&2
        exit 1
    fi
    echo "(exit $got, as expected)"
}

step "1. The example project, committed as the base of an autoresearch branch"
cp -r "$here/mnist-mlp" "$work/project"
cd "$work/project"
git init -q -b autoresearch/demo
git add -A && git commit -qm "baseline: L1-validated MLP"
git ls-files

step "2. Plan gate: the example plan passes"
expect 0 spml plan-gate docs/plans/*.md

step "3. Plan gate: a plan without its [INTEGRATION] subtask is refused"
sed 's/\[INTEGRATION\]//' docs/plans/*.md > "$work/broken-plan.md"
expect 1 spml plan-gate "$work/broken-plan.md"

step "3b. L0 static checks: the training code is clean, a careless edit is not"
expect 0 spml l0 train.py model.py eval/ data/
cp train.py "$work/train-careless.py"
sed -i 's/x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)/x, y = x.cuda(), y.cuda()/' "$work/train-careless.py"
sed -i 's/optimizer.zero_grad(set_to_none=True)/pass  # (zero_grad removed)/' "$work/train-careless.py"
expect 1 spml l0 "$work/train-careless.py"
echo "spml l0 --explain OPT001 tells why and how to fix it:"
spml l0 --explain OPT001 | head -4

step "4. A legitimate round: Variable files change, run outputs appear"
sed -i 's/hidden_size: 64/hidden_size: 128/' configs/train.yaml
printf '\n# rounds may change the model\n' >> model.py
mkdir -p checkpoints runs && echo weights > checkpoints/last.pt && echo '{"step": 1}' > runs/metrics.jsonl
git status --short
expect 0 spml fixed-files

step "5. A cheating round: the Fixed evaluation is edited and hidden from git"
printf '\naccuracy = 1.0  # "improvement"\n' >> eval/evaluate.py
git update-index --assume-unchanged eval/evaluate.py
echo "git status --short now shows:"; git status --short
expect 1 spml fixed-files

step "6. The same check as JSON, for agents and CI"
set +e; spml fixed-files --format json > "$work/ff.json"; set -e
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps({"compliant": d["compliant"], "violations": d["violations"]}, indent=2))' "$work/ff.json"

step "7. The git hook refuses to commit the edited evaluation"
git update-index --no-assume-unchanged eval/evaluate.py
git config core.hooksPath "$repo_root/hooks"
git add -A
expect 1 git commit -qm "round 1: wider MLP"
git checkout -q HEAD -- eval/evaluate.py
expect 0 git commit -qm "round 1: wider MLP (hidden 128)"
git log --oneline

step "8. spml init writes the starting files into a new repository"
mkdir "$work/new" && cd "$work/new" && git init -q
expect 0 spml init
find . -type f -not -path './.git/*' | sort
expect 0 spml plan-gate docs/plans/experiment-plan.md

step "9. L1 runtime validation: pytest --spml-l1 trains the chargpt example for 15 seconds"
cp -r "$here/chargpt" "$work/chargpt"
cd "$work/chargpt"
expect 0 python -m pytest --spml-l1 --spml-l1-minutes 0.25 -q -p no:cacheprovider

step "10. Handoff and conclusion from the L1 report"
expect 0 spml handoff --report .spml/l1-report.json --command "python train.py" --total-steps 20000 --out "$work/experiment-context.md"
sed -n '/## L1 baseline/,/^```$/p' "$work/experiment-context.md" | sed -n '1,14p'
expect 0 spml conclude --report .spml/l1-report.json --result effective \
    --hypothesis "a 2-layer char transformer learns the corpus within the L1 budget" --log "$work/experiment-log.md"
grep -E "Result|L1-LOSS|L1-RESUME" "$work/experiment-log.md"

step "11. Training check: a real CPU run whose learning rate ramps into NaN gets STOP, with evidence"
expect 1 spml-loop check --log "$repo_root/tests/watch/runs/lr_ramp_nan.jsonl" --total-steps 400 \
    --evidence-dir "$work/evidence" --state-dir "$work/watch-state"
sed -n '1,12p' "$work/evidence/recovery-prompt.md"
ls "$work/evidence"

step "12. Watchdog: spml-loop watch launches a training run, checks it every 2 s, sees it complete"
cp -r "$here/mnist-mlp" "$work/watched"
cd "$work/watched"
expect 0 spml-loop watch --log runs/metrics.jsonl --total-steps 300 --interval 2 --no-progress \
    --state-dir .spml/watch -- python train.py
sed -n '1,8p' .spml/watch/FINAL_SUMMARY.md

step "13. Autoresearch: three rounds of the built-in sampling researcher on the example project"
cp -r "$here/mnist-mlp" "$work/research"
cd "$work/research"
git init -q -b autoresearch/demo && git add -A && git commit -qm "baseline: L1-validated MLP"
expect 0 spml-loop run --researcher sample --max-rounds 3
git log --oneline
expect 0 spml-loop report
ls .spml

step "14. spml diagnose: the chargpt pipeline's data and determinism check out (nothing to blame)"
cd "$work/chargpt"
expect 0 spml diagnose --pipeline l1.py:CharGPTPipeline --checks data,determinism --steps 10 --out "$work/incident"
sed -n '1,12p' "$work/incident/incident.md"

printf '\n\033[1mDemo finished: every gate behaved as expected.\033[0m\n'
