"""
Pedestrian attribute datasets: readers for the files as their owners distribute them, the image transform, and a
torch Dataset. The synthetic set of the demo is drawn by synth.py and read here like any csv folder.

Every reader returns the same small record (PARData): N image paths, an (N, A) uint8 label matrix in {0, 1}, the
A attribute names in dataset column order (the order of the target sequence), one prompt sentence per attribute,
and the split index arrays. Run `python data.py <name> [--root=...]` to check a download before training.
Shapes: N images, A attributes.
"""
import csv
import functools
import os
import pickle
import re
import sys
import time
from dataclasses import dataclass

import numpy as np
import scipy.io
import torch
import torchvision.transforms as T
from PIL import Image, ImageOps

import synth
from clip import MEAN, STD


@dataclass
class PARData:
    image_paths: list  # N full paths
    labels: np.ndarray  # (N, A) uint8 in {0, 1}
    attr_names: list  # A names, in dataset column order
    prompts: list  # A sentences, one per attribute
    splits: dict  # "train", optional "val", "test" -> int64 index arrays into the N images

# -----------------------------------------------------------------------------
# prompts: one short sentence per attribute, the text side of SequencePAR's attribute tokens

PROMPTS = {
    # PETA (the 35 evaluated attributes)
    "accessoryHat": "A pedestrian wearing a hat", "accessoryMuffler": "A pedestrian wearing a muffler",
    "accessoryNothing": "A pedestrian with no accessories", "accessorySunglasses": "A pedestrian wearing sunglasses",
    "hairLong": "A pedestrian with long hair", "upperBodyCasual": "A pedestrian in a casual top",
    "upperBodyFormal": "A pedestrian in a formal top", "upperBodyJacket": "A pedestrian wearing a jacket",
    "upperBodyLogo": "A pedestrian wearing a top with a logo", "upperBodyPlaid": "A pedestrian wearing a plaid top",
    "upperBodyShortSleeve": "A pedestrian in short sleeves", "upperBodyThinStripes": "A pedestrian in thin stripes",
    "upperBodyTshirt": "A pedestrian wearing a T-shirt", "upperBodyOther": "A pedestrian wearing another kind of top",
    "upperBodyVNeck": "A pedestrian in a V-neck top", "lowerBodyCasual": "A pedestrian in casual trousers or skirt",
    "lowerBodyFormal": "A pedestrian in formal trousers or skirt", "lowerBodyJeans": "A pedestrian wearing jeans",
    "lowerBodyShorts": "A pedestrian wearing shorts", "lowerBodyShortSkirt": "A pedestrian wearing a short skirt",
    "lowerBodyTrousers": "A pedestrian wearing trousers", "footwearLeatherShoes": "A pedestrian wearing leather shoes",
    "footwearSandals": "A pedestrian wearing sandals", "footwearShoes": "A pedestrian wearing shoes",
    "footwearSneaker": "A pedestrian wearing sneakers", "carryingBackpack": "A pedestrian carrying a backpack",
    "carryingOther": "A pedestrian carrying something", "carryingMessengerBag": "A pedestrian with a messenger bag",
    "carryingNothing": "A pedestrian carrying nothing", "carryingPlasticBags": "A pedestrian carrying plastic bags",
    "personalLess30": "A pedestrian younger than 30", "personalLess45": "A pedestrian aged 30 to 45",
    "personalLess60": "A pedestrian aged 45 to 60", "personalLarger60": "A pedestrian older than 60",
    "personalMale": "A male pedestrian",
    # PA100K, and the synthetic set, which borrows its names
    "Female": "A female pedestrian", "AgeOver60": "A pedestrian older than 60",
    "Age18-60": "A pedestrian aged 18 to 60", "AgeLess18": "A pedestrian younger than 18",
    "Front": "A pedestrian seen from the front", "Side": "A pedestrian seen from the side",
    "Back": "A pedestrian seen from the back",
    "Hat": "A pedestrian wearing a hat", "Glasses": "A pedestrian wearing glasses",
    "HandBag": "A pedestrian carrying a handbag", "ShoulderBag": "A pedestrian carrying a shoulder bag",
    "Backpack": "A pedestrian carrying a backpack", "HoldObjectsInFront": "A pedestrian holding something in front",
    "ShortSleeve": "A pedestrian in short sleeves", "LongSleeve": "A pedestrian in long sleeves",
    "UpperStride": "A pedestrian wearing a striped top", "UpperLogo": "A pedestrian wearing a top with a logo",
    "UpperPlaid": "A pedestrian wearing a plaid top", "UpperSplice": "A pedestrian wearing a spliced top",
    "LowerStripe": "A pedestrian wearing striped trousers", "LowerPattern": "A pedestrian wearing patterned trousers",
    "LongCoat": "A pedestrian wearing a long coat", "Trousers": "A pedestrian wearing trousers",
    "Shorts": "A pedestrian wearing shorts", "Skirt&Dress": "A pedestrian wearing a skirt or a dress",
    "boots": "A pedestrian wearing boots", "LongHair": "A pedestrian with long hair",
    "UpperStripe": "A pedestrian wearing a striped top", "Skirt": "A pedestrian wearing a skirt",
    # WIDER attribute
    "Male": "A male pedestrian", "sunglass": "A pedestrian wearing sunglasses", "Tshirt": "A pedestrian in a T-shirt",
    "formal": "A pedestrian in formal clothes", "jeans": "A pedestrian wearing jeans",
    "longPants": "A pedestrian wearing long pants", "faceMask": "A pedestrian wearing a face mask",
    "logo": "A pedestrian wearing clothes with a logo", "stripe": "A pedestrian wearing striped clothes",
    # RAP, whose other names (hs-Hat, ub-Jacket, ...) go through the rules of prompt_for
    "AgeLess16": "A pedestrian younger than 16", "Age17-30": "A pedestrian aged 17 to 30",
    "Age31-45": "A pedestrian aged 31 to 45", "Age46-60": "A pedestrian aged 46 to 60",
    "AgeBiger60": "A pedestrian older than 60", "BodyFatter": "A very fat pedestrian", "BodyFat": "A fat pedestrian",
    "BodyNormal": "A pedestrian of normal build", "BodyThin": "A thin pedestrian", "BodyThiner": "A skinny pedestrian",
    "Customer": "A pedestrian who is a customer", "Clerk": "A pedestrian who is a clerk",
    "Employee": "A pedestrian who is an employee",
}
_key = functools.partial(re.sub, r"[^a-z0-9]", "")  # looked up with case and punctuation ignored: hairLong = HairLong
_PROMPTS = {_key(k.lower()): v for k, v in PROMPTS.items()}
_PREFIXES = {"hs": "A pedestrian with {}", "ub": "A pedestrian wearing {} on the upper body", "attach": "A pedestrian "
             "carrying {}", "lb": "A pedestrian wearing {} on the lower body", "shoes": "A pedestrian wearing {} shoes",
             "action": "A pedestrian {}"}  # RAP's groups


