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

        def planted(name, relative, line):
            """The checker's exit code and output on a copy of the tree with `line` appended to `relative`."""
            root = os.path.join(work, name)
            copy_tree(repository, root)
            if relative:
                path = os.path.join(root, relative)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                append_line(path, line)
            return run_checker(checker, root)

        code, output = planted("clean", None, None)
        expect(code == 0, "the tree as it is passes", output)

        code, output = planted("upward", "src/core/tensor.h", '#include "train/trainer.h"')
        expect(code == 1, "core including train fails", output)
        expect("src/core/tensor.h" in output and "includes src/train/trainer.h" in output and "a layer above" in output,
               "the finding names the file, the include and the rule", output)

        code, output = planted("sideways", "src/eval/loss.cpp", '#include "infer/session.h"')
        expect(code == 1 and "src/eval/loss.cpp" in output and "the same layer" in output,
               "eval including infer (one layer) fails", output)

        code, output = planted("cycle", "src/runtime/model_io.cpp", '#include "runtime/checkpoint.h"')
        expect(code == 1 and "include cycle" in output and "src/runtime/model_io.cpp" in output,
               "model_io and checkpoint including each other fails", output)

        code, output = planted("unknown", "src/extras/thing.h", "#pragma once")
        expect(code == 1 and "folder extras is in no layer" in output, "a folder in no layer fails", output)


if __name__ == "__main__":
    main()
