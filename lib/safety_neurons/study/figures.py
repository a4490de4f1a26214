"""Figures: interactive in JupyterLab, saved beside the metrics for write-ups, and re-renderable.

`save_figure` writes, under runs/<run>/figures/ and each atomically:

- `<name>.json`: the plotly figure (`fig.to_json()`), the source every other file is rendered from;
- `<name>.html`: interactive; it loads `plotly.min.js` from the same folder (written once per folder), so it
  renders offline;
- `<name>.png`, `.svg`, `.pdf`: static copies drawn by matplotlib on its Agg canvas: no browser, no kaleido.

`render_run` re-renders a finished run's figures from their JSON without re-running any stage.

Nothing is lost silently: a format that cannot be written, or a part of a figure the static converter
cannot draw (a trace type it does not know), is named in a `FigureWarning` (save_figure: the notebook's
stderr) or printed on stderr (render_run).
"""
from __future__ import annotations

import base64
import functools
import html
import math
import os
import re
import sys
import textwrap
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..config import RunConfig
from ..io import atomic_path

FORMATS = ("json", "html", "png", "svg", "pdf")
STATIC_FORMATS = ("png", "svg", "pdf")
RENDER_FORMATS = ("html", "png", "svg", "pdf")  # what render_run can rebuild from a figure's JSON
PLOTLY_JS = "plotly.min.js"
DPI = 200  # a 10 x 5.5 in figure -> 2000 x 1100 px, about the old 900 x 500 PNG at scale 2
_NAME = re.compile(r"^(\d\d)_")  # figure names start with their notebook's number


class FigureWarning(UserWarning):
    """A figure file that was not written, or a part of a figure missing from its static copy."""


# ----------------------------------------------------------------------------------------------
# writing and re-rendering
# ----------------------------------------------------------------------------------------------


def figures_dir(run_dir: str | os.PathLike) -> Path:
    """The folder of a run's figures."""
    return Path(run_dir) / "figures"


def save_figure(fig, cfg: RunConfig, name: str, *, png: bool = True) -> dict[str, str]:
    """Write runs/<run>/figures/<name>.json and .html and, unless png=False, the static .png, .svg and
    .pdf; return {format: path} of the files written. A file that could not be written is left out of
    the result and named in a FigureWarning, as is anything the static copies could not draw."""
    formats = ("json", "html") + (STATIC_FORMATS if png else ())
    written, problems = write_figure(fig, figures_dir(cfg.run_dir), name, formats)
    for problem in problems:
        warnings.warn(problem, FigureWarning, stacklevel=2)
    return {fmt: str(path) for fmt, path in written.items()}


def render_run(run_dir: str | os.PathLike, formats: Sequence[str] = RENDER_FORMATS) -> list[Path]:
    """Re-render every figure of a run from its saved <name>.json into `formats` (any of html, png, svg,
    pdf), running no stage; return the paths written. Every problem is printed on stderr, one line each:
    a format not written, a trace the static copy lacks, or a figure that has HTML but no JSON (made
    before figures were saved as JSON: its stage must be re-run)."""
    import plotly.io as pio

    unknown = [f for f in formats if f not in RENDER_FORMATS]
    if unknown:
        raise ValueError(f"render_run writes {', '.join(RENDER_FORMATS)}; not {', '.join(map(str, unknown))} "
                         "(the JSON is the source it renders from)")
    folder = figures_dir(run_dir)
    if not folder.is_dir():
        print(f"{folder}: no figures folder: run the stages first", file=sys.stderr)
        return []
    written: list[Path] = []
    for source in _figure_files(folder, ".json"):
        name = source.stem
        try:
            fig = pio.read_json(source)
        except Exception as exc:  # one unreadable figure must not stop the others
            print(f"figure {name}: {source.name} cannot be read ({type(exc).__name__}: {exc}); re-run its stage "
                  f"{_stage_hint(name)}", file=sys.stderr)
            continue
        paths, problems = write_figure(fig, folder, name, tuple(formats))
        written += paths.values()
        for problem in problems:
            print(problem, file=sys.stderr)
    for stale in sorted(set(_stems(folder, ".html")) - set(_stems(folder, ".json"))):
        print(_no_json_message(stale), file=sys.stderr)
    return written


def figure_problems(run_dir: str | os.PathLike, formats: Sequence[str] = FORMATS, *, prefix: str = "") -> list[str]:
    """One line per figure of the run whose name starts with `prefix` (a stage's figures: "03_") that lacks
    one of `formats` (for a terminal summary after a stage: the kernel's warnings stay in the executed notebook)."""
    folder = figures_dir(run_dir)
    if not folder.is_dir():
        return []
    lines = []
    names = sorted(n for n in set(_stems(folder, ".json")) | set(_stems(folder, ".html")) if n.startswith(prefix))
    for name in names:
        if "json" in formats and not (folder / f"{name}.json").exists():
            lines.append(_no_json_message(name))
            continue
        missing = [fmt for fmt in formats if not (folder / f"{name}.{fmt}").exists()]
        if missing:
            lines.append(f"figure {name}: no {', '.join(missing)} (python -m safety_neurons figures --profile <profile> "
                         "re-renders them from the JSON; the stage's notebook says why they were not written)")
    return lines


def write_figure(fig, folder: Path, name: str, formats: Sequence[str] = FORMATS) -> tuple[dict[str, Path], list[str]]:
    """Write `fig` as folder/<name>.<format> for each of `formats` (json, html, png, svg, pdf), each atomically.
    Return ({format: path} written, problem lines). One format failing does not stop the others."""
    written: dict[str, Path] = {}
    problems: list[str] = []

    def attempt(fmt: str, write) -> None:
        path = folder / f"{name}.{fmt}"
        try:
            write(path)
        except Exception as exc:  # report and go on: the other formats are still worth having
            problems.append(f"figure {name}: {fmt} not written: {type(exc).__name__}: {exc}")
        else:
            written[fmt] = path

    if "json" in formats:
        attempt("json", lambda path: _write_json(fig, path))
    if "html" in formats:
        attempt("html", lambda path: _write_html(fig, path))
    static = [fmt for fmt in STATIC_FORMATS if fmt in formats]
    if static:
        with _style():
            try:
                drawing, notes = to_matplotlib(fig, name)
            except Exception as exc:  # a converter bug must cost the static copies only, never the stage
                problems.append(f"figure {name}: {', '.join(static)} not written: the static converter failed: "
                                f"{type(exc).__name__}: {exc}")
            else:
                problems += notes
                for fmt in static:
                    attempt(fmt, lambda path, fmt=fmt: _write_static(drawing, path, fmt))
                    if fmt in written:  # the layout is solved: keep it for the other formats (a third of the time)
                        drawing.set_layout_engine("none")
    return written, problems


