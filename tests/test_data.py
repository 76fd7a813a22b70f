"""data.py: the readers on fixture files in the real on-disk formats, the prompts, the error messages, the summary
command."""
import os
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.io
from PIL import Image

import data
import dataset
from conftest import run_script

PETA_35 = ("accessoryHat accessoryMuffler accessoryNothing accessorySunglasses hairLong upperBodyCasual "
           "upperBodyFormal upperBodyJacket upperBodyLogo upperBodyPlaid upperBodyShortSleeve upperBodyThinStripes "
           "upperBodyTshirt upperBodyOther upperBodyVNeck lowerBodyCasual lowerBodyFormal lowerBodyJeans "
           "lowerBodyShorts lowerBodyShortSkirt lowerBodyTrousers footwearLeatherShoes footwearSandals footwearShoes "
           "footwearSneaker carryingBackpack carryingOther carryingMessengerBag carryingNothing carryingPlasticBags "
           "personalLess30 personalLess45 personalLess60 personalLarger60 personalMale").split()
# PETA.mat's first 35 of 105 names, in file order
PETA_RAW = ("personalLess30 personalLess45 personalLess60 personalLarger60 carryingBackpack carryingOther "
            "lowerBodyCasual upperBodyCasual lowerBodyFormal upperBodyFormal accessoryHat upperBodyJacket "
            "lowerBodyJeans footwearLeatherShoes upperBodyLogo hairLong personalMale carryingMessengerBag "
            "accessoryMuffler accessoryNothing carryingNothing upperBodyPlaid carryingPlasticBags footwearSandals "
            "footwearShoes lowerBodyShorts upperBodyShortSleeve lowerBodyShortSkirt footwearSneaker "
            "upperBodyThinStripes accessorySunglasses lowerBodyTrousers upperBodyTshirt upperBodyOther "
            "upperBodyVNeck").split()
PA100K_26 = ("Female AgeOver60 Age18-60 AgeLess18 Front Side Back Hat Glasses HandBag ShoulderBag Backpack "
             "HoldObjectsInFront ShortSleeve LongSleeve UpperStride UpperLogo UpperPlaid UpperSplice LowerStripe "
             "LowerPattern LongCoat Trousers Shorts Skirt&Dress boots").split()


def cell(items, shape):
    """A MATLAB cell array: savemat writes numpy object arrays as cells (and dicts as structs)."""
    c = np.empty(len(items), dtype=object)
    c[:] = items
    return c.reshape(shape)


def tiny_image(path, colour=(200, 30, 30), size=(4, 8)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, colour).save(path)


# Who saved a MAT file decides whether its indices and labels are doubles or integers: every reader takes either.
DTYPES = [(np.float64, np.float64), (np.uint8, np.uint8), (np.int32, np.uint16), (np.uint16, np.float64)]


def write_peta(root, n=20, columns=109, index=np.float64, label=np.float64):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (n, columns)).astype(label)
    labels[:, :4] = 7  # metadata columns
    names = PETA_RAW + [f"extra{j}" for j in range(70)]
    parts = [{"train_index": np.array([[3], [1], [2]], index) + k, "val_index": np.array([[10], [11]], index),
              "test_index": np.array([[20], [19]], index)} for k in range(5)]  # 1-based; partition k shifts train by k
    scipy.io.savemat(os.path.join(root, "PETA.mat"), {"peta": {
        "data": labels, "attribute": cell(names, (105, 1)), "selected_attribute": np.arange(1, 36)[None],
        "partition_attribute": cell(parts, (5, 1))}})
    tiny_image(os.path.join(root, "images", "00001.png"))
    return labels, names


@pytest.mark.parametrize("index,label", DTYPES)
def test_peta(tmp_path, index, label):
    labels, names = write_peta(str(tmp_path), index=index, label=label)
    m = scipy.io.loadmat(tmp_path / "PETA.mat")  # the fixture nests as the published PETA.mat does
    assert m["peta"][0][0][0].shape == (20, 109) and m["peta"][0][0][1][15][0][0] == "hairLong"
    assert m["peta"][0][0][0].dtype == label and m["peta"][0][0][3][0][0][0][0][0][0].dtype == index
    assert list(m["peta"][0][0][3][0][0][0][0][2][:, 0] - 1) == [19, 18]
    d = data.load_dataset("peta", str(tmp_path))
    assert d.attr_names == PETA_35 and len(d.prompts) == 35
    assert d.labels.dtype == np.uint8 and d.labels.shape == (20, 35)
    for k, name in enumerate(PETA_35):
        assert (d.labels[:, k] == labels[:, 4 + names.index(name)]).all(), name
    assert [list(d.splits[s]) for s in ("train", "val", "test")] == [[2, 0, 1], [9, 10], [19, 18]]
    assert d.image_paths[0] == os.path.join(str(tmp_path), "images", "00001.png")
    assert d.image_paths[19].endswith(os.path.join("images", "00020.png"))
    assert d.prompts[0] == "A pedestrian wearing a hat" and d.prompts[34] == "A male pedestrian"
    assert d.notes == ["partition 0 of 5"]
    d = data.load_dataset("peta", str(tmp_path), partition=4)  # PETA.mat holds 5 random partitions
    assert list(d.splits["train"]) == [6, 4, 5] and d.notes == ["partition 4 of 5"]
    with pytest.raises(ValueError, match=r"PETA\.mat: --partition=5 is out of range: peta's partitions holds 5 "
                                         r"partition\(s\), 0 to 4$"):
        data.load_dataset("peta", str(tmp_path), partition=5)


