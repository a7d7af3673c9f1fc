"""Writing shards (`asr shard`): a manifest's audio and metadata -> WebDataset tar shards of
about ``shard_size`` bytes plus ``index.json``. The format, and how training streams it:
:mod:`asr.data.shards`."""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from asr.audio import AudioError, audio_info
from asr.data.manifest import Utterance, duration_mismatch
from asr.data.shards import INDEX_FORMAT, INDEX_NAME
from asr.files import atomic_write_text

DEFAULT_SHARD_SIZE = 1_000_000_000  # bytes of audio + metadata per shard (before tar headers)


def parse_size(text: str) -> int:
    """``"1G"``, ``"500M"``, ``"200k"``, ``"1e9"`` -> bytes (decimal units, as disks count)."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kKmMgGtT]?)[bB]?\s*", str(text))
    try:
        value = float(m.group(1)) * 1000 ** " kmgt".index(m.group(2).lower() or " ") if m else -1.0
    except ValueError:
        value = -1.0
    if not value >= 1:
        raise ValueError(f"shard size {text!r} is not a size such as 1G, 500M or 1e9")
    return int(value)


def _audio_payload(u: Utterance) -> tuple[bytes, str, int]:
    """(bytes, extension, sample rate) to store for ``u``; raises AudioError (file named).

    A whole file is stored as its own bytes (no re-encoding; its header is checked and its
    length compared with the manifest's, as training would). A segment (``offset``) is cut
    out and stored as FLAC, so that a shard never holds more audio than it trains on.
    """
    info = audio_info(u.audio)
    if not u.offset:
        if duration_mismatch(u.duration, info.duration):
            raise AudioError(u.audio, f"manifest says {u.duration:.3f} s but the file holds "
                                      f"{info.duration:.3f} s (stale manifest: re-run asr prepare)")
        try:
            data = Path(u.audio).read_bytes()
        except OSError as e:
            raise AudioError(u.audio, f"cannot read ({e.strerror or e})") from None
        return data, Path(u.audio).suffix.lstrip(".").lower() or "audio", info.sample_rate
    sr = info.sample_rate
    start, stop = round(u.offset * sr), round((u.offset + u.duration) * sr)
    if start >= info.frames:
        raise AudioError(u.audio, f"segment offset {u.offset} s is past the end ({info.duration:.3f} s)")
    try:
        data, _ = sf.read(u.audio, start=start, stop=min(stop, info.frames), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as e:
        raise AudioError(u.audio, f"decoding failed, file corrupt or truncated ({e})") from None
    buf = io.BytesIO()
    sf.write(buf, np.clip(data, -1.0, 1.0), sr, format="FLAC", subtype="PCM_24")
    return buf.getvalue(), "flac", sr


@dataclass
class ShardWriteResult:
    shards: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    bytes: int = 0

    @property
    def utterances(self) -> int:
        return sum(s["utterances"] for s in self.shards)


def write_shards(
    utts: Sequence[Utterance],
    out_dir: str | os.PathLike,
    shard_size: int = DEFAULT_SHARD_SIZE,
    prefix: str = "shard",
    source: str = "",
    on_skip: Callable[[str, str], None] = lambda utt_id, reason: None,
) -> ShardWriteResult:
    """Write ``utts`` as WebDataset shards plus ``index.json`` into ``out_dir``.

    Each sample is ``<key>.json`` (id, duration, text, speaker, sample_rate, audio_ext) and
    ``<key>.<audio_ext>`` (the audio); the key is the utterance's position in the index (ids
    may hold dots or slashes, which WebDataset keys may not). Utterances whose audio cannot be
    read are left out, reported through ``on_skip`` and listed in the index's ``skipped``. Each
    shard is written to a temporary name and renamed when complete; the index comes last, so
    a set with an index is a complete set.
    """
    import webdataset as wds

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = ShardWriteResult()
    writer = tmp = None
    cur: dict[str, Any] = {}

    def finish() -> None:
        nonlocal writer
        if writer is None:
            return
        writer.close()
        os.replace(tmp, out / cur["name"])
        result.shards.append(dict(cur))
        writer = None

    key = 0
    for u in utts:
        try:
            payload, ext, sr = _audio_payload(u)
        except AudioError as e:
            result.skipped.append((u.id, f"unreadable: {e}"))
            on_skip(u.id, f"unreadable: {e}")
            continue
        meta = {"id": u.id, "duration": u.duration, "text": u.text, "speaker": u.speaker,
                "sample_rate": sr, "audio_ext": ext}
        blob = json.dumps(meta, ensure_ascii=False).encode("utf-8")
        if writer is not None and cur["bytes"] >= shard_size:
            finish()
        if writer is None:
            name = f"{prefix}-{len(result.shards):06d}.tar"
            tmp = out / f".{name}.{os.getpid()}.tmp"
            writer = wds.TarWriter(str(tmp), encoder=False)
            cur = {"name": name, "utterances": 0, "seconds": 0.0, "bytes": 0, "first": key,
                   "ids": [], "durations": []}
        writer.write({"__key__": f"{key:09d}", "json": blob, ext: payload})
        cur["utterances"] += 1
        cur["seconds"] += u.duration
        cur["bytes"] += len(payload) + len(blob) + 3 * 512  # + tar headers
        cur["ids"].append(u.id)
        cur["durations"].append(u.duration)
        result.bytes += len(payload) + len(blob)
        key += 1
    finish()
    index = {
        "format": INDEX_FORMAT,
        "version": 1,
        "source": source,
        "utterances": result.utterances,
        "seconds": round(sum(s["seconds"] for s in result.shards), 3),
        "shards": [{**s, "seconds": round(s["seconds"], 3)} for s in result.shards],
        "skipped": [{"id": i, "reason": r} for i, r in result.skipped],
    }
    atomic_write_text(out / INDEX_NAME, json.dumps(index, ensure_ascii=False) + "\n")
    return result
