"""Reward functions, table-driven, on hand-made responses with known scores."""

import pytest

from sftlab.curate.rewards import (
    Composite,
    JsonSchemaMatch,
    JudgeReward,
    LengthPenalty,
    exact_match,
    extract_final_number,
    json_valid,
    normalized_match,
    numeric_match,
    parse_judge_score,
    resolve_reward,
)
from sftlab.generation.base import Generation, SamplingParams

P = [{"role": "user", "content": "q"}]
GSM_REF = "She sold 48/2 = <<48/2=24>>24 clips.\n48+24 = 72\n#### 72"


@pytest.mark.parametrize(("text", "number"), [
    (GSM_REF, "72"), ("The answer is 1,250.", "1250"), ("x = 3.50 so 3.5", "3.5"), ("#### -4", "-4"),
    ("so \\boxed{12}", "12"), ("no digits here", None), ("first 3 then 7", "7"), ("answer is: $18.", "18"),
])
def test_extract_final_number(text, number):
    assert extract_final_number(text) == number


@pytest.mark.parametrize(("fn", "response", "reference", "score"), [
    (numeric_match, "48 + 24 = 72. #### 72", GSM_REF, 1.0),
    (numeric_match, "The answer is 72.", GSM_REF, 1.0),
    (numeric_match, "The answer is 71.", GSM_REF, 0.0),
    (numeric_match, "I don't know", GSM_REF, 0.0),
    (exact_match, " Paris ", "Paris", 1.0),
    (exact_match, "paris", "Paris", 0.0),
    (normalized_match, "The Paris!", "paris", 1.0),
    (normalized_match, "Lyon", "paris", 0.0),
    (json_valid, '{"a": 1}', None, 1.0),
    (json_valid, '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>', None, 1.0),
    (json_valid, '{"a": 1', None, 0.0),
])
def test_verifiable_rewards(fn, response, reference, score):
    assert fn(P, response, reference) == score


def test_json_schema_for_tool_calls():
    schema = {"type": "object", "required": ["name", "arguments"],
              "properties": {"name": {"const": "get_weather"},
                             "arguments": {"type": "object", "required": ["city"]}}}
    r = JsonSchemaMatch(schema)
    assert r(P, '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>', None) == 1.0
    assert r(P, '{"name": "get_weather", "arguments": {}}', None) == 0.0
    assert r(P, '{"name": "other", "arguments": {"city": "x"}}', None) == 0.0
    assert r(P, "not json", None) == 0.0


def test_composition_and_length_penalty():
    r = Composite([(numeric_match, 1.0), (json_valid, 0.5), (LengthPenalty(target=3, per_token=0.1), 1.0)])
    assert r(P, "#### 72", GSM_REF) == pytest.approx(1.0)
    assert r(P, "one two three four five #### 72", GSM_REF) == pytest.approx(1.0 - 0.4)  # 7 words, 4 over
    assert r(P, "{\"a\": 72}", GSM_REF) == pytest.approx(1.5)


@pytest.mark.parametrize(("text", "score"), [
    ("Rating: 7", 7.0), ("rating:10", 10.0), ("I'd give it 8/10.", 8.0), ("Score = 3", 3.0), ("9", 9.0),
    ("The answer is great", None), ("Rating: eleven", None), ("0/10", None),
])
def test_parse_judge_score(text, score):
    assert parse_judge_score(text) == score


class ScriptedJudge:
    """A stand-in engine with fixed replies; the judge model itself is exercised in test_curate.py."""

    model_id = "scripted"

    def __init__(self, replies):
        self.replies = list(replies)

    def generate(self, prompts, params: SamplingParams):
        return [[Generation(self.replies.pop(0), 3, True)] for _ in prompts]


def test_judge_counts_unparseable():
    judge = JudgeReward(ScriptedJudge(["Rating: 8", "meh", "2/10"]), fallback=0.0)
    assert judge.score_many([(P, "a"), (P, "b"), (P, "c")]) == [8.0, 0.0, 2.0]
    assert (judge.judged, judge.unparseable) == (3, 1)


def test_resolve_reward_by_name_and_module():
    assert resolve_reward("gsm8k") is numeric_match
    assert resolve_reward("sftlab.curate.rewards:exact_match") is exact_match
    with pytest.raises(ValueError, match="unknown reward"):
        resolve_reward("bleu")
    with pytest.raises(ValueError, match="cannot import"):
        resolve_reward("nope.module:fn")