def prompt_for(name):
    """'Hat' -> 'A pedestrian wearing a hat'; 'hs-Hat' too; an unknown name becomes a sentence of its words."""
    prefix, _, rest = name.partition("-") if re.match(r"[a-z]+-", name) else ("", "", name)
    for key in (_key(name.lower()), _key(rest.lower())):
        if key in _PROMPTS:
            return _PROMPTS[key]
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|[_\-]+", " ", rest).lower().strip()  # upperBodyJacket -> upper body jacket
    return _PREFIXES.get(prefix, "A pedestrian with {}").format(words)

# -----------------------------------------------------------------------------
# readers of the original annotation files (DESIGN section 3); each gets the dataset root


def _loadmat(path):
    try:
        return scipy.io.loadmat(path)
    # scipy raises NotImplementedError for MATLAB v7.3 (HDF5) files: re-saved annotations, not the published ones
    except (ValueError, TypeError, OSError, NotImplementedError, scipy.io.matlab.MatReadError) as e:
        raise ValueError(f"{path}: cannot read it as a MATLAB v5 file ({e})") from None


def _record(paths, labels, names, splits):
    names = [str(n) for n in names]  # loadmat and the pickles give numpy strings
    labels = (np.asarray(labels) == 1).astype(np.uint8)  # RAP's 2 ("uncertain") and WIDER's -1 count as absent
    return PARData(list(paths), labels, names, [prompt_for(n) for n in names],
                   {k: np.asarray(v, dtype=np.int64).ravel() for k, v in splits.items()})


