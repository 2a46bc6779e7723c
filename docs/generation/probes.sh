#!/bin/bash
# The baseline settings tried before the class-forgetting table of docs/generation.md (forget class 3,
# seed 0, 100 iterations unless set, batch 64, 20 images per class): which learning rate / weights / step
# count let ESD, FMN and SalUn forget a digit class at this CPU budget. One folder per setting under
# docs/generation/probes/, each with results.json / results.md (docs/generation/unlearn_table.py).
#   bash docs/generation/probes.sh            (about 15 CPU-minutes)
set -e
cd "$(dirname "$0")/../.."
probe() {
  name=$1; method=$2; cls=$3; seed=$4; shift 4
  OMP_NUM_THREADS=1 .venv/bin/python docs/generation/unlearn_table.py --out "docs/generation/probes/$name" \
    --methods "$method" --classes "$cls" --seeds "$seed" --iterations 100 --batch-size 64 --per-class 20 "$@"
}
probe salun_a0.05 salun 8 1 --hp salun.alpha=0.05
probe salun_a0.2 salun 8 1 --hp salun.alpha=0.2
probe esdx_1e4 esd 3 0 --hp esd.ddim_steps=10
probe esdx_1e3 esd 3 0 --hp esd.ddim_steps=10 --hp esd.lr=1e-3
probe esdu_1e4 esd 3 0 --hp esd.ddim_steps=10 --hp "esd.params='noxattn'"
probe esdu_1e3 esd 3 0 --hp esd.ddim_steps=10 --hp "esd.params='noxattn'" --hp esd.lr=1e-3
probe fmn_1e4_35 fmn 3 0 --hp fmn.lr=1e-4 --hp fmn.iterations=35
probe fmn_1e4_100 fmn 3 0 --hp fmn.lr=1e-4 --hp fmn.iterations=100
probe fmn_3e4_100 fmn 3 0 --hp fmn.lr=3e-4 --hp fmn.iterations=100
probe fmn_1e3_35 fmn 3 0 --hp fmn.lr=1e-3 --hp fmn.iterations=35
probe fmn_1e3_100 fmn 3 0 --hp fmn.lr=1e-3 --hp fmn.iterations=100
