"""Predict the sound events in audio files with a trained model.

    python AED_test.py --filenames dataset/examples/siren_example.wav --modelname AED_Demo_model_best.pt
    python AED_test.py --filenames "['a.wav', 'b.wav']" --results 3 --confidence 0.05
    python AED_test.py --filenames recordings/ --modelname my_model.pt --timeline --json > out.jsonl
"""
import argparse
import ast
import glob
import json
import sys
import time
from pathlib import Path

from model import config_checks as check
from model.audio import AUDIO_EXTENSIONS, spec_defaults

try:
    import config as cfg
except Exception as e:  # noqa: BLE001 -- the user's config.py: any error in it is one ERROR line
    check.config_failed(e)

ROOT = Path(__file__).resolve().parent
# A file with more windows than this gets a progress bar (on a terminal, without --json)
PROGRESS_MIN_WINDOWS = 300


def prediction_flags(p, threads):
    """The flags AED_eval.py shares: the model, its windows and how it runs (threads: a default)."""
    p.add_argument('--modelname', default=cfg.TRAINED_MODEL,
                   help=f'checkpoint path, or file name under {cfg.MODEL_PATH}')
    p.add_argument('--speclength', type=int, default=None,
                   help=f"window length in seconds (None = the model's, else {cfg.SPEC_LENGTH})")
    p.add_argument('--overlap', type=float, default=None,
                   help=f"window overlap in seconds (None = the model's, else {cfg.SPEC_OVERLAP})")
    p.add_argument('--batch-size', type=int, default=None,
                   help=f'windows per network batch, filled across files (None = {cfg.INFER_BATCH_SIZE} '
                        f'on CUDA, else {cfg.INFER_BATCH_SIZE_CPU})')
    p.add_argument('--compile', action=argparse.BooleanOptionalAction, default=cfg.INFER_COMPILE,
                   help='torch.compile the network first (20 s and more); pays off on a GPU and on long runs')
    p.add_argument('--device', default=cfg.DEVICE, help="'auto', 'cpu', 'cuda', 'cuda:1' or 'mps'")
    p.add_argument('--threads', type=int, default=threads,
                   help='CPU threads for the network (0 = 1 for a small model, else every core; '
                        'OMP_NUM_THREADS, when set, is kept)')


def prediction_checks(args, torchrun=False):
    """Checks of what prediction_flags and model.session use: [one-line problem or None]."""
    return [
        check.model_file('TRAINED_MODEL (--modelname)', args.modelname, 'MODEL_PATH', ROOT / cfg.MODEL_PATH),
        check.spec_window('SPEC_LENGTH', cfg.SPEC_LENGTH, 'SPEC_OVERLAP', cfg.SPEC_OVERLAP, cfg.SAMPLE_RATE),
        check.spec_window('--speclength', args.speclength, '--overlap', args.overlap, cfg.SAMPLE_RATE),
        check.whole('SAMPLE_RATE', cfg.SAMPLE_RATE, 1),
        check.one_of('RESAMPLE_METHOD', cfg.RESAMPLE_METHOD, check.RESAMPLE_METHODS),
        check.whole('INFER_BATCH_SIZE', cfg.INFER_BATCH_SIZE, 1),
        check.whole('INFER_BATCH_SIZE_CPU', cfg.INFER_BATCH_SIZE_CPU, 1),
        args.batch_size is not None and check.whole('--batch-size', args.batch_size, 1),
        check.flag('INFER_COMPILE (--compile)', args.compile),
        check.device('DEVICE (--device)', args.device, torchrun)]


def parse_args(argv):  # port of AED_test.parse_args
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--filenames', nargs='+', required=True, metavar='PATH', default=argparse.SUPPRESS,
                   help="audio files, folders, quoted glob patterns or a list like \"['a.wav', 'b.wav']\"")
    prediction_flags(p, cfg.TEST_THREADS)
    p.add_argument('--results', type=int, default=cfg.NUM_RESULTS,
                   help="ranked results PRINTED per file (AED_eval's --results: how many it keeps for AP)")
    p.add_argument('--confidence', type=float, default=cfg.MIN_CONFIDENCE,
                   help='hide results below this confidence')
    p.add_argument('--timeline', action='store_true',
                   help="also list every window's start and end second and its top class")
    p.add_argument('--json', action='store_true',
                   help='print one JSON object per file and line on stdout, nothing else')
    p.add_argument('--timing', action='store_true',
                   help='print import, model-load and prediction times on stderr')
    return p.parse_args(argv)


def check_config(args):
    """Every setting this run uses, checked before torch is imported: [one-line problem or None]."""
    return prediction_checks(args) + [
        check.whole('NUM_RESULTS (--results)', args.results, 1),
        check.fraction('MIN_CONFIDENCE (--confidence)', args.confidence),
        check.whole('TEST_THREADS (--threads)', args.threads, 0)]