PETA_ORDER = [10, 18, 19, 30, 15, 7, 9, 11, 14, 21, 26, 29, 32, 33, 34, 6, 8, 12, 25, 27, 31, 13, 23, 24, 28, 4, 5,
              17, 20, 22, 0, 1, 2, 3, 16]  # groups related attributes: accessories, hair, upper, lower, shoes, ...
RAPV2_ORDER = list(range(10, 45)) + [1, 2, 3, 4, 0, 5, 6, 7, 8, 9] + list(range(45, 54))


def read_peta(root, path):
    p = _loadmat(path)["peta"][0][0]
    data = p[0]  # (N, 109): 4 metadata columns, then 105 labels
    if data.ndim != 2 or data.shape[1] != 109:
        raise ValueError(f"{path}: peta data is {data.shape}, expected (N, 109): 4 metadata columns and 105 labels")
    names = [p[1][j][0][0] for j in range(105)]
    part = p[3][0][0][0][0]  # partition 0 of 5
    splits = {s: part[k][:, 0] - 1 for k, s in enumerate(("train", "val", "test"))}
    paths = [os.path.join(root, "images", f"{i + 1:05}.png") for i in range(len(data))]
    return _record(paths, data[:, 4:][:, PETA_ORDER], [names[j] for j in PETA_ORDER], splits)


def read_pa100k(root, path):
    m = _loadmat(path)
    paths, labels, splits, n = [], [], {}, 0
    for s in ("train", "val", "test"):  # the three splits follow each other in file order
        paths += [os.path.join(root, "data", x[0][0]) for x in m[f"{s}_images_name"]]
        labels.append(m[f"{s}_label"])
        splits[s] = np.arange(n, len(paths))
        n = len(paths)
    labels = np.concatenate(labels)
    names = [x[0][0] for x in m["attributes"]]
    if labels.shape != (n, len(names)):
        raise ValueError(f"{path}: labels are {labels.shape}, expected ({n}, {len(names)}) for the images and names")
    return _record(paths, labels, names, splits)


def read_rapv1(root, path):
    r = _loadmat(path)["RAP_annotation"][0][0]
    paths = [os.path.join(root, "RAP_dataset", x[0][0]) for x in r[5]]
    labels, names = r[1], [x[0][0] for x in r[3]]
    if labels.shape != (len(paths), 92) or len(names) != 92:
        raise ValueError(f"{path}: labels are {labels.shape} with {len(names)} names, expected ({len(paths)}, 92)")
    part = r[0][0][0][0][0]  # partition 0 of 5: trainval and test, 1-based rows
    return _record(paths, labels[:, :51], names[:51], {"train": part[0][0, :] - 1, "test": part[1][0, :] - 1})


def read_rapv2(root, path):
    r = _loadmat(path)["RAP_annotation"]
    paths = [os.path.join(root, "RAP_dataset", x[0][0]) for x in r["name"][0][0]]
    names, labels = [x[0][0] for x in r["attribute"][0][0]], r["data"][0][0]
    if labels.shape != (len(paths), len(names)):
        raise ValueError(f"{path}: data is {labels.shape}, expected ({len(paths)}, {len(names)}) for images and names")
    cols = (r["selected_attribute"][0][0][0] - 1)[RAPV2_ORDER]  # 54 columns, 1-based in the file
    part = r["partition_attribute"][0][0][0][0]  # partition 0 of 5
    splits = {s: part[f"{s}_index"][0][0][0] - 1 for s in ("train", "val", "test")}
    return _record(paths, labels[:, cols], [names[j] for j in cols], splits)


