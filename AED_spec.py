"""Turn class folders of audio files into 512x256 magnitude-spectrogram PNGs.

Each file is cut into SPEC_LENGTH-second chunks that overlap by SPEC_OVERLAP
seconds, and each chunk becomes <dst>/<class>/<file stem>_<n>.png.

    python AED_spec.py
    python AED_spec.py --src dataset/train/wav --dst dataset/train/spec --workers 2
    python AED_spec.py --src my_audio --dst my_specs --speclength 5 --overlap 4 --overwrite
"""
import argparse
import os
import sys
from pathlib import Path

import cv2
from tqdm import tqdm

import config as cfg
from model.audio import (SPEC_SETTINGS, AudioError, class_folders, file_spectrograms,
                         read_spec_settings, spec_defaults, write_spec_settings)

ROOT = Path(__file__).resolve().parent
RESAMPLE_METHODS = ('linear', 'sinc')


def repo_path(value):
    """A config path relative to the repository; anything else is left for check_settings."""
    return ROOT / value if isinstance(value, (str, os.PathLike)) else value


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--src', type=Path, default=repo_path(cfg.SRC_DIR),
                   help='folder with one sub-folder of audio files per class')
    p.add_argument('--dst', type=Path, default=repo_path(cfg.SPEC_DIR),
                   help='output folder for the spectrogram PNGs')
    p.add_argument('--speclength', type=int, default=cfg.SPEC_LENGTH,
                   help='chunk length in seconds (2, 3, 5, 10 or 30)')
    p.add_argument('--overlap', type=float, default=cfg.SPEC_OVERLAP,
                   help='overlap of consecutive chunks in seconds')
    p.add_argument('--workers', type=int, default=cfg.SPEC_WORKERS,
                   help='worker processes (0 = one per CPU core)')
    p.add_argument('--overwrite', action='store_true',
                   help='re-extract files whose spectrograms already exist')
    return p.parse_args(argv)


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def check_settings(args):
    """Every problem with the settings of this run (flags over config.py), one line each."""
    errors = []
    if not isinstance(args.src, Path) or not args.src.is_dir():
        errors.append(f'--src (SRC_DIR): source folder {args.src} does not exist')
    if not isinstance(args.dst, Path) or args.dst.exists() and not args.dst.is_dir():
        errors.append(f'--dst (SPEC_DIR): {args.dst} is not a folder')
    elif isinstance(args.src, Path) and args.dst.resolve() == args.src.resolve():
        errors.append(f'--dst (SPEC_DIR) must differ from --src: {args.dst} holds the audio')
    supported = ', '.join(str(s) for s in sorted(SPEC_SETTINGS))
    if args.speclength not in SPEC_SETTINGS:
        errors.append(f'--speclength (SPEC_LENGTH) must be one of {supported} s, '
                      f'got {args.speclength!r}')
    elif not isinstance(args.overlap, (int, float)) or not 0 <= args.overlap < args.speclength:
        errors.append(f'--overlap (SPEC_OVERLAP) is {args.overlap!r} s; chunks of '
                      f'{args.speclength} s need 0 <= overlap < {args.speclength}')
    if not is_int(cfg.SAMPLE_RATE) or cfg.SAMPLE_RATE <= 0:
        errors.append(f'SAMPLE_RATE must be a whole number of Hz above 0, got {cfg.SAMPLE_RATE!r}')
    if cfg.RESAMPLE_METHOD not in RESAMPLE_METHODS:
        errors.append(f"RESAMPLE_METHOD must be 'linear' or 'sinc', got {cfg.RESAMPLE_METHOD!r}")
    if not is_int(cfg.PNG_COMPRESSION) or not 0 <= cfg.PNG_COMPRESSION <= 9:
        errors.append(f'PNG_COMPRESSION must be a whole number from 0 to 9, '
                      f'got {cfg.PNG_COMPRESSION!r}')
    if not is_int(args.workers) or args.workers < 0:
        errors.append(f'--workers (SPEC_WORKERS) must be 0 (one per CPU core) or more, '
                      f'got {args.workers!r}')
    return errors