def _write_json(fig, path: Path) -> None:
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(fig.to_json(), encoding="utf-8")


def _write_html(fig, path: Path) -> None:
    # plotly's "directory" mode writes plotly.min.js itself but not atomically and never replaces an old
    # one: a killed run or a plotly upgrade would leave every page of the folder broken. Write it first.
    ensure_plotlyjs(path.parent)
    with atomic_path(path, suffix=".html") as tmp:  # the temporary file sits beside the bundle it names
        fig.write_html(str(tmp), include_plotlyjs="directory", full_html=True)


@functools.lru_cache(maxsize=1)
def _plotlyjs_bundle() -> bytes:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().encode("utf-8")


def ensure_plotlyjs(folder: Path) -> Path:
    """folder/plotly.min.js of the installed plotly (4.8 MB, once per folder), rewritten if it differs."""
    path = Path(folder) / PLOTLY_JS
    bundle = _plotlyjs_bundle()
    if not path.exists() or path.stat().st_size != len(bundle):
        with atomic_path(path, suffix=".js") as tmp:
            tmp.write_bytes(bundle)
    return path


_METADATA = {"png": None, "svg": {"Date": None}, "pdf": {"CreationDate": None}}  # no dates: reruns diff cleanly


def _write_static(drawing, path: Path, fmt: str) -> None:
    with atomic_path(path, suffix=f".{fmt}") as tmp:
        drawing.savefig(tmp, format=fmt, dpi=DPI, metadata=_METADATA[fmt])


def _figure_files(folder: Path, suffix: str) -> list[Path]:
    # atomic_path's temporary files start with a dot: never a figure
    return sorted(p for p in folder.glob(f"*{suffix}") if not p.name.startswith("."))


def _stems(folder: Path, suffix: str) -> list[str]:
    return [p.stem for p in _figure_files(folder, suffix)]


def _stage_hint(name: str) -> str:
    match = _NAME.match(name)
    stage = f" --only {int(match.group(1))}" if match else ""
    return f"(python -m safety_neurons run --profile <profile>{stage} --force)"


def _no_json_message(name: str) -> str:
    return (f"figure {name}: has HTML but no {name}.json (made before figures were saved as JSON), so it cannot be "
            f"re-rendered: re-run its stage {_stage_hint(name)} to get it")


# ----------------------------------------------------------------------------------------------
# plotly -> matplotlib
# ----------------------------------------------------------------------------------------------

_RC = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "figure.titlesize": 12, "legend.fontsize": 8,
       "legend.title_fontsize": 9, "axes.spines.top": False, "axes.spines.right": False,
       "svg.hashsalt": "safety-neurons"}  # a fixed salt: the same figure gives the same SVG
PLOTLY_COLORWAY = ("#636efa", "#EF553B", "#00cc96", "#ab63fa", "#FFA15A", "#19d3f3", "#FF6692", "#B6E880",
                   "#FF97FF", "#FECB52")
PLOTLY_SEQUENTIAL = ((0.0, "#0d0887"), (0.111, "#46039f"), (0.222, "#7201a8"), (0.333, "#9c179e"),
                     (0.444, "#bd3786"), (0.556, "#d8576b"), (0.667, "#ed7953"), (0.778, "#fb9f3a"),
                     (0.889, "#fdca26"), (1.0, "#f0f921"))
PX_TO_PT = 0.75  # plotly sizes are CSS pixels (1/96 in), matplotlib's points (1/72 in)
_DASHES = {"solid": "-", "dot": (0, (1, 2)), "dash": (0, (4, 2)), "longdash": (0, (8, 3)),
           "dashdot": (0, (4, 2, 1, 2)), "longdashdot": (0, (8, 3, 1, 3))}
_SYMBOLS = {"circle": "o", "square": "s", "diamond": "D", "cross": "P", "x": "X", "triangle-up": "^",
            "triangle-down": "v", "triangle-left": "<", "triangle-right": ">", "pentagon": "p", "hexagon": "h",
            "star": "*"}
_DRAWN = ("scatter", "scattergl", "bar", "heatmap")
MAX_CELL_LABELS = 400  # a heatmap with more cells gets no value printed in each (unreadable at print size)


@contextmanager
def _style() -> Iterator[None]:
    import matplotlib

    with matplotlib.rc_context(_RC):
        yield


def to_matplotlib(fig, name: str = "figure"):
    """A matplotlib Figure (on an Agg canvas: no display, no browser) drawn from a plotly figure or its
    dict, and one note per part it could not draw (each names the figure and what is missing)."""
    spec = fig if isinstance(fig, dict) else fig.to_dict()
    with _style():
        return _Converter(spec, name).draw()


def _array(value: Any) -> np.ndarray | None:
    """A plotly data array as numpy: lists (None -> NaN where the rest is numeric) or plotly's typed-array
    dicts ({"dtype", "bdata", "shape"}: how plotly 6+ stores numpy data in a figure and its JSON)."""
    if value is None:
        return None
    if isinstance(value, dict) and "bdata" in value:
        data = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]).newbyteorder("<"))
        shape = value.get("shape")
        return data.reshape([int(s) for s in str(shape).split(",")]) if shape else data
    if isinstance(value, (str, bytes)) or np.isscalar(value):
        return np.asarray([value])
    try:
        array = np.asarray(value)
    except ValueError:  # rows of different lengths
        array = np.asarray(value, dtype=object)
    if array.dtype == object:
        try:
            return np.array(array.tolist(), dtype=float)
        except (TypeError, ValueError):
            return array
    return array


def _category(value: Any) -> str:
    """A category's label as plotly shows it: 2.0 -> "2", None -> ""."""
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _numeric(array: np.ndarray | None) -> bool:
    return array is not None and array.dtype.kind in "biuf"


