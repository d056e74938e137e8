#!/usr/bin/env bash
# Set up .venv and run the main demo: train the digits MLP verifiably from the YAML config,
# then show what the run directory commits.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
RUN=runs/demo
rm -rf "$RUN"
echo "== 1. train verifiably (lightning-zk fit) =="
.venv/bin/lightning-zk fit --config examples/configs/digits_mlp.yaml \
  --trainer.strategy.init_args.run_dir "$RUN" --trainer.max_steps 100
echo "== 2. the run directory =="
.venv/bin/python - "$RUN" <<'PY'
import sys
from lightning_zk import RunDirectory
run = RunDirectory(sys.argv[1])
m, steps = run.read_manifest(), run.read_steps()
logged = sum(s.logged_elements for s in steps)
rounded = sum(s.rounded_elements for s in steps)
print(f"run {m['run_id']}: {len(steps)} committed steps, final state {m['final_state_digest'][:16]}…")
print(f"rounding logs: {sum(s.log_bytes for s in steps)} bytes, {logged} of {rounded} rounded "
      f"elements logged ({logged / rounded:.2e})")
PY
