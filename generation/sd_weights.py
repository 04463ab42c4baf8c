"""Which weights a Stable Diffusion model name stands for, read from disk only (no model, no
network): the synthetic-image cache keys on it, so other weights never reuse another's images."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from generation.base import looks_like_path

logger = logging.getLogger(__name__)

def folder_digest(folder: Path, sample: int = 1 << 20) -> str:
    """A hash of every file's name and size plus its first and last MiB: cheap for 4 GB of weights,
    stable when the folder is copied elsewhere, different for other weights (tensor data differs
    right after the safetensors header)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder).as_posix()}:{size}\n".encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(sample))
            if size > 2 * sample:
                handle.seek(-sample, os.SEEK_END)
                digest.update(handle.read(sample))
    return digest.hexdigest()[:24]


def weights_identity(model: str, revision: str) -> tuple[str, str | None]:
    """What identifies the weights behind ``model``, read from disk only (no model, no network), and
    the Hub commit to load (None: a folder, or a revision nothing resolves).

    A folder: ``folder:<sampled content hash>``. A Hub id: ``hub:<id>@<commit>``, the commit being
    ``revision`` itself when it is one (pinned), else what the local Hub cache's ``refs/<revision>``
    says; ``hub-unpinned:<id>@<revision>`` when neither, with a WARNING naming the cause (such a key
    matches no entry made with resolved weights; once downloaded, later runs key on the commit).
    """
    folder = Path(model).expanduser()
    if folder.is_dir():
        return f"folder:{folder_digest(folder)}", None
    if looks_like_path(model):
        return f"folder-missing:{folder.resolve()}", None
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    if _is_commit(revision):
        return f"hub:{model}@{revision}", revision
    ref = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=model, repo_type="model") / "refs" / revision
    try:
        commit = ref.read_text().strip()
    except OSError as error:
        cause = f"cannot read {ref}: {type(error).__name__}: {error.strerror or error}"
    else:
        if _is_commit(commit):
            return f"hub:{model}@{commit}", commit
        cause = f"{ref} holds {commit[:60]!r}, not a commit"
    # A WARNING, not info: the image cache key cannot name the weights, and the reader must know why.
    logger.warning("generator.revision=%r of %s is not a commit and the local Hub cache does not resolve it (%s): "
                   "the image cache key says 'hub-unpinned', so images cached under a resolved commit are not found "
                   "and are generated anew; pin generator.revision to a commit to avoid this", revision, model, cause)
    return f"hub-unpinned:{model}@{revision}", None


def _is_commit(revision: str) -> bool:
    return re.fullmatch(r"[0-9a-f]{40}", revision) is not None
