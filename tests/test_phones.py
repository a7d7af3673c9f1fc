"""The phone head in packages and ``--phone-weight`` decoding (asr.decode.phones, asr.train.export,
asr.package, asr.infer.engine): hand-built tensors and tiny random models, milliseconds each."""

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.config import ExperimentConfig, to_dict
from asr.decode.decoding import DecoderError, DecodingOptions, greedy_decode
from asr.decode.factory import make_decoder
from asr.decode.phones import Pool, TwoHeadDecoder, candidates
from asr.infer.engine import forward_batch
from asr.model import AcousticModel, ModelConfig
from asr.package import PackageError, PhoneHead, load_package, read_metadata, write_package
from asr.text import CharTokenizer
from asr.train.export import export

ROOT = Path(__file__).resolve().parents[1]
PHONES = ("AE", "B", "K", "T")  # the head's outputs 1..4; 0 is the blank
PRONS = {"cat": ("K", "AE", "T"), "tab": ("T", "AE", "B"), "bat": ("B", "AE", "T")}
TOK = CharTokenizer("abct")  # <blank> | a b c t


def _cfg(phone_weight: float = 0.3, **data) -> ExperimentConfig:
    cfg = ExperimentConfig(exp_dir="exp/tiny", model=ModelConfig(hidden=8, num_layers=2, conv_channels=4,
                                                                 dropout=0.0, phone_ctc_weight=phone_weight))
    return replace(cfg, data=replace(cfg.data, **data))


def _ckpt(path: Path, phones=PHONES, prons=PRONS, seed: int = 0, **data) -> Path:
    """A CTCModule-shaped checkpoint of a tiny model; a phone head when ``phones``;
    ``hyper_parameters["pronunciations"]`` when ``prons``."""
    cfg = _cfg(0.3 if phones else 0.0, **data)
    torch.manual_seed(seed)
    model = AcousticModel(cfg.model, cfg.features.n_mels, TOK.vocab_size)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    hp = {"config": to_dict(cfg), "tokenizer": TOK.to_dict(), "run_id": "r1"}
    if phones:
        head = torch.nn.Linear(model.layer_dim, len(phones) + 1)
        state.update({f"phone_head.{k}": v for k, v in head.state_dict().items()})
        hp["phones"] = list(phones)
        if prons:
            hp["pronunciations"] = {w: list(ps) for w, ps in prons.items()}
    torch.save({"epoch": seed, "global_step": 1 + seed, "state_dict": state, "hyper_parameters": hp}, path)
    return path


# --------------------------------------------------------------------------------------------
# packages


def test_export_carries_the_averaged_phone_head_and_the_pronunciations(tmp_path):
    paths = [_ckpt(tmp_path / f"e{i}.ckpt", seed=i) for i in range(2)]
    notes: list[str] = []
    pkg = load_package(export(paths, tmp_path / "m.asr", average=True, note=notes.append))
    assert notes == []
    assert read_metadata(tmp_path / "m.asr")["format_version"] == "3"
    head = pkg.phone_head
    assert head is not None and head.phones == PHONES and head.pronunciations == PRONS
    want = sum(torch.load(p, weights_only=True)["state_dict"]["phone_head.weight"] for p in paths) / 2
    torch.testing.assert_close(head.linear.weight, want, rtol=0, atol=1e-6)
    assert pkg.info["phone_head"] == {"phones": 4, "words": 3, "layer": 1}
    assert pkg.info["parameters"] == sum(v.numel() for v in pkg.model.state_dict().values())

    plain = load_package(export([_ckpt(tmp_path / "plain.ckpt", phones=())], tmp_path / "plain.asr"))
    assert plain.phone_head is None and read_metadata(tmp_path / "plain.asr")["format_version"] == "2"


def test_one_model_always_gives_the_same_package_bytes(tmp_path):
    # safetensors writes its metadata map in hash order; write_package sorts it.
    ckpt = _ckpt(tmp_path / "p.ckpt")
    blobs = [export([ckpt], tmp_path / f"m{i}.asr").read_bytes() for i in range(3)]
    assert blobs[0] == blobs[1] == blobs[2]
    n = int.from_bytes(blobs[0][:8], "little")
    meta = json.loads(blobs[0][8 : 8 + n])["__metadata__"]
    assert list(meta) == sorted(meta) and load_package(tmp_path / "m0.asr").phone_head is not None


