"""LibriSpeech (OpenSLR 12): read audiobooks, 16 kHz FLAC.

Layout: ``SRC/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` with one
``<speaker>-<chapter>.trans.txt`` per chapter (``SRC/LibriSpeech/<subset>`` as extracted
from the archives works too). Subsets map to splits by name: ``train-*`` -> train,
``dev-*`` -> dev, ``test-*`` -> test. With no dev subset, dev is carved from train by
speaker (5% of the speakers by default).
"""

from __future__ import annotations

from pathlib import Path

from asr.data.corpora import CorpusError, CorpusOptions, DevSplit, RawItem
from asr.data.download import Archive, fetch_and_extract

DESCRIPTION = "LibriSpeech (OpenSLR 12): subsets train-*/dev-*/test-*, 16 kHz FLAC"
DEV_DEFAULT = DevSplit(fraction=0.05)

SUBSETS = (
    "dev-clean",
    "dev-other",
    "test-clean",
    "test-other",
    "train-clean-100",
    "train-clean-360",
    "train-other-500",
)
# sha256 of the openslr archives, as published with torchaudio.datasets.LIBRISPEECH.
SHA256 = {
    "dev-clean": "76f87d090650617fca0cac8f88b9416e0ebf80350acb97b343a85fa903728ab3",
    "dev-other": "12661c48e8c3fe1de2c1caa4c3e135193bfb1811584f11f569dd12645aa84365",
    "test-clean": "39fde525e59672dc6d1551919b1478f724438a95aa55f874b576be21967e6c23",
    "test-other": "d09c181bba5cf717b3dee7d4d592af11a3ee3a09e08ae025c5506f6ebe961c29",
    "train-clean-100": "d4ddd1d5a6ab303066f14971d768ee43278a5f2a0aa43dc716b0e64ecbbbf6e2",
    "train-clean-360": "146a56496217e96c14334a160df97fffedd6e0a04e66b9c5af0d40be3c792ecf",
    "train-other-500": "ddb22f27f96ec163645d53215559df6aa36515f26e01dd70798188350adcb6d2",
}


def archive(subset: str) -> Archive:
    return Archive(f"https://www.openslr.org/resources/12/{subset}.tar.gz", SHA256[subset])


def _split_of(subset: str) -> str | None:
    for split in ("train", "dev", "test"):
        if subset.startswith(split + "-"):
            return split
    return None


def _subset_dirs(src: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in (src, src / "LibriSpeech"):
        if root.is_dir():
            for d in sorted(root.iterdir()):
                if d.is_dir() and _split_of(d.name):
                    found.setdefault(d.name, d)
    return found


def _wanted(options: CorpusOptions) -> tuple[str, ...]:
    unknown = [s for s in options.subsets if s not in SUBSETS]
    if unknown:
        raise CorpusError(f"unknown LibriSpeech subset(s) {unknown} (known: {', '.join(SUBSETS)})")
    return options.subsets


def is_present(src: Path, options: CorpusOptions) -> bool:
    found = _subset_dirs(src)
    wanted = _wanted(options)
    return all(s in found for s in wanted) if wanted else bool(found)


def download(src: Path, options: CorpusOptions) -> None:
    wanted = _wanted(options)
    if not wanted:
        raise CorpusError("--download for librispeech needs --subsets (e.g. dev-clean,test-clean)")
    found = _subset_dirs(src)
    for subset in wanted:
        if subset not in found:
            fetch_and_extract(archive(subset), src)  # extracts LibriSpeech/<subset>/...


def find_items(src: Path, options: CorpusOptions) -> list[RawItem]:
    found = _subset_dirs(src)
    wanted = _wanted(options) or tuple(found)
    missing = [s for s in wanted if s not in found]
    if not found or missing:
        raise CorpusError(
            f"{src}: no LibriSpeech subset folder(s) {', '.join(missing or ['train-*/dev-*/test-*'])}"
        )
    items: list[RawItem] = []
    for subset in wanted:
        split = _split_of(subset)
        assert split is not None  # _subset_dirs only keeps names that map to a split
        for trans in sorted(found[subset].glob("*/*/*.trans.txt")):
            speaker = trans.parent.parent.name
            with open(trans, encoding="utf-8") as f:
                for lineno, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    uid, _, text = line.strip().partition(" ")
                    problem = None
                    if not uid.startswith(f"{speaker}-"):
                        problem = f"{trans}:{lineno}: id does not start with speaker {speaker}"
                    items.append(
                        RawItem(
                            uid, trans.parent / f"{uid}.flac", text, speaker, split, problem=problem
                        )
                    )
    return items
