"""
Predict the attributes of people in photos with a checkpoint of train.py (SequencePAR, the query or the linear head).

    python sample.py img.jpg [more.jpg a/folder ...] [--ckpt=out/ckpt.pt] [--json=True] [--out_dir=DIR]
    python sample.py img.jpg --attention=True       # where the decoder looked, per attribute, in out/samples
    python sample.py img.jpg --onnx=out/onnx        # with the graphs of export.py, in onnxruntime: the same output

Without --ckpt it takes out/ckpt.pt (your own run), or else out/demo/ckpt.pt (make demo's), and says which. Prints,
per image, the attributes the model predicts with the probability it gave each, then, where every attribute is
scored (the chain rule, the query and linear heads), the others with theirs; --json=True adds them as "scores", with
the "thresholds" that decided. Each attribute is decided at the threshold the run chose for it on val (said on stderr),
unless --threshold=T (one for all) or --thresholds=FILE (attribute,threshold rows) is given; the chain rule's scores
are the model's alone, decided in the prefix at 0.5 whatever the threshold. One bad image is reported and the others
go on.
"""
import json
import os
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

import cli
import onnx_decode
from cli import MissingFile, UserError
from checkpoint import load_checkpoint, model_from_checkpoint
from evaluate import (CHAIN_PREFIX, DECODING, decide, decoding_options, generate, read_thresholds,
                      scores_every_attribute, thresholds_to_use)
from dataset import MEAN, STD, build_transform, read_image
from decoder import LinearHead, QueryHead, SequencePAR, labels_to_targets

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class SampleConfig:
    ckpt: str = ""                # a checkpoint of train.py; "": out/ckpt.pt, or else make demo's out/demo/ckpt.pt
    onnx: str = ""                # or a folder of export.py's: its graphs in onnxruntime instead of a checkpoint
    json: bool = False            # one JSON document instead of text
    out_dir: str = ""             # a folder for each image drawn with its attributes beside it
    attention: bool = False       # also a picture per image of the decoder's cross-attention over the image patches
                                  # for each predicted attribute (in out_dir, out/samples by default)
    layers: str = "last"          # the attention of the last decoder layer, or "all": their mean
    # the decoding: by default as the checkpoint's training run decoded (train.py's options of the same names)
    rule: str = "chain"
    threshold: float = 0.5
    unweight: bool = False
    beam_size: int = 1
    thresholds: str = ""          # a CSV file of attribute,threshold rows, one per attribute ("": the run's own, if it
                                  # chose them on val, unless --threshold is given)
    batch_size: int = 64          # images per call of generate
    workers: int = 2              # DataLoader processes that read the images
    device: str = "auto"          # cuda when there is one
    compile: bool = False         # compile the image encoder first (torch.compile): worth it for many images on a GPU
    PATHS = ("ckpt", "onnx", "out_dir", "thresholds")


def load_model(path, device="cpu", compile=False, ckpt=None):
    """The model of a train.py checkpoint (SequencePAR, the query or the linear head), rebuilt from the checkpoint
    alone, with its attribute names, in eval mode; with compile=True, its image encoder compiled. ckpt: the
    checkpoint, if read."""
    ckpt = ckpt or load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path).to(device).eval()
    if compile:
        # The image encoder is where generate spends its time, and its shapes stay the same from batch to batch: we
        # compile it (in place, so that generate uses it). The decoding steps change shape at every step, so they
        # would compile again and again: they stay eager.
        model.clip.visual.compile()
    return model, ckpt["attr_names"]


