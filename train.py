"""
Train SequencePAR on a pedestrian attribute dataset.

    python train.py --dataset=peta                  # the paper's recipe on PETA with CLIP ViT-L/14
    python train.py --dataset=synth                 # the synth preset: a tiny CLIP from scratch, minutes on a CPU
    python train.py --dataset=peta --head=linear    # the multi-label baseline: the same CLIP, one linear layer
    python train.py --dataset=peta --head=query     # SequencePAR's decoder, every attribute at once, no autoregression
    torchrun --nproc_per_node=8 train.py --dataset=pa100k
    python train.py --help                          # every option and its default

Every field of TrainConfig can be overridden with --key=value (or --key value). The run checks its options and its
data first, then evaluates on the validation split every epoch and keeps the best model in out/ckpt.pt (where a
dataset has no validation split, it evaluates on test and keeps the last model: choosing on test would flatter it).
out/last.pt holds the whole training state, written at every evaluation and when a stop signal (Ctrl-C, SIGTERM,
SIGHUP) ends the run, for --resume=True. At the end the selected model is scored once on the test split with
evaluate.py's `evaluate`, which writes its reports beside the checkpoint. One run at a time holds out_dir (run.py).
"""
import dataclasses
import gc
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import cli
from cli import UserError, save_atomic
import clip
from checkpoint import load_checkpoint
from data import DATASETS, label_warnings, load_dataset
from decoder import DecoderConfig, LinearHead, QueryHead, SequencePAR, labels_to_targets
from evaluate import (applied, choose_thresholds, decoding_options, evaluate, format_metrics, metrics, predict, save_text,
                      scores_every_attribute, thresholds_csv)
from dataset import BadImage, EpochBatches, check_images, make_batches
from run import CSVLog, Interrupt, prepare_out_dir, remove_replaced_run, resume, run_steps


@dataclass
class TrainConfig:
    # data
    dataset: str = "peta"
    root: str = ""                # "" reads data/<dataset>
    pkl: str = ""                 # a dataset pickle under root (pkl: "" takes the only one there)
    images: str = ""              # the pickle datasets' image folder under root ("" is the dataset's default)
    partition: int = 0            # which of a dataset's random partitions (PETA, RAP and the pickles have several)
    workers: int = 4              # DataLoader processes per training process
    preload: bool = False         # decode every image once into one uint8 tensor in memory (for small sets: synth)
    decode: bool = False          # open every image before training, not only check that it is there
    # model
    clip: str = "ViT-L/14"        # an official name, a CLIP checkpoint file, or "tiny" (small, random, no download)
    head: str = "sequencepar"     # or "query": SequencePAR's decoder fed every attribute at once, a sigmoid each; or
                                  # "linear": the multi-label baseline, CLIP's image embedding -> Linear -> sigmoid
    n_layer: int = 6              # the decoder's (SequencePAR and query)
    n_head: int = 8               # the decoder's attention heads; they divide CLIP's embedding width
    dropout: float = 0.1          # the decoder's
    weighted_loss: bool = True    # rare attributes weigh more: the paper's weighted NLL, or weighted BCE (query, linear)
    # optim: the paper's recipe
    epochs: float = 50.0          # passes over the train split; the run is epochs x (train images // batch_size) steps
    batch_size: int = 32          # in total, over all processes
    lr: float = 1e-6              # CLIP's and the prompts' learning rate, and the head's unless head_lr is set
    head_lr: float = 0.0          # the decoder's (or the linear layer's) learning rate; 0: the same as lr
    weight_decay: float = 1e-4    # AdamW's, on matrices only
    warmup_epochs: float = 5.0    # a linear warm-up, then cosine decay towards 0, per step
    grad_clip: float = 1.0        # 0: no clipping
    # eval/log
    out_dir: str = "out"
    eval_interval: int = 0        # steps between evaluations; 0 means once per epoch
    log_interval: int = 50        # steps between log lines
    rule: str = "chain"           # decoding in every evaluation: chain (every attribute's probability by the chain
                                  # rule, against --threshold) or greedy (the paper's: the most probable next attribute)
    threshold: float = 0.5        # the chain rule's (and the linear head's sigmoids')
    unweight: bool = False        # the chain rule reads the probabilities with the weighted NLL's tilt undone
    beam_size: int = 1            # greedy's beam search; 1: none
    resume: bool = False          # continue the run in out_dir from its last.pt
    overwrite: bool = False       # start afresh in an out_dir that holds another run, replacing its checkpoints
    # system
    device: str = "auto"          # cuda when there is one
    compile: bool = False         # torch.compile the model
    seed: int = 0
    preset: str = "auto"          # synth: the demo's small model and schedule; paper: the paper's recipe (the
                                  # defaults above); auto: synth for --dataset=synth, paper for any other dataset
    PATHS = ("root", "pkl", "images", "clip", "out_dir")  # the options that name files or folders: ~ is expanded


