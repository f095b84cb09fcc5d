"""Templated multi-step arithmetic word problems with known answers: a story of 2-4 operations (+, -, x, exact
division) on one running quantity, so a held-out set can be checked exactly and kept apart from training."""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = [("Maya", "she", "her", "her"), ("Tom", "he", "him", "his"), ("Aisha", "she", "her", "her"),
         ("Luis", "he", "him", "his"), ("Priya", "she", "her", "her"), ("Kenji", "he", "him", "his"),
         ("Sofia", "she", "her", "her"), ("Omar", "he", "him", "his"), ("Elena", "she", "her", "her"),
         ("Ben", "he", "him", "his"), ("Zara", "she", "her", "her"), ("Noah", "he", "him", "his")]
MAX_VALUE = 2000  # answers and intermediate values stay of a size a small model can be asked to compute

GENERIC_MUL = ("Later, {name} ends up with {n} times as many {unit} as before.",
               "Then the number of {unit} {pron} has becomes {n} times larger.")
GENERIC_DIV = ("{Pron} splits the {unit} into {n} equal groups and keeps just one group.",
               "{Pron} shares the {unit} equally with {friends} friends, everyone including {obj} getting the same "
               "number, and keeps {poss} share.")


@dataclass(frozen=True)
class Scenario:
    """One setting of a story: what is counted and how it is said to grow, shrink, multiply or be shared."""

    key: str
    unit: str
    start: tuple[str, ...]
    add: tuple[str, ...]
    sub: tuple[str, ...]
    question: tuple[str, ...]
    mul: tuple[str, ...] = GENERIC_MUL
    div: tuple[str, ...] = GENERIC_DIV
    start_range: tuple[int, int] = (6, 60)


SCENARIOS = (
    Scenario("apples", "apples", ("{name} has {n} apples.", "{name} picks {n} apples in the orchard."),
             ("{Pron} then picks {n} more apples.", "A neighbour gives {obj} {n} apples."),
             ("{Pron} eats {n} of them.", "{Pron} gives {n} apples to a friend."),
             ("How many apples does {name} have now?", "How many apples does {name} end up with?")),
    Scenario("money", "dollars", ("{name} has ${n} in {poss} wallet.", "{name} starts the month with ${n}."),
             ("{Pron} earns ${n} more by walking dogs.", "{Poss} grandmother gives {obj} ${n}."),
             ("{Pron} spends ${n} on a book.", "{Pron} pays ${n} for lunch."),
             ("How many dollars does {name} have now?", "How much money, in dollars, does {name} have now?"),
             start_range=(10, 200)),
    Scenario("pages", "pages", ("{name} prints {n} pages for a class project.", "{name} has a stack of {n} pages."),
             ("{Pron} prints {n} more pages.", "A classmate hands {obj} {n} extra pages."),
             ("{n} pages are misprinted and {pron} throws them away.", "{Pron} recycles {n} of the pages."),
             ("How many pages does {name} have now?", "How many pages are in {poss} stack now?"),
             mul=("{Pron} photocopies the stack so that {pron} has {n} times as many pages.",) + GENERIC_MUL),
    Scenario("km", "kilometres", ("{name} has {n} km left on a cycling trip.", "A hiking route has {n} km for "
                                  "{name} still to walk."),
             ("A detour adds {n} km to the distance left.", "{Pron} takes a wrong turn, which adds {n} km."),
             ("{Pron} covers {n} km before lunch.", "{Pron} travels {n} km on the next day."),
             ("How many kilometres are left now?", "How many km does {name} still have to go?"),
             mul=("The organisers make the remaining distance {n} times as long.",),
             div=("The rest of the route is split into {n} equal stages and the trip is cut short to just one "
                  "stage.",)),
    Scenario("students", "students", ("A school club has {n} students.", "{name}'s chess club has {n} members."),
             ("{n} new students join.", "{n} more students sign up after a fair."),
             ("{n} students leave the club.", "{n} members move to another school."),
             ("How many students are in the club now?", "How many members does the club have now?"),
             mul=("Next year the club has {n} times as many students.",),
             div=("The students are split into {n} equal teams, and only one team stays in the club.",
                  "The club is divided into {n} equal groups and all but one group leave.")),
    Scenario("stickers", "stickers", ("{name} collects {n} stickers.", "{name} owns {n} stickers."),
             ("{Pron} buys a pack of {n} stickers.", "{Pron} wins {n} stickers in a game."),
             ("{Pron} trades away {n} stickers.", "{Pron} sticks {n} of them in a notebook and they no longer "
              "count."),
             ("How many stickers does {name} have now?", "How many stickers are in {poss} collection now?")),
    Scenario("cookies", "cookies", ("{name} bakes {n} cookies.", "A jar holds {n} cookies that {name} made."),
             ("{Pron} bakes {n} more cookies.", "{Poss} friend brings {n} cookies."),
             ("{Pron} eats {n} cookies.", "{n} cookies are sold at a bake sale."),
             ("How many cookies are there now?", "How many cookies does {name} have now?")),
)
OPS = {"+": "add", "-": "sub", "*": "mul", "/": "div"}
INVERSE = {"+": "-", "-": "+", "*": "/", "/": "*"}


