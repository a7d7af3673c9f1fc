"""YAML config with key=value overrides: unknown keys and type changes are errors."""

import subprocess
import sys
from pathlib import Path

import pytest

from asr.config import ConfigError, load_config, save_config

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ["data.train_manifest=t.jsonl", "data.dev_manifest=d.jsonl"]


def test_overrides_apply_and_types_are_checked(tmp_path):
    cfg = load_config(None, REQUIRED + ["model.cell=gru", "model.hidden=32", "optim.lr=1e-4", "data.speed_perturb=[0.9,1.1]", "data.cache_features=false"])
    assert cfg.model.cell == "gru" and cfg.model.hidden == 32 and cfg.optim.lr == 1e-4
    assert cfg.data.speed_perturb == (0.9, 1.1)
    with pytest.raises(ConfigError, match="model.hiden"):
        load_config(None, REQUIRED + ["model.hiden=3"])
    with pytest.raises(ConfigError, match="model.hidden: expected int"):
        load_config(None, REQUIRED + ["model.hidden=big"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["model.hidden"])
    with pytest.raises(ConfigError, match="required"):
        load_config(None, [])
    with pytest.raises(ConfigError, match="model.cell"):
        load_config(None, REQUIRED + ["model.cell=transformer"])


@pytest.mark.slow
def test_bad_value_on_the_command_line_is_one_error_line_exit_2():
    # Fails in load_config, before any manifest is read or model built: a second or two.
    proc = subprocess.run([sys.executable, "-m", "asr", "train", "conf/yesno.yaml", "model.cell=x"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "model.cell" in errors[0], proc.stderr


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, REQUIRED + ["model.num_layers=2"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "conf").glob("*.yaml")))
def test_shipped_configs_load(name):
    load_config(ROOT / "conf" / name)


def test_retired_keys_are_named_as_such(tmp_path):
    with pytest.raises(ConfigError, match="data.test_manifest is no longer a config key: the test split is scored by"):
        load_config(None, ["data.test_manifest=x.jsonl"])



def test_features_on_device_values():
    assert load_config(None, REQUIRED).data.features_on_device == "auto"
    cfg = load_config(None, REQUIRED + ["data.cache_features=false", "data.features_on_device=true"])
    assert cfg.data.features_on_device is True
    with pytest.raises(ConfigError, match="cache_features=false"):
        load_config(None, REQUIRED + ["data.features_on_device=true"])
    with pytest.raises(ConfigError, match="true, false or auto"):
        load_config(None, REQUIRED + ["data.features_on_device=sometimes"])
