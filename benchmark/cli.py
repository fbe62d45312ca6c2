"""`python -m benchmark`: run a suite, list what exists, rebuild or compare tables."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from sae.cli import DefaultsHelpFormatter, log_to_stderr, run_command

from .run_config import add_dtype_argument, batch_size_value, split_names

EPILOG = """examples:
  python -m benchmark run --suite multi_object   # the shipped shapes model: plain, attend_excite, sepen (CPU)
  python -m benchmark ls suites
  python -m sae tiny-model /tmp/tiny
  python -m benchmark run --suite multi_object --model /tmp/tiny --methods plain,attend_excite,sepen \\
      --num-seeds 2 --limit 3 --steps 20 --out runs/tiny
  python -m benchmark run --suite ae276 --model CompVis/stable-diffusion-v1-4 --methods plain,attend_excite,sepen \\
      --seeds 0-63 --out runs/ae276        # the paper's protocol (GPU: float16, batches that fit)
  torchrun --nproc_per_node 2 -m benchmark run ...      # the same, split across processes
  python -m benchmark report runs/tiny
  python -m benchmark report runs/tiny --html                        # runs/tiny/report/index.html
  python -m benchmark trace runs/tiny --prompts 2   # attention maps of 2 prompts, shown by the HTML report
  python -m benchmark score runs/tiny --metrics presence,clip --metric-model presence=DIR --metric-model clip=FILE
  python -m benchmark score runs/tiny --metrics blip,fid --metric-model blip=DIR --metric-model blip.itm=DIR \
      --metric-model clip=DIR --metric-model fid=inception.pth --metric-model fid.reference=REAL_IMAGES_DIR
  python -m benchmark score GENEVAL_OUTDIR --layout geneval --metric-model geneval.detector=DIR \\
      --metric-model geneval.clip=DIR              # GenEval's own image folders -> GENEVAL_OUTDIR_scored
  python -m benchmark compare runs/a runs/b
  python -m benchmark paper --num-seeds 2 --limit 4      # the paper's tables on the shapes world (CPU)
  python -m benchmark paper --model CompVis/stable-diffusion-v1-4 --large-checkpoint large/sepen.safetensors
"""


def _defaults(key: str) -> str:
    from .domains import domains

    def one(domain):
        own = "".join(f"; {values[key] or 'none'} for --suite {suite}"
                      for suite, values in domain.suite_defaults.items() if key in values)
        return f"{domain.run_defaults[key] or 'none'} ({domain.name} models{own})"

    return ", ".join(one(d) for d in domains())


def _release_guidance() -> str:
    """Each method's release guidance, as "sepen, sepen+ae 6.0; plain, attend_excite <SD's>"."""
    from .methods import METHODS

    by_value: dict = {}
    for name, cls in METHODS.items():
        if "guidance" in cls.release_sampling:
            by_value.setdefault(cls.release_sampling["guidance"], []).append(name)
    return "; ".join(f"{', '.join(names)} {value}" for value, names in by_value.items())