def test_pa100k(tmp_path):
    rng = np.random.default_rng(1)
    mat, files = {"attributes": cell(PA100K_26, (26, 1))}, []
    for s, n in (("train", 4), ("val", 2), ("test", 3)):
        names = [f"{len(files) + i + 1:06}.jpg" for i in range(n)]
        files += names
        mat[f"{s}_images_name"], mat[f"{s}_label"] = cell(names, (n, 1)), rng.integers(0, 2, (n, 26)).astype(np.uint8)
    scipy.io.savemat(tmp_path / "annotation.mat", mat)
    tiny_image(str(tmp_path / "data" / "000001.jpg"))
    d = data.load_dataset("pa100k", str(tmp_path))
    assert d.attr_names == PA100K_26
    assert (d.labels == np.concatenate([mat["train_label"], mat["val_label"], mat["test_label"]])).all()
    assert [list(d.splits[s]) for s in ("train", "val", "test")] == [[0, 1, 2, 3], [4, 5], [6, 7, 8]]
    assert d.image_paths == [os.path.join(str(tmp_path), "data", f) for f in files]
    assert d.prompts[PA100K_26.index("boots")] == "A pedestrian wearing boots"


@pytest.mark.parametrize("index,label", DTYPES)
def test_rapv1(tmp_path, index, label):
    n = 12
    labels = np.random.default_rng(2).integers(0, 3, (n, 92)).astype(label)  # 2 is RAP's "uncertain"
    names = [f"attr{j}" for j in range(92)]
    names[:3] = ["Female", "AgeLess16", "ub-ShortSleeve"]
    parts = [{"train_index": np.array([[5, 1, 2]], index) + k, "test_index": np.array([[12, 7]], index)}
             for k in range(5)]
    files = [f"CAM01_2014-02-15_{i:08}.png" for i in range(n)]
    scipy.io.savemat(tmp_path / "RAP_annotation.mat", {"RAP_annotation": {  # fields in the real file's order
        "partion": cell(parts, (5, 1)), "label": labels, "attribute_chinese": cell(names, (92, 1)),
        "attribute_eng": cell(names, (92, 1)), "attribute_exp": cell(names, (92, 1)),
        "imagesname": cell(files, (n, 1)), "position": np.zeros((n, 16))}})
    os.makedirs(tmp_path / "RAP_annotation")
    os.rename(tmp_path / "RAP_annotation.mat", tmp_path / "RAP_annotation" / "RAP_annotation.mat")
    tiny_image(str(tmp_path / "RAP_dataset" / files[0]))
    d = data.load_dataset("rapv1", str(tmp_path))
    assert d.attr_names == names[:51]
    assert (d.labels == (labels[:, :51] == 1)).all() and (labels[:, :51] == 2).any()
    assert list(d.splits) == ["train", "test"]  # RAPv1 has no validation split
    assert list(d.splits["train"]) == [4, 0, 1] and list(d.splits["test"]) == [11, 6]
    assert d.image_paths[3] == os.path.join(str(tmp_path), "RAP_dataset", files[3])
    assert d.prompts[:3] == ["A female pedestrian", "A pedestrian younger than 16", "A pedestrian in short sleeves"]
    assert d.notes == ["partition 0 of 5", f"label values 2 counted as 0: {(labels[:, :51] == 2).sum()} cells"]
    assert list(data.load_dataset("rapv1", str(tmp_path), partition=2).splits["train"]) == [6, 2, 3]


RAPV2_ORDER = list(range(10, 45)) + [1, 2, 3, 4, 0, 5, 6, 7, 8, 9] + list(range(45, 54))


