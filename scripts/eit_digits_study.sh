#!/usr/bin/env bash
# EIT vs ViT vs ViT without position embedding on digits; 3 seeds each, same budget and similar size
# (configs/experiment/eit/digits_study.yaml). About 15 minutes on 2 CPU cores.
#   scripts/eit_digits_study.sh [log dir]        then: python scripts/summarize_runs.py <log dir>
set -euo pipefail
LOG=${1:-outputs/eit_digits_study}
BIN=${BIN:-.venv/bin}
run() { "$BIN/vitlab-train" -m experiment=eit/digits_study seed=0,1,2 trainer.enable_progress_bar=false \
          paths.log_dir="$LOG" "$@"; }
# EIT: conv 3/1 + max-pool 4 stem (64 tokens), decreasing convolution, no position embedding
run model=eit_cifar model.backbone.embed_dim=128 model.backbone.depth=6 model.backbone.num_heads=4 \
    model.backbone.mlp_ratio=2.0 model.backbone.drop_rate=0 model.backbone.proj_drop_rate=0 \
    model.backbone.attn_drop_rate=0 model.backbone.drop_path_rate=0.1
run '~model/stem'                                      # ViT: patch-4 linear embedding, learned position
run '~model/stem' model/pos_embed=none                 # the same ViT without position embedding
python scripts/summarize_runs.py "$LOG"
