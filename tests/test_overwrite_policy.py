"""What `--overwrite` may replace: an earlier output, as a whole — never an input, a folder
holding an input or a folder inside one, and never a folder holding files the command did not
write."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from consistency_models.cli import main


def run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, err


def one_line(code, err, text):
    assert code == 2 and err.count("\n") == 1 and err.startswith("cm: error: ") and text in err, err


def test_overwrite_replaces_a_folder_of_earlier_images_as_a_whole(tmp_path, capsys):
    out = tmp_path / "grid"
    assert run(capsys, ["sample", "--out", f"{out}/", "--batch-size", "16"])[0] == 0
    assert len(list(out.glob("*.png"))) == 16 and (out / ".cm-output").is_file()   # cm's mark beside them
    (tmp_path / "plain").mkdir()                                   # the mode any new folder gets here
    (tmp_path / "plain.png").write_bytes(b"")                     # and any new file
    assert out.stat().st_mode == (tmp_path / "plain").stat().st_mode  # not mkdtemp's private 0700
    assert {p.stat().st_mode for p in out.iterdir()} == {(tmp_path / "plain.png").stat().st_mode}
    code, err = run(capsys, ["sample", "--out", f"{out}/", "--batch-size", "2"])
    one_line(code, err, "is not empty; pass --overwrite")
    assert run(capsys, ["sample", "--out", f"{out}/", "--batch-size", "2", "--overwrite", "--seed", "1"])[0] == 0
    assert sorted(p.name for p in out.iterdir()) == [".cm-output", "000000.png", "000001.png"]  # no stale 000002 …
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp or old folder left


def test_overwrite_never_replaces_a_users_folder_of_files_named_like_samples(tmp_path, capsys):
    """A folder of the user's own images named 000000.png, ... is not an earlier output: only a
    folder holding cm's mark (.cm-output) is replaced with --overwrite."""
    out = tmp_path / "mydata"
    out.mkdir()
    for i in range(5):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(out / f"{i:06d}.png")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, err = run(capsys, ["sample", "--model", "digits-teacher", "--out", f"{out}/", "--batch-size", "2",
                             "--overwrite"])
    one_line(code, err, f"out: {out}/ was not written by cm (a folder of samples it writes holds .cm-output); choose "
                        "another folder")
    assert "%|" not in err   # refused before the 18 sampling steps, not after them
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_overwrite_refuses_a_folder_holding_files_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "000000.png").write_bytes(b"")
    code, err = run(capsys, ["sample", "--out", f"{out}/", "--batch-size", "2", "--overwrite"])
    one_line(code, err, "holds notes.txt, which this command did not write")
    assert (out / "notes.txt").read_text() == "keep me" and (out / "000000.png").read_bytes() == b""


def test_an_edit_never_replaces_its_input_even_with_overwrite(tmp_path, capsys):
    image = tmp_path / "digit.png"
    Image.fromarray(np.full((16, 16), 200, dtype=np.uint8), "L").save(image)
    before = image.read_bytes()
    code, err = run(capsys, ["edit", "denoise", "--image", str(image), "--sigma", "0.4", "--out", str(image),
                             "--overwrite"])
    one_line(code, err, f"out: {image} is the --image input; write the result elsewhere")
    assert image.read_bytes() == before


@pytest.mark.parametrize("where, text", [("", "is the --model input"), ("samples/", "lies inside the --model folder")])
def test_samples_never_land_in_the_model_folder(pipeline_copy, capsys, where, text):
    before = sorted(p.name for p in pipeline_copy.rglob("*"))
    code, err = run(capsys, ["sample", "--model", str(pipeline_copy), "--out", f"{pipeline_copy}/{where}",
                             "--batch-size", "2", "--overwrite"])
    one_line(code, err, text)
    assert sorted(p.name for p in pipeline_copy.rglob("*")) == before


