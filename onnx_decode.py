"""
The model outside PyTorch: the graphs export.py writes, run by onnxruntime, and the decoding loop around them in numpy.

    model = onnx_decode.load("out/onnx")
    pred, scores = model.generate(model.preprocess(Image.open("img.jpg").convert("RGB"))[None], rule="chain")

This file needs numpy, pillow and onnxruntime only. A folder of export.py's holds model.json (the label map: attribute
names, the decoding and thresholds of the run, the special ids, the image size and statistics) and its graphs:
- SequencePAR: encoder.onnx, images -> image_kv, every decoder layer's cross-attention keys and values of the image
  tokens, and step.onnx, one decoder step: (the newest id, its position, the self-attention cache, image_kv) -> (the
  next id's logits, the cache with this step's keys and values added). Decoding is a short loop around the step, the
  same loop as decoder.py's generate: greedy (the paper's rule), beam search or the chain rule.
- the query and linear heads: logits.onnx, images -> one logit per attribute; the rest is a sigmoid.
generate returns what decoder.py's generate returns, as numpy: pred (B, A) uint8 and scores (B, A).

Shapes: B batch, L image tokens, nh heads, hs head size, A attributes, V = A + 3 vocabulary.
"""
import json
import os

import numpy as np
from PIL import Image

from cli import MissingFile, UserError

FORMAT = "sequencepar-onnx"  # model.json says it is ours with this
INSTALL = "pip install -r requirements-export.txt"


def onnxruntime():
    # imported when a model is loaded, so that sample.py and train.py run without it
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"the exported model needs onnxruntime, which is not installed: {INSTALL}") from None
    return onnxruntime


def read_label_map(folder):
    """model.json of an export.py folder, checked to be ours, with every graph it names present."""
    if not os.path.isdir(folder):
        raise MissingFile(f"{folder} is not a folder of export.py's (python export.py --ckpt=PATH --out_dir={folder} "
                          f"writes one)")
    path = os.path.join(folder, "model.json")
    if not os.path.isfile(path):
        raise MissingFile(f"{folder} has no model.json: not a folder of export.py's (python export.py --ckpt=PATH "
                          f"--out_dir={folder} writes one)")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not the JSON export.py writes ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{path} is not a label map of export.py (no \"format\": \"{FORMAT}\")")
    for name in meta["graphs"].values():
        if not os.path.isfile(os.path.join(folder, name)):
            raise MissingFile(f"{os.path.join(folder, name)} not found: {path} names it (export the checkpoint again)")
    return meta


def session(path, threads=0):
    """An onnxruntime session of the graph at path on the CPU; threads: 0 for onnxruntime's default (every core)."""
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only
    # idle threads sleep rather than spin: a spinning pool holds on to the cores between two calls, from our numpy
    # loop and from whatever else runs (PyTorch beside it: then many times slower)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # a truncated or foreign file (a graph is data, protobuf: reading one runs no code)
        raise UserError(f"{path} is not a graph onnxruntime can read ({str(e).strip().splitlines()[0][:200]})") from None


def load(folder, threads=0):
    """The model export.py wrote into folder, ready to generate."""
    meta = read_label_map(folder)
    return Exported(meta, {k: session(os.path.join(folder, v), threads) for k, v in meta["graphs"].items()})


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


