"""Load the paper's datasets from the Hugging Face hub, or the same files saved locally.

Chen et al. ("Finding Safety Neurons in Large Language Models") align a base model with
SFT on ShareGPT and DPO on HH-RLHF, then probe it with harmful prompts (BeaverTails,
Anthropic red-team attempts, HarmBench, JailbreakLLMs) and check general text (wikitext-2).
Each dataset is published in its own schema; this module maps each one to the few plain
shapes the rest of the project needs: prompts (``list[str]``), preference pairs
(:class:`PreferencePair`), chat conversations (``list[list[dict]]``) and text
(``list[str]``).

Every loader takes ``path=None`` to call :func:`datasets.load_dataset` with the hub id in
:data:`HUB_DATASETS`, or ``path=`` a local file or folder holding the same schema (what a
user gets by downloading the hub files). Both routes run the same record-mapping code,
which is why the offline tests on small local fixtures also check the hub route.

Records that cannot be mapped (a transcript that does not parse, a blank prompt, ...)
are skipped and their number is logged as a warning, so one bad record in 160k does not
stop a run but never goes unnoticed either.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import datasets

__all__ = [
    "HUB_DATASETS",
    "HubDatasetSpec",
    "MalformedRecord",
    "PreferencePair",
    "conversation_from_sharegpt",
    "load_hub_conversations",
    "load_hub_preferences",
    "load_hub_prompts",
    "load_hub_text",
    "parse_hh_transcript",
    "preference_pair_from_hh",
    "wikitext_paragraphs",
]

logger = logging.getLogger(__name__)

Kind = Literal["prompts", "preferences", "conversations", "text"]
Turn = tuple[str, str]
T = TypeVar("T")


@dataclass(frozen=True)
class HubDatasetSpec:
    """Where a dataset lives on the hub and what this module assumes about its records.

    ``hub_id`` is the first argument of :func:`datasets.load_dataset`: a hub repository,
    or a packaged builder such as ``"csv"`` when the data is a file outside the hub (then
    ``data_files`` is its URL). ``description`` states the record schema the mapping
    code relies on, so a schema change on the hub can be checked against it.
    """

    hub_id: str
    kind: Kind
    split: str
    licence: str
    description: str
    paper_use: str
    config: str | None = None
    data_dir: str | None = None
    data_files: str | None = None


@dataclass(frozen=True)
class PreferencePair:
    """One preference comparison: two final assistant answers to the same conversation.

    ``prompt`` is the last user turn, ``history`` the (role, content) turns before it,
    roles ``"user"``/``"assistant"``; keeping them apart lets single-turn code use
    ``prompt`` alone while chat templates get the whole context from
    :meth:`prompt_messages`.
    """

    prompt: str
    chosen: str
    rejected: str
    history: tuple[Turn, ...] = ()

    def prompt_messages(self) -> list[dict[str, str]]:
        """The conversation up to the answer as chat messages, for ``apply_chat_template``."""
        turns = (*self.history, ("user", self.prompt))
        return [{"role": role, "content": content} for role, content in turns]


class MalformedRecord(ValueError):
    """A record that does not fit its dataset's assumed schema; loaders skip and count it."""


_HH_SCHEMA = (
    'records {"chosen": str, "rejected": str}, each a whole transcript '
    '"\\n\\nHuman: ...\\n\\nAssistant: ...[\\n\\nHuman: ...\\n\\nAssistant: <final>]"; '
    "both share every turn but the final assistant answer."
)

