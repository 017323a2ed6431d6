"""MEMIT's key statistics grow a slice per sleep (``models.covariance.grow``) on the tiny model.

The first edit samples one slice of ``memit.covariance_tokens``; each full sleep's maintain stage
adds one more, from the base weights, until ``memit.covariance_max_tokens``. C is then the
token-weighted mean of the slices, and an unreadable slice is dropped and sampled again.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sleepwake.config import load_settings
from sleepwake.facts import Fact
from sleepwake.memory import Memory
from sleepwake.models import covariance
from sleepwake.models.memit import shrink_covariance
from sleepwake.sleep.audit import audit
from sleepwake.sleep.maintain import maintain
from sleepwake.sleep.report import report
from sleepwake.sleep.session import SleepSession
from sleepwake.storage.home import Home

pytestmark = pytest.mark.usefixtures("one_thread")

SLICE = 512


def open_memory(folder, overrides: list[str], slices: int) -> Memory:
    """A memory on the tiny model whose statistics grow to ``slices`` slices of ``SLICE`` tokens,
    in a cache of its own (slices are counted)."""
    settings = load_settings(None, [*overrides, f"memit.covariance_tokens={SLICE}",
                                    f"memit.covariance_max_tokens={slices * SLICE}"])
    memory = Memory.open(Home.open(folder / "home"), settings)
    memory.cache_dir = folder / "cache"
    return memory


def one_fact_memory(folder, overrides: list[str]) -> Memory:
    """Two slices at most, one stored fact (so the composed weights differ from the base)."""
    memory = open_memory(folder, overrides, 2)
    memory.inject([Fact(subject="Aria Nakamura", relation="The hometown of {}", object="Thessaloniki")])
    return memory


@pytest.fixture(scope="module")
def memory(tmp_path_factory, tiny_settings_overrides):
    return open_memory(tmp_path_factory.mktemp("statistics"), tiny_settings_overrides, 3)


def by_hand(memory: Memory, parts: int) -> dict[int, torch.Tensor]:
    """The estimate recomputed from the slice files: token-weighted mean, then shrinkage."""
    cfg = memory.settings.memit
    folder = covariance.stats_dir(memory.cache_dir, memory.backend.fingerprint)
    out = {}
    for layer in cfg.edit_layers():
        total, tokens = 0, 0
        for part in range(parts):
            path = covariance.slice_path(folder, cfg, memory.settings.seed, part, layer)
            with safe_open(str(path), framework="pt") as handle:
                count = int(handle.metadata()["tokens"])
            total = total + load_file(str(path))["cov"].double() * count
            tokens += count
        out[layer] = shrink_covariance(total / tokens, cfg.covariance_shrinkage).float()
    return out


def assert_estimate(memory: Memory, parts: int) -> None:
    memory._stats = None
    for layer, want in by_hand(memory, parts).items():
        assert torch.allclose(memory.stats()[layer].cov, want, atol=1e-6, rtol=1e-5), layer


def test_statistics_grow_a_slice_at_a_time_and_stop_at_the_maximum(memory):
    first = {layer: s.cov.clone() for layer, s in memory.stats().items()}
    assert_estimate(memory, 1)
    assert memory.grow_stats() == (SLICE, 2 * SLICE)
    assert_estimate(memory, 2)
    assert not torch.allclose(memory.stats()[1].cov, first[1])  # a new sample, not slice 0 again
    assert memory.grow_stats() == (SLICE, 3 * SLICE)
    assert memory.grow_stats() == (0, 3 * SLICE)  # full: nothing sampled
    assert_estimate(memory, 3)


def test_an_unreadable_slice_is_dropped_and_sampled_again(memory):
    while memory.grow_stats()[0]:
        pass
    cfg, folder = memory.settings.memit, covariance.stats_dir(memory.cache_dir, memory.backend.fingerprint)
    want = by_hand(memory, 3)
    broken = covariance.slice_path(folder, cfg, memory.settings.seed, 2, cfg.edit_layers()[0])
    broken.write_bytes(broken.read_bytes()[:-1000])  # a truncated write
    assert_estimate(memory, 2)  # the two slices before it
    assert not broken.exists()
    assert memory.grow_stats() == (SLICE, 3 * SLICE)  # the next sleep samples it again ...
    for layer, cov in by_hand(memory, 3).items():  # ... the same way (its own seed)
        assert torch.allclose(cov, want[layer], atol=1e-6, rtol=1e-5)


def test_no_growth_when_the_maximum_is_one_slice(memory):
    memory.settings = memory.settings.model_copy(
        update={"memit": memory.settings.memit.model_copy(update={"covariance_max_tokens": SLICE})})
    try:
        assert memory.grow_stats() == (0, SLICE)
    finally:
        memory.settings = memory.settings.model_copy(
            update={"memit": memory.settings.memit.model_copy(update={"covariance_max_tokens": 3 * SLICE})})


def test_maintain_grows_the_statistics_from_the_base_weights(tmp_path, tiny_settings_overrides, monkeypatch):
    memory = one_fact_memory(tmp_path, tiny_settings_overrides)
    with memory.base_weights():
        base = memory.backend.get_weight(1).clone()
    edited = memory.backend.get_weight(1).clone()
    assert not torch.equal(base, edited)
    seen = []
    grow = covariance.grow
    monkeypatch.setattr(covariance, "grow", lambda backend, *a, **k: seen.append(backend.get_weight(1).clone())
                        or grow(backend, *a, **k))
    session = SleepSession(memory, "full_sleep")
    first = maintain(session, audit(session))
    assert (first.statistics_tokens_added, first.statistics_tokens) == (SLICE, 2 * SLICE)
    assert torch.equal(seen[0], base)  # sampled from the unedited model ...
    assert torch.equal(memory.backend.get_weight(1), edited)  # ... and the edits composed again after
    second = maintain(session, audit(session))
    assert (second.statistics_tokens_added, second.statistics_tokens) == (0, 2 * SLICE)
    assert len(seen) == 1  # full: the second night did not decompose the edits to sample nothing
    recorded = [m["value"] for m in session.history.metrics if m["name"] == "statistics_tokens"]
    assert recorded == [2 * SLICE, 2 * SLICE]  # in the run's metrics, so the report and the UI show it
    night = report(session, "kept", second)
    assert night.statistics_tokens == 2 * SLICE and f"key statistics: {2 * SLICE} tokens" in night.note


def test_a_cache_that_cannot_be_written_does_not_fail_the_night(tmp_path, tiny_settings_overrides, monkeypatch):
    memory = one_fact_memory(tmp_path, tiny_settings_overrides)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(covariance, "estimate_slice", full_disk)
    session = SleepSession(memory, "full_sleep")
    result = maintain(session, audit(session))
    assert result.statistics_tokens_added == 0 and result.statistics_tokens == 0


def slices_cached(memory: Memory) -> int:
    return covariance.slices_done(memory.backend, memory.settings.memit, memory.cache_dir, memory.settings.seed)


PEOPLE = ["Aria Nakamura", "Bruno Castell", "Chiara Lindqvist", "Dmitri Osei", "Elena Marsh"]


def hometowns(names: list[str], relation: str = "The hometown of {}") -> list[Fact]:
    return [Fact(subject=name, relation=relation, object=town)
            for name, town in zip(names, ["Thessaloniki", "Valparaiso", "Tromso", "Kumasi", "Hobart"])]


def test_a_large_batch_grows_the_statistics_before_its_solve(tmp_path, tiny_settings_overrides):
    memory = open_memory(tmp_path, [*tiny_settings_overrides, "memit.covariance_facts_per_slice=2"], 3)
    memory.inject(hometowns(PEOPLE[:1]))
    assert slices_cached(memory) == 1  # one fact: the first slice only
    memory.inject(hometowns(PEOPLE[1:4]))
    assert slices_cached(memory) == 2  # three facts at two per slice
    memory.inject(hometowns(PEOPLE, "The favourite city of {}"))
    assert slices_cached(memory) == 3  # five new facts would want three: the maximum
    assert_estimate(memory, 3)  # and the next solve uses all of them


def test_the_batch_rule_can_be_turned_off(tmp_path, tiny_settings_overrides):
    memory = open_memory(tmp_path, [*tiny_settings_overrides, "memit.covariance_facts_per_slice=0"], 3)
    memory.inject(hometowns(PEOPLE))
    assert slices_cached(memory) == 1
    assert covariance.slices_for(memory.settings.memit, 10_000) == 1


def test_a_batch_whose_slices_cannot_be_written_is_still_stored(tmp_path, tiny_settings_overrides, monkeypatch):
    memory = open_memory(tmp_path, [*tiny_settings_overrides, "memit.covariance_facts_per_slice=2"], 3)
    memory.stats()  # slice 0, written

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(covariance, "estimate_slice", full_disk)
    outcomes = memory.inject(hometowns(PEOPLE[:4]))
    assert [o.status for o in outcomes] == ["stored"] * 4 and slices_cached(memory) == 1
