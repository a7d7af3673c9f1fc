"""flashlight-text's CTC beam search, built from a lexicon file and a KenLM model.

:class:`FlashlightSearch` is what :class:`asr.decode.beam.BeamSearchDecoder` runs. It is built
here, from flashlight-text directly, exactly as torchaudio's
``torchaudio.models.decoder.ctc_decoder`` builds it (same dictionaries, trie, options and
decoder classes, so the same search and the same results), rather than through torchaudio:
the decoder needs the raw flashlight results (the whole frame-level path, for token end
frames and the frame where each lexicon word completes) and the word dictionary, which
torchaudio's ``CTCDecoder`` only exposes as internals.

Below :mod:`asr.decode.beam` and beside :mod:`asr.decode.lm_files` in the import order; nothing here
knows about emissions, hypotheses or lexicon spelling rules.
"""

from __future__ import annotations

from typing import Any

from asr.text import Tokenizer


class FlashlightSearch:
    """A flashlight-text CTC decoder: ``decoder.decode(ptr, frames, V)`` runs it on ``frames``
    x ``V`` float32 log-probs at address ``ptr``; ``word_dict`` names the word ids of its
    results (lexicon mode, or lexicon-free with an LM; else None).

    Built as ``ctc_decoder`` builds it: the token dictionary in token-id order; with a
    lexicon, ``load_words`` reads it, ``create_word_dict`` numbers its words, every spelling
    goes into a trie scored by the LM's unigram score of its word and the trie is
    max-smeared; lexicon-free with an LM, the LM's dictionary is the tokens in token-id
    order (flashlight asks the LM about token id n as word n; torchaudio's default builds
    that dictionary in hash order, hence the explicit one, as ``lm_dict`` did). Every token
    is a candidate at every frame (``beam_size_token`` = all), unknown words score -inf and
    hypotheses merge by max, not log-add.

    Raises:
        RuntimeError, ValueError, IndexError: flashlight or KenLM cannot read the lexicon or
            LM (the caller names the file).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        lexicon_path: str | None,
        lm: str | None,
        blank: str,
        sil: str,
        beam_size: int,
        beam_threshold: float,
        lm_weight: float,
        word_score: float,
        sil_score: float,
        unk_word: str,
    ) -> None:
        # Imported here: flashlight and KenLM take a moment to load and greedy decoding
        # (used during training) needs neither.
        from flashlight.lib.text import decoder as fl
        from flashlight.lib.text.dictionary import Dictionary, create_word_dict, load_words

        tokens = Dictionary(list(tokenizer.tokens))
        blank_id, sil_id = tokens.get_index(blank), tokens.get_index(sil)
        # The lexicon is read here, into the trie: the file may go away once this returns.
        lexicon = load_words(lexicon_path) if lexicon_path is not None else None
        self.word_dict: Any = None
        if lexicon is not None:
            self.word_dict = create_word_dict(lexicon)
        elif lm is not None:
            self.word_dict = Dictionary(list(tokenizer.tokens))
        if lm is not None:
            from flashlight.lib.text.decoder.kenlm import KenLM

            self.lm: Any = KenLM(lm, self.word_dict)
        else:
            self.lm = fl.ZeroLM()
        # The decoder holds the LM and the trie by reference only (pybind11): they live as
        # long as this object (torchaudio keeps `lm` for the same reason, pytorch/audio#3218).
        self.trie: Any = None
        # Lexicon mode: token ids of each spelling (as in the trie) -> its word ids, i.e. which
        # word a hypothesis would complete if its spelling ended now (BeamStream's partials).
        self.spellings: dict[tuple[int, ...], list[int]] = {}
        common: dict[str, Any] = {
            "beam_size": beam_size,
            "beam_size_token": tokens.index_size(),
            "beam_threshold": beam_threshold,
            "lm_weight": lm_weight,
            "sil_score": sil_score,
            "log_add": False,
            "criterion_type": fl.CriterionType.CTC,
        }
        if lexicon is None:
            options = fl.LexiconFreeDecoderOptions(**common)
            self.decoder: Any = fl.LexiconFreeDecoder(options, self.lm, sil_id, blank_id, [])
            return
        self.trie = fl.Trie(tokens.index_size(), sil_id)
        start = self.lm.start(False)
        for word, spellings in lexicon.items():
            word_id = self.word_dict.get_index(word)
            _, score = self.lm.score(start, word_id)
            for spelling in spellings:
                ids = [tokens.get_index(t) for t in spelling]
                self.trie.insert(ids, word_id, score)
                self.spellings.setdefault(tuple(ids), []).append(word_id)
        self.trie.smear(fl.SmearingMode.MAX)
        lex_options = fl.LexiconDecoderOptions(**common, word_score=word_score, unk_score=float("-inf"))
        unk_id = self.word_dict.get_index(unk_word)
        # [] : no token transitions; False: a word-level LM (token_lm), as ctc_decoder passes.
        self.decoder = fl.LexiconDecoder(lex_options, self.trie, self.lm, sil_id, blank_id, unk_id, [], False)