def test_a_run_folder_may_not_hold_its_data(tmp_path, capsys):
    data = tmp_path / "data" / "images"
    data.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((8, 8), 50 * i, dtype=np.uint8), "L").save(data / f"{i}.png")
    code, err = run(capsys, ["train", "--method", "ict", "--data", str(data), "--out", str(tmp_path / "data"),
                             "--steps", "1", "--batch-size", "2", "--no-progress"])
    one_line(code, err, f"holds the --data input {data}")
    code, err = run(capsys, ["train", "--method", "ict", "--data", str(data), "--out", str(data / "run"),
                             "--steps", "1", "--batch-size", "2", "--no-progress"])
    one_line(code, err, "lies inside the --data folder")


def test_a_folder_asked_for_never_replaces_a_file_even_with_overwrite(tmp_path, capsys):
    """`--out s.npz/` where s.npz is a file: one line and exit 2 (it once ended with exit 1 and the
    name of a temporary file), the file untouched."""
    npz = tmp_path / "s.npz"
    assert run(capsys, ["sample", "--out", str(npz), "--batch-size", "2"])[0] == 0
    before = npz.read_bytes()
    for extra in ([], ["--overwrite"]):
        code, err = run(capsys, ["sample", "--out", f"{npz}/", "--batch-size", "2", *extra])
        one_line(code, err, f"out: {npz}/ asks for a folder, but {npz} is a file; choose another name")
    assert npz.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]


def test_eval_checks_its_output_files_before_it_works(tmp_path, capsys):
    """A --json or --save-stats that cannot be written is said before the evaluation, not after it
    (an Inception pass over 50,000 samples would be lost), naming the option."""
    samples = tmp_path / "digits.npz"
    assert run(capsys, ["sample", "--num", "8", "--out", str(samples)])[0] == 0
    evaluate = ["eval", "--samples", str(samples), "--ref", "digits:test", "--features", "digits"]
    code, err = run(capsys, [*evaluate, "--json", str(tmp_path / "nodir" / "r.json")])
    one_line(code, err, f"json: the folder {tmp_path / 'nodir'} does not exist")
    code, err = run(capsys, [*evaluate, "--json", f"{tmp_path / 'newj'}/"])
    one_line(code, err, f"json: {tmp_path / 'newj'}/ names a folder; give a file name")
    code, err = run(capsys, ["eval", "--samples", str(samples), "--save-stats", f"{samples}/", "--overwrite"])
    one_line(code, err, "save-stats:")
    for folder in ("empty", "full"):   # an existing folder, empty or not, --overwrite or not
        (tmp_path / folder).mkdir()
    (tmp_path / "full" / "mine.txt").write_text("a user's file")
    for folder, overwrite in (("empty", []), ("full", []), ("full", ["--overwrite"])):
        code, err = run(capsys, [*evaluate, "--json", str(tmp_path / folder), *overwrite])
        one_line(code, err, f"json: {tmp_path / folder} is a folder; give a file name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.npz", "empty", "full"]
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["mine.txt"] and not any((tmp_path / "empty").iterdir())


def test_overwrite_names_a_model_folder_as_such(tmp_path, capsys, pipeline_dir):
    """A run folder holds .lock and model_index.json: the refusal says it is a model, not that it
    holds a lock (which read as if a training were still running)."""
    import shutil
    folder = shutil.copytree(pipeline_dir, tmp_path / "run")
    (folder / ".lock").write_text("123")
    code, err = run(capsys, ["sample", "--out", f"{folder}/", "--batch-size", "2", "--overwrite"])
    one_line(code, err, f"out: {folder}/ is a model folder (it holds model_index.json); choose another folder")
    assert (folder / "model_index.json").is_file() and (folder / ".lock").read_text() == "123"


def test_every_output_under_a_file_is_named_as_such(tmp_path, pipe):
    """One rule for every writer: an output whose folder is a file says so (not "does not exist")."""
    from consistency_models.errors import InvalidInputError
    from consistency_models.evaluation.generation import generate_samples
    from consistency_models.io.images import output_kind
    from consistency_models.metrics.scores import SetStatistics, save_statistics, write_results_json
    afile = tmp_path / "afile"
    afile.write_text("a user's file")
    writers = {
        "out": lambda: output_kind(afile / "x.png"),
        "path": lambda: save_statistics(SetStatistics(np.zeros(2), np.eye(2), None, None, None, None), afile / "s.npz"),
        "path ": lambda: write_results_json({"fid": 1.0}, afile / "r.json"),
        " path": lambda: pipe.save_pretrained(afile / "model"),
        "out ": lambda: generate_samples(pipe, num=1, batch_size=1, out=afile / "s.npz"),
    }
    for argument, write in writers.items():
        with pytest.raises(InvalidInputError, match=rf"^{argument.strip()}: {afile} is a file, not a folder$"):
            write()
    assert afile.read_text() == "a user's file"


