"""
Export a checkpoint of train.py to ONNX, to predict without PyTorch (onnx_decode.py, or python sample.py --onnx=DIR).

    python export.py --ckpt=out/ckpt.pt                   # into out/onnx
    python export.py --ckpt=out/ckpt.pt --out_dir=DIR

What it writes into the folder (B, the batch, is free in every graph):
- SequencePAR: encoder.onnx, images (B, 3, H, W) -> image_kv (B, n_layer, 2, nh, L, hs): what SequencePAR.memory_kv
  returns, each decoder layer's keys and values of the image tokens, stacked; and step.onnx, one decoder step: id (B,)
  the newest id, pos () its position, cache (B, n_layer, 2, nh, A + 1, hs) the self-attention keys and values of the
  positions so far, image_kv -> logits (B, V) of the next id, cache_out: the cache with slot pos filled. The token
  table (the specials and the text encoder's attribute tokens) depends on the weights only: it is computed here, once,
  and is a constant of step.onnx, so no text encoder is exported.
- the query and linear heads: logits.onnx, images (B, 3, H, W) -> logits (B, A).
- model.json, the label map: the attribute names, the decoding of the run (rule, threshold, unweight, beam_size) and
  the per-attribute thresholds it chose (or null), the special ids, the loss weights (for unweight), the cache's shape,
  the image size, mean and std, and the check below.
Before the folder appears, every graph runs in onnxruntime on a random batch of 3 (it was traced at 2) and must give
PyTorch's outputs within TOLERANCE, or the export fails in one line and leaves nothing. The folder appears whole: it is
written under a temporary name and renamed. Not exported: training, the attention maps (beam search, like greedy
decoding and the chain rule, is onnx_decode.py's loop around step.onnx).

Shapes: B batch, L image tokens, nh heads, hs head size, A attributes, V = A + 3 vocabulary.
"""
import importlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import cli
from cli import UserError
import onnx_decode
from checkpoint import load_checkpoint, model_from_checkpoint
from dataset import MEAN, STD
from decoder import BOS, EOS, N_SPECIAL, PAD, QueryHead, SequencePAR
from evaluate import DECODING, EvalConfig, decoding_options

# The largest difference allowed between a graph's outputs and PyTorch's, relative to the largest output (or 1):
# the same fp32 arithmetic through other kernels rounds differently, by about 1e-6 of it.
TOLERANCE = 1e-4
EXAMPLE_BATCH, CHECK_BATCH = 2, 3  # traced at one batch size, checked at another: the batch axis must be free


@dataclass
class ExportConfig:
    ckpt: str = ""                # a checkpoint of train.py
    out_dir: str = ""             # "": onnx/ beside the checkpoint
    PATHS = ("ckpt", "out_dir")


def stack_kv(pairs):
    # per layer a (k, v) pair, each (B, nh, T, hs) -> (B, n_layer, 2, nh, T, hs): one tensor in and out of the graphs
    return torch.stack([torch.stack(tuple(kv), 1) for kv in pairs], 1)


class Encoder(nn.Module):
    # images (B, 3, H, W) -> image_kv (B, n_layer, 2, nh, L, hs): what SequencePAR.memory_kv returns
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return stack_kv(self.model.memory_kv(images))


