"""Decoding: CTC emissions in, text out.

- :mod:`asr.decode.decoding`: :class:`~asr.decode.decoding.DecodingOptions`, the
  :class:`~asr.decode.decoding.Hypothesis` both decoders return, greedy decoding;
- :mod:`asr.decode.beam`: the lexicon/LM beam search (:class:`~asr.decode.beam.BeamSearchDecoder`);
- :mod:`asr.decode.flashlight`: flashlight-text's beam search, built as torchaudio builds it;
- :mod:`asr.decode.lm_files`: lexicons, LM vocabularies and tuned-weight side files;
- :mod:`asr.decode.phones`: the phone head's beam search and the two-head rescoring;
- :mod:`asr.decode.factory`: a decoder built from its options (:func:`~asr.decode.factory.make_decoder`);
- :mod:`asr.decode.lm`: building (KenLM) and tuning language models.

Import order inside: lm_files, flashlight → decoding → beam → phones → factory → lm.
"""