def write_rapv2(root, index=np.float64, label=np.uint8, selected=np.arange(60, 6, -1)):
    n, a = 10, 60
    labels = np.random.default_rng(3).integers(0, 3, (n, a)).astype(label)
    names = [f"attr{j}" for j in range(a)]
    parts = [{"train_index": np.array([[1, 2, 3]], index) + k, "val_index": np.array([[9]], index),
              "test_index": np.array([[10, 4]], index)} for k in range(5)]
    files = [f"CAM{i:02}-2014.png" for i in range(n)]
    os.makedirs(os.path.join(root, "RAP_annotation"), exist_ok=True)
    scipy.io.savemat(os.path.join(root, "RAP_annotation", "RAP_annotation.mat"), {"RAP_annotation": {
        "name": cell(files, (n, 1)), "position": np.zeros((n, 16)), "attribute": cell(names, (a, 1)), "data": labels,
        "selected_attribute": selected.astype(index)[None], "partition_attribute": cell(parts, (1, 5))}})
    tiny_image(os.path.join(root, "RAP_dataset", files[0]))
    return labels, names, files


@pytest.mark.parametrize("index,label", DTYPES)
def test_rapv2(tmp_path, index, label):
    labels, names, files = write_rapv2(str(tmp_path), index, label)
    selected = np.arange(60, 6, -1)  # 1-based columns 60 down to 7
    d = data.load_dataset("rapv2", str(tmp_path))
    cols = [selected[k] - 1 for k in RAPV2_ORDER]
    assert d.attr_names == [names[c] for c in cols]
    assert (d.labels == (labels[:, cols] == 1)).all()
    assert [list(d.splits[s]) for s in ("train", "val", "test")] == [[0, 1, 2], [8], [9, 3]]
    assert d.image_paths[-1] == os.path.join(str(tmp_path), "RAP_dataset", files[-1])
    assert list(data.load_dataset("rapv2", str(tmp_path), partition=1).splits["train"]) == [1, 2, 3]


def test_mat_indices_must_be_whole_and_in_range(tmp_path):
    write_rapv2(str(tmp_path), selected=np.arange(60, 6, -1) - 0.5)
    with pytest.raises(ValueError, match=r"RAP_annotation\.mat: selected_attribute holds 59\.5, expected whole numbers "
                                         r"from 1 to 60$"):
        data.load_dataset("rapv2", str(tmp_path))
    write_rapv2(str(tmp_path), selected=np.arange(61, 7, -1))
    with pytest.raises(ValueError, match=r"selected_attribute holds 61, expected whole numbers from 1 to 60"):
        data.load_dataset("rapv2", str(tmp_path))
    os.makedirs(tmp_path / "p")
    write_peta(str(tmp_path / "p"), n=19)  # its test split names image 20
    with pytest.raises(ValueError, match=r"PETA\.mat: test_index holds 20, expected whole numbers from 1 to 19$"):
        data.load_dataset("peta", str(tmp_path / "p"))


WIDER_14 = "Male longHair sunglass Hat Tshirt longSleeve formal shorts jeans longPants skirt faceMask logo stripe"
WIDER_14 = WIDER_14.split()


def write_wider(root):
    ann = os.path.join(root, "Annotations")
    os.makedirs(ann)
    with open(os.path.join(ann, "attr_name.txt"), "w") as f:
        f.write("\n".join(WIDER_14) + "\n")
    rng, rows = np.random.default_rng(4), {}
    for s, n in (("trainval", 3), ("test", 2)):
        rows[s] = rng.integers(-1, 2, (n, 14))
        with open(os.path.join(ann, f"{s}_name.txt"), "w") as f:
            f.write("".join(f"Image/{s}/0--Parade/{i}.jpg\n" for i in range(n)))
        np.savetxt(os.path.join(ann, f"{s}_gt_label.txt"), rows[s], fmt="%d")
    tiny_image(os.path.join(root, "Image", "trainval", "0--Parade", "0.jpg"))
    return rows


def test_wider(tmp_path):
    rows = write_wider(str(tmp_path))
    d = data.load_dataset("wider", str(tmp_path))
    assert d.attr_names == WIDER_14
    assert (d.labels == (np.concatenate([rows["trainval"], rows["test"]]) == 1)).all()
    assert list(d.splits) == ["train", "test"] and list(d.splits["test"]) == [3, 4]
    assert d.image_paths[4] == os.path.join(str(tmp_path), "Image/test/0--Parade/1.jpg")
    assert d.prompts[WIDER_14.index("faceMask")] == "A pedestrian wearing a face mask"


@pytest.fixture
def easydict_module(monkeypatch):
    """A stand-in for the easydict package (not installed): like the real one, it stores items as attributes too."""
    class EasyDict(dict):
        def __init__(self, d=None):
            for k, v in (d or {}).items():
                setattr(self, k, v)

        def __setattr__(self, k, v):
            v = EasyDict(v) if isinstance(v, dict) and not isinstance(v, EasyDict) else v
            super().__setattr__(k, v)
            super().__setitem__(k, v)

    EasyDict.__module__, EasyDict.__qualname__ = "easydict", "EasyDict"
    module = types.ModuleType("easydict")
    module.EasyDict = EasyDict
    monkeypatch.setitem(sys.modules, "easydict", module)
    return EasyDict