class Step(nn.Module):
    """One step of SequencePAR's decoder, as generate takes it, but with a cache of one fixed size, so that one graph
    serves every step: the new keys and values go into slot pos by a mask, and attention masks out the slots after
    pos. The same blocks, in the same order, as Block.forward; eval mode, so no dropout."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.register_buffer("table", model.token_table())  # (V, D), a constant of the graph

    def forward(self, idx, pos, cache, image_kv):
        # idx (B,), pos (), cache (B, n_layer, 2, nh, A + 1, hs), image_kv (B, n_layer, 2, nh, L, hs)
        m = self.model
        x = (F.embedding(idx, self.table) + m.transformer.wpe(pos))[:, None]  # (B, 1, D)
        B, _, D = x.shape
        slots = torch.arange(cache.shape[4])
        new, seen = (slots == pos)[:, None], (slots <= pos)[None]  # (A + 1, 1): this step's slot; (1, A + 1)
        layers = []
        for i, block in enumerate(m.transformer.h):
            attn = block.attn
            q, k, v = attn.c_attn(block.ln_1(x)).split(D, dim=2)
            q, k, v = (t.view(B, 1, attn.n_head, D // attn.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, 1, hs)
            k, v = torch.where(new, k, cache[:, i, 0]), torch.where(new, v, cache[:, i, 1])  # (B, nh, A + 1, hs)
            layers.append((k, v))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=seen)  # (B, nh, 1, hs)
            x = x + attn.c_proj(y.transpose(1, 2).reshape(B, 1, D))
            x = x + block.cross_attn(block.ln_2(x), image_kv[:, i].unbind(1))
            x = x + block.mlp(block.ln_3(x))
        return m.lm_head(m.transformer.ln_f(x))[:, 0], stack_kv(layers)  # (B, V), (B, n_layer, 2, nh, A + 1, hs)


class Logits(nn.Module):
    # the query and linear heads: images (B, 3, H, W) -> logits (B, A). The query head's attribute tokens come from the
    # text encoder and depend on the weights only: a constant of the graph, as SequencePAR's token table.
    def __init__(self, model):
        super().__init__()
        self.model, self.query = model, isinstance(model, QueryHead)
        if self.query:
            self.register_buffer("tokens", model.attribute_tokens())  # (A, D)

    def forward(self, images):
        m = self.model
        if not self.query:
            return m.logits(images)
        x = (self.tokens + m.transformer.wpe.weight).expand(images.shape[0], -1, -1)  # (B, A, D), as QueryHead.logits
        x = m.blocks(x, m.memory_kv(images))
        return (x * m.fc.weight).sum(-1) + m.fc.bias


def to_onnx(module, example, path, inputs, outputs):
    # module in eval mode: the exporter traces in eval mode whatever it is given, then puts back the given module's mode
    # and its submodules' with it (a wrapper made in training mode would leave the model in training mode, dropout on).
    # The TorchScript exporter (dynamo=False): it traces a graph in a fraction of a second where torch.export takes
    # seconds, and a free batch axis is one dynamic_axes entry per tensor. PyTorch has deprecated it; the check below
    # is what tells us if it ever writes something else. Its warnings (the deprecation, the tracer's) are for us.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, path, dynamo=False, opset_version=17, input_names=inputs,
                          output_names=outputs, dynamic_axes={n: {0: "batch"} for n in inputs + outputs if n != "pos"})


def difference(got, expected):
    # the largest difference, relative to the largest expected value (or 1)
    expected = expected.detach().numpy()
    return float(abs(got - expected).max() / max(1.0, abs(expected).max()))


@torch.no_grad()
def check(model, folder, meta):
    """Runs every graph in onnxruntime on a random batch against the model in PyTorch: {graph: difference}."""
    sessions = {k: onnx_decode.session(os.path.join(folder, v)) for k, v in meta["graphs"].items()}
    g = torch.Generator().manual_seed(0)
    size = meta["image"]["size"]
    images = torch.randn(CHECK_BATCH, 3, size, size, generator=g)
    if not isinstance(model, SequencePAR):
        return dict(logits=difference(sessions["logits"].run(None, {"images": images.numpy()})[0],
                                      model.logits(images)))
    kvs = model.memory_kv(images)
    image_kv = sessions["encoder"].run(None, {"images": images.numpy()})[0]
    diffs = dict(encoder=difference(image_kv, stack_kv(kvs)), step=0.0)
    # every slot of the cache: a random id at each position, against decode with generate's cache
    A, table = model.n_attr, model.token_table()
    ids = torch.randint(A + N_SPECIAL, (CHECK_BATCH, A + 1), generator=g)
    k = kvs[0][0]
    shape = (CHECK_BATCH, k.shape[1], A + 1, k.shape[3])
    cache = [dict(k=k.new_zeros(shape), v=k.new_zeros(shape)) for _ in kvs]
    onnx_cache = stack_kv((c["k"], c["v"]) for c in cache).numpy()
    for t in range(A + 1):
        logits = model.decode(ids[:, t:t + 1], kvs, table, cache, start=t)[:, -1]
        got, onnx_cache = sessions["step"].run(None, dict(id=ids[:, t].numpy(), pos=torch.tensor(t).numpy(),
                                                          cache=onnx_cache, image_kv=image_kv))
        diffs["step"] = max(diffs["step"], difference(got, logits),
                            difference(onnx_cache, stack_kv((c["k"], c["v"]) for c in cache)))
    return diffs


def label_map(model, ckpt, path):
    """model.json's content, all but the check's result."""
    names, A = ckpt["attr_names"], model.n_attr
    config = ckpt["config"]
    # the decoding of the run, as sample.py reads it from the checkpoint
    decoding = decoding_options(EvalConfig(**{k: config.get(k, getattr(EvalConfig, k)) for k in DECODING}))
    thresholds = ckpt.get("thresholds")
    if thresholds is not None:
        values = thresholds.get("values") if isinstance(thresholds, dict) else None
        if not (isinstance(values, list) and len(values) == A
                and all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in values)):
            raise UserError(f"{path}: its thresholds are not {A} probabilities, one per attribute")
        thresholds = dict(split=thresholds.get("split"), default=float(thresholds.get("default", 0.5)),
                          values=[float(v) for v in values])
    meta = dict(format=onnx_decode.FORMAT, head=ckpt.get("head", "sequencepar"), attr_names=list(names),
                decoding=decoding, thresholds=thresholds,
                special_ids=dict(bos=BOS, eos=EOS, pad=PAD, n_special=N_SPECIAL),
                image=dict(size=model.clip.config.image_resolution, mean=list(MEAN), std=list(STD),
                           resize="padded to a black square, then bicubic"),
                source=dict(checkpoint=os.path.basename(path), step=ckpt["step"], dataset=ckpt.get("dataset")))
    if isinstance(model, SequencePAR):
        block = model.transformer.h[0].attn
        D = model.clip.config.embed_dim
        meta.update(graphs=dict(encoder="encoder.onnx", step="step.onnx"), loss_weight=model.loss_weight.tolist(),
                    cache_shape=[model.config.n_layer, 2, block.n_head, A + 1, D // block.n_head])
    else:
        meta.update(graphs=dict(logits="logits.onnx"))
    return meta


@torch.no_grad()
def write_graphs(model, folder, meta):
    size = meta["image"]["size"]
    images = torch.randn(EXAMPLE_BATCH, 3, size, size, generator=torch.Generator().manual_seed(1))
    if not isinstance(model, SequencePAR):
        to_onnx(Logits(model).eval(), (images,), os.path.join(folder, "logits.onnx"), ["images"], ["logits"])
        return
    image_kv = stack_kv(model.memory_kv(images))
    to_onnx(Encoder(model).eval(), (images,), os.path.join(folder, "encoder.onnx"), ["images"], ["image_kv"])
    cache = torch.zeros(EXAMPLE_BATCH, *meta["cache_shape"])
    to_onnx(Step(model).eval(), (torch.full((EXAMPLE_BATCH,), BOS), torch.tensor(0), cache, image_kv),
            os.path.join(folder, "step.onnx"), ["id", "pos", "cache", "image_kv"], ["logits", "cache_out"])


def ours(folder):
    # a folder we may replace: missing, empty, or an export of ours holding nothing else
    if not os.path.exists(folder):
        return True
    if not os.path.isdir(folder):
        return False
    files = set(os.listdir(folder))
    try:
        meta = onnx_decode.read_label_map(folder) if files else {}
    except UserError:
        return False
    return files <= {"model.json", *meta.get("graphs", {}).values()}


def export(model, ckpt, ckpt_path, out_dir):
    """Writes the graphs and model.json of the model of checkpoint ckpt into out_dir, checked; returns model.json's
    content. A failure leaves out_dir as it was."""
    if not ours(out_dir):
        raise UserError(f"--out_dir={out_dir} holds files that are not an export of ours; give a new or empty folder")
    meta = label_map(model, ckpt, ckpt_path)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # a folder as any other (mkdtemp makes it the owner's only)
    try:
        write_graphs(model, tmp, meta)
        diffs = check(model, tmp, meta)
        for name, d in diffs.items():
            if not d <= TOLERANCE:
                raise UserError(f"{name}.onnx gives outputs {d:.2g} away from PyTorch's in onnxruntime (tolerance "
                                f"{TOLERANCE:g}, relative to the largest output); nothing written to {out_dir}")
        meta["check"] = dict(batch=CHECK_BATCH, tolerance=TOLERANCE, difference=diffs)
        with open(os.path.join(tmp, "model.json"), "w") as f:
            json.dump(meta, f, indent=1)
        # the new folder takes the old one's place whole; the old one (an export of ours) goes after
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=parent)
        if os.path.exists(out_dir):
            os.rename(out_dir, os.path.join(old, "previous"))
        os.rename(tmp, out_dir)
        shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def require(who):
    # the exporter writes with onnx, the check runs onnxruntime: both, or one line that says what to install
    for package in ("onnx", "onnxruntime"):
        try:
            importlib.import_module(package)
        except ImportError:
            raise UserError(f"{who} needs {package}, which is not installed: {onnx_decode.INSTALL}") from None


def main(argv):
    cfg = cli.parse(argv, ExportConfig)
    if not cfg.ckpt:
        raise UserError("--ckpt=PATH: which checkpoint of train.py to export (python export.py --ckpt=out/ckpt.pt)")
    require("export.py")
    ckpt = load_checkpoint(cfg.ckpt)
    model = model_from_checkpoint(ckpt, cfg.ckpt).eval()
    out_dir = cfg.out_dir or os.path.join(os.path.dirname(cfg.ckpt), "onnx")
    meta = export(model, ckpt, cfg.ckpt, out_dir)
    diffs = ", ".join(f"{k} {v:.1g}" for k, v in meta["check"]["difference"].items())
    print(f"wrote {', '.join(meta['graphs'].values())} and model.json to {out_dir} ({meta['head']}, "
          f"{len(meta['attr_names'])} attributes; onnxruntime against PyTorch at batch {CHECK_BATCH}: {diffs})")


if __name__ == "__main__":
    cli.run(main, ExportConfig, __doc__)
