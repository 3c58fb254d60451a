#!/usr/bin/env python
"""OCR a folder of page images, or render PDFs, into OCR json files (one per page).

    python tools/ocr.py --images data/cdla/train/images --out data/cdla/train/ocr --workers 2
    python tools/ocr.py --pdf paper.pdf report.pdf --out data/mine/pages --dpi 144

Images (png/jpg/jpeg/tif/tiff/bmp, any case) are found recursively; each gets
``<out>/<relative dir>/<stem>.json``. A PDF page becomes ``<out>/<pdf stem>_p0001.png``
(1-based page number) plus ``<out>/<pdf stem>_p0001.json`` from its text layer, or
from OCR when the page has none.

Pages whose json exists and loads are skipped, so an interrupted run resumes where it
stopped; a json that does not load (truncated, not the OCR format) is redone and counted.
SIGINT (Ctrl-C) or SIGTERM stops the run: it prints what it finished and exits 130 or
143; the worker processes end with the tool, also when it is killed.
``--shard K/N`` keeps the pages whose relative path hashes to K modulo N, a split
that is the same on every machine. A page that fails is reported at the end and
the exit status is 1; the other pages are done all the same.
"""

import argparse
import contextlib
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from detectron2.data.detection_utils import read_image

from ditod.data.ocr import (
    OCR_ENGINES,
    RAPIDOCR_PRESETS,
    OCRFormatError,
    atomic_write,
    build_ocr_engine,
    fetch_rapidocr_models,
    load_ocr,
    read_pdf_page,
    save_ocr,
)
from ditod.data.pages import IMAGE_SUFFIXES, Page, check_unique_names, find_files, in_shard, parse_shard, pdf_pages

logger = logging.getLogger("ditod.tools.ocr")


@dataclass(frozen=True)
class Job:
    """One page to OCR: an image file, or page `page` (0-based) of a PDF file."""

    key: str  # path relative to the input root or output folder: names the page in reports and shards
    source: Path
    out_json: Path
    page: int | None = None
    out_image: Path | None = None  # where a rendered PDF page goes

    def done(self) -> bool:
        return self.out_json.exists() and (self.out_image is None or self.out_image.exists())


@dataclass
class PageResult:
    key: str
    error: str | None = None
    lines: int = 0
    source: str = ""
    stage_seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class RunSummary:
    pages: int = 0  # pages done in this run
    skipped: int = 0  # pages already done before this run
    without_text: int = 0
    seconds: float = 0.0
    sources: Counter = field(default_factory=Counter)
    stage_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    failures: list[tuple[str, str]] = field(default_factory=list)
    redone: list[tuple[str, str]] = field(default_factory=list)  # existing jsons that did not load
    interrupted: str | None = None  # the signal that stopped the run
    not_done: int = 0  # pages left when it stopped

    def report(self) -> str:
        rate = self.pages / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"OCR: {self.pages} pages in {self.seconds:.1f} s ({rate:.2f} pages/s), "
            f"{self.skipped} skipped (already done), {self.without_text} without text, "
            f"{len(self.failures)} failed"
        ]
        if self.redone:
            lines.append(f"{len(self.redone)} redone: their json from an earlier run did not load (see the log)")
        if self.interrupted:
            lines.append(f"interrupted by {self.interrupted}: {self.not_done} pages not done (rerun to resume)")
        if set(self.sources) - {"ocr"}:
            lines.append("text from: " + ", ".join(f"{k} {v}" for k, v in sorted(self.sources.items())))
        total = sum(self.stage_seconds.values())
        if total > 0:
            shares = sorted(self.stage_seconds.items(), key=lambda kv: -kv[1])
            lines.append(
                "time per stage (all workers): "
                + ", ".join(f"{stage} {100 * s / total:.0f}% ({s:.1f} s)" for stage, s in shares)
            )
        if self.failures:
            lines.append(f"failed ({len(self.failures)}):")
            lines.extend(f"  {key}: {error}" for key, error in self.failures)
        return "\n".join(lines)


