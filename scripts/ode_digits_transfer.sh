#!/usr/bin/env bash
# ODE-transfer mini-study on CPU (issue 5): pre-train a small ViT on digits 0-4, then transfer it to digits 5-9
# with 20 labelled images per class. Each method's learning rate is chosen on val/acc (mean over 3 seeds) from a
# 3-point grid, and its test/acc is reported. About 20 minutes on 2 CPU cores (81 transfer runs of ~14 s).
#   scripts/ode_digits_transfer.sh [log dir]        then: python scripts/summarize_runs.py <log dir> --select optim.lr
set -euo pipefail
LOG=${1:-outputs/ode_study}
BIN=${BIN:-.venv/bin}
WEIGHTS="$LOG/weights/digits04_vit.safetensors"
if [[ ! -f "$WEIGHTS" ]]; then  # step 1: the pre-trained ViT (about 2 minutes)
  "$BIN/vitlab-train" experiment=ode/digits_pretrain seed=0 trainer.enable_progress_bar=false paths.log_dir="$LOG"
fi
PEFT_LR=3e-3,1e-2,3e-2
run() { "$BIN/vitlab-train" -m experiment=ode/digits_transfer seed=0,1,2 trainer.enable_progress_bar=false \
          paths.log_dir="$LOG/transfer" model.backbone.weights="file:$WEIGHTS" "$@"; }
run optim.lr=$PEFT_LR                                           # linear probe (the experiment's default)
run model/peft=full optim.lr=1e-4,3e-4,1e-3                     # full fine-tuning
run model/peft=bitfit optim.lr=$PEFT_LR
run model/peft=lora optim.lr=$PEFT_LR
run model/peft=ssf optim.lr=$PEFT_LR
run model/step_size=scalar optim.lr=$PEFT_LR                    # ODE transfer: 2·L step sizes
run model/step_size=channel optim.lr=$PEFT_LR
run model/head=memory_ode optim.lr=$PEFT_LR                     # frozen backbone + memory-ODE head
run model/step_size=scalar model/head=memory_ode optim.lr=$PEFT_LR
python scripts/summarize_runs.py "$LOG/transfer" --select optim.lr
