"""The filter's stages as components: records in, kept and dropped-with-a-structured-reason out."""

from sftlab.curate.filter.config import DedupSettings, make_filter_config
from sftlab.curate.filter.heuristics import HeuristicSettings
from sftlab.curate.filter.pipeline import build_stages
from sftlab.curate.filter.pool import PoolRecord
from sftlab.curate.filter.stages import DiverseSelection, ExactDedup, Heuristics
from sftlab.data.schema import Conversation, Turn


def _pool(*pairs: tuple[str, str]) -> list[PoolRecord]:
    return [PoolRecord(i, f"r{i}", "pool", Conversation([Turn("user", p), Turn("assistant", r)]), p, r)
            for i, (p, r) in enumerate(pairs)]


def test_a_stage_returns_drops_with_reason_and_the_record_kept_instead():
    pool = _pool(("Name a colour.", "Blue."), ("name a  colour.", "Red."), ("Name a colour.", "Blue."))
    result = ExactDedup(DedupSettings()).run(pool, print)
    assert result.kept == pool[:1]
    assert [(r.id, d.reason, d.duplicate_of.id) for r, d in result.dropped] == [
        ("r1", "exact duplicate prompt", "r0"), ("r2", "exact duplicate (prompt + response)", "r0")]
    assert all(not r.stage for r in pool)  # the pipeline, not the stage, marks records dropped


def test_heuristics_and_selection_as_stages():
    pool = _pool(("Name a colour.", "Blue."), ("Say hi.", "   "), ("Name a fruit.", "Apple."))
    kept = Heuristics(HeuristicSettings()).run(pool, print)
    assert [d.reason for _, d in kept.dropped] == ["empty response"]
    pool[2].scores["quality"] = 0.9
    chosen = DiverseSelection(make_filter_config({"pool": "x", "output": "y"}).diversity.model_copy(
        update={"method": "none"}), target_size=1, seed=0).run(kept.kept, print)
    assert chosen.kept == [pool[2]] and [d.reason for _, d in chosen.dropped] == ["not selected (target size reached)"]


def test_the_config_lists_the_stages_cheapest_first():
    cfg = make_filter_config({"pool": "x", "output": "y", "decontaminate": {"eval": ["e"]},
                              "scorers": [{"type": "ifd"}], "heuristics": None, "dedup": {"near": False}})
    assert [s.name for s in build_stages(cfg)] == ["exact dedup", "decontaminate", "model scores",
                                                   "diversity selection"]
    assert [s.drop_label for s in build_stages(cfg)][2] == "quality"


def _decontaminated(tmp_path, eval_rows: list[dict], conversations: list[list[tuple[str, str]]]):
    """`curate filter` with decontamination only, on a pool of the given conversations (ids r0, r1, ...)."""
    import json

    from sftlab.curate.filter.pipeline import run_filter

    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in eval_rows))
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "messages": [
        {"role": role, "content": text} for role, text in turns]}) + "\n" for i, turns in enumerate(conversations)))
    return run_filter(make_filter_config({
        "pool": str(tmp_path / "pool.jsonl"), "output": str(tmp_path / "sel.jsonl"), "target_size": 10,
        "dedup": {"near": False}, "diversity": {"method": "none"},
        "decontaminate": {"eval": [str(tmp_path / "eval.jsonl")]}}))


def test_a_system_prompt_or_earlier_turns_do_not_hide_a_short_eval_prompt(tmp_path):
    """The pool's prompt text holds system and earlier user turns too: a short eval question as one user turn used to
    pass decontamination whenever a system prompt (or a greeting turn) stood in front of it."""
    rows = [[("system", "You are a helpful assistant."), ("user", "What is 12 plus 7?"), ("assistant", "It is 19.")],
            [("user", "Hi there."), ("assistant", "Hello."), ("user", "what is 12 plus 7"), ("assistant", "19.")],
            [("user", "What is 12 plus 7?"), ("assistant", "It is 19.")],
            [("system", "You are a helpful assistant."), ("user", "Tell me a joke about cats."),
             ("assistant", "Cats are purrfect.")]]
    result = _decontaminated(tmp_path, [{"question": "What is 12 plus 7?", "answer": "#### 19"}], rows)
    assert [r.id for r in result.selected] == ["r3"]
    assert [r.reason for r in result.records[:3]] == ["prompt equals an eval example"] * 3


def test_a_training_turn_that_says_what_a_short_eval_answer_says_is_not_contamination(tmp_path):
    """Eval answers went into the set matched whole against every user turn: a conversation whose user said
    "Yes." was dropped because some eval answer was "Yes."; a 13-gram of a long answer still is a leak."""
    answer = "The water cycle moves water from the oceans into the air as vapour and back as rain and snow."
    rows = [[("user", "Shall I list more fruits?"), ("assistant", "Would you like that?"), ("user", "Yes."),
             ("assistant", "Pears, plums and figs.")],
            [("user", "Explain rain."), ("assistant", answer)]]
    result = _decontaminated(tmp_path, [{"question": "Is the sky blue on a clear day?", "answer": "Yes."},
                                        {"question": "Describe the water cycle.", "answer": answer}], rows)
    assert [r.id for r in result.selected] == ["r0"]
    assert result.records[1].reason == "13-gram overlap with an eval example"
