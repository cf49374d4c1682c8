"""Signed models: ``hubless-fetch sign``, ``verify --trusted-key`` and ``import --trusted-key``.

Keys are made here with ``cryptography`` (EC P-256, what model-signing's key mode accepts);
the volume is installed from the tiny models through the fetcher's own install. The
signatures are checked with the upstream ``model_signing`` CLI too, exactly as an auditor
would run it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hubless_fakehub.tiny import TinyModel
from hubless_fetcher.cli import main
from hubless_fetcher.errors import ExitCode
from hubless_volume import (
    SIGNATURE_FILES,
    FileRecord,
    Golden,
    GoldenProbe,
    Manifest,
    ModelEntry,
    save_golden,
    signature_relpath,
)
from tests.fetcher.test_artifacts import add_artifact
from tests.support.volume import make_volume

TAMPERED = "twitter-roberta-sentiment"
OTHER = "distilbert-sst2"
MODEL_SIGNING = Path(sys.executable).with_name("model_signing")


@dataclass(frozen=True)
class Keys:
    private: Path
    public: Path


def make_keys(folder: Path, name: str = "signing") -> Keys:
    """A fresh EC P-256 key pair as PEM files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return Keys(private, public)


def add_golden(models_dir: Path, name: str) -> None:
    """Do what the optimizer does for a sentiment model's golden outputs (made-up numbers)."""
    manifest = Manifest.load(models_dir)
    entry = manifest.models[name]
    probes = [
        GoldenProbe("I love it.", labels=["NEGATIVE", "POSITIVE"], scores=[0.1, 0.9]),
        GoldenProbe("Awful.", labels=["NEGATIVE", "POSITIVE"], scores=[0.8, 0.2]),
    ]
    golden = Golden(entry.name, entry.commit, entry.task, probes, reference={"dtype": "float32"})
    entry.golden = save_golden(models_dir, entry, golden)
    manifest.save(models_dir)


@dataclass
class Result:
    code: int
    out: str
    err: str


Cli = Callable[..., Result]


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path / "keys")


@pytest.fixture
def volume(tmp_path: Path, tiny_models: dict[str, TinyModel]) -> Path:
    """Two sentiment models; distilbert-sst2 with an ONNX artifact and golden outputs."""
    models_dir = make_volume(tmp_path / "models", [tiny_models[TAMPERED], tiny_models[OTHER]])
    add_artifact(models_dir, OTHER)
    add_golden(models_dir, OTHER)
    return models_dir


