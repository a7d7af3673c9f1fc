"""speechocean762 (OpenSLR 101): read English by Mandarin L1 speakers, Kaldi data dirs.

Layout: ``SRC/train/{text,wav.scp,utt2spk}`` (and ``SRC/test/...`` when present), with
``wav.scp`` paths relative to ``SRC`` (e.g. ``WAVE/SPEAKER0001/000010011.flac``).
Transcripts are upper-case words. Dev: ~10% of the train speakers (chosen by the seed),
so train and dev share no speaker.

No ``--download``: the publisher's archive has no checksum we can pin here; fetch it from
openslr.org/resources/101 (or github.com/jimbozhang/speechocean762) and pass ``--src``.
"""

from __future__ import annotations

from pathlib import Path

from asr.data.corpora import CorpusError, CorpusOptions, DevSplit, RawItem

DESCRIPTION = "speechocean762 (OpenSLR 101): Kaldi data dir(s) train[/test], 16 kHz"
DEV_DEFAULT = DevSplit(fraction=0.1)


def is_present(src: Path, options: CorpusOptions) -> bool:
    return (src / "train" / "wav.scp").is_file()


def _read_table(path: Path) -> tuple[dict[str, str], list[str]]:
    """Kaldi ``key value...`` file -> ({key: rest of line}, [problems])."""
    table: dict[str, str] = {}
    problems = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            key, _, value = line.partition(" ") if "\t" not in line else line.partition("\t")
            if key in table:
                problems.append(f"{path}:{lineno}: duplicate key {key}")
            table[key] = value.strip()
    return table, problems


def find_items(src: Path, options: CorpusOptions) -> list[RawItem]:
    if not is_present(src, options):
        raise CorpusError(
            f"{src}: no train/wav.scp (expected a speechocean762 Kaldi data dir here)"
        )
    items: list[RawItem] = []
    for split in ("train", "test"):
        data_dir = src / split
        if not data_dir.is_dir():
            continue
        tables = {}
        for name in ("wav.scp", "text", "utt2spk"):
            if not (data_dir / name).is_file():
                raise CorpusError(f"{data_dir}: missing {name}")
            tables[name], problems = _read_table(data_dir / name)
            if problems:
                raise CorpusError("; ".join(problems[:5]))
        wavs, texts, spks = tables["wav.scp"], tables["text"], tables["utt2spk"]
        for uid in sorted(wavs):
            entry = wavs[uid]
            problem = None
            if entry.endswith("|"):
                problem = "wav.scp entry is a command pipe, not a file"
            elif uid not in texts:
                problem = f"no transcript in {data_dir / 'text'}"
            elif uid not in spks:
                problem = f"no speaker in {data_dir / 'utt2spk'}"
            audio = Path(entry) if Path(entry).is_absolute() else src / entry
            items.append(
                RawItem(uid, audio, texts.get(uid, ""), spks.get(uid, ""), split, problem=problem)
            )
        # Transcripts without audio are listed too, so nothing disappears silently.
        for uid in sorted(set(texts) - set(wavs)):
            items.append(
                RawItem(
                    uid,
                    data_dir / "wav.scp",
                    texts[uid],
                    spks.get(uid, ""),
                    split,
                    problem=f"no audio in {data_dir / 'wav.scp'}",
                )
            )
    return items