@dataclass(frozen=True)
class Problem:
    """A generated problem; `template` and `numbers` together identify it whatever name it happens to use."""

    question: str
    answer: str
    value: int
    steps: int
    template: tuple
    numbers: tuple[int, ...]

    def to_record(self) -> dict[str, str]:
        """GSM8K form, read by the question/answer reader, the numeric reward and the math evaluator."""
        return {"question": self.question, "answer": self.answer}


def _pick_op(rng: random.Random, value: int, undo: tuple[str, int] | None) -> tuple[str, int]:
    """A random operation and operand that keep the running value a positive integer of reasonable size and do
    not just undo the step before (`undo`)."""
    choices = [("+", rng.randint(2, 40))]
    if value >= 2:
        choices.append(("-", rng.randint(1, min(value - 1, 40))))
    if value * 2 <= MAX_VALUE:
        choices.append(("*", rng.randint(2, min(5, MAX_VALUE // value))))
    divisors = [d for d in range(2, 10) if value % d == 0]
    if divisors:
        choices.append(("/", rng.choice(divisors)))
    return rng.choice([c for c in choices if c != undo] or choices)


def _apply(op: str, value: int, n: int) -> int:
    return {"+": value + n, "-": value - n, "*": value * n, "/": value // n}[op]


def make_problem(rng: random.Random, steps: int) -> Problem:
    """One problem of `steps` operations: scenario, phrasings and numbers all drawn from `rng`."""
    sc = rng.choice(SCENARIOS)
    name, pron, obj, poss = rng.choice(NAMES)
    words = {"name": name, "pron": pron, "Pron": pron.capitalize(), "obj": obj, "poss": poss,
             "Poss": poss.capitalize(), "unit": sc.unit}
    value = rng.randint(*sc.start_range)
    start_i = rng.randrange(len(sc.start))
    sentences, lines, shape, numbers = [sc.start[start_i].format(n=value, **words)], [], [], [value]
    undo = None
    for _ in range(steps):
        op, n = _pick_op(rng, value, undo)
        undo = (INVERSE[op], n)
        phrasings = getattr(sc, OPS[op])
        i = rng.randrange(len(phrasings))
        sentences.append(phrasings[i].format(n=n, friends=n - 1, **words))
        new = _apply(op, value, n)
        lines.append(f"{value} {op} {n} = {new}")
        shape.append((op, i))
        numbers.append(n)
        value = new
    q_i = rng.randrange(len(sc.question))
    sentences.append(sc.question[q_i].format(**words))
    answer = "\n".join([f"{sc.unit.capitalize()} at the start: {numbers[0]}.", *lines, f"#### {value}"])
    return Problem(" ".join(s[0].upper() + s[1:] for s in sentences), answer, value, steps,
                   (sc.key, start_i, tuple(shape), q_i), tuple(numbers))