def expand_filenames(args):
    """Turn the --filenames arguments into [(path, error or None)] in the order given."""
    out = []
    for arg in args:
        try:  # the original's "['a.wav', 'b.wav']" (defect 8), read as literals: never runs code
            listed = ast.literal_eval(arg)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            listed = None  # a path, or a glob pattern like [ab]*.wav
        if isinstance(listed, (list, tuple)) and all(isinstance(v, str) for v in listed):
            out += expand_filenames(listed)
            continue
        path = Path(arg)
        if path.is_dir():
            files = sorted(p for p in path.rglob('*') if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
                           and not any(part.startswith('.') for part in p.relative_to(path).parts))
            out += [(str(f), None) for f in files] or [(arg, 'folder has no audio files')]
        elif path.exists():
            out.append((arg, None))
        elif any(c in arg for c in '*?['):  # a pattern the shell did not expand
            matches = sorted(m for m in glob.glob(arg, recursive=True) if Path(m).is_file())
            out += [(m, None) for m in matches] or [(arg, 'no file matches this pattern')]
        else:
            out.append((arg, 'no such file'))
    return out


def progress(enabled):
    """A watch for predict_files: a tqdm bar on stderr for each file of many windows."""
    from tqdm import tqdm
    bars = {}

    def watch(item):
        if enabled and item.get('windows', 0) > PROGRESS_MIN_WINDOWS:  # not on error items
            if item['order'] not in bars:
                bars[item['order']] = tqdm(total=item['windows'], unit='window', leave=False,
                                           desc=Path(item['path']).name, file=sys.stderr)
            bars[item['order']].update(len(item['bounds']))
        if item['last'] and item['order'] in bars:
            bars.pop(item['order']).close()
    return watch


def print_result(args, path, result, model, rate):
    """The original's lines for one file (or its JSON object): top predictions and timing."""
    from model.inference import prediction_pooling, rank_predictions
    probs, seconds = result['probs'], result['seconds']
    ranked = rank_predictions(prediction_pooling(probs), model.classes, args.confidence, args.results)
    if args.timeline:  # each window's start and end second, top class and confidence
        windows = [(a / rate, b / rate, model.classes[k], float(p[k]))
                   for (a, b), p, k in zip(result['bounds'], probs, probs.argmax(axis=1))]
    if result['constant']:
        print(f"WARNING: {path}: {len(result['constant'])} silent window(s)", file=sys.stderr)
    if args.json:
        record = {'file': path, 'sample_rate': result['source_rate'],
                  'predictions': [{'label': label, 'confidence': round(conf, 6)} for label, conf in ranked],
                  'specs': len(probs), 'ms': round(seconds * 1000, 1)}
        if args.timeline:
            record['timeline'] = [{'start': round(a, 3), 'end': round(b, 3), 'label': label,
                                   'confidence': round(conf, 6)} for a, b, label, conf in windows]
        print(json.dumps(record), flush=True)
        return
    print('SAMPLE RATE:', result['source_rate'], 'TOP PREDICTION(S):')
    for label, conf in ranked:
        print(f'\t{label} {int(conf * 100)} %')
    if args.timeline:
        print('TIMELINE:')
        for a, b, label, conf in windows:
            print(f'\t{a:.2f}-{b:.2f} s {label} {int(conf * 100)} %')
    print(f'PREDICTION FOR {len(probs)} SPECS TOOK {int(seconds * 1000)} ms '
          f'( {int(seconds / len(probs) * 1000)} ms/spec )\n', flush=True)


def main(argv=None):  # port of AED_test's main block and testFile
    t_start = time.perf_counter()
    args = parse_args(argv)
    check.exit_on(check_config(args))
    # torch takes seconds to import: flags are checked first so -h and typos answer at once
    from model.inference import predict_files
    from model.session import open_for_prediction
    t_imported = time.perf_counter()
    files = expand_filenames(args.filenames)
    readable = [path for path, error in files if error is None]
    model, settings, batch_size, workers = open_for_prediction(
        args, ROOT / cfg.MODEL_PATH, spec_defaults(cfg.SPEC_LENGTH, cfg.SPEC_OVERLAP, cfg.SAMPLE_RATE,
                                                   cfg.RESAMPLE_METHOD),
        (cfg.INFER_BATCH_SIZE, cfg.INFER_BATCH_SIZE_CPU), readable, quiet=args.json)
    t_loaded = time.perf_counter()
    results = predict_files(model, readable, settings, batch_size, workers,
                            watch=progress(sys.stderr.isatty() and not args.json))
    failed = 0
    for path, error in files:
        if not args.json:
            print('TESTING:', path)
        result = next(results) if error is None else {'error': error}  # in the order given
        if result['error'] is None:
            print_result(args, path, result, model, settings['sample_rate'])
            continue
        failed += 1
        print(f"ERROR: {path}: {result['error']}", file=sys.stderr)
        print(json.dumps({'file': path, 'error': result['error']}) if args.json else '', flush=True)
    if args.timing:
        end = time.perf_counter()
        print(f'TIMING: imports {(t_imported - t_start) * 1000:.0f} ms, model load '
              f'{(t_loaded - t_imported) * 1000:.0f} ms, files {(end - t_loaded) * 1000:.0f} ms, '
              f'main total {(end - t_start) * 1000:.0f} ms', file=sys.stderr)
    if failed:
        sys.exit(1)
    return 0


if __name__ == '__main__':
    main()