def test_older_checkpoints_get_their_pronunciations_rebuilt_or_the_head_is_left_out(tmp_path):
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("CAT\tK AE1 T\nTAB\tT AE1 B\nBAT\tB AE1 T\nZEBRA\tZ IY1 B R AH0\n")
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"id": f"u{i}", "audio": "x.wav", "duration": 1.0, "text": t,
                                         "speaker": "s", "sample_rate": 16000}) + "\n"
                             for i, t in enumerate(["cat tab", "bat"])))
    old = _ckpt(tmp_path / "old.ckpt", prons=None, lexicon=str(lexicon), train_manifest=str(train))
    notes: list[str] = []
    pkg = load_package(export([old], tmp_path / "m.asr", note=notes.append))
    assert notes == [] and pkg.phone_head is not None
    assert pkg.phone_head.pronunciations == PRONS  # the training words only: no zebra

    gone = _ckpt(tmp_path / "gone.ckpt", prons=None, lexicon=str(tmp_path / "nope.txt"), train_manifest=str(train))
    pkg = load_package(export([gone], tmp_path / "g.asr", note=notes.append))
    assert pkg.phone_head is None
    assert len(notes) == 1 and notes[0].startswith("phone head left out of the package: ") and "nope.txt" in notes[0]


def _write(tmp_path: Path, head: PhoneHead) -> Path:
    cfg = _cfg()
    model = AcousticModel(cfg.model, cfg.features.n_mels, TOK.vocab_size)
    return write_package(tmp_path / "m.asr", model, cfg, TOK.to_dict(), [], phone_head=head)