def list_jobs(src, dst, overwrite):
    """One (source file, output folder) job per audio file, plus messages and skip count."""
    jobs, skipped = [], 0
    folders, messages = class_folders(src)
    for class_dir, files in folders:
        out_dir = dst / class_dir.name
        stems = {}
        for path in files:
            if path.stem in stems:
                messages.append(f'ERROR: {path}: skipped, its spectrograms would overwrite '
                                f'those of {stems[path.stem].name}')
                continue
            stems[path.stem] = path
            # "_0.png" is renamed into place last, so its presence means the file is complete
            if not overwrite and (out_dir / f'{path.stem}_0.png').exists():
                skipped += 1
                continue
            jobs.append((path, out_dir))
    return jobs, messages, skipped


def extract_file(job, seconds, overlap, rate, method, compression):
    """Write the PNGs of one file; returns (path, spec count, message or None)."""
    path, out_dir = job
    # Unfiltered rows: the same pixels, but level 0 writes 10x faster than
    # cv2's default and the training loader decodes it faster too.
    png_params = [cv2.IMWRITE_PNG_COMPRESSION, compression,
                  cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE,
                  cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]
    try:
        images, _, bounds, constant = file_spectrograms(path, seconds, overlap, rate, method,
                                                        uint8=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        parts = []
        try:
            for n, image in enumerate(images):
                ok, png = cv2.imencode('.png', image, png_params)
                if not ok:
                    raise ValueError('PNG encoding failed')
                part = out_dir / f'.{path.stem}_{n}.png.part'
                part.write_bytes(png)  # the encoded buffer, without a copy
                parts.append(part)
            for n in reversed(range(len(parts))):
                os.replace(parts[n], out_dir / f'{path.stem}_{n}.png')
            # an --overwrite with other settings may leave more old chunks than new ones
            n = len(parts)
            while (stale := out_dir / f'{path.stem}_{n}.png').exists():
                stale.unlink()
                n += 1
        finally:
            for part in parts:
                part.unlink(missing_ok=True)
    except AudioError as e:
        return path, 0, f'ERROR: {path}: {e}'
    # what else one bad file (or a full disk) raises; a bug in the code still stops the run
    except (OSError, ValueError, cv2.error) as e:
        return path, 0, f'ERROR: {path}: {type(e).__name__}: {e}'
    note = None
    if constant:
        note = f'WARNING: {path}: {len(constant)} silent chunk(s) saved as all-zero images'
    elif bounds[0][1] - bounds[0][0] < rate:
        note = f'WARNING: {path}: shorter than 1 s, saved as one zero-padded spectrogram'
    return path, len(images), note


def _extract_star(args):
    return extract_file(*args)


def main(argv=None):
    args = parse_args(argv)
    problems = check_settings(args)
    for problem in problems:
        print(f'ERROR: {problem}', file=sys.stderr)
    if problems:
        sys.exit(2)

    settings = spec_defaults(args.speclength, args.overlap, cfg.SAMPLE_RATE, cfg.RESAMPLE_METHOD)
    previous = read_spec_settings(args.dst)
    if previous is not None and previous != settings and not args.overwrite:
        sys.exit(f'ERROR: {args.dst} holds spectrograms made with {previous}; use --overwrite '
                 f'or another --dst to extract with {settings}')
    jobs, messages, skipped = list_jobs(args.src, args.dst, args.overwrite)
    for msg in messages:
        print(msg, file=sys.stderr)
    errors = sum(msg.startswith('ERROR') for msg in messages)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    workers = max(1, min(args.workers or cores, len(jobs)))
    tasks = [(job, args.speclength, args.overlap, cfg.SAMPLE_RATE, cfg.RESAMPLE_METHOD,
              cfg.PNG_COMPRESSION) for job in jobs]

    files = specs = 0
    with tqdm(total=len(jobs), unit='file', desc='SPECTROGRAMS', disable=not jobs) as bar:
        if workers > 1:
            import multiprocessing
            pool = multiprocessing.Pool(workers)
            results = pool.imap_unordered(_extract_star, tasks, chunksize=1)
        else:
            pool, results = None, map(_extract_star, tasks)
        try:
            for path, count, note in results:
                if count:
                    files += 1
                    specs += count
                    bar.write(f'{path} SPECS: {count}', file=sys.stdout)
                if note:
                    errors += note.startswith('ERROR')
                    bar.write(note, file=sys.stderr)
                bar.update()
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    if files:
        write_spec_settings(args.dst, settings)
    print(f'DONE! FILES: {files} SPECS: {specs} ERRORS: {errors} SKIPPED (ALREADY DONE): {skipped}')
    if files == 0 and skipped == 0:
        sys.exit('ERROR: no spectrogram could be extracted')
    return 0


if __name__ == '__main__':
    main()
