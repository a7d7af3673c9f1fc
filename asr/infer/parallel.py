"""Inference on several devices: one spawned worker process per device.

One worker per GPU (or several CPU processes splitting the cores), each loading the package
and transcribing a share of the segments balanced by duration; results are streamed back
and put in input order. Processes rather than threads: the decoders and the Python around
the model hold the GIL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from asr.audio import AudioError, audio_info
from asr.decode.decoding import DecodingOptions
from asr.decode.factory import make_decoder
from asr.infer.engine import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK_SECONDS,
    DEFAULT_MAX_BATCH_SECONDS,
    DEFAULT_OVERLAP_SECONDS,
    default_threads,
)
from asr.infer.progress import progress_bar
from asr.infer.segments import Segment, SegmentResult, transcribe_segments
from asr.infer.windows import DEFAULT_SEGMENT
from asr.package import load_package


def worker_devices(device: str | torch.device, devices: int) -> list[str]:
    """Where each of ``devices`` inference workers runs.

    ``cpu``: every worker on the CPU (they split the cores); ``cuda``: worker i on
    ``cuda:i`` (choose the GPUs with ``CUDA_VISIBLE_DEVICES``). One device: ``[device]``.

    Raises:
        ValueError: ``devices < 1``, more CUDA workers than visible GPUs, ``cuda:K`` with
            several workers, or another device type.
    """
    if devices < 1:
        raise ValueError(f"--devices must be >= 1 (is {devices})")
    dev = torch.device(device)
    if devices == 1:
        return [str(dev)]
    if dev.type == "cpu":
        return ["cpu"] * devices
    if dev.type != "cuda":
        raise ValueError(f"--devices {devices}: only cpu and cuda can run several workers (not {dev.type})")
    if dev.index is not None:
        raise ValueError(f"--devices {devices} uses cuda:0..{devices - 1}: give --device cuda, not {dev} "
                         "(pick the GPUs with CUDA_VISIBLE_DEVICES)")
    have = torch.cuda.device_count()
    if devices > have:
        raise ValueError(f"--devices {devices}: only {have} CUDA device(s) visible")
    return [f"cuda:{i}" for i in range(devices)]


def split_by_duration(durations: Sequence[float], parts: int) -> list[list[int]]:
    """Indices into ``parts`` shares of near-equal total duration (each in ascending order).

    Longest first, each to the share with the least audio so far (ties: the lowest share),
    so the slowest worker ends at most about one item after the others.
    """
    loads = [0.0] * parts
    shares: list[list[int]] = [[] for _ in range(parts)]
    for i in sorted(range(len(durations)), key=lambda i: (-durations[i], i)):
        k = min(range(parts), key=lambda k: (loads[k], k))
        shares[k].append(i)
        loads[k] += max(0.0, float(durations[i]))
    return [sorted(s) for s in shares]


def _segments_worker(
    rank: int, package_path: str, device: str, threads: int | None, decoder_options: DecodingOptions,
    segments: list[Segment], indices: list[int], options: dict[str, Any], queue: Any,
) -> None:
    """One worker process: load the package on ``device``, transcribe its share and put each
    result on ``queue`` as ``("result", global index, SegmentResult)`` as soon as it is
    ready, then ``("done", rank, None)``; an unexpected failure sends ``("error", rank, traceback)``."""
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        package = load_package(package_path, device)
        decode, _ = make_decoder(package, decoder_options)
        transcribe_segments(package, decode, segments, progress=False,
                            on_result=lambda j, r: queue.put(("result", indices[j], r)), **options)
        queue.put(("done", rank, None))
    except BaseException:  # noqa: BLE001 - reported to the parent, which re-raises it
        import traceback

        queue.put(("error", rank, traceback.format_exc()))


def transcribe_segments_parallel(
    package_path: str | os.PathLike,
    segments: Sequence[Segment],
    devices: Sequence[str],
    decoder_options: DecodingOptions | None = None,
    durations: Sequence[float] | None = None,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_seconds: float = DEFAULT_MAX_BATCH_SECONDS,
    num_threads: int | None = None,
    progress: bool = False,
    description: str | None = None,
    on_result: Callable[[int, SegmentResult], None] | None = None,
    segment: str = DEFAULT_SEGMENT,
) -> list[SegmentResult]:
    """:func:`transcribe_segments` on several devices: one spawned process per entry of
    ``devices`` (e.g. from :func:`worker_devices`), each loading the package there and
    transcribing a share of the segments balanced by ``durations`` (default: read from the
    file headers). Results are the same as on one device, in segment order;
    ``on_result`` is called in segment order as results arrive.

    On the CPU the workers split ``num_threads`` (default: every core) evenly, at least one
    thread each. ``decoder_options`` go to :func:`make_decoder` (default greedy); each
    worker builds its own decoder (check them in the caller first: a bad LM fails there in
    seconds instead of in every worker). A worker that fails or dies raises RuntimeError
    (with its traceback) after the others are stopped.
    """
    import multiprocessing
    import queue as queue_module

    n = len(segments)
    if durations is None:
        durations = [_header_seconds(s) for s in segments]
    shares = split_by_duration(durations, len(devices))
    cpu_workers = sum(1 for d in devices if torch.device(d).type == "cpu")
    threads = max(1, (num_threads or default_threads()) // cpu_workers) if cpu_workers else None
    options = {"chunk_seconds": chunk_seconds, "overlap_seconds": overlap_seconds, "batch_size": batch_size,
               "max_batch_seconds": max_batch_seconds, "segment": segment}
    ctx = multiprocessing.get_context("spawn")  # CUDA and torch's thread pools do not survive fork
    results: list[SegmentResult | None] = [None] * n
    queue = ctx.Queue()
    workers: list[tuple[int, Any]] = []
    running: set[int] = set()
    finished = False  # every worker said "done"
    try:
        with _starting_workers():
            for rank, (device, share) in enumerate(zip(devices, shares)):
                if not share:
                    continue
                p = ctx.Process(target=_segments_worker, daemon=True, name=f"asr-inference-{rank}", args=(
                    rank, str(package_path), device, threads if torch.device(device).type == "cpu" else None,
                    decoder_options or DecodingOptions(), [segments[i] for i in share], share, options, queue))
                p.start()
                workers.append((rank, p))
        running = {rank for rank, _ in workers}
        silent = dict.fromkeys(running, 0)
        next_out = 0
        with progress_bar(progress) as bar:
            task = bar.add_task(description or f"transcribing {n} item(s) on {len(workers)} worker(s)",
                                total=sum(durations))
            while running:
                try:
                    kind, key, value = queue.get(timeout=1.0)
                except queue_module.Empty:
                    for rank, p in workers:
                        # Exit code 0 without "done" can only be a message still in flight:
                        # give it a few more polls.
                        if rank in running and not p.is_alive():
                            silent[rank] += 1
                            if p.exitcode != 0 or silent[rank] > 3:
                                raise RuntimeError(f"inference worker {rank} ({devices[rank]}) died "
                                                   f"(exit code {p.exitcode})") from None
                    continue
                if kind == "error":
                    raise RuntimeError(f"inference worker {key} ({devices[key]}) failed:\n{value}")
                if kind == "done":
                    running.discard(key)
                    continue
                results[key] = value
                bar.advance(task, durations[key])
                while next_out < n and results[next_out] is not None:
                    if on_result is not None:
                        on_result(next_out, results[next_out])  # type: ignore[arg-type]
                    next_out += 1
        finished = True
    finally:
        for _, p in workers:
            if finished:  # they are exiting
                p.join(timeout=30)
            if p.is_alive():
                p.terminate()
                p.join()
        queue.close()
    return results  # type: ignore[return-value]


@contextlib.contextmanager
def _starting_workers() -> Iterator[None]:
    """Start processes that ignore SIGINT, and hold a SIGTERM that arrives meanwhile until
    they have all started.

    Ctrl-C reaches the terminal's whole process group: the parent alone handles it (and stops
    the workers, in the ``finally`` above) instead of every worker printing a KeyboardInterrupt
    traceback. An ignored signal stays ignored across the spawn's exec, and Python then
    installs no KeyboardInterrupt handler. SIGTERM is held because a spawn cut short (the
    handler raising inside ``Process.start()``) leaves the new child reading its start-up
    data from a closed pipe, and it prints an EOFError traceback; once all have started, the
    held signal goes to the previous handler (``asr.signals``: stop, and the ``finally``
    terminates every worker)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal dispositions can only be changed from the main thread
        return
    held: list[int] = []
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous_term = signal.signal(signal.SIGTERM, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for sig, previous in ((signal.SIGINT, previous_int), (signal.SIGTERM, previous_term)):
            # None: a handler installed outside Python, which cannot be put back
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        if held:
            signal.raise_signal(held[0])


def _header_seconds(segment: Segment) -> float:
    """A segment's length for load balancing (0 when the header cannot be read: the worker
    that gets it reports why)."""
    if segment.duration is not None:
        return segment.duration
    try:
        return max(0.0, audio_info(segment.path).duration - segment.offset)
    except AudioError:
        return 0.0
