"""What travels between stages: column names, flag values and Arrow schemas.

Every other module imports its column names from here, so a schema change is one edit.
"""

from __future__ import annotations

import pyarrow as pa

# Per-frame flags, in order of precedence when a face fails more than one test.
FLAG_OK = "ok"
FLAG_NO_FACE = "no_face"
FLAG_MULTI_FACE = "multi_face"
FLAG_LOW_PROB = "low_prob"
FLAG_SMALL_FACE = "small_face"
FRAME_FLAGS = (FLAG_OK, FLAG_NO_FACE, FLAG_MULTI_FACE, FLAG_LOW_PROB, FLAG_SMALL_FACE)

N_LANDMARKS = 5  # MTCNN: the eyes, the nose and the mouth corners (landmarks are N x 2)

STATUS_OK = "ok"
STATUS_FAILED = "failed"

# Video-level failure reasons. The text after the reason (``reason: detail``) is free-form.
REASON_MISSING_FILE = "missing_file"
REASON_UNSAFE_PATH = "unsafe_path"
REASON_DUPLICATE_ID = "duplicate_id"
REASON_BAD_METADATA = "bad_metadata"
REASON_BAD_LABEL = "bad_label"
REASON_DECODE_ERROR = "decode_error"
REASON_TOO_LARGE = "too_large"
REASON_TIMEOUT = "timeout"
REASON_READ_ERROR = "read_error"
REASON_INTERNAL = "internal_error"

LABEL_FAKE = 1
LABEL_REAL = 0

# One row per input video, before any processing.
CATALOG_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("filename", pa.string()),
        ("part", pa.string()),
        ("label", pa.int8()),  # 1 FAKE, 0 REAL, null unknown
        ("original", pa.string()),
        ("error", pa.string()),  # set when the catalog already knows the video cannot be processed
    ]
)

# One row per frame and face track under ``faces/``. A frame with no face has one row with
# a null track and box, so every decoded frame is accounted for.
FACES_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("part", pa.string()),
        ("label", pa.int8()),
        ("frame_idx", pa.int32()),
        ("track_id", pa.int32()),
        ("flag", pa.string()),
        ("prob", pa.float32()),
        ("box_x1", pa.float32()),
        ("box_y1", pa.float32()),
        ("box_x2", pa.float32()),
        ("box_y2", pa.float32()),
        ("detected", pa.bool_()),  # false where the box was interpolated between keyframes
        ("face_jpeg", pa.binary()),
        # MTCNN's five landmarks (left eye, right eye, nose, left and right mouth corner) as
        # [x0, y0, ..., x4, y4] in the box's frame ((0, 0) its top-left, (1, 1) its bottom-right);
        # interpolated with the box between keyframes; null where there is no box. Shards written
        # before landmarks were kept lack the column (``faces_columns`` reads them as null).
        ("landmarks", pa.list_(pa.float32(), 2 * N_LANDMARKS)),
    ]
)

# One row per input video under ``videos/``: the manifest.
VIDEOS_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("filename", pa.string()),
        ("part", pa.string()),
        ("label", pa.int8()),
        ("original", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("n_frames", pa.int32()),  # decoded frames kept (after stride and cap)
        ("fps", pa.float32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("rotation", pa.int16()),
        ("frame_stride", pa.int16()),
        ("n_tracks", pa.int32()),
        ("n_one_frame_tracks", pa.int32()),  # tracks seen on a single frame: tracking lost the face
        ("n_detected", pa.int32()),  # frames the face detector ran on; the others were interpolated
        *[(f"n_{flag}", pa.int32()) for flag in FRAME_FLAGS],
        ("faces_uri", pa.string()),
        ("config_hash", pa.string()),
        ("elapsed_s", pa.float32()),
    ]
)


