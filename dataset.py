"""
How the images of a dataset reach the model: read as a viewer shows them, padded to square and resized, augmented as
the paper does (Pad, RandomCrop, flip), normalized with CLIP's statistics, and cut into batches. Two ways, the same
pixels: a torch Dataset of PIL transforms in DataLoader workers, for any dataset, or for a set that fits in memory
(the synthetic one) every image decoded once into one uint8 tensor, cached on disk and augmented on whole batches.

Shapes: N images, B batch, A attributes; an image is (3, size, size).
"""
import ctypes
import hashlib
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps

import cli
from cli import MissingFile, UserError, save_atomic

# CLIP's training-set statistics; pretrained weights expect images normalised with exactly these.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

# images: pad to square, resize, augment as the paper does, and the torch Dataset


class PadToSquare:
    # centres the image on a black square, so that resizing keeps the person's aspect ratio

    def __call__(self, img):
        w, h = img.size
        if w == h and img.mode == "RGB":  # already square: nothing to pad
            return img
        out = Image.new("RGB", (max(w, h), max(w, h)))
        out.paste(img, ((max(w, h) - w) // 2, (max(w, h) - h) // 2))
        return out


def crop_pad(size):
    return max(1, round(10 * size / 224))  # the paper's Pad(10) is for 224 px; we keep its share of small images


def resize(size):
    # imported here, not at the top: torchvision brings its models and ops along (about 2 s), which a script that
    # stops at --help or at a bad option should not wait for
    import torchvision.transforms as transforms
    return transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC)


def build_transform(size, train):
    """PIL image -> (3, size, size) float: pad to square, resize, for training Pad + RandomCrop + flip, CLIP's stats."""
    import torchvision.transforms as transforms  # (see resize)
    ops = [PadToSquare(), resize(size)]
    if train:  # no attribute here is left/right-specific, so a flip keeps every label true
        ops += [transforms.Pad(crop_pad(size)), transforms.RandomCrop(size), transforms.RandomHorizontalFlip()]
    return transforms.Compose(ops + [transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


def _eight_bit(img):
    # 16-bit and 32-bit images hold values far above 255; Pillow's convert() would clip them (a 16-bit photo becomes
    # almost white), so we scale them by their real range first
    if img.mode.startswith("I;16") or img.mode == "I":
        x = np.asarray(img, dtype=np.float64)
        top = 65535 if img.mode.startswith("I;16") or x.max() > 255 else 255  # "I" holds 16-bit files too
        return Image.fromarray(np.clip(x * 255 / top + 0.5, 0, 255).astype(np.uint8))
    if img.mode == "F":  # floating point: [0, 1] by convention
        x = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(x * (255 if x.max() <= 1 else 1) + 0.5, 0, 255).astype(np.uint8))
    return img


class BadImage(UserError):
    """An image that cannot be read: a run that meets one in the middle of training saves its state first."""


class MissingImage(BadImage, MissingFile):
    pass


def read_image(path):
    """The image at `path` in RGB, as a viewer shows it: EXIF orientation applied (a phone's portrait photo is upright),
    the first frame of an animation, 16-bit and float images scaled by their real range. An unreadable file, or one
    over Pillow's pixel limit (a decompression bomb), raises a one-line ValueError naming it; one over Pillow's warning
    limit (half that) is read, and said in one line of ours, once per process."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.seek(0)
                rgb = _eight_bit(ImageOps.exif_transpose(img)).convert("RGB")  # grey, palette, RGBA, CMYK: all RGB
    except FileNotFoundError:
        raise MissingImage(f"image {path} not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadImage(f"cannot read image {path}: {e}") from None
    for w in caught:
        if issubclass(w.category, Image.DecompressionBombWarning) and path not in _large:
            _large.add(path)
            print(f"warning: image {path} is {rgb.width} x {rgb.height} pixels, over Pillow's warning limit of "
                  f"{Image.MAX_IMAGE_PIXELS:,}; read anyway, slowly", file=sys.stderr)
        elif not issubclass(w.category, Image.DecompressionBombWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)  # (another warning: as it was)
    return rgb


_large = set()  # the images read_image has said are large, in this process


def image_problem(path):
    """Why the file at `path` cannot be an image, from what is cheap to learn without decoding it: missing, empty, or
    a header that is no format Pillow knows (or a size over its limit); None when it may well be one. A file whose data
    is cut or damaged after a sound header passes: only decoding it (--decode=True) finds that."""
    try:
        if os.path.getsize(path) == 0:
            return "an empty file"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # (read_image says it when it reads it)
            with Image.open(path):  # reads the header only
                return None
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return str(e).replace(f"{path!r}", "").replace(str(path), "").replace("  ", " ").strip() or type(e).__name__


def check_images(paths, decode=False):
    """Raises one line naming the images that cannot be used and their count: missing, empty, or without an image
    header Pillow knows (with decode, those that do not decode in full). The header of a file costs about 30 us, so a
    run checks all of its images before it starts (3 s for 100,000)."""
    bad = []
    for i, p in enumerate(paths):
        if decode:
            if i % 1000 == 0:
                print(f"\rreading images: {i}/{len(paths)}", end="", file=sys.stderr, flush=True)
            try:
                read_image(p)
            except (FileNotFoundError, ValueError) as e:
                bad.append((p, f"{e}" if os.path.exists(p) else "missing"))
        elif not os.path.isfile(p):
            bad.append((p, "missing"))
        else:
            problem = image_problem(p)
            if problem:
                bad.append((p, problem))
    if decode:
        print(f"\rreading images: {len(paths)}/{len(paths)}", file=sys.stderr)
    if not bad:
        return
    shown = 10
    if all(why == "missing" for _, why in bad):  # (the common case: a folder not there, or moved)
        listed, kind = ", ".join(p for p, _ in bad[:shown]), "missing"
    else:
        listed, kind = ", ".join(f"{p} ({why})" for p, why in bad[:shown]), "missing or unreadable"
    more = f", and {len(bad) - shown} more" if len(bad) > shown else ""
    hint = "" if decode or kind == "missing" else \
        "; mend or remove them (--decode=True opens every image in full, and finds the rest)"
    raise MissingFile(f"{len(bad)} of {len(paths)} images are {kind}: {listed}{more}{hint}")


class PARImages(torch.utils.data.Dataset):
    """(image (3, size, size) float, labels (A,) uint8) for the images `indices` of a PARData."""

    def __init__(self, data, indices, size, train):
        self.paths = [data.image_paths[i] for i in indices]
        self.labels = torch.from_numpy(data.labels[np.asarray(indices, dtype=np.int64)])
        self.transform = build_transform(size, train)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(read_image(self.paths[i])), self.labels[i]


# -----------------------------------------------------------------------------
# the same images as one tensor, for a set that fits in memory: decoded once, augmented on whole batches


def _square(job):
    path, size = job  # the transform's deterministic part: pad to square and resize, kept as 8-bit pixels
    img = resize(size)(PadToSquare()(read_image(path)))
    return np.asarray(img).transpose(2, 0, 1).copy()  # (3, size, size) uint8


def cache_folder():
    # ours, outside any dataset (which may be shared or read-only): $XDG_CACHE_HOME/sequencepar or ~/.cache/sequencepar
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser(os.path.join("~", ".cache")), "sequencepar")


def _quiet_worker():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to report, once


def load_images(paths, size, folder=None):
    """All images as one uint8 tensor (N, 3, size, size), padded to square and resized exactly as build_transform
    does: decoded once, in parallel, and kept in a cache file of ours (in cache_folder() unless `folder` is given),
    named by the images' paths and the size, and rebuilt when any image's size or time changes. A cache that cannot be
    written is not an error: the images then stay in memory only."""
    real = [os.path.realpath(p) for p in paths]
    key = hashlib.sha1(("\n".join(real) + f"\n{size}").encode()).hexdigest()[:16]
    stamp = hashlib.sha1("".join(f"{os.stat(p).st_size}\t{os.stat(p).st_mtime_ns}\n" for p in real).encode()).hexdigest()
    cache = os.path.join(folder or cache_folder(), f"images-{size}px-{key}.pt")
    if os.path.exists(cache):
        try:
            saved = torch.load(cache, weights_only=True)
            if saved["stamp"] == stamp and saved["images"].shape == (len(paths), 3, size, size):
                return saved["images"]
        except Exception:  # a cache we cannot read is simply rebuilt
            pass
    print(f"decoding {len(paths)} images (once; kept in {cache}) ...", end=" ", flush=True)
    t0 = time.time()
    try:
        with multiprocessing.Pool(os.cpu_count(), initializer=_quiet_worker) as pool:
            images = torch.from_numpy(np.stack(pool.map(_square, [(p, size) for p in paths], chunksize=256)))
    except KeyboardInterrupt:
        raise KeyboardInterrupt("\ninterrupted while decoding the images; nothing was kept") from None
    print(f"done in {time.time() - t0:.0f} s")
    try:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        # (a temporary name of this process's: two runs may decode the same set at once)
        save_atomic(cache, lambda f: torch.save(dict(stamp=stamp, images=images), f), tmp=f"{cache}.{os.getpid()}.tmp")
    except OSError as e:
        print(f"note: the decoded images stay in memory only: {e}")
    return images


def normalize(x):
    # uint8 (B, 3, size, size) -> CLIP's statistics, as ToTensor + Normalize do
    mean, std = torch.tensor(MEAN, device=x.device), torch.tensor(STD, device=x.device)
    return (x.float() / 255 - mean[:, None, None]) / std[:, None, None]


def augment(x, pad, shifts=None, flips=None, generator=None):
    """The training transform's random part on a batch of uint8 images (B, 3, size, size): Pad(pad) with black, a
    random size x size crop and a random horizontal flip, as in build_transform, then normalize. shifts (B, 2) (top, left) and
    flips (B,) bool may be given; by default they are drawn from `generator` (torch's global one if None)."""
    B, _, size, _ = x.shape
    shifts = torch.randint(0, 2 * pad + 1, (B, 2), generator=generator) if shifts is None else shifts
    flips = torch.rand(B, generator=generator) < 0.5 if flips is None else flips
    x = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = (shifts[:, 0, None] + torch.arange(size))[:, None, :, None]  # (B, 1, size, 1)
    cols = shifts[:, 1, None] + torch.arange(size)  # (B, size)
    cols = torch.where(flips[:, None], cols.flip(1), cols)[:, None, None, :]  # (B, 1, 1, size)
    return normalize(x[torch.arange(B)[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols])

# -----------------------------------------------------------------------------
# the training batches


def make_batches(cfg, data, size, sampler, cuda):
    """The training batches, without end, a function that gives a split's evaluation batches, and the generator the
    augmentation draws from (a resumed run restores its state). The batches come through a DataLoader of PIL
    transforms, or with --preload=True are cut from one uint8 tensor of every image, augmented on whole batches (the
    same pad, crop and flip), which spares a small model the per-image Python of the PIL pipeline."""
    eval_size = 2 * sampler.batch_size
    # The augmentation draws from a generator of its own, seeded from the run's seed and the process's rank alone:
    # every head of one seed sees the same crops and flips, whatever it draws for its weights and its dropout.
    generator = torch.Generator().manual_seed(cfg.seed + sampler.rank)
    if cfg.preload:
        pixels, labels = load_images(data.image_paths, size), torch.from_numpy(data.labels)
        train = torch.from_numpy(data.splits["train"])

        def train_batches():
            for batch in sampler:
                chosen = train[batch]
                yield augment(pixels[chosen], crop_pad(size), generator=generator), labels[chosen]

        def eval_batches(split):
            return ((normalize(pixels[i]), labels[i]) for i in torch.from_numpy(data.splits[split]).split(eval_size))
        return train_batches(), eval_batches, generator
    workers = cli.worker_count(cfg.workers)
    loader_args = dict(num_workers=workers, pin_memory=cuda, persistent_workers=workers > 0, worker_init_fn=worker_init)
    # The PIL transforms draw from torch's global generator, in whichever process runs them. With workers, that is
    # each worker's, seeded from a number the loader draws from `generator`: paired between heads, but a resumed run's
    # workers start their streams again. Without, it is the main process's, which dropout also draws from: we lend
    # the transforms our generator's state for each batch, so they are paired, and resumed exactly, too.
    train_loader = torch.utils.data.DataLoader(PARImages(data, data.splits["train"], size, train=True),
                                               batch_sampler=sampler, generator=generator, **loader_args)
    train_batches = iter(train_loader)

    def in_this_process():
        while True:
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(generator.get_state())
                batch = next(train_batches)
                generator.set_state(torch.get_rng_state())
            yield batch

    def eval_batches(split):
        return torch.utils.data.DataLoader(PARImages(data, data.splits[split], size, train=False), eval_size,
                                           **loader_args)
    return (train_batches if workers else in_this_process()), eval_batches, generator


class EpochBatches(torch.utils.data.Sampler):
    """The training batches of one process, epoch after epoch, without end: each epoch a permutation drawn from
    (seed, epoch) alone, the same in every process, of which each process takes its own share. It starts at any step,
    so a resumed run continues at the very batch where it stopped. The generator of an epoch is seeded by a hash of
    the pair (numpy's SeedSequence), not by seed + epoch: that would give seed 1 the orders of seed 0 one epoch later,
    and two seeds of an experiment would see most of their batches in common."""

    def __init__(self, n, batch_size, seed, rank=0, world=1, start_step=0):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.per_epoch, self.start_step = n // (batch_size * world), start_step  # full batches per process

    def __iter__(self):
        step = self.start_step
        while True:
            epoch, k = divmod(step, self.per_epoch)
            key = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1, np.uint64)[0])
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(key))
            batches = perm[:self.per_epoch * self.world * self.batch_size].view(self.per_epoch, self.world, -1)
            for batch in batches[k:, self.rank]:  # (batch_size,) indices
                yield batch.tolist()
                step += 1


def worker_init(_):
    # A DataLoader worker ends with the main process, and only then. Ctrl-C and a hang-up reach the whole process
    # group, and a cluster's preemption may send SIGTERM to every process of the job: all three are the main
    # process's to act on, so a worker ignores them, except a SIGTERM from its parent, which is how the parent ends
    # it. On Linux the kernel also kills a worker the moment its parent dies, however the parent dies.
    for s in (signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
        parent = multiprocessing.parent_process().pid
        if os.getppid() != parent:  # the parent died before we asked
            os._exit(0)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # SIGTERM now waits for the thread below
        threading.Thread(target=_end_on_sigterm_from, args=(parent,), daemon=True).start()


def _end_on_sigterm_from(parent):
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
        pass
    os._exit(0)