def _text(value: Any) -> str:
    """Plotly's rich text as plain matplotlib text: <br> breaks lines, other tags go, $ is not mathtext."""
    if isinstance(value, dict):
        value = value.get("text")
    if value is None:
        return ""
    text = re.sub(r"<br\s*/?>", "\n", str(value), flags=re.IGNORECASE)
    text = html.unescape(re.sub(r"<[^>]+>", "", text))
    return text.replace("$", r"\$")


def _rgba(color: Any) -> tuple[float, float, float, float] | None:
    """A CSS colour (hex, name, rgb(), rgba()) as an RGBA tuple; None if it is not one."""
    from matplotlib.colors import to_rgba

    if color is None or isinstance(color, (int, float)):
        return None
    if isinstance(color, (tuple, list)) and len(color) in (3, 4) and all(isinstance(c, (int, float)) for c in color):
        return (*map(float, color[:3]), float(color[3]) if len(color) == 4 else 1.0)
    text = str(color).strip().replace(" ", "")
    match = re.fullmatch(r"rgba?\(([^)]*)\)", text, flags=re.IGNORECASE)
    try:
        if match:
            parts = [float(p.rstrip("%")) for p in match.group(1).split(",")]
            alpha = parts[3] if len(parts) > 3 else 1.0
            return (parts[0] / 255, parts[1] / 255, parts[2] / 255, alpha)
        return to_rgba(text)
    except (ValueError, IndexError):
        return None


def _colormap(scale: Any, reverse: bool = False):
    """A plotly colorscale (name or [[position, colour], ...]) as a matplotlib colormap."""
    from matplotlib.colors import LinearSegmentedColormap

    if isinstance(scale, str):
        import plotly.colors

        scale = plotly.colors.get_colorscale(scale)
    stops = [(float(p), _rgba(c) or (0.5, 0.5, 0.5, 1.0)) for p, c in (scale or PLOTLY_SEQUENTIAL)]
    cmap = LinearSegmentedColormap.from_list("plotly", stops)
    return cmap.reversed() if reverse else cmap


def _format_value(template: str, values: dict[str, Any]) -> str:
    """Fill a plotly texttemplate (`%{z:.2f}`, `%{text}`) with python's format mini-language, which reads
    d3's common specs (.2f, .1%, ,d) the same way."""

    def fill(match: re.Match) -> str:
        key, spec = match.group(1), match.group(2) or ""
        value = values.get(key, "")
        if isinstance(value, float) and math.isnan(value):
            return ""
        try:
            return format(value, spec)
        except (TypeError, ValueError):
            return str(value)

    return _text(re.sub(r"%\{([a-z_.\[\]0-9]+)(?::([^}]*))?\}", fill, template))


