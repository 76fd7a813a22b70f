"""
Pedestrian attribute datasets, read from the files as their owners distribute them: PETA, PA100K, RAPv1, RAPv2,
WIDER, the zero-shot splits and any dataset pickle in their layout, and a folder with a labels.csv (the synthetic set
of the demo, drawn by synth.py, is one). How the images then reach the model is dataset.py's part.

Every reader returns the same small record (PARData): N image paths, an (N, A) uint8 label matrix in {0, 1}, the
A attribute names in dataset column order (the order of the target sequence), one prompt sentence per attribute,
and the split index arrays. `python data.py --dataset=peta [--root=DIR]` checks a download before training.

Shapes: N images, A attributes.
"""
import csv
import functools
import io
import os
import pickle
import re
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.io

import cli
from cli import MissingFile, UserError
import synth
from dataset import check_images
from tokenizer import CONTEXT_LENGTH, tokenize


@dataclass
class PARData:
    image_paths: list  # N full paths
    labels: np.ndarray  # (N, A) uint8 in {0, 1}
    attr_names: list  # A names, in dataset column order
    prompts: list  # A sentences, one per attribute
    splits: dict  # "train", optional "val", "test" -> int64 index arrays into the N images
    notes: list = field(default_factory=list)  # what the reader decided for the user; summary() prints them

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
# readers of the annotation files as their owners publish them; each gets the dataset root and the file's path


def _loadmat(path):
    try:
        return scipy.io.loadmat(path)
    # scipy raises NotImplementedError for MATLAB v7.3 (HDF5) files: re-saved annotations, not the published ones
    except (ValueError, TypeError, OSError, NotImplementedError, scipy.io.matlab.MatReadError) as e:
        raise UserError(f"{path}: cannot read it as a MATLAB v5 file ({e})") from None


def _index(a, n, path, name, base=1):
    # MATLAB files hold 1-based indices, saved as doubles or as any integer type depending on who saved them; the
    # pickles hold 0-based ones. We want 0-based int64 rows (or columns) of a table of n, or a clear word why not.
    a = np.asarray(a).ravel()
    bad = (a != np.round(a)) | (a < base) | (a >= n + base) if a.dtype.kind in "iuf" else np.ones(a.shape, bool)
    if bad.any():
        v = f"{a[bad][0]:g}" if a.dtype.kind == "f" else a[bad][0]  # 20, not 20.0, for MATLAB's doubles
        raise UserError(f"{path}: {name} holds {v}, expected whole numbers from {base} to {n - 1 + base}")
    return a.astype(np.int64) - base


def _pick(parts, k, path, name, notes):
    # PETA, RAP and many pickles hold several random partitions of the same images; papers report partition 0
    if not (isinstance(k, int) and 0 <= k < len(parts)):
        raise UserError(f"{path}: --partition={k} is out of range: {name} holds {len(parts)} partition(s), "
                        f"0 to {len(parts) - 1}")
    if len(parts) > 1 and f"partition {k} of {len(parts)}" not in notes:
        notes.append(f"partition {k} of {len(parts)}")
    return parts[k]


def _record(path, paths, labels, names, splits, notes=()):
    names, labels, notes = [str(n) for n in names], np.asarray(labels), list(notes)  # numpy strings become str
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # one attribute would hide the other in every report keyed by name
        raise UserError(f"{path}: attribute name{'s' if len(twice) > 1 else ''} {', '.join(twice)} appear"
                        f"{'' if len(twice) > 1 else 's'} more than once; each column needs a name of its own")
    other = ~np.isin(labels, (0, 1))
    if other.any():  # RAP's 2 and the pickles' 2 or -1 mean "uncertain", WIDER's -1 "no": all count as absent
        values = np.unique(labels[other])
        if not np.isin(values, (-1, 2)).all():
            raise UserError(f"{path}: labels hold {values[~np.isin(values, (-1, 2))][0]}, expected 0 or 1 (2 or -1 "
                            "for uncertain)")
        notes.append(f"label values {' and '.join(str(int(v)) for v in values[::-1])} counted as 0: "
                     f"{other.sum()} cells")
    return PARData(list(paths), (labels == 1).astype(np.uint8), names, [prompt_for(n) for n in names],
                   {k: np.asarray(v, dtype=np.int64).ravel() for k, v in splits.items()}, notes)


