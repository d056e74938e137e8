#!/usr/bin/env bash
# Set up .venv and run the main demo on scikit-learn's digits (no download):
#   1. train an MLP verifiably (rounded precision, rounding logs, Merkle ledger, checkpoints)
#   2. audit it: replay every step bit-for-bit under an emulated different machine
#   3. a dishonest trainer edits its weights at one step: the auditor disagrees, and the dispute
#      game bisects the two ledgers to that step and lets a referee judge
#   4. train an MLP in exact fixed point, prove every epoch in zero knowledge, publish the public
#      bundle (nothing private in it) and verify the proofs from the bundle alone
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
CLI=.venv/bin/lightning-zk
RUNS=runs/demo
rm -rf "$RUNS"
echo "== 1. train verifiably: lightning-zk fit =="
$CLI fit --config examples/configs/digits_mlp.yaml --trainer.strategy.init_args.run_dir "$RUNS/train" \
  --trainer.enable_progress_bar false --trainer.enable_model_summary false 2>&1 | grep -v Warning | tail -n 3
$CLI ledger "$RUNS/train"
echo "== 2. audit on this machine: lightning-zk audit =="
$CLI audit "$RUNS/train" --out "$RUNS/audit"
echo "== 3. audit on an emulated other machine, a dishonest run, and the dispute game =="
$PY -m examples.demo_dispute --runs "$RUNS"
echo "== 4. fixed-point training with zero-knowledge proofs: prove, publish, verify =="
$PY -m examples.digits_fixed --run-dir "$RUNS/fixed" 2>&1 | grep -v Warning | tail -n 2
$CLI publish "$RUNS/fixed" "$RUNS/fixed-public"
$CLI verify "$RUNS/fixed-public"
