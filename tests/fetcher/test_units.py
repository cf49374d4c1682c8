"""Small pieces: Retry-After parsing, what is retried, the lock comparison, git blob ids."""

from __future__ import annotations

import email.utils
import hashlib
import time

import httpx
import pytest

from hubless_fetcher.catalog import CatalogModel
from hubless_fetcher.download import git_blob_id
from hubless_fetcher.errors import ExitCode, LockMismatchError, combine
from hubless_fetcher.lockfile import LockedFile, LockedModel
from hubless_fetcher.plan import compare_with_lock
from hubless_fetcher.remote import RemoteFile, RemoteSnapshot
from hubless_fetcher.retry import RetryableError, is_retryable, parse_retry_after


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (parse_retry_after(later) or 0) <= 31
    assert parse_retry_after(email.utils.formatdate(0, usegmt=True)) == 0.0


@pytest.mark.parametrize(
    ("status", "retried"),
    [(429, True), (503, True), (500, True), (404, False), (401, False), (403, False)],
)
def test_which_statuses_are_retried(status: int, retried: bool) -> None:
    error = httpx.HTTPStatusError(
        "x", request=httpx.Request("GET", "http://h"), response=httpx.Response(status)
    )
    assert is_retryable(error) is retried


def test_transport_errors_are_retried_others_not() -> None:
    assert is_retryable(httpx.ReadTimeout("slow"))
    assert is_retryable(httpx.RemoteProtocolError("cut"))
    assert is_retryable(ConnectionResetError())
    assert is_retryable(RetryableError("short read", retry_after=1))
    assert not is_retryable(ValueError("bug"))


def test_git_blob_id_matches_git() -> None:
    assert git_blob_id(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"  # `git hash-object`
    assert git_blob_id(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_lock_comparison_names_every_difference() -> None:
    model = CatalogModel("m", "org/m", "main", "sentiment")
    sha = hashlib.sha256(b"w").hexdigest()
    locked = LockedModel(
        "m",
        "org/m",
        "main",
        "c" * 40,
        [
            LockedFile("config.json", 10, "a" * 64, "1" * 40),
            LockedFile("model.safetensors", 100, sha),
            LockedFile("vocab.txt", 5, "b" * 64, "2" * 40),
        ],
    )
    same = RemoteSnapshot(
        "org/m",
        "c" * 40,
        "c" * 40,
        (
            RemoteFile("config.json", 10, None, "1" * 40),
            RemoteFile("model.safetensors", 100, sha, None),
            RemoteFile("vocab.txt", 5, None, "2" * 40),
        ),
    )
    compare_with_lock(model, locked, same)
    differs = RemoteSnapshot(
        "org/m",
        "c" * 40,
        "c" * 40,
        (
            RemoteFile("config.json", 10, None, "9" * 40),
            RemoteFile("model.safetensors", 101, sha, None),
            RemoteFile("tokenizer.json", 5, None, "3" * 40),
        ),
    )
    with pytest.raises(LockMismatchError) as err:
        compare_with_lock(model, locked, differs)
    message = str(err.value)
    assert "config.json git blob id differs" in message
    assert "model.safetensors size 101 != locked 100" in message
    assert "tokenizer.json not in the lock" in message and "vocab.txt only in the lock" in message
    assert err.value.exit_code == ExitCode.LOCK_MISMATCH


def test_exit_code_precedence() -> None:
    assert combine([]) == ExitCode.OK
    assert combine([ExitCode.FAILED, ExitCode.ACCESS]) == ExitCode.ACCESS
    assert combine([ExitCode.FAILED, ExitCode.NO_SPACE, ExitCode.ACCESS]) == ExitCode.NO_SPACE
