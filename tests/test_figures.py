"""save_figure and render_run: every format written atomically, offline and without a browser; figures
re-rendered from their JSON; nothing the static copy lacks goes unsaid."""
from __future__ import annotations

import json
import warnings
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import pytest

from safety_neurons import load_config
from safety_neurons.study import figures
from safety_neurons.study.figures import (FigureWarning, figure_problems, render_run, save_figure, to_matplotlib,
                                          write_figure)

STATIC = ("png", "svg", "pdf")


@contextmanager
def no_figure_warnings():
    """Fail on any FigureWarning: these figures must convert completely."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FigureWarning)
        yield


@pytest.fixture()
def no_browser(tmp_path, monkeypatch):
    """A machine with no Chromium: nothing on PATH, no BROWSER_PATH."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("BROWSER_PATH", raising=False)


@pytest.fixture()
def cfg(run_root):
    return load_config("smoke")


def facet_figure():
    """Like stage 07's: px facets, log x, a fixed y range, colours by arm."""
    table = pd.DataFrame([{"k": k, "accuracy": 0.5 + 0.1 * i, "arm": arm, "test": test}
                          for i, k in enumerate((1, 10, 100)) for arm in ("safety", "random") for test in ("a", "b")])
    fig = px.line(table, x="k", y="accuracy", color="arm", facet_col="test", markers=True, log_x=True, title="Facets")
    fig.update_yaxes(range=[0, 1.02])
    return fig


def bar_figure():
    fig = go.Figure()
    fig.add_bar(x=["a", "b"], y=[0.4, 0.6], name="first", error_y=dict(type="data", array=[0.1, 0.05]))
    fig.add_bar(x=["a", "b"], y=[0.3, 0.2], name="second")
    fig.add_hline(y=0.5, line_dash="dash", annotation_text="half")
    fig.update_layout(title="Bars", xaxis_title="group", yaxis_title="value")
    return fig


def assert_valid(path: Path, fmt: str) -> None:
    data = path.read_bytes()
    if fmt == "png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
    elif fmt == "svg":
        assert ET.fromstring(data).tag.endswith("svg")
    elif fmt == "pdf":
        assert data.startswith(b"%PDF")
    elif fmt == "json":
        assert json.loads(data)["data"]
    elif fmt == "html":
        assert b"<html" in data


def test_save_figure_writes_every_format_offline_without_a_browser(cfg, no_browser):
    fig = bar_figure()
    with no_figure_warnings():
        paths = save_figure(fig, cfg, "03_bars")
    folder = cfg.run_dir / "figures"
    assert set(paths) == {"json", "html", *STATIC}
    for fmt, path in paths.items():
        assert Path(path) == folder / f"03_bars.{fmt}"
        assert_valid(Path(path), fmt)
    html = (folder / "03_bars.html").read_text()
    assert '<script charset="utf-8" src="plotly.min.js"></script>' in html
    assert "cdn.plot.ly" not in html and "https://" not in html
    bundle = folder / "plotly.min.js"
    assert bundle.stat().st_size > 1_000_000 and bundle.read_text(encoding="utf-8").lstrip().startswith("/**")
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], "a temporary file was left behind"


def test_the_json_is_the_plotly_figure(cfg):
    import plotly.io as pio

    fig = facet_figure()
    with no_figure_warnings():
        paths = save_figure(fig, cfg, "07_facets", png=False)
    assert set(paths) == {"json", "html"}
    assert Path(paths["json"]).read_text() == fig.to_json()
    back = json.loads(pio.read_json(paths["json"]).to_json())  # it reads back (less empty dicts such as font: {})
    assert back["data"] == json.loads(fig.to_json())["data"] and back["layout"]["yaxis"]["range"] == [0, 1.02]


