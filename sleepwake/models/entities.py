"""Look-alike subjects for specificity: the edit should not fire for them.

MEMIT's covariance C comes from ordinary text, where the last token of a name is rare, so the
update direction C^-1 k barely discounts what a subject shares with others (a surname token,
"person-name-ness"); the edit then also fires for family members and namesakes. For each edit,
keys of look-alike subjects built from the edited subject (same surname, same first name,
unrelated anchors) are added to C (``LayerStats.metric_for``). The anchor lists are disjoint from
the synthetic fact pool's names (a test checks it), so evaluation subjects are never anchors.
"""

from __future__ import annotations

FIRST = (
    "Abigail", "Adrian", "Agnes", "Albert", "Alice", "Ambrose", "Bernard", "Bianca", "Carmen", "Cedric",
    "Clara", "Cyrus", "Daniel", "Delia", "Edgar", "Eleanor", "Elias", "Fiona", "Felix", "Gemma",
    "Gideon", "Harriet", "Henrik", "Iris", "Isaac", "Jade", "Julian", "Kira", "Leon", "Lydia",
    "Marcus", "Maya", "Nathan", "Olga", "Oliver", "Petra", "Rupert", "Sabine", "Tobias", "Vera",
)
LAST = (
    "Abbott", "Baker", "Brennan", "Carter", "Costa", "Dalton", "Ellison", "Fischer", "Garcia", "Grant",
    "Hughes", "Ivanova", "Jensen", "Keller", "Kim", "Larsen", "Lopez", "Mendes", "Murphy", "Nolan",
    "Olsen", "Park", "Quinn", "Reyes", "Russo", "Silva", "Singh", "Sullivan", "Turner", "Weber",
)
GENERIC = (
    "my sister", "my brother", "my mother", "my father", "my best friend", "our neighbour", "my boss",
    "my grandmother", "the new teacher", "the team captain", "my doctor", "our landlord", "the user",
    "the old bakery", "the red bicycle", "our company", "the local library", "my laptop", "the project",
    "the small cafe", "our family dog", "the hotel", "my favourite band", "the museum", "the startup",
    "the football team", "my car", "the garden", "the university", "the village", "the river",
    "Project Falcon", "Northwind Labs", "Harbor Street", "Cedar Lake", "Maple Systems", "Blue Ridge",
    "the Ortega family", "Station Seven", "Saint Albans",
)


def contrast_subjects(subject: str, count: int) -> list[str]:
    """Subjects that look like ``subject`` but are someone else: the edit must not fire on them.

    A third keep the last word (another first name, same surname: family members), a third keep
    the first word, the rest are unrelated anchors. Deterministic per subject (hash-free: the
    choice walks the anchor lists from an index derived from the subject's characters).
    """
    if count <= 0:
        return []
    words = subject.split()
    offset = sum(ord(ch) * (i + 1) for i, ch in enumerate(subject))
    pick = lambda pool, i: pool[(offset + 7 * i) % len(pool)]  # noqa: E731
    out: list[str] = []
    for i in range(count * 2):
        kind = i % 3
        if len(words) >= 2 and kind == 0:
            candidate = " ".join([pick(FIRST, i)] + words[1:])
        elif len(words) >= 2 and kind == 1:
            candidate = " ".join(words[:-1] + [pick(LAST, i)])
        elif len(words) == 1 and kind < 2:
            candidate = pick(GENERIC, i)
        else:
            candidate = f"{pick(FIRST, i + 3)} {pick(LAST, i + 5)}"
        if candidate != subject and candidate not in out:
            out.append(candidate)
        if len(out) == count:
            break
    return out