def _errors(spec: dict | None, values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(minus, plus) lengths of a trace's error bars (plotly types data, percent, constant, sqrt)."""
    if not spec or spec.get("visible") is False:
        return None
    kind = spec.get("type") or ("data" if "array" in spec else "percent")
    n = len(values)
    if kind == "data":
        plus = _array(spec.get("array"))
        if plus is None:
            return None
        minus = _array(spec.get("arrayminus"))
        symmetric = spec.get("symmetric", minus is None)
        minus = plus if symmetric or minus is None else minus
        plus, minus = (np.resize(np.asarray(a, dtype=float), n) for a in (plus, minus))
    elif kind in ("percent", "constant"):
        plus_v = float(spec.get("value", 10 if kind == "percent" else 0))
        minus_v = plus_v if spec.get("symmetric", "valueminus" not in spec) else float(spec.get("valueminus", 0))
        scale = np.abs(values) / 100 if kind == "percent" else np.ones(n)
        plus, minus = plus_v * scale, minus_v * scale
    elif kind == "sqrt":
        plus = minus = np.sqrt(np.abs(values))
    else:
        return None
    return np.nan_to_num(minus), np.nan_to_num(plus)


@dataclass
class _Subplot:
    """One plotly (x axis, y axis) pair and the matplotlib Axes drawn for it."""

    xkey: str
    ykey: str
    xdomain: tuple[float, float]
    ydomain: tuple[float, float]
    ax: Any = None
    has_heatmap: bool = False


class _Converter:
    """Draws one plotly figure dict with matplotlib; collects notes on what it could not draw."""

    def __init__(self, spec: dict, name: str) -> None:
        self.data = spec.get("data") or []
        self.layout = spec.get("layout") or {}
        self.name = name
        self.notes: list[str] = []
        self.categories: dict[str, list] = {}  # root axis key -> categories in plotly's order (first seen)
        self.legend: dict[str, Any] = {}  # label -> handle, first seen first
        self.colorbars: dict[str, tuple[Any, list, str]] = {}  # coloraxis or trace id -> (mappable, axes, title)
        template = (self.layout.get("template") or {}).get("layout") or {}
        self.colorway = list(self.layout.get("colorway") or template.get("colorway") or PLOTLY_COLORWAY)
        self.default_scale = ((template.get("colorscale") or {}).get("sequential")) or PLOTLY_SEQUENTIAL
        self.next_color = 0
        self.stacks: dict[tuple, float] = {}  # (axes, position, sign) -> top of the bars stacked there
        self.bar_groups: dict[str, list] = {}
        self.integral: dict[str, bool] = {}  # root axis key -> every number drawn on it is a whole number
        self.previous_scatter: tuple[np.ndarray, np.ndarray] | None = None  # for fill="tonexty"

    # -- layout --------------------------------------------------------------------------------

    def axis(self, key: str) -> dict:
        """The layout dict of axis `x`, `x2`, `y3`... ({} if absent)."""
        return self.layout.get(f"{key[0]}axis{key[1:]}") or {}

    def root(self, key: str) -> str:
        """The axis whose range and categories `key` shares (plotly's `matches`)."""
        seen = {key}
        while (target := self.axis(key).get("matches")) and target not in seen:
            seen.add(target)
            key = target
        return key

    def subplots(self) -> list[_Subplot]:
        """Every axis pair: those the layout anchors to each other, then any a trace uses besides."""
        pairs: list[tuple[str, str]] = []
        for layout_key in self.layout:
            match = re.fullmatch(r"xaxis(\d*)", layout_key)
            if match:
                anchor = self.layout[layout_key].get("anchor")
                y = anchor if anchor and anchor.startswith("y") else f"y{match.group(1)}"
                pairs.append((f"x{match.group(1)}", y))
        for trace in self.data:
            pair = (trace.get("xaxis") or "x", trace.get("yaxis") or "y")
            if pair not in pairs:
                pairs.append(pair)
        if not pairs:
            pairs = [("x", "y")]
        used = {(t.get("xaxis") or "x", t.get("yaxis") or "y") for t in self.data}
        # an empty subplot of make_subplots or px is kept (an empty facet says something); an overlaying
        # axis without a trace would only add a second, empty y scale
        return [_Subplot(x, y, self.domain(x), self.domain(y)) for x, y in pairs
                if (x, y) in used or not self.axis(y).get("overlaying")]

    def domain(self, key: str) -> tuple[float, float]:
        """The share of the figure's width (x) or height (y) an axis spans."""
        return tuple(self.axis(key).get("domain") or (0.0, 1.0))

    def place(self, drawing, subplots: list[_Subplot]) -> None:
        """Create the Axes on a grid recovered from the plotly domains (rows top to bottom)."""
        base = [s for s in subplots if not self.axis(s.ykey).get("overlaying")]
        starts_x = sorted({round(s.xdomain[0], 3) for s in base})
        tops = sorted({round(s.ydomain[1], 3) for s in base}, reverse=True)
        widths = [min(s.xdomain[1] - s.xdomain[0] for s in base if round(s.xdomain[0], 3) == x) for x in starts_x]
        heights = [min(s.ydomain[1] - s.ydomain[0] for s in base if round(s.ydomain[1], 3) == y) for y in tops]
        grid = drawing.add_gridspec(len(tops), len(starts_x), width_ratios=[max(w, 0.05) for w in widths],
                                    height_ratios=[max(h, 0.05) for h in heights])
        for s in base:
            cols = [i for i, x in enumerate(starts_x) if s.xdomain[0] - 1e-3 <= x < s.xdomain[1] - 1e-3] or [0]
            rows = [i for i, y in enumerate(tops) if s.ydomain[0] + 1e-3 < y <= s.ydomain[1] + 1e-3] or [0]
            s.ax = drawing.add_subplot(grid[min(rows): max(rows) + 1, min(cols): max(cols) + 1])
        for s in subplots:
            if s.ax is None:  # a y axis overlaying another: a twin sharing the x axis
                host = next((b for b in base if b.ykey == self.axis(s.ykey)["overlaying"]), base[0])
                s.ax = host.ax.twinx()
        for s in subplots:
            for which, key in (("x", s.xkey), ("y", s.ykey)):
                if self.axis(key).get("type") == "log":
                    (s.ax.set_xscale if which == "x" else s.ax.set_yscale)("log")
        self.share(subplots)

    def share(self, subplots: list[_Subplot]) -> None:
        """Axes whose plotly axes `match` share their limits, as they do in the HTML."""
        for s in subplots:
            for which, key in (("x", s.xkey), ("y", s.ykey)):
                root = self.root(key)
                if root == key:
                    continue
                other = next((o for o in subplots if (o.xkey if which == "x" else o.ykey) == root), None)
                if other is None or other.ax is s.ax:
                    continue
                try:
                    (s.ax.sharex if which == "x" else s.ax.sharey)(other.ax)
                except ValueError:  # already shared with another: limits still follow the data
                    pass

    # -- coordinates ---------------------------------------------------------------------------

    def coords(self, values: np.ndarray, key: str, *, positions: bool = False) -> np.ndarray:
        """Numbers on axis `key`: numbers as they are, anything else as the index of its category.
        `positions`: these are where things stand (layers, steps, k), not measured values: if every position
        on an axis is a whole number, its ticks will be too."""
        root = self.root(key)
        if _numeric(values) and self.axis(key).get("type") != "category":
            numbers = values.astype(float)
            if positions:
                finite = numbers[np.isfinite(numbers)]
                whole = bool(finite.size) and bool(np.all(finite == np.round(finite)))
                self.integral[root] = self.integral.get(root, True) and whole
            return numbers
        known = self.categories.setdefault(root, list(self.axis(root).get("categoryarray") or []))
        out = np.empty(len(values))
        for i, value in enumerate(values):
            label = _category(value)
            if label not in known:
                known.append(label)
            out[i] = known.index(label)
        return out

    def color(self, *candidates: Any) -> tuple[float, float, float, float]:
        """The first valid colour among `candidates`, else plotly's next default colour."""
        for candidate in candidates:
            rgba = _rgba(candidate)
            if rgba is not None:
                return rgba
        rgba = _rgba(self.colorway[self.next_color % len(self.colorway)])
        self.next_color += 1
        return rgba

    def add_legend(self, trace: dict, handle: Any) -> None:
        """A legend entry for the trace, unless hidden, unnamed, or already there (px repeats each colour's
        name in every facet)."""
        label = _wrap(_text(trace.get("name")), 40)
        if trace.get("showlegend") is not False and label and label not in self.legend:
            self.legend[label] = handle

    # -- drawing -------------------------------------------------------------------------------

    def draw(self):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        subplots = self.subplots()
        rows = len({round(s.ydomain[1], 3) for s in subplots})
        cols = len({round(s.xdomain[0], 3) for s in subplots})
        width = max(10.0, 3.2 * cols + 2.5)
        height = 5.5 if rows == 1 else 1.6 + 3.0 * rows
        drawing = Figure(figsize=(width, height), layout="constrained")
        FigureCanvasAgg(drawing)  # Agg explicitly: no display, whatever backend pyplot would pick
        self.place(drawing, subplots)
        by_pair = {(s.xkey, s.ykey): s for s in subplots}
        self.plan_bars(subplots)
        for index, trace in enumerate(self.data):
            if trace.get("visible") in (False, "legendonly"):
                continue
            kind = trace.get("type") or "scatter"
            subplot = by_pair.get((trace.get("xaxis") or "x", trace.get("yaxis") or "y"), subplots[0])
            if kind not in _DRAWN:
                self.notes.append(f"figure {self.name}: its static copy (png/svg/pdf) lacks trace {index}"
                                  f"{' ' + repr(trace.get('name')) if trace.get('name') else ''} of type {kind!r}, "
                                  "which the converter cannot draw; the HTML has it")
                continue
            draw = {"scatter": self.scatter, "scattergl": self.scatter, "bar": self.bar, "heatmap": self.heatmap}[kind]
            try:
                draw(trace, subplot, index)
            except Exception as exc:  # one odd trace must not cost the rest of the figure
                self.notes.append(f"figure {self.name}: its static copy lacks trace {index} of type {kind!r}: "
                                  f"{type(exc).__name__}: {exc}")
        for shape in self.layout.get("shapes") or []:
            self.shape(shape, subplots)
        for annotation in self.layout.get("annotations") or []:
            self.annotation(annotation, subplots, drawing)
        for s in subplots:
            self.format_axes(s)
        self.finish(drawing)
        return drawing, self.notes

    def plan_bars(self, subplots: list[_Subplot]) -> None:
        """Slots of grouped bars: one per offsetgroup (px: one per colour) or per trace, counted over an
        alignmentgroup across facets, as plotly leaves a facet's missing group's slot empty."""
        groups: dict[str, list] = {}
        for index, trace in enumerate(self.data):
            if trace.get("type") != "bar" or trace.get("visible") in (False, "legendonly"):
                continue
            pair = (trace.get("xaxis") or "x", trace.get("yaxis") or "y")
            group = trace.get("alignmentgroup") or f"{pair}"
            slot = trace.get("offsetgroup") or f"trace{index}"
            slots = groups.setdefault(group, [])
            if slot not in slots:
                slots.append(slot)
        self.bar_groups = groups

    def scatter(self, trace: dict, subplot: _Subplot, index: int) -> None:
        ax = subplot.ax
        y = _array(trace.get("y"))
        x = _array(trace.get("x"))
        if y is None and x is None:
            return
        if y is None:
            y = np.arange(len(x))
        if x is None:
            x = np.arange(len(y))
        xs, ys = self.coords(x, subplot.xkey, positions=True), self.coords(y, subplot.ykey)
        mode = trace.get("mode") or ("lines+markers" if len(ys) < 20 else "lines")
        line = trace.get("line") or {}
        marker = trace.get("marker") or {}
        per_point = isinstance(marker.get("color"), (list, tuple, dict, np.ndarray))
        marker_colors = _array(marker.get("color")) if per_point else None
        color = self.color(line.get("color") if "lines" in mode else None, None if per_point else marker.get("color"),
                           line.get("color"))
        opacity = float(trace.get("opacity", 1.0))
        handle = None
        fill = trace.get("fill")
        if fill in ("toself", "tonext", "tozeroy", "tozerox", "tonexty"):
            handle = self.fill(trace, ax, xs, ys, color, opacity, fill)
        width = float(line.get("width", 2)) * PX_TO_PT
        style = _DASHES.get(line.get("dash") or "solid", "-")
        draws_line = "lines" in mode and width > 0
        draws_markers = "markers" in mode
        symbol = _SYMBOLS.get(str(marker.get("symbol", "circle")).replace("-open", ""), "o")
        size = float(marker.get("size", 6)) * PX_TO_PT if not isinstance(marker.get("size"), (list, dict)) else 6 * PX_TO_PT
        if draws_markers and marker_colors is not None:
            if draws_line:
                ax.plot(xs, ys, color=color, linewidth=width, linestyle=style, alpha=opacity)
            handle = self.colored_markers(trace, subplot, xs, ys, marker_colors, symbol, size, opacity, index)
        elif draws_line or draws_markers:
            (handle,) = ax.plot(xs, ys, color=color, alpha=opacity, linewidth=width if draws_line else 0,
                                linestyle=style if draws_line else "None", marker=symbol if draws_markers else None,
                                markersize=size)
        for axis, values, errors in (("y", ys, trace.get("error_y")), ("x", xs, trace.get("error_x"))):
            lengths = _errors(errors, values)
            if lengths is not None:
                bar_color = self.color((errors or {}).get("color"), color)
                key = "yerr" if axis == "y" else "xerr"
                ax.errorbar(xs, ys, **{key: np.vstack(lengths)}, fmt="none", ecolor=bar_color, alpha=opacity,
                            elinewidth=float(errors.get("thickness", 2)) * PX_TO_PT,
                            capsize=float(errors.get("width", 4)) * PX_TO_PT)
        if "text" in mode and trace.get("text") is not None:
            labels = _array(trace.get("text"))
            for xi, yi, label in zip(xs, ys, np.resize(labels, len(xs))):
                ax.annotate(_text(label), (xi, yi), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7)
        if handle is not None:
            self.add_legend(trace, handle)
        self.previous_scatter = (xs, ys)

    def fill(self, trace: dict, ax, xs, ys, color, opacity: float, fill: str):
        fill_rgba = self.color(trace.get("fillcolor"), (*color[:3], 0.5))
        alpha = fill_rgba[3] * opacity
        if fill == "toself":
            (patch,) = ax.fill(xs, ys, facecolor=fill_rgba[:3], alpha=alpha, linewidth=0)
            return patch
        if fill == "tozeroy":
            return ax.fill_between(xs, 0, ys, color=fill_rgba[:3], alpha=alpha, linewidth=0)
        if fill == "tozerox":
            return ax.fill_betweenx(ys, 0, xs, color=fill_rgba[:3], alpha=alpha, linewidth=0)
        previous = self.previous_scatter
        if previous is not None and len(previous[0]) == len(xs):
            return ax.fill_between(xs, previous[1], ys, color=fill_rgba[:3], alpha=alpha, linewidth=0)
        self.notes.append(f"figure {self.name}: its static copy lacks the {fill!r} fill of trace {trace.get('name')!r}")
        return None

    def colored_markers(self, trace: dict, subplot: _Subplot, xs, ys, values, symbol: str, size: float,
                        opacity: float, index: int):
        """Markers coloured per point: by number through the colour scale (with a colour bar), or by colour."""
        from matplotlib.colors import Normalize

        marker = trace.get("marker") or {}
        values = np.resize(values, len(xs))
        if not _numeric(values):
            colors = [self.color(v) for v in values]
            return subplot.ax.scatter(xs, ys, c=colors, marker=symbol, s=size ** 2, alpha=opacity)
        axis_name = marker.get("coloraxis")
        source = (self.layout.get(axis_name) or {}) if axis_name else marker
        cmap = _colormap(source.get("colorscale") or self.default_scale, bool(source.get("reversescale")))
        low = source.get("cmin", np.nanmin(values))
        high = source.get("cmax", np.nanmax(values))
        mappable = subplot.ax.scatter(xs, ys, c=values.astype(float), cmap=cmap, norm=Normalize(low, high), marker=symbol,
                                      s=size ** 2, alpha=opacity)
        if source.get("showscale", True) is not False:
            title = _text(((source.get("colorbar") or {}).get("title")))
            key = axis_name or f"trace{index}"
            entry = self.colorbars.setdefault(key, (mappable, [], title))
            entry[1].append(subplot.ax)
        return mappable

    def bar(self, trace: dict, subplot: _Subplot, index: int) -> None:
        ax = subplot.ax
        horizontal = trace.get("orientation") == "h"
        pos_key = subplot.ykey if horizontal else subplot.xkey
        raw_pos = _array(trace.get("y" if horizontal else "x"))
        raw_val = _array(trace.get("x" if horizontal else "y"))
        if raw_val is None:
            return
        if raw_pos is None:
            raw_pos = np.arange(len(raw_val))
        pos = self.coords(raw_pos, pos_key, positions=True)
        values = np.asarray(raw_val, dtype=float)
        mode = self.layout.get("barmode") or "group"
        pair = (trace.get("xaxis") or "x", trace.get("yaxis") or "y")
        slots = self.bar_groups.get(trace.get("alignmentgroup") or f"{pair}", [None])
        slot = trace.get("offsetgroup") or f"trace{index}"
        step = np.min(np.diff(np.unique(pos))) if len(np.unique(pos)) > 1 else 1.0
        full = step * (1 - float(self.layout.get("bargap", 0.2)))
        if mode == "group" and len(slots) > 1:
            width = full / len(slots)
            offset = (slots.index(slot) - (len(slots) - 1) / 2) * width if slot in slots else 0.0
        else:
            width, offset = full, 0.0
        base = np.zeros(len(values))
        if mode in ("stack", "relative"):
            for i, (p, v) in enumerate(zip(pos, values)):
                sign = 1 if (mode == "stack" or v >= 0) else -1
                key = (id(ax), round(float(p), 9), sign)
                base[i] = self.stacks.get(key, 0.0)
                self.stacks[key] = base[i] + (0 if math.isnan(v) else v)
        marker = trace.get("marker") or {}
        colors = marker.get("color")
        opacity = trace.get("opacity")
        if opacity is None:  # plotly draws overlaid bars see-through
            scalar = isinstance(marker.get("opacity"), (int, float))
            opacity = marker.get("opacity") if scalar else (0.6 if mode == "overlay" else 1.0)
        if isinstance(colors, (list, tuple, dict, np.ndarray)):
            per_bar = _array(colors)
            if _numeric(per_bar):
                cmap = _colormap(marker.get("colorscale") or self.default_scale, bool(marker.get("reversescale")))
                low, high = np.nanmin(per_bar), np.nanmax(per_bar)
                facecolor = [cmap((v - low) / (high - low) if high > low else 0.5) for v in per_bar]
            else:
                facecolor = [self.color(c, "grey") for c in np.resize(per_bar, len(values))]
        else:
            facecolor = self.color(colors)
        edge = self.color((marker.get("line") or {}).get("color"), "white")
        draw = ax.barh if horizontal else ax.bar
        size_kw = {"height": width} if horizontal else {"width": width}
        base_kw = {"left": base} if horizontal else {"bottom": base}
        container = draw(pos + offset, values, **size_kw, **base_kw, color=facecolor, alpha=opacity,
                         edgecolor=edge, linewidth=0.4)
        lengths = _errors(trace.get("error_x" if horizontal else "error_y"), values)
        if lengths is not None:
            spec = trace.get("error_x" if horizontal else "error_y") or {}
            tips = base + np.nan_to_num(values)
            err = {"xerr" if horizontal else "yerr": np.vstack(lengths)}
            xy = (tips, pos + offset) if horizontal else (pos + offset, tips)
            ax.errorbar(*xy, **err, fmt="none", ecolor=self.color(spec.get("color"), "#444444"),
                        elinewidth=float(spec.get("thickness", 2)) * PX_TO_PT,
                        capsize=float(spec.get("width", 4)) * PX_TO_PT)
        text = trace.get("text")
        if text is not None and trace.get("textposition") != "none":
            labels = [_text(t) for t in np.resize(_array(text), len(values))]
            ax.bar_label(container, labels=labels, fontsize=7, padding=2)
        self.add_legend(trace, container)

    def heatmap(self, trace: dict, subplot: _Subplot, index: int) -> None:
        from matplotlib.colors import Normalize

        ax = subplot.ax
        subplot.has_heatmap = True
        z = np.asarray(_array(trace.get("z")), dtype=float)
        if z.ndim != 2:
            raise ValueError(f"z of shape {z.shape} (a heatmap from x, y, z columns is not converted)")
        xs = self.heat_coords(trace, "x", z.shape[1], subplot.xkey)
        ys = self.heat_coords(trace, "y", z.shape[0], subplot.ykey)
        axis_name = trace.get("coloraxis")
        source = (self.layout.get(axis_name) or {}) if axis_name else trace
        prefix = "c" if axis_name else "z"
        cmap = _colormap(source.get("colorscale") or self.default_scale, bool(source.get("reversescale")))
        finite = z[np.isfinite(z)]
        low = source.get(f"{prefix}min", float(finite.min()) if finite.size else 0.0)
        high = source.get(f"{prefix}max", float(finite.max()) if finite.size else 1.0)
        mid = source.get(f"{prefix}mid")
        if mid is not None and f"{prefix}min" not in source and f"{prefix}max" not in source:
            span = max(abs(high - mid), abs(low - mid)) or 1.0
            low, high = mid - span, mid + span
        norm = Normalize(low, high)
        mesh = ax.pcolormesh(_edges(xs), _edges(ys), np.ma.masked_invalid(z), cmap=cmap, norm=norm, shading="flat")
        self.cell_labels(trace, ax, xs, ys, z, cmap, norm, index)
        if source.get("showscale", True) is not False:
            title = _text((source.get("colorbar") or {}).get("title"))
            key = axis_name or f"trace{index}"
            entry = self.colorbars.setdefault(key, (mesh, [], title))
            entry[1].append(ax)

    def heat_coords(self, trace: dict, which: str, n: int, key: str) -> np.ndarray:
        values = _array(trace.get(which))
        if values is None:
            start, step = float(trace.get(f"{which}0", 0)), float(trace.get(f"d{which}", 1))
            return start + step * np.arange(n)
        return self.coords(values[:n], key, positions=True)

    def cell_labels(self, trace: dict, ax, xs, ys, z, cmap, norm, index: int) -> None:
        """Each cell's value (texttemplate or text), dark or light by the cell's colour, as plotly prints it."""
        template = trace.get("texttemplate")
        text = _array(trace.get("text"))
        if not template and text is None:
            return
        if z.size > MAX_CELL_LABELS:
            self.notes.append(f"figure {self.name}: its static copy prints no cell values in heatmap trace {index} "
                              f"({z.size} cells, over {MAX_CELL_LABELS}); the HTML shows them")
            return
        template = template or "%{text}"
        fontsize = 8 if z.size <= 100 else 6
        names = {which: _array(trace.get(which)) for which in ("x", "y")}  # %{x} is the label, not its position
        for i, y in enumerate(ys):
            for j, x in enumerate(xs):
                value = z[i, j]
                cell_text = text[i, j] if text is not None and text.ndim == 2 else ""
                x_name = names["x"][j] if names["x"] is not None and j < len(names["x"]) else x
                y_name = names["y"][i] if names["y"] is not None and i < len(names["y"]) else y
                label = _format_value(template, {"z": value, "text": cell_text, "x": x_name, "y": y_name})
                if not label:
                    continue
                r, g, b, _ = cmap(norm(value)) if np.isfinite(value) else (1, 1, 1, 1)
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                ax.text(x, y, label, ha="center", va="center", fontsize=fontsize, color="white" if dark else "black")

    # -- layout objects ------------------------------------------------------------------------

    def ref_axes(self, xref: str, yref: str, subplots: list[_Subplot]) -> tuple[_Subplot, bool, bool]:
        """(subplot, x in axes fraction?, y in axes fraction?) for a shape's or annotation's references."""
        xkey, ykey = xref.split(" ")[0], yref.split(" ")[0]
        subplot = next((s for s in subplots if s.xkey == xkey and (s.ykey == ykey or ykey == "paper")), None) \
            or next((s for s in subplots if s.ykey == ykey), None) or subplots[0]
        x_fraction = xref == "paper" or xref.endswith(" domain")
        y_fraction = yref == "paper" or yref.endswith(" domain")
        return subplot, x_fraction, y_fraction

    def shape(self, shape: dict, subplots: list[_Subplot]) -> None:
        from matplotlib.patches import Rectangle
        from matplotlib.transforms import blended_transform_factory

        kind = shape.get("type", "line" if "path" not in shape else "path")
        if kind not in ("line", "rect") or shape.get("visible") is False:
            self.notes.append(f"figure {self.name}: its static copy lacks a layout shape of type {kind!r}")
            return
        subplot, x_fraction, y_fraction = self.ref_axes(shape.get("xref", "x"), shape.get("yref", "y"), subplots)
        ax = subplot.ax
        transform = blended_transform_factory(ax.transAxes if x_fraction else ax.transData,
                                              ax.transAxes if y_fraction else ax.transData)
        x0, x1 = (self.shape_coord(shape.get(k, 0), subplot.xkey, x_fraction) for k in ("x0", "x1"))
        y0, y1 = (self.shape_coord(shape.get(k, 0), subplot.ykey, y_fraction) for k in ("y0", "y1"))
        line = shape.get("line") or {}
        color = self.color(line.get("color"), "#444444")
        width = float(line.get("width", 2)) * PX_TO_PT
        opacity = float(shape.get("opacity", 1.0))
        zorder = 0.5 if shape.get("layer") == "below" else 3
        if kind == "line":
            ax.plot([x0, x1], [y0, y1], transform=transform, color=color, linewidth=width, alpha=opacity,
                    linestyle=_DASHES.get(line.get("dash") or "solid", "-"), zorder=zorder)
        else:
            face = self.color(shape.get("fillcolor"), (0, 0, 0, 0))
            ax.add_patch(Rectangle((min(x0, x1), min(y0, y1)), abs(x1 - x0), abs(y1 - y0), transform=transform,
                                   facecolor=face, edgecolor=color if width > 0 else "none", linewidth=width,
                                   alpha=opacity, zorder=zorder))

    def shape_coord(self, value: Any, key: str, fraction: bool) -> float:
        if fraction or not isinstance(value, str):
            return float(value)
        return float(self.coords(np.asarray([value]), key)[0])

    def annotation(self, note: dict, subplots: list[_Subplot], drawing) -> None:
        text = _text(note.get("text"))
        if not text or note.get("visible") is False:
            return
        xref, yref = note.get("xref", "x"), note.get("yref", "y")
        x, y = note.get("x", 0.5), note.get("y", 0.5)
        if xref == "paper" and yref == "paper":
            self.paper_annotation(note, text, float(x), float(y), subplots, drawing)
            return
        subplot, x_fraction, y_fraction = self.ref_axes(xref, yref, subplots)
        ha = {"left": "left", "right": "right", "center": "center"}.get(note.get("xanchor"), "center")
        va = {"top": "top", "bottom": "bottom", "middle": "center"}.get(note.get("yanchor"), "center")
        if not x_fraction and self.axis(subplot.xkey).get("type") == "log" and not isinstance(x, str):
            x = 10 ** float(x)  # plotly places annotations on a log axis by log10 of the value
        if not y_fraction and self.axis(subplot.ykey).get("type") == "log" and not isinstance(y, str):
            y = 10 ** float(y)
        x = self.shape_coord(x, subplot.xkey, x_fraction)
        y = self.shape_coord(y, subplot.ykey, y_fraction)
        subplot.ax.annotate(text, (x, y), xycoords=("axes fraction" if x_fraction else "data",
                                                     "axes fraction" if y_fraction else "data"),
                            ha=ha, va=va, fontsize=8, annotation_clip=False)

    def paper_annotation(self, note: dict, text: str, x: float, y: float, subplots: list[_Subplot], drawing) -> None:
        """A subplot title (make_subplots' and px's facet labels sit just above a domain) or a row label
        (px facet_row: rotated, right of a domain); anything else at its place on the figure."""
        for s in subplots:
            above = s.xdomain[0] - 1e-3 <= x <= s.xdomain[1] + 1e-3 and abs(y - s.ydomain[1]) < 0.03
            if above and not note.get("textangle"):
                current = s.ax.get_title()
                s.ax.set_title(f"{current}\n{text}" if current else text)
                return
            if note.get("textangle") in (90, -90) and s.ydomain[0] <= y <= s.ydomain[1] and abs(x - s.xdomain[1]) < 0.05:
                s.ax.annotate(text, (1.02, 0.5), xycoords="axes fraction", rotation=-90, va="center", ha="left")
                return
        drawing.text(0.02 + 0.8 * x, 0.05 + 0.85 * y, text, ha="center", va="center", fontsize=8)

    def format_axes(self, s: _Subplot) -> None:
        for which, key in (("x", s.xkey), ("y", s.ykey)):
            self.format_axis(s.ax, which, key)
        if s.has_heatmap:  # grid lines across the cells would hide their colours
            s.ax.grid(False)
        else:
            s.ax.grid(True, color="#e5e5e5", linewidth=0.6)
            s.ax.set_axisbelow(True)

    def format_axis(self, ax, which: str, key: str) -> None:
        """Title, range (log10 units on a log axis, as plotly keeps them), direction, categories, ticks."""
        from matplotlib.ticker import FixedLocator, MaxNLocator, PercentFormatter

        spec = self.axis(key)
        axis = ax.xaxis if which == "x" else ax.yaxis
        set_label, set_lim = (ax.set_xlabel, ax.set_xlim) if which == "x" else (ax.set_ylabel, ax.set_ylim)
        title = _text(spec.get("title"))
        if title:
            set_label(_wrap(title, 60 if which == "x" else 45))
        categories = self.categories.get(self.root(key))
        if categories:
            labels = [_text(c) for c in categories]
            if which == "x":  # long names wrap onto lines as wide as their slot; only a crowd of them turns
                slot = max(8, int(ax.get_position().width * ax.figure.get_figwidth() * 11 / len(labels)))
                labels = [_wrap(label, slot) for label in labels]
                crowded = len(labels) > 12
                ax.set_xticks(range(len(labels)), labels, rotation=30 if crowded else 0, ha="right" if crowded else "center")
            else:
                ax.set_yticks(range(len(labels)), labels)
        if spec.get("tickvals") is not None:
            ticks = np.asarray(self.coords(_array(spec["tickvals"]), key))
            axis.set_major_locator(FixedLocator(ticks))
            if spec.get("ticktext") is not None:
                axis.set_ticklabels([_text(t) for t in _array(spec["ticktext"])])
        if spec.get("type") == "log":  # plain numbers (1, 10, 100), as plotly writes them, not powers of ten
            axis.set_major_formatter(_plain_log_formatter())
            axis.set_minor_formatter(_plain_log_formatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
        elif not categories and spec.get("tickvals") is None and self.integral.get(self.root(key)):
            axis.set_major_locator(MaxNLocator(integer=True))  # layers, steps, seeds: no tick at 2.5
        fmt = spec.get("tickformat") or ""
        if fmt.endswith("%"):
            decimals = int(re.search(r"\.(\d+)", fmt).group(1)) if re.search(r"\.(\d+)", fmt) else 0
            axis.set_major_formatter(PercentFormatter(1.0, decimals=decimals))
        bounds = spec.get("range")
        if bounds and len(bounds) == 2 and None not in bounds and not isinstance(bounds[0], str):
            low, high = (float(b) for b in bounds)
            if spec.get("type") == "log":
                low, high = 10 ** low, 10 ** high
            set_lim(low, high)
        elif spec.get("autorange") == "reversed" or self.axis(self.root(key)).get("autorange") == "reversed":
            # axes that share limits share the inversion too: invert once, not once per axis
            if not (ax.xaxis_inverted() if which == "x" else ax.yaxis_inverted()):
                (ax.invert_xaxis if which == "x" else ax.invert_yaxis)()

    def finish(self, drawing) -> None:
        """Colour bars, the legend (plotly shows one for two or more entries, or when asked) and the title."""
        for mappable, axes, title in self.colorbars.values():
            bar = drawing.colorbar(mappable, ax=axes, shrink=0.9, pad=0.02)
            if title:
                bar.set_label(title)
        show = self.layout.get("showlegend")
        if self.legend and show is not False and (len(self.legend) > 1 or show is True):
            legend_spec = self.layout.get("legend") or {}
            legend = drawing.legend(list(self.legend.values()), list(self.legend), loc="outside right upper",
                                    frameon=False, title=_text(legend_spec.get("title")) or None)
            legend_inches = legend.get_window_extent(drawing.canvas.get_renderer()).width / drawing.dpi
        else:
            legend_inches = 0.0
        title = _text(self.layout.get("title"))
        if title:
            # centred over the plots, not the legend, and wrapped to their width (~10 characters an inch at 12 pt)
            free = drawing.get_figwidth() - legend_inches
            width = max(30, int(free * 10))
            drawing.suptitle(_wrap(title, width),
                             x=free / 2 / drawing.get_figwidth())


def _wrap(text: str, width: int) -> str:
    """Lines of at most `width` characters, broken at spaces only ("refusal-phrase" stays whole)."""
    return "\n".join("\n".join(textwrap.wrap(line, width, break_on_hyphens=False)) or line for line in text.split("\n"))


def _plain_log_formatter(**kwargs):
    """matplotlib's log-axis labelling (which minor ticks get a label on a short axis) with plain numbers."""
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        def _num_to_string(self, x, vmin, vmax):
            return f"{x:g}"

    return PlainLogFormatter(**kwargs)


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around cell centres (halfway between neighbours; a lone cell is 1 wide)."""
    centres = np.asarray(centres, dtype=float)
    if len(centres) == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    middle = (centres[:-1] + centres[1:]) / 2
    return np.concatenate([[centres[0] - (middle[0] - centres[0])], middle, [centres[-1] + (centres[-1] - middle[-1])]])
