"""Model files fetched once and cached: llama2.c's models from the Hugging Face hub, and its tokenizer.bin.

    llama2c_model("stories15M")   # karpathy/tinyllamas stories15M.bin, kept in the Hugging Face cache
    llama2c_tokenizer()           # llama2.c's tokenizer.bin (sha256-checked), kept in ~/.cache/llmpy/models
    hf_file(repo, filename, hint) # any hub file, used by the two above and by `llmpy sample gpt2`

The hub side goes through huggingface_hub, so its environment works as for every Hugging Face tool:
HF_ENDPOINT (a mirror), HF_HUB_OFFLINE=1, HF_HOME / HF_HUB_CACHE (where files are kept). A file already
in the cache is used without touching the network. When it is not there and the hub cannot be reached,
the LlmpyError comes after one request (huggingface_hub alone retries for about 25 s) and names the cache
directory and what to do. A gated or private repository (the hub answers 401 or 403, huggingface_hub's
GatedRepoError) is an error saying to accept its license and log in: the token is huggingface_hub's own
(`hf auth login`, or HF_TOKEN).

Not handled: revisions other than the default branch.
"""

from pathlib import Path

from llmpy.errors import LlmpyError, import_optional
from llmpy.fileio import cache_dir

TINYLLAMAS_REPO = "karpathy/tinyllamas"
# llama2.c's README models (Llama 2 architecture trained on TinyStories, 32000-token Llama 2 vocabulary)
LLAMA2C_MODELS = {
    "stories15M": "stories15M.bin",
    "stories42M": "stories42M.bin",
    "stories110M": "stories110M.bin",
}
TOKENIZER_URL = "https://raw.githubusercontent.com/karpathy/llama2.c/master/tokenizer.bin"
TOKENIZER_SHA256 = "50a52ef822ee9e83de5ce9d0be0a025a773d019437f58b5ff9dcafb063ece361"
TOKENIZER_NAME = "tokenizer.bin"
PROBE_TIMEOUT_S = 10  # one metadata request, no retries: offline shows up within this
LOGIN = "accept its license on the hub and log in (`hf auth login` or HF_TOKEN)"


def models_cache_dir():
    """Where llmpy keeps model files it fetches or converts itself: $XDG_CACHE_HOME/llmpy/models."""
    return cache_dir("models")


def _hub():
    return import_optional("huggingface_hub", "downloading from the Hugging Face hub", "hf")


def hf_cached(repo, filename):
    """The local path of repo/filename if the Hugging Face cache holds it, else None (no network)."""
    hub = _hub()
    try:
        return Path(hub.hf_hub_download(repo, filename, local_files_only=True))
    except (OSError, ValueError):  # not cached (LocalEntryNotFoundError is an OSError), or a bad cache entry
        return None


def _first_line(e):
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _status(e):
    """The HTTP status of a huggingface_hub error (HfHubHTTPError.response), else None."""
    return getattr(getattr(e, "response", None), "status_code", None)


def hf_file(repo, filename, hint):
    """Local path of `filename` in the hub repository `repo`: from the cache, else downloaded into it.

    `hint` says what else the user can do (e.g. "or pass a local model.bin"); it ends every error message."""
    cached = hf_cached(repo, filename)
    if cached is not None:
        return cached
    hub = _hub()
    from huggingface_hub import constants
    from huggingface_hub.utils import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError

    where = f"the Hugging Face cache {constants.HF_HUB_CACHE}"
    if constants.HF_HUB_OFFLINE:
        raise LlmpyError(f"{repo}/{filename} is not in {where}, and HF_HUB_OFFLINE is set: run once with network "
                         f"access (HF_HUB_OFFLINE unset) to cache it, {hint}")
    url = hub.hf_hub_url(repo, filename)
    try:
        # one HEAD request without huggingface_hub's retry loop: tells "offline" apart quickly
        hub.get_hf_file_metadata(url, timeout=PROBE_TIMEOUT_S)
    except GatedRepoError as e:  # before RepositoryNotFoundError, its base class
        raise LlmpyError(f"{repo} is gated or private ({_first_line(e)}): {LOGIN}, {hint}") from e
    except RepositoryNotFoundError as e:
        if _status(e) == 401:  # without a login the hub answers for a private repository as for a missing one
            raise LlmpyError(f"{url} does not exist, or {repo} is gated or private ({_first_line(e)}): check the "
                             f"name, or {LOGIN}, {hint}") from e
        raise LlmpyError(f"{url} does not exist ({_first_line(e)}); check the name, {hint}") from e
    except EntryNotFoundError as e:
        raise LlmpyError(f"{url} does not exist ({_first_line(e)}); check the name, {hint}") from e
    except Exception as e:
        if _status(e) in (401, 403):  # refused, whatever the hub's error code
            raise LlmpyError(f"{repo} is gated or private ({_first_line(e)}): {LOGIN}, {hint}") from e
        # no network, DNS, TLS, HTTP 5xx ...
        raise LlmpyError(f"cannot reach {url} ({_first_line(e)}), and {filename} is not in {where}. Offline? "
                         f"Connect once (or set HF_ENDPOINT to a mirror) to cache it, {hint}") from e
    try:
        return Path(hub.hf_hub_download(repo, filename))
    except Exception as e:  # the connection broke during the download
        raise LlmpyError(f"downloading {url} failed ({_first_line(e)}); run the command again, {hint}") from e


def llama2c_model(name):
    """Path of one of llama2.c's models (stories15M, stories42M, stories110M), fetched from the hub once."""
    if name not in LLAMA2C_MODELS:
        raise LlmpyError(f"unknown model {name!r}: choose one of {', '.join(LLAMA2C_MODELS)} or give a model file")
    filename = LLAMA2C_MODELS[name]
    return hf_file(TINYLLAMAS_REPO, filename, f"or download {filename} from https://huggingface.co/"
                   f"{TINYLLAMAS_REPO} by hand and pass its path")


def llama2c_file(name, url, sha256, cache_dir=None, hint=""):
    """Path of a file of llama2.c's repository, downloaded once from url into cache_dir (default
    models_cache_dir()/llama2.c) as `name` and checked against its sha256; hint: as download_file's."""
    from llmpy.data.download import download_file

    path = Path(cache_dir or models_cache_dir() / "llama2.c") / name
    return download_file(url, path, sha256=sha256, desc=name, hint=hint)


def llama2c_tokenizer(url=TOKENIZER_URL, sha256=TOKENIZER_SHA256, cache_dir=None):
    """Path of llama2.c's tokenizer.bin (llama2c_file)."""
    return llama2c_file(TOKENIZER_NAME, url, sha256, cache_dir)
