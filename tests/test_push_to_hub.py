"""`pipe.push_to_hub(repo_id)` and `save_pretrained(..., push_to_hub=True)`, as diffusers' do: the
repository is created if missing, the saved folder goes up in one commit, with a model card when
the repository has none.

The Hub cannot be reached from the test machine: huggingface_hub's own `create_repo`, `file_exists`
and `upload_folder` are replaced by stand-ins that first bind every call to the real function's
signature (a wrong keyword fails the test as it would fail against the Hub), then keep each
repository as a folder. What was uploaded is then loaded by diffusers and by us and sampled.
"""

from __future__ import annotations

import inspect
import shutil
import sys
from fnmatch import fnmatch
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from diffusers import ConsistencyModelPipeline as DiffusersPipeline

from consistency_models import ConsistencyModelPipeline, InvalidInputError

LABELS = [3, 871]


def images(pipeline) -> np.ndarray:
    pipeline.set_progress_bar_config(disable=True)
    return pipeline(batch_size=2, class_labels=LABELS, generator=torch.Generator().manual_seed(0), output_type="np",
                    timesteps=[22, 0]).images


class FakeHub:
    """Repositories as folders under `root`; every call checked against huggingface_hub's signature."""

    def __init__(self, root, monkeypatch):
        self.root, self.calls, self.fail = root, [], None
        for name in ("create_repo", "file_exists", "upload_folder"):
            real = getattr(huggingface_hub, name)
            monkeypatch.setattr(huggingface_hub, name, self.checked(name, real))

    def checked(self, name, real):
        def call(*args, **kwargs):
            inspect.signature(real).bind(*args, **kwargs)
            self.calls.append((name, args, kwargs))
            if self.fail is not None:
                raise self.fail
            return getattr(self, name)(*args, **kwargs)
        return call

    def create_repo(self, repo_id, **options):
        repo_id = repo_id if "/" in repo_id else f"me/{repo_id}"   # a bare name goes to the token's namespace
        (self.root / repo_id).mkdir(parents=True, exist_ok=True)
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def file_exists(self, repo_id, filename, **options):
        return (self.root / repo_id / filename).is_file()

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=(), delete_patterns=(), **options):
        """As the Hub: files matching `ignore_patterns` stay behind; the repository's files matching
        `delete_patterns` go, unless this commit uploads them (huggingface_hub's fnmatch rules)."""
        source, repo = Path(folder_path), self.root / repo_id
        uploaded = {p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file()}
        uploaded = {name for name in uploaded if not any(fnmatch(name, g) for g in ignore_patterns)}
        for old in [p for p in repo.rglob("*") if p.is_file()]:
            name = old.relative_to(repo).as_posix()
            if name not in uploaded and any(fnmatch(name, g) for g in delete_patterns):
                old.unlink()
        for name in uploaded:
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, repo / name)
        return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/1", commit_message="",
                                          commit_description="", oid="1" * 40)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return FakeHub(tmp_path / "hub", monkeypatch)


