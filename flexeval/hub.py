"""The Hugging Face Hub, with clear errors: checkpoints (model/) and release data (benchmarks/)."""

from __future__ import annotations

import os
from pathlib import Path

from flexeval.errors import FlexEvalError


def offline() -> bool:
    """The hub's offline switch also stops Zenodo downloads: one knob for "no network"."""
    return os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("FLEXEVAL_OFFLINE") == "1"


def snapshot(repo_id: str, hint: str, local_dir: Path | None = None, repo_type: str = "model",
             allow_patterns: list[str] | None = None) -> Path:
    """Snapshot of a hub repo (all files, or those matching `allow_patterns`): into `local_dir` (a
    download, which needs the network), or else the hub cache's copy (which answers offline too)."""
    if local_dir is not None and offline():
        raise FlexEvalError(f"offline (HF_HUB_OFFLINE=1): cannot fetch {repo_id}; {hint}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=repo_id, repo_type=repo_type, allow_patterns=allow_patterns,
                                      local_dir=str(local_dir) if local_dir is not None else None))
    except Exception as e:  # network and hub errors come in many types
        raise FlexEvalError(f"cannot get {repo_id} from the hub ({type(e).__name__}: {e}); {hint}") from e


def fetch_dataset(repo_id: str, out_dir: Path, what: str, allow_patterns: list[str] | None = None) -> Path:
    """A benchmark's release files from a hub dataset repo into `out_dir`; the error says what to put where."""
    out_dir = Path(out_dir)
    files = ", ".join(allow_patterns) + " of" if allow_patterns else "a full snapshot of"
    hint = (f"download {files} the HF dataset repo {repo_id} ({what}) on a machine with a network and copy "
            f"it to {out_dir}")
    snapshot(repo_id, hint, local_dir=out_dir, repo_type="dataset", allow_patterns=allow_patterns)
    return out_dir