# These orders choose the evaluated columns (35 of PETA's 105; RAPv2's 54 `selected_attribute`) and fix the target
# sequence, so the order in which the decoder emits attributes. They are `group_order` of Rethinking-of-PAR's
# dataset/pedes_attr/preprocess/format_peta.py and format_rap2.py (https://github.com/valencebond/Rethinking_of_PAR):
# head, upper body, lower body, shoes, carried things, then age and gender (RAPv2: body shape, role, action last).
PETA_ORDER = [10, 18, 19, 30, 15, 7, 9, 11, 14, 21, 26, 29, 32, 33, 34, 6, 8, 12, 25, 27, 31, 13, 23, 24, 28, 4, 5,
              17, 20, 22, 0, 1, 2, 3, 16]
RAPV2_ORDER = list(range(10, 45)) + [1, 2, 3, 4, 0, 5, 6, 7, 8, 9] + list(range(45, 54))


def read_peta(root, path, partition=0):
    p, notes = _loadmat(path)["peta"][0][0], []
    data = p[0]  # (N, 109): 4 metadata columns, then 105 labels
    if data.ndim != 2 or data.shape[1] != 109:
        raise UserError(f"{path}: peta data is {data.shape}, expected (N, 109): 4 metadata columns and 105 labels")
    names = [p[1][j][0][0] for j in range(105)]
    part = _pick(p[3], partition, path, "peta's partitions", notes)[0][0][0]
    splits = {s: _index(part[k], len(data), path, f"{s}_index") for k, s in enumerate(("train", "val", "test"))}
    paths = [os.path.join(root, "images", f"{i + 1:05}.png") for i in range(len(data))]
    return _record(path, paths, data[:, 4:][:, PETA_ORDER], [names[j] for j in PETA_ORDER], splits, notes)


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
        raise UserError(f"{path}: labels are {labels.shape}, expected ({n}, {len(names)}) for the images and names")
    return _record(path, paths, labels, names, splits)


def read_rapv1(root, path, partition=0):
    r, notes = _loadmat(path)["RAP_annotation"][0][0], []
    paths = [os.path.join(root, "RAP_dataset", x[0][0]) for x in r[5]]
    labels, names = r[1], [x[0][0] for x in r[3]]
    if labels.shape != (len(paths), 92) or len(names) != 92:
        raise UserError(f"{path}: labels are {labels.shape} with {len(names)} names, expected ({len(paths)}, 92)")
    part = _pick(r[0], partition, path, "RAP's partitions", notes)[0][0][0]  # trainval and test, 1-based rows
    splits = {s: _index(part[k], len(paths), path, f"{s}_index") for k, s in enumerate(("train", "test"))}
    return _record(path, paths, labels[:, :51], names[:51], splits, notes)


def read_rapv2(root, path, partition=0):
    r, notes = _loadmat(path)["RAP_annotation"], []
    paths = [os.path.join(root, "RAP_dataset", x[0][0]) for x in r["name"][0][0]]
    names, labels = [x[0][0] for x in r["attribute"][0][0]], r["data"][0][0]
    if labels.shape != (len(paths), len(names)):
        raise UserError(f"{path}: data is {labels.shape}, expected ({len(paths)}, {len(names)}) for images and names")
    cols = _index(r["selected_attribute"][0][0], len(names), path, "selected_attribute")[RAPV2_ORDER]
    part = _pick(r["partition_attribute"][0][0][0], partition, path, "partition_attribute", notes)
    splits = {s: _index(part[f"{s}_index"][0][0], len(paths), path, f"{s}_index") for s in ("train", "val", "test")}
    return _record(path, paths, labels[:, cols], [names[j] for j in cols], splits, notes)


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
            raise UserError(f"{ann}/{s}_gt_label.txt: expected {len(files)} rows (one per line of {s}_name.txt) "
                            f"of {len(names)} values in {{-1, 0, 1}}")
        splits[split] = np.arange(len(paths), len(paths) + len(files))
        paths += [os.path.join(root, x) for x in files]
        labels += [[int(v) for v in r] for r in rows]
    return _record(path, paths, np.array(labels).reshape(-1, len(names)), names, splits)


