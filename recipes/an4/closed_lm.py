"""The AN4 task's closed-vocabulary LM: a uniform unigram over the words of ``etc/an4.dic``.

CMU ships ``etc/an4.lm``, a uniform unigram (log10 p = -2.0253 for every word) whose word list
lacks NOVEMBER and THIRTEEN although ``etc/an4.dic`` lists them (both occur only in the test
split). This writes the same kind of model over the dictionary's words, lower-cased as the
manifests are, in ARPA form for ``asr lm tune`` / ``asr evaluate --lm``. A result that uses it
knows the test vocabulary and must say so (recipes/an4/README.md).

    python recipes/an4/closed_lm.py ../shared/data/an4/etc/an4.dic --out exp/an4/lm/an4-closed.arpa
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

from asr.files import atomic_write_text


def dictionary_words(path: Path) -> list[str]:
    """Headwords of a CMU dictionary (``WORD(2)`` variants folded), lower-cased, sorted."""
    words = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            words.add(re.sub(r"\(\d+\)$", "", line.split()[0]).lower())
    return sorted(words)


def uniform_unigram_arpa(words: list[str]) -> str:
    """ARPA text of the uniform unigram over ``words`` (and ``</s>``).

    KenLM loads only models of order two or more, so the file has one bigram, ``<s> </s>``,
    with the unigram's own probability: every score stays the uniform unigram's.
    """
    logp = math.log10(1.0 / (len(words) + 1))  # the words and </s>
    lines = ["\\data\\", f"ngram 1={len(words) + 3}", "ngram 2=1", "", "\\1-grams:"]
    lines += [f"{logp:.4f}\t<unk>\t0", f"{logp:.4f}\t</s>\t0", "-99\t<s>\t0"]
    lines += [f"{logp:.4f}\t{w}\t0" for w in words]
    lines += ["", "\\2-grams:", f"{logp:.4f}\t<s> </s>"]
    return "\n".join(lines + ["", "\\end\\", ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dic", type=Path, help="etc/an4.dic")
    parser.add_argument("--out", type=Path, required=True, help="output ARPA file")
    args = parser.parse_args(argv)
    try:
        words = dictionary_words(args.dic)
    except (OSError, UnicodeDecodeError) as e:
        print(f"error: {args.dic}: {e}", file=sys.stderr)
        return 2
    if not words:
        print(f"error: {args.dic}: no words", file=sys.stderr)
        return 2
    atomic_write_text(args.out, uniform_unigram_arpa(words))
    print(f"{args.out}: uniform unigram over {len(words)} words of {args.dic}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
