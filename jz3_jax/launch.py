"""`python -m jz3_jax.launch STAGE --config configs/NAME.py [key.path=value ...]`: run one stage.

Exit codes: 0 done, 1 failed (or some sweep runs failed), 2 bad input (config, files, a stage
that is not implemented yet).
"""

from __future__ import annotations

import argparse
import json
import random
import sys

from jz3_jax.config import (Config, apply_overrides, build_spec, config_to_dict, load_config, parse_override,
                            save_config)
from jz3_jax.errors import UserError
from jz3_jax.runtime import paths
from jz3_jax.stages import STAGES, StageContext, get_stage


def build_parser() -> argparse.ArgumentParser:
    stages = "\n".join(f"  {s.name:<11} {s.help}" for s in STAGES.values())
    parser = argparse.ArgumentParser(
        prog="python -m jz3_jax.launch",
        description="Run one stage of the jz3_jax pipeline.",
        epilog=f"stages:\n{stages}\n\nexample:\n  python -m jz3_jax.launch pretrain --config configs/tiny.py optimizer.lr=3e-4",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("stage", metavar="STAGE", help="one of: " + ", ".join(STAGES))
    parser.add_argument("--config", required=True, help="configs/NAME.py (defines get_config()) or a resolved config.json")
    parser.add_argument("--run-dir", help="override run_dir (outputs go to RUN_DIR/STAGE/)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    parser.add_argument("--dry-run", action="store_true", help="check the config and print what would run; run nothing")
    parser.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                        help="sweep a key over values (repeatable: the product of all is run)")
    parser.add_argument("--sweep-file", help="Python file defining SWEEP, a list of override dicts")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    return parser


def resolve_config(config_path: str, overrides: list[str], run_dir: str | None) -> Config:
    """Load a config file, apply overrides, then `--run-dir`."""
    cfg = apply_overrides(load_config(config_path), overrides)
    if run_dir:
        cfg.run_dir = run_dir
    return cfg


def prefer_checkpoint_tokenizer(cfg: Config, overrides: list[str]) -> str | None:
    """A tokenizer named by the config file yields to the checkpoint's own (when it has one), unless
    `model.tokenizer` was given on the command line; returns a note saying so, or None."""
    from jz3_jax.checkpoint import own_tokenizer_path

    m = cfg.model
    if not m.tokenizer or not m.checkpoint or any(parse_override(o)[0] == "model.tokenizer" for o in overrides):
        return None
    own = own_tokenizer_path(m.checkpoint)
    if not own:
        return None
    note = (f"model.tokenizer={m.tokenizer!r} from the config file yields to the tokenizer of {m.checkpoint} "
            "(give model.tokenizer on the command line to force another)")
    m.tokenizer = ""
    return note


def run_stage(stage_name: str, cfg: Config, notes: tuple[str, ...] = ()) -> None:
    """Start the runtime (distributed, logging, seeds), write the resolved config, run the stage.

    In a multi-process job a process that fails tells the others and exits at once (see
    `runtime/peers.py`), so no process waits in a collective for a peer that is gone.
    """
    import numpy as np

    from jz3_jax.runtime import distributed, peers, rundir
    from jz3_jax.runtime.logs import setup_logging
    from jz3_jax.runtime.preemption import Preempted

    stage = get_stage(stage_name)
    function, spec_type = stage.load(), stage.spec_type()
    distributed.maybe_initialize(cfg.distributed)
    import jax

    stage_dir = paths.stage_dir(cfg.run_dir, stage_name)
    process, count = jax.process_index(), jax.process_count()
    logger = setup_logging(stage_dir / "logs", process)
    peers.start_watchdog()
    try:
        rundir.check_shared(stage_dir, cfg.run_dir)
        if process == 0:
            save_config(cfg, stage_dir / "config.json")
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        ctx = StageContext(stage_name, stage_dir, logger, process, count, paths.as_path(cfg.run_dir))
        logger.info("stage %s: run dir %s, %d process(es), %d device(s), backend %s", stage_name, cfg.run_dir,
                    count, jax.device_count(), jax.default_backend())
        for note in notes:
            logger.info("%s", note)
        if not paths.is_local(stage_dir):
            logger.info("log files of this process: %s", paths.local_mirror(stage_dir / "logs"))
        try:
            function(build_spec(spec_type, cfg) if spec_type else cfg, ctx)
        except Preempted as stop:
            peers.agree(f"{stage_name} finished", stop)
        # The processes leave together: one that finished early waits here for the others (e.g. for
        # process 0's `filter`), with no timeout, rather than in jax's shutdown barrier (5 minutes).
        peers.agree(f"{stage_name} finished", None)
    except BaseException as error:
        if count > 1 and not isinstance(error, Preempted):  # a preemption stops every process together
            code = peers.exit_code_of(error)
            if code == 1:
                logger.exception("stage %s failed", stage_name)
            print(f"error: {error}", file=sys.stderr)
            peers.abort(code, f"{type(error).__name__}: {error}")
        raise


def _sweep(args: argparse.Namespace) -> int:
    from jz3_jax import sweep

    base = resolve_config(args.config, args.overrides, args.run_dir)
    runs = sweep.plan(args.stage, args.config, base.run_dir, args.overrides,
                      sweep.expand(args.sweep, args.sweep_file), [])
    for run in runs:  # every run's config must resolve before anything is printed or run
        resolve_config(args.config, args.overrides + run.overrides, run.run_dir)
    if args.dry_run:
        import shlex

        for run in runs:
            print(shlex.join(run.command))
        return 0
    failed = sweep.execute(runs, base.run_dir, lambda msg: print(msg, file=sys.stderr))
    print(f"sweep: {len(runs) - failed} of {len(runs)} runs done, manifest {paths.as_path(base.run_dir) / 'sweep.jsonl'}",
          file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    from jz3_jax.runtime.platform import choose_platforms

    choose_platforms()  # before JAX starts a backend: no TPU probing on machines without one
    args = build_parser().parse_intermixed_args(argv)
    try:
        stage = get_stage(args.stage)
        if args.sweep or args.sweep_file:
            return _sweep(args)
        cfg = resolve_config(args.config, args.overrides, args.run_dir)
        note = prefer_checkpoint_tokenizer(cfg, args.overrides)
        if args.print_config:
            print(json.dumps(config_to_dict(cfg), indent=2))
            return 0
        if args.dry_run:
            status = "ready" if stage.target else "not implemented yet"
            print(f"dry run: stage {stage.name} ({status}), config valid, outputs to "
                  f"{paths.stage_dir(cfg.run_dir, stage.name)}")
            if stage.name == "pipeline":  # each step's config resolves (its own overrides included)
                from jz3_jax.pipeline.stage import describe

                print("\n".join(describe(cfg)))
            return 0
        run_stage(stage.name, cfg, (note,) if note else ())
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