@pytest.mark.parametrize("name,image_dir,protocol", [("peta_zs", "images", 3), ("rap_zs", "RAP_dataset", 4),
                                                     ("peta_zs", "images", 5)])
def test_zero_shot_pickle(tmp_path, easydict_module, name, image_dir, protocol):
    n = 8
    label = np.random.default_rng(5).integers(0, 3, (n, 12)).astype(np.float64)
    d = easydict_module({"description": "peta", "root": "/mnt/data1/somebody/PETA/images",
                         "image_name": [np.str_(f"{i + 1:05}.png") for i in range(n)], "label": label,
                         "attr_name": [f"attr{j}" for j in range(12)],
                         "label_idx": {"eval": [4, 0, 2], "color": [5, 6], "extra": range(7, 12)},
                         "partition": {"train": np.array([0, 3, 5]), "val": np.array([1]), "test": np.array([7, 2]),
                                       "trainval": np.array([0, 3, 5, 1])},
                         "weight_train": [label.mean(0).astype(np.float32)]})
    assert isinstance(d["partition"], easydict_module) and d.partition.test[0] == 7
    raw = pickle.dumps(d, protocol=protocol)
    if protocol == 3:  # the release was pickled under numpy 1, whose arrays name numpy.core, not numpy._core
        raw = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
        assert b"numpy.core.multiarray" in raw
    (tmp_path / "dataset_zs_run0.pkl").write_bytes(raw)
    tiny_image(str(tmp_path / image_dir / "00001.png"))
    out = data.load_dataset(name, str(tmp_path))
    assert out.attr_names == ["attr4", "attr0", "attr2"]
    assert (out.labels == (label[:, [4, 0, 2]] == 1)).all()
    assert [list(out.splits[s]) for s in ("train", "val", "test")] == [[0, 3, 5], [1], [7, 2]]
    assert out.image_paths[2] == os.path.join(str(tmp_path), image_dir, "00003.png")
    assert out.notes == [f"label values 2 counted as 0: {(label[:, [4, 0, 2]] == 2).sum()} cells"]


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("name,file", [("peta_zs", "dataset_zs_run0.pkl"), ("pkl", "msp60k.pkl")])
def test_pickle_refuses_other_classes(tmp_path, name, file):
    marker = tmp_path / "marker"
    with open(tmp_path / file, "wb") as f:
        pickle.dump({"image_name": ["00001.png"], "label": Exploit(marker)}, f)
    with pytest.raises(ValueError, match=rf"{file}: refusing to load (posix|os|nt)\.system: a dataset pickle holds "
                                         r"only dicts, lists and numpy arrays$"):
        data.load_dataset(name, str(tmp_path))
    assert not marker.exists()


def write_pickle(path, easydict, protocol=4, **fields):
    """A dataset pickle as Rethinking-of-PAR and OpenPAR write them: an EasyDict of plain data."""
    path.write_bytes(pickle.dumps(easydict(fields), protocol=protocol))


def test_pkl_with_lists_of_partitions(tmp_path, easydict_module, capsys):
    # as Rethinking-of-PAR's format_peta.py writes dataset_all.pkl: 5 random partitions, evaluated columns reordered
    n = 10
    label = np.random.default_rng(6).integers(-1, 3, (n, 6))  # 2 and -1 mark uncertain cells
    trains = [np.array([0, 1, 2]) + k for k in range(5)]
    write_pickle(tmp_path / "dataset_all.pkl", easydict_module, description="peta", reorder="group_order",
                 root="/mnt/data1/somebody/PETA/images", image_name=[f"{i + 1:05}.png" for i in range(n)], label=label,
                 attr_name=[f"attr{j}" for j in range(6)], label_idx={"eval": [3, 1, 5], "color": [0], "extra": [2, 4]},
                 partition={"train": trains, "val": [np.array([8])] * 5, "trainval": [np.r_[t, 8] for t in trains],
                            "test": [np.array([9, 7])] * 5},
                 weight_train=[label.mean(0)] * 5, weight_trainval=[label.mean(0)] * 5)
    tiny_image(str(tmp_path / "images" / "00001.png"))
    d = data.load_dataset("pkl", str(tmp_path), images="images")
    assert d.attr_names == ["attr3", "attr1", "attr5"] and (d.labels == (label[:, [3, 1, 5]] == 1)).all()
    assert [list(d.splits[s]) for s in ("train", "val", "test")] == [[0, 1, 2], [8], [9, 7]]
    assert d.image_paths[3] == os.path.join(str(tmp_path), "images", "00004.png")
    uncertain = np.isin(label[:, [3, 1, 5]], (2, -1)).sum()
    assert uncertain > 0 and d.notes == ["partition 0 of 5", f"label values 2 and -1 counted as 0: {uncertain} cells"]
    d = data.load_dataset("pkl", str(tmp_path), images="images", partition=1)
    assert list(d.splits["train"]) == [1, 2, 3] and d.notes[0] == "partition 1 of 5"
    with pytest.raises(ValueError, match=r"dataset_all\.pkl: --partition=5 is out of range: partition\.train holds 5 "
                                         r"partition\(s\), 0 to 4$"):
        data.load_dataset("pkl", str(tmp_path), images="images", partition=5)
    with pytest.raises(FileNotFoundError, match=r"^9 of 10 images are missing: .*images/00002\.png"):
        data.main(["--dataset=pkl", f"--root={tmp_path}", "--images=images", "--partition=1"])  # the summary, then what is missing
    out = capsys.readouterr().out
    assert out.startswith("pkl: 10 images, 3 attributes; train 3, val 1, test 2\n")
    assert "note: partition 1 of 5\n" in out and f"note: label values 2 and -1 counted as 0: {uncertain} cells" in out