# -------------------------------------------------------------------- planning


def _checked(pages: Sequence[Page]) -> Sequence[Page]:
    try:
        check_unique_names(pages)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    return pages


def image_jobs(images: Path, out: Path) -> list[Job]:
    """Every image under `images` (recursively, sorted), with its json under `out`."""
    images, out = Path(images), Path(out)
    if not images.is_dir():
        raise SystemExit(f"error: --images {images} is not a folder")
    files = find_files(images)
    if not files:
        raise SystemExit(f"error: --images {images} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    pages = _checked([Page(path.relative_to(images).with_suffix("").as_posix(), path) for path in files])
    return [Job(page.key, page.source, out / f"{page.name}.json") for page in pages]


def pdf_jobs(pdfs: Sequence[Path], out: Path) -> tuple[list[Job], list[tuple[str, str]]]:
    """Every page of the PDFs, and the PDFs that cannot be used (with the reason: cannot be
    opened, encrypted, no pages)."""
    pages, failures = [], []
    for pdf in map(Path, pdfs):
        try:
            pages.extend(pdf_pages(pdf, pdf.stem))
        except ValueError as e:
            failures.append((str(pdf), str(e)))
    jobs = [
        Job(page.key, page.source, out / f"{page.name}.json", page.index, out / f"{page.name}.png")
        for page in _checked(pages)
    ]
    return jobs, failures


# ---------------------------------------------------------------------- workers

# State of a worker process: its engine, built on first use, and the PDF it has open.
_worker = {}


def _init_worker(engine: str, engine_kwargs: dict, dpi: float):
    _worker.clear()
    _worker.update(engine_name=engine, engine_kwargs=engine_kwargs, dpi=dpi, engine=None, pdf=None)


def _engine():
    if _worker["engine"] is None:
        _worker["engine"] = build_ocr_engine(_worker["engine_name"], **_worker["engine_kwargs"])
    return _worker["engine"]


def _open_pdf(path: Path):
    import pymupdf

    if _worker["pdf"] is None or _worker["pdf"].name != str(path):
        if _worker["pdf"] is not None:
            _worker["pdf"].close()
        _worker["pdf"] = pymupdf.open(str(path))
    return _worker["pdf"]


def _run_engine(image, stages: dict[str, float]):
    engine = _engine()
    before = dict(engine.stage_seconds)
    ocr = engine(image)
    stages.update({k: v - before.get(k, 0.0) for k, v in engine.stage_seconds.items()})
    return ocr


def _ocr_image(job: Job, stages: dict[str, float]):
    start = time.perf_counter()
    try:
        image = read_image(str(job.source), format="RGB")
    except Exception as e:
        raise ValueError(f"cannot read image: {e}") from None
    stages["read image"] = time.perf_counter() - start
    return _run_engine(image, stages), "ocr"


def _ocr_pdf_page(job: Job, stages: dict[str, float]):
    start = time.perf_counter()
    page = read_pdf_page(_open_pdf(job.source)[job.page], _worker["dpi"])
    stages["render + text layer"] = time.perf_counter() - start
    ocr, source = page.ocr, page.source
    if not len(ocr):
        ocr, source = _run_engine(page.image, stages), "ocr"
    start = time.perf_counter()
    with atomic_write(job.out_image) as f:
        Image.fromarray(page.image).save(f, format="PNG")
    stages["write"] = time.perf_counter() - start
    return ocr, source


def _process(job: Job) -> PageResult:
    """OCR one page and write its files; any error is returned, never raised."""
    stages = {}
    try:
        ocr, source = (_ocr_image if job.page is None else _ocr_pdf_page)(job, stages)
        start = time.perf_counter()
        save_ocr(job.out_json, ocr)
        stages["write"] = stages.get("write", 0.0) + time.perf_counter() - start
    except Exception as e:
        return PageResult(job.key, error=f"{type(e).__name__}: {e}")
    return PageResult(job.key, lines=len(ocr), source=source, stage_seconds=stages)


def _pool_context():
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    # Workers fork from a clean server process (no threads of the parent inherited)
    # that has imported the heavy modules once (ditod brings torch): no import per worker.
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["ditod.data.ocr", "detectron2.data.detection_utils"])
    return context


