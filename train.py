"""
Train SequencePAR on a pedestrian attribute dataset.

    python train.py --dataset=peta                  # the paper's recipe on PETA with CLIP ViT-L/14
    python train.py --dataset=synth                 # a tiny CLIP from scratch on the synthetic set, minutes on a CPU
    torchrun --nproc_per_node=8 train.py --dataset=pa100k

Every field of TrainConfig can be overridden with --key=value. The run evaluates on the validation split every
epoch (on the test split where a dataset has none), keeps the best checkpoint in out/ckpt.pt and the latest state in
out/last.pt (for --resume=True), and at the end evaluates the best checkpoint on the test split once.
"""
import ast
import dataclasses
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import clip
from data import PARImages, load_dataset
from decoder import DecoderConfig, SequencePAR, labels_to_targets


@dataclass
class TrainConfig:
    # data
    dataset: str = "peta"
    root: str = ""                # "" reads data/<dataset>
    workers: int = 4              # DataLoader processes per GPU
    # model
    clip: str = "ViT-L/14"        # an official name, a CLIP checkpoint file, or "tiny" (small, random, no download)
    n_layer: int = 6
    n_head: int = 8
    dropout: float = 0.1
    weighted_loss: bool = False   # the paper's weighted NLL, w_j = exp(1 - positive rate of j)
    # optim: the paper's recipe
    epochs: int = 50
    batch_size: int = 32          # in total, over all processes
    lr: float = 1e-6
    decoder_lr: float = 0.0       # 0: the same as lr; a fresh decoder may learn faster with more
    weight_decay: float = 1e-4
    warmup_epochs: float = 5.0
    grad_clip: float = 1.0
    time_budget: float = 0.0      # minutes; > 0 stops training then, with the schedule stretched to fit
    # eval/log
    out_dir: str = "out"
    eval_interval: int = 0        # steps between evaluations; 0 means once per epoch
    log_interval: int = 50
    beam_size: int = 1
    resume: bool = False
    # system
    device: str = "auto"          # cuda when there is one
    compile: bool = False
    seed: int = 0


# The synthetic set trains a small CLIP from scratch: a large learning rate, big batches and a time budget so that
# `make demo` takes minutes on two CPU cores. Command-line overrides still apply on top.
SYNTH_DEFAULTS = dict(clip="tiny", n_layer=2, n_head=4, dropout=0.0, weighted_loss=True, epochs=40, batch_size=64,
                      lr=1e-3, weight_decay=0.05, warmup_epochs=1.0, time_budget=7.0, workers=1, log_interval=50)
TINY_CLIP = clip.CLIPConfig(embed_dim=128, image_resolution=64, vision_layers=4, vision_width=128, vision_heads=2,
                            vision_patch_size=16, vision_stem=3, transformer_width=128, transformer_heads=2,
                            transformer_layers=2)


def parse_config(argv):
    """TrainConfig from --key=value arguments, each value a Python literal of the field's type (bare strings too)."""
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    overrides = {}
    for arg in argv:
        key, eq, text = arg[2:].partition("=")
        if not arg.startswith("--") or not eq:
            raise ValueError(f"bad argument {arg!r}: expected --key=value")
        if key not in types:
            raise ValueError(f"unknown option --{key}; valid options: {', '.join(types)}")
        try:
            value = text if types[key] is str else ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = None
        if types[key] is float and type(value) is int:
            value = float(value)
        if type(value) is not types[key]:
            raise ValueError(f"--{key}={text}: expected a {types[key].__name__}")
        overrides[key] = value
    defaults = SYNTH_DEFAULTS if overrides.get("dataset", TrainConfig.dataset) == "synth" else {}
    return TrainConfig(**{**defaults, **overrides})


def metrics(gt, pred):
    """The PAR metrics (DESIGN section 4) of 0/1 arrays gt and pred of shape (N, A), in percent: label-based mA and
    instance-based Acc, Prec, Rec, F1 (mean of per-sample F1, as SequencePAR reports it) and F1_hm (the harmonic
    mean of Prec and Rec, the Rethinking-of-PAR convention)."""
    gt, pred, eps = np.asarray(gt).astype(bool), np.asarray(pred).astype(bool), 1e-20
    tp, tn = (gt & pred).sum(0), (~gt & ~pred).sum(0)
    ma = ((tp / (gt.sum(0) + eps) + tn / ((~gt).sum(0) + eps)) / 2).mean()
    inter, union = (gt & pred).sum(1), (gt | pred).sum(1)
    prec_i, rec_i = inter / (pred.sum(1) + eps), inter / (gt.sum(1) + eps)
    prec, rec = prec_i.mean(), rec_i.mean()
    result = dict(mA=ma, Acc=(inter / (union + eps)).mean(), Prec=prec, Rec=rec,
                  F1=(2 * prec_i * rec_i / (prec_i + rec_i + eps)).mean(), F1_hm=2 * prec * rec / (prec + rec + eps))
    return {k: 100 * float(v) for k, v in result.items()}