MSP = ["Female", "Child", "Long hair", "Cotton-padded coat", "Riding a bicycle"]


def test_pkl_of_msp60k_layout(tmp_path, easydict_module):
    # OpenPAR's MSP60K: names under `attributes`, no label_idx, one partition as arrays, images next to the pickle
    label = np.random.default_rng(7).integers(0, 2, (6, 5)).astype(np.uint8)
    write_pickle(tmp_path / "dataset_ms_split1.pkl", easydict_module, attributes=MSP, label=label,
                 image_name=[f"scene{i % 2}/{i:06}.jpg" for i in range(6)],
                 partition={"trainval": np.array([0, 1, 2, 3]), "test": np.array([5, 4])})
    tiny_image(str(tmp_path / "scene0" / "000000.jpg"))
    d = data.load_dataset("pkl", str(tmp_path))  # the one .pkl in the root, the images under the root
    assert d.attr_names == MSP and (d.labels == label).all()
    assert list(d.splits) == ["train", "test"] and list(d.splits["train"]) == [0, 1, 2, 3]
    assert list(d.splits["test"]) == [5, 4]
    assert d.notes == ["no val split: training on trainval, evaluating on test and keeping the last model"]
    assert d.image_paths[3] == os.path.join(str(tmp_path), "scene1", "000003.jpg")
    assert d.prompts[:4] == ["A female pedestrian", "A pedestrian with child", "A pedestrian with long hair",
                             "A pedestrian with cotton padded coat"]
    (tmp_path / "prompts.csv").write_text("\ufeffattribute,prompt\nChild,A child\n", encoding="utf-8")
    assert data.load_dataset("pkl", str(tmp_path)).prompts[:2] == ["A female pedestrian", "A child"]
    (tmp_path / "prompts.csv").write_text("attribute,prompt\nChildren,A child\n")
    with pytest.raises(ValueError, match=r"prompts\.csv: row Children,A child is not attribute,prompt for an attribute "
                                         r"read from dataset_ms_split1\.pkl$"):
        data.load_dataset("pkl", str(tmp_path))


@pytest.mark.parametrize("partition,splits,note", [
    ({"train": [0, 1], "val": [2], "trainval": [0, 1, 2], "test": [3]}, {"train": [0, 1], "val": [2], "test": [3]},
     []),
    ({"trainval": np.array([0, 1, 2]), "val": np.array([2]), "test": np.array([3])}, {"train": [0, 1, 2], "test": [3]},
     ["no val split: training on trainval, evaluating on test and keeping the last model"]),
    ({"train": np.array([0, 1]), "val": np.array([], np.int64), "test": np.array([3])},  # an empty val is no val
     {"train": [0, 1], "test": [3]},
     ["no val split: training on train, evaluating on test and keeping the last model"]),
])
def test_pkl_splits(tmp_path, easydict_module, partition, splits, note):
    # train, val and trainval: trainval is their union; trainval without train: val is inside it, so unused
    write_pickle(tmp_path / "a.pkl", easydict_module, attr_name=["Hat"], label=np.eye(4, 1), partition=partition,
                 image_name=["0.png", "1.png", "2.png", "3.png"])
    tiny_image(str(tmp_path / "0.png"))
    d = data.load_dataset("pkl", str(tmp_path))
    assert {s: list(ix) for s, ix in d.splits.items()} == splits and d.notes == note


