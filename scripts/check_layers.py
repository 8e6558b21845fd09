#!/usr/bin/env python3
"""The dependency rules of the source tree (docs/design.md, "Layers"), checked over its #include lines.

1. Layers point down: a file in src/<dir>/ (or tools/) includes only files of its own folder and of the folders
   of lower layers. Folders that share a layer do not include each other.
2. No cycles between components: a component is a header with its source file (runtime/model_io.h +
   runtime/model_io.cpp); no chain of includes leads from a component back to itself. The one kind of cycle
   allowed is an interface whose dispatcher or factory picks among implementations that take the interface's
   types (INTERFACE_IMPLEMENTATIONS below); each is listed with its reason.

Usage: check_layers.py [--root DIR]   (DIR: the repository, default the one this script is in)
Exit 0 when both rules hold; else exit 1, one line per finding.
"""
import argparse
import os
import re
import sys

# Lowest first. A folder may include its own files and those of the folders of lower layers.
LAYERS = [
    ["core"],             # tensor views, config, errors, file formats (safetensors), rng: depends on nothing
    ["kernels", "data"],  # the ops and device memory; token shards, tokenizers, allocations
    ["model"],            # parameters and the layers, written against kernels/ops.h
    ["optim", "dist"],    # AdamW and schedules; communicators
    ["runtime"],          # the run's device and memory, model and checkpoint files
    ["eval", "infer"],    # scoring and serving a trained model
    ["train"],            # the training loop (it evaluates during training)
    ["tools"],            # the l3c command
]
# (interface, implementation): the interface's source dispatches to or constructs the implementation, whose header
# needs the interface's declarations. Splitting either would scatter one concern over two files.
INTERFACE_IMPLEMENTATIONS = {
    ("src/kernels/ops", "src/kernels/cpu/cpu_ops"),       # ops.cpp dispatches to the CPU ops, which take ops.h's types
    ("src/kernels/ops", "src/kernels/cuda/cuda_ops"),     # ... and to the CUDA ops
    ("src/data/tokenizer", "src/data/bpe_tokenizer"),     # load_tokenizer() builds a BpeTokenizer, a Tokenizer
    ("src/dist/bootstrap", "src/dist/nccl_communicator"),  # make_communicator() builds NCCL's, which bootstraps itself
}
SOURCE_ENDINGS = (".h", ".cpp", ".cu", ".cuh")
INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"')


def layer_of(folder):
    for level, folders in enumerate(LAYERS):
        if folder in folders:
            return level
    return None


def source_files(root):
    """(path relative to root, folder) of every file the rules cover: src/<folder>/... and tools/..."""
    for top in ("src", "tools"):
        base = os.path.join(root, top)
        for dirpath, _, names in os.walk(base):
            for name in sorted(names):
                if not name.endswith(SOURCE_ENDINGS):
                    continue
                path = os.path.relpath(os.path.join(dirpath, name), root)
                parts = path.split(os.sep)
                yield path, parts[1] if top == "src" else "tools"


def resolve(root, including, target):
    """The repository path an #include "target" of `including` names, or None (system, generated, absent)."""
    for base in (os.path.dirname(including), "src", "."):
        candidate = os.path.normpath(os.path.join(base, target))
        if os.path.isfile(os.path.join(root, candidate)):
            return candidate
    return None


def folder_of(path):
    parts = path.split(os.sep)
    if parts[0] == "src" and len(parts) > 2:
        return parts[1]
    if parts[0] == "tools":
        return "tools"
    return None


def component(path):
    return os.path.splitext(path)[0]


def check(root):
    findings = []
    edges = {}  # component -> {component: (file, line number)}
    for path, folder in source_files(root):
        level = layer_of(folder)
        if level is None:
            findings.append(f"{path}: folder {folder} is in no layer (add it to LAYERS in scripts/check_layers.py)")
            continue
        with open(os.path.join(root, path), encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
        for number, line in enumerate(lines, 1):
            match = INCLUDE.match(line)
            if not match:
                continue
            target = resolve(root, path, match.group(1))
            if target is None:
                continue
            target_folder = folder_of(target)
            if target_folder is None:
                continue
            if target_folder != folder:
                target_level = layer_of(target_folder)
                if target_level is None or target_level >= level:
                    kind = "a layer above" if target_level is not None and target_level > level else "the same layer"
                    findings.append(f"{path}:{number}: includes {target}: {target_folder} is {kind} "
                                    f"({folder} may include {', '.join(allowed(folder))})")
            pair = (component(path), component(target))
            if pair[0] != pair[1] and pair not in INTERFACE_IMPLEMENTATIONS and pair[::-1] not in INTERFACE_IMPLEMENTATIONS:
                edges.setdefault(component(path), {}).setdefault(component(target), (path, number))
    for cycle in cycles(edges):
        steps = []
        for a, b in zip(cycle, cycle[1:] + cycle[:1]):
            path, number = edges[a][b]
            steps.append(f"{path}:{number} includes {b}")
        findings.append("include cycle: " + "; ".join(steps))
    return findings


def allowed(folder):
    level = layer_of(folder)
    return [folder] + [f for lower in LAYERS[:level] for f in lower]


def cycles(edges):
    """One cycle (a list of components) for every strongly connected group of more than one component."""
    index, low, on_stack, stack, groups = {}, {}, set(), [], []
    counter = [0]

    def visit(v):  # Tarjan's algorithm; the graphs are small enough for recursion
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(set(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    result = []
    for group in groups:
        start = min(group)
        result.append(path_back(edges, group, start))
    return sorted(result)


def path_back(edges, group, start):
    """A shortest cycle through `start` inside `group` (breadth-first)."""
    previous, frontier = {start: None}, [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(edges.get(v, {})):
                if w not in group:
                    continue
                if w == start:
                    cycle = [v]
                    while previous[cycle[-1]] is not None:
                        cycle.append(previous[cycle[-1]])
                    return list(reversed(cycle))
                if w not in previous:
                    previous[w] = v
                    following.append(w)
        frontier = following
    return [start]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = parser.parse_args()
    if not os.path.isdir(os.path.join(args.root, "src")):
        print(f"error: {args.root} holds no src/ folder", file=sys.stderr)
        return 2
    findings = check(args.root)
    for finding in findings:
        print(finding)
    if findings:
        print(f"{len(findings)} finding(s): the layers are in docs/design.md (\"Layers\")", file=sys.stderr)
        return 1
    print("layers: every include points down, no include cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