def test_push_to_hub_uploads_a_folder_both_libraries_load_with_a_card(hub, pipe):
    info = pipe.push_to_hub("owner/cm-test", private=True, token="hf_x")
    assert info.commit_url == "https://huggingface.co/owner/cm-test/commit/1"
    assert [c[0] for c in hub.calls] == ["create_repo", "file_exists", "upload_folder"]
    assert hub.calls[0][1:] == (("owner/cm-test",), {"exist_ok": True, "private": True, "token": "hf_x"})
    upload = hub.calls[2][2]
    assert (upload["commit_message"], upload["create_pr"], upload["token"]) == (
        "Upload ConsistencyModelPipeline", False, "hf_x")
    repo = hub.root / "owner" / "cm-test"
    card = (repo / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusers\n") and "- consistency-models\n" in card
    assert 'ConsistencyModelPipeline.from_pretrained("owner/cm-test")' in card
    assert "cm sample --model owner/cm-test" in card and "diffusers' `ConsistencyModelPipeline" in card
    expected = images(pipe)
    np.testing.assert_allclose(images(ConsistencyModelPipeline.from_pretrained(repo)), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(images(DiffusersPipeline.from_pretrained(repo)), expected, rtol=0, atol=1e-5)

    (repo / "README.md").write_text("my own card")             # the repository's card is kept
    pipe.push_to_hub("owner/cm-test", commit_message="second", create_pr=True, variant="fp16",
                     max_shard_size="1MB")
    assert hub.calls[-1][2]["commit_message"] == "second" and hub.calls[-1][2]["create_pr"] is True
    assert (repo / "README.md").read_text() == "my own card"
    assert (repo / "unet" / "diffusion_pytorch_model.safetensors.index.fp16.json").is_file()
    fp16 = ConsistencyModelPipeline.from_pretrained(repo, variant="fp16")
    assert all(torch.equal(a, b) for a, b in zip(fp16.unet.state_dict().values(), pipe.unet.state_dict().values()))


def test_save_pretrained_with_push_to_hub_names_the_repository_after_the_folder(hub, pipe, tmp_path):
    """As diffusers: the local folder is written (with the card) and uploaded; repo_id defaults to
    the folder's name, in the token's namespace. A card already in the folder is the one uploaded."""
    folder = tmp_path / "my-model"
    pipe.save_pretrained(folder, push_to_hub=True)
    assert hub.calls[0][1] == ("my-model",)
    assert (hub.root / "me" / "my-model" / "README.md").read_text() == (folder / "README.md").read_text()
    assert "# me/my-model" in (folder / "README.md").read_text()
    assert ConsistencyModelPipeline.from_pretrained(hub.root / "me" / "my-model").unet.config == pipe.unet.config

    other = tmp_path / "other"
    other.mkdir()
    (other / "README.md").write_text("written by hand")
    pipe.save_pretrained(other, push_to_hub=True, repo_id="owner/named")
    assert (other / "README.md").read_text() == "written by hand"
    assert (hub.root / "owner" / "named" / "README.md").read_text() == "written by hand"


def test_a_kind_diffusers_cannot_sample_says_so_in_its_card(hub):
    edm = ConsistencyModelPipeline.from_pretrained("digits-teacher")
    edm.push_to_hub("owner/teacher")
    card = (hub.root / "owner" / "teacher" / "README.md").read_text()
    assert "- edm\n" in card and "(`_parametrization: edm`), which diffusers does not read" in card
    assert ConsistencyModelPipeline.from_pretrained(hub.root / "owner" / "teacher").kind.name == "edm"


def test_a_failed_upload_is_one_line_and_the_local_folder_stays(hub, pipe, tmp_path):
    hub.fail = ConnectionError("401 Client Error: Unauthorized for url\nmore lines")  # what a refused token reads
    folder = tmp_path / "kept"
    with pytest.raises(InvalidInputError) as info:
        pipe.save_pretrained(folder, push_to_hub=True, repo_id="owner/x")
    assert str(info.value) == ("push_to_hub: could not upload to the Hub repository 'owner/x' "
                               "(401 Client Error: Unauthorized for url)")
    assert ConsistencyModelPipeline.from_pretrained(folder).unet.config == pipe.unet.config


def test_offline_or_without_huggingface_hub_nothing_is_written(hub, pipe, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InvalidInputError, match=r"^push_to_hub: HF_HUB_OFFLINE is set, so nothing can be uploaded; "
                                                r"unset it to push$"):
        pipe.save_pretrained(tmp_path / "a", push_to_hub=True)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)   # as if not installed: import raises ImportError
    with pytest.raises(InvalidInputError, match=r"^push_to_hub: huggingface_hub is not installed; "
                                                r"pip install 'consistency-models\[hub\]'$"):
        pipe.push_to_hub("owner/x")
    assert not (tmp_path / "a").exists() and hub.calls == []
    monkeypatch.setitem(sys.modules, "huggingface_hub", huggingface_hub)
    for bad in ("", "  ", None):
        with pytest.raises(InvalidInputError, match=r"^repo_id: .* is not allowed; give a Hub repository like owner/name$"):
            pipe.push_to_hub(bad)
    assert hub.calls == []


def test_a_push_in_another_layout_deletes_the_variants_old_weights_from_the_repository(hub, pipe):
    """upload_folder only adds files: without deleting them, a repository pushed sharded and then as
    one file (or as .bin after .safetensors) would keep an index or file that both libraries read
    before the new weights. The same variant's other layouts go; another variant's weights stay."""
    other = ConsistencyModelPipeline(type(pipe.unet)(pipe.unet.config), pipe.scheduler)  # new random weights
    repo = hub.root / "owner" / "layouts"
    pipe.push_to_hub("owner/layouts", variant="ema")
    for old, new in ((dict(max_shard_size="1MB"), {}), ({}, dict(safe_serialization=False)),
                     (dict(max_shard_size="1MB", safe_serialization=False), dict(max_shard_size="700KB"))):
        pipe.push_to_hub("owner/layouts", **old)
        other.push_to_hub("owner/layouts", **new)
        fresh = hub.root / "fresh"
        other.save_pretrained(fresh, **new)
        assert sorted(p.name for p in (repo / "unet").iterdir()) == sorted(
            [p.name for p in (fresh / "unet").iterdir()] + ["diffusion_pytorch_model.ema.safetensors"]), (old, new)
        loaded = ConsistencyModelPipeline.from_pretrained(repo)
        assert all(torch.equal(a, b) for a, b in zip(loaded.unet.state_dict().values(),
                                                     other.unet.state_dict().values())), (old, new)
        shutil.rmtree(fresh)
    ema = ConsistencyModelPipeline.from_pretrained(repo, variant="ema")
    assert all(torch.equal(a, b) for a, b in zip(ema.unet.state_dict().values(), pipe.unet.state_dict().values()))
    card = (repo / "README.md").read_text()
    assert "variant=\"ema\"" in card and "cm sample --model owner/layouts --variant ema --out grid.png" in card


def test_the_repositorys_card_is_kept_and_hidden_files_stay_behind(hub, pipe, tmp_path):
    """A second save_pretrained(push_to_hub=True) into the same folder does not upload its card
    over one edited on the Hub; a writer's hidden leftovers in the folder are not uploaded."""
    folder = tmp_path / "model"
    pipe.save_pretrained(folder, push_to_hub=True, repo_id="owner/card")
    card = hub.root / "owner" / "card" / "README.md"
    card.write_text("edited on the Hub")
    (folder / ".cm-partial.lock").write_text("")
    (folder / "unet" / ".diffusion_pytorch_model.safetensors.x.tmp").write_text("")
    pipe.save_pretrained(folder, push_to_hub=True, repo_id="owner/card")
    assert card.read_text() == "edited on the Hub"
    assert not [p for p in card.parent.rglob(".*")]
    assert "README.md" in hub.calls[-1][2]["ignore_patterns"]


@pytest.mark.parametrize("options, message", [
    (dict(repo_id=""), r"^repo_id: '' is not allowed; give a Hub repository like owner/name$"),
    (dict(repo_id=7), r"^repo_id: 7 is not allowed"),
    (dict(push_to_hub="false"), r"^push_to_hub: 'false' is not allowed; use True or False$"),
    (dict(private="yes"), r"^private: 'yes' is not allowed; use True, False or None$"),
    (dict(create_pr=None), r"^create_pr: None is not allowed; use True or False$"),
], ids=["empty-repo", "int-repo", "str-push", "str-private", "none-pr"])
def test_save_pretrained_checks_the_upload_before_writing(hub, pipe, tmp_path, options, message):
    options = {"push_to_hub": True, **options}
    with pytest.raises(InvalidInputError, match=message):
        pipe.save_pretrained(tmp_path / "x", **options)
    assert not (tmp_path / "x").exists() and hub.calls == []
