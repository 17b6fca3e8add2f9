"""A wide sweep of hostile input through `cm` (in this process, as `consistency_models.cli.main`):
every option of every subcommand given values of the wrong kind, crafted model folders, crafted
files of every kind `cm` reads, outputs that collide with inputs. A case passes when `cm` exits
0, 1 or 2 with at most one `cm: error:` line, no traceback, and every input file unchanged.

    python scripts/adversarial_sweep.py            # prints one line per failing case and a summary

It is wider than tests/test_adversarial.py (which keeps the cases that pin each defect class in
CI) and takes about 3 minutes on 2 cores; run it after changing option parsing or a reader.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import signal
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from consistency_models import CMStochasticIterativeScheduler, ConsistencyModelPipeline
from consistency_models.cli import main
from consistency_models.networks.mlp import MLP, MLPConfig

BAD_NUMBERS = ["-1", "0", "nan", "inf", "-inf", "1e309", str(2**63), str(2**70), "1000000000", "1e9", "x", "", "1.5",
               "0x10"]
TIMEOUT_S = 60  # a case still running then is reported: a huge count that should have been refused
BAD_PATHS = ["", "/", "/proc/version", "/nonexistent/dir/file.png", "a\x00b", "dir/"]


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".lock" not in p.name}


class Hang(BaseException):
    """Raised by the alarm: not an OSError or anything else `cm` would turn into an error line."""


def _alarm(signum, frame):
    raise Hang(f"still running after {TIMEOUT_S} s")


def run(argv: list[str]) -> tuple[int | None, str, str]:
    """`cm argv` here: exit code (None for an escaped exception), stderr, and the traceback if any."""
    err = io.StringIO()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIMEOUT_S)
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # noqa: BLE001 - exactly what the sweep looks for
            return None, err.getvalue(), traceback.format_exc()
        finally:
            signal.alarm(0)
    return code, err.getvalue(), ""


def setup(root: Path) -> dict[str, Path]:
    """The user's files: models, images, sets, statistics, shards, runs."""
    files = {}
    files["points"] = root / "points-model"
    ConsistencyModelPipeline(MLP(MLPConfig(hidden=16, depth=1, emb_dim=8)),
                             CMStochasticIterativeScheduler()).save_pretrained(files["points"])
    files["digits"] = root / "digits-model"
    ConsistencyModelPipeline.from_pretrained("digits").save_pretrained(files["digits"])
    gray = (np.random.default_rng(0).random((16, 16)) * 255).astype(np.uint8)
    files["png"] = root / "digit.png"
    Image.fromarray(gray).save(files["png"])
    files["bomb"] = root / "bomb.png"
    Image.new("1", (14000, 14000)).save(files["bomb"])  # 196 Mpx: past twice the PIL limit
    files["odd"] = root / "odd.png"
    Image.fromarray(gray[:, :8]).save(files["odd"])
    files["text.png"] = root / "text.png"
    files["text.png"].write_text("not an image")
    files["folder"] = root / "images"
    files["folder"].mkdir()
    for i in range(4):
        Image.fromarray(np.roll(gray, i)).save(files["folder"] / f"{i}.png")
    files["npz"] = root / "set.npz"
    np.savez(files["npz"], np.zeros((8, 16, 16, 1), np.uint8))
    files["nan.npz"] = root / "nan.npz"
    np.savez(files["nan.npz"], mu=np.full(4, np.nan), sigma=np.eye(4))
    files["points.npz"] = root / "pts.npz"
    np.savez(files["points.npz"], np.random.default_rng(0).normal(size=(32, 2)).astype(np.float32))
    files["bad-points.npz"] = root / "bad-pts.npz"
    np.savez(files["bad-points.npz"], np.full((4, 2), np.nan, np.float32))
    files["junk.npz"] = root / "junk.npz"
    files["junk.npz"].write_bytes(b"PK\x03\x04 junk")
    files["pt"] = root / "ckpt.pt"
    torch.save({"a": torch.zeros(2)}, files["pt"])
    files["pickle.pt"] = root / "pickle.pt"
    torch.save({"a": Exception("x")}, files["pickle.pt"])
    files["empty"] = root / "empty-folder"
    files["empty"].mkdir()
    files["dir.png"] = root / "dir.png"   # a folder where an output file would go
    files["dir.png"].mkdir()
    files["mixed"] = root / "mixed-images"   # gray, RGB and RGBA files in one folder
    files["mixed"].mkdir()
    Image.fromarray(gray).save(files["mixed"] / "a.png")
    Image.fromarray(np.stack([gray] * 3, -1)).save(files["mixed"] / "b.png")
    Image.fromarray(np.stack([gray] * 4, -1)).save(files["mixed"] / "c.png")
    return files


