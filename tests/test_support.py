"""The test support code itself: tiny models, volumes, the hub mirror."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from hubless_fakehub import HubMirror, git_blob_sha1, lfs_pointer
from hubless_fakehub.real_models import REAL_MINILM_NAME, real_minilm_dir
from hubless_fakehub.tiny import (
    DECOY_FILES,
    EMBEDDER_MAX_SEQ_LENGTH,
    EMBEDDING_DIM,
    MAX_TOKENS,
    TinyModel,
    build_tiny_models,
    cache_key,
    load_catalog,
)
from hubless_fakehub.volume import install_dir, install_real_minilm, installed, make_volume
from hubless_volume import Manifest

CLASSIFIERS = {
    "emotion-english-distilroberta": "RobertaForSequenceClassification",
    "twitter-roberta-sentiment": "RobertaForSequenceClassification",
    "bert-multilingual-sentiment": "BertForSequenceClassification",
    "distilbert-sst2": "DistilBertForSequenceClassification",
    "bart-large-mnli": "BartForSequenceClassification",
}
SAMPLE = "I love this wonderful product, thanks a lot!"


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_one_tiny_model_per_catalog_entry(tiny_models: dict[str, TinyModel]) -> None:
    catalog = load_catalog()
    assert [m.name for m in catalog.models] == list(tiny_models)
    for entry in catalog.models:
        model = tiny_models[entry.name]
        assert (model.repo_id, model.task) == (entry.repo_id, entry.task)
        assert (model.path / "model.safetensors").is_file()
        assert (model.path / "tokenizer.json").is_file()
        assert (model.path / "tokenizer_config.json").is_file()
        for decoy in DECOY_FILES:
            assert (model.path / decoy).is_file(), decoy
        assert not set(model.files()) & set(DECOY_FILES)
        assert set(model.files(decoys=True)) == set(model.files()) | set(DECOY_FILES)


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_classifiers_load_offline_with_real_class_and_labels(
    tiny_models: dict[str, TinyModel], name: str
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_info = tiny_models[name]
    model = AutoModelForSequenceClassification.from_pretrained(
        model_info.path, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(model_info.path, local_files_only=True)
    assert type(model).__name__ == CLASSIFIERS[name] == model_info.architecture
    assert [model.config.id2label[i] for i in range(len(model_info.labels))] == list(
        model_info.labels
    )
    assert model.config.label2id == {label: i for i, label in enumerate(model_info.labels)}
    assert tokenizer.model_max_length == MAX_TOKENS
    with torch.no_grad():
        logits = model(**tokenizer([SAMPLE, "Awful."], padding=True, return_tensors="pt")).logits
    assert logits.shape == (2, len(model_info.labels))
    # The position table covers the tokenizer's limit, so truncated long input runs.
    long = tokenizer(["word " * 500], truncation=True, return_tensors="pt")
    assert long["input_ids"].shape[1] == MAX_TOKENS
    with torch.no_grad():
        model(**long)


def test_real_label_sets(tiny_models: dict[str, TinyModel]) -> None:
    assert tiny_models["bart-large-mnli"].labels == ("contradiction", "neutral", "entailment")
    assert tiny_models["distilbert-sst2"].labels == ("NEGATIVE", "POSITIVE")
    assert tiny_models["bert-multilingual-sentiment"].labels[0] == "1 star"
    assert tiny_models["bert-multilingual-sentiment"].labels[-1] == "5 stars"
    assert tiny_models["twitter-roberta-sentiment"].labels == ("negative", "neutral", "positive")
    assert len(tiny_models["emotion-english-distilroberta"].labels) == 7


@pytest.mark.parametrize("name", [*sorted(CLASSIFIERS), "bart-large", "dialogpt-small"])
def test_tokenizer_round_trips(tiny_models: dict[str, TinyModel], name: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models[name].path, local_files_only=True)
    ids = tokenizer(SAMPLE)["input_ids"]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    uncased = tokenizer.__class__.__name__.startswith(("Bert", "DistilBert"))
    assert text.strip() == (SAMPLE.lower() if uncased else SAMPLE)


def test_special_tokens(tiny_models: dict[str, TinyModel]) -> None:
    from transformers import AutoTokenizer

    roberta = AutoTokenizer.from_pretrained(tiny_models["bart-large"].path)
    assert [roberta.bos_token, roberta.eos_token, roberta.pad_token] == ["<s>", "</s>", "<pad>"]
    assert [roberta.unk_token, roberta.mask_token] == ["<unk>", "<mask>"]
    bert = AutoTokenizer.from_pretrained(tiny_models["distilbert-sst2"].path)
    assert [bert.pad_token, bert.unk_token, bert.cls_token, bert.sep_token, bert.mask_token] == [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
    ]
    gpt2 = AutoTokenizer.from_pretrained(tiny_models["dialogpt-small"].path)
    assert gpt2.eos_token == "<|endoftext|>"


@pytest.mark.parametrize("name", ["dialogpt-medium", "dialogpt-small"])
def test_dialogpt_generation_terminates(tiny_models: dict[str, TinyModel], name: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_models[name].path
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    assert type(model).__name__ == "GPT2LMHeadModel"
    eos = tokenizer.eos_token_id
    assert model.generation_config.eos_token_id == eos == model.generation_config.pad_token_id
    prompt = tokenizer("Hello, how are you?" + tokenizer.eos_token, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert prompt["input_ids"].shape[1] < out.shape[1] <= prompt["input_ids"].shape[1] + 8
    with torch.no_grad():
        full = model.generate(**prompt, do_sample=False)
    assert full.shape[1] <= model.generation_config.max_length <= model.config.n_positions


def test_dialogpt_sizes_differ(tiny_models: dict[str, TinyModel]) -> None:
    medium = json.loads((tiny_models["dialogpt-medium"].path / "config.json").read_text())
    small = json.loads((tiny_models["dialogpt-small"].path / "config.json").read_text())
    assert medium["n_embd"] > small["n_embd"]
    assert medium["n_layer"] > small["n_layer"]


def test_bart_summarizer_generates(tiny_models: dict[str, TinyModel]) -> None:
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    path = tiny_models["bart-large"].path
    model = AutoModelForSeq2SeqLM.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    assert type(model).__name__ == "BartForConditionalGeneration"
    inputs = tokenizer(["word " * 500], truncation=True, return_tensors="pt")
    assert inputs["input_ids"].shape[1] == MAX_TOKENS
    with torch.no_grad():
        out = model.generate(**inputs)
    assert 1 < out.shape[1] <= model.generation_config.max_length


def test_embedder_is_a_sentence_transformer(tiny_models: dict[str, TinyModel]) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_models["all-minilm-l6-v2"].path), device="cpu")
    assert [type(module).__name__ for module in model] == ["Transformer", "Pooling", "Normalize"]
    assert model.max_seq_length == EMBEDDER_MAX_SEQ_LENGTH
    vectors = model.encode([SAMPLE, "word " * 500], convert_to_numpy=True)
    assert vectors.shape == (2, EMBEDDING_DIM)
    norms = (vectors**2).sum(axis=1) ** 0.5
    assert norms == pytest.approx([1.0, 1.0], abs=1e-5)


def test_rebuild_gives_the_same_bytes(tiny_models: dict[str, TinyModel], tmp_path: Path) -> None:
    rebuilt = build_tiny_models(tmp_path / "again")
    assert list(rebuilt) == list(tiny_models)
    for name, model in tiny_models.items():
        assert _tree_digest(rebuilt[name].path) == _tree_digest(model.path), name


def test_cache_is_keyed_and_reused(tiny_models: dict[str, TinyModel]) -> None:
    root = next(iter(tiny_models.values())).path.parent
    assert root.name == cache_key()
    assert root.parent.name == "tiny-models"


def test_make_volume_installs_without_decoys(
    tiny_models: dict[str, TinyModel], tmp_path: Path
) -> None:
    volume = make_volume(tmp_path / "models", tiny_models)
    manifest = Manifest.load(volume)
    assert sorted(manifest.models) == sorted(tiny_models)
    assert manifest.tasks == load_catalog().tasks
    for name, model in tiny_models.items():
        entry = manifest.models[name]
        assert (entry.repo_id, entry.task, entry.revision) == (model.repo_id, model.task, "main")
        assert len(entry.commit) == 40
        snapshot = entry.snapshot_dir(volume)
        assert sorted(f.path for f in entry.files) == model.files()
        for record in entry.files:
            assert (snapshot / record.path).read_bytes() == (model.path / record.path).read_bytes()
        for decoy in DECOY_FILES:
            assert not (snapshot / decoy).exists()
    again = make_volume(tmp_path / "models2", [tiny_models["distilbert-sst2"]], tasks={})
    assert Manifest.load(again).models["distilbert-sst2"].commit == (
        manifest.models["distilbert-sst2"].commit
    )
    assert Manifest.load(again).tasks == {}


def test_install_dir_skips_what_the_fetcher_skips_and_moves_on_new_files(tmp_path: Path) -> None:
    """The one install helper of the tests and the benchmarks: hidden files and decoys stay
    out, identical files give the same commit, changed files a new one."""
    source = tmp_path / "model"
    (source / ".cache").mkdir(parents=True)
    (source / "1_Pooling").mkdir()
    (source / "config.json").write_text("{}")
    (source / "1_Pooling" / "config.json").write_text('{"pooling": "mean"}')
    (source / ".cache" / "partial").write_text("x")
    (source / "README.md").write_text("# decoy")
    volume = tmp_path / "models"
    kwargs = {"name": "m", "repo_id": "org/m", "task": "sentiment"}
    first = install_dir(volume, source, **kwargs)
    assert sorted(f.path for f in first.files) == ["1_Pooling/config.json", "config.json"]
    assert installed(volume) == {"m"}
    assert install_dir(volume, source, **kwargs).commit == first.commit
    (source / "config.json").write_text('{"changed": true}')
    assert install_dir(volume, source, **kwargs).commit != first.commit


def test_volume_factory(volume_factory, tiny_models: dict[str, TinyModel]) -> None:
    first = volume_factory(["dialogpt-small", "distilbert-sst2"])
    second = volume_factory()
    assert first != second
    assert sorted(Manifest.load(first).models) == ["dialogpt-small", "distilbert-sst2"]
    assert sorted(Manifest.load(second).models) == sorted(tiny_models)
    with pytest.raises(KeyError):
        volume_factory(["no-such-model"])


def test_volume_loads_offline(volume_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    volume = volume_factory(["distilbert-sst2"])
    entry = Manifest.load(volume).models["distilbert-sst2"]
    snapshot = entry.snapshot_dir(volume)
    model = AutoModelForSequenceClassification.from_pretrained(snapshot, local_files_only=True)
    AutoTokenizer.from_pretrained(snapshot, local_files_only=True)
    assert model.config.id2label[1] == "POSITIVE"


def test_real_minilm(tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    assert (real_minilm_dir() / "model.safetensors").is_file()
    entry = install_real_minilm(tmp_path / "models")
    assert entry.name == REAL_MINILM_NAME
    assert entry.repo_id == "sentence-transformers/all-MiniLM-L6-v2"
    paths = {f.path for f in entry.files}
    assert {"model.safetensors", "modules.json", "1_Pooling/config.json"} <= paths
    assert not paths & set(DECOY_FILES)
    model = SentenceTransformer(str(entry.snapshot_dir(tmp_path / "models")), device="cpu")
    assert model.encode(["hello world"]).shape == (1, 384)


# ------------------------------------------------------------------------------ hub mirror


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_mirror_model_info_has_commit_sizes_and_hashes(
    hub_mirror: HubMirror, tiny_models: dict[str, TinyModel]
) -> None:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub_mirror.endpoint)
    for model in tiny_models.values():
        info = api.model_info(model.repo_id, revision="main", files_metadata=True)
        assert info.sha == hub_mirror.commits[model.repo_id]
        assert len(info.sha) == 40
        siblings = {s.rfilename: s for s in info.siblings}
        assert sorted(siblings) == model.files(decoys=True)
        for path, sibling in siblings.items():
            data = (model.path / path).read_bytes()
            assert sibling.size == len(data)
            if path.endswith((".safetensors", ".bin", ".h5", ".msgpack", ".ot", ".onnx")):
                assert sibling.lfs is not None, path
                assert sibling.lfs.sha256 == _sha256(data)
                assert sibling.lfs.size == len(data)
                assert sibling.blob_id == git_blob_sha1(lfs_pointer(_sha256(data), len(data)))
            else:
                assert sibling.lfs is None, path
                assert sibling.blob_id == git_blob_sha1(data)
    plain = api.model_info(tiny_models["distilbert-sst2"].repo_id)
    assert all(s.size is None for s in plain.siblings)


def test_mirror_file_metadata_and_download(
    hub_mirror: HubMirror, tiny_models: dict[str, TinyModel], tmp_path: Path
) -> None:
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    model = tiny_models["distilbert-sst2"]
    commit = hub_mirror.commits[model.repo_id]
    weights = (model.path / "model.safetensors").read_bytes()
    meta = get_hf_file_metadata(
        hf_hub_url(model.repo_id, "model.safetensors", endpoint=hub_mirror.endpoint)
    )
    assert (meta.commit_hash, meta.etag, meta.size) == (commit, _sha256(weights), len(weights))
    config = (model.path / "config.json").read_bytes()
    meta = get_hf_file_metadata(
        hf_hub_url(model.repo_id, "config.json", endpoint=hub_mirror.endpoint)
    )
    assert (meta.etag, meta.size) == (git_blob_sha1(config), len(config))
    for name in ("model.safetensors", "config.json", "onnx/model.onnx"):
        path = hf_hub_download(
            model.repo_id, name, endpoint=hub_mirror.endpoint, cache_dir=tmp_path / "cache"
        )
        assert Path(path).read_bytes() == (model.path / name).read_bytes()
        assert commit in path
    assert hub_mirror.downloads(model.repo_id) == [
        "model.safetensors",
        "config.json",
        "onnx/model.onnx",
    ]


def test_mirror_range_requests(hub_mirror: HubMirror, tiny_models: dict[str, TinyModel]) -> None:
    import httpx

    model = tiny_models["bart-large"]
    data = (model.path / "model.safetensors").read_bytes()
    url = hub_mirror.file_url(model.repo_id, "model.safetensors")
    with httpx.Client(timeout=10) as client:
        head = client.head(url)
        assert head.status_code == 200
        assert head.headers["Content-Length"] == str(len(data))
        assert head.headers["Accept-Ranges"] == "bytes"
        assert head.headers["X-Linked-Size"] == str(len(data))
        assert head.headers["ETag"] == f'"{_sha256(data)}"'
        part = client.get(url, headers={"Range": "bytes=100-"})
        assert part.status_code == 206
        assert part.headers["Content-Range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
        assert part.content == data[100:]
        assert client.get(url, headers={"Range": "bytes=5-9"}).content == data[5:10]
        assert client.get(url, headers={"Range": "bytes=-4"}).content == data[-4:]
        refused = client.get(url, headers={"Range": f"bytes={len(data)}-"})
        assert refused.status_code == 416
        assert refused.headers["Content-Range"] == f"bytes */{len(data)}"


def test_mirror_errors_like_the_hub(
    hub_mirror_factory, tiny_models: dict[str, TinyModel], tmp_path: Path
) -> None:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    private = tiny_models["dialogpt-small"].repo_id
    gated = tiny_models["dialogpt-medium"].repo_id
    mirror = hub_mirror_factory(private=[private], gated=[gated], tokens=["hf_good"])
    api = HfApi(endpoint=mirror.endpoint)
    kwargs = {"endpoint": mirror.endpoint, "cache_dir": tmp_path}
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("nobody/nothing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("nobody/nothing", "config.json", **kwargs)
    with pytest.raises(RevisionNotFoundError):
        api.model_info(tiny_models["bart-large"].repo_id, revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(tiny_models["bart-large"].repo_id, "missing.json", **kwargs)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(private)
    assert api.model_info(private, token="hf_good").sha == mirror.commits[private]
    assert api.model_info(gated).gated == "manual"
    with pytest.raises(GatedRepoError) as unauthenticated:
        hf_hub_download(gated, "config.json", **kwargs)
    assert unauthenticated.value.response.status_code == 401
    with pytest.raises(GatedRepoError) as refused:
        hf_hub_download(gated, "config.json", token="hf_bad", **kwargs)
    assert refused.value.response.status_code == 403
    assert Path(hf_hub_download(gated, "config.json", token="hf_good", **kwargs)).is_file()


def test_mirror_upstream_change_makes_a_new_commit(
    hub_mirror: HubMirror, tiny_models: dict[str, TinyModel]
) -> None:
    import httpx
    from huggingface_hub import HfApi

    repo_id = tiny_models["distilbert-sst2"].repo_id
    old = hub_mirror.commits[repo_id]
    new = hub_mirror.update_repo(
        repo_id, {"config.json": b'{"changed": true}\n', "README.md": None}
    )
    assert new != old and hub_mirror.commits[repo_id] == new
    api = HfApi(endpoint=hub_mirror.endpoint)
    info = api.model_info(repo_id, files_metadata=True)
    assert info.sha == new
    names = {s.rfilename: s.size for s in info.siblings}
    assert "README.md" not in names and names["config.json"] == 18
    assert "README.md" in {s.rfilename for s in api.model_info(repo_id, revision=old).siblings}
    with httpx.Client(timeout=10) as client:
        assert client.get(hub_mirror.file_url(repo_id, "config.json")).content.startswith(
            b'{"changed"'
        )
        pinned = client.get(hub_mirror.file_url(repo_id, "config.json", revision=old))
        assert pinned.headers["X-Repo-Commit"] == old
        assert pinned.content == (tiny_models["distilbert-sst2"].path / "config.json").read_bytes()
    replaced = hub_mirror.update_repo(repo_id, tiny_models["distilbert-sst2"].path)
    assert replaced not in (old, new)
    assert set(hub_mirror.files(repo_id)) == set(tiny_models["distilbert-sst2"].files(decoys=True))


def test_mirror_faults(hub_mirror: HubMirror, tiny_models: dict[str, TinyModel]) -> None:
    import httpx

    model = tiny_models["dialogpt-small"]
    data = (model.path / "model.safetensors").read_bytes()
    url = hub_mirror.file_url(model.repo_id, "model.safetensors")
    with httpx.Client(timeout=10) as client:
        busy = hub_mirror.add_fault(
            model.repo_id, "*.safetensors", status=503, headers={"Retry-After": "1"}
        )
        first = client.get(url)
        assert (first.status_code, first.headers["Retry-After"]) == (503, "1")
        assert client.get(url).content == data
        assert busy.hits == 1
        hub_mirror.add_fault(model.repo_id, "model.safetensors", truncate_after=1000)
        with pytest.raises(httpx.HTTPError):
            client.get(url)
        hub_mirror.add_fault(model.repo_id, "model.safetensors", corrupt=True)
        bad = client.get(url).content
        assert len(bad) == len(data) and bad != data
        hub_mirror.add_fault(model.repo_id, api=True, status=500)
        assert client.get(f"{hub_mirror.endpoint}/api/models/{model.repo_id}").status_code == 500
        assert client.get(url).content == data


def test_mirror_lfs_redirect(
    hub_mirror_factory, tiny_models: dict[str, TinyModel], tmp_path: Path
) -> None:
    import httpx
    from huggingface_hub import hf_hub_download

    model = tiny_models["bart-large-mnli"]
    mirror = hub_mirror_factory({model.repo_id: model.path}, lfs_redirect=True)
    head = httpx.head(mirror.file_url(model.repo_id, "model.safetensors"), timeout=10)
    assert head.status_code == 302
    assert head.headers["Location"].startswith(mirror.cdn_endpoint + "/_cdn/")
    path = hf_hub_download(
        model.repo_id, "model.safetensors", endpoint=mirror.endpoint, cache_dir=tmp_path
    )
    assert Path(path).read_bytes() == (model.path / "model.safetensors").read_bytes()


def test_mirror_tree_listing(hub_mirror: HubMirror, tiny_models: dict[str, TinyModel]) -> None:
    from huggingface_hub import HfApi

    model = tiny_models["all-minilm-l6-v2"]
    api = HfApi(endpoint=hub_mirror.endpoint)
    files = {
        entry.path
        for entry in api.list_repo_tree(model.repo_id, recursive=True)
        if entry.__class__.__name__ == "RepoFile"
    }
    assert files == set(model.files(decoys=True))
    top = {entry.path for entry in api.list_repo_tree(model.repo_id)}
    assert "1_Pooling" in top and "1_Pooling/config.json" not in top
    infos = api.get_paths_info(model.repo_id, ["config.json", "1_Pooling", "absent"])
    assert [info.path for info in infos] == ["config.json", "1_Pooling"]


def test_mirror_stops_cleanly(tiny_models: dict[str, TinyModel]) -> None:
    import httpx

    model = tiny_models["distilbert-sst2"]
    with HubMirror({model.repo_id: model.path}) as mirror:
        endpoint = mirror.endpoint
        assert httpx.get(f"{endpoint}/api/models/{model.repo_id}", timeout=5).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{endpoint}/api/models/{model.repo_id}", timeout=5)
