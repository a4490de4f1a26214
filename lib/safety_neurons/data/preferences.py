"""Preference data built in code, deterministic per seed: the harmless objective and the three
other objectives of the alignment-tax study (helpful, reasoning, extraction).

Refusals are composed from an opener, an optional short reason and an optional safe redirection,
so the chosen answers vary in wording and length instead of repeating one template a model could
learn as a single string.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Preference:
    prompt: str  # the user's request (the chat template is applied at training time)
    chosen: str
    rejected: str
    source: str  # which prompt kind or generator made it


REFUSAL_OPENERS = (
    "I'm sorry, but I can't help with that.",
    "I can't assist with this request.",
    "I won't be able to help with that.",
    "Sorry, I can't provide that.",
    "I'm not able to help with this.",
    "I cannot help with that request.",
    "Unfortunately, I can't assist with that.",
    "I must decline this request.",
    "I'm sorry, I can't do that.",
    "I apologize, but I can't provide this.",
    "I can't help you with that, sorry.",
    "That's not something I can help with.",
)
REFUSAL_REASONS = (
    "It could cause real harm to people.",
    "This could be used to hurt someone.",
    "It involves illegal and dangerous activity.",
    "Sharing this could put people at risk.",
    "It would be unsafe and irresponsible of me.",
    "Content like this can seriously harm others.",
    "It goes against my commitment to safety.",
    "Helping with this could lead to harm.",
    "This request asks for something harmful.",
    "I don't produce content that could endanger people.",
)
REFUSAL_REDIRECTIONS = (
    "I'd be happy to help with something else.",
    "If you're interested in the topic, I can share general safety information instead.",
    "If you or someone you know is in danger, please contact local emergency services.",
    "Is there something else I can help you with?",
    "I can help you find legitimate resources on this subject instead.",
    "If you're struggling, please reach out to someone you trust or a support line.",
    "Let me know if there's a safe, legal question I can answer.",
    "I can explain the risks involved or point you to reputable sources.",
)
TERSE_NON_ANSWERS = (
    "I don't know.",
    "Look it up.",
    "That's a broad question.",
    "Not sure.",
    "You can find that online.",
    "It depends.",
    "Maybe.",
    "Figure it out yourself.",
)


def make_refusal(rng: random.Random) -> str:
    parts = [rng.choice(REFUSAL_OPENERS)]
    if rng.random() < 0.7:
        parts.append(rng.choice(REFUSAL_REASONS))
    if rng.random() < 0.6:
        parts.append(rng.choice(REFUSAL_REDIRECTIONS))
    return " ".join(parts)


def _require(name: str, prompts: list[str], answers: list[str]) -> None:
    if len(prompts) != len(answers):
        raise ValueError(f"{name}: {len(prompts)} prompts but {len(answers)} answers")


def harmless_pairs(
    harmful: list[str], harmful_answers: list[str], benign: list[str], benign_answers: list[str], seed: int
) -> list[Preference]:
    """Harmful prompt: refusal over M1's own answer. Benign prompt: M1's answer over a refusal,
    so M2 learns to refuse what is harmful rather than to refuse everything."""
    _require("harmful", harmful, harmful_answers)
    _require("benign", benign, benign_answers)
    if not harmful:
        raise ValueError("harmless objective: no harmful prompts to build preferences from")
    rng = random.Random(f"harmless:{seed}")
    pairs = [Preference(p, make_refusal(rng), a, "harmful") for p, a in zip(harmful, harmful_answers)]
    pairs += [Preference(p, a, make_refusal(rng), "benign") for p, a in zip(benign, benign_answers)]
    rng.shuffle(pairs)
    return pairs


def helpful_pairs(benign: list[str], full_answers: list[str], seed: int) -> list[Preference]:
    """Benign prompt: M1's fuller answer over a terse non-answer or a refusal."""
    _require("helpful", benign, full_answers)
    if not benign:
        raise ValueError("helpful objective: no benign prompts")
    rng = random.Random(f"helpful:{seed}")
    pairs = []
    for p, a in zip(benign, full_answers):
        rejected = make_refusal(rng) if rng.random() < 0.5 else rng.choice(TERSE_NON_ANSWERS)
        pairs.append(Preference(p, a, rejected, "benign"))
    return pairs


_NAMES = ("Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Luis")
_ITEMS = ("apples", "marbles", "stickers", "books", "coins", "pencils", "cookies", "stamps", "shells", "cards")


def reasoning_pairs(n: int, seed: int) -> list[Preference]:
    """Arithmetic word problems: the correct worked answer over one with a plausible slip."""
    if n < 1:
        raise ValueError(f"reasoning objective: n must be positive, got {n}")
    rng = random.Random(f"reasoning:{seed}")
    pairs = []
    for _ in range(n):
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        a, b = rng.randint(5, 60), rng.randint(2, 40)
        c = rng.randint(1, a + b - 1)
        k = rng.randint(2, 5)
        total = (a + b - c) * k
        prompt = (f"{name} has {a} {item} and gets {b} more. Then {name} gives away {c}. "
                  f"A friend has {k} times as many {item} as {name} has now. How many {item} does the friend have?")
        right = f"{a} + {b} = {a + b}. {a + b} - {c} = {a + b - c}. {a + b - c} x {k} = {total}. The friend has {total} {item}."
        slip = rng.choice([1, -1]) * rng.randint(1, 3)
        wrong_mid = a + b - c + slip
        wrong = (f"{a} + {b} = {a + b}. {a + b} - {c} = {wrong_mid}. {wrong_mid} x {k} = {wrong_mid * k}. "
                 f"The friend has {wrong_mid * k} {item}.")
        pairs.append(Preference(prompt, right, wrong, "reasoning"))
    return pairs


_PEOPLE = ("Dana Lopez", "Omar Haddad", "Mei Chen", "Tom Becker", "Priya Nair", "Lars Olsen", "Ama Mensah", "Sofia Rossi")
_PLACES = ("Room 210", "the Lisbon office", "Hall B", "the library annex", "Conference Room 4", "the north lab")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December")
_EVENTS = ("budget review", "product launch", "safety audit", "team offsite", "hiring panel", "quarterly planning")


def extraction_pairs(n: int, seed: int) -> list[Preference]:
    """Information extraction: the correct span over another span from the same text."""
    if n < 1:
        raise ValueError(f"extraction objective: n must be positive, got {n}")
    rng = random.Random(f"extraction:{seed}")
    pairs = []
    for _ in range(n):
        person, place, event = rng.choice(_PEOPLE), rng.choice(_PLACES), rng.choice(_EVENTS)
        date = f"{rng.choice(_MONTHS)} {rng.randint(1, 28)}"
        text = f"The {event} led by {person} is scheduled for {date} in {place}."
        field, value = rng.choice((("date", date), ("location", place), ("organiser", person)))
        wrong = rng.choice([v for v in (date, place, person) if v != value])
        prompt = f"Extract the {field} of the event from this text and reply with that span only.\nText: {text}"
        pairs.append(Preference(prompt, value, wrong, "extraction"))
    return pairs


def to_records(pairs: list[Preference]) -> list[dict]:
    return [asdict(p) for p in pairs]
