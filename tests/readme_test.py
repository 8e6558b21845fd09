#!/usr/bin/env python3
"""Runs the shell commands of README.md as written, in order, in a fresh copy of the checkout: the files git would
commit (tracked, or untracked and not ignored), `../shared` beside it, and `build/l3c` the binary under test (also on
PATH, and L3C_BIN for the scripts, so that nothing is built again). Every command of a ```bash block runs, a few
steps each, except those in SKIPPED (each with its reason); a command that exits non-zero fails the test.

What "a few steps" means, command by command (SHORTER): training runs 2 steps, the quickstart STEPS=2, evaluation
reads 2000 bytes of each held-out document, 4 examples of each task and 256 tokens for the logit lens.

Usage: readme_test.py REPOSITORY L3C_BINARY
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

# (pattern, reason): a command matching the pattern is not run.
SKIPPED = [
    (r"^bash scripts/test\.sh", "runs the whole suite, which holds this test; CI (.ci/run) runs it"),
    (r"^bash scripts/(sanitize|fuzz)\.sh", "builds a second tree with clang and the sanitizers (tens of minutes); "
                                           "CI (.ci/run) runs both after the suite"),
    (r"--device cuda|gpu_check\.sh|configs/gpu/", "needs a GPU"),
    (r"^sbatch ", "needs SLURM and GPUs on several machines"),
    (r"MASTER_ADDR=node0", "needs several machines (rank 0 at node0) and GPUs"),
    (r"^SCALE=cpu ", "the CPU study takes hours by design; the same script runs at SCALE=smoke in the suite "
                     "(reproduce/main.sh)"),
]

# (pattern, options): how a command is shortened; an option already on the command line gets the new value.
SHORTER = [
    (r"\bl3c train\b", [("--set", "train.steps=2"), ("--set", "train.warmup_steps=0"), ("--set", "eval.every=0")]),
    (r"\bl3c eval\b.*--text", [("--max-bytes", "2000")]),
    (r"\bl3c eval\b.*--lens", [("--lens-tokens", "256")]),
    (r"\bl3c eval\b.*--tasks", [("--limit", "4")]),
]
SHORTER_ENV = [(r"scripts/quickstart\.sh", {"STEPS": "2"})]


def readme_commands(readme):
    """The command lines of the ```bash blocks, comments removed, continuation lines joined."""
    commands, in_block, pending = [], False, ""
    for line in open(readme, encoding="utf-8"):
        line = line.rstrip("\n")
        if line.startswith("```"):
            in_block = line.strip() == "```bash"
            continue
        if not in_block:
            continue
        line = re.sub(r"(^|\s)#.*$", "", line).rstrip()  # README commands hold no '#' inside quotes
        if not line:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        commands.append((pending + line).strip())
        pending = ""
    return commands


def shortened(command):
    for pattern, options in SHORTER:
        if not re.search(pattern, command):
            continue
        for option, value in options:
            if option == "--set":
                key = value.split("=")[0]
                command, found = re.subn(r"--set " + re.escape(key) + r"=\S+", f"--set {value}", command)
            else:
                command, found = re.subn(re.escape(option) + r" \S+", f"{option} {value}", command)
            if not found:
                command += f" {option} {value}"
    if os.geteuid() == 0:  # as the README says: Open MPI refuses root without it
        command = re.sub(r"^mpirun ", "mpirun --allow-run-as-root ", command)
    return command


def copy_checkout(repository, into):
    listing = subprocess.run(["git", "-C", repository, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True).stdout
    for name in sorted(set(listing.decode().split("\0")) - {""}):
        source = os.path.join(repository, name)
        if not os.path.isfile(source):  # deleted in the working tree, not yet committed
            continue
        target = os.path.join(into, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(source, target)


def main():
    repository, binary = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    shared = os.path.realpath(os.path.join(repository, "..", "shared"))
    if not os.path.isdir(shared):
        print(f"skipped: {shared} (the shared data folder the README expects beside the checkout) is missing")
        return 4
    commands = readme_commands(os.path.join(repository, "README.md"))
    if len(commands) < 10:
        print(f"FAILED: only {len(commands)} commands found in README.md's bash blocks")
        return 1
    with tempfile.TemporaryDirectory(prefix="l3c_readme_") as work:
        checkout = os.path.join(work, "l3c")
        copy_checkout(repository, checkout)
        os.symlink(shared, os.path.join(work, "shared"))
        os.makedirs(os.path.join(checkout, "build"))
        os.symlink(binary, os.path.join(checkout, "build", "l3c"))
        env = dict(os.environ, L3C_BIN=binary, PATH=os.path.join(checkout, "build") + os.pathsep + os.environ["PATH"])
        ran = 0
        for command in commands:
            reason = next((why for pattern, why in SKIPPED if re.search(pattern, command)), None)
            if reason:
                print(f"skip: {command}\n      ({reason})")
                continue
            run = shortened(command)
            run_env = dict(env)
            for pattern, extra in SHORTER_ENV:
                if re.search(pattern, run):
                    run_env.update(extra)
            print(f"run:  {run}", flush=True)
            # errors="replace": a sampled text may end inside a UTF-8 character
            result = subprocess.run(["bash", "-c", run], cwd=checkout, env=run_env, capture_output=True, text=True,
                                    errors="replace", timeout=1200)
            if result.returncode != 0:
                print(f"FAILED (exit {result.returncode}): {run}\n--- output (last 4000 characters) ---\n"
                      f"{(result.stdout + result.stderr)[-4000:]}")
                return 1
            ran += 1
        print(f"ok: {ran} README commands ran, {len(commands) - ran} skipped with their reasons")
    return 0


if __name__ == "__main__":
    sys.exit(main())
