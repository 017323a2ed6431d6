"""Generic subject strings whose keys define the "entity covariance".

MEMIT's covariance C comes from ordinary text, where the last token of a name is rare, so the
update direction C^-1 k barely discounts what all names have in common (a shared surname token,
"person-name-ness"). The edit then fires for other subjects too (low specificity). Keys taken at
the last token of many generic subjects, mixed into C, make the solve prefer directions specific
to the edited subject. These lists are deliberately disjoint from the synthetic fact pool's
names (a test checks it), so evaluation subjects are never anchors.
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


def entity_subjects() -> list[str]:
    """~1,200 full names (first x last) plus generic subjects, in a fixed order."""
    return [f"{first} {last}" for first in FIRST for last in LAST] + list(GENERIC)
