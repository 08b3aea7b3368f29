"""A corpus of bad inputs, generated rather than committed: ``python -m dfpipe.sampledata.corpus OUT``.

Writes ``OUT/dataset``, a DFDC-style dataset in which each entry is broken in one known way, beside
a few good clips, and ``OUT/expected.json``: for every video id, the status and reason code the
extraction must record. ``OUT/outside`` holds a file the dataset links to and must never read.

Media: a zero-byte file, mp4s truncated at several points (index first and index last), random
bytes, audio without video, a stream declaring 7680x4320 frames, one frame, a display-matrix
rotation, variable frame rate, an odd frame size, a clip longer than the frame cap, ten faces.
Names: spaces, unicode, ``..``, an absolute path, a symlink leaving the dataset. Metadata: wrong
types, unknown labels, a byte-order mark, unparseable JSON, 100,000 entries for absent files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np

from dfpipe import records as R
from dfpipe.sampledata.generate import ClipSpec, _ffmpeg, write_clip

OK = R.STATUS_OK
FAILED = R.STATUS_FAILED
TRUNCATED = "truncated"  # an ok row whose error notes the frames lost


def _run(*args: str) -> None:
    proc = subprocess.run([_ffmpeg(), "-y", "-loglevel", "error", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed: {proc.stderr.strip()}")


def _clip(path: str, seed: int, frames: int = 30, size: tuple[int, int] = (320, 240), **kw) -> str:
    write_clip(
        ClipSpec(os.path.basename(path)[:-4], "REAL", 0, *size, frames, 15.0, scene_seed=seed, **kw), path
    )
    return path


def generate(out: str, max_frames: int = 300, huge_entries: int = 100_000) -> dict[str, dict]:
    """Write the corpus under ``out``; returns (and writes) the expected manifest outcome per video id."""
    data = os.path.join(out, "dataset")
    outside = os.path.join(out, "outside")
    if os.path.exists(data):
        shutil.rmtree(data)
    for d in ("good", "media", "names", "meta_types", "meta_broken", "meta_huge"):
        os.makedirs(os.path.join(data, d), exist_ok=True)
    os.makedirs(outside, exist_ok=True)
    expected: dict[str, dict] = {}

    def expect(video_id: str, status: str, reason: str | None = None, **checks) -> None:
        expected[video_id] = {"status": status, "reason": reason, **checks}

    def metadata(folder: str, entries: dict, bom: bool = False) -> None:
        text = json.dumps(entries, ensure_ascii=False)
        with open(
            os.path.join(data, folder, "metadata.json"), "w", encoding="utf-8-sig" if bom else "utf-8"
        ) as f:
            f.write(text)

    # Good clips: they must come out the same as in a clean run.
    good = os.path.join(data, "good")
    _clip(os.path.join(good, "good_real.mp4"), 1)
    write_clip(
        ClipSpec("good_fake", "FAKE", 0, 320, 240, 30, 15.0, scene_seed=1, swap_seed=7, original="good_real"),
        os.path.join(good, "good_fake.mp4"),
    )
    metadata(
        "good",
        {"good_real.mp4": {"label": "REAL"}, "good_fake.mp4": {"label": "FAKE", "original": "good_real.mp4"}},
    )
    expect("good_real", OK, None, min_faces=20)
    expect("good_fake", OK, None, min_faces=20)

    # Broken media, all listed with valid labels.
    media = os.path.join(data, "media")
    base = _clip(os.path.join(outside, "base.mp4"), 2)  # index (moov) first: +faststart
    index_last = os.path.join(outside, "base_index_last.mp4")
    _run("-i", base, "-c", "copy", index_last)
    raw = open(base, "rb").read()
    raw_last = open(index_last, "rb").read()
    open(os.path.join(media, "zero_byte.mp4"), "wb").close()
    expect("zero_byte", FAILED, R.REASON_DECODE_ERROR)
    for pct in (10, 50, 90):
        with open(os.path.join(media, f"trunc_index_last_{pct}.mp4"), "wb") as f:
            f.write(raw_last[: len(raw_last) * pct // 100])
        expect(f"trunc_index_last_{pct}", FAILED, R.REASON_DECODE_ERROR)
        with open(os.path.join(media, f"trunc_index_first_{pct}.mp4"), "wb") as f:
            f.write(raw[: len(raw) * pct // 100])
        # Index first: what was written before the cut decodes; at 10% and 50% not one whole frame is.
        if pct == 90:
            expect(f"trunc_index_first_{pct}", OK, TRUNCATED, min_faces=10)
        else:
            expect(f"trunc_index_first_{pct}", FAILED, R.REASON_DECODE_ERROR)
    with open(os.path.join(media, "random_bytes.mp4"), "wb") as f:
        f.write(np.random.default_rng(0).bytes(64 * 1024))
    expect("random_bytes", FAILED, R.REASON_DECODE_ERROR)
    _run(
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=1",
        "-c:a",
        "aac",
        os.path.join(media, "audio_only.mp4"),
    )
    expect("audio_only", FAILED, R.REASON_DECODE_ERROR)
    _run(
        "-f", "lavfi", "-i", "color=c=gray:s=7680x4320:d=0.04:r=25", "-frames:v", "1",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", os.path.join(media, "huge_dims.mp4"),
    )  # fmt: skip
    expect("huge_dims", FAILED, R.REASON_TOO_LARGE)
    _clip(os.path.join(media, "one_frame.mp4"), 3, frames=1)
    expect("one_frame", OK, None, n_frames=1)
    # A phone clip: pixels stored sideways, a display matrix that turns them upright.
    sideways = os.path.join(outside, "sideways.mp4")
    _run("-i", base, "-vf", "transpose=1", "-c:v", "libx264", "-preset", "veryfast", sideways)
    _run("-i", sideways, "-c", "copy", "-metadata:s:v:0", "rotate=90", os.path.join(media, "rotated.mp4"))
    expect("rotated", OK, None, rotation=270, width=320, height=240, min_faces=20)
    _run(
        "-i", base, "-vf", r"select=not(eq(mod(n\,4)\,1))", "-vsync", "vfr",
        "-c:v", "libx264", "-preset", "veryfast", os.path.join(media, "vfr.mp4"),
    )  # fmt: skip
    expect("vfr", OK, None, min_faces=10)
    _clip(os.path.join(media, "odd_size.mp4"), 4, size=(321, 243))
    expect("odd_size", OK, None, width=321, height=243)
    _clip(os.path.join(media, "long_clip.mp4"), 5, frames=max_frames + 60, size=(96, 72))
    expect("long_clip", OK, None, n_frames=max_frames)
    _clip(os.path.join(media, "ten_faces.mp4"), 6, frames=8, size=(640, 480), n_faces=10)
    expect("ten_faces", OK, None, min_tracks=8)
    _clip(os.path.join(media, "with space.mp4"), 7, frames=10)
    expect("with space", OK, None)
    _clip(os.path.join(media, "ünïcödé_名前.mp4"), 8, frames=10)
    expect("ünïcödé_名前", OK, None)
    listed = sorted(f for f in os.listdir(media) if f.endswith(".mp4"))
    metadata("media", {name: {"label": "REAL"} for name in listed})

    # Names that try to leave the dataset; the metadata has a byte-order mark.
    secret = os.path.join(outside, "secret.mp4")
    shutil.copy(base, secret)
    os.symlink(secret, os.path.join(data, "names", "link_out.mp4"))
    metadata(
        "names",
        {
            "../outside/secret.mp4": {"label": "FAKE"},
            secret: {"label": "FAKE"},
            "link_out.mp4": {"label": "REAL"},
        },
        bom=True,
    )
    expect("secret", FAILED, R.REASON_UNSAFE_PATH)
    expect("link_out", FAILED, R.REASON_UNSAFE_PATH)
    # The absolute and the relative escape share the stem "secret": the second gets a suffixed id.
    expect("secret@names", FAILED, R.REASON_UNSAFE_PATH)

    # Metadata with wrong types and unknown labels; every file is present and decodable.
    for stem in ("type_str", "label_int", "label_maybe", "label_list", "original_int"):
        os.link(base, os.path.join(data, "meta_types", f"{stem}.mp4"))
    metadata(
        "meta_types",
        {
            "type_str.mp4": "FAKE",
            "label_int.mp4": {"label": 3},
            "label_maybe.mp4": {"label": "MAYBE"},
            "label_list.mp4": {"label": ["FAKE"]},
            "original_int.mp4": {"label": "fake", "original": 5},
        },
    )
    expect("type_str", FAILED, R.REASON_BAD_METADATA)
    expect("label_int", FAILED, R.REASON_BAD_LABEL)
    expect("label_maybe", FAILED, R.REASON_BAD_LABEL)
    expect("label_list", FAILED, R.REASON_BAD_LABEL)
    expect("original_int", OK, None)

    # Unparseable metadata: one row says so; the video beside it is still processed, unlabelled.
    with open(os.path.join(data, "meta_broken", "metadata.json"), "w") as f:
        f.write('{"orphan.mp4": {"label": "REAL"')
    os.link(base, os.path.join(data, "meta_broken", "orphan.mp4"))
    expect("meta_broken/metadata.json", FAILED, R.REASON_BAD_METADATA)
    expect("orphan", OK, None)

    # A metadata.json of huge_entries entries, all but one for absent files.
    os.link(base, os.path.join(data, "meta_huge", "present.mp4"))
    entries = {f"absent_{i:06d}.mp4": {"label": "FAKE" if i % 2 else "REAL"} for i in range(huge_entries)}
    entries["present.mp4"] = {"label": "REAL"}
    metadata("meta_huge", entries)
    expect("present", OK, None)
    expected["absent_*"] = {"status": FAILED, "reason": R.REASON_MISSING_FILE, "count": huge_entries}

    with open(os.path.join(out, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False, sort_keys=True)
    return expected


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dfpipe.sampledata.corpus", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("out", help="output folder: dataset/, outside/ and expected.json are written in it")
    p.add_argument("--max-frames", type=int, default=300, help="the frame cap the long clip must exceed")
    p.add_argument("--huge-entries", type=int, default=100_000, help="entries of the large metadata.json")
    args = p.parse_args(argv)
    expected = generate(args.out, args.max_frames, args.huge_entries)
    print(f"wrote {len(expected) - 1 + args.huge_entries} bad or good entries under {args.out}/dataset")
    return 0


if __name__ == "__main__":
    sys.exit(main())
