"""errors.shorten: the one way a message quotes what a user sent, cut short. Each former copy's output, pinned."""
import pytest

from phi3lora.errors import SHOWN_CHARS, shorten

LONG = "x" * 100


def test_a_value_that_fits_is_quoted_whole():
    assert shorten("learning_rate") == "'learning_rate'"
    assert shorten(3) == "3" and shorten(None) == "None"
    assert shorten("a" * (SHOWN_CHARS - 2)) == repr("a" * (SHOWN_CHARS - 2))  # its repr is exactly the limit


def test_the_default_is_configs_repr_cut_to_sixty():
    assert shorten(LONG) == "'" + "x" * 56 + "..."
    assert shorten(list(range(50))) == repr(list(range(50)))[:57] + "..."


def test_the_dataset_reader_keeps_the_closing_quote():
    assert shorten(LONG, end="...'") == "'" + "x" * 55 + "...'"


def test_text_as_it_is_for_the_hub_id_and_the_data_tab():
    assert shorten(LONG, as_repr=False) == "x" * 57 + "..."
    assert shorten(LONG, 80, as_repr=False) == "x" * 77 + "..."
    assert shorten("owner/name", as_repr=False) == "owner/name"


@pytest.mark.parametrize("limit", [10, 60, 80])
@pytest.mark.parametrize("end", ["...", "...'"])
def test_never_longer_than_the_limit(limit, end):
    for value in (LONG, "é" * 500, ["a"] * 100, {"k" * 90: 1}):
        assert len(shorten(value, limit, end=end)) <= limit
