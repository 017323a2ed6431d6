"""Look-alike subjects used to keep edits specific: general, deterministic, never the test's names."""

from sleepwake.factpool import FIRST_NAMES, LAST_NAMES
from sleepwake.models.entities import FIRST, GENERIC, LAST, contrast_subjects


def test_anchor_names_are_disjoint_from_the_synthetic_pool():
    # Evaluation subjects come from the pool's lists; an anchor must never be one of them,
    # or specificity would be measured on names the method was told about.
    pool_words = set(FIRST_NAMES) | set(LAST_NAMES)
    assert not (set(FIRST) | set(LAST)) & pool_words
    assert not {w for g in GENERIC for w in g.split()} & pool_words


def test_contrast_subjects_share_name_parts_and_are_deterministic():
    subjects = contrast_subjects("Naledi Bakshi", 12)
    assert len(subjects) == 12 and len(set(subjects)) == 12
    assert "Naledi Bakshi" not in subjects
    assert sum(s.endswith(" Bakshi") for s in subjects) >= 3  # family members
    assert sum(s.startswith("Naledi ") for s in subjects) >= 3  # namesakes
    assert subjects == contrast_subjects("Naledi Bakshi", 12)
    assert contrast_subjects("Naledi Bakshi", 12) != contrast_subjects("Ulla Bakshi", 12)


def test_contrast_subjects_for_one_word_and_zero():
    assert contrast_subjects("Paris", 0) == []
    others = contrast_subjects("Paris", 5)
    assert len(others) == 5 and "Paris" not in others