def read_wider(root, path):
    ann = os.path.join(root, "Annotations")
    with open(os.path.join(ann, "attr_name.txt")) as f:
        names = [line.split()[-1] for line in f if line.strip()]  # "Male" or "0 Male" per line
    paths, labels, splits = [], [], {}
    for s, split in (("trainval", "train"), ("test", "test")):
        with open(os.path.join(ann, f"{s}_name.txt")) as f:
            files = [line.strip() for line in f if line.strip()]
        with open(os.path.join(ann, f"{s}_gt_label.txt")) as f:
            rows = [line.split() for line in f if line.strip()]
        if len(rows) != len(files) or any(len(r) != len(names) for r in rows):
            raise ValueError(f"{ann}/{s}_gt_label.txt: expected {len(files)} rows (one per line of {s}_name.txt) "
                             f"of {len(names)} values in {{-1, 0, 1}}")
        splits[split] = np.arange(len(paths), len(paths) + len(files))
        paths += [os.path.join(root, x) for x in files]
        labels += [[int(v) for v in r] for r in rows]
    return _record(paths, np.array(labels).reshape(-1, len(names)), names, splits)


class _SplitUnpickler(pickle.Unpickler):
    # a pickle can run any function it names, so we read Rethinking-of-PAR's EasyDicts as dicts, numpy arrays, and
    # nothing else (DESIGN section 7); the easydict package need not be installed
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("builtins", "range"), ("_codecs", "encode")} | {
        (m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")}

    def find_class(self, module, name):
        if (module, name) == ("easydict", "EasyDict"):
            return _EasyDict
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise ValueError(f"refusing to load {module}.{name}: a split file holds only dicts and numpy arrays")


class _EasyDict(dict):
    def __setstate__(self, state):  # an EasyDict pickles its items twice, as dict items and as attributes
        self.update(state)


def read_zs(root, path, image_dir):
    with open(path, "rb") as f:
        try:
            d = _SplitUnpickler(f).load()
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        except (pickle.UnpicklingError, EOFError) as e:
            raise ValueError(f"{path}: not a readable pickle ({e})") from None
    cols = list(d["label_idx"]["eval"]) if "label_idx" in d else list(range(len(d["attr_name"])))
    parts = {s: d["partition"][s] for s in ("train", "val", "test")}
    splits = {s: p[0] if isinstance(p, list) else p for s, p in parts.items()}  # a list holds one array per partition
    paths = [os.path.join(root, image_dir, str(x)) for x in d["image_name"]]
    return _record(paths, np.asarray(d["label"])[:, cols], [d["attr_name"][j] for j in cols], splits)


def read_csv(root, path):
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows or rows[0][:2] != ["image", "split"] or len(rows[0]) < 3:
        raise ValueError(f"{path}: header is {','.join(rows[0][:4]) if rows else 'empty'}..., "
                         "expected image,split,<attr1>,<attr2>,...")
    names, body = rows[0][2:], rows[1:]  # image paths are relative to the folder
    for i, r in enumerate(body):
        if len(r) != len(names) + 2 or r[1] not in ("train", "val", "test") or set(r[2:]) - {"0", "1"}:
            raise ValueError(f"{path}: line {i + 2} is {','.join(r[:4])}..., expected an image path, a split "
                             f"(train, val or test) and {len(names)} cells of 0 or 1")
    split = np.array([r[1] for r in body])
    labels = (np.array([r[2:] for r in body]) == "1").reshape(len(body), len(names))
    data = _record([os.path.join(root, r[0]) for r in body], labels, names,
                   {s: np.flatnonzero(split == s) for s in ("train", "val", "test") if (split == s).any()})
    prompts_path = os.path.join(root, "prompts.csv")  # optional: attribute,prompt rows overriding the defaults
    if os.path.exists(prompts_path):
        with open(prompts_path, newline="") as f:
            for r in list(csv.reader(f))[1:]:
                if len(r) != 2 or r[0] not in names:
                    raise ValueError(f"{prompts_path}: row {','.join(r)} is not attribute,prompt for an "
                                     "attribute of labels.csv")
                data.prompts[names.index(r[0])] = r[1]
    return data


PETA_URL, RAP_URL = "http://mmlab.ie.cuhk.edu.hk/projects/PETA.html", "http://www.rapdataset.com/"
ZS = "the dataset is published at https://github.com/valencebond/Rethinking_of_PAR (splits) and "
RAP_FILES = "RAP_annotation/RAP_annotation.mat and RAP_dataset/"
DATASETS = {  # name: (reader, annotation file under the root, what the root holds, where to get it)
    "peta": (read_peta, "PETA.mat", "PETA.mat and images/00001.png ...", f"the dataset is published at {PETA_URL}"),
    "pa100k": (read_pa100k, "annotation.mat", "annotation.mat and data/000001.jpg ...",
               "the dataset is published at https://github.com/xh-liu/HydraPlus-Net"),
    "rapv1": (read_rapv1, "RAP_annotation/RAP_annotation.mat", RAP_FILES, f"the dataset is published at {RAP_URL}"),
    "rapv2": (read_rapv2, "RAP_annotation/RAP_annotation.mat", RAP_FILES, f"the dataset is published at {RAP_URL}"),
    "wider": (read_wider, "Annotations/trainval_name.txt", "Annotations/{trainval,test}_{name,gt_label}.txt, "
              "Annotations/attr_name.txt and the images",
              "the dataset is published at http://mmlab.ie.cuhk.edu.hk/projects/WIDERAttribute.html"),
    "peta_zs": (functools.partial(read_zs, image_dir="images"), "dataset_zs_run0.pkl",
                "dataset_zs_run0.pkl and images/", ZS + PETA_URL),
    "rap_zs": (functools.partial(read_zs, image_dir="RAP_dataset"), "dataset_zs_run0.pkl",
               "dataset_zs_run0.pkl and RAP_dataset/", ZS + RAP_URL),
    "csv": (read_csv, "labels.csv", "labels.csv (header image,split,<attr1>,... then one row of 0/1 cells per image, "
            "image paths relative to the folder) and the images", "see read_csv in data.py"),
    "synth": (read_csv, "labels.csv", "labels.csv and images/", "python synth.py draws it"),
}


def load_dataset(name, root=None):
    """Reads dataset `name` from `root` (default data/<name>) into a PARData; synth is drawn on first use."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; known: {', '.join(DATASETS)}")
    reader, ann, holds, where = DATASETS[name]
    root = root or os.path.join("data", name)
    path = os.path.join(root, ann)
    if name == "synth" and not os.path.exists(path):
        print(f"synth: {path} not found, drawing {synth.N} images into {root} ...", end=" ", flush=True)
        t0 = time.time()
        synth.make_synthetic(root, synth.N, seed=0)
        print(f"done in {time.time() - t0:.0f} s")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: the {name} reader expects {holds} under {root}; {where}")
    try:
        data = reader(root, path)
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not laid out as the {name} release ({type(e).__name__}: {e})") from None
    n, a = data.labels.shape
    if len(data.image_paths) != n or len(data.attr_names) != a or not all(
            len(ix) == 0 or (ix.min() >= 0 and ix.max() < n) for ix in data.splits.values()):
        raise ValueError(f"{path}: {len(data.image_paths)} images, {data.labels.shape} labels, {len(data.attr_names)} "
                         f"names and splits within 0..{n - 1} were expected to agree")
    if n and not os.path.exists(data.image_paths[0]):
        raise FileNotFoundError(f"{data.image_paths[0]} not found: the {name} reader expects {holds} under {root}; "
                                f"{where}")
    return data

# -----------------------------------------------------------------------------
# images: pad to square, resize, augment (DESIGN section 1), and the torch Dataset


class PadToSquare:
    # centres the image on a black square, so that resizing keeps the person's aspect ratio

    def __call__(self, img):
        w, h = img.size
        out = Image.new("RGB", (max(w, h), max(w, h)))
        out.paste(img, ((max(w, h) - w) // 2, (max(w, h) - h) // 2))
        return out


def build_transform(size, train):
    """PIL image -> (3, size, size) float: pad to square, resize, for training Pad + RandomCrop + flip, CLIP's stats."""
    ops = [PadToSquare(), T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC)]
    if train:
        pad = max(1, round(10 * size / 224))  # the paper's Pad(10) is for 224 px; we keep its share of small images
        ops += [T.Pad(pad), T.RandomCrop(size), T.RandomHorizontalFlip()]  # no attribute here is left/right-specific
    return T.Compose(ops + [T.ToTensor(), T.Normalize(MEAN, STD)])


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


def read_image(path):
    """The image at `path` in RGB, as a viewer shows it: EXIF orientation applied (a phone's portrait photo is upright),
    the first frame of an animation, 16-bit and float images scaled by their real range. An unreadable file, or one
    over Pillow's pixel limit (a decompression bomb), raises a one-line ValueError naming it."""
    try:
        with Image.open(path) as img:
            img.seek(0)
            return _eight_bit(ImageOps.exif_transpose(img)).convert("RGB")  # grey, palette, RGBA, CMYK all become RGB
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None


def check_images(paths, decode=False):
    """Raises one line naming the first missing (or, with decode, unreadable) images and their count. A stat per file
    takes about a second for 100,000 images, so a run checks all of them before it starts."""
    bad = []
    for i, p in enumerate(paths):
        if decode:
            if i % 1000 == 0:
                print(f"\rreading images: {i}/{len(paths)}", end="", file=sys.stderr, flush=True)
            try:
                read_image(p)
            except (FileNotFoundError, ValueError) as e:
                bad.append(f"{p} ({e})" if os.path.exists(p) else p)
        elif not os.path.isfile(p):
            bad.append(p)
    if decode:
        print(f"\rreading images: {len(paths)}/{len(paths)}", file=sys.stderr)
    if bad:
        raise FileNotFoundError(f"{len(bad)} of {len(paths)} images are {'missing or unreadable' if decode else 'missing'}: "
                                + ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else ""))


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