def test_pkl_errors(tmp_path, easydict_module):
    root = str(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"\*\.pkl not found: the pkl reader expects one dataset pickle .*"
                                                r"github\.com/Event-AHU/OpenPAR"):
        data.load_dataset("pkl", root)
    fields = dict(attr_name=["Hat", "Bag"], label=np.array([[1, 0], [0, 1]]), image_name=["a.png", "b.png"],
                  partition={"train": np.array([0]), "test": np.array([1])})
    write_pickle(tmp_path / "b.pkl", easydict_module, **fields)
    write_pickle(tmp_path / "a.pkl", easydict_module, **{**fields, "attr_name": ["Hat", "Coat"]})
    with pytest.raises(ValueError, match=rf"^{tmp_path} holds several pickles \(a\.pkl, b\.pkl\); choose one with "
                                         r"--pkl=FILE$"):
        data.load_dataset("pkl", root)
    tiny_image(str(tmp_path / "a.png"))
    assert data.load_dataset("pkl", root, pkl="a.pkl").attr_names == ["Hat", "Coat"]
    with pytest.raises(FileNotFoundError, match=rf"^{tmp_path}/imgs not found: the images of {tmp_path}/b\.pkl are "
                                                r"expected there; name their folder under the root with "
                                                r"--images=SUBDIR$"):
        data.load_dataset("pkl", root, pkl="b.pkl", images="imgs")
    (tmp_path / "dataset_zs_run0.pkl").write_bytes((tmp_path / "a.pkl").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"/RAP_dataset not found: the images of .*--images=SUBDIR$"):
        data.load_dataset("rap_zs", root)
    for bad, message in [({**fields, "label": np.array([[1, 0], [3, 1]])},
                          r"labels hold 3, expected 0 or 1 \(2 or -1 for uncertain\)$"),
                         ({**fields, "label": np.ones((3, 2))}, r"label is \(3, 2\), expected \(2, 2\)"),
                         ({**fields, "partition": {"train": np.array([0])}},
                          r"partition holds train; expected test and train or trainval$"),
                         ({**fields, "partition": {"train": np.array([0.5]), "test": np.array([1])}},
                          r"partition\.train holds 0\.5, expected whole numbers from 0 to 1$"),
                         ({k: v for k, v in fields.items() if k != "partition"},
                          r"b\.pkl: holds attr_name, label, image_name; expected a dict of image_name, label, "
                          r"attr_name \(or attributes\) and partition$")]:
        write_pickle(tmp_path / "b.pkl", easydict_module, **bad)
        with pytest.raises(ValueError, match=message):
            data.load_dataset("pkl", root, pkl="b.pkl")
    (tmp_path / "b.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match=r"b\.pkl: holds list; expected a dict of image_name"):
        data.load_dataset("pkl", root, pkl="b.pkl")
    (tmp_path / "b.pkl").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=r"b\.pkl: not a readable pickle"):
        data.load_dataset("pkl", root, pkl="b.pkl")
    with pytest.raises(ValueError, match=r"^--pkl and --images are options of the pickle datasets \(peta_zs, rap_zs, "
                                         r"pkl\), not of peta$"):
        data.load_dataset("peta", root, pkl="a.pkl")
    with pytest.raises(ValueError, match=r"^--partition=1: csv has one partition; peta, rapv1, rapv2, peta_zs"):
        data.load_dataset("csv", root, partition=1)


def write_csv(root, rows, header="image,split,hat,long hair"):
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "labels.csv"), "w") as f:
        f.write("\n".join([header] + rows) + "\n")


def test_duplicate_attribute_names_refuse(tmp_path):
    write_csv(str(tmp_path), ["0.png,train,1,0,1", "1.png,test,0,1,0"], header="image,split,hat,bag,hat")
    tiny_image(str(tmp_path / "0.png"))
    with pytest.raises(ValueError, match=r"labels\.csv: attribute name hat appears more than once; each column needs "
                                         r"a name of its own$"):
        data.load_dataset("csv", str(tmp_path))


def test_label_warnings(tmp_path):
    write_csv(str(tmp_path), ["a.png,train,1,0", "b.png,train,0,0", "a.png,train,0,0", "b.png,val,1,1",
                              "c.png,test,1,1"], header="image,split,hat,bag")
    tiny_image(str(tmp_path / "a.png"))
    d = data.load_dataset("csv", str(tmp_path))
    folder = str(tmp_path)
    assert data.label_warnings(d, "val") == [
        f"images listed more than once: 2 (2 with different labels), such as {folder}/a.png",  # b.png in two splits
        f"images in both train and val: 1, such as {folder}/b.png",
        "attributes without a positive image in train: bag", "attributes without a negative image in val: hat, bag"]
    assert f"warning: images in both train and val: 1, such as {folder}/b.png" in data.summary("csv", d)


def test_a_prompt_too_long_names_its_attribute_and_file(tmp_path):
    write_csv(str(tmp_path), ["a.png,train,1,0", "b.png,test,0,1"])
    tiny_image(str(tmp_path / "a.png"))
    (tmp_path / "prompts.csv").write_text("attribute,prompt\nhat,A pedestrian" + " with a hat" * 30 + "\n")
    with pytest.raises(ValueError, match=r"prompts\.csv: the prompt for hat is longer than the 77 tokens CLIP's text "
                                         r"encoder reads; shorten it$"):
        data.load_dataset("csv", str(tmp_path))


