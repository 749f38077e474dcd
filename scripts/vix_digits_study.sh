#!/usr/bin/env bash
# The ViX digits mini-study: linear vs conv embedding, learned vs RoPE position, softmax vs each linear mixer;
# 3 seeds each, same budget (configs/experiment/vix/digits_study.yaml). About 25 minutes on 2 CPU cores.
#   scripts/vix_digits_study.sh [log dir]        then: python scripts/summarize_runs.py <log dir>
set -euo pipefail
LOG=${1:-outputs/vix_digits_study}
BIN=${BIN:-.venv/bin}
run() { "$BIN/vitlab-train" -m experiment=vix/digits_study seed=0,1,2 trainer.enable_progress_bar=false \
          paths.log_dir="$LOG" "$@"; }
run                                                    # ViT: linear embedding, learned 1-D position, softmax
run model/stem=conv                                    # + convolutional embedding (ViX "hybrid")
run model/pos_embed=rope1d                             # learned position embedding -> RoPE
run model/mixer=nystrom model.mixer.kernel.num_landmarks=13
run model/mixer=performer
run model/mixer=linformer model.mixer.kernel.k=16
run model/mixer=fnet
python scripts/summarize_runs.py "$LOG"
