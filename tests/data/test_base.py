import pytest
import torch
from PIL import Image

from fastadapt.data.base import ClassDataset, Rotations


def test_from_tensors_groups_by_label():
    y = torch.tensor([7, 3, 7, 3, 9])
    x = torch.arange(5).float().unsqueeze(1)
    data = ClassDataset.from_tensors(x, y)
    assert data.class_names == ("3", "7", "9")
    assert data.counts.tolist() == [2, 2, 1]
    assert data.x.squeeze(1).tolist() == [1, 3, 0, 2, 4]  # stable within a class
    assert data.starts.tolist() == [0, 2, 4]


def test_from_tensors_errors():
    with pytest.raises(TypeError, match="labels must be integers"):
        ClassDataset.from_tensors(torch.zeros(3, 1), torch.zeros(3))
    with pytest.raises(ValueError, match=r"y must have shape \(3,\)"):
        ClassDataset.from_tensors(torch.zeros(3, 1), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="2 class names for 3 distinct labels"):
        ClassDataset.from_tensors(torch.zeros(3, 1), torch.arange(3), class_names=["a", "b"])


def test_subset_keeps_order_and_examples():
    data = ClassDataset.from_tensors(torch.arange(10).float(), torch.arange(10) // 2)
    sub = data.subset([4, 1])
    assert sub.class_names == ("4", "1") and sub.x.tolist() == [8, 9, 2, 3]
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 5\)"):
        data.subset([5])


def test_rotation_table_matches_rot90():
    x = torch.arange(2 * 9).float().view(2, 1, 3, 3)
    data = ClassDataset.from_tensors(x, torch.tensor([0, 1])).with_augmentation(Rotations())
    table = data.augmented.view(2, 4, 1, 3, 3)
    for k in range(4):
        assert torch.equal(table[:, k], torch.rot90(x, k, dims=(-2, -1)))
    with pytest.raises(ValueError, match="square"):
        Rotations()(torch.zeros(1, 1, 2, 3), torch.tensor([1]))


def test_from_folder(tmp_path):
    for c, colour in enumerate([0, 128, 255]):
        folder = tmp_path / f"class_{c}"
        folder.mkdir()
        for i in range(2 + c):
            Image.new("L", (10, 12), colour).save(folder / f"{i}.png")
    (tmp_path / "README.txt").write_text("not a class")
    data = ClassDataset.from_folder(tmp_path, grayscale=True)
    assert data.class_names == ("class_0", "class_1", "class_2")
    assert data.counts.tolist() == [2, 3, 4] and data.x.shape == (9, 1, 12, 10)
    assert data.x[0].max() == 0 and data.x[-1].min() == 1.0
    rgb = ClassDataset.from_folder(tmp_path, image_size=6)
    assert rgb.x.shape == (9, 3, 6, 6)


def test_from_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ClassDataset.from_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class sub-folders"):
        ClassDataset.from_folder(tmp_path)
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        ClassDataset.from_folder(tmp_path)
    Image.new("L", (4, 4)).save(tmp_path / "a" / "0.png")
    Image.new("L", (5, 4)).save(tmp_path / "a" / "1.png")
    with pytest.raises(ValueError, match="pass image_size"):
        ClassDataset.from_folder(tmp_path)
