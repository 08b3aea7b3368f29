"""Tier 2: the segmenter end to end after extraction, on the session's local Ray."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from dfpipe import records as R
from dfpipe import storage
from dfpipe.cli import main
from dfpipe.outputs import read_summary, read_windows
from dfpipe.storage import Folder


def independent_window_count(
    faces: pd.DataFrame, strides: dict, usable=("ok", "multi_face"), wl=16, ws=8
) -> dict:
    """Windows per video counted with pandas, independently of dfpipe.segment.windows."""
    out = {}
    t = faces[faces.track_id.notna() & faces.flag.isin(usable)].sort_values(
        ["video_id", "track_id", "frame_idx"]
    )
    for (vid, _), g in t.groupby(["video_id", "track_id"]):
        new_run = g.frame_idx.diff().ne(strides[vid]).cumsum()
        for _, run in g.groupby(new_run):
            n = len(run)
            out[vid] = out.get(vid, 0) + ((n - wl) // ws + 1 if n >= wl else 0)
    return out


def segment(inp, out, *extra) -> int:
    return main(["segment", "--input", str(inp), "--output", str(out), *extra])


@pytest.fixture(scope="module", params=[2, 3], ids=["stride2", "stride3"])
def extracted_at(request, ray_session, sample_dataset, extracted_sample, tmp_path_factory):
    """The sample extracted at frame strides 2 (the session's extraction) and 3: windows must follow
    the stride (stride 1, where frame numbers and sampled frames coincide, would hide a mix-up)."""
    if request.param == 2:
        return extracted_sample, 2
    out = tmp_path_factory.mktemp(f"extract-stride{request.param}") / "extract"
    args = ["face_size=64", f"frame_stride={request.param}"]
    assert main(["extract", "--input", str(sample_dataset), "--output", str(out), *args]) == 0
    return out, request.param


def test_segment_end_to_end(extracted_at, tmp_path):
    extracted_sample, stride = extracted_at
    wl, ws = 4, 2
    out = tmp_path / "seg"
    assert segment(extracted_sample, out, f"window_len={wl}", f"window_stride={ws}") == 0
    manifest = storage.read_parquet_dir(str(extracted_sample / "videos"), schema=R.VIDEOS_SCHEMA).to_pandas()
    assert (manifest[manifest.status == "ok"].frame_stride == stride).all()
    faces = storage.read_parquet_dir(
        str(extracted_sample / "faces"),
        columns=["video_id", "track_id", "frame_idx", "flag"],
        schema=R.FACES_SCHEMA,
    ).to_pandas()
    summary = read_summary(Folder(str(out))).to_pandas().set_index("video_id")
    windows = read_windows(Folder(str(out))).to_pandas()

    assert set(summary.index) == set(manifest.video_id), "every extracted video has a summary row"
    expected = independent_window_count(
        faces, dict(zip(manifest.video_id, manifest.frame_stride, strict=True)), wl=wl, ws=ws
    )
    for vid, row in summary.iterrows():
        assert row.n_windows == expected.get(vid, 0) == (windows.video_id == vid).sum(), vid
        if row.n_windows == 0:
            assert row.reason, f"{vid}: a video without windows says why"
    assert windows.window_id.is_unique
    assert len(windows) >= 8, "the sample gives windows at this stride"
    assert (windows.frame_stride == stride).all()
    assert (windows.end_frame - windows.start_frame == (wl - 1) * stride).all(), "a window spans wl frames"
    assert windows.groupby("video_id").split.nunique().max() == 1, "no video in two splits"
    by_id = manifest.set_index("video_id")
    for vid, row in summary[summary.label == R.LABEL_FAKE].iterrows():
        assert row.split == summary.loc[by_id.loc[vid, "original"], "split"], (
            "a FAKE shares its original's split"
        )
    stats = json.loads((out / "stats.json").read_text())
    assert stats["windows"] == len(windows) and stats["videos"] == len(summary)
    assert sum(s["videos"] for s in stats["splits"].values()) == len(summary)
    source = json.loads((out / "config.json").read_text())["source"]
    assert source["uri"] == str(extracted_sample)


def test_segment_rerun_and_part_splits(extracted_sample, tmp_path):
    out = tmp_path / "seg"
    args = ["val_parts=dfdc_train_part_1", "remainder=align_end", "window_len=4", "window_stride=2"]
    assert segment(extracted_sample, out, *args) == 0
    assert read_windows(Folder(str(out))).num_rows > 0
    files = sorted(p.name for p in (out / "windows").iterdir())
    first = read_windows(Folder(str(out))).sort_by("window_id")
    assert segment(extracted_sample, out, *args) == 0
    assert sorted(p.name for p in (out / "windows").iterdir()) == files
    assert json.loads((out / "stats.json").read_text())["run"]["videos_processed"] == 0
    summary = read_summary(Folder(str(out))).to_pandas()
    assert set(summary[summary.part == "dfdc_train_part_1"].split) == {"val"}
    assert set(summary[summary.part != "dfdc_train_part_1"].split) == {"train"}
    # Other settings on the same output are refused, --overwrite redoes everything identically.
    assert segment(extracted_sample, out, "window_len=6") == 2
    assert segment(extracted_sample, out, *args, "--overwrite") == 0
    assert read_windows(Folder(str(out))).sort_by("window_id").equals(first)


def test_segment_recovers_from_a_crash_between_windows_and_summary(extracted_sample, tmp_path):
    out = tmp_path / "seg"
    assert segment(extracted_sample, out, "window_len=4") == 0
    before = read_windows(Folder(str(out))).num_rows
    assert before > 0
    (summary_file,) = list((out / "videos").iterdir())
    summary_file.unlink()  # as if the driver died after writing windows, before the summary
    assert segment(extracted_sample, out, "window_len=4") == 0
    assert read_windows(Folder(str(out))).num_rows == before, "no duplicated windows after the rerun"


def test_segment_refuses_a_non_extraction_input(tmp_path, capsys):
    assert segment(tmp_path, tmp_path / "out") == 2
    assert "run 'dfpipe extract' first" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arg,match",
    [("window_len=0", "window_len"), ("usable_flags=ok,bogus", "unknown flag"), ("min_len=4", "min_len")],
)
def test_segment_bad_config(tmp_path, capsys, arg, match):
    assert segment(tmp_path, tmp_path / "out", arg) == 2
    assert match in capsys.readouterr().err
