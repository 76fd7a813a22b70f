"""dataset.py: images read as a viewer shows them, padded, transformed, the Dataset, the preloaded tensor pipeline."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

import data
import dataset
from dataset import MEAN, STD
from conftest import write_png


def test_images_are_read_as_a_viewer_shows_them(tmp_path):
    rng = np.random.default_rng(0)
    upright = rng.integers(0, 256, (24, 12, 3), dtype=np.uint8)  # 12 wide, 24 tall
    Image.fromarray(upright).save(tmp_path / "upright.png")
    # a phone stores its pixels as the sensor saw them and says in EXIF how to turn them: orientation 6 means
    # "rotate 90 degrees clockwise to view", so the stored pixels are the upright image turned the other way
    exif = Image.Exif()
    exif[0x0112] = 6
    for ext in ("png", "jpg"):
        Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(tmp_path / f"turned.{ext}", exif=exif.tobytes())
    assert Image.open(tmp_path / "turned.png").size == (24, 12)
    assert np.array_equal(np.asarray(dataset.read_image(str(tmp_path / "turned.png"))), upright)
    assert dataset.read_image(str(tmp_path / "turned.jpg")).size == (12, 24)  # lossy, but upright
    # 16 bits per channel: grey (Pillow's mode I;16) and colour are scaled by their range, not clipped at 255
    grey = upright[..., 0]
    write_png(tmp_path / "grey16.png", grey.astype(np.uint16) * 257, bit_depth=16)
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    assert np.array_equal(np.asarray(dataset.read_image(str(tmp_path / "grey16.png"))), np.stack([grey] * 3, -1))
    write_png(tmp_path / "rgb48.png", upright.astype(np.uint16) * 257, bit_depth=16)
    assert np.array_equal(np.asarray(dataset.read_image(str(tmp_path / "rgb48.png"))), upright)
    Image.fromarray(grey.astype(np.int32) * 257, mode="I").save(tmp_path / "grey32.tif")
    assert np.array_equal(np.asarray(dataset.read_image(str(tmp_path / "grey32.tif")))[..., 0], grey)
    Image.fromarray(grey.astype(np.float32) / 255, mode="F").save(tmp_path / "float.tif")
    assert np.abs(np.asarray(dataset.read_image(str(tmp_path / "float.tif")))[..., 0].astype(int) - grey).max() <= 1
    # an animation: its first frame
    frames = [Image.fromarray(np.full((8, 4, 3), c, np.uint8)) for c in (40, 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert np.asarray(dataset.read_image(str(tmp_path / "anim.gif"))).mean() < 100
    # a file whose header claims 1.6 billion pixels (a decompression bomb) is an unreadable image, said in one line
    write_png(tmp_path / "huge.png", np.zeros((1, 1, 3)), size=(40000, 40000))
    with pytest.raises(ValueError, match=r"^cannot read image .*huge\.png: Image size \(1600000000 pixels\) exceeds"):
        dataset.read_image(str(tmp_path / "huge.png"))


def test_pad_to_square_centres_on_black_and_leaves_a_square_image_as_it_is():
    rng = np.random.default_rng(0)
    tall = rng.integers(1, 256, (6, 3, 3), dtype=np.uint8)  # 3 wide, 6 tall, no black pixel of its own
    padded = np.asarray(dataset.PadToSquare()(Image.fromarray(tall)))
    expected = np.zeros((6, 6, 3), np.uint8)  # built by hand: one black column left, two right ((6 - 3) // 2 = 1)
    expected[:, 1:4] = tall
    assert np.array_equal(padded, expected)
    square = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(dataset.PadToSquare()(Image.fromarray(square))), square)
    grey = dataset.PadToSquare()(Image.fromarray(square[:, :, 0]))  # a square of another mode still becomes RGB
    assert grey.mode == "RGB" and np.array_equal(np.asarray(grey)[:, :, 2], square[:, :, 0])


def test_transform_size_normalisation_and_aspect(tmp_path):
    img = Image.new("RGB", (20, 40), (255, 128, 0))  # 20 wide, 40 tall, like a pedestrian crop
    x = dataset.build_transform(32, train=False)(img)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    mean, std = torch.tensor(MEAN)[:, None], torch.tensor(STD)[:, None]
    colour = (torch.tensor([255, 128, 0]) / 255.0)[:, None]
    assert torch.allclose(x[:, :, 16], ((colour - mean) / std).expand(3, 32), atol=1e-3)  # the person fills the height
    black = (0 - mean) / std
    assert torch.allclose(x[:, :, :7], black[:, :, None].expand(3, 32, 7), atol=1e-3)  # black bars left and right
    assert torch.allclose(x[:, :, 25:], black[:, :, None].expand(3, 32, 7), atol=1e-3)
    wide = (x[0, 16] - black[0]).abs() > 0.1
    assert wide.sum() in (16, 17, 18)  # 20/40 of the width: the aspect ratio is kept
    gray = dataset.build_transform(32, train=False)(Image.new("L", (20, 40), 255))
    assert gray.shape == (3, 32, 32)


def test_train_transform_is_random_and_sized():
    torch.manual_seed(0)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 32, 3), dtype=np.uint8))
    t = dataset.build_transform(64, train=True)
    outs = [t(img) for _ in range(6)]
    assert all(o.shape == (3, 64, 64) for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # crop and flip change the image


def test_images_of_any_mode_become_rgb(tmp_path):
    paths = []
    for mode in ("L", "RGBA", "P", "CMYK"):
        paths.append(str(tmp_path / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}"))
        Image.new(mode, (6, 12)).save(paths[-1])
    d = data.PARData(paths, np.zeros((4, 2), np.uint8), ["a", "b"], ["A", "B"], {"train": np.arange(4)})
    ds = dataset.PARImages(d, d.splits["train"], size=16, train=True)
    assert all(ds[i][0].shape == (3, 16, 16) for i in range(4))


def test_the_tensor_pipeline_equals_the_pil_transform(tmp_path):
    import torchvision.transforms.functional as TF
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(20, 40), (33, 17), (32, 32)]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    cache = str(tmp_path / "cache.pt")
    images = dataset.load_images(paths, 32, cache)
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8
    for i, p in enumerate(paths):  # evaluation: exactly build_transform's output
        torch.testing.assert_close(dataset.normalize(images[i:i + 1])[0], dataset.build_transform(32, False)(dataset.read_image(p)),
                                   rtol=0, atol=1e-6)
    # training: for the same crop offsets and flips, exactly the PIL Pad + crop + flip
    pad = dataset.crop_pad(32)
    shifts, flips = torch.tensor([[0, 0], [2 * pad, 1], [1, 2 * pad]]), torch.tensor([False, True, True])
    out = dataset.augment(images, pad, shifts, flips)
    for i, p in enumerate(paths):
        img = TF.resize(dataset.PadToSquare()(dataset.read_image(p)), [32, 32], interpolation=TF.InterpolationMode.BICUBIC)
        img = TF.crop(TF.pad(img, pad), int(shifts[i, 0]), int(shifts[i, 1]), 32, 32)
        img = TF.hflip(img) if flips[i] else img
        torch.testing.assert_close(out[i], TF.normalize(TF.to_tensor(img), MEAN, STD), rtol=0, atol=1e-6)
    torch.manual_seed(0)
    a, b = dataset.augment(images, pad), dataset.augment(images, pad)
    assert a.shape == (3, 3, 32, 32) and not torch.equal(a, b)  # random crops and flips by default
    # the cache is reused while the images stay as they are, and rebuilt when one changes
    os.utime(cache, (1, 1))
    assert torch.equal(dataset.load_images(paths, 32, cache), images) and os.stat(cache).st_mtime == 1
    Image.new("RGB", (20, 40), (255, 0, 0)).save(paths[0])
    again = dataset.load_images(paths, 32, cache)
    assert not torch.equal(again[0], images[0]) and torch.equal(again[1:], images[1:])