def _domains():
    from .domains import domains

    return domains()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmark", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="generate a suite with several methods, score it, write the tables",
                              formatter_class=DefaultsHelpFormatter)
    run.add_argument("--suite", required=True, help="suite name (`ls suites`) or a .jsonl file")
    run.add_argument("--model", default=None,
                     help="hub id or local diffusers pipeline folder (default: the shipped shapes-world model)")
    run.add_argument("--methods", default=None, help="comma-separated (`ls methods`); default: " + _defaults("methods"))
    seeds = run.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", help="e.g. 0-63 or 0,3,5-7")
    seeds.add_argument("--num-seeds", type=int, help="seeds 0..N-1; default: " + _defaults("num_seeds"))
    run.add_argument("--limit", type=int, help="only the first N prompts of the suite")
    run.add_argument("--steps", default=None, metavar="N|METHOD=N,...",
                     help="denoising steps, for every method (50) or per method (sepen=50,plain=30) or both "
                          "(30,sepen=50); default: " + _defaults("steps") + ", natural models taking each "
                          "method's release settings")
    run.add_argument("--guidance", default=None, metavar="G|METHOD=G,...",
                     help="classifier-free guidance scale, for every method or per method as --steps; default: "
                          "each method's release on natural models (" + _release_guidance() + "), " + ", ".join(
                         f"{d.run_defaults['guidance']} ({d.name} models)"
                         for d in _domains() if not d.release_sampling))
    run.add_argument("--batch-size", type=batch_size_value, default="auto", metavar="N|auto",
                     help="images per pipeline call; auto: 4 on the CPU, on a GPU the most its memory holds (up to "
                          "16)")
    add_dtype_argument(run)
    run.add_argument("--out", type=Path, default=None,
                     help="run folder, resumed if it exists (default: runs/<suite name>)")
    run.add_argument("--device", default="auto", help="cuda, cpu, ... (default: cuda when present)")
    run.add_argument("--processes", default=None, metavar="N|auto",
                     help="split the run across N processes on this machine (torchrun, one thread each; auto: "
                          "one per CPU core, at most 8, when running on the CPU, else 1); default: "
                          + _defaults("processes"))
    run.add_argument("--metrics", default=None,
                     help="comma-separated (`ls metrics`) or module:Class; default: " + _defaults("metrics"))
    run.add_argument("--metric-model", action="append", default=[], metavar="METRIC=PATH",
                     help="weights for a metric: a local path or hub id (repeatable); also blip.itm=, "
                          "fid.reference=DIR|FILE.npz, fid.cache=DIR (docs/metrics.md)")
    run.add_argument("--option", action="append", default=[], metavar="METHOD.FIELD=VALUE",
                     help="a method's option (repeatable; VALUE read as JSON when it parses, else as text), "
                          "e.g. sepen.steps=50; the flags below set SepEn's")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--no-html", action="store_true", help="do not write the HTML report (RUN_DIR/report/)")
    run.add_argument("--attention-prompts", type=int, default=2,
                     help="prompts whose cross-attention maps the HTML report shows (plain beside sepen)")
    from .methods import METHODS

    sharing: dict = {}  # each Options class's flags once, for the methods that share it
    for cls in METHODS.values():
        if cls.Options is not None:
            sharing.setdefault(cls.Options, []).append(cls)
    for classes in sharing.values():
        classes[0].add_arguments(run, f"{' and '.join(c.name for c in classes)} options (defaults: the method's, "
                                      "unless the model's domain sets its own: docs/protocol.md)")

    ls = commands.add_parser("ls", help="list suites, methods or metrics")
    ls.add_argument("what", choices=["suites", "methods", "metrics"])
    ls.add_argument("--model", help="with methods: only those that run on this model's family (a local folder)")

    report = commands.add_parser("report", help="rebuild samples.jsonl and the tables of a run folder")
    report.add_argument("run_dir", type=Path)
    report.add_argument("--html", action="store_true",
                        help="also write the static HTML report: RUN_DIR/report/index.html")

    trace = commands.add_parser("trace", help="regenerate a few prompts with their cross-attention maps into "
                                              "RUN_DIR/attention/ (plain beside sepen; the HTML report shows them)",
                                formatter_class=DefaultsHelpFormatter)
    trace.add_argument("run_dir", type=Path)
    trace.add_argument("--prompts", type=int, default=2, help="prompts to trace (two or more objects first)")
    trace.add_argument("--device", default="auto")

    score = commands.add_parser("score", help="score a run's images from its records (never regenerates)",
                                formatter_class=DefaultsHelpFormatter)
    score.add_argument("run_dir", type=Path, help="a run folder, or with --layout geneval GenEval's image folder")
    score.add_argument("--metrics", help="comma-separated; default: the run's own (geneval for --layout geneval)")
    score.add_argument("--metric-model", action="append", default=[], metavar="METRIC=PATH")
    score.add_argument("--rescore", action="store_true", help="score every image again, not only unscored ones")
    score.add_argument("--device", default="auto")
    score.add_argument("--layout", choices=["run", "geneval"], default="run",
                       help="geneval: RUN_DIR is GenEval's own image folder (<index>/metadata.jsonl, "
                            "<index>/samples/<n>.png), imported into a run folder beside it and scored there")
    score.add_argument("--out", type=Path, default=None, help="with --layout geneval: the run folder to write "
                       "(default: RUN_DIR_scored; imported again, only missing images are added)")
    score.add_argument("--method-name", default=None,
                       help="with --layout geneval: the method the images are recorded as (default: external)")

    compare = commands.add_parser("compare", help="print the per-metric deltas of run B against run A, with paired "
                                   "intervals where both hold the same prompts and seeds (two models on one suite)")
    compare.add_argument("run_a", type=Path)
    compare.add_argument("run_b", type=Path)

    from .paper import add_arguments

    add_arguments(commands.add_parser(
        "paper", help="regenerate the paper's main and large-scale tables", formatter_class=DefaultsHelpFormatter,
        description="The paper's main and large-scale tables. Every setting of the protocol (training, sampling per "
                    "method, each metric), the release's value, ours and the switch: docs/protocol.md."))
    return parser


