"""The on-disk cache of generated kernels: one browsable folder per spec, kernel kind and key.

    $ATTNGEN_CACHE_DIR/                         (default ~/.cache/attngen; see env.py)
      v1/<arch>/<spec_name>-<key[:16]>/         arch: sm_XY of the current GPU, or "interpreter"
        kernel_<kind>.py    the generated Triton source; the kernel is imported from this file
        spec.yaml           the spec (`attngen.load_spec` reads it back)
        ir.json             the lowered IR (`Graph.to_json`)
        meta.json           the key and its parts, versions, creation time, stage timings, and the
                            size and sha256 of every other file (the checksum a read verifies)
      v1/<arch>/index/<lookup[:32]>.json       spec + name + kind + attngen's code → entry folder
      v1/<arch>/.locks/ .staging/ .trash/       lock files, entries being written or removed
      v1/blockmaps/<spec_name>-<key[:32]>.pt   large block maps of static shapes (`blockmap_cache`)
      triton/              Triton's own cache (TRITON_CACHE_DIR, unless the user set it: env.py)
      sources/             generated sources imported outside any entry (`loader.write_source`)

The key (meta.json "key", its first 16 hex digits in the folder name) is the sha256 of the
canonical JSON of
    ir         `Graph.content_hash()` of the lowered IR: each node hashed with its inputs' hashes,
               plus the graph's facts (the spec's meaning and name, every pass's decisions)
    templates  `codegen.render.template_digest()`: every template's name and text
    constants  the kernel kind, a digest of attngen/codegen/*.py (the Python that turns IR into
               text: a change there changes the source as surely as a template change) and LAYOUT
    attngen, torch, triton   their versions
    arch       sm_XY or "interpreter"
Equal meanings give equal keys however the YAML was written (comments, key order, `band: 8` or
`band: {left: 8, right: 8}`, `causal: true` or the same band): the IR is built from the normalised
spec. The name is part of the key because the generated source carries it (the kernel function is
`attngen_<kind>_<name>`), so two names never share or overwrite one folder.

Computing the key needs the IR, so a lookup first reads the index: a file named by a sha256 over
the spec's canonical meaning, its name, the kind, a digest of all of attngen's own Python, the
template digest, the versions and the arch. Any code change misses the index (the entry is then
found again by its key, after lowering), so the index never serves an entry the current code would
not build. An index hit reads the source and rebuilds the IR from ir.json (checked against its
hash): no lowering, no rendering.

Writes build a folder in .staging/ and `os.rename` it into place (atomic) while holding an flock on
.locks/<folder>.lock, re-checking under the lock first: processes compiling the same spec at once
all succeed and one builds. Readers take no lock: an entry is complete or absent. Every read
verifies the checksums; a corrupt entry (truncated or missing file, bad JSON) is discarded with a
`CacheWarning` and rebuilt, never a crash.

Large block maps of static shapes live in v1/blockmaps/ (`blockmap_cache.py`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import sys
import time
import warnings
from collections import Counter, deque
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
import triton
import yaml

from .. import env, progress
from ..codegen import render
from ..codegen.emit import GeneratedKernel, generate
from ..ir.graph import Graph
from ..spec import Spec, kernel_spec, load_spec
from ..version import __version__

try:
    import fcntl
except ImportError:                     # not POSIX: renames stay atomic, builds may repeat
    fcntl = None

LAYOUT = "v1"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
REQUIRED = ("spec.yaml", "ir.json")      # besides kernel_<kind>.py and meta.json

log = logging.getLogger("attngen.runtime")
# What this process did, for tests and benchmarks: index_hits, key_hits, builds, discarded, and
# the seconds per stage of the latest lookups as (spec name, kind, {stage: seconds}).
STATS: Counter = Counter()
TIMINGS: deque = deque(maxlen=256)


class CacheWarning(UserWarning):
    """A cache entry was corrupt, or the cache could not be written; attngen went on without it."""


class CorruptEntry(Exception):
    """An entry whose files do not match its meta.json; the message says what is wrong."""


def configure_logging() -> None:
    """Nothing is printed by default; ATTNGEN_LOG=info (or debug) prints to stderr."""
    logger = logging.getLogger("attngen")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())
    level = env.log_level()
    if level and not any(getattr(h, "attngen_stderr", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("attngen %(levelname)s: %(message)s"))
        handler.attngen_stderr = True
        logger.addHandler(handler)
        logger.setLevel(level)


configure_logging()


# -- what a key is made of -------------------------------------------------------------------
def machine_arch() -> str:
    """The architecture kernels of this process run on: sm_XY of the current GPU, or interpreter."""
    if env.force_interpreter() or not torch.cuda.is_available():
        return "interpreter"
    major, minor = torch.cuda.get_device_capability()
    return f"sm_{major}{minor}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_sha256(value) -> str:
    return _sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())


def _digest_files(paths, root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@lru_cache(maxsize=1)
def codegen_digest() -> str:
    """sha256 of attngen/codegen/*.py (read once: code does not change under a running process)."""
    return _digest_files((PACKAGE_DIR / "codegen").glob("*.py"), PACKAGE_DIR)


@lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 of every attngen/**/*.py: the index's guard against code that changed."""
    return _digest_files(PACKAGE_DIR.rglob("*.py"), PACKAGE_DIR)


