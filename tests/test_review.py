"""Tier 1: the review page's parts without Ray: which videos get rows, unusable frames, escaping."""

from __future__ import annotations

from html.parser import HTMLParser

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfpipe import records as R
from dfpipe.score import review


def scores(probs: list[float], labels: list[int | None] | None = None, **columns) -> pa.Table:
    n = len(probs)
    rows = {
        "video_id": [f"v{i:05d}" for i in range(n)],
        "uri": [f"/data/v{i:05d}.mp4" for i in range(n)],
        "filename": [f"v{i:05d}.mp4" for i in range(n)],
        "part": ["p0"] * n,
        "split": [None] * n,
        "prob_fake": probs,
        "label": labels if labels is not None else [None] * n,
        "n_windows": [1] * n,
        "n_tracks": [1] * n,
        "n_tracks_counted": [1] * n,
        "reason": [None] * n,
    }
    rows.update(columns)
    schema = pa.schema([R.SCORES_SCHEMA.field(c) for c in review.TABLE_COLUMNS])
    return pa.Table.from_pydict(rows, schema=schema)


def test_full_rows_are_the_most_suspicious_then_the_worst_mistakes():
    probs = [0.9, 0.8, 0.7, 0.2, 0.1, 0.6, 0.4]
    labels = [1, 0, 1, 1, 1, None, 0]  # mistakes at 0.5: v1 (0.8 REAL), v3 (0.2 FAKE), v4 (0.1 FAKE)
    chosen = review.selection(scores(probs, labels), top=2)
    # the 2 most suspicious (v0, v1), then mistakes not among them, the most confident first: v4, v3
    assert chosen.column("video_id").to_pylist() == ["v00000", "v00001", "v00003", "v00004"]
    assert review.selection(scores(probs, labels), top=1).column("video_id").to_pylist() == [
        "v00000",
        "v00004",  # one mistake at most: the most confidently wrong
    ]
    assert review.selection(scores(probs, labels), top=0).num_rows == 0


@given(st.lists(st.floats(0.01, 0.99), max_size=60), st.integers(0, 30), st.integers(0, 80))
def test_the_page_is_bounded_whatever_the_number_of_videos(probs, top, rows):
    labels = [i % 3 - 1 if i % 3 else None for i in range(len(probs))]
    table = scores(probs, labels)
    chosen = review.selection(table, top)
    listed = review.listed(table, rows, chosen)
    assert chosen.num_rows <= min(2 * top, len(probs))
    assert listed.num_rows <= min(rows + chosen.num_rows, len(probs))
    assert set(chosen.column("video_id").to_pylist()) <= set(listed.column("video_id").to_pylist())
    listed_probs = listed.column("prob_fake").to_pylist()
    assert listed_probs == sorted(listed_probs, reverse=True)
    assert listed.num_rows == len(set(listed.column("video_id").to_pylist()))


def test_unusable_frames_come_as_runs_with_their_reason():
    frames = [0, 1, 1, 2, 3, 4, 5, 6, 8]
    flags = ["no_face", "small_face", "ok", "no_face", "no_face", "low_prob", "ok", "no_face", "no_face"]
    runs = review.unusable_runs(frames, flags, ("ok", "multi_face"))
    # frame 1 has a usable face beside a small one; 6 and 8 are consecutive sampled frames
    assert runs == [(0, 0, 1, "no_face"), (2, 3, 2, "no_face"), (4, 4, 1, "low_prob"), (6, 8, 2, "no_face")]


def test_only_addresses_a_browser_can_follow_safely_become_links():
    assert review._link("/data/a b.mp4") == '<a href="file:///data/a%20b.mp4">/data/a b.mp4</a>'
    assert review._link("s3://bucket/x.mp4").startswith('<a href="s3://bucket/x.mp4">')
    assert review._link("javascript:alert(1)") == "javascript:alert(1)"  # text, never a link
    assert "<script" not in review._link('https://h/"><script>x</script>')


class Elements(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.elements: list[tuple[str, dict]] = []
        self.text = ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text += data


@pytest.mark.parametrize("field", ["filename", "uri", "part", "split", "reason"])
def test_markup_in_any_field_of_a_video_is_shown_as_text(field):
    markup = """<img src=x onerror="document.title='pwned'"><script>alert(1)</script>"""
    table = scores([0.7, 0.3], [1, 0], **{field: [markup, None]})
    html = review.page(
        model_version="m",
        recipe={"extract": {"note": markup}},
        counts={"videos": 2},
        report=None,
        rows=table,
        details={"v00000": "<p>detail</p>"},
        left_out=0,
        top=500,
    )
    page = Elements(html)
    assert not [a for _, a in page.elements if "onerror" in a]
    assert [t for t, _ in page.elements].count("script") == 1  # the page's own
    assert markup in page.text