def _exit_with_parent(lifeline):
    """End this worker as soon as the tool's end of `lifeline` closes: the tool exited, was
    killed (even by SIGKILL, which no handler sees) or is stopping the pool."""
    with contextlib.suppress(EOFError, OSError):
        lifeline.recv_bytes()
    os._exit(1)


def _init_pool_worker(lifeline, *init_args):
    # Ctrl-C reaches the whole process group; the tool answers it and ends the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(lifeline,), daemon=True).start()
    _init_worker(*init_args)


def _results_in_pool(jobs: Sequence[Job], workers: int, init_args: tuple):
    """Yield each job's PageResult as workers finish them (at most 4 jobs queued per worker).

    The workers hold the reading end of a pipe whose writing end only this process has
    (the lifeline): when this process dies, or this generator ends early (an exception,
    a signal, close()), the pipe closes and every worker ends at once instead of finishing
    its queued pages. The pool's forkserver and resource tracker then end with the tool.
    """
    pending, ended = {}, False
    todo = iter(jobs)
    context = _pool_context()
    lifeline, keep_alive = context.Pipe(duplex=False)
    init_args = (lifeline, *init_args)
    pool = ProcessPoolExecutor(workers, context, initializer=_init_pool_worker, initargs=init_args)
    try:
        while True:
            for job in todo:
                try:
                    pending[pool.submit(_process, job)] = job
                except BrokenProcessPool as e:  # a worker died earlier: nothing more can run
                    yield PageResult(job.key, error=f"not run (rerun to resume): {e}")
                    continue
                if len(pending) >= 4 * workers:
                    break
            if not pending:
                ended = True
                return
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                job = pending.pop(future)
                try:
                    yield future.result()
                except Exception as e:  # the worker process died (killed, out of memory, crash)
                    yield PageResult(job.key, error=f"worker process failed: {type(e).__name__}: {e}")
    finally:
        if not ended:  # stopped early: the workers end now, whatever page they are on
            keep_alive.close()
        pool.shutdown(wait=True, cancel_futures=True)
        keep_alive.close()
        lifeline.close()


def _results_inline(jobs: Sequence[Job], init_args: tuple):
    _init_worker(*init_args)
    for job in jobs:
        yield _process(job)


def _unloadable_output(job: Job) -> str | None:
    """Why the json of a page done earlier cannot be used (None when it loads)."""
    try:
        load_ocr(job.out_json)
    except (OCRFormatError, OSError) as e:
        return str(e)
    return None