def format_metrics(m):
    return " | ".join(f"{k} {v:.2f}" for k, v in m.items())


def build_model(cfg, data):
    clip_model = clip.CLIP(TINY_CLIP) if cfg.clip == "tiny" else clip.load(cfg.clip)
    rates = data.labels[data.splits["train"]].mean(0) if cfg.weighted_loss else None
    return SequencePAR(clip_model, data.prompts, DecoderConfig(cfg.n_layer, cfg.n_head, cfg.dropout), pos_rates=rates)


def configure_optimizer(model, cfg):
    # weight decay on matrices only; the freshly initialised decoder may get its own learning rate
    groups = []
    for part, lr in ((model.clip, cfg.lr), (model.transformer, cfg.decoder_lr or cfg.lr), (model.lm_head, cfg.decoder_lr or cfg.lr)):
        params = [p for p in part.parameters() if p.requires_grad]
        groups.append(dict(params=[p for p in params if p.dim() >= 2], weight_decay=cfg.weight_decay, base_lr=lr))
        groups.append(dict(params=[p for p in params if p.dim() < 2], weight_decay=0.0, base_lr=lr))
    # fused: one kernel over all tensors, on the CPU too (10x faster there than the default for the tiny model)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, fused=True)


def lr_factor(progress, warmup):
    # linear warm-up, then cosine decay to zero; progress and warmup are fractions of the whole run
    if progress < warmup:
        return progress / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1e-9, 1 - warmup))))


def save_checkpoint(obj, path):
    # a temporary file renamed over the old one: a crash leaves the old checkpoint or the new, never half of one
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_checkpoint(path, attr_names):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt["attr_names"] != list(attr_names):
        raise ValueError(f"{path} was trained on {len(ckpt['attr_names'])} other attributes "
                         f"({', '.join(ckpt['attr_names'][:4])}, ...) than this dataset's {len(attr_names)}; "
                         f"use another --out_dir")
    return ckpt


@torch.no_grad()
def evaluate(model, loader, device, ctx, beam_size):
    model.eval()
    preds, gts = [], []
    for images, labels in loader:
        with ctx:
            pred, _ = model.generate(images.to(device, non_blocking=True), beam_size=beam_size)
        preds.append(pred.cpu())
        gts.append(labels)
    model.train()
    return metrics(torch.cat(gts).numpy(), torch.cat(preds).numpy())


