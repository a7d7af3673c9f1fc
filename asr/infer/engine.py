"""The inference engine: one batch of waveforms through features and model, and its defaults.

The pieces every way of transcribing shares (:mod:`asr.infer.segments` for files of any length,
:mod:`asr.infer.parallel` for several devices, :mod:`asr.infer.inference` for manifests): default batch
limits, CPU thread settings and :func:`forward_batch`. Decoders are built by
:func:`asr.decode.factory.make_decoder`; the progress display is :mod:`asr.infer.progress`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from asr.package import ModelPackage
from asr.threads import default_threads, set_threads  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

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
