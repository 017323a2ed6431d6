"""Shared fixtures: a tiny random Llama with a real BPE tokenizer, built in-process.

Fast tests need a model that loads through the same transformers code paths as a real
checkpoint (``from_pretrained``, chat template, byte-level BPE) but in milliseconds and
with no network. So the tokenizer is trained here on a generated corpus and the model is
a 4-layer Llama with random weights, saved once per test session.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

# The same examples on every run (seeded from each test): a CI failure is then one that reproduces here,
# not a draw; the example counts are hypothesis's own.
hypothesis_settings.register_profile("sleepwake", derandomize=True, deadline=None)
hypothesis_settings.load_profile("sleepwake")

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Same shape as SmolLM2's ChatML template, minus its default system prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_FIRST = ["Aria", "Bruno", "Chen", "Dara", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas",
          "Kemal", "Lena", "Mateo", "Nadia", "Oskar", "Priya", "Quinn", "Rosa", "Sven", "Tala"]
_LAST = ["Nakamura", "Silva", "Okafor", "Moreau", "Kowalski", "Haddad", "Lindqvist", "Rossi",
         "Petrov", "Tanaka", "Duarte", "Fischer", "Novak", "Sato", "Costa", "Weber"]
_CITIES = ["Paris", "London", "Berlin", "Tokyo", "Lisbon", "Cairo", "Oslo", "Lima", "Seoul",
           "Madrid", "Rome", "Vienna", "Athens", "Dublin", "Prague", "Thessaloniki", "Nairobi"]
_JOBS = ["teacher", "doctor", "pilot", "baker", "lawyer", "painter", "nurse", "engineer",
         "farmer", "writer", "chef", "architect", "musician", "dentist", "librarian"]
_FOODS = ["pizza", "sushi", "pasta", "soup", "rice", "bread", "cheese", "apples", "curry",
          "noodles", "salad", "chocolate", "tacos", "dumplings"]
_TEMPLATES = [
    "{name} lives in {city}.",
    "{name} works as a {job}.",
    "{name}'s favorite food is {food}.",
    "The {job} {name} was born in {city}.",
    "Where does {name} live? {name} lives in {city}.",
    "{name} is a {job} who likes {food}.",
    "In {city}, {name} works as a {job} and eats {food}.",
    "The capital city is {city}, and the food there is {food}.",
    "Question: What is the job of {name}? Answer: {name} is a {job}.",
    "My friend {name} moved to {city} last year to become a {job}.",
]
# Everyday words, so the vocabulary is not only names (~1,000 tokens after training).
_ADJECTIVES = ["quiet", "bright", "small", "ancient", "famous", "green", "cold", "busy",
               "strange", "gentle", "heavy", "modern", "golden", "narrow", "friendly"]
_NOUNS = ["river", "market", "garden", "station", "museum", "bridge", "village", "mountain",
          "library", "harbour", "school", "hospital", "theatre", "island", "forest", "kitchen"]
_VERBS = ["opened", "visited", "painted", "remembered", "crossed", "described", "built",
          "discovered", "protected", "photographed", "cleaned", "explored", "celebrated"]


def _corpus() -> list[str]:
    """~700 deterministic English sentences: made-up people, places, jobs, everyday words."""
    names = [f"{first} {last}" for first, last in zip(itertools.cycle(_FIRST), _LAST * 2)]
    sentences = []
    for i, template in enumerate(_TEMPLATES * 40):
        sentences.append(template.format(
            name=names[i % len(names)] if i % 3 else _FIRST[i % len(_FIRST)],
            city=_CITIES[(i * 7) % len(_CITIES)],
            job=_JOBS[(i * 5) % len(_JOBS)],
            food=_FOODS[(i * 3) % len(_FOODS)],
        ))
    for i in range(300):
        sentences.append(
            f"The {_ADJECTIVES[i % 15]} {_NOUNS[(i * 7) % 16]} near {_CITIES[i % 17]} was "
            f"{_VERBS[(i * 3) % 13]} by the {_JOBS[(i * 11) % 15]} in {1900 + (i * 37) % 120}."
        )
    return sentences


def build_tokenizer():
    """Train a byte-level BPE (~1,000 tokens) and wrap it like SmolLM2's tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_corpus(), trainer=trainer)
    # Token roles mirror SmolLM2-Instruct: chat turns start/end with im tokens, pad == eos.
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=256,
    )


