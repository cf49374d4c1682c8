"""hubless-fakehub: a local, hub-compatible Hugging Face mirror for tests and the demo.

Which server, and why
---------------------
This is a small fixture server (stdlib ``ThreadingHTTPServer`` in a thread), not ``olah``.
olah 0.5.4 was evaluated first as the real mirror: a git repo of a tiny model (LFS pointers
committed, objects under ``.git/lfs/objects``) in its ``mirrors-path``, ``offline = true``.
Measured against it (code in ``olah/mirror/repos.py``, ``server_file_routes.py``), it falls
short of what the fetcher needs:

- ``model_info(..., files_metadata=True)`` sends ``?blobs=true``; olah ignores it and returns
  siblings with ``rfilename`` only (``LocalMirrorRepo.get_meta``): no ``size``, ``blobId`` or
  ``lfs.sha256``, so a fetcher cannot learn sizes and hashes before downloading.
- ``GET /{repo}/resolve/{rev}/{path}`` with ``Range: bytes=100-199`` answers ``200`` with the
  whole file, chunked, without ``Content-Length``: no 206, no resume.
- ``HEAD`` has an unquoted ``ETag``, no ``Accept-Ranges``, no ``X-Linked-Etag``/``-Size``; a
  missing file answers ``401`` ``X-Error-Code: RepoNotFound`` instead of the hub's ``404``
  ``EntryNotFound``.
- It needs git repos with LFS objects built per test (and ``git`` to do it), takes ~2 s to
  start, and "upstream changed" would mean committing to those repos.

This server implements exactly what ``huggingface_hub`` (2.x) and the fetcher use, in memory, and
starts in milliseconds:

- ``GET /api/models/{repo_id}[/revision/{rev}]``: ``sha``, ``siblings`` (with ``size``,
  ``blobId`` and ``lfs{sha256,size,pointerSize}`` when ``?blobs=true``), ``gated``/``private``.
- ``GET /api/models/{repo_id}/tree/{rev}[/{path}]?recursive=``, ``POST .../paths-info/{rev}``,
  ``GET .../refs``, ``GET .../commits/{rev}``.
- ``HEAD``/``GET /{repo_id}/resolve/{rev}/{path}``: ``X-Repo-Commit``, quoted ``ETag`` (sha256 for
  LFS files, git blob sha1 otherwise), ``X-Linked-Etag``/``X-Linked-Size`` for LFS files,
  ``Content-Length``, ``Accept-Ranges: bytes``; ``Range`` gives 206 with ``Content-Range`` (416
  when unsatisfiable). With ``lfs_redirect=True`` LFS files answer 302 to a CDN-like URL on a
  second port (another origin), as the real hub redirects to its CDN.
- Errors as the hub: 404 + ``X-Error-Code: RepoNotFound`` / ``RevisionNotFound`` /
  ``EntryNotFound``; private repos 401 ``RepoNotFound`` without a valid token; gated repos
  (metadata public) 401/403 ``GatedRepo`` on file downloads without an allowed token.

Files are LFS when their suffix is a weights/binary suffix (as the hub's default
``.gitattributes``) or they are at least ``lfs_threshold`` bytes. Commits are deterministic
40-hex ids derived from the parent commit and the file list; old commits stay resolvable after a
repo changes, as on the hub.

For tests of the fetcher's failure handling, :meth:`HubMirror.add_fault` makes matching requests
fail (any status, e.g. 503 or 429 with ``Retry-After``), stall, end early (truncated body) or
carry corrupted bytes, and :attr:`HubMirror.requests` records every request served.

For faults on the wire in front of any upstream (cut connections, dripping bytes, flipped
bytes), :class:`FaultProxy` (:mod:`hubless_fakehub.proxy`) forwards to the mirror and misbehaves.
Each module has its own ``Fault`` (the mirror's in :mod:`~hubless_fakehub.faults`, the proxy's
rule in :mod:`~hubless_fakehub.proxy`), so neither is exported here: import it from its module.

Modules, one concern each: :mod:`~hubless_fakehub.server` (:class:`HubMirror`),
:mod:`~hubless_fakehub.handler` (HTTP routes), :mod:`~hubless_fakehub.api` (JSON answers),
:mod:`~hubless_fakehub.repos` (files, commits, LFS), :mod:`~hubless_fakehub.faults` (the
mirror's faults and request log), :mod:`~hubless_fakehub.proxy` (:class:`FaultProxy`),
:mod:`hubless_fakehub.tiny` (tiny random-weight stand-ins for the catalog models),
:mod:`~hubless_fakehub.real_models` (where the real all-MiniLM-L6-v2 is) and
:mod:`~hubless_fakehub.stack` (the whole stack offline: this mirror, the real fetcher and
server, as ``make demo`` runs it; the one helper that starts, waits for and stops a server
subprocess, for the demo, the tests, the benchmarks and the soak),
:mod:`~hubless_fakehub.volume` (volumes made from local model folders, offline) and
:mod:`~hubless_fakehub.procfs` (a process's memory, threads and CPU time from ``/proc``).
Only the tiny-model builder, the real-model helper, the volume helper and the stack need more
than the standard library (the ``tiny``, ``real`` and ``volume`` extras, and
``hubless-client`` for the stack).

Run standalone: ``python -m hubless_fakehub --port 8090 org/name=DIR ...`` (add
``--tiny-models DIR`` to build, cache and serve the tiny models too).
"""

from hubless_fakehub.faults import RequestRecord
from hubless_fakehub.proxy import FaultProxy
from hubless_fakehub.repos import (
    DEFAULT_LFS_THRESHOLD,
    LFS_SUFFIXES,
    Commit,
    Repo,
    RepoFile,
    git_blob_sha1,
    lfs_pointer,
    read_dir,
)
from hubless_fakehub.server import HubMirror

__all__ = [
    "DEFAULT_LFS_THRESHOLD",
    "LFS_SUFFIXES",
    "Commit",
    "FaultProxy",
    "HubMirror",
    "Repo",
    "RepoFile",
    "RequestRecord",
    "git_blob_sha1",
    "lfs_pointer",
    "read_dir",
]
