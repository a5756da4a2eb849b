#!/usr/bin/env bash
# The whole pipeline on synthetic data, on a CPU, in a few minutes:
# demo dataset -> spectrograms -> small training run -> folder evaluation -> prediction
# -> events in long recordings, scored against their annotations and written as a Raven table.
# The small preset is nothing but the scripts' own command-line overrides.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python}

echo "== 1/7 demo dataset"
$PY dataset/make_demo.py
echo "== 2/7 spectrograms"
$PY AED_spec.py --src dataset/train/wav --dst dataset/train/spec
echo "== 3/7 training (small preset: 128x64 images, 16 filters, 10 epochs), events mixed onto background"
# no --run-name: the model is config.py's TRAINED_MODEL, so AED_eval.py and AED_test.py
# find it without --modelname
$PY AED_train.py --dataset dataset/train/spec --im-size 128 64 --filters 16 --epochs 10 --batch-size 32
echo "== 4/7 evaluation on the demo test split"
$PY AED_eval.py --testdir dataset/test --quiet
echo "== 5/7 prediction for two files"
$PY AED_test.py --filenames dataset/examples/siren_example.wav dataset/examples/clicks_example.wav
echo "== 6/7 events in the three annotated scenes, scored; thresholds tuned on them"
$PY AED_eval.py --testdir dataset/scenes/wav --annotations dataset/scenes/annotations --overlap 2.5 --tune
echo "== 7/7 events of one scene as a Raven selection table (with the tuned thresholds)"
$PY AED_test.py --filenames dataset/scenes/wav/scene_01_ebr+0.wav --events --events-format raven --overlap 2.5