def summary(name, data):
    n, a = data.labels.shape
    rates = data.labels.mean(0) if n else np.zeros(a)
    lines = [f"{name}: {n} images, {a} attributes; " + ", ".join(f"{k} {len(v)}" for k, v in data.splits.items())]
    lines += [f"  {rate:6.1%}  {attr:<24} {p}" for attr, p, rate in zip(data.attr_names, data.prompts, rates)]
    return "\n".join(lines + [f"first image: {data.image_paths[0] if n else '-'}"])


USAGE = ("usage: python data.py <name> [--root=DIR] [--decode=True]: reads the dataset, prints its attributes, "
         "splits and positive rates, and checks that every image is there (with --decode=True, that each one opens); "
         f"names: {', '.join(DATASETS)} (to draw the synthetic set anew: python synth.py)")


def main(argv):
    if "--help" in argv or "-h" in argv:
        print(USAGE)
        return
    names = [x for x in argv if not x.startswith("--")]
    opts = dict(x[2:].partition("=")[::2] for x in argv if x.startswith("--"))
    if len(names) != 1 or set(opts) - {"root", "decode"} or opts.get("decode", "False") not in ("True", "False") or \
            not all(opts.values()):
        raise ValueError(f"{USAGE}; got {' '.join(argv) or 'nothing'}")
    data = load_dataset(names[0], opts.get("root"))
    print(summary(names[0], data), flush=True)
    check_images(data.image_paths, decode=opts.get("decode") == "True")
    print(f"all {len(data.image_paths)} images are there" + (" and open" if opts.get("decode") == "True" else ""))


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    try:
        main(sys.argv[1:])
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
