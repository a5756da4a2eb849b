#!/usr/bin/env bash
# Cross-validation over a data set's predefined folds, as papers report it:
#   bash crossval.sh FORMAT ROOT RESULTS_DIR [AED_train.py flags...]
#   bash crossval.sh urbansound8k ~/data/UrbanSound8K runs/us8k --epochs 55
#   bash crossval.sh csv /tmp/cvdemo/folds.csv runs/demo --im-size 128 64 --filters 16 --epochs 10
# Lays out the folds in RESULTS_DIR/data (python -m dataset.folds), extracts every clip's
# spectrograms ONCE (AED_spec.py), then per fold k trains on the other folds' PNGs and evaluates
# on fold k's clips (AED_train.py, AED_eval.py --json) into RESULTS_DIR/fold<k>, and prints
# the mean over the folds (python -m dataset.summarize). A failed fold is reported and the
# loop goes on; the exit status is 1 if any fold failed.
# Extra flags, from the environment: FOLDS_ARGS (e.g. "--skip-missing --fold 1 2"), SPEC_ARGS
# (AED_spec.py, e.g. "--workers 4") and EVAL_ARGS (AED_eval.py, e.g. "--batch-size 64").
set -euf -o pipefail  # -f: the words of the *_ARGS variables are split, never glob-expanded
if [ $# -lt 3 ]; then
    echo "usage: bash crossval.sh FORMAT ROOT RESULTS_DIR [AED_train.py flags...]" >&2
    exit 2
fi
FORMAT=$1 ROOT=$2 RESULTS=$3
shift 3
for flag in "$@"; do
    case $flag in
        --dataset|--dataset=*|--run-name|--run-name=*|--model-path|--model-path=*|--log-path|\
        --log-path=*|--confmatrix-path|--confmatrix-path=*|--resume|--resume=*)
            echo "ERROR: ${flag%%=*}: crossval.sh sets it for each fold" >&2
            exit 2 ;;
    esac
done
REPO=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python3}
[ -x "$REPO/.venv/bin/python" ] && PY=${PYTHON:-$REPO/.venv/bin/python}
FOLDS_ARGS=${FOLDS_ARGS-} SPEC_ARGS=${SPEC_ARGS-} EVAL_ARGS=${EVAL_ARGS-}
folds() { PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m dataset.folds "$@"; }
DATA=$RESULTS/data

echo "== folds"
folds "$FORMAT" "$ROOT" --out "$DATA" $FOLDS_ARGS
echo "== spectrograms of every clip, once"
"$PY" "$REPO/AED_spec.py" --src "$DATA/clips" --dst "$DATA/spec" $SPEC_ARGS
folds "$FORMAT" "$ROOT" --out "$DATA" --specs "$DATA/spec" $FOLDS_ARGS

FOLDS=$(ls "$DATA" | sed -n 's/^fold\([0-9]*\)$/\1/p' | sort -n)
failed=""
for k in $FOLDS; do
    out=$RESULTS/fold$k
    echo "== fold $k: train on the other folds"
    mkdir -p "$out"
    rm -f "$out/eval.json"
    if ! "$PY" "$REPO/AED_train.py" "$@" --dataset "$DATA/fold$k/train" --run-name "fold$k" \
            --model-path "$out/model" --log-path "$out/logs" --confmatrix-path "$out/confmatrix"; then
        echo "ERROR: fold $k: AED_train.py failed" >&2
        failed="$failed $k"
        continue
    fi
    echo "== fold $k: evaluate on fold $k"
    if ! "$PY" "$REPO/AED_eval.py" --testdir "$DATA/fold$k/test" --quiet \
            --modelname "$out/model/AED_fold${k}_model_best.pt" --json "$out/eval.json" \
            --csv "$out/eval.csv" --confmatrix "$out/confmatrix/eval.png" $EVAL_ARGS; then
        echo "ERROR: fold $k: AED_eval.py failed" >&2
        failed="$failed $k"
    fi
done

echo "== summary"
status=0
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m dataset.summarize "$RESULTS" --fold $FOLDS \
    || status=$?
if [ -n "$failed" ]; then
    echo "ERROR: failed fold(s):$failed" >&2
    exit 1
fi
exit "$status"