@pytest.mark.parametrize("case, match", [
    ("head too small", r"phone head tensors .* do not fit 4 phones"),
    ("unknown phone", r"bad package metadata: phone head: pronunciation of 'cat'"),
    ("duplicate phones", r"bad package metadata: phone head: phones must be"),
])
def test_a_phone_head_that_does_not_fit_is_one_package_error(tmp_path, case, match):
    phones, prons, outputs = PHONES, dict(PRONS), len(PHONES) + 1
    if case == "head too small":
        outputs -= 1
    elif case == "unknown phone":
        prons["cat"] = ("K", "AE", "ZH")
    else:
        phones = ("AE", "AE", "K", "T")
    path = _write(tmp_path, PhoneHead(torch.nn.Linear(16, outputs), phones, prons))
    with pytest.raises(PackageError, match=match) as err:
        load_package(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------
# decoding


def _path_log_probs(ids: list[int], width: int, good: float = -0.05, bad: float = -6.0) -> torch.Tensor:
    """(T, width) log-probs whose best path is ``ids`` (frame by frame), the rest far below."""
    lp = torch.full((len(ids), width), bad)
    lp[torch.arange(len(ids)), torch.tensor(ids)] = good
    return lp


def test_two_heads_pick_the_word_the_phone_head_hears_and_time_it_on_the_character_head():
    # Character head: "cat" on its best path, "tab" a close second on every frame;
    # phone head: T AE B, decisively.
    c, a, t, b = (TOK.tokens.index(x) for x in "catb")
    char = _path_log_probs([c, 0, a, 0, t, 0], TOK.vocab_size, good=-0.4)
    char[[0, 2, 4], [t, a, b]] = -1.2
    phone = _path_log_probs([4, 0, 1, 0, 2, 0], 1 + len(PHONES))  # T AE B (ids: phone i is i + 1)
    joint = torch.cat([char, phone], dim=-1)[None]
    lens = torch.tensor([6])
    opts = DecodingOptions(decoder="beam", beam_size=20)
    char_only = TwoHeadDecoder(TOK, PHONES, PRONS, DecodingOptions(decoder="beam", beam_size=20, phone_weight=1e-6))
    assert char_only(joint, lens)[0][0].text == "cat"
    both = TwoHeadDecoder(TOK, PHONES, PRONS, DecodingOptions(decoder="beam", beam_size=20, phone_weight=0.5))
    (h,), = both(joint, lens)
    assert h.text == "tab"
    assert [(w.word, w.start, w.end) for w in h.words] == [("tab", 0, 5)]  # T at frame 0 .. B ends at 5
    assert math.isfinite(h.score)
    # A pool where only the phone beam found "tab" (the character beam's n-best is "cat"
    # alone): its word times come from aligning it to the character head, a slice of the
    # joint emissions (not contiguous, which torchaudio's forced_align refuses as such).
    char_lp, phone_lp = joint[0, :, :TOK.vocab_size], joint[0, :, TOK.vocab_size:]
    assert not char_lp.is_contiguous()
    pool = Pool(candidates(["cat", "tab"], char_lp, phone_lp, TOK, PRONS, PHONES, None),
                greedy_decode(char_lp[None], lens, TOK), char_lp)
    assert pool.char_hyps[0].text == "cat"
    h1 = both.pick(pool)
    assert (h1.text, [(w.word, w.start, w.end) for w in h1.words]) == ("tab", [("tab", 0, 5)])
    assert h1.tokens == TOK.encode("tab") and h1.timesteps == [0, 2, 4]
    assert both.pick(pool, 0.0).text == "cat"
    with pytest.raises(DecoderError, match="joint emissions must be"):
        both(char[None], lens)
    with pytest.raises(DecoderError, match="phone_weight needs the package's phone head"):
        from asr.decode.beam import BeamSearchDecoder

        BeamSearchDecoder(TOK, DecodingOptions(decoder="beam", phone_weight=0.5))
    with pytest.raises(ValueError, match="need.* decoder='beam'"):
        DecodingOptions(phone_weight=0.5)
    assert opts.phone_weight is None and opts.with_weights().phone_weight == 0.0  # unset: off unless tuned


def test_make_decoder_asks_for_joint_emissions_only_with_a_phone_weight(tmp_path):
    pkg = load_package(export([_ckpt(tmp_path / "p.ckpt")], tmp_path / "m.asr"))
    decode, settings = make_decoder(pkg, DecodingOptions(decoder="beam", phone_weight=0.5))
    assert decode.joint_emissions and settings["phone_weight"] == 0.5
    assert not make_decoder(pkg, DecodingOptions(decoder="beam"))[0].joint_emissions
    waves = [torch.randn(8000), torch.randn(5000)]
    joint = forward_batch(pkg, waves, phones=True)
    chars = forward_batch(pkg, waves)
    for j, c in zip(joint, chars):
        assert j.shape == (c.shape[0], TOK.vocab_size + 1 + len(PHONES))
        torch.testing.assert_close(j[:, :TOK.vocab_size], c)  # the character head is unchanged
    hyps = decode(torch.nn.utils.rnn.pad_sequence(joint, batch_first=True), torch.tensor([len(j) for j in joint]))
    assert len(hyps) == 2 and all(isinstance(h.text, str) and math.isfinite(h.score) for h in hyps)

    plain = load_package(export([_ckpt(tmp_path / "plain.ckpt", phones=())], tmp_path / "plain.asr"))
    with pytest.raises(DecoderError, match=r"plain.asr: --phone-weight needs a package with a phone head"):
        make_decoder(plain, DecodingOptions(decoder="beam", phone_weight=0.5))


def test_transcribe_with_phone_weight_runs_end_to_end_and_refuses_a_package_without_a_head(tmp_path):
    export([_ckpt(tmp_path / "p.ckpt")], tmp_path / "m.asr")
    export([_ckpt(tmp_path / "plain.ckpt", phones=())], tmp_path / "plain.asr")
    rng = np.random.default_rng(0)
    wav = tmp_path / "a.wav"
    sf.write(wav, (0.1 * rng.standard_normal(12000)).astype(np.float32), 16000)
    def run(model: str, weight: str = "0.5") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "asr", "transcribe", str(tmp_path / model), str(wav),
                               "--decoder", "beam", "--phone-weight", weight],
                              capture_output=True, text=True, timeout=600, cwd=ROOT)

    proc = run("m.asr")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run("plain.asr")
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(err) == 1 and "needs a package with a phone head" in err[0], proc.stderr
    proc = run("m.asr", "1.5")
    assert proc.returncode == 2 and "--phone-weight must be in [0, 1]" in proc.stderr


_UNIGRAMS = [("-99", "<s>"), ("-1.0", "</s>"), ("-0.7", "cat"), ("-0.7", "tab"), ("-0.7", "bat"), ("-1.0", "<unk>")]
ARPA = ("\\data\\\nngram 1=6\nngram 2=1\n\n\\1-grams:\n"
        + "".join(f"{p}\t{w}\t0\n" for p, w in _UNIGRAMS)
        + "\n\\2-grams:\n-0.5\t<s> cat\n\n\\end\\\n")  # KenLM wants tabs