def versions() -> dict:
    return {"attngen": __version__, "torch": torch.__version__, "triton": triton.__version__}


def key_parts(graph: Graph, kind: str, arch: str) -> dict:
    """Everything the key covers, as it is written to meta.json."""
    return {"ir": graph.content_hash(), "templates": render.template_digest(),
            "constants": {"kind": kind, "codegen": codegen_digest(), "layout": LAYOUT},
            **versions(), "arch": arch}


def cache_key(graph: Graph, kind: str, arch: str) -> str:
    return _json_sha256(key_parts(graph, kind, arch))


def lookup_key(spec: Spec, kind: str, arch: str) -> str:
    """The index's key: computable without lowering, and stale as soon as any code changes."""
    return _json_sha256({"spec": spec.canonical(), "name": spec.name, "kind": kind,
                         "code": code_digest(), "templates": render.template_digest(),
                         **versions(), "arch": arch, "layout": LAYOUT})


# -- places ----------------------------------------------------------------------------------
def root() -> Path:
    return env.cache_dir() / LAYOUT


def arch_dir(arch: str) -> Path:
    return root() / arch


def entry_dir(spec_name: str, key: str, arch: str) -> Path:
    return arch_dir(arch) / f"{spec_name}-{key[:16]}"


def _index_file(spec: Spec, kind: str, arch: str) -> Path:
    return arch_dir(arch) / "index" / f"{lookup_key(spec, kind, arch)[:32]}.json"


def _scratch(folder: Path, kind: str) -> Path:
    """A fresh path under .staging or .trash, unique to this process and call."""
    return folder.parent / f".{kind}" / f"{folder.name}.{os.getpid()}.{secrets.token_hex(4)}"


# -- reading ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """A verified entry: its folder, meta.json and the bytes of its files."""

    path: Path
    meta: dict
    data: dict = field(repr=False)

    @property
    def kernel_file(self) -> Path:
        return self.path / f"kernel_{self.meta['kind']}.py"

    @property
    def source(self) -> str:
        return self.data[self.kernel_file.name].decode()