# A preset replaces the paper's defaults with others; options given on the command line still win. The synthetic set
# trains a small CLIP from scratch on a CPU: 6 epochs of its 32,000 training images are 3,000 steps of 64 on every
# machine (the result then differs between machines by float rounding only). A model this far from converged wants a
# large learning rate and a long warm-up (the first 6/10 of the run); the images are decoded once into memory, and an
# evaluation every 5,000 steps is one evaluation on val, at the end.
PRESETS = {"paper": {}, "synth": dict(clip="tiny", n_layer=2, n_head=4, dropout=0.0, epochs=6.0,
                                      batch_size=64, lr=1.5e-3, weight_decay=0.05, warmup_epochs=3.6, preload=True,
                                      workers=0, eval_interval=5000)}
# The demo's CLIP: 64 px images cut into 4 x 4 patches of 16 px by a stem of three convolutions (16, 32, 64 channels),
# a 2-layer ViT and a 1-layer text encoder of width 128: small enough that the demo sees many images in its minutes.
TINY_CLIP = clip.CLIPConfig(embed_dim=128, image_resolution=64, vision_layers=2, vision_width=128, vision_heads=2,
                            vision_patch_size=16, vision_stem=3, vision_stem_width=64, transformer_width=128,
                            transformer_heads=2, transformer_layers=1)


def parse_config(argv):
    """TrainConfig from --key=value arguments: the preset's values, then the ones given."""
    overrides = cli.parse_overrides(argv, TrainConfig)
    preset = overrides.get("preset", "auto")
    if preset == "auto":
        preset = "synth" if overrides.get("dataset") == "synth" else "paper"
    if preset not in PRESETS:
        raise UserError(f"--preset={preset}: expected auto, {' or '.join(PRESETS)}")
    cfg = TrainConfig(**{**PRESETS[preset], **overrides, "preset": preset})
    if "warmup_epochs" not in overrides and cfg.warmup_epochs > cfg.epochs:
        # a run shorter than the preset's warm-up (a quick --epochs=0.5) warms up for the same fraction of its length
        recipe = {**dataclasses.asdict(TrainConfig()), **PRESETS[preset]}
        cfg.warmup_epochs = cfg.epochs * recipe["warmup_epochs"] / recipe["epochs"]
    return cfg


PRESETS_HELP = "presets:\n" + "\n".join(f"  {k}: " + (", ".join(f"{n}={v!r}" for n, v in p.items()) or "the defaults")
                                       for k, p in PRESETS.items())


def check_config(cfg):
    """One-line errors for options that cannot work, before any data is read or any model is built."""
    rules = [("epochs", cfg.epochs > 0, "a positive number"), ("batch_size", cfg.batch_size > 0, "a positive number"),
             ("lr", cfg.lr > 0, "a positive number"), ("head_lr", cfg.head_lr >= 0, "0 or more"),
             ("weight_decay", cfg.weight_decay >= 0, "0 or more"), ("grad_clip", cfg.grad_clip >= 0, "0 or more"),
             ("warmup_epochs", 0 <= cfg.warmup_epochs <= cfg.epochs, f"between 0 and --epochs={cfg.epochs:g} (left out, "
              "it is the preset's fraction of the run)"),
             ("eval_interval", cfg.eval_interval >= 0, "0 (once per epoch) or more steps"),
             ("log_interval", cfg.log_interval > 0, "a positive number of steps"),
             ("workers", cfg.workers >= 0, "0 or more"),
             ("partition", cfg.partition >= 0, "0 or more"), ("seed", cfg.seed >= 0, "0 or more"),
             ("head", cfg.head in ("sequencepar", "query", "linear"), "sequencepar, query or linear"),
             ("n_layer", cfg.n_layer >= 1, "1 or more"), ("n_head", cfg.n_head >= 1, "1 or more"),
             ("dropout", 0 <= cfg.dropout < 1, "a probability below 1")]
    for name, ok, expected in rules:
        if not ok:
            raise UserError(f"--{name}={getattr(cfg, name)}: expected {expected}")
    decoding_options(cfg)
    if cfg.resume and cfg.overwrite:
        raise UserError("--resume=True and --overwrite=True contradict each other: continue the run, or replace it")
    if cfg.dataset not in DATASETS:
        raise UserError(f"--dataset={cfg.dataset}: unknown; known: {', '.join(DATASETS)}")
    if cfg.clip != "tiny":
        clip.check_source(cfg.clip)
    cli.resolve_device(cfg.device)
    width = TINY_CLIP.embed_dim if cfg.clip == "tiny" else clip.config(cfg.clip).embed_dim \
        if cfg.clip in clip.available_models() else None  # a CLIP file is checked once it is read
    check_heads(cfg.n_head, width)