def test_plotly_js_is_written_once_per_folder_and_replaced_when_damaged(cfg):
    with no_figure_warnings():
        save_figure(bar_figure(), cfg, "03_one", png=False)
        bundle = cfg.run_dir / "figures" / "plotly.min.js"
        first = bundle.stat().st_mtime_ns
        save_figure(bar_figure(), cfg, "03_two", png=False)
        assert bundle.stat().st_mtime_ns == first
        bundle.write_text("truncated")  # a run killed while plotly wrote it, or an older plotly's
        save_figure(bar_figure(), cfg, "03_three", png=False)
    assert bundle.stat().st_size > 1_000_000


def test_render_run_rerenders_from_the_json_alone(cfg, no_browser):
    with no_figure_warnings():
        save_figure(bar_figure(), cfg, "03_bars", png=False)
        save_figure(facet_figure(), cfg, "07_facets", png=False)
    folder = cfg.run_dir / "figures"
    for path in folder.iterdir():
        if path.suffix != ".json":
            path.unlink()
    written = render_run(cfg.run_dir)
    assert sorted(p.name for p in written) == sorted(f"{n}.{f}" for n in ("03_bars", "07_facets") for f in ("html", *STATIC))
    for path in written:
        assert_valid(path, path.suffix[1:])
    assert (folder / "plotly.min.js").exists()
    assert [p.name for p in render_run(cfg.run_dir, formats=("svg",))] == ["03_bars.svg", "07_facets.svg"]


def test_render_run_names_each_figure_that_has_no_json(cfg, capsys):
    folder = cfg.run_dir / "figures"
    folder.mkdir(parents=True)
    (folder / "03_causal_effect.html").write_text("<html></html>")  # written before figures had JSON
    (folder / "08_probe_accuracy.html").write_text("<html></html>")
    assert render_run(cfg.run_dir) == []
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert "03_causal_effect" in lines[0] and "--only 3 --force" in lines[0] and "no 03_causal_effect.json" in lines[0]
    assert "08_probe_accuracy" in lines[1] and "--only 8" in lines[1]
    assert figure_problems(cfg.run_dir) == lines


def test_render_run_without_figures_and_with_an_unknown_format(cfg, capsys):
    assert render_run(cfg.run_dir) == []
    assert "no figures folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="json"):
        render_run(cfg.run_dir, formats=("json",))


def test_an_unsupported_trace_type_warns_and_the_rest_is_still_drawn(cfg):
    fig = go.Figure()
    fig.add_scatter(x=[1, 2, 3], y=[3, 1, 2], name="line")
    fig.add_trace(go.Pie(values=[1, 2], labels=["u", "v"], name="shares"))
    with pytest.warns(FigureWarning, match=r"figure 04_mixed: .*trace 1 'shares' of type 'pie'"):
        paths = save_figure(fig, cfg, "04_mixed")
    assert set(paths) == {"json", "html", *STATIC}
    drawing, notes = to_matplotlib(fig, "04_mixed")
    assert len(notes) == 1 and len(drawing.axes[0].get_lines()) == 1


def test_render_run_prints_what_the_static_copy_lacks(cfg, capsys):
    fig = go.Figure(go.Pie(values=[1, 2]))
    with pytest.warns(FigureWarning):
        save_figure(fig, cfg, "04_pie")
    render_run(cfg.run_dir, formats=("png",))
    assert "figure 04_pie" in capsys.readouterr().err


def test_a_format_that_cannot_be_written_warns_and_the_others_are_written(cfg, monkeypatch):
    real = figures._write_static

    def no_svg(drawing, path, fmt):
        if fmt == "svg":
            raise OSError("disk full")
        real(drawing, path, fmt)

    monkeypatch.setattr(figures, "_write_static", no_svg)
    with pytest.warns(FigureWarning, match="figure 03_bars: svg not written: OSError: disk full"):
        paths = save_figure(bar_figure(), cfg, "03_bars")
    assert set(paths) == {"json", "html", "png", "pdf"}
    assert not (cfg.run_dir / "figures" / "03_bars.svg").exists()
    problems = figure_problems(cfg.run_dir)
    assert len(problems) == 1 and "figure 03_bars: no svg" in problems[0]


