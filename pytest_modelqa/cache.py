"""Content-addressed cache of image and text embeddings in one SQLite file.

An entry is found by two keys. The model key hashes everything that decides what a
model returns for a given input. That is the weights hash (``LoadedModel.sha256``),
the preprocessing pipeline for images or the tokenizer for texts, the precision the
forward pass ran in, the open_clip version and this module's entry format. The
content key is the sha256 of the image file's bytes or of the UTF-8 text, so
renaming or moving a file keeps its entry and changing its bytes misses.

Why SQLite: every batch of new embeddings is one transaction, so an entry is either
written whole or not at all, even when the process is killed or interrupted with
Ctrl-C mid-write. WAL mode lets readers run while another process writes, and a busy
timeout makes concurrent writers (pytest-xdist workers, two gates on one checkout)
wait for each other instead of failing. Each row also stores a checksum over its
keys and vector, and reads check it together with the vector's length and width, so
an entry damaged on disk is reported as a miss and recomputed by the caller.

The cache never fails a gate: when SQLite reports an error that retrying will not
fix, it logs a warning and acts as an empty cache that stores nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pytest_modelqa.models import LoadedModel

logger = logging.getLogger(__name__)

CACHE_FILE_NAME = "embeddings.sqlite3"
# Stored in PRAGMA user_version. Raise it when the table layout, the vector encoding
# or the checksum changes: a file of another version is emptied on open.
SCHEMA_VERSION = 1
# Part of every model key. Raise it when image decoding (embeddings.open_rgb) or the
# way embeddings are computed changes, so that older entries miss.
ENTRY_FORMAT = "modelqa-embedding-1"
PRECISIONS = ("fp32", "bf16", "fp16")
KINDS = ("image", "text")
# SQLite builds before 3.32 allow at most 999 bound parameters per statement.
_MAX_KEYS_PER_QUERY = 900
_VECTOR_DTYPE = np.dtype("<f4")  # float32, little-endian on every platform
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def image_key(data: bytes) -> str:
    """Return the content key of an image: the sha256 of its file bytes, in hex."""
    return hashlib.sha256(data).hexdigest()


def text_key(text: str) -> str:
    """Return the content key of a text: the sha256 of its UTF-8 bytes, in hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def describe_preprocess(model: LoadedModel) -> str:
    """Return a description of a model's preprocessing that is stable across runs.

    It joins the pipeline's repr, with memory addresses removed (a plain function in
    a torchvision Compose shows one), and the model's ``preprocess_cfg`` when the
    models layer sets it.
    """
    # NOTE: open_clip 3.3's CenterCropOrPad and MaybeConvertMode leave their fill
    # colour and target mode out of their repr, so for a model without a
    # preprocess_cfg two pipelines that differ only there share a key.
    pipeline = _ADDRESS.sub("", repr(model.preprocess))
    config = getattr(model, "preprocess_cfg", None)
    return json.dumps({"pipeline": pipeline, "config": config}, default=str)


def describe_tokenizer(model: LoadedModel) -> str:
    """Return a description of a model's tokenizer that is stable across runs.

    It records the tokenizer's class and its plain attributes (for open_clip's
    SimpleTokenizer: context_length, vocab_size and the special token ids), and
    the name_or_path of a wrapped Hugging Face tokenizer.
    """
    # NOTE: SimpleTokenizer's vocabulary ships with open_clip, whose version is part
    # of the model key; a Hugging Face tokenizer is known only by its name_or_path.
    tokenizer = model.tokenizer
    plain = (str, int, float, bool, type(None))
    attributes = {
        name: value
        for name, value in sorted(getattr(tokenizer, "__dict__", {}).items())
        if isinstance(value, plain)
    }
    wrapped = getattr(tokenizer, "tokenizer", None)
    description = {
        "class": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}",
        "attributes": attributes,
        "name_or_path": getattr(wrapped, "name_or_path", None),
    }
    return json.dumps(description, default=str)


