"""Concept sets load by name or path; blanks and duplicates are reported, never shift labels."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cdissect_cli.concepts import (ConceptSetError, UnknownConceptSetError, available_concept_sets,
                                   load_concept_set)
from tests.conftest import SHARED

SIZES = {"20k": 20000, "10k": 9894, "3k": 3000, "broden": 1197, "imagenet": 1000, "places365": 365}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_shipped_sets_have_the_reference_sizes(name: str) -> None:
    cs = load_concept_set(name)
    assert len(cs.words) == SIZES[name] and cs.dropped_blank == 0
    assert cs.sha256 == hashlib.sha256("\n".join(cs.words).encode()).hexdigest()


def test_shipped_files_equal_the_shared_copies() -> None:
    shared = SHARED / "data" / "concept_sets"
    if not shared.is_dir():
        pytest.skip(f"{shared} absent (shared/ data lies beside the clone in CI)")
    for name in ("20k", "broden", "imagenet"):
        cs = load_concept_set(name)
        assert Path(cs.source).read_bytes() == (shared / Path(cs.source).name).read_bytes()


def test_reference_word_order_and_raw_strings() -> None:
    assert load_concept_set("20k").words[:3] == ["the", "of", "and"]
    assert load_concept_set("3k").words[-1] == "zone"                  # no trailing newline in 3k.txt
    assert load_concept_set("imagenet").words[0] == "tench, Tinca tinca"
    places = load_concept_set("places365").words
    assert places[0] == "airfield" and places[8] == "apartment building/outdoor"


def test_broden_duplicates_are_kept_and_listed() -> None:
    cs = load_concept_set("broden")
    assert len(cs.duplicates) == 44
    word, first, dup = cs.duplicates[0]
    assert first < dup and cs.words[first] == cs.words[dup] == word


def test_blank_lines_dropped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "mine.txt"
    path.write_text("dog\n\ncat\n   \nbird\r\ncat\n")
    cs = load_concept_set(path)
    assert cs.words == ["dog", "cat", "bird", "cat"]
    assert cs.dropped_blank == 2 and cs.duplicates == [("cat", 1, 3)] and cs.name == "mine"


def test_empty_file_names_file_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("\n\n")
    with pytest.raises(ConceptSetError, match=r"empty\.txt.*one concept per line"):
        load_concept_set(path)


def test_unknown_name_lists_the_names() -> None:
    with pytest.raises(UnknownConceptSetError) as err:
        load_concept_set("30k")
    for name in available_concept_sets():
        assert name in str(err.value)