def per_method(value: str | None, kind, option: str) -> tuple:
    """`--steps` / `--guidance`: "V" (every method), "METHOD=V,..." (those methods) or both ("V,METHOD=V")."""
    if value is None:
        return None, {}
    common, methods = None, {}
    for part in (p.strip() for p in str(value).split(",") if p.strip()):
        name, sep, number = part.rpartition("=")
        try:
            parsed = kind(number)
        except ValueError:
            raise ValueError(f"{option} takes a number or METHOD=NUMBER pairs, got {part!r}") from None
        if sep:
            methods[name.strip()] = parsed
        else:
            common = parsed
    return common, methods


def _metric_models(pairs: list[str]) -> dict:
    models = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep:
            raise ValueError(f"--metric-model takes METRIC=PATH, got {pair!r}")
        models[name] = path
    return models


def _method_options(pairs: list[str]) -> dict:
    """--option METHOD.FIELD=VALUE pairs as {method: {field: value}}; VALUE is JSON when it parses."""
    options: dict = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        method, dot, name = key.rpartition(".")
        if not sep or not dot or not method or not name:
            raise ValueError(f"--option takes METHOD.FIELD=VALUE, got {pair!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        options.setdefault(method, {})[name] = value
    return options


def cmd_run(args) -> int:
    from sae.sampling import parse_seeds

    from .domains import default_model, get_domain, model_domain
    from .generate import RunConfig, check_run_folder_is_ours, run
    from .methods import method_class
    from .report import printed_tables

    model = args.model or str(default_model())
    steps, steps_per = per_method(args.steps, int, "--steps")
    guidance, guidance_per = per_method(args.guidance, float, "--guidance")
    per_method_sampling: dict = {}
    for key, values in (("steps", steps_per), ("guidance", guidance_per)):
        for name, value in values.items():
            per_method_sampling.setdefault(name, {})[key] = value
    methods = split_names(args.methods) if args.methods is not None else None
    options = _method_options(args.option)  # --option beats a method's flags
    for name in methods if methods is not None else split_names(get_domain(model_domain(model)).defaults_for(
            args.suite)["methods"]):
        options[name] = {**method_class(name).options_from_args(args), **options.get(name, {})}
    config = RunConfig.resolve(
        args.suite, model, methods=methods, seeds=parse_seeds(args.seeds) if args.seeds is not None else None,
        num_seeds=args.num_seeds, steps=steps, guidance=guidance, per_method=per_method_sampling, options=options,
        metrics=split_names(args.metrics) if args.metrics is not None else None, limit=args.limit,
        batch_size=args.batch_size, dtype=args.dtype, out=args.out or Path("runs") / Path(args.suite).stem,
        device=args.device,
        metric_models=_metric_models(args.metric_model), progress=not args.no_progress, html=not args.no_html,
        attention_prompts=args.attention_prompts)
    from sae.models import resolve_device

    from .processes import launched, relaunch, resolve_processes

    # a refusal here is one line from this process, before any torchrun rank starts
    config.preflight()
    check_run_folder_is_ours(config.out)
    default_processes = get_domain(model_domain(model)).defaults_for(args.suite)["processes"]
    processes = resolve_processes(args.processes if args.processes is not None else default_processes,
                                  on_cpu=resolve_device(args.device).type == "cpu")
    if processes > 1 and not launched():  # this command again, as that many ranks (benchmark.processes)
        return relaunch(args.argv, processes)
    out = run(config)
    if out is not None:  # the main process
        print(printed_tables(out), end="")
        print(f"wrote {out}/samples.jsonl, summary.csv, summary.md, results.json"
              + ("" if args.no_html else ", report/index.html"))
    return 0


def cmd_ls(args) -> int:
    if args.what == "suites":
        from .suites import available_suites, load_suite

        for domain in sorted(_domains(), key=lambda d: d.default_model is not None):
            print(f"{domain.title}, {domain.suites_dir}:")
            for name in available_suites(domain.suites_dir):
                prompts = load_suite(name, domain.suites_dir)
                categories = list(dict.fromkeys(p.category for p in prompts))
                description = domain.suite_descriptions.get(name, "")
                print(f"  {name:16s} {len(prompts):4d} prompts  {description}  [{', '.join(categories)}]")
    elif args.what == "methods":
        from sae.models import model_family

        from .methods import METHODS

        family = model_family(args.model) if args.model else None
        for name, cls in METHODS.items():
            if family is None or cls.families is None or family in cls.families:
                runs_on = ", ".join(f"{f} (experimental)" if f in cls.experimental_families else f
                                    for f in cls.families) if cls.families else "any"
                print(f"{name:16s} {cls.description}  [families: {runs_on}]")
    else:
        from .metrics import METRICS

        if not METRICS:
            print("(no metrics registered)")
        for name, cls in METRICS.items():
            columns = ", ".join(f"{c} ({'higher' if up else 'lower'} is better)" for c, up in cls.columns.items())
            print(f"{name:16s} {cls.description}  columns: {columns}")
    return 0


def cmd_report(args) -> int:
    from .report import printed_tables, write_report

    write_report(args.run_dir)
    print(printed_tables(args.run_dir), end="")
    if args.html:
        from .html_report import write_html_report

        print(f"wrote {write_html_report(args.run_dir)}")
    return 0


def cmd_trace(args) -> int:
    from .html_report import REPORT_DIR, write_html_report
    from .trace import TRACE_DIR, write_traces

    if not (args.run_dir / "run_config.json").exists():
        raise FileNotFoundError(f"{args.run_dir} is not a benchmark run folder (no run_config.json)")
    if args.prompts < 0:  # 0 clears the traces; below it is a typo, not a wish to delete them
        raise ValueError(f"--prompts {args.prompts}: give N >= 0 prompts to trace")
    traced = write_traces(args.run_dir, args.prompts, device=args.device)
    print(f"traced {len(traced)} prompts into {args.run_dir / TRACE_DIR}"
          + (f": {', '.join(traced)}" if traced else ""))
    if (args.run_dir / REPORT_DIR / "index.html").exists():  # the report shows what the folder now holds
        print(f"wrote {write_html_report(args.run_dir)}")
    return 0


def cmd_score(args) -> int:
    from .scoring import rescore
    from .report import printed_tables

    names = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    run_dir = args.run_dir
    if args.layout == "geneval":
        from .geneval.layout import import_layout

        names = names or ["geneval"]
        run_dir, written = import_layout(args.run_dir, args.out, args.method_name or "external")
        logging.getLogger("benchmark").info(f"imported {written} new images of {args.run_dir} into {run_dir}")
    elif args.out is not None or args.method_name is not None:
        raise ValueError("--out and --method-name are for --layout geneval (a run folder is scored in place)")
    rescore(run_dir, names, _metric_models(args.metric_model), device=args.device, again=args.rescore)
    print(printed_tables(run_dir), end="")
    return 0


def cmd_compare(args) -> int:
    from .records import read_run_config
    from .report import compare, compare_markdown, method_labels

    labels = {**method_labels(read_run_config(args.run_a)), **method_labels(read_run_config(args.run_b))}
    print(compare_markdown(compare(args.run_a, args.run_b), labels), end="")
    return 0


def cmd_paper(args) -> int:
    from .paper import cmd_paper as paper

    return paper(args, _metric_models(args.metric_model))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what `run --processes N` starts again
    log_to_stderr("benchmark", "sae")
    from sae.checkpoint import CheckpointError
    from sae.finetune import TrainingDivergedError
    from sae.models import ModelNotFoundError

    from .processes import say

    handlers = {"run": cmd_run, "ls": cmd_ls, "report": cmd_report, "score": cmd_score, "compare": cmd_compare,
                "paper": cmd_paper, "trace": cmd_trace}
    return run_command(handlers[args.command], args, (ModelNotFoundError, CheckpointError, TrainingDivergedError,
                                                      ValueError, FileNotFoundError, json.JSONDecodeError), say)


if __name__ == "__main__":
    sys.exit(main())