class Interrupted(BaseException):
    """SIGINT or SIGTERM reached the tool (a BaseException, so that no page's error handling takes it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum, frame):
    # A second signal would break the clean-up of the first: ignored from now on.
    for other in (signal.SIGINT, signal.SIGTERM):
        signal.signal(other, signal.SIG_IGN)
    raise Interrupted(signum)


def run_ocr(
    jobs: Sequence[Job],
    engine: str = "rapidocr",
    workers: int = 1,
    dpi: float = 144,
    overwrite: bool = False,
    engine_kwargs: dict | None = None,
) -> RunSummary:
    """OCR the pages of `jobs` that are not done yet, with `workers` processes.

    A page is done when its files exist and its json loads; a json that does not load is
    redone (listed in ``RunSummary.redone``). Each worker builds its engine once, with
    `engine_kwargs`; onnxruntime's threads are shared out so that the workers together
    use the cores available to this process. An :class:`Interrupted` raised while pages
    run (the tool's SIGINT/SIGTERM handler) stops the run: the workers end, and the
    summary counts what was finished and sets ``interrupted``.
    """
    summary = RunSummary()
    todo = []
    for job in jobs:
        if overwrite or not job.done():
            todo.append(job)
        elif problem := _unloadable_output(job):
            logger.warning(f"redoing {job.key}: {problem}")
            summary.redone.append((job.key, problem))
            todo.append(job)
    summary.skipped = len(jobs) - len(todo)
    workers = max(1, min(workers, len(todo)))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    init_args = (engine, {"threads": max(1, cores // workers), **(engine_kwargs or {})}, dpi)

    start = time.perf_counter()
    results = _results_inline(todo, init_args) if workers == 1 else _results_in_pool(todo, workers, init_args)
    progress = tqdm(results, total=len(todo), desc="OCR", unit="page", disable=not todo)
    finished = 0
    try:
        for result in progress:
            finished += 1
            if result.error:
                summary.failures.append((result.key, result.error))
                tqdm.write(f"failed: {result.key}: {result.error}", file=sys.stderr)
                continue
            summary.pages += 1
            summary.without_text += result.lines == 0
            summary.sources[result.source] += 1
            for stage, seconds in result.stage_seconds.items():
                summary.stage_seconds[stage] += seconds
    except Interrupted as e:
        summary.interrupted, summary.not_done = str(e), len(todo) - finished
    finally:
        results.close()
        progress.close()
    summary.seconds = time.perf_counter() - start
    summary.failures.sort()
    return summary


# ------------------------------------------------------------------------- CLI


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--images", type=Path, help="folder of page images, searched recursively")
    inputs.add_argument("--pdf", type=Path, nargs="+", help="PDF files: pages rendered to PNG plus text-layer OCR")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--engine",
        default="rapidocr",
        choices=sorted(OCR_ENGINES),
        help="OCR engine (for --pdf: used only on pages without a text layer)",
    )
    parser.add_argument(
        "--rapidocr-preset",
        default="fast",
        choices=sorted(RAPIDOCR_PRESETS),
        help="settings of --engine rapidocr: fast (default; tiny and small recognition models in cascade), "
        "small (the small model alone) or full (rapidocr's own)",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--shard", type=parse_shard, default=(0, 1), metavar="K/N", help="do only shard K of N (0-based)"
    )
    parser.add_argument("--dpi", type=float, default=144, help="resolution of rendered PDF pages (default 144)")
    parser.add_argument("--overwrite", action="store_true", help="redo pages whose json already exists")
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    if args.workers < 1:
        raise SystemExit("error: --workers must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    failures = []
    if args.images is not None:
        jobs = image_jobs(args.images, args.out)
    else:
        jobs, failures = pdf_jobs(args.pdf, args.out)
    total = len(jobs)
    jobs = [job for job in jobs if in_shard(job.key, args.shard)]
    logger.info(
        f"{len(jobs)} pages (shard {args.shard[0]}/{args.shard[1]} of {total}), "
        f"engine {args.engine}, {args.workers} workers -> {args.out}"
    )

    engine_kwargs = {"preset": args.rapidocr_preset} if args.engine == "rapidocr" else {}
    if args.engine == "rapidocr":
        # Once here rather than in every worker, and before any page fails for it.
        try:
            fetch_rapidocr_models(args.rapidocr_preset)
        except FileNotFoundError as e:
            raise SystemExit(f"error: {e}") from None
    handlers = {signum: signal.signal(signum, _raise_interrupted) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = run_ocr(jobs, args.engine, args.workers, args.dpi, args.overwrite, engine_kwargs)
    except Interrupted as e:  # while checking the pages done earlier, before any OCR
        summary = RunSummary(interrupted=str(e), not_done=len(jobs))
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    summary.failures = sorted(failures + summary.failures)
    print(summary.report(), flush=True)
    if summary.interrupted:
        return 128 + signal.Signals[summary.interrupted]
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
