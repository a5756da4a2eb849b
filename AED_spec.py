"""Turn class folders of audio files into 512x256 spectrogram PNGs, <dst>/<class>/<stem>_<n>.png.

    python AED_spec.py
    python AED_spec.py --src dataset/train/wav --dst dataset/train/spec --workers 2
    python AED_spec.py --src my_audio --dst my_specs --speclength 5 --overlap 4 --overwrite
"""
import argparse
import collections
import functools
import multiprocessing
import os
import sys
from pathlib import Path

import cv2
from tqdm import tqdm

from model import config_checks as check
from model.audio import (AudioError, class_folders, file_spectrograms, read_spec_settings, spec_defaults,
                         write_spec_settings)

try:
    import config as cfg
except Exception as e:  # noqa: BLE001 -- the user's config.py: any error in it is one ERROR line
    check.config_failed(e)

ROOT = Path(__file__).resolve().parent


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


def check_settings(args):
    """Every problem with the settings of this run (flags over config.py), one line each."""
    problems = [
        check.spec_window('--speclength (SPEC_LENGTH)', args.speclength, '--overlap (SPEC_OVERLAP)',
                          args.overlap, cfg.SAMPLE_RATE),
        check.whole('SAMPLE_RATE', cfg.SAMPLE_RATE, 1),
        check.one_of('RESAMPLE_METHOD', cfg.RESAMPLE_METHOD, check.RESAMPLE_METHODS),
        check.whole('PNG_COMPRESSION', cfg.PNG_COMPRESSION, 0) or check.one_of(
            'PNG_COMPRESSION', cfg.PNG_COMPRESSION, range(10)),
        check.whole('--workers (SPEC_WORKERS, 0 = one per CPU core)', args.workers, 0)]
    if not isinstance(args.src, Path) or not args.src.is_dir():
        problems.append(f'--src (SRC_DIR): source folder {args.src} does not exist')
    if not isinstance(args.dst, Path) or args.dst.exists() and not args.dst.is_dir():
        problems.append(f'--dst (SPEC_DIR): {args.dst} is not a folder')
    elif isinstance(args.src, Path) and args.dst.resolve() == args.src.resolve():
        problems.append(f'--dst (SPEC_DIR) must differ from --src: {args.dst} holds the audio')
    return problems


def list_jobs(src, dst, overwrite):
    """(source file, output folder, PNG name prefix) per file to extract, messages, skip count.

    Files of a class folder that share a stem keep their extension: tone.mp3_0.png, tone.ogg_0.png.
    """
    jobs, skipped = [], 0
    folders, messages = class_folders(src)
    for class_dir, files in folders:
        stems, prefixes = collections.Counter(p.stem for p in files), set()
        for path in files:
            prefix = path.name if stems[path.stem] > 1 else path.stem
            if prefix in prefixes:  # e.g. tone.mp3.wav beside tone.mp3 and tone.ogg
                messages.append(f'ERROR: {path}: skipped, its spectrograms would overwrite others '
                                f'named {prefix}_<n>.png')
                continue
            prefixes.add(prefix)
            # "_0.png" is renamed into place last, so its presence means the file is complete
            if not overwrite and (dst / class_dir.name / f'{prefix}_0.png').exists():
                skipped += 1
            else:
                jobs.append((path, dst / class_dir.name, prefix))
    return jobs, messages, skipped


def extract_file(job, settings, compression):
    """Write the PNGs of one file; returns (path, source rate, spec count, message or None)."""
    path, out_dir, prefix = job
    rate = settings['sample_rate']
    # unfiltered rows: the same pixels, but level 0 writes 10x faster than cv2's default, and loads faster
    png_params = [cv2.IMWRITE_PNG_COMPRESSION, compression,
                  cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE,
                  cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]
    parts = []
    try:
        images, source_rate, bounds, constant = file_spectrograms(
            path, settings['length'], settings['overlap'], rate, settings['resample'], uint8=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        for n, image in enumerate(images):
            ok, png = cv2.imencode('.png', image, png_params)
            if not ok:
                raise ValueError('PNG encoding failed')
            parts.append(out_dir / f'.{prefix}_{n}.png.part')
            parts[-1].write_bytes(png)  # the encoded buffer, without a copy
        for n in reversed(range(len(parts))):
            os.replace(parts[n], out_dir / f'{prefix}_{n}.png')
        # an --overwrite with other settings may leave more old chunks than new ones
        n = len(parts)
        while (stale := out_dir / f'{prefix}_{n}.png').exists():
            stale.unlink()
            n += 1
    except AudioError as e:
        return path, None, 0, f'ERROR: {path}: {e}'
    # what else one bad file (or a full disk) raises; a bug in the code still stops the run
    except (OSError, ValueError, cv2.error) as e:
        return path, None, 0, f'ERROR: {path}: {type(e).__name__}: {e}'
    finally:
        for part in parts:
            part.unlink(missing_ok=True)
    note = None
    if constant:
        note = f'WARNING: {path}: {len(constant)} silent chunk(s) saved as all-zero images'
    elif bounds[0][1] - bounds[0][0] < rate:
        note = f'WARNING: {path}: shorter than 1 s, saved as one zero-padded spectrogram'
    return path, source_rate, len(images), note


def main(argv=None):  # port of AED_spec's main block
    args = parse_args(argv)
    check.exit_on(check_settings(args))
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
    extract = functools.partial(extract_file, settings=settings, compression=cfg.PNG_COMPRESSION)
    files = specs = 0
    pool = multiprocessing.Pool(workers) if workers > 1 else None
    try:
        results = pool.imap_unordered(extract, jobs) if pool else map(extract, jobs)
        for path, rate, count, note in tqdm(results, total=len(jobs), unit='file', desc='SPECTROGRAMS',
                                            disable=not jobs):
            if count:
                files, specs = files + 1, specs + count
                tqdm.write(f'{path} SAMPLE RATE: {rate} SPECS: {count}', file=sys.stdout)
            if note:
                errors += note.startswith('ERROR')
                tqdm.write(note, file=sys.stderr)
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
