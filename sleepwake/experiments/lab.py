"""The bench every experiment works on: fresh homes under the output folder, one shared model,
seeded fact waves, the measurements the papers tabulate, and a progress hook.

Sleeps are run through a ``sleeper`` the caller hands in (the Prefect flows pass the real
full-sleep flow, so each sleep is a subflow run with its per-stage history); this module never
imports Prefect.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Sequence

from sleepwake.config import Settings, load_settings
from sleepwake.factpool import PoolFact, generate_pool
from sleepwake.models import probes

log = logging.getLogger(__name__)

# (home folder, extra --set overrides) -> the sleep's report (sleepwake.sleep.report)
Sleeper = Callable[[str, Sequence[str]], dict]
# (table name, row) -> None: called as each point is measured (progress, live artifacts)
Progress = Callable[[str, dict], None]
HELD_OUT = "I was wondering about something. {}"  # a chat wording no training example uses


@dataclass
class Lab:
    """``config``/``overrides`` are what the user ran the experiment with; per-point settings are
    overrides on top of them, so a home's sleeps and its measurements agree."""

    out: Path
    config: str | None
    overrides: list[str]
    sleeper: Sleeper
    progress: Progress = lambda table, row: None  # noqa: E731
    backend: object = None
    # Runs a sweep's independent points concurrently (set by the flow for experiment.devices).
    fan_out: Callable | None = None
    backends: dict = field(default_factory=dict)  # one model per device (fanned-out sweeps)
    earlier: dict = field(default_factory=dict)  # rows of an interrupted run being resumed, by table
    _pools: dict = field(default_factory=dict)

    @cached_property
    def settings(self) -> Settings:
        return load_settings(self.config, self.overrides)

    @property
    def cfg(self):
        return self.settings.experiment

    def home_dir(self, label: str, keep: bool = False) -> str:
        """A fresh home (a rerun into the same folder starts empty), or with ``keep`` the one an
        interrupted run left (resuming it)."""
        path = self.out / "homes" / label
        if path.exists() and not keep:
            shutil.rmtree(path)
        return str(path)

    def resumed(self, table: str) -> list[dict]:
        """Rows of ``table`` an interrupted run measured (empty unless resuming)."""
        return list(self.earlier.get(table, []))

    def open(self, home_dir: str, extra: Sequence[str] = ()):
        """A writable Memory on ``home_dir`` with the experiment's settings plus ``extra``."""
        from sleepwake.memory import Memory
        from sleepwake.storage.home import Home

        settings = load_settings(self.config, [*self.overrides, *extra])
        return Memory.open(Home.open(home_dir), settings, backend=self.backend_for(settings))

    def backend_for(self, settings: Settings):
        """The lab's model, or (``extra`` moved a fanned-out point to another device) that
        device's own copy, loaded once."""
        from sleepwake.memory import backend_key, load_backend

        key = backend_key(settings)
        if key not in self.backends:
            same = self.backend is not None and settings.model == self.settings.model
            self.backends[key] = self.backend if same else load_backend(settings)
        return self.backends[key]

    def pool(self, size: int) -> list[PoolFact]:
        """The experiment's seeded pool of ``size`` facts; experiments that inject in waves take one
        pool for all of them and slice it (``generate_pool(n)`` deals subjects and relations
        differently for each ``n``, so pools of different sizes share no prefix)."""
        if size not in self._pools:
            self._pools[size] = generate_pool(size, seed=self.cfg.seed)
        return self._pools[size]

    def copy_home(self, source: str, label: str) -> str:
        target = self.home_dir(label)
        shutil.copytree(source, target)
        return target

    def sleep(self, home_dir: str, extra: Sequence[str] = ()) -> dict:
        return self.sleeper(home_dir, [*self.overrides, *extra])


def inject_one_by_one(memory, pool: Sequence[PoolFact], track: Sequence[PoolFact] | None = None,
                      on_point: Callable[[dict], None] | None = None) -> list[dict]:
    """Inject each fact as its own edit. With ``track`` (facts stored earlier; may be empty),
    after each injection measure raw recall of ``track`` plus every fact injected so far (the
    capacity trajectory). ``on_point`` sees each point as it is made."""
    points = []
    for index, item in enumerate(pool, 1):
        outcome = memory.inject([item.fact], source="experiment")[0]
        point = {"fact": item.fact.prompt() + " " + item.object, "seconds": round(outcome.seconds, 2)}
        if track is not None:
            facts = [p.fact for p in [*track, *pool[:index]]]
            hits = [ok for ok, _ in probes.raw_recall(memory.backend, facts, memory.settings.probes)]
            point.update(facts=len(facts), recall=round(sum(hits) / len(facts), 4), degraded=len(facts) - sum(hits))
        if on_point is not None:
            on_point(point)
        points.append(point)
    return points


def measure(memory, facts: Sequence, base_ppl: float | None = None, chat: bool = True) -> dict:
    """The papers' columns for ``facts`` on the weights as now composed: raw and chat recall
    (the probe's question and a held-out wording), perplexity and its drift from ``base_ppl``."""
    facts = [getattr(f, "fact", f) for f in facts]
    cfg = memory.settings.probes
    row: dict = {"facts": len(facts)}
    if facts:
        hits = [ok for ok, _ in probes.raw_recall(memory.backend, facts, cfg)]
        row.update(raw=round(sum(hits) / len(facts), 4), degraded=len(facts) - sum(hits))
    if facts and chat:
        questions = [probes.chat_question(f) for f in facts]
        asked = memory.backend.chat(questions + [HELD_OUT.format(q) for q in questions], cfg.chat_max_new_tokens)
        said = [probes.answer_matches(text, f.object) for text, f in zip(asked, facts + facts)]
        row.update(chat=round(sum(said[:len(facts)]) / len(facts), 4),
                   chat_held_out=round(sum(said[len(facts):]) / len(facts), 4))
    ppl = memory.perplexity()
    row["perplexity"] = round(ppl, 4)
    if base_ppl:
        row["drift"] = round(ppl / base_ppl - 1.0, 5)
    return row


def stage_counts(memory) -> dict:
    counts = memory.ledger.counts()
    return {"edits": counts["edits"], **{f"stage_{k}": v for k, v in sorted(counts["facts_per_stage"].items())}}


def sleep_row(report: dict) -> dict:
    """The figures of one sleep report the experiments tabulate (and the hypnogram draws)."""
    keys = ("outcome", "raw_recall_before", "raw_recall_after", "degraded_before", "degraded_after",
            "refreshed", "pruned", "edits", "perplexity_before", "perplexity_after", "convergence",
            "sws_accepted", "sws_advanced", "rem_accepted", "audited", "locality", "leak", "stage_seconds",
            "stage_peak_rss_gb", "stage_part_seconds", "failures", "sws_reason", "sws_scale", "rem_reason", "run_id")
    row = {key: report.get(key) for key in keys}
    row["seconds"] = (report.get("stage_seconds") or {}).get("total")
    return row