def read_entry(path: Path, *, key: str | None = None) -> Entry | None:
    """The entry in `path`, checksums verified; None if there is none; CorruptEntry if broken."""
    if not path.is_dir():
        return None
    try:
        meta = json.loads((path / "meta.json").read_text())
    except FileNotFoundError:
        raise CorruptEntry("meta.json is missing") from None
    except (OSError, ValueError) as err:
        raise CorruptEntry(f"meta.json is unreadable ({err})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict) or "kind" not in meta:
        raise CorruptEntry("meta.json lacks its file list or kind")
    if key is not None and meta.get("key") != key:
        raise CorruptEntry(f"meta.json holds key {meta.get('key')}, expected {key}")
    missing = {f"kernel_{meta['kind']}.py", *REQUIRED} - set(meta["files"])
    if missing:
        raise CorruptEntry(f"meta.json does not list {', '.join(sorted(missing))}")
    data = {}
    for name, info in meta["files"].items():
        try:
            data[name] = (path / name).read_bytes()
        except OSError:
            raise CorruptEntry(f"{name} is missing") from None
        if not isinstance(info, dict) or len(data[name]) != info.get("size") \
                or _sha256(data[name]) != info.get("sha256"):
            raise CorruptEntry(f"{name} does not match its checksum "
                               f"({len(data[name])} bytes, meta.json says {info.get('size')})")
    return Entry(path, meta, data)


# -- writing ---------------------------------------------------------------------------------
@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive flock on `path` (created if needed; never deleted, which would race)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `path` so that no reader ever sees it half-written (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_tree(folder: Path) -> None:
    """Remove an entry folder (or file): renamed away first (atomic), so no reader sees half of it."""
    trash = _scratch(folder, "trash")
    trash.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(folder, trash)
    except FileNotFoundError:
        return
    if trash.is_dir():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink(missing_ok=True)


def _discard(folder: Path, reason: str) -> None:
    message = f"attngen cache entry {folder} is corrupt ({reason}); discarding and rebuilding it"
    warnings.warn(message, CacheWarning, stacklevel=4)
    log.warning(message)
    STATS["discarded"] += 1
    remove_tree(folder)


def _entry_files(kernel: GeneratedKernel) -> dict[str, bytes]:
    spec_data = json.loads(json.dumps(kernel.spec.to_dict()))       # tuples → lists for YAML
    return {f"kernel_{kernel.kind}.py": kernel.source.encode(),
            "spec.yaml": yaml.safe_dump(spec_data, sort_keys=False).encode(),
            "ir.json": (json.dumps(kernel.graph.to_json(), indent=1, sort_keys=True) + "\n").encode()}


def _meta(kernel: GeneratedKernel, key: str, parts: dict, files: dict, seconds: dict) -> dict:
    now = time.time()
    return {"key": key, "key_parts": parts, "spec_name": kernel.spec.name,
            "spec_hash": kernel.spec.content_hash(), "kind": kernel.kind, "arch": parts["arch"],
            "kernel_name": kernel.kernel_name, "created": now,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "versions": versions(), "python": sys.version.split()[0],
            "seconds": {k: round(v, 6) for k, v in seconds.items()},
            "files": {name: {"size": len(data), "sha256": _sha256(data)} for name, data in files.items()}}


def _build(folder: Path, kernel: GeneratedKernel, key: str, parts: dict, seconds: dict) -> Entry:
    """Write the entry unless another process did while we waited for the lock."""
    with file_lock(folder.parent / ".locks" / f"{folder.name}.lock"):
        try:
            entry = read_entry(folder, key=key)
            if entry is not None:
                STATS["key_hits"] += 1
                return entry
        except CorruptEntry as err:
            _discard(folder, str(err))
        files = _entry_files(kernel)
        meta = _meta(kernel, key, parts, files, seconds)
        staging = _scratch(folder, "staging")
        try:
            staging.mkdir(parents=True)
            for name, data in files.items():
                (staging / name).write_bytes(data)
            (staging / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            os.rename(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        STATS["builds"] += 1
        return Entry(folder, meta, files)


# -- the entry point -------------------------------------------------------------------------
class Stages:
    """Seconds per named stage: ``with stages("lowering"): ...``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def __str__(self) -> str:
        return ", ".join(f"{name} {s * 1e3:.1f} ms" for name, s in self.seconds.items())


_ENTRY_FILES: dict[str, Path] = {}          # sha256 of a source → the entry file holding it


def entry_file_for(source: str) -> Path | None:
    """The cache entry file holding exactly `source`, if this process found or wrote one."""
    return _ENTRY_FILES.get(_sha256(source.encode()))


def _from_index(spec: Spec, kind: str, arch: str) -> GeneratedKernel | None:
    try:
        pointer = json.loads(_index_file(spec, kind, arch).read_text())
        entry = read_entry(arch_dir(arch) / pointer["entry"], key=pointer["key"])
        if entry is None:
            return None
        graph = Graph.from_json(json.loads(entry.data["ir.json"]))
        if graph.content_hash() != entry.meta["key_parts"]["ir"]:
            raise CorruptEntry("ir.json does not hash to the key's IR hash")
    except FileNotFoundError:
        return None
    except (CorruptEntry, OSError, ValueError, KeyError, TypeError) as err:
        log.debug("cache index for %s/%s unusable (%s): looking up by key", spec.name, kind, err)
        return None
    _ENTRY_FILES[_sha256(entry.data[entry.kernel_file.name])] = entry.kernel_file
    # The entry's own kind: a linear spec's "fwd" is stored as "linear_fwd" (as `generate` names it).
    return GeneratedKernel(spec, entry.meta["kind"], entry.source, graph, entry.meta["kernel_name"])


def generated(spec, kind: str = "fwd", *, arch: str | None = None) -> GeneratedKernel:
    """`codegen.emit.generate(spec, kind)` through the disk cache (see the module's docstring).
    The kernel is then imported from its entry's file by `loader.load_source`."""
    spec = load_spec(spec)
    if kind in ("fwd", "bwd"):                # an lsh spec runs its permuted form (spec/lsh.py)
        spec = kernel_spec(spec)
    arch = arch or machine_arch()
    stages, started = Stages(), time.time()
    with stages("lookup"):
        kernel = _from_index(spec, kind, arch)
    if kernel is not None:
        STATS["index_hits"] += 1
        TIMINGS.append((spec.name, kind, stages.seconds))
        log.info("cache hit: %s %s (%s)", spec.name, kind, stages)
        return kernel
    with stages("lowering+codegen"), progress.step(f"{spec.name}: generating the {kind} kernel"):
        kernel = generate(spec, kind)
    parts = key_parts(kernel.graph, kernel.kind, arch)    # a linear spec's "fwd" is "linear_fwd"
    key = _json_sha256(parts)
    folder = entry_dir(spec.name, key, arch)
    try:
        with stages("store"):
            entry = _read_or_build(folder, kernel, key, parts, stages.seconds)
        atomic_write(_index_file(spec, kind, arch),
                     json.dumps({"entry": folder.name, "key": key, "spec": spec.name,
                                 "kind": kind}).encode())
    except OSError as err:
        message = f"attngen could not write its cache at {root()} ({err}); going on without it"
        warnings.warn(message, CacheWarning, stacklevel=2)
        log.warning(message)
        return kernel
    if entry.source == kernel.source:
        _ENTRY_FILES[_sha256(kernel.source.encode())] = entry.kernel_file
    TIMINGS.append((spec.name, kind, stages.seconds))
    built = entry.meta["created"] >= started
    log.info("cache %s: %s %s in %s (%s)", "miss, generated" if built else "hit by key", spec.name,
             kind, folder, stages)
    return kernel


def _read_or_build(folder, kernel, key, parts, seconds) -> Entry:
    try:
        entry = read_entry(folder, key=key)
    except CorruptEntry:
        entry = None                     # discarded (with its warning) under the lock
    if entry is not None:
        STATS["key_hits"] += 1
        return entry
    return _build(folder, kernel, key, parts, seconds)


# -- block maps of static shapes: `blockmap_cache.py` reads and writes them -------------------
def block_map_dir() -> Path:
    return root() / "blockmaps"


def framed(payload: bytes) -> bytes:
    """A single-file entry: its payload's sha256 on the first line, then the payload."""
    return _sha256(payload).encode() + b"\n" + payload


def unframed(data: bytes) -> bytes | None:
    """The payload of a `framed` file, or None where the checksum does not match."""
    digest, _, payload = data.partition(b"\n")
    return payload if digest == _sha256(payload).encode() else None


# -- listing and clearing (`attngen cache list|clear`) ---------------------------------------
@dataclass(frozen=True)
class EntryInfo:
    path: Path
    arch: str
    spec_name: str
    kind: str
    key: str
    size: int
    created: float
    problem: str | None          # None, or why the entry is corrupt (it is rebuilt on next use)


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def list_entries() -> list[EntryInfo]:
    """Every entry of every architecture, checksums verified, sorted by spec name and kind."""
    out = []
    base = root()
    archs = sorted(p for p in base.iterdir() if p.is_dir() and p.name != "blockmaps") if base.is_dir() else ()
    for arch in archs:
        for folder in sorted(arch.iterdir()):
            if not folder.is_dir() or folder.name.startswith(".") or folder.name == "index":
                continue
            try:
                entry, problem = read_entry(folder), None
                meta = entry.meta
            except CorruptEntry as err:
                problem, meta = str(err), {}
            name, _, short = folder.name.rpartition("-")
            out.append(EntryInfo(folder, arch.name, meta.get("spec_name", name), meta.get("kind", "?"),
                                 meta.get("key", short), _folder_size(folder),
                                 meta.get("created", folder.stat().st_mtime), problem))
    for path in sorted(block_map_dir().glob("*.pt")):
        data = path.read_bytes()
        problem = None if unframed(data) is not None else "checksum does not match"
        name, _, key = path.stem.rpartition("-")
        out.append(EntryInfo(path, "any", name, "blockmap", key, len(data), path.stat().st_mtime, problem))
    return sorted(out, key=lambda e: (e.spec_name, e.kind, e.arch, -e.created))


def clear(spec_name: str | None = None) -> int:
    """Remove the entries of one spec name (and their index files), or everything attngen keeps
    in its cache folder: v1/, sources/, and triton/ when Triton's cache is ours. Returns the
    number of entries removed."""
    entries = [e for e in list_entries() if spec_name is None or e.spec_name == spec_name]
    for entry in entries:
        remove_tree(entry.path)
    if spec_name is None:
        ours = [root(), env.cache_dir() / "sources", env.cache_dir() / "triton"]
        for folder in ours:
            if folder.is_dir():
                remove_tree(folder)
        return len(entries)
    for index in root().glob("*/index/*.json"):
        try:
            if json.loads(index.read_text()).get("spec") == spec_name:
                index.unlink(missing_ok=True)
        except (OSError, ValueError, AttributeError):
            index.unlink(missing_ok=True)
    return len(entries)
