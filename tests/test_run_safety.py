"""Training and export never destroy what they did not create; bad configs and model folders are clear errors.

Every case here was a traceback, a silent accept or lost data before (see tests/bad_inputs/train.md)."""

import json
import math
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sftlab.cli import app
from sftlab.data.schema import Conversation, Turn
from sftlab.data.writers import write_jsonl
from sftlab.errors import ConfigError, ModelError
from sftlab.fsutil import MARKER
from sftlab.train.config import load_config, make_config
from sftlab.train.run import train

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(folder: Path, n: int = 8) -> str:
    convs = [Conversation([Turn("user", f"Question {i}?"), Turn("assistant", "Answer " + "ok " * (1 + i % 3))])
             for i in range(n)]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.jsonl"
    write_jsonl(path, convs)
    return str(path)


def _cfg(tiny_model_dir, tmp_path, **kw):
    base = {"model": str(tiny_model_dir), "data": [_data(tmp_path / "data")], "output_dir": str(tmp_path / "run"),
            "batch_size": 2, "grad_accum": 1, "max_steps": 1, "precision": "fp32", "compile": False, "seed": 3}
    base.update(kw)
    return make_config(base)


def _user_folder(path: Path, marked: bool = False) -> Path:
    """A folder holding a user's file (and, for the 'even if marked' cases, an sftlab marker)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "thesis.txt").write_text("five years of work")
    if marked:
        (path / MARKER).write_text(json.dumps({"sftlab": 1, "kind": "train"}))
    return path


# ---- 1. --overwrite only removes a folder that is recognisably an sftlab run, never cwd/parents/$HOME -----------

@pytest.mark.parametrize("where", ["cwd", "cwd_marked", "user_folder", "home_marked", "parent_of_cwd_marked"])
def test_overwrite_refuses_folders_that_are_not_removable_runs(tiny_model_dir, tmp_path, monkeypatch, where):
    work = tmp_path / "work"
    if where.startswith("cwd"):
        target = _user_folder(work, marked=where.endswith("marked"))
        monkeypatch.chdir(work)
        output_dir = "."
    elif where == "user_folder":
        target = output_dir = _user_folder(tmp_path / "mine")
    elif where == "home_marked":
        target = output_dir = _user_folder(tmp_path / "home", marked=True)
        monkeypatch.setenv("HOME", str(target))
    else:
        target = output_dir = _user_folder(tmp_path / "projects", marked=True)
        (target / "child").mkdir()
        monkeypatch.chdir(target / "child")
    cfg = _cfg(tiny_model_dir, tmp_path, output_dir=str(output_dir))
    with pytest.raises(ConfigError, match="refusing to remove") as e:
        train(cfg, overwrite=True)
    assert str(output_dir) in str(e.value) or str(target) in str(e.value)
    assert (target / "thesis.txt").read_text() == "five years of work"


def test_overwrite_replaces_a_previous_run(tiny_model_dir, tmp_path):
    cfg = _cfg(tiny_model_dir, tmp_path)
    first = train(cfg)
    marker = json.loads((first.run_dir / MARKER).read_text())
    assert marker["kind"] == "train"
    (first.run_dir / "leftover.txt").write_text("from the first run")
    with pytest.raises(ConfigError, match="--overwrite"):
        train(cfg)
    second = train(cfg, overwrite=True)
    assert not (second.run_dir / "leftover.txt").exists()
    assert (second.run_dir / "final" / "adapter_model.safetensors").exists() and (second.run_dir / MARKER).exists()


def test_a_run_that_failed_before_its_first_step_is_rerun_without_overwrite(tiny_model_dir, tmp_path):
    from sftlab.errors import SftlabError

    with pytest.raises(SftlabError):
        train(_cfg(tmp_path / "no-such-model", tmp_path))
    with pytest.raises(SftlabError):  # the data read, then a LoRA target that matches nothing
        train(_cfg(tiny_model_dir, tmp_path, lora={"target_modules": ["v_prj"]}))
    assert {p.name for p in (tmp_path / "run").iterdir()} <= {MARKER, "config.yaml", "data_stats.json"}
    result = train(_cfg(tiny_model_dir, tmp_path))  # was: "run folder already exists; pass --resume or --overwrite"
    assert (result.final_dir / "adapter_model.safetensors").exists()


def test_overwrite_never_removes_the_runs_own_training_data(tiny_model_dir, tmp_path):
    cfg = _cfg(tiny_model_dir, tmp_path)
    train(cfg)
    inside = tmp_path / "run" / "mydata.jsonl"
    inside.write_text(Path(cfg.data[0].path).read_text())
    cfg = _cfg(tiny_model_dir, tmp_path, data=[str(inside)])
    with pytest.raises(ConfigError, match="mydata.jsonl"):
        train(cfg, overwrite=True)
    assert inside.exists()


def test_resume_refuses_a_folder_that_is_not_a_run(tiny_model_dir, tmp_path):
    """--resume into a user's folder would write config.yaml, metrics.jsonl... over the user's files."""
    folder = _user_folder(tmp_path / "mine")
    (folder / "config.yaml").write_text("my: own config\n")
    with pytest.raises(ConfigError, match="not an sftlab run folder"):
        train(_cfg(tiny_model_dir, tmp_path, output_dir=str(folder)), resume=True)
    assert (folder / "config.yaml").read_text() == "my: own config\n"


def test_resume_and_overwrite_together_is_an_error(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="--resume.*--overwrite"):
        train(_cfg(tiny_model_dir, tmp_path), resume=True, overwrite=True)


def test_output_dir_that_is_a_file_is_a_config_error(tiny_model_dir, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    with pytest.raises(ConfigError, match="notes.txt.*is a file"):
        train(_cfg(tiny_model_dir, tmp_path, output_dir=str(f)), overwrite=True)
    assert f.read_text() == "keep me"
    inside = _cfg(tiny_model_dir, tmp_path, output_dir=str(f / "run"))  # no folder can be made: the lock says nothing
    with pytest.raises(OSError, match="Not a directory"):
        train(inside)
    assert f.read_text() == "keep me"


# ---- 2. export refuses an existing OUT unless --overwrite, with the same rule -------------------------------------

@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("adapter")
    return train(_cfg(tiny_model_dir, tmp, learning_rate=5e-2)).final_dir


def test_export_refuses_an_existing_folder_and_overwrites_only_its_own(adapter_dir, tmp_path):
    mine = _user_folder(tmp_path / "merged")
    r = runner.invoke(app, ["export", str(adapter_dir), str(mine)])
    assert r.exit_code == 2 and "already exists" in r.output and "--overwrite" in r.output
    r = runner.invoke(app, ["export", str(adapter_dir), str(mine), "--overwrite"])
    assert r.exit_code == 2 and "refusing to remove" in r.output
    assert (mine / "thesis.txt").exists()
    out = tmp_path / "out"
    (tmp_path / "out.tmp").mkdir()  # a user's folder that happens to have the old temp name
    (tmp_path / "out.tmp" / "keep.txt").write_text("mine")
    assert runner.invoke(app, ["export", str(adapter_dir), str(out)]).exit_code == 0
    assert (tmp_path / "out.tmp" / "keep.txt").read_text() == "mine"
    assert json.loads((out / MARKER).read_text())["kind"] == "export"
    r = runner.invoke(app, ["export", str(adapter_dir), str(out), "--overwrite"])
    assert r.exit_code == 0, r.output
    assert (out / "model.safetensors").exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "merged", "out", "out.tmp"]


def test_export_to_a_file_or_into_its_own_adapter_is_refused(adapter_dir, tmp_path):
    f = tmp_path / "model.txt"
    f.write_text("keep")
    r = runner.invoke(app, ["export", str(adapter_dir), str(f), "--overwrite"])
    assert r.exit_code == 2 and "is a file" in r.output and f.read_text() == "keep"
    r = runner.invoke(app, ["export", str(adapter_dir), str(adapter_dir.parent), "--overwrite"])
    assert r.exit_code == 2 and "refusing to remove" in r.output
    assert (adapter_dir / "adapter_model.safetensors").exists()


# ---- 3. names are names; config file / --set problems are ConfigErrors -------------------------------------------

@pytest.mark.parametrize("name", ["../../x", "a/b", "..", "", "a\\b", "/abs", "x" * 200],
                         ids=["dotdot_path", "slash", "dotdot", "empty", "backslash", "absolute", "too_long"])
def test_run_name_is_a_name_not_a_path(name):
    with pytest.raises(ConfigError, match="name"):
        make_config({"name": name, "model": "m", "data": ["d.jsonl"]})


def test_train_cli_config_path_problems_are_clear(tmp_path):
    r = runner.invoke(app, ["train", str(tmp_path)])
    assert r.exit_code == 2 and str(tmp_path) in r.output and "folder" in r.output
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"model: \xff\xfe\n")
    r = runner.invoke(app, ["train", str(cfg)])
    assert r.exit_code == 2 and "c.yaml" in r.output and "UTF-8" in r.output


@pytest.mark.parametrize("item, expected", [
    ("max_steps=[1", "--set 'max_steps=[1': invalid YAML"),
    ("max_steps", "--set 'max_steps': expected KEY=VALUE"),
    ("=3", "--set '=3': expected KEY=VALUE"),
], ids=["yaml_error", "no_equals", "no_key"])
def test_train_cli_bad_set_items_are_config_errors(tiny_model_dir, tmp_path, item, expected):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {tiny_model_dir}\ndata: [{_data(tmp_path)}]\noutput_dir: {tmp_path / 'run'}\n")
    r = runner.invoke(app, ["train", str(cfg), "--set", item])
    assert r.exit_code == 2, r.output
    assert expected in r.output
    assert not (tmp_path / "run").exists()


def test_set_takes_dotted_keys_into_nested_settings(tmp_path):
    from sftlab.yamlconfig import parse_set_items

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: m\ndata: [d.jsonl]\nlora: {r: 4, alpha: 8}\n")
    loaded = load_config(cfg, parse_set_items(["lora.r=8", "max_steps=3", "lora.target_modules=[q_proj]"]))
    assert (loaded.lora.r, loaded.lora.alpha, loaded.max_steps) == (8, 8, 3)
    assert loaded.lora.target_modules == ["q_proj"]
    with pytest.raises(ConfigError, match="--set model.x: 'model' holds a str"):
        load_config(cfg, parse_set_items(["model.x=1"]))  # model is a string, not a mapping


def test_curate_filter_set_uses_the_same_parser(tmp_path):
    r = runner.invoke(app, ["curate", "filter", "--pool", "p.jsonl", "--set", "dedup.threshold=[0.7"])
    assert r.exit_code == 2 and "'dedup.threshold=[0.7'" in r.output


# ---- 4. config values are validated, listing the valid ones --------------------------------------------------------

@pytest.mark.parametrize("field, value, expected", [
    pytest.param("lr_scheduler", "cosine_with_warmpu", "valid: linear, cosine, cosine_with_restarts", id="scheduler"),
    pytest.param("optim", "adamw_torchh", "did you mean 'adamw_torch'? valid: ", id="optim"),
    pytest.param("max_steps", 0, "not 0", id="max_steps_0"),
    pytest.param("max_steps", -5, "greater than or equal to -1", id="max_steps_negative"),
    pytest.param("epochs", math.inf, "finite", id="epochs_inf"),
    pytest.param("max_grad_norm", math.inf, "finite", id="max_grad_norm_inf"),
    pytest.param("seed", -1, "greater than or equal to 0", id="seed_negative"),
    pytest.param("data", 5, "valid list", id="data_number"),
    pytest.param("data", None, "valid list", id="data_null"),
    pytest.param("data", [], "at least 1 item", id="data_empty"),
    pytest.param("lora", {"target_modules": []}, "target_modules", id="target_modules_empty"),
    pytest.param("lora", {"target_modules": "q_proj["}, "not a valid regular expression", id="target_regex"),
    pytest.param("eval_data", ["held.jsonl"], "unknown key", id="eval_data_was_accepted_and_never_used"),
])
def test_bad_config_values_are_config_errors_naming_file_and_field(tmp_path, field, value, expected):
    import yaml

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"model": "m", "data": ["d.jsonl"], field: value}))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and field in str(e.value) and expected in str(e.value)


@pytest.mark.parametrize("targets, missing", [(["q_proj", "v_prj"], "v_prj"), (["attention"], "attention"),
                                              ("nothing.*", "nothing.*")], ids=["one_typo", "not_a_layer", "regex"])
def test_target_modules_that_match_nothing_fail_before_training(tiny_model_dir, tmp_path, targets, missing):
    cfg = _cfg(tiny_model_dir, tmp_path, lora={"target_modules": targets})
    with pytest.raises(ConfigError) as e:
        train(cfg)
    text = str(e.value)
    assert missing in text and "q_proj" in text and "down_proj" in text and "lm_head" not in text
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


# ---- 5. only safetensors are loaded ---------------------------------------------------------------------------------

def _pickled_copy(src: Path, dst: Path, weights: str) -> Path:
    """Copy a saved model/adapter folder, its safetensors weights re-saved as a pickle .bin."""
    import shutil

    from safetensors.torch import load_file

    shutil.copytree(src, dst)
    st = next(dst.glob("*.safetensors"))
    torch.save(load_file(st), dst / weights)
    st.unlink()
    return dst


def test_adapter_with_only_pickle_weights_is_refused(adapter_dir, tmp_path):
    pickled = _pickled_copy(adapter_dir, tmp_path / "adapter", "adapter_model.bin")
    r = runner.invoke(app, ["export", str(pickled), str(tmp_path / "out")])
    assert r.exit_code == 2 and "only safetensors" in r.output and "adapter_model.bin" in r.output
    from sftlab.generation.factory import load_transformers_generator

    with pytest.raises(ModelError, match="only safetensors"):
        load_transformers_generator(str(json.loads((adapter_dir / "sftlab.json").read_text())["base_model"]),
                                    adapter=str(pickled))


def test_model_with_only_pickle_weights_is_refused(tiny_model_dir, tmp_path):
    pickled = _pickled_copy(tiny_model_dir, tmp_path / "model", "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"\(pytorch_model.bin\); sftlab loads only safetensors"):
        train(_cfg(tiny_model_dir, tmp_path, model=str(pickled)))


def test_marker_is_not_written_outside_the_run(tiny_model_dir, tmp_path):
    """The marker lives in the run folder only (a parent folder never becomes 'an sftlab run')."""
    result = train(_cfg(tiny_model_dir, tmp_path, output_dir=str(tmp_path / "a" / "b")))
    assert (result.run_dir / MARKER).exists() and not (tmp_path / "a" / MARKER).exists()
    assert os.listdir(tmp_path / "a") == ["b"]


def test_a_kill_while_removing_a_stage_folder_leaves_its_name_claimable(tmp_path, monkeypatch):
    import sftlab.fsutil as fsutil
    from sftlab.recipe.state import claim_stage_folder

    folder = tmp_path / "run" / "sft"
    claim_stage_folder(folder, keep=[])
    (folder / "weights.safetensors").write_text("x")

    def killed_midway(path):  # the marker goes first, then the process dies
        for marker in Path(path).rglob(MARKER):
            marker.unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(fsutil.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        claim_stage_folder(folder, keep=[])
    monkeypatch.undo()
    claim_stage_folder(folder, keep=[])  # was: "refusing to remove ...: it holds no sftlab-run.json", every rerun
    assert [p.name for p in folder.iterdir()] == [MARKER]


HOLD_LOCK = "from sftlab.fsutil import OutputLock\nheld = OutputLock(sys.argv[1]).acquire()"


def test_a_second_run_into_a_folder_in_use_stops_before_touching_it(tiny_model_dir, tmp_path, other_process):
    """Two runs into one folder interleaved checkpoints, and --overwrite deleted the running one's folder."""
    cfg = _cfg(tiny_model_dir, tmp_path)
    first = train(cfg)
    weights = first.final_dir / "adapter_model.safetensors"
    before = weights.read_bytes()
    holder = other_process(HOLD_LOCK, first.run_dir)
    with pytest.raises(ConfigError, match=rf"being written by another sftlab process \(pid {holder.pid}"):
        train(cfg, overwrite=True)
    assert weights.read_bytes() == before
    holder.kill()
    holder.wait()  # the OS frees a crashed holder's lock
    second = train(cfg, overwrite=True)
    assert second.final_dir.is_dir() and not (tmp_path / ".run.lock").exists()  # released and removed