def check_heads(n_head, width):
    if width is not None and width % n_head:
        raise UserError(f"--n_head={n_head} does not divide the decoder's width {width} (CLIP's embedding width)")


def read_data(cfg, master=True, log=print):
    """The dataset and the split that selects the model. Every split the run needs must be there, with enough images
    for a batch, and every image file present (with --decode=True, readable): better now than hours into a run."""
    data = load_dataset(cfg.dataset, cfg.root or None, pkl=cfg.pkl, images=cfg.images, partition=cfg.partition,
                        draw=not cfg.root)
    for note in data.notes:
        log(f"{cfg.dataset}: {note}")
    eval_split = "val" if "val" in data.splits else "test"  # RAPv1 and WIDER publish no validation split
    needed = list(dict.fromkeys(("train", eval_split, "test")))
    for split in needed:
        if len(data.splits.get(split, [])) == 0:
            raise UserError(f"{cfg.dataset}: the {split} split is empty or missing; a run needs train and test images")
    if master:
        check_images([data.image_paths[i] for s in needed for i in data.splits[s]], decode=cfg.decode)
    log(f"{cfg.dataset}: {len(data.labels)} images, {len(data.attr_names)} attributes; "
        + ", ".join(f"{k} {len(v)}" for k, v in data.splits.items()) + f"; model selection on {eval_split}")
    for warning in label_warnings(data, eval_split):
        log(f"warning: {cfg.dataset}: {warning}")
    if len(data.splits["train"]) < cfg.batch_size:
        raise UserError(f"the train split has {len(data.splits['train'])} images, fewer than "
                        f"--batch_size={cfg.batch_size}")
    return data, eval_split


def build_model(cfg, data):
    text = cfg.head != "linear"  # the linear head reads no prompts: no text encoder is built for it
    clip_model = clip.CLIP(TINY_CLIP, text) if cfg.clip == "tiny" else clip.load(cfg.clip, text=text)
    rates = data.labels[data.splits["train"]].mean(0) if cfg.weighted_loss else None
    if cfg.head == "linear":
        return LinearHead(clip_model, len(data.attr_names), pos_rates=rates)
    check_heads(cfg.n_head, clip_model.config.embed_dim)
    # CLIP's contrastive temperature is the one weight the decoder heads never use. We freeze it: DDP expects a
    # gradient for every trainable parameter, and AdamW's weight decay would otherwise shrink it for nothing.
    clip_model.logit_scale.requires_grad_(False)
    head = SequencePAR if cfg.head == "sequencepar" else QueryHead
    return head(clip_model, data.prompts, DecoderConfig(cfg.n_layer, cfg.n_head, cfg.dropout), pos_rates=rates)


def choose_on_val(model, data, batches, decoding, device, ctx, log):
    """Each attribute's threshold, chosen where its balanced accuracy on val is highest (evaluate.choose_thresholds),
    for the checkpoint: {split, rule, unweight, default, values, kept}. Says what val's mA gains."""
    pred, scores, gt = predict(model, batches, device, ctx, decoding)
    values, _, kept = choose_thresholds(gt, scores, decoding["threshold"])
    chosen = (scores > np.asarray(values, dtype=scores.dtype)).astype(np.uint8)
    names = data.attr_names
    kept_names = [f"{n} ({k})" for n, k in zip(names, kept) if k]
    log(f"thresholds chosen on val for each attribute: val mA {metrics(gt, pred)['mA']:.2f} at "
        f"{decoding['threshold']:g}, {metrics(gt, chosen)['mA']:.2f} at theirs; kept at {decoding['threshold']:g}: "
        + (", ".join(kept_names) if kept_names else "none"))
    scored = applied(model, decoding)
    return dict(split="val", rule=scored["rule"], unweight=scored.get("unweight", False),
                default=decoding["threshold"], values=values, kept=[n for n, k in zip(names, kept) if k])