def test_lm_tune_finds_the_phone_weight_and_decoding_takes_it_from_the_tuning_file(tmp_path):
    from asr.decode.lm import tune_lm
    from asr.decode.lm_files import load_tuned_weights

    lm = tmp_path / "lm.arpa"
    lm.write_text(ARPA)
    c, a, t, b = (TOK.tokens.index(x) for x in "catb")
    char = _path_log_probs([c, 0, a, 0, t, 0], TOK.vocab_size, good=-0.4)
    char[[0, 2, 4], [t, a, b]] = -1.2  # "tab" a close second
    phone = _path_log_probs([4, 0, 1, 0, 2, 0], 1 + len(PHONES))  # T AE B
    joint = torch.cat([char, phone], dim=-1)
    bat = torch.cat([_path_log_probs([b, 0, a, 0, t, 0], TOK.vocab_size),
                     _path_log_probs([2, 0, 1, 0, 4, 0], 1 + len(PHONES))], dim=-1)  # both heads: "bat"
    head = PhoneHead(torch.nn.Linear(16, 1 + len(PHONES)), PHONES, PRONS)
    result = tune_lm([joint, joint, bat], ["tab", "tab", "bat"], TOK, lm, lm_weights=[0.5], word_scores=[0.0, -30.0],
                     options=DecodingOptions(decoder="beam", beam_size=20), save=True, phone_head=head)
    assert result["char_beam_wer"] == pytest.approx(2 / 3)  # the character beam alone hears "cat" twice
    assert [g["phone_weight"] for g in result["phone_grid"]] == [0.0, 0.25, 0.5, 0.75]
    assert result["phone_weight"] > 0 and result["wer"] == 0.0
    assert load_tuned_weights(lm) == {"lm_weight": 0.5, "word_score": 0.0, "phone_weight": result["phone_weight"]}
    # A package without a head decodes with the same tuning file, without the phone weight.
    plain = load_package(export([_ckpt(tmp_path / "plain.ckpt", phones=())], tmp_path / "plain.asr"))
    decode, settings = make_decoder(plain, DecodingOptions(decoder="beam", lm=str(lm)))
    assert not decode.joint_emissions and settings["phone_weight"] == 0.0
    pkg = load_package(export([_ckpt(tmp_path / "p.ckpt")], tmp_path / "m.asr"))
    decode, settings = make_decoder(pkg, DecodingOptions(decoder="beam", lm=str(lm)))
    assert decode.joint_emissions and settings["phone_weight"] == result["phone_weight"]
    decode, settings = make_decoder(pkg, DecodingOptions(decoder="beam", lm=str(lm), phone_weight=0.0))
    assert not decode.joint_emissions  # given on the command line: it wins over the tuned value


def test_lm_tune_with_a_character_lm_leaves_the_phone_weight_alone(tmp_path):
    from asr.decode.lm import tune_lm

    lm = tmp_path / "chars.arpa"
    units = ["<s>", "</s>", "<unk>", "|", "a", "b", "c", "t"]
    lm.write_text("\\data\\\nngram 1=8\nngram 2=1\n\n\\1-grams:\n"
                  + "".join(f"{-99 if u == '<s>' else -0.9}\t{u}\t0\n" for u in units)
                  + "\n\\2-grams:\n-0.5\t<s> c\n\n\\end\\\n")
    c, a, t, b = (TOK.tokens.index(x) for x in "catb")
    char = _path_log_probs([c, 0, a, 0, t, 0], TOK.vocab_size)
    joint = torch.cat([char, _path_log_probs([3, 0, 1, 0, 4, 0], 1 + len(PHONES))], dim=-1)
    two = torch.cat([_path_log_probs([c, a, t, 1, c, a, t], TOK.vocab_size),  # "cat cat": a word boundary
                     _path_log_probs([3, 1, 4, 0, 3, 1, 4], 1 + len(PHONES))], dim=-1)
    head = PhoneHead(torch.nn.Linear(16, 1 + len(PHONES)), PHONES, PRONS)
    result = tune_lm([joint, two], ["cat", "cat cat"], TOK, lm, lm_weights=[0.5], word_scores=[0.0, -30.0],
                     options=DecodingOptions(decoder="beam", beam_size=20), phone_head=head)
    assert result["tuned"] and result["mode"] == "lexicon-free"  # a character LM: no two-head decoding
    assert "phone_weight" not in result and result["wer"] == 0.0
