"""Shared fixtures: a tiny random Llama + byte-level BPE tokenizer saved as a normal HF folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from sftlab.testing import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture()
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny-model steps are fastest on one thread, and do not fight other processes for the 2 cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.exists():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture()
def other_process():
    """Start a second Python process running `code` (argv[1] = target); it prints 'held' once it holds what it
    took, and is killed at the end of the test (as a crashed job would be)."""
    import subprocess
    import sys

    started = []

    def start(code: str, target: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", f"import sys, time\n{code}\nprint('held', flush=True)\n"
                                 "time.sleep(300)", str(target)], stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()
