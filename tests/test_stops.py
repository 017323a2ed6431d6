"""Stop sequences: the reply is cut before the first one, and a stream, however the text is split into
pieces, sends exactly that cut reply and never a character of a stop sequence."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sleepwake.chat.stops import StopStream, cut, held_back


def test_cut_ends_before_the_earliest_stop_sequence():
    assert cut("Thought: go\nObservation: done", ["Observation:", "\n"]) == ("Thought: go", True)
    assert cut("no stop here", ["###"]) == ("no stop here", False)
    assert cut("abc", []) == ("abc", False)
    assert cut("abc", [""]) == ("abc", False)  # an empty sequence never stops a reply


def test_held_back_is_the_longest_tail_that_starts_a_stop_sequence():
    assert held_back("Hello\nUs", ["\nUser:"]) == 3
    assert held_back("Hello", ["\nUser:"]) == 0
    assert held_back("ab", ["abc", "bcd"]) == 2  # 'ab' starts 'abc'
    assert held_back("x#", ["##", "#"]) == 1  # a whole one-character sequence is cut, not held


def stream_of(pieces: list[str], stops: list[str]) -> list[str]:
    sent: list[str] = []
    stream = StopStream(sent.append, stops)
    for piece in pieces:
        stream(piece)
    stream.close()
    return sent


def test_a_stop_sequence_split_across_pieces_is_never_shown():
    sent = stream_of(["The answer is 4", "2.\nUs", "er: and then"], ["\nUser:"])
    assert "".join(sent) == "The answer is 42."
    assert stream_of(["partial \nUs"], ["\nUser:"]) == ["partial ", "\nUs"]  # held back, then sent: no stop came


alphabet = st.sampled_from(list("ab\n :"))


@given(text=st.text(alphabet, max_size=40), cuts=st.lists(st.integers(0, 40), max_size=8),
       stops=st.lists(st.text(alphabet, min_size=1, max_size=4), max_size=3))
def test_any_split_of_any_text_streams_exactly_the_cut_reply(text, cuts, stops):
    bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    assert "".join(stream_of(pieces, stops)) == cut(text, stops)[0]
