"""Chunking in backend.studies.dispatch."""

from __future__ import annotations

import pytest

from backend.studies.dispatch import chunk_split


@pytest.mark.parametrize(("n", "max_size", "sizes"), [
    (500, 128, [125, 125, 125, 125]),
    (129, 128, [64, 65]),
    (128, 128, [128]),
    (3, 128, [3]),
    (7, 2, [1, 2, 2, 2]),
    (0, 128, []),
])
def test_chunks_are_as_few_as_the_limit_allows_and_of_equal_sizes(
    n: int, max_size: int, sizes: list[int]
) -> None:
    items = [f"id-{i}" for i in range(n)]
    chunks = chunk_split(items, max_size=max_size)
    assert [len(c) for c in chunks] == sizes
    assert [item for chunk in chunks for item in chunk] == items  # order kept, none lost


def test_chunk_size_below_one_still_splits_into_single_items() -> None:
    assert chunk_split(["a", "b"], max_size=0) == [["a"], ["b"]]
