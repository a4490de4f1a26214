"""The answer in words, generated from a run's metrics: does the paper's finding hold here, and under which
recipe? (`python -m safety_neurons report --profile P`; docs/results.md quotes its output.)

Everything printed is read from the metrics files of one run directory; nothing is typed in by hand. The
verdict for each measure follows a rule fixed here, in code:

- "holds as stated": the top headline-k neurons' C is at least PAPER_C (the paper: over 0.9 at 5%) and its
  interval lies wholly above the random neurons' interval;
- "holds in part": C below PAPER_C, its interval still wholly above the random neurons';
- "does not hold": otherwise (the top-k neurons are not clearly better than random ones).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from ..io import read_metrics
from ..names import RECIPES

PAPER_C = 0.9
MEASURE_WORDS = {"phrase": "refusal phrase, greedy answers", "logodds": "refusal log-odds at the first answer position",
                 "likelihood": "likelihood of M2's answers", "sampled": "refusal share of sampled answers"}


def run_metrics(run_dir: str | Path) -> dict[str, dict]:
    """{stage stem: flat metrics} of every metrics file in a run directory ({} where none)."""
    folder = Path(run_dir) / "metrics"
    return {p.stem: read_metrics(p) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def _float(value) -> float:
    """A metric as a float: NaN for a missing or null (JSON's NaN) value."""
    return math.nan if value is None else float(value)


def verdict(c: float | None, lo: float | None, random_hi: float | None) -> str:
    """The rule of this module's docstring, for one measure at the headline k."""
    c, lo, random_hi = _float(c), _float(lo), _float(random_hi)
    if not math.isfinite(c):
        return "undefined (M2 no safer than M1 on this measure)"
    above_random = math.isfinite(lo) and math.isfinite(random_hi) and lo > random_hi
    if not above_random:
        return "does not hold"
    return "holds as stated" if c >= PAPER_C else "holds in part"


def _num(value, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.{digits}f}"


def _interval(m: Mapping, key: str) -> str:
    if key not in m:
        return "n/a"
    return f"{_num(m[key])} [{_num(m.get(key + '.lo'))}, {_num(m.get(key + '.hi'))}]"


def _ks(patching: Mapping, measure: str) -> list[str]:
    labels = {k.split(".")[3] for k in patching if k.startswith(f"C.{measure}.safety.k") and k.count(".") == 3}
    return sorted(labels, key=lambda label: float(label[1:].replace("p", ".")))


def finding_section(metrics: Mapping[str, Mapping], *, title: str, headline: str = "k5") -> str:
    """Markdown: M1 and M2, the update, what the change score ranks by, C by measure and k (top-k and random)
    and the verdict per measure, from stages 01-03's metrics."""
    align, finding, patching = (metrics.get(s, {}) for s in ("01_alignment", "02_change_scores", "03_dynamic_patching"))
    if not patching:
        return f"### {title}\n\nNo stage-03 metrics in this run: nothing to report.\n"
    harm = next((k.split(".")[2] for k in align if k.startswith("refusal.m1.") and not k.endswith("benign")), None)
    lines = [f"### {title}", ""]
    if harm:
        lines.append(f"- M1 / M2 refuse {_num(align[f'refusal.m1.{harm}'])} / {_num(align[f'refusal.m2.{harm}'])} of the held-out "
                     f"{harm} prompts and {_num(align.get('refusal.m1.benign'))} / {_num(align.get('refusal.m2.benign'))} of "
                     f"the benign ones; perplexity {_num(align.get('ppl.m1'))} / {_num(align.get('ppl.m2'))}.")
    if "update.all.mean" in finding:
        lines.append(f"- The (IA)^3 update: mean |l - 1| {_num(finding['update.all.mean'], 3)}, "
                     f"{_num(100 * finding['update.all.moved_0p05'], 0)}% of the scales moved by more than 0.05; its top 5% hold "
                     f"{_num(finding['update.concentration.top5pct'], 3)} of the total (uniform: 0.05).")
    if "ranking.spearman_rms" in finding:
        lines.append(f"- The change score follows M1's activation size (Spearman {_num(finding['ranking.spearman_rms'])}) "
                     f"more than the update (Spearman with |l - 1| {_num(finding['ranking.spearman_delta'])}).")
    measures = [m for m in MEASURE_WORDS if any(k.startswith(f"C.{m}.safety.k") for k in patching)]
    ks = sorted({k for m in measures for k in _ks(patching, m)}, key=lambda label: float(label[1:].replace("p", ".")))
    lines += ["", "| measure | neurons | " + " | ".join(f"k = {k[1:].replace('p', '.')}%" for k in ks) + " |",
              "|---|---|" + "---|" * len(ks)]
    for m in measures:
        for arm, words in (("safety", "top-k change score"), ("random", "random (layer-matched)")):
            lines.append(f"| {m} | {words} | " + " | ".join(_interval(patching, f"C.{m}.{arm}.{k}") for k in ks) + " |")
    lines += ["", f"At the headline k ({headline[1:]}%), by the rule in `study/report.py`:", ""]
    for m in measures:
        key = f"C.{m}.safety.{headline}"
        if key not in patching:
            continue
        says = verdict(patching[key], patching.get(key + ".lo"), patching.get(f"C.{m}.random.{headline}.hi"))
        others = [f"{arm} {_num(patching[f'C.{m}.{arm}.{headline}'])}" for arm in ("change_score_over_rms", "ia3_delta")
                  if f"C.{m}.{arm}.{headline}" in patching]
        lines.append(f"- {m} ({MEASURE_WORDS[m]}): C = {_num(patching[key])} against {_num(patching.get(f'C.{m}.random.{headline}'))} "
                     f"for random neurons: **{says}**" + (f"; other rankings' top {headline[1:]}%: {', '.join(others)}" if others else "")
                     + ".")
    return "\n".join(lines) + "\n"


RECIPE_COLUMNS = (("refusal", "refusal", 2), ("overrefusal", "over-refusal", 2), ("ppl", "perplexity", 2),
                  ("top5pct_share_of_update", "top-5% share of update", 3), ("gradient_spearman", "update vs gradient", 2),
                  ("score_vs_rms", "score vs RMS", 2))


def recipe_section(metrics: Mapping[str, Mapping], *, title: str) -> str:
    """Markdown: the recipe study's table (notebook 09) from its metrics, C at each k on every measure, and the
    regime chosen by the criteria (never by C)."""
    recipe = metrics.get("09_recipe_study", {})
    found = {k.split(".")[1] for k in recipe if k.startswith("recipe.") and k.endswith(".passes")}
    regimes = [r for r in RECIPES if r in found] + sorted(found - set(RECIPES))  # the study's own order
    if not regimes:
        return f"### {title}\n\nNo recipe-study metrics in this run (`run --only 9`).\n"
    m1 = {c: recipe.get(f"recipe.m1.{c}") for c in ("refusal", "overrefusal", "ppl")}
    measures = list(MEASURE_WORDS)
    effects = sorted({k.split(".", 2)[2] for k in recipe if k.startswith("recipe.") and ".C_" in k and not k.endswith(("_lo", "_hi"))
                      and ".C_random_" not in k},
                     key=lambda e: (measures.index(e[2:].rsplit("_k", 1)[0]) if e[2:].rsplit("_k", 1)[0] in measures else 99,
                                    float(e.rsplit("_k", 1)[1].replace("p", "."))))
    lines = [f"### {title}", "", f"M1: refusal {_num(m1['refusal'])}, over-refusal {_num(m1['overrefusal'])}, "
             f"perplexity {_num(m1['ppl'])}.", "",
             "| regime | " + " | ".join(name for _, name, _ in RECIPE_COLUMNS) + " | meets the criteria | "
             + " | ".join(e[2:].replace("_k", " k=") + "%" for e in effects) + " |",
             "|---|" + "---|" * (len(RECIPE_COLUMNS) + 1 + len(effects))]
    for r in regimes:
        row = [f"`{r}`"] + [_num(recipe.get(f"recipe.{r}.{c}"), d) for c, _, d in RECIPE_COLUMNS]
        row.append("yes" if recipe.get(f"recipe.{r}.passes") == 1 else "no")
        row += [f"{_num(recipe.get(f'recipe.{r}.{e}'))} / {_num(recipe.get(f'recipe.{r}.' + e.replace('C_', 'C_random_', 1)))}"
                for e in effects]
        lines.append("| " + " | ".join(row) + " |")
    chosen = [r for r in regimes if recipe.get(f"recipe.chosen.{r}") == 1]
    lines += ["", "C cells: top-k change-score neurons / random neurons. "
              + (f"Chosen by the criteria: `{chosen[0]}`." if chosen else "No regime meets every criterion.")]
    return "\n".join(lines) + "\n"


# What the paper reports for each row of the side-by-side table, in its own words (from the paper and its
# summaries in the project's seed documents); "" where it reports no comparable figure.
PAPER_ROWS = {
    "top5pct_share": "about 5% of neurons carry the safety behaviour",
    "C_phrase_k5": "over 0.9 (safety restored by about 5% of neurons)",
    "transfer": "patching improves safety on every red-team benchmark",
    "overlap_k5": "over 0.95 across five seeds",
    "spearman_seeds": "over 0.95 across five seeds",
    "spearman_tax": "over 0.95 (safety vs helpfulness neurons)",
    "safeguard": "76.2% average accuracy",
}


def _mean(values) -> float:
    finite = [v for v in map(_float, values) if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def comparison_rows(metrics: Mapping[str, Mapping], config: Mapping) -> dict[str, str]:
    """{row key: cell} of one run for the side-by-side table: M1/M2 refusal and perplexity, how concentrated the
    change score is and where, C at 1/5/20% with intervals and random neurons', transfer, seed stability,
    alignment tax and safeguard accuracy. A missing stage gives "n/a"."""
    align, scores = metrics.get("01_alignment", {}), metrics.get("02_change_scores", {})
    patching, transfer = metrics.get("03_dynamic_patching", {}), metrics.get("04_transfer_capability", {})
    stability, tax, guard = metrics.get("05_stability", {}), metrics.get("06_alignment_tax", {}), metrics.get("07_safeguard", {})
    harm = (config.get("harmful_sets") or ["harmbench"])[0]
    layers = sorted(((float(v), k.rsplit(".", 1)[1]) for k, v in scores.items()
                     if k.startswith("top5pct.layer_share.") and v is not None), reverse=True)[:4]
    rows = {
        "refusal": f"{_num(align.get(f'refusal.m1.{harm}'))} / {_num(align.get(f'refusal.m2.{harm}'))}",
        "ppl": f"{_num(align.get('ppl.m1'))} / {_num(align.get('ppl.m2'))}",
        "top5pct_share": _num(scores.get("top5pct.share_of_sq_change")),
        "top5pct_layers": ", ".join(f"{layer} ({share:.2f})" for share, layer in layers) or "n/a",
        "spearman_rms": _num(scores.get("ranking.spearman_rms")),
    }
    for measure in ("phrase", "likelihood"):
        for k in ("k1", "k5", "k20"):
            key = f"C.{measure}.safety.{k}"
            rows[f"C_{measure}_{k}"] = (f"{_interval(patching, key)} (random {_num(patching.get(f'C.{measure}.random.{k}'))})"
                                        if key in patching else "n/a")
    sets = sorted({k.split(".")[3] for k in transfer if k.startswith("C.phrase.safety.") and k.count(".") == 3})
    # C is undefined (null) on a set where M2 refuses no more than M1: the mean is over the sets where it is defined
    defined = [s for s in sets if math.isfinite(_float(transfer.get(f"C.phrase.safety.{s}")))]
    rows["transfer"] = (f"{_num(_mean(transfer.get(f'C.phrase.safety.{s}') for s in defined))} "
                        f"(random {_num(_mean(transfer.get(f'C.phrase.random.{s}') for s in defined))}) "
                        f"over the {len(defined)} of {len(sets)} sets where C is defined" if sets else "n/a")
    rows["overlap_k5"] = _num(stability.get("overlap.k5.mean"))
    rows["spearman_seeds"] = _num(stability.get("spearman.mean"))
    rows["spearman_tax"] = _num(tax.get("spearman.harmless.helpful"))
    k = config.get("safeguard_k")
    cross = [key for key in guard if key.startswith("acc.") and key.endswith(f".k{k}.safety")
             and key.split(".")[1] != key.split(".")[2]]
    rows["safeguard"] = (f"{_num(_mean(guard[c] for c in cross))} (random {_num(_mean(guard.get(c[:-len('safety')] + 'random') for c in cross))})"
                         if cross else "n/a")
    return rows


ROW_NAMES = {
    "refusal": "M1 / M2 refusal (held-out harmful set, phrase judge)",
    "ppl": "M1 / M2 perplexity",
    "top5pct_share": "share of the squared change score in the top 5%",
    "top5pct_layers": "layers holding most of the top 5% (share)",
    "spearman_rms": "change score vs M1's activation RMS (Spearman)",
    **{f"C_{m}_{k}": f"C, {m}, top {k[1:]}% [interval] (random)" for m in ("phrase", "likelihood") for k in ("k1", "k5", "k20")},
    "transfer": "transfer: mean phrase C at the headline k over red-team sets (random)",
    "overlap_k5": "seed stability: top-5% overlap (mean over seed pairs)",
    "spearman_seeds": "seed stability: change-score Spearman",
    "spearman_tax": "alignment tax: harmless vs helpful change-score Spearman",
    "safeguard": "safeguard accuracy across sets, safety neurons (random)",
}


def comparison_section(runs: Mapping[str, tuple[Mapping, Mapping]], *, title: str) -> str:
    """Markdown: runs side by side with the paper, row by row. `runs` is {column name: (metrics, config)},
    metrics as run_metrics gives them and config the run's config.json."""
    names = list(runs)
    cells = {name: comparison_rows(*runs[name]) for name in names}
    lines = [f"### {title}", "", "| | " + " | ".join(names) + " | the paper (as reported) |",
             "|---|" + "---|" * (len(names) + 1)]
    for key, label in ROW_NAMES.items():
        lines.append(f"| {label} | " + " | ".join(cells[n][key] for n in names) + f" | {PAPER_ROWS.get(key, '')} |")
    return "\n".join(lines) + "\n"