@pytest.fixture
def cli(volume: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    """``cli("verify", ..., HUBLESS_X=...)``: the CLI in-process on ``volume``, no hub."""

    def call(*argv: str, **extra: str) -> Result:
        capsys.readouterr()
        env = {"PATH": os.environ.get("PATH", ""), "HUBLESS_MODELS_DIR": str(volume), **extra}
        code = main(list(argv), env=env)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return call


def upstream_verify(model_path: Path, signature: Path, public: Path, *extra: str) -> int:
    """``model_signing verify key ...``, the upstream CLI in its own process."""
    argv = [str(MODEL_SIGNING), "verify", "key", str(model_path), *extra]
    argv += ["--signature", str(signature), "--public_key", str(public)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert ("Verification succeeded" in done.stdout) == (done.returncode == 0), done.stderr
    return done.returncode


def entry_of(models_dir: Path, name: str) -> ModelEntry:
    return Manifest.load(models_dir).models[name]


def rewrite_and_rehash(models_dir: Path, name: str, path: str, content: bytes) -> None:
    """What someone who can write the volume does: change a file (its blob) and its record in
    the manifest, so that ``verify --deep`` passes."""
    manifest = Manifest.load(models_dir)
    entry = manifest.models[name]
    blob = entry.file_path(models_dir, path).resolve()
    blob.write_bytes(content)
    record = FileRecord(path, len(content), hashlib.sha256(content).hexdigest())
    entry.files = [record if f.path == path else f for f in entry.files]
    manifest.save(models_dir)


def test_sign_round_trip_and_the_upstream_cli_verifies(cli: Cli, volume: Path, keys: Keys) -> None:
    signed = cli("sign", "--key", str(keys.private))
    assert signed.code == ExitCode.OK, signed.err
    assert f"{OTHER}: signed" in signed.out and f"{TAMPERED}: signed" in signed.out
    assert "2 signed, 0 kept, 0 corrupt" in signed.out

    for name in (OTHER, TAMPERED):
        entry = entry_of(volume, name)
        assert entry.signature == signature_relpath(entry.repo_id, entry.commit)
        sig = volume / entry.signature
        assert sig.is_file() and sig.parent.name == entry.commit
        assert upstream_verify(
            entry.snapshot_dir(volume), sig, keys.public, "--allow_symlinks"
        ) == (0)
        statement = sig.with_name("hubless.json")
        assert upstream_verify(statement, sig.with_name("hubless.json.sig"), keys.public) == 0

    checked = cli("verify", "--deep", "--trusted-key", str(keys.public))
    assert checked.code == ExitCode.OK, checked.out + checked.err
    assert checked.out.count("signature verified") == 2
    assert cli("verify", HUBLESS_TRUSTED_KEY=str(keys.public)).code == ExitCode.OK
    listed = cli("list", "--json")
    assert '"signed": true' in listed.out and '"golden": true' in listed.out


def test_a_changed_file_with_a_rehashed_manifest_is_untrusted(
    cli: Cli, volume: Path, keys: Keys
) -> None:
    assert cli("sign", "--key", str(keys.private)).code == ExitCode.OK
    config = entry_of(volume, TAMPERED).file_path(volume, "config.json").read_bytes()
    swapped = config.replace(b'"negative"', b'"@"').replace(b'"positive"', b'"negative"')
    swapped = swapped.replace(b'"@"', b'"positive"')  # the labels swapped, as in issue 19
    assert swapped != config
    rewrite_and_rehash(volume, TAMPERED, "config.json", swapped)

    assert cli("verify", "--deep").code == ExitCode.OK  # the hashes alone cannot tell
    checked = cli("verify", "--trusted-key", str(keys.public))
    assert checked.code == ExitCode.UNTRUSTED
    assert f"{TAMPERED}: UNTRUSTED" in checked.out
    assert "config.json differs from the signed file" in checked.out
    assert f"{OTHER}: ok" in checked.out
    assert "1 model(s) not signed by the trusted key" in checked.err
    resign = cli("sign", "--key", str(keys.private))  # the key holder is not fooled either
    assert resign.code == ExitCode.CORRUPT
    assert f"{TAMPERED}: corrupt (the snapshot does not verify: config.json" in resign.out
    assert "this key signed other content for commit" in resign.out
    assert cli("verify", "--trusted-key", str(keys.public)).code == ExitCode.UNTRUSTED
    entry = entry_of(volume, TAMPERED)
    assert (
        upstream_verify(
            entry.snapshot_dir(volume), volume / entry.signature, keys.public, "--allow_symlinks"
        )
        != 0
    )


def test_another_models_signature_an_unsigned_model_and_another_key(
    cli: Cli, volume: Path, keys: Keys, tmp_path: Path
) -> None:
    assert cli("sign", "--key", str(keys.private), OTHER).code == ExitCode.OK
    unsigned = cli("verify", "--trusted-key", str(keys.public))
    assert unsigned.code == ExitCode.UNTRUSTED
    assert f"{TAMPERED}: UNTRUSTED\n  not signed" in unsigned.out
    assert f"{OTHER}: ok" in unsigned.out

    # twitter-roberta's entry made to point at signature files copied from distilbert-sst2
    manifest = Manifest.load(volume)
    victim, donor = manifest.models[TAMPERED], manifest.models[OTHER]
    victim.signature = signature_relpath(victim.repo_id, victim.commit)
    manifest.save(volume)
    shutil.copytree(donor.signature_dir(volume), victim.signature_dir(volume))
    borrowed = cli("verify", "--trusted-key", str(keys.public), TAMPERED)
    assert borrowed.code == ExitCode.UNTRUSTED
    assert f"the signature is of {OTHER}" in borrowed.out

    stranger = make_keys(tmp_path / "other-keys", "stranger")
    other_key = cli("verify", "--trusted-key", str(stranger.public), OTHER)
    assert other_key.code == ExitCode.UNTRUSTED
    assert "signed with another key than the trusted one" in other_key.out


def test_sign_is_idempotent_and_re_signs_what_changed(cli: Cli, volume: Path, keys: Keys) -> None:
    assert cli("sign", "--key", str(keys.private)).code == ExitCode.OK
    files = {
        name: [
            p.read_bytes() for p in sorted(entry_of(volume, name).signature_dir(volume).iterdir())
        ]
        for name in (OTHER, TAMPERED)
    }
    again = cli("sign", HUBLESS_SIGNING_KEY=str(keys.private))
    assert again.code == ExitCode.OK and "0 signed, 2 kept, 0 corrupt" in again.out
    for name, before in files.items():
        folder = entry_of(volume, name).signature_dir(volume)
        assert [p.read_bytes() for p in sorted(folder.iterdir())] == before

    add_artifact(volume, OTHER, b"re-exported onnx")  # the optimizer ran again
    stale = cli("verify", "--trusted-key", str(keys.public), OTHER)
    assert stale.code == ExitCode.UNTRUSTED and "not covered by the signature" in stale.out
    third = cli("sign", "--key", str(keys.private))
    assert third.code == ExitCode.OK and "1 signed, 1 kept, 0 corrupt" in third.out
    assert f"{OTHER}: signed" in third.out and f"{TAMPERED}: kept" in third.out
    assert cli("verify", "--trusted-key", str(keys.public)).code == ExitCode.OK


def test_sign_refuses_a_model_whose_files_differ_from_the_manifest(
    cli: Cli, volume: Path, keys: Keys
) -> None:
    blob = entry_of(volume, TAMPERED).file_path(volume, "config.json").resolve()
    data = bytearray(blob.read_bytes())
    data[5] ^= 0x01  # same size: only hashing sees it
    blob.write_bytes(bytes(data))
    result = cli("sign", "--key", str(keys.private))
    assert result.code == ExitCode.CORRUPT
    assert f"{TAMPERED}: corrupt (config.json: the file on the volume differs" in result.out
    assert f"{OTHER}: signed" in result.out
    assert entry_of(volume, TAMPERED).signature == ""
    assert not (entry_of(volume, TAMPERED).signature_dir(volume) / "model.sig").exists()


def test_bad_keys_and_missing_key_are_usage_errors(cli: Cli, keys: Keys, tmp_path: Path) -> None:
    no_key = cli("sign")
    assert no_key.code == ExitCode.USAGE and "--key" in no_key.err
    private = cli("verify", "--trusted-key", str(keys.private))
    assert private.code == ExitCode.USAGE and "is a private key" in private.err
    public = cli("sign", "--key", str(keys.public))
    assert public.code == ExitCode.USAGE and "not a usable PEM private key" in public.err
    absent = cli("import", str(tmp_path / "x.tar"), "--trusted-key", str(tmp_path / "none.pem"))
    assert absent.code == ExitCode.USAGE and "cannot read it" in absent.err
    unknown = cli("sign", "--key", str(keys.private), "nope")
    assert unknown.code == ExitCode.USAGE and "not installed" in unknown.err


def test_bundles_carry_signatures_and_goldens_and_import_checks_them(
    cli: Cli, volume: Path, keys: Keys, tmp_path: Path
) -> None:
    assert cli("sign", "--key", str(keys.private)).code == ExitCode.OK
    bundle, other = tmp_path / "signed.tar", tmp_path / "other"
    assert cli("export", str(bundle)).code == ExitCode.OK
    imported = cli(
        "import", str(bundle), "--trusted-key", str(keys.public), HUBLESS_MODELS_DIR=str(other)
    )
    assert imported.code == ExitCode.OK and "signatures verified" in imported.out
    for name in (OTHER, TAMPERED):
        assert entry_of(other, name).signature == entry_of(volume, name).signature
    assert entry_of(other, OTHER).golden == entry_of(volume, OTHER).golden
    assert entry_of(other, OTHER).golden_path(other).is_file()
    deep = cli("verify", "--deep", "--trusted-key", str(keys.public), HUBLESS_MODELS_DIR=str(other))
    assert deep.code == ExitCode.OK, deep.out

    config = entry_of(volume, TAMPERED).file_path(volume, "config.json").read_bytes()
    rewrite_and_rehash(volume, TAMPERED, "config.json", config + b" ")
    tampered = tmp_path / "tampered.tar"
    assert cli("export", str(tampered)).code == ExitCode.OK  # consistent with its manifest
    fresh = tmp_path / "fresh"
    refused = cli(
        "import", str(tampered), "--trusted-key", str(keys.public), HUBLESS_MODELS_DIR=str(fresh)
    )
    assert refused.code == ExitCode.UNTRUSTED
    assert f"nothing imported (--trusted-key): {TAMPERED}:" in refused.err
    assert "config.json differs from the signed file" in refused.err
    assert not Manifest.path_in(fresh).exists()
    assert sorted(p.name for p in fresh.iterdir()) == [".hubless.lock"]
    assert cli("import", str(tampered), HUBLESS_MODELS_DIR=str(fresh)).code == ExitCode.OK

    unsigned_volume = tmp_path / "unsigned"
    shutil.copytree(volume, unsigned_volume, symlinks=True)
    manifest = Manifest.load(unsigned_volume)
    manifest.models[OTHER].signature = ""
    manifest.save(unsigned_volume)
    unsigned = tmp_path / "unsigned.tar"
    assert cli("export", str(unsigned), HUBLESS_MODELS_DIR=str(unsigned_volume)).code == 0
    nothing = tmp_path / "nothing"
    refused = cli(
        "import", str(unsigned), "--trusted-key", str(keys.public), HUBLESS_MODELS_DIR=str(nothing)
    )
    assert refused.code == ExitCode.UNTRUSTED
    assert f"not signed (--trusted-key): {OTHER}" in refused.err
    assert not nothing.exists()


def test_verify_wait_with_a_trusted_key_waits_for_a_signature(
    cli: Cli, volume: Path, keys: Keys
) -> None:
    waiting = cli(
        "verify",
        "--wait",
        OTHER,
        "--timeout",
        "0.3",
        "--interval",
        "0.1",
        "--trusted-key",
        str(keys.public),
    )
    assert waiting.code == ExitCode.CORRUPT and f"model {OTHER}" in waiting.err
    assert cli("sign", "--key", str(keys.private), OTHER).code == ExitCode.OK
    ready = cli("verify", "--wait", OTHER, "--timeout", "5", "--trusted-key", str(keys.public))
    assert ready.code == ExitCode.OK and f"ready: {OTHER}" in ready.out


def test_signature_files_are_derived_files(cli: Cli, volume: Path, keys: Keys) -> None:
    """verify names a missing signature file; pruning keeps them while the entry records them."""
    from hubless_fetcher.volume import prune_unreferenced

    assert cli("sign", "--key", str(keys.private)).code == ExitCode.OK
    assert prune_unreferenced(volume, Manifest.load(volume)) == []
    entry = entry_of(volume, TAMPERED)
    (entry.signature_dir(volume) / SIGNATURE_FILES[1]).unlink()
    broken = cli("verify")
    assert broken.code == ExitCode.CORRUPT
    assert f"hubless-signatures/{entry.commit}/hubless.json: missing" in broken.out


def test_bundle_index_lists_exactly_the_signed_models_files(volume: Path, keys: Keys) -> None:
    from hubless_fetcher.bundle import parse_index
    from hubless_fetcher.signatures import sign_models
    from hubless_volume import SchemaError

    sign_models(volume, [OTHER], keys.private)
    manifest = Manifest.load(volume)
    models = {name: e.to_json() for name, e in manifest.models.items()}
    files = [{"path": name, "size": 1, "sha256": "e" * 64} for name in SIGNATURE_FILES]
    good = {"version": 1, "models": models, "signatures": {OTHER: files}}
    assert parse_index(good, "index")[2][OTHER][0].path == "model.sig"
    for bad, message in (
        ({**good, "signatures": {}}, "its files are not listed"),
        ({**good, "signatures": {OTHER: files, TAMPERED: files}}, "not a signed model"),
        ({**good, "signatures": {OTHER: files[:2]}}, "must list exactly"),
        ({**good, "signatures": {OTHER: [*files[:2], {**files[2], "path": "../x"}]}}, "leaves"),
    ):
        with pytest.raises(SchemaError, match=message):
            parse_index(bad, "index")