def test_a_new_model_folder_over_a_file_is_named_as_such(tmp_path, capsys, monkeypatch):
    """`cm new FILE` and `cm convert openai CKPT CKPT` say the output is a file (as `cm train --out
    FILE` does), not that it "already exists and is not an empty folder"; the file stays."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile.txt").write_text("a user's file")
    (tmp_path / "ckpt.pt").write_bytes(b"not read")
    code, err = run(capsys, ["new", "afile.txt"])
    one_line(code, err, "out_dir: afile.txt is a file; give a new folder")
    code, err = run(capsys, ["convert", "openai", "ckpt.pt", "ckpt.pt"])
    one_line(code, err, "out_dir: ckpt.pt is a file; give a new folder")
    assert (tmp_path / "afile.txt").read_text() == "a user's file" and (tmp_path / "ckpt.pt").read_bytes() == b"not read"


# -- an output that another process writes while this one runs ----------------------------------
def test_a_file_that_appears_meanwhile_is_kept_without_overwrite(tmp_path):
    """`atomic_path(replace=False)` commits with a hard link, which fails where a file stands: the
    other process's file stays, this write is refused and leaves no temp file; with `replace` the
    later write wins, as before."""
    from consistency_models.errors import InvalidInputError
    from consistency_models.io.atomic import atomic_path

    out = tmp_path / "grid.png"
    with pytest.raises(InvalidInputError, match=r"^out: .*grid\.png was written by another process while this one "
                                                r"ran; it is kept \(give another name, or --overwrite to replace it\)$"):
        with atomic_path(out, replace=False, argument="out") as tmp:
            tmp.write_bytes(b"ours")
            out.write_bytes(b"theirs")   # the other process finishes first
    assert out.read_bytes() == b"theirs" and sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]
    with atomic_path(tmp_path / "new.png", replace=False) as tmp:
        tmp.write_bytes(b"ours")
    assert (tmp_path / "new.png").read_bytes() == b"ours" and (tmp_path / "new.png").stat().st_nlink == 1
    with atomic_path(out) as tmp:
        tmp.write_bytes(b"ours")
    assert out.read_bytes() == b"ours"


def test_a_folder_filled_meanwhile_is_kept_without_overwrite(tmp_path):
    from consistency_models.errors import InvalidInputError
    from consistency_models.io.overwrite import replaced_folder

    out = tmp_path / "samples"
    with pytest.raises(InvalidInputError, match=r"^out: .*samples was written by another process"):
        with replaced_folder(out, r"\d{6}\.png", replace=False) as fresh:
            (fresh / "000000.png").write_bytes(b"ours")
            out.mkdir()
            (out / "000000.png").write_bytes(b"theirs")
    assert [p.read_bytes() for p in out.iterdir()] == [b"theirs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples"]   # no temp folder left
    (tmp_path / "empty").mkdir()   # an empty folder is taken, as refuse_existing allows it
    with replaced_folder(tmp_path / "empty", r"\d{6}\.png", replace=False) as fresh:
        (fresh / "000000.png").write_bytes(b"ours")
    assert [p.read_bytes() for p in (tmp_path / "empty").iterdir()] == [b"ours"]


def test_two_cm_sample_processes_on_one_new_output_the_later_is_refused(tmp_path, capsys):
    """Two real processes: the second starts after the first passed its existence check and
    finishes first; the first then refuses to replace it (exit 2) instead of both saying 'wrote'."""
    import time

    import warm_cm
    from conftest import child_env

    out = tmp_path / "race.png"
    first = warm_cm.start(["sample", "--model", "digits-teacher", "--steps", "20", "--batch-size", "8", "--out",
                           str(out), "--threads", "1"], child_env(), tmp_path)
    deadline = time.monotonic() + 120
    while "sampling" not in first.output()[1]:   # its bar: the check is behind it, the write ahead
        assert first.poll() is None and time.monotonic() < deadline, first.output()
        time.sleep(0.05)
    assert main(["sample", "--model", "digits", "--batch-size", "4", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    theirs = out.read_bytes()
    _, err = first.communicate(timeout=120)
    assert first.returncode == 2, err
    assert err.strip().splitlines()[-1].endswith("race.png was written by another process while this one ran; it "
                                                 "is kept (give another name, or --overwrite to replace it)"), err
    assert out.read_bytes() == theirs and sorted(p.name for p in tmp_path.iterdir()) == ["race.png"]


def test_a_folder_named_like_a_file_output_is_refused_before_any_work(tmp_path, capsys):
    """`--out x.npz` where x.npz is a folder wrote PNGs into it (cm sample) or ran the whole edit
    before failing (cm edit); `--out x.npz/` still asks for the folder."""
    for name in ("dir.png", "dir.npz"):
        (tmp_path / name).mkdir()
        code, err = run(capsys, ["sample", "--out", str(tmp_path / name), "--no-progress"])
        one_line(code, err, f"out: {tmp_path / name} is a folder, but its name asks for a {name[3:]} file; give "
                            f"another name, or {tmp_path / name}/ to write one PNG per image into that folder")
        assert not any((tmp_path / name).iterdir())
    code, err = run(capsys, ["edit", "interpolate", "--out", str(tmp_path / "dir.png")])
    one_line(code, err, f"out: {tmp_path / 'dir.png'} is a folder; give a file name (in it, or beside it)")
    assert "%|" not in err   # refused before the edit ran
    assert run(capsys, ["sample", "--out", f"{tmp_path / 'dir.npz'}/", "--batch-size", "2", "--no-progress"])[0] == 0
    assert sorted(p.name for p in (tmp_path / "dir.npz").iterdir()) == [".cm-output", "000000.png", "000001.png"]


def test_sharded_generation_never_takes_a_users_folder_of_its_shards_name(tmp_path, capsys):
    """`--num` writes its shards into OUT.shards/ and removes that folder once they are merged: a
    folder of that name holding anything cm did not write is refused, not emptied."""
    folder = tmp_path / "u.npz.shards"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    for argv in ([], ["--overwrite"]):
        code, err = run(capsys, ["sample", "--num", "4", "--batch-size", "2", "--out", str(tmp_path / "u.npz"),
                                 "--no-progress", *argv])
        one_line(code, err, f"out: {folder} holds notes.txt, which cm did not write, but the shards of "
                            f"{tmp_path / 'u.npz'} go into a folder of that name (removed when they are merged); "
                            "move it away")
    assert [p.name for p in folder.iterdir()] == ["notes.txt"] and not (tmp_path / "u.npz").exists()
    (folder / "notes.txt").unlink()   # an empty folder of that name is taken
    assert run(capsys, ["sample", "--num", "4", "--batch-size", "2", "--out", str(tmp_path / "u.npz"),
                        "--no-progress"])[0] == 0
    assert (tmp_path / "u.npz").is_file() and not folder.exists()


def test_a_symbolic_link_as_the_output_is_said_before_the_work(tmp_path, capsys):
    """A dangling link (or a link to an empty folder) passed the existence check, and the write
    then failed as 'written by another process meanwhile'."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "linked").symlink_to(tmp_path / "empty")
    for out in (str(tmp_path / "dangling.png"), f"{tmp_path / 'linked'}/"):
        code, err = run(capsys, ["sample", "--model", "digits-teacher", "--out", out, "--batch-size", "1"])
        one_line(code, err, f"out: {out} is a symbolic link; pass --overwrite to replace the link itself, or choose "
                            "another name")
        assert "%|" not in err
    assert not (tmp_path / "nowhere.png").exists() and list((tmp_path / "empty").iterdir()) == []
