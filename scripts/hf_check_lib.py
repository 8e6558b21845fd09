"""What the Hugging Face round-trip checks (hf_import_check.py, hf_logits_check.py) share: importing the
transformers stack (or skipping), running l3c commands, and comparing two sets of logits."""
import subprocess


def import_hf_stack(skip_note=""):
    """(numpy, torch, transformers, safetensors.numpy.load_file); None, after printing
    "skipped: <the ImportError><skip_note>", when one of them is not importable by this Python (the caller then
    exits 77)."""
    try:
        import numpy
        import torch
        import transformers
        from safetensors.numpy import load_file
    except ImportError as e:
        print(f"skipped: {e}{skip_note}")
        return None
    return numpy, torch, transformers, load_file


def run_l3c(l3c, command, name):
    """Runs `l3c COMMAND...`; False, after printing "l3c <name> failed (<exit code>):" and its stderr, when it fails."""
    run = subprocess.run([l3c] + command, capture_output=True, text=True)
    if run.returncode != 0:
        print(f"l3c {name} failed ({run.returncode}):\n{run.stderr}")
        return False
    return True


def compare_logits(ours, theirs, reference, tolerance):
    """The largest |ours - theirs| over the largest |reference| logit, against the tolerance: the JSON fields
    max_abs_diff, max_abs_logit, relative, tolerance and ok."""
    import numpy as np  # importable: import_hf_stack() came first

    max_abs_diff = float(np.abs(ours - theirs).max())
    max_abs_logit = float(np.abs(reference).max())
    relative = max_abs_diff / max(max_abs_logit, 1e-30)
    return {"max_abs_diff": max_abs_diff, "max_abs_logit": max_abs_logit, "relative": relative,
            "tolerance": tolerance, "ok": relative <= tolerance}