class Exported:
    """--onnx=DIR: the model of export.py's folder DIR, decoded by onnx_decode.py, behind generate's interface on
    tensors (evaluate.generate then decides each attribute as it does for a checkpoint's model)."""

    def __init__(self, folder):
        self.model = onnx_decode.load(folder)
        self.attr_names, self.meta = self.model.attr_names, self.model.meta

    def generate(self, images, **decoding):
        decoding = {**decoding, "threshold": CHAIN_PREFIX} if self.model.head == "sequencepar" else {}
        return tuple(torch.from_numpy(a) for a in self.model.generate(images.numpy(), **decoding))

    def thresholds_to_use(self, decoding, given, every):
        """As evaluate.thresholds_to_use does for a checkpoint: --thresholds=FILE, else --threshold, else the
        thresholds the run chose (in model.json), where they were chosen for these scores."""
        if given.get("thresholds") and "threshold" in given:
            raise UserError("--threshold and --thresholds: give one threshold for every attribute, or a file of them")
        if not every:
            if given.get("thresholds"):
                raise UserError("--thresholds: greedy decoding scores only the attributes it emits, so it has nothing "
                                "to decide at a threshold; they need --rule=chain")
            return None, None
        if given.get("thresholds"):
            return read_thresholds(given["thresholds"], self.attr_names), \
                f"each attribute's threshold from {given['thresholds']}"
        run, chosen = self.meta["decoding"], self.meta.get("thresholds")
        same = self.model.head != "sequencepar" or (run["rule"], run["unweight"]) == (decoding["rule"], decoding["unweight"])
        if "threshold" in given or not chosen or not same:
            return None, None
        return chosen["values"], f"each attribute's threshold, chosen on {chosen['split']}"


def find_checkpoint():
    # a run of the user's own in out/ comes first; the demo's is the fallback, so that sample.py works after make demo
    for default in (os.path.join("out", "ckpt.pt"), os.path.join("out", "demo", "ckpt.pt")):
        if os.path.isfile(default):
            return default
    raise MissingFile("no checkpoint: out/ckpt.pt and out/demo/ckpt.pt are not there; make demo trains one, so does "
                      "python train.py --dataset=NAME, or pass --ckpt=PATH")


