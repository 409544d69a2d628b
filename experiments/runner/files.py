"""Atomic file writing, shared by every experiment script.

Every file an experiment writes goes through :func:`write_atomic`: the content goes to
a temporary file in the same folder, which is flushed, synced and renamed over the
target with ``os.replace``. A reader (or a sweep resumed after a crash) sees the old
file or the new one, never half of one.

Example:
    >>> import pandas as pd, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> write_table(pd.DataFrame({"method": ["bp"], "acc": [0.9]}), folder, "acc").name
    'acc.md'
    >>> (folder / "acc.md").read_text().splitlines()[2]
    '| bp | 0.900 |'
"""

import io
import json
import os
import pathlib
import tempfile

import numpy as np

__all__ = ["json_default", "read_json", "write_atomic", "write_csv", "write_json",
           "write_table"]


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


def write_atomic(path, content):
    """Write ``content`` (str or bytes) to ``path`` atomically; return the path.

    Args:
        path: the file to write; its folder must exist.
        content: the whole new content, text or bytes.

    Example:
        >>> import tempfile, pathlib
        >>> p = write_atomic(pathlib.Path(tempfile.mkdtemp()) / "a.txt", "hello")
        >>> p.read_text()
        'hello'
    """
    path = pathlib.Path(path)
    mode = "wb" if isinstance(content, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; use the usual mode
        with os.fdopen(fd, mode) as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def json_default(value):
    """``json.dumps`` fallback for NumPy scalars and arrays."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{value!r} of type {type(value).__name__} is not JSON-serialisable")


def write_json(path, obj):
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    return write_atomic(path, json.dumps(obj, indent=2, sort_keys=True,
                                         default=json_default) + "\n")


def read_json(path):
    """The JSON content of ``path``."""
    with open(path) as f:
        return json.load(f)


def write_csv(frame, path):
    """Write a DataFrame as CSV (no index), atomically."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return write_atomic(path, buffer.getvalue())


def write_table(table, folder, name, floatfmt=".3f", caption=None, markdown_table=None):
    """Write ``table`` as ``<name>.csv`` and ``<name>.md`` in ``folder``, atomically.

    Args:
        table: the DataFrame written to the CSV file (every column, raw numbers).
        folder: an existing folder.
        name: the file stem.
        floatfmt: number format of the markdown view.
        caption: optional text put above the markdown table (what it shows, which split).
        markdown_table: optional other DataFrame for the markdown view (e.g. with
            display-only columns); default ``table``.

    Returns:
        The path of the markdown file.
    """
    from credit import results

    folder = pathlib.Path(folder)
    write_csv(table, folder / f"{name}.csv")
    text = results.to_markdown(table if markdown_table is None else markdown_table,
                               floatfmt=floatfmt)
    if caption:
        text = f"{caption.strip()}\n\n{text}"
    return write_atomic(folder / f"{name}.md", text + "\n")
