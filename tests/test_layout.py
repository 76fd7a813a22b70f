"""The imports flow one way: every file imports only files above it in LAYERS, so the command line and the data
readers sit below the model, and the model below the run machinery and the scripts. Read statically, in a blink."""
import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# bottom first: what a file may import is what comes before it
LAYERS = ["cli", "tokenizer",                    # the command line and its errors; CLIP's BPE
          "synth", "dataset", "data",            # the data: the synthetic set, the image pipeline, the annotations
          "clip", "decoder", "onnx_decode",      # the model; the exported model's loop, without torch
          "checkpoint", "run", "evaluate",       # a run: its files, its folder, its scores
          "train", "sample", "export", "bench",  # the scripts
          "experiments/generation"]              # the workshop


def project_imports(path):
    names = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n in LAYERS}


def test_every_file_has_a_layer():
    files = {os.path.relpath(p, ROOT)[:-3] for p in glob.glob(os.path.join(ROOT, "*.py"))}
    files |= {os.path.relpath(p, ROOT)[:-3] for p in glob.glob(os.path.join(ROOT, "experiments", "*.py"))}
    assert files == set(LAYERS)


def test_imports_flow_downward():
    for i, name in enumerate(LAYERS):
        above = project_imports(os.path.join(ROOT, name + ".py")) - set(LAYERS[:i])
        assert not above, f"{name}.py imports {sorted(above)}, which sit above it"


def test_the_data_readers_import_neither_the_model_nor_the_run():
    for name in ("synth", "dataset", "data"):
        assert not project_imports(os.path.join(ROOT, name + ".py")) & {"clip", "decoder", "checkpoint", "run"}
