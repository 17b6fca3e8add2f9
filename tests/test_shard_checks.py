"""Every shard of `cm sample --num` is checked for its arrays, their shapes and dtypes before it
counts: a shard that passes its CRC but holds the wrong things is named, removed and made again
(the merged file is then the same, bit for bit, as an uninterrupted run's); a folder in a shard's
place, which must not be deleted, is refused in one line `cm: error: ...` naming it.

The runs go through the real `cm` entry point (`consistency_models.cli.main`) with the embedded
`digits` model (16×16 gray, class-conditional); the bad shards are real .npz files written beside
genuine ones, as a crash, a foreign tool or an older version could have left them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from consistency_models.cli import main
from consistency_models.evaluation.generation import existing_indices, shard_folder

ARGS = ["sample", "--model", "digits", "--num", "8", "--batch-size", "4", "--steps", "1", "--seed", "3"]


def run(capsys, out: Path) -> tuple[int, str]:
    code = main([*ARGS, "--out", str(out)])
    return code, capsys.readouterr().err


def arrays_of(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, np.ndarray]:
    """The merged file of an uninterrupted run: arr_0 (8, 16, 16, 1) uint8, arr_1 (8,) int64."""
    out = tmp_path_factory.mktemp("reference") / "s.npz"
    assert main([*ARGS, "--out", str(out)]) == 0
    return arrays_of(out)


def shards_with(tmp_path: Path, reference: dict[str, np.ndarray], **bad: np.ndarray) -> tuple[Path, Path]:
    """A shard folder for `tmp_path/s.npz`: a genuine shard of images 4…7 and, for images 0…3, a
    shard whose arrays are the genuine ones with `bad` replacing (or, when None, dropping) some."""
    out = tmp_path / "s.npz"
    folder = shard_folder(out)
    folder.mkdir()
    images, labels = reference["arr_0"], reference["arr_1"]
    np.savez(folder / "r0-000000004.npz", images=images[4:], indices=np.arange(4, 8, dtype=np.int64),
             labels=labels[4:])
    arrays = {"images": images[:4], "indices": np.arange(4, dtype=np.int64), "labels": labels[:4]} | bad
    np.savez(folder / "r0-000000000.npz", **{k: v for k, v in arrays.items() if v is not None})
    return out, folder / "r0-000000000.npz"


def assert_remade(capsys, out: Path, bad: Path, reference: dict[str, np.ndarray], problem: str) -> None:
    """The run names the bad shard and what is wrong, makes its images again and merges the same file."""
    code, err = run(capsys, out)
    assert code == 0, err
    named = [line for line in err.splitlines() if "damaged" in line]
    assert len(named) == 1 and f"{bad} is damaged" in named[0] and problem in named[0], err
    assert "r0-000000004.npz" not in err  # the genuine shard counts as it is
    merged = arrays_of(out)
    assert sorted(merged) == ["arr_0", "arr_1"]
    np.testing.assert_array_equal(merged["arr_0"], reference["arr_0"])
    np.testing.assert_array_equal(merged["arr_1"], reference["arr_1"])
    assert not shard_folder(out).exists()
    assert not [p for p in out.parent.rglob("*") if p.name.endswith(".tmp")]


def test_a_shard_of_the_wrong_image_shape_is_made_again(tmp_path, reference, capsys):
    """It passed its CRC and used to end the merge in `ValueError: shape mismatch`."""
    out, bad = shards_with(tmp_path, reference, images=reference["arr_0"][:4, :8, :8])
    assert_remade(capsys, out, bad, reference, "images are uint8 of shape (4, 8, 8, 1), not uint8 of shape "
                                               "(4, 16, 16, 1)")


def test_a_shard_without_its_labels_is_made_again(tmp_path, reference, capsys):
    """It used to be merged silently into a file without arr_1 (a class-conditional model's labels)."""
    out, bad = shards_with(tmp_path, reference, labels=None)
    assert_remade(capsys, out, bad, reference, "no labels array")


def test_a_shard_of_the_wrong_dtype_is_made_again(tmp_path, reference, capsys):
    out, bad = shards_with(tmp_path, reference, images=reference["arr_0"][:4].astype(np.float32))
    assert_remade(capsys, out, bad, reference, "images are float32 of shape (4, 16, 16, 1), not uint8")


@pytest.mark.parametrize("name, dtype, problem", [
    ("labels", np.float64, "labels are float64 of shape (4,), not int64"),
    ("indices", np.float32, "indices are float32 of shape (4,), not int64"),
])
def test_wrong_label_and_index_dtypes_are_made_again(tmp_path, reference, capsys, name, dtype, problem):
    genuine = {"labels": reference["arr_1"][:4], "indices": np.arange(4)}[name]
    out, bad = shards_with(tmp_path, reference, **{name: genuine.astype(dtype)})
    assert_remade(capsys, out, bad, reference, problem)


def test_a_folder_in_place_of_a_shard_file_is_refused_and_kept(tmp_path, reference, capsys):
    """It used to end in an error naming a hidden temp file (the rename onto the folder failed);
    it is refused before any work, and neither it nor what it holds is deleted."""
    out = tmp_path / "s.npz"
    in_the_way = shard_folder(out) / "r0-000000000.npz"
    in_the_way.mkdir(parents=True)
    (in_the_way / "mine.txt").write_text("the user's")
    code, err = run(capsys, out)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("cm: error: out: ") and f"{in_the_way} is a folder, not a shard file" in lines[0]
    assert ".tmp" not in err
    assert (in_the_way / "mine.txt").read_text() == "the user's"
    assert not out.exists() and not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    (in_the_way / "mine.txt").unlink()
    in_the_way.rmdir()  # moved away: the same command finishes the run
    code, err = run(capsys, out)
    assert code == 0, err
    np.testing.assert_array_equal(arrays_of(out)["arr_0"], reference["arr_0"])


def test_a_folder_in_place_of_the_merged_file_is_refused(tmp_path, capsys):
    out = tmp_path / "s.npz"
    out.mkdir()
    code, err = run(capsys, out)
    assert code == 2 and err.strip() == f"cm: error: out: {out} is a folder; sharded generation writes one .npz " \
                                        "file there", err
    assert out.is_dir() and not shard_folder(out).exists()


def test_shards_read_without_the_model_must_match_each_other(tmp_path, capsys):
    """`existing_indices(folder)` (no model at hand): the first sound shard sets the layout."""
    folder = tmp_path / "s.npz.shards"
    folder.mkdir()
    np.savez(folder / "r0-000000000.npz", images=np.zeros((2, 16, 16, 1), np.uint8), indices=np.arange(2))
    np.savez(folder / "r0-000000002.npz", images=np.zeros((2, 8, 8, 3), np.uint8), indices=np.arange(2, 4))
    np.savez(folder / "r0-000000004.npz", images=np.zeros((2, 16, 16, 1), np.uint8), indices=np.arange(4, 6),
             labels=np.zeros(2, np.int64))
    (folder / "notes.npz").write_bytes(b"the user's")  # not named like a shard: never touched
    assert existing_indices(folder) == {0, 1}
    err = capsys.readouterr().err
    assert "r0-000000002.npz is damaged" in err and "r0-000000004.npz is damaged" in err
    assert (folder / "notes.npz").read_bytes() == b"the user's"