HUB_DATASETS: dict[str, HubDatasetSpec] = {
    "sharegpt": HubDatasetSpec(
        hub_id="anon8231489123/ShareGPT_Vicuna_unfiltered",
        data_files="ShareGPT_V3_unfiltered_cleaned_split.json",
        split="train",
        kind="conversations",
        licence="Apache-2.0 (hub card); conversations scraped from ShareGPT",
        description=(
            "One JSON array of records "
            '{"id": str, "conversations": [{"from": "human"|"gpt"|"system"|..., '
            '"value": str}]}; "human"/"user" map to user, "gpt"/"chatgpt"/"bing"/"bard"/'
            '"assistant" to assistant, "system" turns are dropped.'
        ),
        paper_use="Supervised fine-tuning (SFT) data for the aligned chat model.",
    ),
    "hh_rlhf_harmless": HubDatasetSpec(
        hub_id="Anthropic/hh-rlhf",
        data_dir="harmless-base",
        split="train",
        kind="preferences",
        licence="MIT",
        description="harmless-base/{train,test}.jsonl.gz; " + _HH_SCHEMA,
        paper_use="Preference data for DPO safety alignment.",
    ),
    "hh_rlhf_helpful": HubDatasetSpec(
        hub_id="Anthropic/hh-rlhf",
        data_dir="helpful-base",
        split="train",
        kind="preferences",
        licence="MIT",
        description="helpful-base/{train,test}.jsonl.gz; " + _HH_SCHEMA,
        paper_use="Preference data for helpfulness alignment, compared with safety.",
    ),
    "beavertails": HubDatasetSpec(
        hub_id="PKU-Alignment/BeaverTails",
        split="30k_test",
        kind="prompts",
        licence="CC-BY-NC-4.0",
        description=(
            'JSON lines {"prompt": str, "response": str, "category": {<14 harm '
            'categories>: bool}, "is_safe": bool}; one prompt appears with several '
            "responses, so prompts are deduplicated."
        ),
        paper_use="Harmful prompts for evaluating safety and locating safety neurons.",
    ),
    "redteam": HubDatasetSpec(
        hub_id="Anthropic/hh-rlhf",
        data_dir="red-team-attempts",
        split="train",
        kind="prompts",
        licence="MIT",
        description=(
            'red_team_attempts.jsonl.gz, records {"transcript": str in the HH '
            '"\\n\\nHuman: ...\\n\\nAssistant: ..." format, "rating": float, '
            '"task_description": str, "min_harmlessness_score_transcript": float, ...}; '
            "the prompt is the first human turn."
        ),
        paper_use="Red-team prompts for evaluating harmfulness.",
    ),
    "harmbench_csv": HubDatasetSpec(
        hub_id="csv",
        data_files=(
            "https://raw.githubusercontent.com/centerforaisafety/HarmBench/main/"
            "data/behavior_datasets/harmbench_behaviors_text_all.csv"
        ),
        split="train",
        kind="prompts",
        licence="MIT",
        description=(
            "HarmBench behaviours CSV with columns Behavior, FunctionalCategory "
            "(standard|contextual|copyright), SemanticCategory, Tags, ContextString, "
            "BehaviorID; only 'standard' rows are kept (the others need a context or "
            "test copyright), prompt = Behavior."
        ),
        paper_use="Harmful behaviours for evaluating harmfulness.",
    ),
    "jailbreakllms": HubDatasetSpec(
        hub_id="TrustAIRLab/forbidden_question_set",
        split="train",
        kind="prompts",
        licence="MIT",
        description=(
            'Records {"content_policy_id": int, "content_policy_name": str, "q_id": int, '
            '"question": str} (forbidden_question_set.csv of verazuo/jailbreak_llms); '
            "prompt = question, deduplicated."
        ),
        paper_use="Forbidden questions (JailbreakLLMs) for evaluating harmfulness.",
    ),
    "wikitext2": HubDatasetSpec(
        hub_id="Salesforce/wikitext",
        config="wikitext-2-raw-v1",
        split="test",
        kind="text",
        licence="CC-BY-SA-3.0 / GFDL",
        description=(
            'One record {"text": str} per raw line: blank lines, " = Heading = " lines '
            "and one line per paragraph; paragraphs are returned stripped."
        ),
        paper_use="General text, to check that language modelling is left intact.",
    ),
}

_LOADER_FOR_KIND: dict[Kind, str] = {
    "prompts": "load_hub_prompts",
    "preferences": "load_hub_preferences",
    "conversations": "load_hub_conversations",
    "text": "load_hub_text",
}

_BUILDER_FOR_SUFFIX = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_COMPRESSION_SUFFIXES = {".gz", ".bz2", ".xz", ".zst"}


# --- record mapping -------------------------------------------------------------------


