"""Any folder of audio files with transcripts.

Two ways to describe it:

- ``--src DIR``: every audio file under DIR (recursively) with a same-named ``.txt``
  transcript beside it (``a/b/utt1.wav`` + ``a/b/utt1.txt``). Audio without a transcript is
  rejected (so it is reported, not silently dropped).
- ``--list FILE.csv|FILE.tsv``: a table with a header row naming at least the columns
  ``path`` and ``text``; optional ``speaker``, ``id`` and ``split`` (train/dev/test).
  Relative paths are relative to the list file's folder.

Speaker defaults to the audio file's parent folder name; the id to the path relative to
the root without its extension. Everything is train unless a ``split`` column says
otherwise; dev is carved from train by speaker (10% of the speakers by default).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from asr.data.corpora import SPLITS, CorpusError, CorpusOptions, DevSplit, RawItem

DESCRIPTION = "a folder of audio + same-named .txt transcripts, or a CSV/TSV list (--list)"
DEV_DEFAULT = DevSplit(fraction=0.1)

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".opus", ".mp3", ".sph", ".aif", ".aiff"}


def is_present(src: Path, options: CorpusOptions) -> bool:
    return options.list_file is not None or src.is_dir()


def _uid(path: Path, root: Path) -> str:
    try:
        rel = path.relative_to(root)
    except ValueError:  # a list may point outside its folder
        rel = Path(path.name)
    if not rel.name:  # the root itself (a list row with an empty path): no name to strip
        return rel.as_posix()
    return rel.with_suffix("").as_posix()


def find_items(src: Path, options: CorpusOptions) -> list[RawItem]:
    if options.list_file is not None:
        return _from_list(options.list_file)
    if not src.is_dir():
        raise CorpusError(f"{src}: not a folder")
    items = []
    for path in sorted(p for p in src.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
        if path.is_dir():
            continue  # a folder named like audio: walked, its files are items of their own
        txt = path.with_suffix(".txt")
        text, problem = "", None
        if not path.is_file():
            # Reported, not dropped: a dangling/looping symlink or a device/FIFO.
            problem = (
                f"dangling or looping symbolic link {path.name}"
                if path.is_symlink()
                else "not a regular file"
            )
        elif not txt.is_file():
            problem = f"no transcript file {txt.name} beside the audio"
        else:
            try:
                text = txt.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                problem = f"cannot read transcript {txt}: {e}"
        items.append(
            RawItem(_uid(path, src), path, text, path.parent.name, "train", problem=problem)
        )
    if not items:
        raise CorpusError(f"{src}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
    return items


def _from_list(list_file: Path) -> list[RawItem]:
    if not list_file.is_file():
        raise CorpusError(f"{list_file}: list file not found")
    root = list_file.resolve().parent
    delimiter = "\t" if list_file.suffix.lower() == ".tsv" else ","
    data = list_file.read_bytes()
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise CorpusError(
            f"{list_file}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the list as UTF-8"
        ) from None
    with io.StringIO(content, newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = reader.fieldnames or []
        missing = [c for c in ("path", "text") if c not in columns]
        if missing:
            raise CorpusError(
                f"{list_file}: header must name the columns path,text[,speaker] (missing {missing}; "
                f"found {columns})"
            )
        items = []
        for lineno, row in enumerate(reader, start=2):
            raw_path = (row.get("path") or "").strip()
            path = Path(raw_path)
            if not path.is_absolute():
                path = root / path
            split = (row.get("split") or "train").strip()
            problem = None
            if not raw_path:
                problem = f"{list_file}:{lineno}: empty path"
            elif split not in SPLITS:
                problem = f"{list_file}:{lineno}: split {split!r} is not one of {SPLITS}"
                split = "train"
            items.append(
                RawItem(
                    id=(row.get("id") or "").strip()
                    or (_uid(path, root) if raw_path else f"{list_file.name}:{lineno}"),
                    audio=path,
                    text=row.get("text") or "",
                    speaker=(row.get("speaker") or "").strip() or path.parent.name,
                    split=split,
                    problem=problem,
                )
            )
    if not items:
        raise CorpusError(f"{list_file}: no rows")
    return items
