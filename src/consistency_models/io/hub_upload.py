"""Upload a pipeline folder to the Hugging Face Hub, as diffusers' `push_to_hub` does: create the
repository if it is missing (`huggingface_hub.create_repo(exist_ok=True)`), add a model card
when the repository has none (an existing README.md on the Hub is kept), and upload the folder
with `huggingface_hub.upload_folder`, which deletes the weights of the same variant that the
repository held in another layout (sharded or not, the other format), as a local save does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError, first_line
from ..kinds import default_kind, get_kind
from .atomic import atomic_path
from .hub import hub_offline
from .shards import weight_file_globs

MODEL_CARD = "README.md"


def hub_client() -> Any:
    """huggingface_hub, or a one-line error when it is not installed or the Hub is off (HF_HUB_OFFLINE)."""
    try:
        import huggingface_hub
    except ImportError:
        raise InvalidInputError("push_to_hub: huggingface_hub is not installed; pip install 'consistency-models[hub]'"
                                ) from None
    if hub_offline():
        raise InvalidInputError("push_to_hub: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it to push")
    return huggingface_hub


def check_push_options(repo_id: str | None, private: bool | None, create_pr: bool, push_to_hub: bool = True,
                       required: bool = True) -> None:
    """One-line errors for the upload's options, before anything is written (with `required`
    False, repo_id None stands for the folder's name)."""
    if not isinstance(push_to_hub, bool):
        raise InvalidInputError(f"push_to_hub: {push_to_hub!r} is not allowed; use True or False")
    if (repo_id is not None or required) and (not isinstance(repo_id, str) or not repo_id.strip()):
        raise InvalidInputError(f"repo_id: {repo_id!r} is not allowed; give a Hub repository like owner/name")
    if private is not None and not isinstance(private, bool):
        raise InvalidInputError(f"private: {private!r} is not allowed; use True, False or None")
    if not isinstance(create_pr, bool):
        raise InvalidInputError(f"create_pr: {create_pr!r} is not allowed; use True or False")


def model_card(repo_id: str, parametrization: str, variant: str | None = None) -> str:
    """A model card for `repo_id`: the Hub's metadata (diffusers' library name, so that its loading
    snippet shows) and how to sample the model."""
    kind = get_kind(parametrization)
    loading = f'"{repo_id}"' + (f', variant="{variant}"' if variant else "")
    lines = ["---", "library_name: diffusers", "pipeline_tag: unconditional-image-generation", "tags:",
             "- consistency-models", f"- {kind.name}", "---", "", f"# {repo_id}", "",
             f"{kind.summary[0].upper()}{kind.summary[1:]}, saved by "
             "[consistency-models](https://pypi.org/project/consistency-models/).", "",
             "```python", "from consistency_models import ConsistencyModelPipeline", "",
             f"pipe = ConsistencyModelPipeline.from_pretrained({loading})",
             'pipe(batch_size=4).images[0].save("sample.png")', "```", ""]
    if kind is default_kind():
        lines += ["diffusers' `ConsistencyModelPipeline.from_pretrained` loads the same folder.", ""]
    else:
        lines += ["Sample it with consistency-models: its model_index.json names the kind "
                  f"(`_parametrization: {kind.name}`), which diffusers does not read.", ""]
    lines += ["Or from the command line: `pip install consistency-models`, then", "", "```bash",
              f"cm sample --model {repo_id}" + (f" --variant {variant}" if variant else "") + " --out grid.png",
              "```", ""]
    return "\n".join(lines)


def push_folder(folder: Path, repo_id: str, parametrization: str, variant: str | None = None,
                commit_message: str | None = None, private: bool | None = None, token: str | None = None,
                create_pr: bool = False) -> Any:
    """Upload `folder` (a saved pipeline of `variant`'s weights) to `repo_id`; returns
    huggingface_hub's CommitInfo. The repository's card is kept; where it has none, the folder's
    README.md goes up, or a card made here (`model_card`) when the folder has none either. Hidden
    files (a writer's temporary files and locks) stay behind."""
    hub = hub_client()
    check_push_options(repo_id, private, create_pr)
    try:
        repo_id = hub.create_repo(repo_id, exist_ok=True, private=private, token=token).repo_id
        ignore = [".*", "*/.*"]
        if hub.file_exists(repo_id, MODEL_CARD, token=token):
            ignore.append(MODEL_CARD)
        elif not os.path.lexists(folder / MODEL_CARD):
            with atomic_path(folder / MODEL_CARD) as tmp:
                tmp.write_text(model_card(repo_id, parametrization, variant))
        return hub.upload_folder(repo_id=repo_id, folder_path=str(folder), token=token,
                                 commit_message=commit_message or "Upload ConsistencyModelPipeline",
                                 create_pr=create_pr, ignore_patterns=ignore,
                                 delete_patterns=[f"unet/{glob}" for glob in weight_file_globs(variant)])
    except Exception as exc:  # network, auth, a name the Hub refuses: all end the same way
        reason = first_line(exc, 160) or type(exc).__name__
        raise InvalidInputError(f"push_to_hub: could not upload to the Hub repository {repo_id!r} ({reason})") from None
