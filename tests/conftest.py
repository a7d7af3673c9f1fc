"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared corpora folder: ``$ASR_DATA_DIR`` or ``../shared/data`` beside the repo.

    Tests using it should also be marked ``@pytest.mark.data``; they are skipped (with the
    path that was looked for) where the corpora are not available.
    """
    env = os.environ.get("ASR_DATA_DIR")
    path = Path(env) if env else (REPO_ROOT / ".." / "shared" / "data").resolve()
    if not path.is_dir():
        how = "$ASR_DATA_DIR" if env else "../shared/data (set ASR_DATA_DIR to point elsewhere)"
        pytest.skip(f"corpora not available: {path} from {how} does not exist")
    return path
