"""recipes/speechocean762/decode_phones.py: phone-head log-probs decode to lexicon words; the decoding
lexicon holds the training transcripts' words only."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from asr.config import ExperimentConfig, to_dict
from asr.data.lexicon import read_lexicon
from asr.decode import phones as asr_phones
from asr.decode.decoding import DecoderError
from asr.model import AcousticModel, ModelConfig
from asr.text import CharTokenizer

_PATH = Path(__file__).resolve().parents[1] / "recipes/speechocean762/decode_phones.py"
_spec = importlib.util.spec_from_file_location("decode_phones", _PATH)
decode_phones = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = decode_phones  # dataclasses look their module up there
_spec.loader.exec_module(decode_phones)

PHONES = ("AE", "AH", "B", "K", "T")  # the head's outputs 1..5; 0 is the blank
LEXICON = "CAT\tK AE1 T\nTAB\tT AE1 B\nBAT\tB AE1 T\nZEBRA\tZ IY1 B R AH0\n"


def path_log_probs(path: list[str]) -> torch.Tensor:
    """(1, T, 6) log-probs whose best path is ``path`` ("-" = blank), the rest far below."""
    ids = [0 if p == "-" else 1 + PHONES.index(p) for p in path]
    lp = torch.full((1, len(ids), 1 + len(PHONES)), -8.0)
    lp[0, torch.arange(len(ids)), torch.tensor(ids)] = -0.01
    return lp


def test_best_phone_path_decodes_to_the_word_it_spells(tmp_path):
    prons = {"cat": ("K", "AE", "T"), "tab": ("T", "AE", "B"), "bat": ("B", "AE", "T")}
    dec = asr_phones.PhoneDecoder(PHONES, prons, beam_size=10)
    # The last phone held over three frames (no boundary token follows it): still one word,
    # read along the best path itself (its score is that path's log-prob; without the doubled
    # spelling only a worse alignment, e.g. AE held instead of T, could end the word).
    for path, words in [
        (["K", "K", "-", "AE", "T", "T", "T"], "cat"),
        (["-", "T", "AE", "-", "B", "-"], "tab"),
        (["B", "AE", "T", "-", "K", "AE", "AE", "-", "T"], "bat cat"),
    ]:
        lp = path_log_probs(path)
        text, score = dec(lp, torch.tensor([lp.shape[1]]))[0][0]
        assert text == words
        assert score == pytest.approx(-0.01 * len(path), abs=1e-3)


def test_words_outside_the_training_transcripts_never_enter_the_decoding_lexicon(tmp_path):
    lex_file = tmp_path / "lexicon.txt"
    lex_file.write_text(LEXICON)
    lex = decode_phones.decoding_lexicon(read_lexicon(lex_file), ["cat tab", "a cat"], PHONES)
    assert lex.prons == {"cat": ("K", "AE", "T"), "tab": ("T", "AE", "B")}  # not bat, not zebra
    assert lex.missing == ["a"]  # a training word without a pronunciation is counted
    out = tmp_path / "search.txt"
    asr_phones.write_search_lexicon(lex.prons, out)
    assert {line.split("\t")[0] for line in out.read_text().splitlines()} == {"cat", "tab"}
    assert "cat\tK AE T T" in out.read_text().splitlines()  # last phone doubled (module doc)


def test_training_word_with_phones_the_head_lacks_is_left_out_and_counted(tmp_path):
    lex_file = tmp_path / "lexicon.txt"
    lex_file.write_text(LEXICON)
    lex = decode_phones.decoding_lexicon(read_lexicon(lex_file), ["cat zebra"], PHONES)
    assert lex.prons == {"cat": ("K", "AE", "T")}
    assert lex.foreign_phones == ["zebra"]


def _tiny_ckpt(path: Path, phones: tuple[str, ...], seed: int = 0) -> Path:
    """A CTCModule-shaped checkpoint of a tiny model, with a phone head when ``phones``."""
    cfg = ExperimentConfig(exp_dir="exp/tiny", model=ModelConfig(hidden=8, num_layers=2, conv_channels=4,
                                                                 dropout=0.0, phone_ctc_weight=0.3 if phones else 0.0))
    tok = CharTokenizer("abct")
    torch.manual_seed(seed)
    model = AcousticModel(cfg.model, cfg.features.n_mels, tok.vocab_size)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    hp = {"config": to_dict(cfg), "tokenizer": tok.to_dict()}
    if phones:
        head = torch.nn.Linear(model.layer_dim, len(phones) + 1)
        state.update({f"phone_head.{k}": v for k, v in head.state_dict().items()})
        hp["phones"] = list(phones)
    torch.save({"epoch": 0, "global_step": 1, "state_dict": state, "hyper_parameters": hp}, path)
    return path


def test_checkpoint_phone_head_is_loaded_and_one_without_is_refused(tmp_path, capsys):
    net = decode_phones.load_network([_tiny_ckpt(tmp_path / "p.ckpt", PHONES)])
    assert net.phones == PHONES
    (chars, phones), = net.forward([torch.randn(8000)])
    assert phones.shape == (chars.shape[0], 1 + len(PHONES))
    assert torch.allclose(phones.exp().sum(-1), torch.ones(phones.shape[0]), atol=1e-5)
    plain = _tiny_ckpt(tmp_path / "plain.ckpt", ())
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "u1", "audio": "u1.wav", "duration": 1.0, "text": "cat", "speaker": "s", '
                        '"sample_rate": 16000}\n')
    lex = tmp_path / "lexicon.txt"
    lex.write_text(LEXICON)
    rc = decode_phones.main([str(plain), str(manifest), "--train", str(manifest), "--lexicon", str(lex),
                             "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and "has no phone CTC head" in err[0]


def test_combination_weighs_the_phone_head_against_the_character_head():
    # One frame per unit: "cat" fits the character head better, "tab" the phone head.
    lp = torch.log_softmax(torch.tensor([[0.0, 5.0], [5.0, 0.0]]), dim=-1)
    assert asr_phones.ctc_log_likelihood(lp, [1]) == pytest.approx(float(torch.logsumexp(
        torch.stack([lp[0, 1] + lp[1, 0], lp[0, 1] + lp[1, 1], lp[0, 0] + lp[1, 1]]), 0)))
    assert asr_phones.ctc_log_likelihood(lp, [1, 1, 1]) == float("-inf")  # 3 labels cannot fit 2 frames
    cat = asr_phones.Candidate("cat", char_ll=-1.0, phone_ll=-9.0, lm=-2.0, words=1)
    tab = asr_phones.Candidate("tab", char_ll=-3.0, phone_ll=-2.0, lm=-2.0, words=1)
    unscored = asr_phones.Candidate("zebra", char_ll=-2.0, phone_ll=float("-inf"), lm=-2.0, words=1)
    assert asr_phones.combine([cat, tab], 0.0, 1.0, 0.0) == "cat"
    assert asr_phones.combine([cat, tab], 0.5, 1.0, 0.0) == "tab"
    # No pronunciation: kept, judged on the character head alone (counted by the script).
    assert asr_phones.combine([cat, tab, unscored], 0.5, 1.0, 0.0) == "zebra"
    assert asr_phones.combine([], 0.5, 1.0, 0.0) == ""


def test_cross_validation_holds_out_speakers_and_is_none_for_one_speaker():
    refs = ["a b", "c d", "e f", "g h"]
    good, bad = ["a b", "c d", "e f", "g h"], ["x", "y", "z", "w"]
    grid = [({"w": 0.0}, bad), ({"w": 1.0}, good)]
    spk = ["s1", "s1", "s2", "s2"]
    assert decode_phones.cross_validated_wer(grid, refs, spk, lambda g: True) == 0.0
    assert decode_phones.cross_validated_wer(grid, refs, spk, lambda g: g["w"] == 0.0) == 1.0
    assert decode_phones.cross_validated_wer(grid, refs, ["s1"] * 4, lambda g: True) is None


def test_several_checkpoints_are_averaged_network_and_phone_head_alike(tmp_path):
    paths = [_tiny_ckpt(tmp_path / f"e{i}.ckpt", PHONES, seed=i) for i in range(3)]
    net = decode_phones.load_network(paths)
    singles = [decode_phones.load_network([p]) for p in paths]
    assert net.paths == tuple(paths) and len(net.ident.split(",")) == 3
    for got, parts in ((net.head, [n.head for n in singles]), (net.model.output, [n.model.output for n in singles])):
        torch.testing.assert_close(got.weight, sum(p.weight for p in parts) / 3, rtol=0, atol=1e-6)
    other = _tiny_ckpt(tmp_path / "other.ckpt", ("AE", "B"))
    with pytest.raises(decode_phones.UsageError, match="other phones than"):
        decode_phones.load_network([paths[0], other])


@pytest.mark.parametrize("content", [b"PK\x03\x04 truncated", None])
def test_unreadable_emissions_cache_is_one_error_line(tmp_path, capsys, content):
    ckpt = _tiny_ckpt(tmp_path / "p.ckpt", PHONES)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "u1", "audio": "u1.wav", "duration": 1.0, "text": "cat", "speaker": "s", '
                        '"sample_rate": 16000}\n')
    lex = tmp_path / "lexicon.txt"
    lex.write_text(LEXICON)
    cache = tmp_path / "emissions.pt"
    if content is None:
        torch.save({"checkpoint": "x"}, cache)  # a readable file that is not this script's cache
    else:
        cache.write_bytes(content)
    rc = decode_phones.main([str(ckpt), str(manifest), "--train", str(manifest), "--lexicon", str(lex),
                             "--emissions", str(cache), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {cache}: ") and "delete it" in err[0]


def test_unreadable_lm_is_a_usage_error_naming_it(tmp_path):
    bad = tmp_path / "lm.bin"
    bad.write_bytes(b"not a kenlm model")
    with pytest.raises(DecoderError, match=r"lm.bin: cannot build the phone beam search"):
        asr_phones.PhoneDecoder(PHONES, {"cat": ("K", "AE", "T")}, lm=str(bad))