def _text_field(record: Mapping[str, Any], key: str) -> str:
    """The stripped, non-blank string in ``record[key]``; anything else is malformed."""
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise MalformedRecord(f"field {key!r} is not a non-blank string: {value!r}")
    return value.strip()


def _require_alternating(turns: tuple[Turn, ...]) -> None:
    """Reject conversations that do not go user, assistant, user, ...

    Chat templates (Llama-2 among them) refuse anything else, and a pair of HH
    transcripts can only be aligned turn by turn when both alternate.
    """
    if not turns:
        raise MalformedRecord("empty conversation")
    for index, (role, _) in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            raise MalformedRecord(f"turn {index} is {role!r}, expected {expected!r}")


_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_hh_transcript(transcript: str) -> tuple[Turn, ...]:
    """Split an Anthropic HH transcript into alternating (role, content) turns.

    Turns are delimited by ``"\\n\\nHuman:"`` / ``"\\n\\nAssistant:"`` (the leading blank
    line is optional for the very first turn); ``Human:`` inside a turn's text without
    the blank line is content, not a delimiter. Contents are stripped and may be empty,
    as some HH answers are.
    """
    if not isinstance(transcript, str):
        raise MalformedRecord(f"transcript is not a string: {transcript!r}")
    head, *parts = _HH_TURN.split(transcript)
    if head.strip():
        raise MalformedRecord(f"text before the first turn: {head[:60]!r}")
    turns = tuple(
        (_HH_ROLES[speaker], content.strip())
        for speaker, content in zip(parts[::2], parts[1::2], strict=True)
    )
    _require_alternating(turns)
    return turns


def preference_pair_from_hh(record: Mapping[str, Any]) -> PreferencePair:
    """Turn an HH-RLHF ``{"chosen", "rejected"}`` record into a :class:`PreferencePair`.

    The two transcripts must end in an assistant answer and agree on every earlier
    turn; otherwise the pair does not compare two answers to one context.
    """
    chosen = parse_hh_transcript(record.get("chosen"))
    rejected = parse_hh_transcript(record.get("rejected"))
    if chosen[-1][0] != "assistant" or rejected[-1][0] != "assistant":
        raise MalformedRecord("transcript does not end with an assistant answer")
    if chosen[:-1] != rejected[:-1]:
        raise MalformedRecord("chosen and rejected differ before the final answer")
    *history, (_, prompt) = chosen[:-1]
    if not prompt:
        raise MalformedRecord("blank final human turn")
    return PreferencePair(
        prompt=prompt, chosen=chosen[-1][1], rejected=rejected[-1][1], history=tuple(history)
    )


_SHAREGPT_ROLES: dict[str, str | None] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "assistant": "assistant",
    "system": None,
}


def conversation_from_sharegpt(record: Mapping[str, Any]) -> list[dict[str, str]]:
    """Map a ShareGPT record to ``[{"role", "content"}, ...]`` for SFT.

    System turns and blank turns are dropped and contents stripped. A trailing user
    turn has no answer to learn from, so it is cut. What is left must start with the
    user and alternate (an answer dropped for being blank breaks that, and the whole
    conversation is skipped rather than glued into a different dialogue).
    """
    raw_turns = record.get("conversations")
    if not isinstance(raw_turns, list):
        raise MalformedRecord(f"'conversations' is not a list: {raw_turns!r}")
    turns: list[Turn] = []
    for raw in raw_turns:
        speaker = raw.get("from") if isinstance(raw, Mapping) else None
        if speaker not in _SHAREGPT_ROLES:
            raise MalformedRecord(f"unknown speaker {speaker!r}")
        value = raw.get("value")
        if not isinstance(value, str):
            raise MalformedRecord(f"turn value is not a string: {value!r}")
        role = _SHAREGPT_ROLES[speaker]
        if role is not None and value.strip():
            turns.append((role, value.strip()))
    if turns and turns[-1][0] == "user":
        turns.pop()
    _require_alternating(tuple(turns))
    return [{"role": role, "content": content} for role, content in turns]


_WIKITEXT_HEADING = re.compile(r"(?:= )+.*?(?: =)+")


