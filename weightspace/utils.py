"""Small shared helpers: atomic writes, device selection, progress bars and did-you-mean hints."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


TMP_SUFFIX = ".tmp"


def umask_mode(*, directory: bool = False) -> int:
    """The mode a plain ``open()`` (or ``mkdir``) would give a new file (folder) under the current umask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a hidden temp file beside ``path``, fsync it, then rename it into place.

    Readers see either the old file or the complete new one; on any error the temp file is removed.
    The file gets the mode the umask gives new files (``mkstemp`` alone would make it 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, umask_mode())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when it is available, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cat_flat(tensors: list[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """Flatten ``tensors`` into the 1-D ``out`` in one copy, casting those of another dtype."""
    if tensors:
        torch.cat([t.detach().reshape(-1) if t.dtype == out.dtype else t.detach().reshape(-1).to(out.dtype)
                   for t in tensors], out=out)
    return out


PIPED_PROGRESS_INTERVAL = 30.0
"""Seconds between progress lines when stderr is not a terminal (a log file or a pipe)."""


class _LineWriter:
    """A file wrapper that turns tqdm's carriage-return redraws into one plain line per refresh."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.last = ""

    def write(self, s: str) -> int:
        text = s.replace("\r", "").rstrip()
        if text and text != self.last:
            self.stream.write(text + "\n")
            self.last = text
        return len(s)

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Any = None, **kwargs: Any) -> Any:
    """A tqdm progress bar that stays readable when piped.

    On a terminal it is ``tqdm.auto.tqdm(iterable, **kwargs)``. When the output stream (``file``,
    default stderr) is not a TTY, the bar redraws at most every :data:`PIPED_PROGRESS_INTERVAL`
    seconds, each redraw as one plain line instead of a carriage-return overwrite, so a log of a
    long run holds a few hundred lines rather than thousands of redraws. Every progress bar of
    the package goes through here.
    """
    import sys

    from tqdm.auto import tqdm

    stream = kwargs.get("file") or sys.stderr
    isatty = getattr(stream, "isatty", None)
    if not (callable(isatty) and isatty()):
        kwargs["file"] = _LineWriter(stream)
        kwargs["mininterval"] = max(kwargs.get("mininterval", 0.0), PIPED_PROGRESS_INTERVAL)
        kwargs.setdefault("ascii", True)
        kwargs.setdefault("dynamic_ncols", False)
    return tqdm(iterable, **kwargs)


def closest(name: str, valid: Sequence[str]) -> str | None:
    """The valid name closest to a misspelled ``name`` (``difflib``), or ``None``."""
    import difflib

    close = difflib.get_close_matches(str(name), list(valid), n=1)
    return close[0] if close else None


def did_you_mean(name: str, valid: Sequence[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest valid name, or ``""``: the hint of our unknown-option errors."""
    c = closest(name, valid)
    return f" (did you mean {c!r}?)" if c else ""


def read_safetensors(path: str | Path, what: str = "checkpoint", *, tensors: bool = True
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (unless ``tensors=False``) and metadata of safetensors file ``path``.

    A truncated, corrupt or non-safetensors file raises :class:`~weightspace.errors.CorruptCheckpoint`
    naming ``what`` and the file, instead of safetensors' own error.
    """
    from safetensors import safe_open

    from .errors import CorruptCheckpoint

    try:
        with safe_open(str(path), framework="pt") as f:
            return ({k: f.get_tensor(k) for k in f.keys()} if tensors else {}), (f.metadata() or {})
    except Exception as e:
        raise CorruptCheckpoint(f"cannot read {what} {path} (truncated, corrupt or not safetensors): {e}") from e
