"""The inference engine: one batch of waveforms through features and model, threads, progress.

The pieces every way of transcribing shares (:mod:`asr.segments` for files of any length,
:mod:`asr.parallel` for several devices, :mod:`asr.inference` for manifests): default batch
limits, CPU thread settings, :func:`forward_batch` and the progress display. Decoders are
built by :func:`asr.decode.factory.make_decoder`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from asr.package import ModelPackage
from asr.threads import default_threads, set_threads  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 10.0  # seconds between plain progress lines (stderr not a terminal)

DEFAULT_BATCH_SIZE = 32  # utterances per batch at most
DEFAULT_MAX_BATCH_SECONDS = 300.0  # padded audio seconds per batch at most (bounds memory)
DEFAULT_CHUNK_SECONDS = 30.0  # longer audio is read in windows owning this much audio
DEFAULT_OVERLAP_SECONDS = 3.0  # context read on each side of a window's owned region


NON_FINITE = "features or model output are not finite (NaN/inf): corrupt or absurd audio"


@torch.inference_mode()
def forward_batch(package: ModelPackage, waves: Sequence[Tensor], phones: bool = False) -> list[Tensor]:
    """Emissions of one batch: waves [(S_i,)] at ``package.sample_rate`` -> [(T'_i, V)] float32 on CPU.

    ``phones=True`` (a package with a phone head): joint emissions [(T'_i, V + 1 + P)], the
    character log-probs followed by the phone head's, for :class:`asr.decode.phones.TwoHeadDecoder`.
    """
    if not waves:
        return []
    device = package.device
    lengths = torch.tensor([w.numel() for w in waves], dtype=torch.long)
    padded = pad_sequence([w.reshape(-1).float() for w in waves], batch_first=True).to(device)  # (N, S)
    feats, feat_lens = package.featurizer(padded, lengths.to(device))  # (N, T, F)
    if phones:
        if package.phone_head is None:
            raise ValueError("this package has no phone head")
        out = package.model.forward_outputs(feats, feat_lens, tap=package.model.phone_layer)
        assert out.tapped is not None
        phone_lp = package.phone_head.linear(out.tapped).float().log_softmax(dim=-1)
        log_probs, out_lens = torch.cat([out.log_probs.float(), phone_lp], dim=-1), out.lens
    else:
        log_probs, out_lens = package.model(feats, feat_lens)  # (N, T', V)
    log_probs = log_probs.float().cpu()
    return [log_probs[i, : int(n)].clone() for i, n in enumerate(out_lens.tolist())]


def progress_bar(enabled: bool, interval: float = PROGRESS_INTERVAL):
    """Progress of a long job: the one place that decides how it is shown.

    Not ``enabled``: nothing. stderr a terminal: a rich bar on stderr (transient). stderr
    redirected (a log file, a batch job): a plain logged line every ``interval`` seconds,
    e.g. ``transcribing 3 file(s): 120/260 s of audio (46%)``, since a bar's redraws would
    fill the log with control codes. Either way the object has rich's ``add_task`` /
    ``advance`` and is a context manager.

    stdout is only redirected through the bar when it is a terminal: a transcript piped to
    a file must stay on stdout, not be re-routed to the bar's stderr console.
    """
    if enabled and not sys.stderr.isatty():
        return LogProgress(interval)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} s audio"), TimeElapsedColumn(),
        TimeRemainingColumn(), console=Console(stderr=True), transient=True, disable=not enabled,
        redirect_stdout=sys.stdout.isatty(),
    )


class LogProgress:
    """Progress as plain log lines (see :func:`progress_bar`): one every ``interval`` seconds
    while work is left, and a last one at 100% when an earlier one was written (a job that
    ends within ``interval`` writes none)."""

    def __init__(self, interval: float = PROGRESS_INTERVAL) -> None:
        self.interval = interval
        self.tasks: dict[int, list] = {}  # id -> [description, total, completed, last log time, logged]

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: float | None = None) -> int:
        self.tasks[len(self.tasks)] = [description, float(total or 0.0), 0.0, time.monotonic(), False]
        return len(self.tasks) - 1

    def advance(self, task: int, amount: float = 1.0) -> None:
        t = self.tasks[task]
        t[2] += amount
        now = time.monotonic()
        done = t[1] > 0 and t[2] >= t[1] - 1e-9
        if (done and t[4]) or (not done and now - t[3] >= self.interval):
            pct = f" ({100 * t[2] / t[1]:.0f}%)" if t[1] > 0 else ""
            log.info("%s: %.0f/%.0f s of audio%s", t[0], t[2], t[1], pct)
            t[3], t[4] = now, True