def cases(f: dict[str, Path], out: Path) -> list[list[str]]:
    """The sweep: each entry is one `cm` command line."""
    o = str(out)
    c: list[list[str]] = []
    pm, dm = str(f["points"]), str(f["digits"])
    sample = ["sample", "--model", dm, "--out", f"{o}/s.png"]
    for opt in ["--batch-size", "--seed", "--steps", "--num", "--compute-batch", "--threads", "--class-labels",
                "--timesteps", "--sigmas"]:
        c += [[*sample, opt, v] for v in BAD_NUMBERS]
    c += [["sample", "--model", dm, "--out", p] for p in BAD_PATHS]
    c += [["sample", "--model", p, "--out", f"{o}/s.png"] for p in [*BAD_PATHS, str(f["png"]), str(f["pt"]),
                                                                   str(f["empty"]), str(f["npz"])]]
    c += [["sample", "--model", pm, "--out", f"{o}/p.png"], ["sample", "--model", pm, "--num", "4", "--out",
                                                             f"{o}/p.npz"]]
    c += [[*sample, "--dtype", "float8"], [*sample, "--device", "tpu"], [*sample, "--device", "cuda:99"],
          [*sample, "--timesteps", "9,9"], [*sample, "--timesteps", "0,9"], [*sample, "--sigmas", "80,-1"],
          [*sample, "--timesteps", "9,0", "--sigmas", "80,1"], ["sample", "--model", dm, "--num", "4",
                                                               "--out", f"{o}/s.png"]]
    for edit in ["inpaint", "superres", "stroke", "denoise", "colorize"]:
        base = ["edit", edit, "--image", str(f["png"]), "--out", f"{o}/e-{edit}.png"]
        if edit == "inpaint":
            base += ["--mask", str(f["png"])]
        for image in ["bomb", "odd", "text.png", "folder", "npz"]:
            c.append([*base[:2], "--image", str(f[image]), *base[4:]])
        for opt in ["--seed", "--sigma", "--factor", "--steps", "--class-label", "--threads"]:
            c += [[*base, opt, v] for v in BAD_NUMBERS[:9]]
        c.append([*base[:-1], str(f["png"])])  # the output is the input
        c.append([*base, "--model", pm])
    for opt in ["--num", "--seed", "--class-label"]:
        c += [["edit", "interpolate", "--out", f"{o}/i.png", opt, v] for v in BAD_NUMBERS]
    evaluate = ["eval", "--samples", str(f["npz"]), "--ref", "digits:test", "--features", "digits"]
    for sset in ["bomb", "odd", "text.png", "junk.npz", "nan.npz", "empty", "pt", "points.npz"]:
        c.append(["eval", "--samples", str(f[sset]), "--ref", "digits:test", "--features", "digits"])
        c.append(["eval", "--samples", str(f["npz"]), "--ref", str(f[sset]), "--features", "digits"])
    for opt in ["--kid-subsets", "--kid-subset-size", "--seed", "--batch-size"]:
        c += [[*evaluate, opt, v] for v in BAD_NUMBERS[:9]]
    c += [[*evaluate, "--save-stats", str(f["npz"])], [*evaluate, "--json", str(f["npz"])],
          [*evaluate, "--metrics", "fid,xyz"], [*evaluate, "--features", "clip"], [*evaluate, "--json", "/"]]
    train = ["train", "--method", "ict", "--data", "toy:mog8", "--steps", "2", "--no-progress"]
    for opt in ["--lr", "--batch-size", "--seed", "--weight-decay", "--grad-clip", "--ema", "--dropout",
                "--save-every", "--steps", "--s0", "--s1", "--threads", "--resolution"]:
        values = [v for v in BAD_NUMBERS[:10] if not (opt == "--steps" and v == "1000000000")]  # that one is work
        c += [[*train, "--out", f"{o}/t{abs(hash((opt, v)))}", opt, v] for v in values]
    c += [[*train, "--out", dm, "--resume"], [*train, "--out", dm], [*train, "--out", str(f["png"])],
          [*train, "--out", f"{o}/t-init", "--init-from", dm],
          ["train", "--method", "ict", "--data", str(f["bomb"]), "--out", f"{o}/tb", "--steps", "1"],
          ["train", "--method", "ict", "--data", str(f["folder"]), "--out", f"{o}/tf", "--steps", "1",
           "--resolution", "3"],
          ["train", "--method", "ict", "--data", str(f["bad-points.npz"]), "--out", f"{o}/tp", "--steps", "1"],
          ["train", "--method", "ict", "--data", str(f["junk.npz"]), "--out", f"{o}/tj", "--steps", "1"],
          ["train", "--method", "cd", "--data", "toy:mog8", "--out", f"{o}/tcd", "--teacher", str(f["pt"])],
          ["train", "--method", "cd", "--data", "toy:mog8", "--out", f"{o}/tcd2", "--teacher", dm],
          ["train", "--method", "ct", "--data", "toy:mog8", "--out", f"{o}/tmu", "--mu0", "-1"],
          ["train", "--method", "xyz", "--data", "toy:mog8", "--out", f"{o}/tx"],
          ["train", "--recipe", "nope", "--data", "toy:mog8", "--out", f"{o}/tr"]]
    for opt in ["--grid", "--sigma-min", "--sigma-max", "--sigma-data", "--rho"]:
        c += [["new", f"{o}/n{abs(hash((opt, v)))}", "--preset", "test", opt, v] for v in BAD_NUMBERS[:9]]
    c += [["new", dm, "--preset", "test"], ["new", f"{o}/np", "--preset", "nope"]]
    c += [["convert", "openai", str(f[k]), f"{o}/c{k}", "--preset", "test"] for k in ["pt", "pickle.pt", "png",
                                                                                      "junk.npz"]]
    c += [["tune-timesteps", "--model", dm, "--ref", str(f[k]), "--num", "2", "--features", "digits"]
          for k in ["nan.npz", "junk.npz", "bomb"]]
    c += [["tune-timesteps", "--model", dm, "--ref", "digits:test", "--features", "digits",
           *([] if opt == "--num" else ["--num", "2"]), opt, v]
          for opt in ["--num", "--lo", "--hi", "--class-label"] for v in BAD_NUMBERS[:9]
          if not (opt == "--num" and v == "1000000000")]  # 10^9 images per candidate is work, not an error
    # what a new user meets: devices this machine lacks, outputs onto inputs with --overwrite,
    # a folder where a file goes, a folder mixing image modes
    c += [[*train, "--out", f"{o}/td{d}", "--device", d] for d in ("cuda", "cuda:7", "gpu", "meta", "")]
    c += [["edit", "denoise", "--image", str(f["png"]), "--sigma", "0.4", "--out", str(f["png"]), "--overwrite"],
          ["sample", "--model", dm, "--out", f"{dm}/", "--overwrite"],
          ["sample", "--model", dm, "--out", f"{dm}/samples/", "--overwrite"],
          ["sample", "--model", dm, "--out", f"{f['folder']}/", "--overwrite"],   # a folder cm did not write
          ["edit", "denoise", "--image", str(f["png"]), "--sigma", "0.4", "--out", str(f["dir.png"]), "--overwrite"],
          ["train", "--method", "ict", "--data", str(f["mixed"]), "--out", f"{o}/tm", "--steps", "1",
           "--batch-size", "2", "--image-mode", "same"],
          ["train", "--method", "ict", "--data", str(f["folder"]), "--out", f"{f['folder']}/run", "--steps", "1"],
          ["train", "--method", "ict", "--data", "toy:mog8", "--out", f"{o}/ti", "--image-mode", "rgb"]]
    return c


