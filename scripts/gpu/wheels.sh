#!/usr/bin/env bash
# The wheels lm_eval 0.4.9.1 needs on the GPU check machine beyond what its image holds (the
# package list of the device notes: torch, transformers, peft, accelerate, pyarrow, pandas,
# scikit-learn, scipy, sacrebleu, xxhash, aiohttp, ... are there), for scripts/gpu/check.sh's
# WHEELS (installed there with pip --no-index --no-deps into its work folder). Versions are the
# ones scripts/reference/requirements.txt's venv resolved. Needs the network, here, once.
#
#   scripts/gpu/wheels.sh [DEST]        # default target/gpu-wheels; prints its size
set -euo pipefail
dest=${1:-target/gpu-wheels}
pip=(${PIP:-python3 -m pip})
mkdir -p "$dest"
binary=(lm_eval==0.4.9.1 datasets==3.6.0 evaluate==0.4.6 dill==0.3.8 multiprocess==0.70.16
    jsonlines==4.0.0 more-itertools==11.2.1 numexpr==2.14.2 zstandard==0.25.0 nltk==3.10.4
    pytablewriter==1.2.1 DataProperty==1.1.1 mbstrdecoder==1.1.5 pathvalidate==3.3.1
    tabledata==1.3.5 tcolorpy==0.1.7 typepy==1.3.5 chardet==6.0.0.post1 tqdm-multiprocess==0.0.11)
# Published as source only (pure Python): built into wheels here.
source=(rouge_score==0.1.2 sqlitedict==2.1.0 word2number==1.1)
"${pip[@]}" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$dest" "${binary[@]}"
"${pip[@]}" wheel -q --no-deps -w "$dest" "${source[@]}"
du -sh "$dest"
