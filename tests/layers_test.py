#!/usr/bin/env python3
"""scripts/check_layers.py on copies of the source tree: the tree as it is passes; an upward include, an include
cycle between two components and a folder in no layer each fail with a line naming the file.

Usage: layers_test.py REPOSITORY
"""
import os
import shutil
import subprocess
import sys
import tempfile


def run_checker(checker, root):
    result = subprocess.run([sys.executable, checker, "--root", root], capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


def copy_tree(repository, into):
    for top in ("src", "tools"):
        shutil.copytree(os.path.join(repository, top), os.path.join(into, top))


def append_line(path, line):
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def expect(condition, what, output):
    if not condition:
        print(f"FAILED: {what}\n--- checker output ---\n{output}")
        sys.exit(1)
    print(f"ok: {what}")


def main():
    repository = os.path.abspath(sys.argv[1])
    checker = os.path.join(repository, "scripts", "check_layers.py")
    with tempfile.TemporaryDirectory(prefix="l3c_layers_") as work:
        clean = os.path.join(work, "clean")
        copy_tree(repository, clean)
        code, output = run_checker(checker, clean)
        expect(code == 0, "the tree as it is passes", output)

        upward = os.path.join(work, "upward")
        copy_tree(repository, upward)
        append_line(os.path.join(upward, "src", "core", "tensor.h"), '#include "train/trainer.h"')
        code, output = run_checker(checker, upward)
        expect(code == 1, "core including train fails", output)
        expect("src/core/tensor.h" in output and "includes src/train/trainer.h" in output and "a layer above" in output,
               "the finding names the file, the include and the rule", output)

        sideways = os.path.join(work, "sideways")
        copy_tree(repository, sideways)
        append_line(os.path.join(sideways, "src", "eval", "loss.cpp"), '#include "infer/session.h"')
        code, output = run_checker(checker, sideways)
        expect(code == 1 and "src/eval/loss.cpp" in output and "the same layer" in output,
               "eval including infer (one layer) fails", output)

        cycle = os.path.join(work, "cycle")
        copy_tree(repository, cycle)
        append_line(os.path.join(cycle, "src", "runtime", "model_io.cpp"), '#include "runtime/checkpoint.h"')
        code, output = run_checker(checker, cycle)
        expect(code == 1 and "include cycle" in output and "src/runtime/model_io.cpp" in output,
               "model_io and checkpoint including each other fails", output)

        unknown = os.path.join(work, "unknown")
        copy_tree(repository, unknown)
        os.makedirs(os.path.join(unknown, "src", "extras"))
        append_line(os.path.join(unknown, "src", "extras", "thing.h"), "#pragma once")
        code, output = run_checker(checker, unknown)
        expect(code == 1 and "folder extras is in no layer" in output, "a folder in no layer fails", output)


if __name__ == "__main__":
    main()