def main_sweep() -> int:
    import argparse

    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help; no options
    torch.set_num_threads(1)
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.chdir(root)  # relative outputs ("dir/") land here, not in the caller's folder
        (root / "user").mkdir()
        files = setup(root / "user")
        out = root / "out"
        out.mkdir()
        all_cases = cases(files, out)
        before = digest(root / "user")
        codes: dict[int | None, int] = {}
        for i, argv in enumerate(all_cases):
            code, err, tb = run(argv)
            codes[code] = codes.get(code, 0) + 1
            lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]
            problem = ("traceback: " + tb.strip().splitlines()[-1]) if tb else \
                f"exit {code}" if code not in (0, 1, 2) else \
                f"{len(lines)} error lines" if code and len(lines) != 1 else \
                "no 'cm:' line" if code and not lines[0].startswith(("cm: ", "usage:")) else ""
            after = digest(root / "user")
            if after != before:
                changed = sorted(k for k in set(after) | set(before) if after.get(k) != before.get(k))
                problem += f" changed the user's files: {changed[:3]}"
                before = after
            if problem:
                failures.append(f"{problem} <- cm {' '.join(repr(a) if not a or ' ' in a else a for a in argv)}")
                print(failures[-1], flush=True)
            if i % 50 == 0:
                print(f"... {i}/{len(all_cases)}", file=sys.stderr, flush=True)
            for leftover in out.iterdir():  # each case starts from an empty output folder
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    print(f"{len(all_cases)} cases, exit codes {dict(sorted(codes.items(), key=str))}, {len(failures)} failing")
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main_sweep())