class _DataUnpickler(pickle.Unpickler):
    # a pickle can run any function it names, so we read the dataset pickles of Rethinking-of-PAR and OpenPAR as
    # dicts (their EasyDicts), lists, numpy arrays and nothing else; the easydict package need not be installed
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("builtins", "range"), ("_codecs", "encode")} | {
        (m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")} | {
        (m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")}  # arrays under pickle protocol 5

    def find_class(self, module, name):
        if (module, name) == ("easydict", "EasyDict"):
            return _EasyDict
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise UserError(f"refusing to load {module}.{name}: a dataset pickle holds only dicts, lists and numpy arrays")


class _EasyDict(dict):
    def __setstate__(self, state):  # an EasyDict pickles its items twice, as dict items and as attributes
        self.update(state)


def read_pkl(root, path, images="", partition=0):
    with open(path, "rb") as f:
        try:
            d = _DataUnpickler(f).load()
        except ValueError as e:
            raise UserError(f"{path}: {e}") from None
        except (pickle.UnpicklingError, EOFError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise UserError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None
    keys = set(d) if isinstance(d, dict) else set()
    if not {"image_name", "label", "partition"} <= keys or not {"attr_name", "attributes"} & keys:
        raise UserError(f"{path}: holds {', '.join(map(str, d)) if isinstance(d, dict) else type(d).__name__}; "
                        "expected a dict of image_name, label, attr_name (or attributes) and partition")
    folder = os.path.join(root, images)  # the pickle's own `root` is a path on the machine that made it: unused
    if not os.path.isdir(folder):
        raise MissingFile(f"{folder} not found: the images of {path} are expected there; name their folder "
                          "under the root with --images=SUBDIR")
    names, labels, notes, parts = list(d.get("attr_name", d.get("attributes"))), np.asarray(d["label"]), [], {}
    if labels.shape != (len(d["image_name"]), len(names)):
        raise UserError(f"{path}: label is {labels.shape}, expected ({len(d['image_name'])}, {len(names)}): one row "
                        "per image_name, one column per attribute name")
    cols = range(len(names))  # the evaluated columns, in the order of the target sequence
    if "label_idx" in d:
        cols = _index(d["label_idx"]["eval"], len(names), path, "label_idx.eval", base=0)
    for s, p in d["partition"].items():
        if s in ("train", "val", "trainval", "test") and len(p):  # each an index array, or a list of them
            p = _pick(p if np.ndim(p[0]) else [p], partition, path, f"partition.{s}", notes)
            parts[s] = _index(p, len(labels), path, f"partition.{s}", base=0)
    if "test" not in parts or "train" not in parts and "trainval" not in parts:
        raise UserError(f"{path}: partition holds {', '.join(parts) or 'no split'}; expected test and train or "
                        "trainval")
    if "train" in parts:  # trainval, where present, is train + val
        splits = {s: parts[s] for s in ("train", "val", "test") if s in parts}
    else:  # trainval and test only, as for RAPv1: we train on trainval, and val (if any) is part of it
        splits = {"train": parts["trainval"], "test": parts["test"]}
    if "val" not in splits:
        notes.append(f"no val split: training on {'train' if 'train' in parts else 'trainval'}, evaluating on test "
                     "and keeping the last model")
    paths = [os.path.join(folder, str(x)) for x in d["image_name"]]
    return _read_prompts(_record(path, paths, labels[:, cols], [names[j] for j in cols], splits, notes), path)


def _csv_rows(path):
    with open(path, "rb") as f:
        raw = f.read()
    try:  # utf-8-sig drops the byte-order mark that spreadsheet programs write first
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise UserError(f"{path}: line {line} is not UTF-8 (byte {raw[e.start]:#04x}); save it as UTF-8") from None
    return [(i, r) for i, r in enumerate(csv.reader(io.StringIO(text, newline="")), 1) if r]  # blank lines skipped


def _read_prompts(data, path):
    # an optional prompts.csv next to the annotation file: attribute,prompt rows that replace our sentences, after a
    # header (attribute,prompt); a first row that names an attribute is a prompt, not a header, and is kept
    prompts_path = os.path.join(os.path.dirname(path), "prompts.csv")
    rows = _csv_rows(prompts_path) if os.path.exists(prompts_path) else []
    if rows and rows[0][1][0] not in data.attr_names:
        rows = rows[1:]
    for _, r in rows:
        if len(r) != 2 or r[0] not in data.attr_names:
            raise UserError(f"{prompts_path}: row {','.join(r)} is not attribute,prompt for an attribute read from "
                            f"{os.path.basename(path)}")
        try:
            tokenize(r[1])
        except ValueError:
            raise UserError(f"{prompts_path}: the prompt for {r[0]} is longer than the {CONTEXT_LENGTH} "
                            "tokens CLIP's text encoder reads; shorten it") from None
        data.prompts[data.attr_names.index(r[0])] = r[1]
    return data


def read_csv(root, path):
    rows = _csv_rows(path)  # (line number, cells)
    if not rows or rows[0][1][:2] != ["image", "split"] or len(rows[0][1]) < 3:
        raise UserError(f"{path}: header is {','.join(rows[0][1][:4]) if rows else 'empty'}..., "
                        "expected image,split,<attr1>,<attr2>,...")
    names, body = rows[0][1][2:], [r for _, r in rows[1:]]  # image paths are relative to the folder
    if not body:
        raise UserError(f"{path}: no images: the header is followed by no rows")
    for i, r in rows[1:]:
        if len(r) != len(names) + 2 or r[1] not in ("train", "val", "test") or set(r[2:]) - {"0", "1"}:
            raise UserError(f"{path}: line {i} is {','.join(r[:4])}..., expected an image path, a split "
                            f"(train, val or test) and {len(names)} cells of 0 or 1")
    split = np.array([r[1] for r in body])
    labels = (np.array([r[2:] for r in body]) == "1").reshape(len(body), len(names))
    return _read_prompts(_record(path, [os.path.join(root, r[0]) for r in body], labels, names, {
        s: np.flatnonzero(split == s) for s in ("train", "val", "test") if (split == s).any()}), path)


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
    "peta_zs": (functools.partial(read_pkl, images="images"), "dataset_zs_run0.pkl",
                "dataset_zs_run0.pkl and images/", ZS + PETA_URL),
    "rap_zs": (functools.partial(read_pkl, images="RAP_dataset"), "dataset_zs_run0.pkl",
               "dataset_zs_run0.pkl and RAP_dataset/", ZS + RAP_URL),
    "pkl": (read_pkl, None, "one dataset pickle (image_name, label, attr_name or attributes, partition; choose it "
            "with --pkl=FILE) and its images (in the root, or --images=SUBDIR)", "MSP60K's is published at "
            "https://github.com/Event-AHU/OpenPAR; Rethinking-of-PAR's dataset/pedes_attr/preprocess scripts "
            "(https://github.com/valencebond/Rethinking_of_PAR) write them for PETA, PA100K and RAP"),
    "csv": (read_csv, "labels.csv", "labels.csv (header image,split,<attr1>,... then one row of 0/1 cells per image, "
            "image paths relative to the folder) and the images", "see read_csv in data.py"),
    "synth": (read_csv, "labels.csv", "labels.csv and images/", "python synth.py draws it"),
}
PICKLES = ("peta_zs", "rap_zs", "pkl")  # the datasets that take --pkl and --images
PARTITIONED = ("peta", "rapv1", "rapv2") + PICKLES  # and those that take --partition


def load_dataset(name, root=None, *, pkl=None, images=None, partition=0, draw=False):
    """Reads dataset `name` from `root` (default data/<name>) into a PARData; with draw=True, synth is drawn on first
    use (a training run on the default data/synth asks for that; a folder a user names is never filled). Pickles take
    `pkl` (the file under root; for `pkl` the one there) and `images` (their folder under root); `partition` picks
    one of several random partitions (0, the one papers report)."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset '{name}'; known: {', '.join(DATASETS)}")
    if (pkl or images) and name not in PICKLES:
        raise UserError(f"--pkl and --images are options of the pickle datasets ({', '.join(PICKLES)}), not of {name}")
    if partition != 0 and name not in PARTITIONED:
        raise UserError(f"--partition={partition}: {name} has one partition; {', '.join(PARTITIONED)} have several")
    reader, ann, holds, where = DATASETS[name]
    root = root or os.path.join("data", name)
    if name == "pkl" and not pkl:  # the one pickle in the root
        found = sorted(f for f in os.listdir(root) if f.endswith(".pkl")) if os.path.isdir(root) else []
        if len(found) > 1:
            raise UserError(f"{root} holds several pickles ({', '.join(found)}); choose one with --pkl=FILE")
        ann = found[0] if found else "*.pkl"
    path = os.path.join(root, pkl or ann)
    if draw and name == "synth" and not os.path.exists(path):
        print(f"synth: {path} not found, drawing {synth.N} images into {root} ...", end=" ", flush=True)
        t0 = time.time()
        synth.make_synthetic(root, synth.N, seed=0)
        print(f"done in {time.time() - t0:.0f} s")
    if not os.path.exists(path):
        raise MissingFile(f"{path} not found: the {name} reader expects {holds} under {root}; {where}")
    opts = ({"partition": partition} if name in PARTITIONED else {}) | ({"images": images} if images else {})
    try:
        data = reader(root, path, **opts)
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: not laid out as the {name} release ({type(e).__name__}: {e})") from None
    n, a = data.labels.shape
    if len(data.image_paths) != n or len(data.attr_names) != a or not all(
            len(ix) == 0 or (ix.min() >= 0 and ix.max() < n) for ix in data.splits.values()):
        raise UserError(f"{path}: {len(data.image_paths)} images, {data.labels.shape} labels, {len(data.attr_names)} "
                        f"names and splits within 0..{n - 1} were expected to agree")
    if n and not os.path.exists(data.image_paths[0]):
        raise MissingFile(f"{data.image_paths[0]} not found: the {name} reader expects {holds} under {root}; "
                          f"{where}")
    return data

# -----------------------------------------------------------------------------


def label_warnings(data, selection):
    """What in the labels and splits is allowed but likely wrong, one line each: images listed twice, images in two
    splits (a leak between train and test flatters the test score), attributes without a positive or a negative
    image in train (nothing to learn) or in the `selection` split (mA capped at 50)."""
    paths, out = np.array(data.image_paths), []
    names, counts = np.unique(paths, return_counts=True)
    if (counts > 1).any():
        twice = names[counts > 1]
        differ = sum(len(np.unique(data.labels[paths == p], axis=0)) > 1 for p in twice)
        out.append(f"images listed more than once: {len(twice)} ({differ} with different labels), such as {twice[0]}")
    splits = list(data.splits)
    for k, a in enumerate(splits):
        for b in splits[k + 1:]:
            both = np.intersect1d(paths[data.splits[a]], paths[data.splits[b]])
            if len(both):
                out.append(f"images in both {a} and {b}: {len(both)}, such as {both[0]}")
    for split in dict.fromkeys(("train", selection)):
        if split not in data.splits:
            continue  # (a missing split is said by summary, and refused by train.py)
        labels = data.labels[data.splits[split]]
        for kind, count in (("positive", labels.sum(0)), ("negative", len(labels) - labels.sum(0))):
            missing = [n for n, c in zip(data.attr_names, count) if c == 0]
            if missing:
                out.append(f"attributes without a {kind} image in {split}: {', '.join(missing)}")
    return out


def summary(name, data):
    n, a = data.labels.shape
    rates = data.labels.mean(0) if n else np.zeros(a)
    lines = [f"{name}: {n} images, {a} attributes; " + ", ".join(f"{k} {len(v)}" for k, v in data.splits.items())]
    lines += [f"  {rate:6.1%}  {attr:<24} {p}" for attr, p, rate in zip(data.attr_names, data.prompts, rates)]
    lines += [f"note: {note}" for note in data.notes]
    missing = [s for s in ("train", "test") if s not in data.splits]
    if missing:
        lines += [f"warning: no {' and no '.join(missing)} split; train.py needs train and test images"]
    lines += [f"warning: {w}" for w in label_warnings(data, "val" if "val" in data.splits else "test")]
    return "\n".join(lines + [f"first image: {data.image_paths[0] if n else '-'}"])


@dataclass
class DataConfig:
    dataset: str = ""             # one of the datasets below
    root: str = ""                # "" reads data/<dataset>
    pkl: str = ""                 # a dataset pickle under root (pkl: "" takes the only one there)
    images: str = ""              # the pickle datasets' image folder under root ("" is the dataset's default)
    partition: int = 0            # which of a dataset's random partitions (PETA, RAP and the pickles have several)
    decode: bool = False          # open every image, not only check that it is there
    PATHS = ("root", "pkl", "images")


EPILOG = (f"datasets: {', '.join(DATASETS)}\n(python synth.py draws the synthetic set anew)")


def main(argv):
    cfg, names = cli.parse(argv, DataConfig, positional=True)
    if names:
        raise UserError(f"python data.py {names[0]}: the dataset is an option, --dataset={names[0]}")
    if not cfg.dataset:
        raise UserError(f"--dataset: which one? expected one of {', '.join(DATASETS)}")
    data = load_dataset(cfg.dataset, cfg.root or None, pkl=cfg.pkl, images=cfg.images, partition=cfg.partition)
    print(summary(cfg.dataset, data), flush=True)
    check_images(data.image_paths, decode=cfg.decode)
    print(f"all {len(data.image_paths)} images are there" + (" and open" if cfg.decode else ""))


if __name__ == "__main__":
    cli.run(main, DataConfig, __doc__, EPILOG)