def main(argv):
    cfg = parse_config(argv)
    ddp = int(os.environ.get("RANK", -1)) != -1  # launched by torchrun
    if ddp:
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        rank, local_rank, world = dist.get_rank(), int(os.environ["LOCAL_RANK"]), dist.get_world_size()
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    else:
        rank, world = 0, 1
        device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    master = rank == 0
    if cfg.batch_size % world:
        raise ValueError(f"--batch_size={cfg.batch_size} must be divisible by the {world} processes")
    torch.manual_seed(cfg.seed + rank)
    cuda = device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    log = print if master else (lambda *a, **k: None)
    log("config: " + ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(cfg).items()))

    # data: the master reads (or for synth, draws) it first, so processes never draw the same set at once
    if ddp and not master:
        dist.barrier()
    data = load_dataset(cfg.dataset, cfg.root or None)
    if ddp and master:
        dist.barrier()
    eval_split = "val" if "val" in data.splits else "test"  # RAPv1 and WIDER publish no validation split
    log(f"{cfg.dataset}: {len(data.labels)} images, {len(data.attr_names)} attributes; "
        + ", ".join(f"{k} {len(v)}" for k, v in data.splits.items()) + f"; model selection on {eval_split}")

    model = build_model(cfg, data).to(device)
    raw_model = model
    size = model.clip.config.image_resolution
    train_set = PARImages(data, data.splits["train"], size, train=True)
    sampler = torch.utils.data.DistributedSampler(train_set, seed=cfg.seed) if ddp else None
    generator = torch.Generator()
    loader_args = dict(num_workers=cfg.workers, pin_memory=cuda, persistent_workers=cfg.workers > 0)
    loader = torch.utils.data.DataLoader(train_set, cfg.batch_size // world, shuffle=sampler is None, sampler=sampler,
                                         generator=generator, drop_last=True, **loader_args)
    if len(loader) == 0:
        raise ValueError(f"the train split has {len(train_set)} images, fewer than --batch_size={cfg.batch_size}")

    def eval_loader(split):
        return torch.utils.data.DataLoader(PARImages(data, data.splits[split], size, train=False),
                                           cfg.batch_size // world * 2, **loader_args)

    optimizer = configure_optimizer(raw_model, cfg)
    iters_per_epoch = len(loader)
    max_iters = cfg.epochs * iters_per_epoch
    eval_interval = cfg.eval_interval or iters_per_epoch
    budget = 60 * cfg.time_budget
    step, best, elapsed = 0, -1.0, 0.0
    os.makedirs(cfg.out_dir, exist_ok=True)
    best_path, last_path = os.path.join(cfg.out_dir, "ckpt.pt"), os.path.join(cfg.out_dir, "last.pt")
    if cfg.resume:
        ckpt = load_checkpoint(last_path, data.attr_names)
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, best, elapsed = ckpt["step"], ckpt["best_mA"], ckpt["elapsed"]
        log(f"resumed from {last_path} at step {step} (best {eval_split} mA so far {best:.2f})")
    if cfg.compile:
        model = torch.compile(model)
    if ddp:
        model = DDP(model, device_ids=[local_rank] if cuda else None)

    def checkpoint(metrics_now):
        return dict(model=raw_model.state_dict(), optimizer=optimizer.state_dict(), step=step, best_mA=best,
                    elapsed=elapsed, metrics=metrics_now, config=dataclasses.asdict(cfg),
                    clip_config=dataclasses.asdict(raw_model.clip.config),
                    decoder_config=dataclasses.asdict(raw_model.config), attr_names=list(data.attr_names),
                    prompts=list(data.prompts), dataset=cfg.dataset)

    def batches():
        # a fixed order per epoch (seed + epoch), so a resumed run sees the epochs it has left as they would have been
        epoch = step // iters_per_epoch
        while True:
            generator.manual_seed(cfg.seed + epoch)
            if sampler is not None:
                sampler.set_epoch(epoch)
            yield from loader
            epoch += 1

    train_batches = batches()
    start_step, t_log, t_start = step, time.time(), time.time() - elapsed
    while True:
        elapsed = time.time() - t_start
        if ddp and budget:  # every process must stop at the same step: the master's clock decides
            t = torch.tensor([elapsed], device=device)
            dist.broadcast(t, 0)
            elapsed = t.item()
        progress = max(step / max_iters, elapsed / budget if budget else 0.0)
        finished = progress >= 1
        lr = lr_factor(min(1.0, progress + 1 / max_iters), cfg.warmup_epochs / cfg.epochs)  # step 0 not at lr 0
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr

        if step > start_step and (step % eval_interval == 0 or finished):
            if master:
                m = evaluate(raw_model, eval_loader(eval_split), device, ctx, cfg.beam_size)
                # without a validation split the last model is the selected one: choosing on test would flatter it
                improved = m["mA"] > best or eval_split == "test"
                best = max(best, m["mA"])
                state = checkpoint(m)
                save_checkpoint(state, last_path)
                if improved:
                    save_checkpoint({k: v for k, v in state.items() if k != "optimizer"}, best_path)
                log(f"eval step {step} epoch {step / iters_per_epoch:.2f}: {eval_split} {format_metrics(m)}"
                    + (f" | best, saved {best_path}" if improved else f" | best mA {best:.2f}"))
            if ddp:
                dist.barrier()
        if finished:
            break

        images, labels = next(train_batches)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with ctx:
            _, loss = model(images, labels_to_targets(labels))
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip or float("inf"))
        if not torch.isfinite(norm):  # the norm is all-reduced under DDP, so every process stops here together
            raise FloatingPointError(f"loss became {loss.item()} (gradient norm {norm.item()}) at step {step}; "
                                     f"stopped, the last good checkpoint is {last_path}")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        if step % cfg.log_interval == 0:
            dt, t_log = time.time() - t_log, time.time()
            rate = cfg.log_interval * cfg.batch_size / dt
            eta = (max_iters - step) * dt / cfg.log_interval
            if budget:
                eta = min(eta, budget - elapsed)
            log(f"step {step}/{max_iters} | epoch {step / iters_per_epoch:.2f} | loss {loss.item():.4f} | lr {lr * cfg.lr:.2e} "
                f"| {rate:.0f} img/s | eta {int(eta // 60)}m{int(eta % 60):02d}s")

    if master:
        # the test split, once, with the selected model: the best on validation, or the last where there is none
        ckpt = torch.load(best_path, map_location=device, weights_only=True)
        raw_model.load_state_dict(ckpt["model"])
        m = evaluate(raw_model, eval_loader("test"), device, ctx, cfg.beam_size)
        log(f"test ({'best on val, step' if eval_split == 'val' else 'last step'} {ckpt['step']}, "
            f"{len(data.splits['test'])} images): {format_metrics(m)}")
        log("| " + " | ".join(m) + " |\n|" + "---|" * len(m) + "\n| " + " | ".join(f"{v:.2f}" for v in m.values()) + " |")
    if ddp:
        dist.destroy_process_group()
    return m if master else None


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (FileNotFoundError, ValueError, FloatingPointError) as e:
        # a data loader worker's error arrives with its traceback as text: its last line is the message
        sys.exit(f"error: {str(e).strip().splitlines()[-1]}")