def wikitext_paragraphs(lines: Iterable[str]) -> Iterator[str]:
    """Paragraphs of raw wikitext: every non-blank line that is not a heading, stripped.

    In wikitext each raw line is one whole paragraph (paragraphs of a section follow
    each other without a blank line), so lines are not merged; headings such as
    ``" = = Career = = "`` are structure, not text.
    """
    for line in lines:
        stripped = line.strip()
        if stripped and not _WIKITEXT_HEADING.fullmatch(stripped):
            yield stripped


# --- per-dataset record streams: yield an item, or None for a skipped record -------------


def _each(
    records: Iterable[Mapping[str, Any]], mapper: Callable[[Mapping[str, Any]], T]
) -> Iterator[T | None]:
    """Apply ``mapper`` to every record, yielding None where the record is malformed."""
    for record in records:
        try:
            yield mapper(record)
        except MalformedRecord as error:
            logger.debug("skipping record: %s", error)
            yield None


def _redteam_prompt(record: Mapping[str, Any]) -> str:
    """The first human turn of a red-team transcript: the attacker's opening request."""
    content = parse_hh_transcript(record.get("transcript"))[0][1]
    if not content:
        raise MalformedRecord("blank first human turn")
    return content


def _harmbench_standard(records: Iterable[Mapping[str, Any]]) -> Iterator[str | None]:
    """Behaviours of 'standard' rows; contextual and copyright rows are left out on purpose.

    Contextual behaviours only make sense with their ContextString and copyright ones test
    reproduction, not harm. Files without a FunctionalCategory column keep every row.
    """
    standard = (r for r in records if r.get("FunctionalCategory", "standard") == "standard")
    return _each(standard, lambda r: _text_field(r, "Behavior"))


def _wikitext_stream(records: Iterable[Mapping[str, Any]]) -> Iterator[str | None]:
    """Wikitext paragraphs, with None for a record whose ``text`` is not a string."""
    for record in records:
        text = record.get("text")
        if isinstance(text, str):
            yield from wikitext_paragraphs([text])
        else:
            yield None


_STREAMS: dict[str, Callable[[Iterable[Mapping[str, Any]]], Iterator[Any]]] = {
    "sharegpt": lambda records: _each(records, conversation_from_sharegpt),
    "hh_rlhf_harmless": lambda records: _each(records, preference_pair_from_hh),
    "hh_rlhf_helpful": lambda records: _each(records, preference_pair_from_hh),
    "beavertails": lambda records: _each(records, lambda r: _text_field(r, "prompt")),
    "redteam": lambda records: _each(records, _redteam_prompt),
    "harmbench_csv": _harmbench_standard,
    "jailbreakllms": lambda records: _each(records, lambda r: _text_field(r, "question")),
    "wikitext2": _wikitext_stream,
}


def _unique(items: Iterable[str | None]) -> Iterator[str | None]:
    """Drop repeated strings, keeping first-seen order (skip markers pass through).

    Prompt sets repeat prompts (BeaverTails pairs one prompt with several responses);
    evaluating a prompt twice would only weight it twice.
    """
    seen: set[str] = set()
    for item in items:
        if item is None or item not in seen:
            if item is not None:
                seen.add(item)
            yield item


def _collect(name: str, items: Iterable[T | None], limit: int | None) -> list[T]:
    """The first ``limit`` mapped items; warn how many records were skipped on the way."""
    kept: list[T] = []
    skipped = 0
    for item in items:
        if item is None:
            skipped += 1
            continue
        kept.append(item)
        if len(kept) == limit:
            break
    if skipped:
        logger.warning("%s: skipped %d malformed record(s)", name, skipped)
    if not kept:
        kind = HUB_DATASETS[name].kind
        raise ValueError(f"{name}: no records left after mapping (empty {kind} set)")
    return kept


# --- reading records --------------------------------------------------------------------


