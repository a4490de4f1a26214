"""A run directory belongs to one config: overrides get their own, direct notebook runs land in their
config's, a failed --force keeps what was finished, damaged files are named and recomputed."""
import json

import papermill as pm
import pytest

from safety_neurons.cli import main
from safety_neurons.config import ConfigError, claim_run_dir, load_config, notebook_config
from safety_neurons.io import metrics_fingerprint, read_metrics
from safety_neurons.runner import StageError, run, state_path
from test_runner import write_notebook

# A stage that goes through notebook_config, as the project's notebooks do, and writes one artifact.
STAGE = """
from safety_neurons import notebook_config, stage_metrics
from safety_neurons.io import cached_json
cfg = notebook_config(globals())
calls = cached_json(cfg.artifact_dir('{stem}') / 'counted.json', 'k', lambda: 1 + sum(1 for _ in cfg.artifact_dir('{stem}').glob('*')))
stage_metrics(cfg, '{stem}', {{'max_new_tokens': cfg.max_new_tokens, 'calls': calls}})
"""


def stage(path, stem):
    write_notebook(path / f"{stem}.ipynb", STAGE.format(stem=stem))


def test_overrides_get_their_own_run_directory_and_leave_the_profiles_alone(tmp_path, run_root):
    stage(tmp_path, "00_a")
    run("smoke", notebooks_dir=tmp_path, progress=False)
    base = load_config("smoke")
    before = base.metrics_path("00_a").read_bytes()
    results = run("smoke", notebooks_dir=tmp_path, progress=False, overrides={"max_new_tokens": 5})
    other = load_config("smoke", {"max_new_tokens": 5})
    assert other.run_name.startswith("smoke-") and other.run_dir != base.run_dir
    assert results[0].status == "ran" and read_metrics(other.metrics_path("00_a"))["max_new_tokens"] == 5
    assert base.metrics_path("00_a").read_bytes() == before  # the profile's run is untouched
    # an override equal to the profile's value is the profile's config, and its run directory
    assert load_config("smoke", {"max_new_tokens": base.max_new_tokens}).run_dir == base.run_dir
    assert run("smoke", notebooks_dir=tmp_path, progress=False)[0].status == "skipped"


def test_metrics_record_the_config_they_came_from(tmp_path, run_root):
    stage(tmp_path, "00_a")
    run("smoke", notebooks_dir=tmp_path, progress=False)
    cfg = load_config("smoke")
    assert metrics_fingerprint(cfg.metrics_path("00_a")) == cfg.fingerprint()
    assert "config_fingerprint" not in read_metrics(cfg.metrics_path("00_a"))