def find_images(inputs, skip=None):
    """The files given and the images in the folders given, their subfolders and linked folders too (each real
    folder once, so that a link to a folder above ends), leaving out the folder `skip` (where we write pictures)."""
    paths = []
    for p in inputs:
        if os.path.isdir(p):
            seen, found = {os.path.realpath(skip)} if skip else set(), []
            for d, dirs, files in os.walk(p, followlinks=True):
                if os.path.realpath(d) in seen:
                    dirs[:] = []  # (and its files are not ours to read, or already read)
                    continue
                seen.add(os.path.realpath(d))
                found += [os.path.join(d, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
            paths += sorted(found)
        else:
            paths.append(p)  # a missing or unreadable file is reported when it is read, with the others going on
    return paths


def printable(path):
    # a file name as the file system holds it: bytes that are not text in its encoding are escaped, as \xe9
    return os.fsencode(path).decode(sys.getfilesystemencoding(), "backslashreplace")


class Images(torch.utils.data.Dataset):
    # (index, image tensor) or (index, error message): one bad image must not stop a folder of thousands
    def __init__(self, paths, size):
        self.paths, self.transform = paths, build_transform(size, train=False)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return i, self.transform(read_image(self.paths[i]))
        except (FileNotFoundError, ValueError) as e:
            return i, str(e)


def collate(items):
    good = [(i, x) for i, x in items if torch.is_tensor(x)]
    return ([i for i, _ in good], torch.stack([x for _, x in good]) if good else None,
            [(i, x) for i, x in items if not torch.is_tensor(x)])


@torch.no_grad()
def attention_maps(model, images, pred, layers="last"):
    """For each decoder position, its cross-attention over the image patches (class token dropped), averaged over
    heads and over the last or all layers: SequencePAR's (B, A + 1, grid, grid), with the predictions fed back in
    (position k decides the (k + 1)-th emitted attribute), or the query head's (B, A, grid, grid), position j
    attribute j's."""
    with model.keeping_attention() as atts:
        if isinstance(model, QueryHead):
            model.logits(images)
        else:
            model.decode(labels_to_targets(pred)[:, :-1], model.memory_kv(images), model.token_table())
    att = torch.stack(atts if layers == "all" else atts[-1:]).mean((0, 2))[:, :, 1:]  # (B, T, L - 1)
    grid = int(att.shape[-1] ** 0.5)
    return att.view(*att.shape[:2], grid, grid)


def draw_labels(path, items, height=256):
    # the image, and a column listing its attributes and their probabilities
    img = read_image(path)
    img = img.resize((max(1, round(img.width * height / img.height)), height))
    canvas = Image.new("RGB", (img.width + 260, height), "white")
    canvas.paste(img, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, (name, p) in enumerate(items or [("(no attribute)", None)]):
        draw.text((img.width + 10, 8 + 14 * k), name if p is None else f"{p:.2f}  {name}", fill="black")
    return canvas


def draw_attention(image, maps, names, tile=128):
    # one tile per predicted attribute: the (square-padded) input with its attention map as a red overlay
    base = image.resize((tile, tile))
    tiles = []
    for m, name in zip(maps, names):
        m = F.interpolate(m[None, None], size=(tile, tile), mode="bilinear", align_corners=False)[0, 0]
        m = ((m - m.min()) / (m.max() - m.min() + 1e-8) * 255).byte().numpy()
        heat = Image.merge("RGB", [Image.fromarray(m), Image.new("L", (tile, tile)), Image.new("L", (tile, tile))])
        t = Image.blend(base, heat, 0.5)
        ImageDraw.Draw(t).text((3, 3), name[:20], fill="white")
        tiles.append(t)
    cols = min(len(tiles), 6) or 1
    sheet = Image.new("RGB", (cols * tile, max(1, -(-len(tiles) // cols)) * tile))
    for k, t in enumerate(tiles):
        sheet.paste(t, ((k % cols) * tile, (k // cols) * tile))
    return sheet


def parse_args(argv):
    """The options, the images and folders given, and the options given (of which the decoding overrides the
    checkpoint's)."""
    given, inputs = cli.split_args(argv, SampleConfig)
    opts = SampleConfig(**given)
    if not inputs:
        raise UserError("no images given: python sample.py img.jpg [more images or folders] [--ckpt=out/ckpt.pt]")
    if opts.batch_size < 1:
        raise UserError(f"--batch_size={opts.batch_size}: expected 1 or more")
    if opts.layers not in ("last", "all"):
        raise UserError(f"--layers={opts.layers}: expected last or all")
    if opts.onnx and (opts.ckpt or opts.attention or opts.compile):
        raise UserError(f"--onnx={opts.onnx} predicts with exported graphs: no --ckpt, and no --attention or --compile "
                        f"(they need the checkpoint)")
    if opts.attention and not opts.out_dir:
        opts.out_dir = os.path.join("out", "samples")
    if opts.out_dir and os.path.exists(opts.out_dir) and not os.path.isdir(opts.out_dir):
        raise UserError(f"--out_dir={opts.out_dir} is a file; expected a folder for the pictures")
    return opts, inputs, given


def main(argv):
    opts, inputs, given = parse_args(argv)
    device = "cpu" if opts.onnx else cli.resolve_device(opts.device)
    if opts.onnx:
        model = Exported(opts.onnx)
        run, names, size = model.meta["decoding"], model.attr_names, model.meta["image"]["size"]
    else:
        if not opts.ckpt:
            opts.ckpt = find_checkpoint()
            print(f"checkpoint: {opts.ckpt}", file=sys.stderr)
        ckpt = load_checkpoint(opts.ckpt)
        run = ckpt["config"]
    # the decoding given here, else the one the checkpoint's training run used
    decoding = decoding_options(SampleConfig(**{k: given[k] if k in given else run.get(k, getattr(opts, k))
                                                for k in DECODING}))
    if opts.onnx:
        every = model.meta["head"] != "sequencepar" or decoding["rule"] == "chain"
        thresholds, chosen_on = model.thresholds_to_use(decoding, given, every)
    else:
        model, names = load_model(opts.ckpt, device, opts.compile, ckpt)
        every = scores_every_attribute(model, decoding)
        size = model.clip.config.image_resolution
        not_applied = [f"--{k}" for k in ("rule", "beam_size", "unweight") if k in given and not isinstance(model, SequencePAR)]
        if not_applied:
            print(f"note: {', '.join(not_applied)} do not apply to {opts.ckpt}: the {ckpt.get('head')} head scores each "
                  "attribute with a sigmoid", file=sys.stderr)
        thresholds, chosen_on = thresholds_to_use(ckpt, model, decoding, given, names)
    if chosen_on:
        print(f"decided at {chosen_on} (--threshold=T decides every attribute at T)", file=sys.stderr)
    if opts.attention and isinstance(model, LinearHead):
        raise UserError(f"--attention=True: {opts.ckpt} has the linear head; attention maps need the decoder")
    paths = find_images(inputs, skip=opts.out_dir or None)
    if not paths:
        raise UserError(f"no images in {', '.join(inputs)} (files ending in {', '.join(IMAGE_EXTENSIONS)})")
    loader = torch.utils.data.DataLoader(Images(paths, size), opts.batch_size, num_workers=cli.worker_count(opts.workers),
                                         collate_fn=collate)
    results, failed, all_scores, written = {}, {}, {}, 0
    if opts.out_dir:
        os.makedirs(opts.out_dir, exist_ok=True)
    for idx, images, errors in loader:
        failed.update(errors)
        if images is None:
            continue
        images = images.to(device)
        if opts.onnx:
            pred, scores = model.generate(images, **decoding)
            pred = decide(pred, scores, every, decoding, thresholds)
        else:
            pred, scores = generate(model, images, decoding, thresholds)
        maps = attention_maps(model, images, pred, opts.layers) if opts.attention else None
        for b, i in enumerate(idx):
            emitted = pred[b].nonzero().flatten().tolist()  # in id order, the order they were generated in
            results[i] = [(names[j], scores[b, j].item()) for j in emitted]
            if every:  # the chain rule and the query and linear heads score every attribute, predicted or not
                all_scores[i] = {n: round(scores[b, j].item(), 6) for j, n in enumerate(names)}
            if opts.out_dir:
                stem = os.path.join(opts.out_dir, f"{i:05d}_" + os.path.splitext(os.path.basename(paths[i]))[0])
                draw_labels(paths[i], results[i]).save(stem + ".png")
                written += 1
                if maps is not None:
                    # SequencePAR chose its k-th emitted attribute at position k - 1; the query head decides attribute j
                    # at position j
                    shown = images[b].new_tensor(STD)[:, None, None] * images[b] + images[b].new_tensor(MEAN)[:, None, None]
                    shown = Image.fromarray((shown.clamp(0, 1) * 255).byte().permute(1, 2, 0).cpu().numpy())
                    chosen = maps[b, emitted] if isinstance(model, QueryHead) else maps[b, :len(emitted)]
                    draw_attention(shown, chosen.cpu(), [names[j] for j in emitted]).save(stem + "_attention.png")
                    written += 1
    if opts.json:
        used = dict(thresholds=dict(zip(names, thresholds)) if thresholds is not None else decoding["threshold"]) \
            if every else {}  # (greedy decoding has no threshold: it emits a set)
        print(json.dumps([dict(image=printable(p), attributes=dict(results[i]),
                               **(dict(scores=all_scores[i]) if every else {}), **used) if i in results else
                          dict(image=printable(p), error=failed[i]) for i, p in enumerate(paths)], indent=1))
    else:
        for i, p in enumerate(paths):
            if i in results:
                print(printable(p) + "".join(f"\n  {prob:.2f}  {name}" for name, prob in results[i]) if results[i] else
                      f"{printable(p)}\n  (no attribute)")
                if every and len(results[i]) < len(names):  # the others, most probable first
                    chosen = dict(results[i])
                    others = sorted(((v, n) for n, v in all_scores[i].items() if n not in chosen), reverse=True)
                    print("  not predicted: " + ", ".join(f"{n} {v:.2f}" for v, n in others))
    for i in sorted(failed):
        print(f"error: {failed[i]}", file=sys.stderr)
    if written:
        print(f"{written} picture{'s' * (written > 1)} written to {opts.out_dir}/", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    cli.run(main, SampleConfig, __doc__)
