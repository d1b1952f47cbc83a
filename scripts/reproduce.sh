#!/usr/bin/env bash
# The main job: run every notebook at the blog's full scale into reports/, then check
# the results against the committed baselines. Extra arguments go to
# `python -m lora_core reproduce` (e.g. --device cuda, --only 01_rank1_recovery).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python -m lora_core reproduce "$@"