def test_a_direct_papermill_run_with_overrides_lands_in_its_own_run_directory(tmp_path, run_root):
    stage(tmp_path, "00_a")
    run("smoke", notebooks_dir=tmp_path, progress=False)
    base = load_config("smoke")
    before = base.metrics_path("00_a").read_bytes()
    pm.execute_notebook(str(tmp_path / "00_a.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                        parameters={"profile": "smoke", "overrides": {"max_new_tokens": 3}}, progress_bar=False)
    other = load_config("smoke", {"max_new_tokens": 3})
    assert read_metrics(other.metrics_path("00_a"))["max_new_tokens"] == 3
    assert base.metrics_path("00_a").read_bytes() == before
    assert run("smoke", notebooks_dir=tmp_path, progress=False)[0].status == "skipped"  # runner and files agree


def test_a_papermill_typo_fails_loudly():
    with pytest.raises(ConfigError, match="unknown notebook parameter 'profle'"):
        notebook_config({"profile": "smoke", "overrides": {}, "profle": "smoke"})


def test_a_named_run_directory_of_another_config_is_refused(run_root):
    claim_run_dir(load_config("smoke", {"run_name": "mine"}))
    with pytest.raises(ConfigError, match=r"holds the results of another config \(max_new_tokens 8 -> 3\).*run_name"):
        claim_run_dir(load_config("smoke", {"run_name": "mine", "max_new_tokens": 3}))


def test_a_failed_force_keeps_the_previous_metrics(tmp_path, run_root):
    stage(tmp_path, "00_a")
    run("smoke", notebooks_dir=tmp_path, progress=False)
    cfg = load_config("smoke")
    before = cfg.metrics_path("00_a").read_bytes()
    write_notebook(tmp_path / "00_a.ipynb", "raise RuntimeError('boom')")
    with pytest.raises(StageError, match="boom"):
        run("smoke", notebooks_dir=tmp_path, progress=False, force=True)
    assert cfg.metrics_path("00_a").read_bytes() == before


def test_force_recomputes_the_stages_keyed_caches(tmp_path, run_root):
    stage(tmp_path, "00_a")
    cfg = load_config("smoke")
    assert run("smoke", notebooks_dir=tmp_path, progress=False)[0].metrics["calls"] == 1
    assert run("smoke", notebooks_dir=tmp_path, progress=False, force=True)[0].metrics["calls"] == 2
    assert json.loads((cfg.artifact_dir("00_a") / "counted.json").read_text())["value"] == 2


def test_a_damaged_artifact_is_named_and_its_stage_runs_again(tmp_path, run_root):
    stage(tmp_path, "00_a")
    stage(tmp_path, "01_b")
    run("smoke", notebooks_dir=tmp_path, progress=False)
    cfg = load_config("smoke")
    damaged = cfg.artifact_dir("00_a") / "counted.json"
    damaged.write_text(damaged.read_text()[:5])  # truncated
    with pytest.raises(StageError, match=f"00_a.*{damaged}"):
        run("smoke", only=1, notebooks_dir=tmp_path, progress=False)
    results = run("smoke", notebooks_dir=tmp_path, progress=False)
    assert [r.status for r in results] == ["ran", "skipped"]
    executed = (cfg.run_dir / "notebooks" / "00_a.ipynb").read_text()
    assert "unreadable cached artifact" in executed and "counted.json" in executed  # the cache named the file it recomputed


def test_a_damaged_state_file_means_not_finished(tmp_path, run_root):
    stage(tmp_path, "00_a")
    run("smoke", notebooks_dir=tmp_path, progress=False)
    path = state_path(load_config("smoke"), "00_a")
    path.write_text(path.read_text()[:7])
    assert run("smoke", notebooks_dir=tmp_path, progress=False)[0].status == "ran"


def test_ctrl_c_ends_with_one_line(monkeypatch, capsys):
    import safety_neurons.runner as runner

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run", interrupted)
    assert main(["run", "--profile", "smoke"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resume" in err[0]


def test_a_run_directory_recorded_before_a_field_existed_is_still_its_configs(run_root):
    """A field added since (at the value it had when it was added) neither moves an override run to a new
    directory nor makes the old directory 'another config'; given another value it does both."""
    import json

    from safety_neurons.config import ConfigError, claim_run_dir, load_config

    cfg = load_config("smoke", max_new_tokens=5)
    claim_run_dir(cfg)
    record = cfg.run_dir / "config.json"
    saved = json.loads(record.read_text())
    for field in ("sample_seeds", "recipe_regimes", "recipe_k_pcts"):
        saved["config"].pop(field)
    record.write_text(json.dumps(saved))
    assert claim_run_dir(load_config("smoke", max_new_tokens=5)) == cfg.run_dir
    other = load_config("smoke", max_new_tokens=5, sample_seeds=[7])
    assert other.run_dir != cfg.run_dir
    with pytest.raises(ConfigError, match="another config"):
        claim_run_dir(load_config("smoke", max_new_tokens=5, sample_seeds=[7], run_name=cfg.run_dir.name))


def test_a_profiles_later_change_to_an_added_field_changes_its_fingerprint(monkeypatch):
    """An added field is left out of the identity only at the value it had when it was added, never at the live
    profile's: a profile that changes it later computes something else, so it must not keep its old fingerprint."""
    from safety_neurons import config

    before = load_config("gemma").fingerprint()
    monkeypatch.setitem(config.PROFILES, "gemma", {**config.PROFILES["gemma"], "sft_epochs": 3.0})
    assert load_config("gemma").fingerprint() != before


def test_gemma_at_its_former_sft_rate_keeps_the_identity_its_runs_recorded():
    """`gemma` trained SFT at the DPO rate (sft_learning_rate None) until it moved to 1e-2: a run directory made
    then leaves the field out of its identity, the profile as it is now does not, so the two never share a
    fingerprint."""
    former, now = load_config("gemma", sft_learning_rate=None), load_config("gemma")
    assert "sft_learning_rate" not in former.identity()
    assert now.identity()["sft_learning_rate"] == now.sft_learning_rate != former.sft_learning_rate
    assert former.fingerprint() != now.fingerprint()
