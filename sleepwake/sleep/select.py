"""Which facts a sleep audits: what is at risk, plus a rotating share of the rest.

A night's work must be sized by what changed, not by the size of the memory. At risk are:

- changed: facts stored, replaced or refreshed since the last full sleep (and facts whose edit
  is missing);
- near: for each changed fact, the ``audit.near_facts`` stored facts whose subject key is closest
  to its own (centred cosine of the MLP keys at the first edited layer): an edit spills onto
  nearby keys, so they are the ones a new edit can break;
- degraded: facts whose latest verdict was unhealthy, or that were never audited.

The rest is audited in rotation, the longest-unaudited first, ``ceil(rest / K)`` per night for
``K = audit.coverage_nights``: every fact is audited at least once every K nights (the report
states K). The nap keeps its own, smaller selection (:func:`nap_selection`).
"""

from __future__ import annotations

import math
import time
from datetime import datetime

import torch

from sleepwake.models.editor import lookup_row
from sleepwake.sleep.health import finish
from sleepwake.sleep.results import CurateResult, SelectionResult
from sleepwake.sleep.session import SleepSession
from sleepwake.status import LAST_SLEEP_KEY


def select_facts(session: SleepSession, curated: CurateResult) -> SelectionResult:
    started = time.perf_counter()
    cfg = session.settings.audit
    rows = session.ledger.list_facts()
    since = session.ledger.get_meta(LAST_SLEEP_KEY)
    since_ts = datetime.fromisoformat(since) if since else None
    changed = {r.fact_id for r in rows if since_ts is None or (r.updated_at or r.created_at) > since_ts}
    changed |= set(curated.missing_ids)
    latest = session.ledger.latest_audits()
    degraded = {r.fact_id for r in rows if r.fact_id not in latest or latest[r.fact_id].get("healthy") is False}
    near = nearest_facts(session, rows, changed, cfg.near_facts) - changed
    at_risk = changed | near | degraded
    rest = sorted((r for r in rows if r.fact_id not in at_risk),
                  key=lambda r: (latest[r.fact_id]["ts"], r.fact_id))  # longest unaudited first
    share = math.ceil(len(rest) / cfg.coverage_nights) if rest else 0
    rotating = {r.fact_id for r in rest[:share]}
    picked = sorted(at_risk | rotating)
    result = SelectionResult(fact_ids=picked, total=len(rows), changed=len(changed), near=len(near),
                             degraded=len(degraded - changed), rotating=len(rotating),
                             coverage_nights=cfg.coverage_nights)
    result.rows = [{"reason": reason, "facts": count} for reason, count in
                   (("changed since the last sleep", len(changed)), ("near a changed fact's key", len(near)),
                    ("degraded or never audited", len(degraded - changed)), ("rotation", len(rotating)),
                    ("not audited tonight", len(rows) - len(picked)))]
    result.note = (f"Audited {len(picked)} of {len(rows)} facts; every fact is audited at least every "
                   f"{cfg.coverage_nights} nights (audit.coverage_nights).")
    return finish(session, result, started)


def nearest_facts(session: SleepSession, rows, changed: set[int], k: int) -> set[int]:
    """The ``k`` facts whose subject keys are closest to each changed fact's (centred cosine)."""
    if not changed or k <= 0 or len(rows) < 2:
        return set()
    keys = subject_keys(session, rows)  # (n, d_ff)
    keys = keys - keys.mean(dim=0, keepdim=True)
    keys = keys / keys.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    index = {r.fact_id: i for i, r in enumerate(rows)}
    picked_rows = torch.tensor([index[f] for f in sorted(changed) if f in index], dtype=torch.long)
    if len(picked_rows) == 0:
        return set()
    similarity = keys[picked_rows] @ keys.T  # (changed, n)
    similarity[torch.arange(len(picked_rows)), picked_rows] = -2.0  # not itself
    top = similarity.topk(min(k, len(rows) - 1), dim=-1).indices
    return {rows[int(i)].fact_id for i in top.flatten()}


def subject_keys(session: SleepSession, rows) -> torch.Tensor:
    """Each fact's MLP key at its subject's last token, first edited layer, bare prompt (n, d_ff):
    one batched forward that stops after that layer."""
    memory = session.memory
    layer = session.settings.memit.edit_layers()[0]
    lookups = [lookup_row(memory.backend, "", r.fact) for r in rows]
    keys, _ = memory.backend.layer_states(lookups, layer, layer, 64)
    return keys.float()


def nap_selection(session: SleepSession) -> list[int]:
    """A nap's audit: the most recently stored facts plus every fact degraded at the last audit."""
    rows = session.ledger.list_facts()
    recent = sorted(rows, key=lambda r: (r.updated_at or r.created_at, r.fact_id))
    count = session.settings.audit.recent_facts
    recent_ids = [r.fact_id for r in recent[-count:]] if count else []
    latest = session.ledger.latest_audits()
    degraded = [fid for fid, row in latest.items() if row.get("healthy") is False]
    known = {r.fact_id for r in rows}
    return sorted(set(recent_ids) | (set(degraded) & known))