def test_csv(tmp_path):
    write_csv(str(tmp_path), ["a.png,train,1,0", "sub/b.png,test,0,1", "c.png,train,1,1"])
    tiny_image(str(tmp_path / "a.png"))
    d = data.load_dataset("csv", str(tmp_path))
    assert d.attr_names == ["hat", "long hair"] and d.labels.tolist() == [[1, 0], [0, 1], [1, 1]]
    assert list(d.splits) == ["train", "test"] and list(d.splits["train"]) == [0, 2]
    assert d.image_paths[1] == os.path.join(str(tmp_path), "sub/b.png")
    assert d.prompts == ["A pedestrian wearing a hat", "A pedestrian with long hair"]
    (tmp_path / "prompts.csv").write_text("attribute,prompt\nlong hair,Someone whose hair is long\n")
    assert data.load_dataset("csv", str(tmp_path)).prompts[1] == "Someone whose hair is long"
    (tmp_path / "prompts.csv").write_text("attribute,prompt\nbeard,A man with a beard\n")
    with pytest.raises(ValueError, match="prompts.csv: row beard,A man with a beard is not attribute,prompt"):
        data.load_dataset("csv", str(tmp_path))


def test_csv_byte_order_mark_encoding_and_empty(tmp_path):
    # spreadsheet programs put a byte-order mark first; it must not become part of the first column's name
    text = "image,split,hat,café\na.png,train,1,0\n\nb.png,test,0,1\n"
    (tmp_path / "labels.csv").write_bytes(text.encode("utf-8-sig"))
    tiny_image(str(tmp_path / "a.png"))
    d = data.load_dataset("csv", str(tmp_path))
    assert d.attr_names == ["hat", "café"] and d.labels.tolist() == [[1, 0], [0, 1]] and list(d.splits["test"]) == [1]
    (tmp_path / "prompts.csv").write_bytes(b"attribute,prompt\nhat,A hat\ncaf\xe9,Coffee\n")  # Latin-1, not UTF-8
    with pytest.raises(ValueError, match=r"prompts\.csv: line 3 is not UTF-8 \(byte 0xe9\); save it as UTF-8$"):
        data.load_dataset("csv", str(tmp_path))
    os.remove(tmp_path / "prompts.csv")
    (tmp_path / "labels.csv").write_bytes(b"image,split,hat\na.png,train,1\n\ncaf\xe9.png,test,0\n")
    with pytest.raises(ValueError, match=r"labels\.csv: line 4 is not UTF-8 \(byte 0xe9\); save it as UTF-8$"):
        data.load_dataset("csv", str(tmp_path))
    (tmp_path / "labels.csv").write_text("image,split,hat,long hair\n\n")
    with pytest.raises(ValueError, match=r"labels\.csv: no images: the header is followed by no rows$"):
        data.load_dataset("csv", str(tmp_path))


def test_prompt_fallback():
    assert data.prompt_for("upperBodyJacket") == "A pedestrian wearing a jacket"
    assert data.prompt_for("upperBodyBlack") == "A pedestrian with upper body black"
    assert data.prompt_for("lb-LongTrousers") == "A pedestrian wearing long trousers on the lower body"
    assert data.prompt_for("shoes-Leather") == "A pedestrian wearing leather shoes"
    assert data.prompt_for("attach-PlasticBag") == "A pedestrian carrying plastic bag"


# ----------------------------------------------------------------------------- errors a user will meet

def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown dataset 'petaa'; known: peta, pa100k, rapv1, rapv2, wider, peta_zs"):
        data.load_dataset("petaa")


def test_missing_root_says_what_and_where(tmp_path):
    root = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"nowhere/PETA\.mat not found: the peta reader expects PETA\.mat and "
                                                r"images/00001\.png .* published at http://mmlab\.ie\.cuhk\.edu\.hk"):
        data.load_dataset("peta", root)
    with pytest.raises(FileNotFoundError, match=r"RAP_annotation\.mat not found.*rapdataset\.com"):
        data.load_dataset("rapv2", root)
    with pytest.raises(FileNotFoundError, match=r"dataset_zs_run0\.pkl not found.*Rethinking_of_PAR"):
        data.load_dataset("rap_zs", root)