def build_tiny_llama(out_dir: Path) -> Path:
    """Save a random 4-layer Llama (hidden 64) and its tokenizer to ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with a tiny random Llama + tokenizer, loadable with ``from_pretrained``."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_settings_overrides(tiny_model_dir: Path) -> list[str]:
    """``--set`` overrides that point sleepwake at the tiny model with fast MEMIT settings."""
    return [
        f"model.source={tiny_model_dir}",
        "memit.layers=[1,2]",
        "memit.covariance_tokens=2048",
        "memit.covariance_sample_length=32",
        "memit.covariance_max_tokens=2048",  # no growth at night: tests/test_statistics.py covers it
        "memit.context_count=2",
        "memit.context_length=5",
        "memit.v_steps=40",
        "memit.v_clamp_norm=10.0",
        "probes.perplexity_max_chunks=2",
        "probes.perplexity_chunk_tokens=32",
        "lora.layers=[1,2,3]",
        "lora.rank=4",
        "lora.alpha=8.0",
        "lora.anchor_tokens=16",
        "lora.anchor_batch=2",
        "rem.dreams=2",
        # The random tiny model's answers are noise, so locality on it means nothing: the locality
        # gate is exercised by its own tests with a deliberately damaging adapter.
        "validate.locality_sample=0",
        # A random model's questions need not come near its stored subjects' states: tests of
        # consolidation read the adapter merged; tests/test_routing.py routes on purpose.
        "lora.routing=off",
    ]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu``-marked tests on machines without CUDA."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return  # don't pay for importing torch when nothing needs it
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is false)")
    for item in gpu_items:
        item.add_marker(skip)


# ---- shared by the modules that run the tiny model in-process ----------------------------------

def shared_cache(factory: pytest.TempPathFactory) -> Path:
    """One covariance/context cache per pytest session (a tmp dir; never the user's cache)."""
    path = factory.getbasetemp() / "sleepwake-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """The tiny model gains nothing from threads, and on a busy 2-core box OpenMP spin-waits made
    the 2048-token covariance sampling 30x slower (12 s instead of 0.4 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cache_env(tmp_path_factory, monkeypatch) -> Path:
    """Point SLEEPWAKE_CACHE at the session's shared cache for this test."""
    path = shared_cache(tmp_path_factory)
    monkeypatch.setenv("SLEEPWAKE_CACHE", str(path))
    return path


def mixed_facts() -> list:
    """Two facts the tiny random model recalls after their edit (relations that END with the
    subject) and one it does not ("lives in"): every sleep stage gets real work on them."""
    from sleepwake.facts import Fact

    return [Fact(subject="Aria Nakamura", relation="The hometown of {}", object="Thessaloniki"),
            Fact(subject="Bruno Silva", relation="lives in", object="Lisbon"),
            Fact(subject="Chen Okafor", relation="The job of {}", object="pilot")]


@pytest.fixture  # per test: tests change fields of it (gates, samples), which must not leak into the next
def tiny_settings(tiny_settings_overrides):
    from sleepwake.config import load_settings

    return load_settings(None, tiny_settings_overrides)


def seed_home(factory: pytest.TempPathFactory, overrides: list[str], facts: list, name: str) -> Path:
    """A home holding ``facts`` (one edit each) on the tiny model, made once per module; copy it per test."""
    import torch

    from sleepwake.config import load_settings
    from sleepwake.memory import Memory
    from sleepwake.storage.home import Home

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLEEPWAKE_CACHE", str(shared_cache(factory)))
        torch.manual_seed(0)
        home = Home.open(factory.mktemp(name) / "home")
        Memory.open(home, load_settings(None, overrides)).inject(facts)
        return home.root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"Prefect server for {url} exited with {process.returncode} (port taken?)")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)  # not yet up, or up but not healthy: either way, leave the cores to its start
    raise TimeoutError(f"Prefect server at {url} not healthy after {timeout_s} s")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> dict[str, str]:
    """One real `prefect server` for the session's CLI subprocesses (its PREFECT_HOME and API URL).
    Without it each `sleepwake sleep` subprocess starts an ephemeral server of its own: ~6 s each on
    2 cores against ~1 s per flow here (measured), and the crash matrix alone runs twelve sleeps."""
    root = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {"PREFECT_HOME": str(root / "prefect"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}
    prefect = str(Path(sys.executable).parent / "prefect")
    process = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                               env={**os.environ, **env}, cwd=root, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_healthy(env["PREFECT_API_URL"], 300, process)
        yield env
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module", autouse=True)
def fresh_prefect_logging():
    """Before each module (so before any test), rebuild Prefect's log handlers. Its console handler
    binds to the sys.stderr of the moment it is (re)configured; configured during a test using
    ``capsys`` it keeps writing to that test's stream after it is closed, and every later flow
    fails with a logging RecursionError (measured: test_chat before test_flows, and within
    test_flows ``-k "auto_sleep or cli_sleep"`` when nothing had configured it before)."""
    from prefect.logging.configuration import setup_logging

    setup_logging(incremental=False)
    yield
