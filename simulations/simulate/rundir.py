"""A `fedcredit simulate --out` directory: claimed by a manifest before anything is written, marked
`completed`, `failed` or `interrupted` when the run ends, and replaced by `--overwrite` only file by
file, as that manifest lists them.

fedcredit never writes over, and never deletes, a file it did not write: a directory whose output
names (`common.outputs.RUN_OUTPUTS`) exist without a manifest is refused, with or without
`--overwrite`, and so is an earlier run's directory into which someone has since put other files.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from common.errors import OutputDirError
from common.outputs import RUN_MANIFEST, RunLayout, read_manifest, write_manifest


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _shown(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def earlier_run_files(layout: RunLayout, manifest: dict[str, Any]) -> list[str]:
    """What the earlier run wrote: its manifest's list once it ended; for a run that never ended
    (killed outright, status still `running`) every file under the output names, since it began
    where none existed."""
    if manifest["status"] == "running" and "ended" not in manifest:
        return layout.output_files()
    return sorted(str(name) for name in manifest.get("files", []))


def _remove(layout: RunLayout, files: list[str]) -> None:
    """Delete `files` (relative to the root), then every output folder left empty."""
    for name in files:
        (layout.root / name).unlink(missing_ok=True)
    for name in layout.outputs_present():
        top = layout.root / name
        if top.is_dir() and not top.is_symlink():
            for folder in sorted((p for p in top.rglob("*") if p.is_dir()), reverse=True):
                if not any(folder.iterdir()):
                    folder.rmdir()
            if not any(top.iterdir()):
                top.rmdir()
    layout.manifest.unlink(missing_ok=True)


def prepare_run_dir(out: Path, *, overwrite: bool, command: str) -> None:
    """Make `out` ready for a new run and claim it with a `running` manifest.

    Raises OutputDirError (nothing changed) when `out` is a file, holds output names no fedcredit
    run wrote, holds an earlier run and `overwrite` is false, holds files beside an earlier run's
    that it did not write, or cannot be written."""
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"{out} exists and is not a directory")
    layout = RunLayout(out)
    try:
        manifest = read_manifest(out)
    except ValueError as exc:
        raise OutputDirError(f"{exc}; fedcredit does not replace what it did not write: choose "
                             "another --out") from None
    except OSError as exc:
        raise OutputDirError(f"cannot read {out}: {exc.strerror or exc}") from None
    if manifest is None:
        present = layout.outputs_present()
        if present:
            only = " (--overwrite replaces only an earlier fedcredit run)" if overwrite else ""
            raise OutputDirError(
                f"{out} holds {_shown(present)}, which no fedcredit run wrote there (it has no "
                f"{RUN_MANIFEST}); fedcredit neither writes over nor deletes files it did not "
                f"write{only}: choose another --out or move them")
    else:
        status = f"{manifest['status']}, started {manifest.get('started', '?')}"
        if not overwrite:
            raise OutputDirError(f"{out} already holds a fedcredit run ({status}); choose another "
                                 "--out or pass --overwrite to replace it")
        ours = earlier_run_files(layout, manifest)
        foreign = sorted(set(layout.output_files()) - set(ours))
        if foreign:
            raise OutputDirError(
                f"{out} holds {_shown(foreign)} beside the earlier run ({status}), which that run "
                "did not write; --overwrite removes only the earlier run's own files, so nothing "
                "was removed: move them or choose another --out")
        try:
            _remove(layout, ours)
        except OSError as exc:
            raise OutputDirError(f"cannot remove the earlier run in {out}: "
                                 f"{exc.strerror or exc}") from None
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_manifest(out, {"command": command, "status": "running", "started": _now(),
                             "files": []})
    except OSError as exc:
        where = exc.filename or out
        raise OutputDirError(f"cannot write into {out} ({where}: "
                             f"{exc.strerror or exc})") from None


def finish_run_dir(out: Path, status: str, message: str = "") -> None:
    """Mark the run in `out` as ended (`completed`, `failed`, `interrupted`) and list every file
    it wrote, so that a later `--overwrite` removes exactly those."""
    layout = RunLayout(out)
    try:
        manifest = read_manifest(out) or {}
    except ValueError:
        manifest = {}
    manifest.pop("written_by", None)
    manifest.update(status=status, message=message, ended=_now(), files=layout.output_files())
    write_manifest(out, manifest)