def _builder_for(file: Path) -> str | None:
    """The ``datasets`` builder for a data file, looking through a compression suffix."""
    suffixes = [s.lower() for s in file.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes.pop()
    return _BUILDER_FOR_SUFFIX.get(suffixes[-1]) if suffixes else None


def _local_data_files(path: Path) -> tuple[str, list[str]]:
    """The builder and files for a local file, or for every data file directly in a folder.

    A folder must hold one split in one format; mixing would silently merge splits.
    """
    if not path.exists():
        raise FileNotFoundError(f"local dataset path does not exist: {path}")
    if path.is_file():
        files = [path]
    else:
        files = sorted(
            f
            for f in path.iterdir()
            if f.is_file() and not f.name.startswith(".") and _builder_for(f)
        )
    if not files:
        raise FileNotFoundError(f"no json/jsonl/csv/parquet files in {path}")
    builders = {_builder_for(f) for f in files}
    if None in builders:
        raise ValueError(f"unsupported file type {path.name!r}; use json, jsonl, csv or parquet")
    if len(builders) > 1:
        raise ValueError(f"{path} mixes file types {sorted(builders)}; keep one format per folder")
    return builders.pop(), [str(f) for f in files]


def _load_records(
    spec: HubDatasetSpec, path: str | Path | None, split: str | None
) -> datasets.Dataset:
    """Rows of the dataset, from the hub (``path=None``) or from local files of the same schema.

    A local file already is one split, so ``split`` only applies to the hub.
    """
    if path is None:
        options = {"data_dir": spec.data_dir, "data_files": spec.data_files}
        return datasets.load_dataset(
            spec.hub_id,
            spec.config,
            split=split or spec.split,
            **{key: value for key, value in options.items() if value is not None},
        )
    if split is not None:
        raise ValueError("split selects a hub split; with path=, point at that split's file(s)")
    builder, files = _local_data_files(Path(path))
    return datasets.load_dataset(builder, data_files=files, split="train")


def _spec_for(name: str, kind: Kind) -> HubDatasetSpec:
    """The spec of ``name``, checking that the caller's loader matches its kind."""
    loader = _LOADER_FOR_KIND[kind]
    valid = sorted(n for n, s in HUB_DATASETS.items() if s.kind == kind)
    if name not in HUB_DATASETS:
        raise ValueError(
            f"unknown hub dataset {name!r}; valid names: {', '.join(sorted(HUB_DATASETS))} "
            f"({loader}() takes {', '.join(valid)})"
        )
    spec = HUB_DATASETS[name]
    if spec.kind != kind:
        raise ValueError(
            f"{name!r} holds {spec.kind}; use {_LOADER_FOR_KIND[spec.kind]}(). "
            f"{loader}() takes {', '.join(valid)}"
        )
    return spec


def _load(
    name: str, kind: Kind, path: str | Path | None, split: str | None, limit: int | None
) -> list[Any]:
    """Shared body of the public loaders: validate, read, map, deduplicate prompts, cut."""
    spec = _spec_for(name, kind)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    items = _STREAMS[name](_load_records(spec, path, split))
    if kind == "prompts":
        items = _unique(items)
    return _collect(name, items, limit)


def load_hub_prompts(
    name: str, *, path: str | Path | None = None, split: str | None = None, limit: int | None = None
) -> list[str]:
    """Unique prompts, first-seen order, of a ``"prompts"`` dataset (e.g. ``"beavertails"``)."""
    return _load(name, "prompts", path, split, limit)


def load_hub_preferences(
    name: str, *, path: str | Path | None = None, split: str | None = None, limit: int | None = None
) -> list[PreferencePair]:
    """Preference pairs of a ``"preferences"`` dataset, e.g. ``"hh_rlhf_harmless"``."""
    return _load(name, "preferences", path, split, limit)


def load_hub_conversations(
    name: str, *, path: str | Path | None = None, split: str | None = None, limit: int | None = None
) -> list[list[dict[str, str]]]:
    """Chat conversations ``[{"role": "user"|"assistant", "content"}, ...]`` (``"sharegpt"``)."""
    return _load(name, "conversations", path, split, limit)


def load_hub_text(
    name: str, *, path: str | Path | None = None, split: str | None = None, limit: int | None = None
) -> list[str]:
    """Text paragraphs of a ``"text"`` dataset (``"wikitext2"``)."""
    return _load(name, "text", path, split, limit)