class Exported:
    def __init__(self, meta, sessions):
        self.meta, self.sessions = meta, sessions
        self.head, self.attr_names, self.n_attr = meta["head"], meta["attr_names"], len(meta["attr_names"])
        ids = meta["special_ids"]
        self.BOS, self.EOS, self.PAD, self.N_SPECIAL = ids["bos"], ids["eos"], ids["pad"], ids["n_special"]

    def preprocess(self, image):
        # an RGB PIL image -> (3, size, size) float32, as sample.py prepares it: padded to a black square (the
        # person keeps their shape), resized (bicubic), scaled to [0, 1], normalised with CLIP's mean and std
        w, h = image.size
        square = Image.new("RGB", (max(w, h), max(w, h)))
        square.paste(image, ((max(w, h) - w) // 2, (max(w, h) - h) // 2))
        size, mean, std = (self.meta["image"][k] for k in ("size", "mean", "std"))
        x = np.asarray(square.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255  # (size, size, 3)
        return ((x - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)

    def allowed(self, prev):
        # decoder.py's rule: after <bos> or attribute i come <eos> or an attribute after i; after <eos> or <pad>,
        # only <pad>, so that finished sequences can stay in the batch. prev (B,) -> (B, V)
        ids = np.arange(self.n_attr + self.N_SPECIAL)
        running = (ids == self.EOS) | ((ids >= self.N_SPECIAL) & (ids > prev[:, None]))
        finished = (prev == self.EOS) | (prev == self.PAD)
        return np.where(finished[:, None], ids == self.PAD, running)

    def generate(self, images, beam_size=1, rule="greedy", threshold=0.5, unweight=False):
        """decoder.py's generate on (B, 3, size, size) float32 images: pred (B, A) uint8 and scores (B, A) float32.
        SequencePAR decodes greedily (rule="greedy") or by the chain rule (rule="chain", threshold, unweight); the
        query and linear heads take the sigmoid of their logits, pred = scores > threshold."""
        if beam_size < 1 or (beam_size > 1 and rule != "greedy"):
            raise ValueError(f"beam_size={beam_size}: expected 1, or more with rule='greedy'")
        images = np.ascontiguousarray(images, dtype=np.float32)
        if self.head != "sequencepar":
            logits = self.sessions["logits"].run(None, {"images": images})[0]  # (B, A)
            scores = np.exp(-np.logaddexp(0, -logits))  # the sigmoid, without overflow for any logit
            return (scores > threshold).astype(np.uint8), scores
        image_kv = self.sessions["encoder"].run(None, {"images": images})[0]  # (B, n_layer, 2, nh, L, hs)
        B, A, S = images.shape[0], self.n_attr, self.N_SPECIAL
        # the self-attention keys and values of each position so far: a slot for <bos> and each of the A attributes
        cache = np.zeros((B, *self.meta["cache_shape"]), dtype=np.float32)  # (B, n_layer, 2, nh, A + 1, hs)

        def step(ids, t):  # ids (B,) at position t -> the next id's logits (B, V); the cache keeps this step's k, v
            nonlocal cache
            logits, cache = self.sessions["step"].run(None, dict(id=ids, pos=np.array(t), cache=cache,
                                                                 image_kv=image_kv))
            return logits

        prev, rows = np.full(B, self.BOS), np.arange(B)
        if rule == "greedy" and beam_size > 1:
            # decoder.py's generate_beam: B*K hypotheses, image b's in rows b*K .. b*K + K - 1, scored by the sum of
            # their ids' log-probabilities; one live per image at first; a finished one appends <pad> at no cost
            K, V = beam_size, A + S
            image_kv, cache = np.repeat(image_kv, K, axis=0), np.repeat(cache, K, axis=0)
            seq, seq_logp = np.full((B * K, 1), self.BOS), np.zeros((B * K, 1), dtype=np.float32)
            beam_logp = np.where(np.arange(B * K) % K == 0, 0.0, -np.inf).astype(np.float32)
            for t in range(A + 1):
                allowed = self.allowed(seq[:, -1])
                logp = np.where(allowed, log_softmax(step(seq[:, -1], t)), -np.inf)  # (B*K, V)
                logp[allowed[:, self.PAD], self.PAD] = 0.0
                total = (beam_logp[:, None] + logp).reshape(B, K * V)
                best = np.argsort(-total, axis=1, kind="stable")[:, :K]  # (B, K): the K best extensions, best first
                beam_logp = np.take_along_axis(total, best, 1).ravel()
                src, nxt = (np.arange(B)[:, None] * K + best // V).ravel(), (best % V).ravel()
                cache = cache[src]  # each new hypothesis takes the cache of the row it extends
                seq = np.concatenate([seq[src], nxt[:, None]], axis=1)
                seq_logp = np.concatenate([seq_logp[src], logp[src, nxt][:, None]], axis=1)
                if (nxt < S).all():
                    break
            seq, seq_logp = seq[::K], seq_logp[::K]  # (B, T): each image's best
            emitted, probs = np.zeros((B, V), dtype=np.uint8), np.zeros((B, V), dtype=np.float32)
            for t in range(seq.shape[1]):
                emitted[rows, seq[:, t]], probs[rows, seq[:, t]] = 1, np.exp(seq_logp[:, t])
            return emitted[:, S:], probs[:, S:]
        if rule == "greedy":
            # the most probable allowed id, until every sequence has emitted <eos>; scores: each emitted attribute's
            # probability when it was emitted
            emitted, probs = np.zeros((B, A + S), dtype=np.uint8), np.zeros((B, A + S), dtype=np.float32)
            for t in range(A + 1):  # at most A attributes, then <eos>
                logp = np.where(self.allowed(prev), log_softmax(step(prev, t)), -np.inf)  # (B, V)
                prev = logp.argmax(1)
                emitted[rows, prev], probs[rows, prev] = 1, np.exp(logp[rows, prev])
                if (prev < S).all():  # every sequence has ended
                    break
            return emitted[:, S:], probs[:, S:]
        if rule != "chain":
            raise ValueError(f"rule={rule!r}: expected 'greedy' or 'chain'")
        # The chain rule, for each attribute m in column order: with the prefix s (ending at attribute i or <bos>) and
        # i+1 .. m-1 decided absent, P(y_m = 1) = p(m | s) / (p(<eos> | s) + sum_{k >= m} p(k | s)), in log space, from
        # the logits. One step's p serves every attribute up to the next one emitted (m0: each image's next undecided).
        ids, m0 = np.arange(A), np.zeros(B, dtype=np.int64)
        scores = np.zeros((B, A), dtype=np.float32)
        log_weight = np.log(np.float32(self.meta["loss_weight"]))
        for t in range(A):  # each step decides at least one attribute
            logits = step(prev, t)
            if unweight:  # p / w: the weighted loss's optimum is p proportional to w q, and this recovers q
                logits = logits - log_weight
            tail = np.logaddexp.accumulate(logits[:, S:][:, ::-1], axis=1)[:, ::-1]  # log sum_{k >= m} p(k | s)
            q = np.exp(logits[:, S:] - np.logaddexp(logits[:, self.EOS, None], tail))  # (B, A)
            undecided = ids >= m0[:, None]
            first = np.where(undecided & (q > threshold), ids, A).min(1)  # the next attribute emitted; A if none
            scores = np.where(undecided & (ids <= first[:, None]), q, scores)  # m0 .. first are decided
            m0 = first + 1
            prev = np.where(first < A, first + S, self.PAD)
            if (m0 >= A).all():
                break
        return (scores > threshold).astype(np.uint8), scores