# One row per window under ``windows/``: ``n_frames`` frames of one track, consecutive at
# ``frame_stride``, from ``start_frame`` to ``end_frame`` inclusive.
WINDOWS_SCHEMA = pa.schema(
    [
        ("window_id", pa.string()),
        ("video_id", pa.string()),
        ("track_id", pa.int32()),
        ("label", pa.int8()),
        ("part", pa.string()),
        ("split", pa.string()),
        ("start_frame", pa.int32()),
        ("end_frame", pa.int32()),
        ("n_frames", pa.int32()),
        ("frame_stride", pa.int16()),
        ("faces_uri", pa.string()),
        ("counted", pa.bool_()),  # whether its track counts towards the video's score (windows.TrackRule)
    ]
)

SPLITS = ("train", "val", "test")
# Why frames of a video ended up in no window (besides the unusable flags themselves).
DROP_REASONS = (*FRAME_FLAGS, "short_run", "remainder", "duplicate")

# One row per video under the segmenter's ``videos/``, windows or not.
SEGMENTS_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("label", pa.int8()),
        ("part", pa.string()),
        ("original", pa.string()),
        ("split", pa.string()),
        ("extract_status", pa.string()),
        ("reason", pa.string()),  # why the video has no window; null when it has some
        ("n_frames", pa.int32()),
        ("n_tracks", pa.int32()),
        ("n_tracks_counted", pa.int32()),
        ("n_runs", pa.int32()),
        ("n_short_runs", pa.int32()),
        ("n_windows", pa.int32()),
        *[(f"dropped_{r}", pa.int32()) for r in DROP_REASONS],
        ("config_hash", pa.string()),
    ]
)

# One row per face track under the segmenter's ``tracks/``: the evidence that decides whether
# the track counts towards its video's score, and why not when it does not.
TRACKS_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("track_id", pa.int32()),
        ("n_frames", pa.int32()),
        ("face_px", pa.float32()),  # median short side of its boxes, full-resolution pixels
        ("mean_prob", pa.float32()),
        ("share", pa.float32()),  # of the video's kept frames
        ("n_windows", pa.int32()),
        ("counted", pa.bool_()),
        ("reason", pa.string()),  # why it does not count; null when it does
    ]
)


# One row per window: its face codes from one embedder version (the classifier's input cache).
EMBEDDINGS_SCHEMA = pa.schema(
    [
        WINDOWS_SCHEMA.field(n)
        for n in (
            "window_id",
            "video_id",
            "track_id",
            "label",
            "part",
            "split",
            "start_frame",
            "n_frames",
            "counted",
        )
    ]
    + [("code_dim", pa.int32()), ("codes", pa.list_(pa.float32()))]  # codes: n_frames * code_dim, row-major
)

# One row per video under the embedding cache's ``videos/`` (the marker): the codes of its windows
# are in the chunk of the same name under ``windows/``.
EMBEDDED_VIDEOS_SCHEMA = pa.schema([("video_id", pa.string()), ("n_windows", pa.int32())])

# One row per video and model version under ``scores/``; every video of the dataset has one.
SCORES_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("filename", pa.string()),
        ("part", pa.string()),
        ("split", pa.string()),
        ("prob_fake", pa.float32()),
        ("label", pa.int8()),
        ("n_windows", pa.int32()),
        ("n_tracks", pa.int32()),
        ("n_tracks_counted", pa.int32()),
        ("reason", pa.string()),  # why the probability is a fallback (no usable window, failed extraction)
        ("model_version", pa.string()),
        ("scored_at", pa.string()),
    ]
)

# One row per scored window under ``window_scores/``.
WINDOW_SCORES_SCHEMA = pa.schema(
    [
        ("window_id", pa.string()),
        ("video_id", pa.string()),
        ("track_id", pa.int32()),
        ("start_frame", pa.int32()),
        ("label", pa.int8()),
        ("part", pa.string()),
        ("counted", pa.bool_()),
        ("logit", pa.float32()),
        ("prob_fake", pa.float32()),
        ("model_version", pa.string()),
    ]
)


def reason_of(error: str | None) -> str | None:
    """The reason code of an ``error`` string (``"decode_error: moov atom not found"`` -> ``decode_error``)."""
    if not error:
        return None
    return error.split(":", 1)[0].strip()