def test_annotation_of_the_wrong_shape(tmp_path):
    write_peta(str(tmp_path), columns=100)
    with pytest.raises(ValueError, match=r"PETA\.mat: peta data is \(20, 100\), expected \(N, 109\)"):
        data.load_dataset("peta", str(tmp_path))
    scipy.io.savemat(tmp_path / "PETA.mat", {"peta": {"data": np.zeros((3, 109))}})
    with pytest.raises(ValueError, match=r"PETA\.mat: not laid out as the peta release \(IndexError"):
        data.load_dataset("peta", str(tmp_path))
    (tmp_path / "PETA.mat").write_text("not a mat file")
    with pytest.raises(ValueError, match=r"PETA\.mat: cannot read it as a MATLAB v5 file"):
        data.load_dataset("peta", str(tmp_path))
    write_wider(str(tmp_path / "w"))
    with open(tmp_path / "w" / "Annotations" / "test_gt_label.txt", "a") as f:
        f.write("1 0 1\n")
    with pytest.raises(ValueError, match=r"test_gt_label\.txt: expected 2 rows .* of 14 values"):
        data.load_dataset("wider", str(tmp_path / "w"))
    write_csv(str(tmp_path / "c"), ["a.png,train,1,0", "", "b.png,train,1,yes"])  # blank lines count as lines
    with pytest.raises(ValueError, match=r"labels\.csv: line 4 is b\.png,train,1,yes\.\.\., expected an image path"):
        data.load_dataset("csv", str(tmp_path / "c"))
    write_csv(str(tmp_path / "c"), ["a.png,train,1,0"], header="path,hat")
    with pytest.raises(ValueError, match=r"labels\.csv: header is path,hat\.\.\., expected image,split,<attr1>"):
        data.load_dataset("csv", str(tmp_path / "c"))


def test_missing_and_unreadable_images(tmp_path):
    write_peta(str(tmp_path))
    os.remove(tmp_path / "images" / "00001.png")
    with pytest.raises(FileNotFoundError, match=r"images/00001\.png not found: the peta reader expects"):
        data.load_dataset("peta", str(tmp_path))
    write_csv(str(tmp_path / "c"), ["a.png,train,1,0", "bad.png,train,0,1", "gone.png,test,0,0"])
    tiny_image(str(tmp_path / "c" / "a.png"))
    (tmp_path / "c" / "bad.png").write_bytes(b"\x89PNG truncated")
    ds = dataset.PARImages(data.load_dataset("csv", str(tmp_path / "c")), [0, 1, 2], size=16, train=False)
    assert ds[0][0].shape == (3, 16, 16) and ds[0][1].tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"cannot read image .*c/bad\.png"):
        ds[1]
    with pytest.raises(FileNotFoundError, match=r"image .*c/gone\.png not found"):
        ds[2]


# ----------------------------------------------------------------------------- the command line

def test_summary_command_checks_every_image(tmp_path, capsys):
    write_peta(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"^19 of 20 images are missing: .*images/00002\.png, .*images/00003"
                                                r"\.png, .*images/00011\.png, and 9 more$"):
        data.main(["--dataset=peta", f"--root={tmp_path}"])
    out = capsys.readouterr().out
    assert out.startswith("peta: 20 images, 35 attributes; train 3, val 2, test 2")
    assert "accessoryHat" in out and f"first image: {tmp_path}/images/00001.png" in out
    assert "\nnote: partition 0 of 5\n" in out
    for i in range(2, 21):
        tiny_image(str(tmp_path / "images" / f"{i:05}.png"))
    data.main(["--dataset=peta", f"--root={tmp_path}"])
    assert capsys.readouterr().out.endswith("all 20 images are there\n")
    # without --decode, the header of every file is read: an empty file and one that is no image are found at once
    (tmp_path / "images" / "00007.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "images" / "00009.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"^2 of 20 images are missing or unreadable: .*00007\.png \(cannot "
                                                r"identify image file\), .*00009\.png \(an empty file\); mend or remove "
                                                r"them \(--decode=True opens every image in full, and finds the rest\)$"):
        data.main(["--dataset=peta", f"--root={tmp_path}"])
    # a sound header whose data is cut passes; --decode=True finds it
    tiny_image(str(tmp_path / "images" / "00009.png"))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(
        tmp_path / "images" / "00007.png")
    whole = (tmp_path / "images" / "00007.png").read_bytes()
    (tmp_path / "images" / "00007.png").write_bytes(whole[:len(whole) // 2])
    data.main(["--dataset=peta", f"--root={tmp_path}"])
    with pytest.raises(FileNotFoundError, match=r"^1 of 20 images are missing or unreadable: .*00007\.png \(cannot read"):
        data.main(["--dataset=peta", f"--root={tmp_path}", "--decode=True"])
    with pytest.raises(ValueError, match=r"^unknown option --rot; valid options: dataset, root"):
        data.main(["--dataset=peta", "--rot=x"])
    with pytest.raises(ValueError, match=r"^python data\.py peta: the dataset is an option, --dataset=peta$"):
        data.main(["peta"])


def test_script_prints_one_line_errors():
    r = run_script("data.py", "--dataset=nosuch")
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "error: unknown dataset 'nosuch'; known: peta, pa100k, rapv1, rapv2, wider, peta_zs, rap_zs, pkl, csv, synth"]
