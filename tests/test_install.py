"""The toolkit installed from its wheel, away from the checkout: `python -m build` makes the
sdist and the wheel (the wheel from the sdist, so both are exercised), the wheel goes into a
fresh virtualenv, and `asr --help`, `asr export` + `asr transcribe` and `asr lm build` (KenLM
found through KENLM_BIN, then through PATH) run there with a temporary folder as the working
directory, so nothing can come from the checkout by accident.

The new virtualenv reuses the running interpreter's installed packages (torch and the other
dependencies) through a ``.pth`` line instead of downloading them; a path listed in a ``.pth``
file does not run the ``.pth`` files inside it, so the checkout's editable install stays out.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from asr.decode.lm import LMError, find_kenlm_bin

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

# Run inside the new virtualenv: a tiny random-weight checkpoint (the shape the tests'
# `package_path` fixtures use) and a second of noise to transcribe.
MAKE_CHECKPOINT = """
import numpy as np, soundfile as sf, torch
from asr.config import ExperimentConfig, to_dict
from asr.model import AcousticModel, ModelConfig
from asr.text import CharTokenizer
tok = CharTokenizer("abcdefgh")
cfg = ExperimentConfig(model=ModelConfig(hidden=16, num_layers=1, conv_channels=4, dropout=0.0))
torch.manual_seed(0)
model = AcousticModel(cfg.model, cfg.features.n_mels, tok.vocab_size)
model.cmvn.mean.fill_(-8.0)
model.cmvn.istd.fill_(0.3)
with torch.no_grad():
    model.output.weight.mul_(5)
torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"config": to_dict(cfg), "tokenizer": tok.to_dict()}}, "a.ckpt")
rng = np.random.default_rng(0)
t = np.arange(16000) / 16000
sf.write("clip.wav", (0.1 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 16000)
"""


def _kenlm_bin() -> Path | None:
    try:
        return find_kenlm_bin()
    except LMError:
        return None


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _copy_sources(dst: Path) -> None:
    """What `python -m build` reads, without the checkout's build/, egg-info and caches."""
    dst.mkdir()
    shutil.copytree(REPO_ROOT / "asr", dst / "asr", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, dst / name)


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    pytest.importorskip("build", reason="`build` is in the dev extras: pip install -e '.[dev]'")
    kenlm = _kenlm_bin()

    src, dist, work = tmp_path / "src", tmp_path / "dist", tmp_path / "work"
    _copy_sources(src)
    work.mkdir()
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KENLM_BIN", "VIRTUAL_ENV")}
    # --no-isolation: the running environment's setuptools builds it (no download).
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)], tmp_path, clean)
    wheels, sdists = list(dist.glob("ctc_asr-*.whl")), list(dist.glob("ctc_asr-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in dist.iterdir())

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, clean)
    vpy = venv / "bin" / "python"
    purelib = Path(_run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        tmp_path, clean).strip())
    outer = dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (purelib / "_outer_site.pth").write_text("".join(f"{p}\n" for p in outer if Path(p).is_dir()))
    # --force-reinstall: the outer environment may list the same distribution (an editable
    # install of the checkout); pip leaves that one alone ("outside environment").
    _run([sys.executable, "-m", "pip", "--python", str(vpy), "install", "--no-deps", "--no-index",
          "--force-reinstall", "-q", str(wheels[0])], tmp_path, clean)

    env = {**clean, "PATH": f"{venv / 'bin'}{os.pathsep}{clean.get('PATH', '')}"}
    where = _run([str(vpy), "-c", "import asr, importlib.metadata as m; print(asr.__file__); "
                  "print(m.version('ctc-asr'), asr.__version__)"], work, env).split()
    assert Path(where[0]).is_relative_to(venv), where  # the wheel's copy, not the checkout's
    assert where[1] == where[2]

    asr = str(venv / "bin" / "asr")
    assert "transcribe" in _run([asr, "--help"], work, env)
    assert where[2] in _run([asr, "--version"], work, env)

    _run([str(vpy), "-c", MAKE_CHECKPOINT], work, env)
    _run([asr, "export", "a.ckpt", "--out", "model.asr"], work, env)
    _run([asr, "transcribe", "model.asr", "clip.wav", "--format", "json", "--out", "out"], work, env)
    assert (work / "out" / "clip.json").is_file(), sorted(p.name for p in (work / "out").rglob("*"))

    if kenlm is None:
        pytest.skip("KenLM lmplz/build_binary not built (scripts/build_kenlm.sh); `asr lm build` not checked")
    (work / "text.txt").write_text("a bad cab\nbad face\nfed a cab\n")
    _run([asr, "lm", "build", "text.txt", "--out", "env.bin"], work, {**env, "KENLM_BIN": str(kenlm)})
    on_path = {**env, "PATH": f"{env['PATH']}{os.pathsep}{kenlm}"}
    _run([asr, "lm", "build", "text.txt", "--out", "path.bin"], work, on_path)
    assert (work / "env.bin").stat().st_size > 0 and (work / "path.bin").stat().st_size > 0
    _run([asr, "transcribe", "model.asr", "clip.wav", "--decoder", "beam", "--lm", "path.bin"], work, on_path)