def configure_optimizer(model, cfg):
    """AdamW with weight decay on matrices only. Returns the optimizer and each parameter group's base learning rate:
    we keep those out of the optimizer's state, so a resumed run follows the --lr it is given now."""
    groups, base_lrs = [], []
    # CLIP's part: its weights and the prompts' rows of its token table; the head's: the decoder, or the linear layer
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    clip_part = [p for n, p in named if n.startswith("clip.") or n == "prompt_embedding"]
    head_part = [p for n, p in named if not (n.startswith("clip.") or n == "prompt_embedding")]
    for params, lr in ((clip_part, cfg.lr), (head_part, cfg.head_lr or cfg.lr)):
        for chosen, decay in (([p for p in params if p.dim() >= 2], cfg.weight_decay), ([p for p in params if p.dim() < 2], 0.0)):
            if chosen:
                groups.append(dict(params=chosen, weight_decay=decay))
                base_lrs.append(lr)
    # fused: one kernel over all tensors, on the CPU too, where the default loops over them in Python
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=True), base_lrs


def lr_factor(progress, warmup):
    # linear warm-up, then cosine decay towards zero; progress and warmup are fractions of the whole run
    if progress < warmup:
        return progress / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1e-9, 1 - warmup))))


def main(argv):
    cfg = parse_config(argv)
    check_config(cfg)
    ddp = int(os.environ.get("RANK", -1)) != -1  # launched by torchrun
    if ddp:
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        rank, local_rank, world = dist.get_rank(), int(os.environ["LOCAL_RANK"]), dist.get_world_size()
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    else:
        rank, world, device = 0, 1, cli.resolve_device(cfg.device)
    master = rank == 0
    if cfg.batch_size % world:
        raise UserError(f"--batch_size={cfg.batch_size} must be divisible by the {world} processes")
    torch.manual_seed(cfg.seed + rank)
    cuda = device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    log = print if master else (lambda *a, **k: None)
    log("config: " + ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(cfg).items()))
    if PRESETS[cfg.preset]:
        log(f"preset {cfg.preset} sets " + ", ".join(f"{k}={v!r}" for k, v in PRESETS[cfg.preset].items())
            + " (options given on the command line win)")
    if cfg.clip == "tiny" and cfg.lr < 1e-4:
        log(f"warning: --clip=tiny is a CLIP trained from scratch, and at --lr={cfg.lr:g} (a rate for fine-tuning a "
            "released CLIP) it learns next to nothing; --preset=synth sets the demo's options, which do learn")
    if master:
        prepare_out_dir(cfg)

    # data: the master reads (or for synth, draws) it first, so processes never draw the same set at once. Every
    # split the run needs must be there and every image file present: better now than hours into a run.
    if ddp and not master:
        dist.barrier()
    data, eval_split = read_data(cfg, master, log)
    if ddp and master:
        dist.barrier()

    model = build_model(cfg, data).to(device)
    if master:  # every check has passed: only now does a replaced run's work go
        remove_replaced_run(cfg)
    # Every head of one seed starts from the same image encoder (CLIP builds it first) and sees the same batches with
    # the same augmentation (its own generator, in make_batches). What draws from torch's generator from here on, the
    # heads' dropout, starts from the same state whatever the head drew for its own weights.
    torch.manual_seed(cfg.seed + rank)
    raw_model = model
    optimizer, base_lrs = configure_optimizer(raw_model, cfg)
    # the run so far: the step, the best val mA and the step of the model in ckpt.pt (-1: none yet), the step whose
    # state was last evaluated, the seconds spent training and evaluating (over every start of the run)
    state = dict(step=0, best_mA=-1.0, selected=-1, evaluated=0, train_s=0.0, eval_s=0.0, rng=None, aug_rng=None)
    best_path, last_path = os.path.join(cfg.out_dir, "ckpt.pt"), os.path.join(cfg.out_dir, "last.pt")
    if cfg.resume:
        resumed = resume(last_path, raw_model, optimizer, data, cfg, eval_split, log)
        if resumed is None:  # a finished run
            return None
        state.update(resumed)
    step, train_s0 = state["step"], state["train_s"]
    csv_log = CSVLog(os.path.join(cfg.out_dir, "log.csv"), step if cfg.resume else None) if master else None
    if cfg.compile:
        model = torch.compile(model)
    if ddp:
        model = DDP(model, device_ids=[local_rank] if cuda else None)

    sampler = EpochBatches(len(data.splits["train"]), cfg.batch_size // world, cfg.seed, rank, world, start_step=step)
    if ddp and not master:  # the master decodes a --preload cache first
        dist.barrier()
    train_batches, eval_batches, augmentation = make_batches(cfg, data, raw_model.clip.config.image_resolution,
                                                             sampler, cuda)
    if ddp and master:
        dist.barrier()
    if state["rng"] is not None:  # dropout and augmentation go on as if the run had never stopped (one process)
        torch.set_rng_state(state["rng"])
    if state["aug_rng"] is not None:  # a resume: the augmentation goes on where it stopped
        augmentation.set_state(state["aug_rng"])

    def checkpoint(metrics_now):
        return dict(model=raw_model.state_dict(), optimizer=optimizer.state_dict(), metrics=metrics_now,
                    **{k: state[k] for k in ("step", "best_mA", "selected", "train_s", "eval_s")}, rng=torch.get_rng_state(),
                    aug_rng=augmentation.get_state(), config=dataclasses.asdict(cfg),
                    clip_config=dataclasses.asdict(raw_model.clip.config),
                    decoder_config=dataclasses.asdict(raw_model.config) if cfg.head != "linear" else {},
                    head=cfg.head, attr_names=list(data.attr_names), prompts=list(data.prompts), dataset=cfg.dataset)

    def save(state, path):
        save_atomic(path, lambda f: torch.save(state, f))

    def stop_at(e):
        # an image that passed the checks before the run but does not decode: the run stops as a stop signal stops it,
        # its state saved at this step, so that once the image is mended the resumed run goes on from here
        if master:
            save(checkpoint(None), last_path)
        return UserError(f"{cli.one_line(e)}; stopped at step {step}, saved {last_path}: mend or remove the image, "
                         "then continue with --resume=True")

    iters_per_epoch = sampler.per_epoch
    max_iters = run_steps(cfg, len(data.splits["train"]))
    eval_interval = cfg.eval_interval or iters_per_epoch
    log(f"training {max_iters} steps: {cfg.epochs:g} epoch{'' if cfg.epochs == 1 else 's'} of {iters_per_epoch} batches of {cfg.batch_size} images"
        + (f", from step {step}" if step else ""))
    model.train()  # (a CLIP loaded from a file comes in eval mode)
    t_log, t_session, t_eval = time.time(), time.time(), 0.0  # t_eval: this start's seconds of evaluation
    with Interrupt(last_path) as interrupt:
        while True:
            state["train_s"] = train_s0 + time.time() - t_session - t_eval
            stop = interrupt.requested
            if ddp:  # every process must stop at the same step: the master's Ctrl-C decides
                t = torch.tensor([float(stop)], device=device)
                dist.broadcast(t, 0)
                stop = bool(t[0].item())
            if stop:
                if master:
                    save(checkpoint(None), last_path)
                raise interrupt.stopped(f"at step {step}: saved {last_path}; continue with --resume=True")
            # the fraction of the run done after this step, counted against one step past the end: the warm-up starts
            # above 0 and the cosine ends above 0, so no step is spent at learning rate 0
            lr_mult = lr_factor((step + 1) / (max_iters + 1), cfg.warmup_epochs / cfg.epochs)
            for group, base_lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base_lr * lr_mult
            finished = step >= max_iters

            if step != state["evaluated"] and (step % eval_interval == 0 or finished):
                if master:
                    t0 = time.time()
                    try:
                        pred, _, gt = predict(raw_model, eval_batches(eval_split), device, ctx, decoding_options(cfg))
                    except BadImage as e:
                        raise stop_at(e) from None
                    m = metrics(gt, pred)
                    dt = time.time() - t0
                    t_eval += dt
                    # with a validation split, the best model so far is the selected one; without, the last (choosing
                    # on test would flatter it)
                    selected = m["mA"] > state["best_mA"] or eval_split == "test"
                    if eval_split == "val":
                        state["best_mA"] = max(state["best_mA"], m["mA"])
                    state.update(selected=step if selected else state["selected"], eval_s=state["eval_s"] + dt)
                    # The order makes a kill between two writes harmless: the log row, then last.pt, which records the
                    # evaluation (a resume from an earlier last.pt drops the row and evaluates again), then ckpt.pt,
                    # which a resume writes again from last.pt when last.pt says this step was selected.
                    csv_log.write(kind="eval", step=step, epoch=step / iters_per_epoch, split=eval_split, **m)
                    saved = checkpoint(m)
                    save(saved, last_path)
                    if selected:
                        save({k: v for k, v in saved.items() if k not in ("optimizer", "rng", "aug_rng")}, best_path)
                    note = (f"best, saved {best_path}" if eval_split == "val" else f"the last model, saved {best_path}") \
                        if selected else f"best mA {state['best_mA']:.2f}"
                    log(f"eval step {step} epoch {step / iters_per_epoch:.2f}: {eval_split} {format_metrics(m)} | {note}")
                if ddp:
                    dist.barrier()
            if finished:
                break

            try:
                images, labels = next(train_batches)
            except BadImage as e:
                raise stop_at(e) from None
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with ctx:
                _, loss = model(images, labels_to_targets(labels))
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip or float("inf"))
            if not torch.isfinite(norm):  # DDP all-reduced the gradients: every process has this norm and stops here
                kept = f"the last good checkpoint is {last_path}" if os.path.exists(last_path) else "no checkpoint was saved yet"
                raise UserError(f"loss became {loss.item()} (gradient norm {norm.item()}) at step {step}; "
                                f"stopped, {kept}")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            state["step"] = step

            if step % cfg.log_interval == 0:
                dt, t_log = time.time() - t_log, time.time()
                rate = cfg.log_interval * cfg.batch_size / dt
                eta = (max_iters - step) * dt / cfg.log_interval
                clip_lr, head_lr = optimizer.param_groups[0]["lr"], optimizer.param_groups[-1]["lr"]
                lrs = f"{clip_lr:.2e}" + (f"/{head_lr:.2e}" if head_lr != clip_lr else "")  # CLIP's/the head's
                log(f"step {step}/{max_iters} | epoch {step / iters_per_epoch:.2f} | loss {loss.item():.4f} | lr {lrs} "
                    f"| {rate:.0f} img/s | eta {int(eta // 60)}m{int(eta % 60):02d}s")
                if master:
                    csv_log.write(kind="train", step=step, epoch=step / iters_per_epoch, loss=loss.item(), lr=clip_lr,
                                  head_lr=head_lr, img_per_s=rate)

        m = None
        if master:
            # the test split, once, with the selected model. A stop signal now ends the run at once: last.pt holds the
            # trained state, and --resume=True runs the test again. The test row of log.csv is the last thing the run
            # writes: it marks the run finished.
            interrupt.at_once = f"during the final test; {last_path} holds the trained state: --resume=True tests it"
            ckpt = load_checkpoint(best_path)
            raw_model.load_state_dict(ckpt["model"])
            t0 = time.time()
            decoding = decoding_options(cfg)
            thresholds = chosen_on = None
            if eval_split == "val" and scores_every_attribute(raw_model, decoding):
                # each attribute's threshold, chosen on val for the selected model, kept in ckpt.pt: written atomically,
                # and chosen again alike by a run resumed before its test row, so a crash here changes no report
                ckpt["thresholds"] = choose_on_val(raw_model, data, eval_batches(eval_split), decoding, device, ctx, log)
                save(ckpt, best_path)
                save_text(os.path.join(cfg.out_dir, "thresholds_val.csv"),
                          thresholds_csv(data.attr_names, ckpt["thresholds"]["values"]))
                thresholds, chosen_on = ckpt["thresholds"]["values"], "each attribute's threshold, chosen on val"
            title = f"{'best on val, step' if eval_split == 'val' else 'last step'} {ckpt['step']}"
            m = evaluate(raw_model, data, "test", eval_batches("test"), cfg.out_dir,
                         dict(checkpoint=best_path, step=ckpt["step"], dataset=cfg.dataset, train_s=state["train_s"],
                              eval_s=state["eval_s"]), decoding, device, ctx, log=log, title=title,
                         thresholds=thresholds, chosen_on=chosen_on)
            t_test = time.time() - t0
            csv_log.write(kind="test", step=ckpt["step"], epoch=ckpt["step"] / iters_per_epoch, split="test", **m)
            log(f"time: {state['train_s']:.1f} s training" + (f" ({train_s0:.1f} s of it before --resume=True)" if
                cfg.resume else "") + f", {state['eval_s']:.1f} s evaluating on {eval_split}, {t_test:.1f} s on test")
    if ddp:
        # the DDP wrapper holds the process group: released here, while the interpreter is whole, not in its exit
        del model
        gc.collect()
        dist.destroy_process_group()
    return m


if __name__ == "__main__":
    cli.run(main, TrainConfig, __doc__, PRESETS_HELP)
