"""`llmpy run OWNER/NAME`: a Hugging Face Llama fetched from a stand-in hub on 127.0.0.1 (tests/test_hub.py's).

The checkpoint (sharded safetensors, config, tokenizer) is downloaded into the Hugging Face cache once and then
runs offline; with nothing cached, HF_HUB_OFFLINE=1 is one clear error naming the cache; a shard missing on
the hub is named.
"""

import pytest
from test_hf_llama import make_checkpoint
from test_hf_llama_tokenizer import save_tokenizer
from test_hub import COMMIT, HubHandler, hub, hub_server, llmpy  # noqa: F401  (fixtures)

from llmpy.cli import main
from llmpy.tokenizers.hf import HFTokenizer

pytest.importorskip("transformers")
REPO = "tiny-org/tiny-llama"
FLAGS = ["-t", "0", "-n", "16", "-i", "Once upon a time"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("hub_llama")
    save_tokenizer(d, "smollm2")
    make_checkpoint(d, vocab_size=HFTokenizer.load(d).vocab_size, shard="40KB", max_position_embeddings=32)
    return d


def serve(checkpoint, skip=()):
    for f in checkpoint.iterdir():
        if f.name not in skip:
            HubHandler.files[f"/{REPO}/resolve/main/{f.name}"] = f.read_bytes()


def test_run_hub_id_downloads_once_then_offline(hub, checkpoint, tmp_path, capsysbinary):  # noqa: F811
    serve(checkpoint)
    assert main(["run", str(checkpoint), *FLAGS]) == 0
    want = capsysbinary.readouterr().out
    got = llmpy(tmp_path, hub, "run", REPO, *FLAGS)
    assert got.returncode == 0, got.stderr.decode()
    assert got.stdout == want and want.startswith(b"Once upon a time")
    snapshot = tmp_path / "hf" / "hub" / "models--tiny-org--tiny-llama" / "snapshots" / COMMIT
    shards = sorted(p.name for p in checkpoint.glob("model-*.safetensors"))
    assert len(shards) > 1 and all((snapshot / s).read_bytes() == (checkpoint / s).read_bytes() for s in shards)
    assert (snapshot / "tokenizer.json").exists()
    n_requests = len(HubHandler.log)
    again = llmpy(tmp_path, hub, "run", REPO, *FLAGS, offline=True)
    assert again.returncode == 0 and again.stdout == want, again.stderr.decode()
    assert len(HubHandler.log) == n_requests  # offline: the cache only
    online = llmpy(tmp_path, hub, "run", REPO, *FLAGS)
    asked = {path.rsplit("/", 1)[-1] for _method, path in HubHandler.log[n_requests:]}
    assert online.stdout == want and not asked & {p.name for p in snapshot.iterdir()}, asked  # only what is missing


def test_offline_with_an_empty_cache(hub, tmp_path):  # noqa: F811
    got = llmpy(tmp_path, hub, "run", REPO, *FLAGS, offline=True)
    err = got.stderr.decode()
    assert got.returncode == 2 and "Traceback" not in err, err
    assert "HF_HUB_OFFLINE" in err and str(tmp_path / "hf" / "hub") in err and REPO in err
    assert HubHandler.log == []


def test_missing_shard_on_the_hub(hub, checkpoint, tmp_path):  # noqa: F811
    shard = max(p.name for p in checkpoint.glob("model-*.safetensors"))
    serve(checkpoint, skip={shard})
    got = llmpy(tmp_path, hub, "run", REPO, *FLAGS)
    err = got.stderr.decode()
    assert got.returncode == 2 and "Traceback" not in err, err
    assert f"shard {shard}" in err and got.stdout == b""


def test_unknown_repository(hub, tmp_path):  # noqa: F811
    got = llmpy(tmp_path, hub, "run", REPO, *FLAGS)
    err = got.stderr.decode()
    assert got.returncode == 2 and "does not exist" in err and "config.json" in err, err
