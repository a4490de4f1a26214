"""The papermill runner: every notebook runs on the smoke profile; caching, resumption and failures."""
import json

import nbformat
import pytest

from safety_neurons.config import load_config
from safety_neurons.io import read_metrics
from safety_neurons.runner import NOTEBOOKS_DIR, StageError, discover_stages, run, select_stages, stage_keys


def write_notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "smoke"\noverrides = {}', metadata={"tags": ["parameters"]})
    nb["cells"] = [params, *(nbformat.v4.new_code_cell(s) for s in sources)]
    nb["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


WRITE_METRICS = "from safety_neurons import load_config, stage_metrics\nstage_metrics(load_config(profile, overrides), '{stem}', {{'x': 1}})"


@pytest.mark.usefixtures("garak_prepared")
def test_every_notebook_runs_on_smoke_and_writes_parsable_metrics(run_root):
    results = run("smoke", progress=False)
    stems = [s.stem for s in discover_stages()]
    assert [r.stem for r in results] == stems
    assert all(r.status == "ran" for r in results)
    cfg = load_config("smoke")
    for stem in stems:
        metrics = read_metrics(cfg.metrics_path(stem))
        assert metrics, stem
        executed = nbformat.read(cfg.run_dir / "notebooks" / f"{stem}.ipynb", as_version=4)
        assert any(c.get("outputs") for c in executed.cells if c.cell_type == "code")
    setup = read_metrics(cfg.metrics_path("00_setup"))
    assert setup["model.n_neurons"] == setup["model.n_layers"] * setup["model.d_mlp"] == 2 * 64
    assert setup["data.harmbench.evaluation.n"] == 4
    finding = read_metrics(cfg.metrics_path("02_change_scores"))
    assert finding["n_prompts"] == cfg.finding_prompts and finding["n_tokens"] > 0
    assert 0 < finding["top5pct.share_of_sq_change"] <= 1
    assert sum(v for k, v in finding.items() if k.startswith("top5pct.layer_share.")) == pytest.approx(1)
    manifest = json.loads((cfg.run_dir / "manifest.json").read_text())
    assert manifest["packages"]["torch"].startswith("2.13")
    assert manifest["seeds"] == {"seed": 0, "split_seed": 0, "train_seeds": [0]}
    assert all(s["current"] for s in manifest["stages"].values())

    # unchanged inputs: nothing runs again
    again = run("smoke", progress=False)
    assert all(r.status == "skipped" for r in again)
    assert again[0].metrics == setup


def test_committed_notebooks_have_no_outputs_and_a_parameters_cell():
    for stage in discover_stages():
        nb = nbformat.read(stage.path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), stage.stem
        assert "parameters" in code[0].metadata.get("tags", []), stage.stem


def test_stage_keys_chain_and_change_with_the_config():
    stages = discover_stages()
    a = stage_keys(stages, load_config("smoke"))
    b = stage_keys(stages, load_config("smoke", max_new_tokens=9))
    assert a == stage_keys(stages, load_config("smoke"))
    assert all(a[s.stem] != b[s.stem] for s in stages)
    # where the run is written does not change what it computes
    assert a == stage_keys(stages, load_config("smoke", run_name="elsewhere"))


def test_stage_selection(tmp_path):
    for name in ("00_a", "01_b", "02_c"):
        write_notebook(tmp_path / f"{name}.ipynb", "pass")
    stages = discover_stages(tmp_path)
    assert [s.stem for s in select_stages(stages, only=1, from_=None)] == ["01_b"]
    assert [s.stem for s in select_stages(stages, only=None, from_=1)] == ["01_b", "02_c"]
    with pytest.raises(StageError, match="no such stage"):
        select_stages(stages, only=7, from_=None)
    with pytest.raises(StageError, match="not both"):
        select_stages(stages, only=1, from_=1)


def test_only_refuses_to_run_a_stage_whose_upstream_is_unfinished(tmp_path, run_root):
    write_notebook(tmp_path / "00_a.ipynb", WRITE_METRICS.format(stem="00_a"))
    write_notebook(tmp_path / "01_b.ipynb", WRITE_METRICS.format(stem="01_b"))
    with pytest.raises(StageError, match="needs 00_a finished"):
        run("smoke", only=1, notebooks_dir=tmp_path, progress=False)


def test_a_failing_stage_stops_the_run_keeps_finished_ones_and_resumes(tmp_path, run_root):
    write_notebook(tmp_path / "00_ok.ipynb", WRITE_METRICS.format(stem="00_ok"))
    write_notebook(tmp_path / "01_boom.ipynb", "raise ValueError('boom')")
    with pytest.raises(StageError, match=r"01_boom failed.*ValueError: boom") as err:
        run("smoke", notebooks_dir=tmp_path, progress=False)
    cfg = load_config("smoke")
    out = cfg.run_dir / "notebooks"
    assert (out / "01_boom.failed.ipynb").exists() and str(out / "01_boom.failed.ipynb") in str(err.value)
    assert not (out / "01_boom.ipynb").exists()
    assert (out / "00_ok.ipynb").exists()

    # fix the notebook: the finished stage is not redone, the failed one runs
    write_notebook(tmp_path / "01_boom.ipynb", WRITE_METRICS.format(stem="01_boom"))
    results = run("smoke", notebooks_dir=tmp_path, progress=False)
    assert [(r.stem, r.status) for r in results] == [("00_ok", "skipped"), ("01_boom", "ran")]
    assert not (out / "01_boom.failed.ipynb").exists()


def test_a_stage_that_writes_no_metrics_fails(tmp_path, run_root):
    write_notebook(tmp_path / "00_quiet.ipynb", "x = 1")
    with pytest.raises(StageError, match="wrote no metrics"):
        run("smoke", notebooks_dir=tmp_path, progress=False)


def test_the_project_notebooks_are_numbered_from_zero():
    stages = discover_stages(NOTEBOOKS_DIR)
    assert stages[0].stem == "00_setup"


def test_the_runner_refuses_a_distributed_launch(run_root, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(StageError, match="runs in one process.*torchrun"):
        run("smoke", progress=False)