def model_key(model: LoadedModel, *, precision: str, kind: str = "image") -> str:
    """Return the cache key of a model's image or text embeddings at a precision.

    `precision` is the one the forward pass actually ran in ("fp32", "bf16" or
    "fp16"), and `kind` is "image" or "text". The key hashes both with the weights
    hash, the preprocessing (images) or tokenizer (texts) description, the installed
    open_clip version and `ENTRY_FORMAT`.
    """
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}"
        )
    if kind not in KINDS:
        raise ValueError(f"kind must be image or text; got {kind!r}")
    parts = {
        "entry_format": ENTRY_FORMAT,
        "kind": kind,
        "weights_sha256": model.sha256,
        "input": describe_preprocess(model)
        if kind == "image"
        else describe_tokenizer(model),
        "precision": precision,
        "open_clip": _open_clip_version(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _open_clip_version() -> str:
    try:
        return metadata.version("open_clip_torch")
    except metadata.PackageNotFoundError:
        return "unknown"


def _checksum(model: str, content: str, dim: int, vector: bytes) -> str:
    digest = hashlib.sha256()
    digest.update(f"{model}\0{content}\0{dim}\0".encode())
    digest.update(vector)
    return digest.hexdigest()


class EmbeddingCache:
    """Embeddings stored in ``FOLDER/embeddings.sqlite3``, shared by processes.

    `folder` is created when missing. `timeout` is how long, in seconds, a write
    waits for another process's write to finish before it is skipped. The database
    opens on first use, and again in a child process that inherited the object.
    Counters of the current process: `hits`, `misses` and `corrupt` entries.
    """

    def __init__(self, folder: str | Path, *, timeout: float = 60.0):
        self.folder = Path(folder)
        self.timeout = timeout
        self.hits = 0
        self.misses = 0
        self.corrupt = 0
        self._connection: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._disabled = False

    @property
    def path(self) -> Path:
        return self.folder / CACHE_FILE_NAME

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.folder)!r})"

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __len__(self) -> int:
        """Return the number of stored entries, of every model."""
        connection = self._connect()
        if connection is None:
            return 0
        try:
            (count,) = connection.execute("SELECT COUNT(*) FROM embeddings").fetchone()
        except sqlite3.Error as error:
            self._handle_error("count entries", error)
            return 0
        return count

    def close(self) -> None:
        if self._connection is not None and self._pid == os.getpid():
            self._connection.close()
        self._connection = None
        self._pid = None

    # -- reads and writes ---------------------------------------------------------

    def get_many(
        self, model: str, contents: Sequence[str], *, dim: int
    ) -> dict[str, np.ndarray]:
        """Look up embeddings of one model key; return {content key: (dim,) float32}.

        Keys without an entry are left out, and so are damaged entries: a checksum
        mismatch, a vector of the wrong byte length or a width other than `dim`.
        Each damaged entry is logged and counted in `corrupt`, and the next
        `set_many` for its key replaces it.
        """
        found: dict[str, np.ndarray] = {}
        connection = self._connect()
        unique = list(dict.fromkeys(contents))
        if connection is None:
            self.misses += len(unique)
            return found
        try:
            for start in range(0, len(unique), _MAX_KEYS_PER_QUERY):
                chunk = unique[start : start + _MAX_KEYS_PER_QUERY]
                marks = ",".join("?" * len(chunk))
                rows = connection.execute(
                    "SELECT content_sha256, dim, vector, checksum FROM embeddings "
                    f"WHERE model_key = ? AND content_sha256 IN ({marks})",
                    (model, *chunk),
                ).fetchall()
                for content, stored_dim, vector, checksum in rows:
                    embedding = self._decode(
                        model, content, stored_dim, vector, checksum
                    )
                    if embedding is not None and embedding.shape == (dim,):
                        found[content] = embedding
                    elif embedding is not None:
                        self._report_corrupt(content, f"width {stored_dim}, not {dim}")
        except sqlite3.Error as error:
            self._handle_error("read entries", error)
            found = {}
        self.hits += len(found)
        self.misses += len(unique) - len(found)
        return found

    def set_many(self, model: str, entries: Iterable[tuple[str, np.ndarray]]) -> bool:
        """Store (content key, (D,) vector) pairs of one model key in one transaction.

        Existing entries of the same keys are replaced. Either every pair is stored
        or, when anything fails or interrupts the call, none is. Return whether the
        entries were stored; a failure is logged, not raised, except
        KeyboardInterrupt and other exceptions from iterating `entries`.
        """
        connection = self._connect()
        if connection is None:
            return False
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            self._handle_error("start a write", error)
            return False
        try:
            connection.executemany(
                "INSERT OR REPLACE INTO embeddings"
                " (model_key, content_sha256, dim, vector, checksum)"
                " VALUES (?, ?, ?, ?, ?)",
                (self._encode(model, content, vector) for content, vector in entries),
            )
            connection.execute("COMMIT")
        except sqlite3.Error as error:
            connection.rollback()
            self._handle_error("write entries", error)
            return False
        except BaseException:
            connection.rollback()
            raise
        return True

    @staticmethod
    def _encode(model: str, content: str, vector: np.ndarray) -> tuple:
        array = np.ascontiguousarray(vector, dtype=_VECTOR_DTYPE)
        if array.ndim != 1:
            raise ValueError(
                f"embedding of {content} must have shape (D,); got {array.shape}"
            )
        blob = array.tobytes()
        checksum = _checksum(model, content, array.size, blob)
        return model, content, array.size, blob, checksum

    def _decode(
        self, model: str, content: str, dim: int, vector: bytes, checksum: str
    ) -> np.ndarray | None:
        if not isinstance(vector, bytes) or not isinstance(dim, int):
            self._report_corrupt(content, "vector or width of the wrong type")
            return None
        if len(vector) != dim * _VECTOR_DTYPE.itemsize:
            self._report_corrupt(content, f"{len(vector)} bytes for width {dim}")
            return None
        if checksum != _checksum(model, content, dim, vector):
            self._report_corrupt(content, "checksum mismatch")
            return None
        return np.frombuffer(vector, dtype=_VECTOR_DTYPE).astype(np.float32)

    def _report_corrupt(self, content: str, reason: str) -> None:
        self.corrupt += 1
        logger.warning(
            "embedding cache %s: damaged entry for content %s (%s); it will be "
            "recomputed",
            self.path,
            content,
            reason,
        )

    # -- connection ---------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection | None:
        """Return this process's connection, opening the database on first use."""
        if self._disabled:
            return None
        if self._connection is not None and self._pid == os.getpid():
            return self._connection
        # A connection inherited through fork must not be used, nor closed, here.
        self._connection = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._connection = self._open()
        except sqlite3.DatabaseError as error:
            if error.sqlite_errorcode not in (
                sqlite3.SQLITE_CORRUPT,
                sqlite3.SQLITE_NOTADB,
            ):
                self._handle_error("open the database", error)
                return None
            logger.warning(
                "embedding cache %s is not a valid SQLite database (%s); moving it "
                "to %s.corrupt and starting an empty cache",
                self.path,
                error,
                self.path.name,
            )
            self._set_aside()
            try:
                self._connection = self._open()
            except sqlite3.Error as retry_error:
                self._handle_error("recreate the database", retry_error)
                return None
        except OSError as error:
            logger.warning(
                "embedding cache %s cannot be created (%s); encoding without a cache",
                self.path,
                error,
            )
            self._disabled = True
            return None
        self._pid = os.getpid()
        return self._connection

    def _open(self) -> sqlite3.Connection:
        # NOTE: WAL mode needs shared memory between processes, so the folder must
        # be on a local filesystem; SQLite does not support WAL over NFS.
        connection = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None
        )
        try:
            connection.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            connection.execute("PRAGMA journal_mode = WAL")
            # In WAL mode NORMAL can lose the last commits on power loss, never
            # consistency, which is enough for a cache.
            connection.execute("PRAGMA synchronous = NORMAL")
            self._create_schema(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    @staticmethod
    def _create_schema(connection: sqlite3.Connection) -> None:
        connection.execute("BEGIN IMMEDIATE")
        try:
            (version,) = connection.execute("PRAGMA user_version").fetchone()
            if version not in (0, SCHEMA_VERSION):
                logger.warning(
                    "embedding cache format %d is not %d; emptying it",
                    version,
                    SCHEMA_VERSION,
                )
                connection.execute("DROP TABLE IF EXISTS embeddings")
            connection.execute(
                "CREATE TABLE IF NOT EXISTS embeddings ("
                " model_key TEXT NOT NULL,"
                " content_sha256 TEXT NOT NULL,"
                " dim INTEGER NOT NULL,"
                " vector BLOB NOT NULL,"  # float32, little-endian
                " checksum TEXT NOT NULL,"
                " PRIMARY KEY (model_key, content_sha256)"
                ") WITHOUT ROWID"
            )
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            connection.execute("COMMIT")
        except BaseException:
            connection.rollback()
            raise

    def _set_aside(self) -> None:
        # NOTE: another process that has the old file open keeps writing to it until
        # it reopens. Those writes are lost, but they damage no file.
        self.path.replace(self.path.with_name(self.path.name + ".corrupt"))
        for suffix in ("-wal", "-shm"):
            self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)

    def _handle_error(self, action: str, error: sqlite3.Error) -> None:
        """Log a failed operation; stop using a database that SQLite reports damaged."""
        code = getattr(error, "sqlite_errorcode", None)
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            logger.warning(
                "embedding cache %s: could not %s within %.0f s because another "
                "process holds the lock (%s); continuing without it",
                self.path,
                action,
                self.timeout,
                error,
            )
            return
        logger.warning(
            "embedding cache %s: could not %s (%s); encoding without a cache for the "
            "rest of this session. Run pytest with --cache-clear to start afresh.",
            self.path,
            action,
            error,
        )
        self.close()
        self._disabled = True
