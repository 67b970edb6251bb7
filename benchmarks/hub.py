"""Downloading release files from the Hugging Face Hub, with a clear offline error."""

from __future__ import annotations

import os
from pathlib import Path

from flexeval.errors import FlexEvalError


def snapshot(repo_id: str, out_dir: Path, what: str, repo_type: str = "dataset",
             allow_patterns: list[str] | None = None) -> Path:
    """Snapshot of a hub repo (all files, or those matching `allow_patterns`) into `out_dir`;
    offline, say what to put where."""
    out_dir = Path(out_dir)
    files = ", ".join(allow_patterns) + " of" if allow_patterns else "a full snapshot of"
    hint = (f"download {files} the HF {repo_type} repo {repo_id} ({what}) on a machine "
            f"with a network and copy it to {out_dir}")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FlexEvalError(f"offline (HF_HUB_OFFLINE=1): cannot fetch {repo_id}; {hint}")
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id=repo_id, repo_type=repo_type, local_dir=str(out_dir),
                          allow_patterns=allow_patterns)
    except Exception as e:  # network errors come in many types
        raise FlexEvalError(f"could not download {repo_id} ({type(e).__name__}: {e}); {hint}") from e
    return out_dir
