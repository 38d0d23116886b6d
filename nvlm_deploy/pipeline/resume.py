"""What an interrupted run leaves: `.<name>.tmp-<pid>` (and `.<name>.old-<pid>` of a --force
replacement killed between its renames) next to the outputs (artifacts.atomic_output_dir,
manifest.write_manifest), never a finished-looking stage. The next run removes those of processes
that are gone and redoes their stage; those of a live process (a build running now) stay.
"""

from __future__ import annotations

from pathlib import Path

from nvlm_deploy.artifacts import _LEFTOVER, process_alive, remove_path

__all__ = ["process_alive", "remove_interrupted"]


def remove_interrupted(directory: Path) -> list[str]:
    """Remove the temporary outputs of dead processes in `directory`; returns their names."""
    removed = []
    if not directory.is_dir():
        return removed
    for path in sorted(directory.iterdir()):
        match = _LEFTOVER.match(path.name)
        if match is None or process_alive(int(match["pid"])):
            continue
        remove_path(path)
        removed.append(path.name)
    return removed
