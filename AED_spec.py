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
from model.audio import (AudioError, check_spec_params, class_folders, file_spectrograms,
                         read_spec_settings, write_spec_settings)

ROOT = Path(__file__).resolve().parent


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--src', type=Path, default=ROOT / cfg.SRC_DIR,
                   help='folder with one sub-folder of audio files per class')
    p.add_argument('--dst', type=Path, default=ROOT / cfg.SPEC_DIR,
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
                    raise RuntimeError('PNG encoding failed')
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
    except Exception as e:  # one bad file must never end a 10,000-file run
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
    try:
        check_spec_params(args.speclength, args.overlap)
    except ValueError as e:
        sys.exit(f'ERROR: {e}')
    if not args.src.is_dir():
        sys.exit(f'ERROR: source folder {args.src} does not exist')

    settings = {'length': args.speclength, 'overlap': args.overlap,
                'sample_rate': cfg.SAMPLE_RATE, 'resample': cfg.RESAMPLE_METHOD}
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
    if files:
        write_spec_settings(args.dst, settings)
    print(f'DONE! FILES: {files} SPECS: {specs} ERRORS: {errors} SKIPPED (ALREADY DONE): {skipped}')
    if files == 0 and skipped == 0:
        sys.exit('ERROR: no spectrogram could be extracted')
    return 0


if __name__ == '__main__':
    main()
