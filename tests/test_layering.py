"""The layering stays one-directional: data -> templates -> models -> train/generation -> curate/serve ->
evaluate -> report -> demo/recipe -> cli, shared services (errors, fsutil, textutil, yamlconfig, kvstore,
plotting, userfn, artifacts) below all. No stage imports a peer or a later stage."""

import ast
from pathlib import Path

import sftlab

PACKAGE = Path(sftlab.__file__).parent
SHARED = {"errors", "fsutil", "textutil", "yamlconfig", "kvstore", "plotting", "userfn", "artifacts"}
# the demo (the main job) and recipes train, evaluate and write the run report, so they sit after report
ORDER = [["data"], ["templates"], ["models", "testing"], ["train", "generation"], ["curate", "serve"], ["evaluate"],
         ["report"], ["demo", "recipe"], ["cli"], ["__main__"]]
RANK = {stage: rank for rank, stages in enumerate(ORDER, start=1) for stage in stages} | dict.fromkeys(SHARED, 0)
# fsutil and artifacts write through the data layer's atomic JSON writer (lazily, inside the writing function)
ALLOWED = {("fsutil", "sftlab.data.writers"), ("artifacts", "sftlab.data.writers")}


def _stage(module: str) -> str:
    """`sftlab.curate.filter.dedup` -> `curate`; `sftlab.textutil` -> `textutil`."""
    return module.split(".")[1]


def _imports(path: Path) -> set[str]:
    """Every sftlab module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("sftlab.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sftlab.") and not node.level:
            found.add(node.module)
    return found


def _violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        if len(rel.parts) < 2 or rel.parts[1] == "__init__":
            continue
        here = rel.parts[1]
        assert here in RANK, f"{path}: a new top-level module; give it a place in ORDER or SHARED"
        for module in _imports(path):
            there = _stage(module)
            assert there in RANK, f"{path} imports {module}: unknown stage"
            peer_or_later = RANK[there] >= RANK[here] and not RANK[there] == RANK[here] == 0
            if there != here and peer_or_later and (here, module) not in ALLOWED:
                bad.append(f"{'/'.join(rel.parts)} ({here}) imports {module} ({there})")
    return bad


def test_no_stage_imports_a_peer_or_a_later_stage():
    assert _violations() == []


def test_the_check_sees_an_upward_import(tmp_path):
    assert RANK["evaluate"] > RANK["train"] == RANK["generation"] > RANK["templates"] > RANK["textutil"]
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from sftlab.curate.rewards import make_reward\nimport sftlab.train.run\n")
    assert _imports(probe) == {"sftlab.curate.rewards", "sftlab.train.run"}