def test_a_converter_failure_costs_the_static_copies_only(tmp_path, monkeypatch):
    def broken(fig, name):
        raise RuntimeError("bug")

    monkeypatch.setattr(figures, "to_matplotlib", broken)
    written, problems = write_figure(bar_figure(), tmp_path, "03_bars")
    assert set(written) == {"json", "html"}
    assert problems == ["figure 03_bars: png, svg, pdf not written: the static converter failed: RuntimeError: bug"]


def test_static_copy_keeps_log_axes_ranges_facets_and_legend():
    drawing, notes = to_matplotlib(facet_figure(), "07_facets")
    drawing.canvas.draw()
    assert notes == []
    left, right = drawing.axes[:2]
    assert left.get_xscale() == "log" and right.get_xscale() == "log"
    assert left.get_ylim() == pytest.approx((0, 1.02)) and right.get_ylim() == pytest.approx((0, 1.02))
    assert [left.get_title(), right.get_title()] == ["test=a", "test=b"]
    assert any(t.get_text() for t in right.get_yticklabels()), "the second facet lost its y scale"
    legend = drawing.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["safety", "random"] and legend.get_title().get_text() == "arm"
    assert drawing.get_suptitle() == "Facets"


def test_static_copy_of_a_log_range_and_categories():
    fig = go.Figure(go.Scatter(x=[1, 10, 100], y=[0.1, 0.5, 0.9], mode="markers"))
    fig.update_layout(xaxis=dict(type="log", range=[0, 2], title="rank"), yaxis_title="share")
    drawing, _ = to_matplotlib(fig)
    ax = drawing.axes[0]
    assert ax.get_xlim() == pytest.approx((1, 100)) and ax.get_xlabel() == "rank"
    drawing, _ = to_matplotlib(bar_figure())
    drawing.canvas.draw()
    ax = drawing.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    assert len(ax.patches) == 4 and ax.get_xlabel() == "group" and ax.get_ylabel() == "value"
    assert "half" in [t.get_text() for t in ax.texts]


def test_static_copy_of_a_heatmap_has_its_colour_bar_and_cell_values():
    matrix = pd.DataFrame([[1.0, 0.25], [0.25, 1.0]], index=["seed0", "seed1"], columns=["seed0", "seed1"])
    fig = px.imshow(matrix, text_auto=".2f", zmin=0, zmax=1, labels={"color": "overlap"})
    drawing, notes = to_matplotlib(fig)
    assert notes == []
    heat = drawing.axes[0]
    assert sorted(t.get_text() for t in heat.texts) == ["0.25", "0.25", "1.00", "1.00"]
    assert heat.yaxis_inverted()  # px.imshow puts the first row on top
    colorbar = [ax for ax in drawing.axes if ax is not heat]
    assert len(colorbar) == 1 and colorbar[0].get_ylabel() == "overlap"


def test_typed_arrays_and_nulls_decode():
    fig = go.Figure(go.Scatter(x=np.arange(3), y=np.array([1.0, np.nan, 3.0])))
    spec = json.loads(fig.to_json())
    assert spec["data"][0]["y"]["bdata"]  # plotly stores numpy data base64-encoded
    np.testing.assert_array_equal(figures._array(spec["data"][0]["y"]), [1.0, np.nan, 3.0])
    np.testing.assert_array_equal(figures._array([1, None, 3]), [1.0, np.nan, 3.0])
    assert list(figures._array(["a", "b"])) == ["a", "b"]



def test_whole_numbered_values_keep_a_fine_scale():
    """Only positions (layers, steps) get whole-number ticks: a safety score that happens to be 0 or 1 at
    every step still reads on a 0-1 scale."""
    fig = go.Figure(go.Scatter(x=[0, 1, 2], y=[0, 0, 1]))
    fig.update_layout(yaxis_range=[-0.02, 1.02])
    drawing, _ = to_matplotlib(fig)
    drawing.canvas.draw()
    ax = drawing.axes[0]
    assert len([t for t in ax.get_yticks() if -0.02 <= t <= 1.02]) > 2
    assert all(float(t).is_integer() for t in ax.get_xticks())
