"""Generate a DFDC-layout sample dataset from a real face photograph.

``python -m dfpipe.sampledata OUT --videos N --seed S`` writes ``OUT/dfdc_train_part_K/`` folders with
H.264 clips and a ``metadata.json`` each. Faces come from scikit-image's ``data.astronaut()``;
each video gets its own identity (colour, geometry, background). REAL clips move a camera smoothly
over the scene; each FAKE re-renders its original and blends a warped, re-coloured face into the
face region with small frame-to-frame jitter, the temporal inconsistency the model should learn.
``--swap matched`` makes the harder variant (colour-matched, feathered swaps; see ``SWAPS``).
Besides the regular clips it writes a clip with no face, one with two faces, a portrait clip and
a clip with an odd frame size. Output is deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

import cv2
import numpy as np

# The face in data.astronaut() (512x512), found once with MTCNN: x1, y1, x2, y2.
_ASTRONAUT_FACE = (181, 62, 268, 172)
# Head-and-shoulders crop around it, in the same image.
_HEAD_CROP = (120, 10, 330, 270)


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip; a FAKE carries its original's scene plus a swap."""

    video_id: str
    label: str  # "REAL" | "FAKE"
    part: int
    width: int
    height: int
    n_frames: int
    fps: float
    scene_seed: int
    n_faces: int = 1
    swap_seed: int | None = None  # set for FAKE clips
    original: str | None = None
    kind: str = "regular"  # regular | no_face | two_faces | portrait | odd_size | poster (see paste_posters)
    swap: str = "standard"  # standard | matched (see SWAPS)


@dataclass
class SampleConfig:
    videos: int = 8
    seed: int = 0
    width: int = 320
    height: int = 240
    fps: float = 15.0
    frames: int = 45
    parts: int = 2
    specials: bool = True
    portrait_size: tuple[int, int] = (1080, 1920)
    portrait_frames: int = 12
    crf: int = 23
    swap: str = "standard"
    extra: dict = field(default_factory=dict)


def _astronaut_bgr() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def _video_ids(rng: np.random.Generator, n: int) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    ids: list[str] = []
    while len(ids) < n:
        vid = "".join(rng.choice(letters, 10))
        if vid not in ids:
            ids.append(vid)
    return ids


SWAPS = {
    "standard": "the donor face carries its own colour cast and flickers in brightness frame to frame",
    "matched": "harder: the donor is colour-matched to the face it covers each frame and feathered in, with "
    "less jitter and no flicker; REAL and FAKE clips get the same global grading and sensor noise",
}


def plan(cfg: SampleConfig) -> list[ClipSpec]:
    """Which clips to render, with their labels, parts and seeds."""
    if cfg.videos < 0 or cfg.parts < 1:
        raise ValueError("videos must be >= 0 and parts >= 1")
    if cfg.swap not in SWAPS:
        raise ValueError(f"swap must be one of {sorted(SWAPS)}, got {cfg.swap!r}")
    rng = np.random.default_rng(cfg.seed)
    n_specials = 4 if cfg.specials else 0
    ids = _video_ids(rng, cfg.videos + n_specials)
    seeds = rng.integers(0, 2**31 - 1, size=2 * len(ids))
    n_real = (cfg.videos + 1) // 2
    common = dict(n_frames=cfg.frames, fps=cfg.fps, swap=cfg.swap)
    clips: list[ClipSpec] = []
    reals: list[ClipSpec] = []
    for i in range(n_real):
        clip = ClipSpec(
            ids[i], "REAL", i % cfg.parts, cfg.width, cfg.height, scene_seed=int(seeds[i]), **common
        )
        reals.append(clip)
        clips.append(clip)
    for j in range(cfg.videos - n_real):
        src = reals[j % n_real]
        i = n_real + j
        clips.append(
            ClipSpec(
                ids[i],
                "FAKE",
                src.part,
                src.width,
                src.height,
                scene_seed=src.scene_seed,
                swap_seed=int(seeds[len(ids) + i]),
                original=src.video_id,
                **common,
            )
        )
    if cfg.specials:
        base = cfg.videos
        pw, ph = cfg.portrait_size
        clips += [
            ClipSpec(
                ids[base],
                "REAL",
                0,
                cfg.width,
                cfg.height,
                scene_seed=int(seeds[base]),
                n_faces=0,
                kind="no_face",
                **common,
            ),
            ClipSpec(
                ids[base + 1],
                "REAL",
                0,
                cfg.width,
                cfg.height,
                scene_seed=int(seeds[base + 1]),
                n_faces=2,
                kind="two_faces",
                **common,
            ),
            ClipSpec(
                ids[base + 2],
                "REAL",
                0,
                pw,
                ph,
                cfg.portrait_frames,
                cfg.fps,
                int(seeds[base + 2]),
                kind="portrait",
                swap=cfg.swap,
            ),
            ClipSpec(
                ids[base + 3],
                "REAL",
                0,
                cfg.width | 1,
                (cfg.height - 1) | 1,
                scene_seed=int(seeds[base + 3]),
                kind="odd_size",
                **common,
            ),
        ]
    return clips


def _head_layout(n: int) -> list[tuple[float, float, float]]:
    """(x, y) centre as a fraction of the frame, and size divisor, of each of ``n`` heads."""
    if n <= 2:
        return {0: [], 1: [(0.5, 0.5, 1.0)], 2: [(0.28, 0.5, 1.35), (0.72, 0.5, 1.35)]}[n]
    rows = 1 if n <= 4 else 2
    cols = -(-n // rows)
    return [
        ((c + 0.5) / cols, (r + 0.5) / rows, max(1.35, 0.9 * cols, 1.1 * rows))
        for r in range(rows)
        for c in range(cols)
        if r * cols + c < n
    ]


class _Scene:
    """A static canvas larger than the frame, with heads pasted on it, filmed by a moving camera."""

    def __init__(self, spec: ClipSpec, photo: np.ndarray):
        rng = np.random.default_rng(spec.scene_seed)
        self.spec = spec
        w, h = spec.width, spec.height
        self.cw, self.ch = int(w * 1.5), int(h * 1.5)
        self.canvas = self._background(rng)
        self.face_boxes: list[tuple[float, float, float, float]] = []
        x1, y1, x2, y2 = _HEAD_CROP
        head = photo[y1:y2, x1:x2]
        for k, (cx_frac, cy_frac, scale_div) in enumerate(_head_layout(spec.n_faces)):
            self._paste_head(head, rng, cx_frac, scale_div + (0.1 * k if spec.n_faces == 2 else 0.0), cy_frac)
        if spec.n_faces == 0:
            for _ in range(6):
                color = tuple(int(c) for c in rng.integers(0, 255, 3))
                p1 = (int(rng.integers(0, self.cw)), int(rng.integers(0, self.ch)))
                p2 = (p1[0] + int(rng.integers(20, 120)), p1[1] + int(rng.integers(20, 120)))
                cv2.rectangle(self.canvas, p1, p2, color, -1)
        # Smooth camera: pan, zoom and a small rotation, each a slow sinusoid.
        self.motion = rng.uniform(-1, 1, size=6)

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        c0, c1 = rng.integers(30, 220, size=(2, 3))
        t = np.linspace(0, 1, self.cw, dtype=np.float32)[None, :, None]
        bg = (c0[None, None, :] * (1 - t) + c1[None, None, :] * t).astype(np.float32)
        bg = np.repeat(bg, self.ch, axis=0)
        noise = rng.normal(0, 6, size=(self.ch // 8 + 1, self.cw // 8 + 1, 3)).astype(np.float32)
        bg += cv2.resize(noise, (self.cw, self.ch), interpolation=cv2.INTER_LINEAR)
        return np.clip(bg, 0, 255).astype(np.uint8)

    def _paste_head(
        self,
        head: np.ndarray,
        rng: np.random.Generator,
        cx_frac: float,
        scale_div: float,
        cy_frac: float = 0.5,
    ) -> None:
        # Identity: colour (hue, saturation, brightness) and geometry (aspect, shear).
        hsv = cv2.cvtColor(head, cv2.COLOR_BGR2HSV).astype(np.int16)
        hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-8, 9))) % 180
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.7, 1.3), 0, 255)
        hsv[..., 2] = np.clip(hsv[..., 2] * rng.uniform(0.8, 1.15), 0, 255)
        head = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)
        target_h = self.spec.height * 0.85 / max(scale_div, 1.0)
        s = target_h / head.shape[0]
        sx, sy = s * rng.uniform(0.88, 1.12), s * rng.uniform(0.92, 1.08)
        shear = rng.uniform(-0.08, 0.08)
        hh, hw = head.shape[:2]
        out_w, out_h = int(hw * sx + abs(shear) * hh * sy) + 2, int(hh * sy) + 2
        m = np.array([[sx, shear * sy, max(0.0, -shear * hh * sy)], [0, sy, 0]], dtype=np.float32)
        warped = cv2.warpAffine(head, m, (out_w, out_h), flags=cv2.INTER_LINEAR)
        mask = cv2.warpAffine(np.full((hh, hw), 255, np.uint8), m, (out_w, out_h))
        mask = (
            cv2.GaussianBlur(cv2.erode(mask, np.ones((5, 5), np.uint8)), (9, 9), 0).astype(np.float32)[
                ..., None
            ]
            / 255
        )
        x0 = int(self.cw * (0.5 + (cx_frac - 0.5) / 1.5) - out_w / 2)
        y0 = int(self.ch * (0.5 + (cy_frac - 0.5) / 1.5) - out_h / 2 + self.spec.height * 0.08)
        x0 = min(max(x0, 0), self.cw - out_w)
        y0 = min(max(y0, 0), self.ch - out_h)
        roi = self.canvas[y0 : y0 + out_h, x0 : x0 + out_w].astype(np.float32)
        self.canvas[y0 : y0 + out_h, x0 : x0 + out_w] = (roi * (1 - mask) + warped * mask).astype(np.uint8)
        fx1, fy1, fx2, fy2 = _ASTRONAUT_FACE
        hx, hy = _HEAD_CROP[:2]
        pts = np.array([[fx1 - hx, fy1 - hy, 1], [fx2 - hx, fy2 - hy, 1]], np.float32) @ m.T
        self.face_boxes.append((x0 + pts[0, 0], y0 + pts[0, 1], x0 + pts[1, 0], y0 + pts[1, 1]))

    def camera(self, t: float) -> np.ndarray:
        """The affine map from canvas to frame at time ``t`` (seconds)."""
        a = self.motion
        w, h = self.spec.width, self.spec.height
        zoom = 1.0 + 0.08 * np.sin(0.6 * t + a[0])
        angle = 3.0 * np.sin(0.4 * t + a[1])
        pan_x = 0.05 * w * np.sin(0.5 * t + a[2]) * a[3]
        pan_y = 0.04 * h * np.sin(0.45 * t + a[4]) * a[5]
        m = cv2.getRotationMatrix2D((self.cw / 2, self.ch / 2), angle, zoom)
        m[0, 2] += w / 2 - self.cw / 2 + pan_x
        m[1, 2] += h / 2 - self.ch / 2 + pan_y
        return m

    def frame(self, i: int, canvas: np.ndarray | None = None) -> np.ndarray:
        m = self.camera(i / self.spec.fps)
        return cv2.warpAffine(
            self.canvas if canvas is None else canvas,
            m,
            (self.spec.width, self.spec.height),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT,
        )


class _FaceSwap:
    """Blends a warped, re-coloured face into the scene's face region, jittered frame to frame."""

    def __init__(self, scene: _Scene, photo: np.ndarray, seed: int, matched: bool = False):
        self.scene = scene
        self.rng = np.random.default_rng(seed)
        self.matched = matched
        fx1, fy1, fx2, fy2 = _ASTRONAUT_FACE
        pad = 8
        face = photo[fy1 - pad : fy2 + pad, fx1 - pad : fx2 + pad]
        # Donor identity: another colour cast (matched swaps undo it each frame) and a mild warp.
        gains = self.rng.uniform(0.85, 1.15, size=3)
        self.donor = np.clip(face.astype(np.float32) * gains, 0, 255)
        self.donor = cv2.flip(self.donor, 1) if self.rng.random() < 0.5 else self.donor
        self.warp = self.rng.uniform(-0.06, 0.06, size=2)

    def apply(self, canvas: np.ndarray) -> np.ndarray:
        out = canvas.copy()
        x1, y1, x2, y2 = self.scene.face_boxes[0]
        w, h = x2 - x1, y2 - y1
        jitter = self.rng.normal(0, 1, size=5)
        if self.matched:
            jitter[:3] *= 0.6  # less jitter, and no brightness flicker (colour matching sets it)
            jitter[3:] = 0.0
        scale = 1.0 + 0.04 * jitter[0]
        cx = (x1 + x2) / 2 + 0.03 * w * jitter[1]
        cy = (y1 + y2) / 2 + 0.03 * h * jitter[2]
        tw, th = int(w * scale * (1 + self.warp[0])), int(h * scale * (1 + self.warp[1]))
        if tw < 4 or th < 4:
            return out
        donor = cv2.resize(self.donor, (tw, th)) * (1.0 + 0.05 * jitter[3]) + 4.0 * jitter[4]
        mask = np.zeros((th, tw), np.float32)
        cv2.ellipse(mask, (tw // 2, th // 2), (int(tw * 0.42), int(th * 0.46)), 0, 0, 360, 1.0, -1)
        mask = cv2.GaussianBlur(mask, (0, 0), max(tw, th) * (0.1 if self.matched else 0.06))[..., None]
        ox, oy = int(cx - tw / 2), int(cy - th / 2)
        H, W = out.shape[:2]
        sx0, sy0 = max(0, -ox), max(0, -oy)
        ex, ey = min(tw, W - ox), min(th, H - oy)
        if ex <= sx0 or ey <= sy0:
            return out
        roi = out[oy + sy0 : oy + ey, ox + sx0 : ox + ex].astype(np.float32)
        d, mk = donor[sy0:ey, sx0:ex], mask[sy0:ey, sx0:ex]
        if self.matched:
            d = _match_colour(d, roi, mk[..., 0] > 0.5)
        out[oy + sy0 : oy + ey, ox + sx0 : ox + ex] = np.clip(roi * (1 - mk) + d * mk, 0, 255).astype(
            np.uint8
        )
        return out


def _match_colour(src: np.ndarray, ref: np.ndarray, where: np.ndarray) -> np.ndarray:
    """``src`` with the per-channel mean and spread of ``ref`` inside ``where`` (a colour transfer)."""
    if where.sum() < 16:
        return src
    s, r = src[where], ref[where]
    return (src - s.mean(0)) / (s.std(0) + 1e-3) * r.std(0) + r.mean(0)


def _grade(frame: np.ndarray, spec: ClipSpec, i: int) -> np.ndarray:
    """The global look of a matched-swap clip: a colour grade of its scene (shared by a FAKE and its
    original) and fresh sensor noise every frame, on REAL and FAKE clips alike."""
    rng = np.random.default_rng([spec.scene_seed, 1])
    gains, gamma, sigma = rng.uniform(0.9, 1.1, 3), rng.uniform(0.85, 1.15), rng.uniform(1.0, 3.0)
    x = 255.0 * (frame.astype(np.float32) / 255.0) ** gamma * gains
    x += np.random.default_rng([spec.scene_seed, 2, i]).normal(0, sigma, frame.shape)
    return np.clip(x, 0, 255).astype(np.uint8)


def _ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise RuntimeError(
            "ffmpeg is not installed; install it (apt-get install ffmpeg) to generate H.264 clips"
        )
    return exe


def paste_posters(frame: np.ndarray, photo: np.ndarray) -> np.ndarray:
    """False-positive faces of real footage, fixed to the frame: a printed photo in the lower right
    corner (0.35 of the frame's height) and a tiny face in the upper left (a tenth)."""
    x1, y1, x2, y2 = _HEAD_CROP
    head = photo[y1:y2, x1:x2]
    h, w = frame.shape[:2]
    out = frame.copy()
    for frac, (ax, ay) in ((0.35, (0.97, 0.97)), (0.1, (0.04, 0.05))):
        ph = max(8, int(h * frac))
        pw = max(8, int(ph * head.shape[1] / head.shape[0]))
        small = cv2.resize(head, (pw, ph), interpolation=cv2.INTER_AREA)
        x0 = int(min(max(ax * w - pw / 2, 0), w - pw))
        y0 = int(min(max(ay * h - ph / 2, 0), h - ph))
        out[y0 : y0 + ph, x0 : x0 + pw] = small
    return out


def write_clip(spec: ClipSpec, path: str, photo: np.ndarray | None = None, crf: int = 23) -> None:
    """Render ``spec`` frame by frame straight into an ffmpeg/libx264 process (no whole video in memory)."""
    photo = _astronaut_bgr() if photo is None else photo
    scene = _Scene(spec, photo)
    matched = spec.swap == "matched"
    swap = _FaceSwap(scene, photo, spec.swap_seed, matched) if spec.swap_seed is not None else None
    # Odd sizes need 4:4:4 chroma; libx264's 4:2:0 requires even dimensions.
    pix_fmt = "yuv420p" if spec.width % 2 == 0 and spec.height % 2 == 0 else "yuv444p"
    cmd = [
        _ffmpeg(),
        "-y",
        "-loglevel",
        "error",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "bgr24",
        "-s",
        f"{spec.width}x{spec.height}",
        "-r",
        str(spec.fps),
        "-i",
        "-",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-crf",
        str(crf),
        "-pix_fmt",
        pix_fmt,
        "-threads",
        "1",
        "-fflags",
        "+bitexact",
        "-flags:v",
        "+bitexact",
        "-movflags",
        "+faststart",
        path,
    ]
    tmp = path + ".part.mp4"
    cmd[-1] = tmp
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for i in range(spec.n_frames):
            canvas = swap.apply(scene.canvas) if swap else None
            frame = scene.frame(i, canvas)
            if spec.kind == "poster":
                frame = paste_posters(frame, photo)
            if matched:
                frame = _grade(frame, spec, i)
            proc.stdin.write(frame.tobytes())
        proc.stdin.close()
        err = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            raise RuntimeError(f"ffmpeg failed for {spec.video_id}: {err.strip()}")
        os.replace(tmp, path)
    finally:
        if proc.poll() is None:
            proc.kill()
        if os.path.exists(tmp):
            os.unlink(tmp)


def generate(out_dir: str, cfg: SampleConfig) -> list[ClipSpec]:
    """Write the dataset under ``out_dir`` and return what was written."""
    clips = plan(cfg)
    photo = _astronaut_bgr()
    by_part: dict[int, dict] = {}
    for clip in clips:
        part_dir = os.path.join(out_dir, f"dfdc_train_part_{clip.part}")
        os.makedirs(part_dir, exist_ok=True)
        write_clip(clip, os.path.join(part_dir, f"{clip.video_id}.mp4"), photo, cfg.crf)
        by_part.setdefault(clip.part, {})[f"{clip.video_id}.mp4"] = {
            "label": clip.label,
            "split": "train",
            "original": f"{clip.original}.mp4" if clip.original else None,
        }
    for part, meta in by_part.items():
        with open(os.path.join(out_dir, f"dfdc_train_part_{part}", "metadata.json"), "w") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
    return clips


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dfpipe.sampledata", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="output folder (created)")
    p.add_argument("--videos", type=int, default=8, help="regular clips, half REAL and half FAKE (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--frames", type=int, default=45, help="frames per regular clip")
    p.add_argument("--parts", type=int, default=2, help="dfdc_train_part_K folders")
    p.add_argument(
        "--no-specials", action="store_true", help="skip the no-face, two-face, portrait and odd-size clips"
    )
    p.add_argument("--portrait-size", default="1080x1920", help="WxH of the portrait clip")
    p.add_argument("--portrait-frames", type=int, default=12)
    p.add_argument(
        "--swap",
        choices=sorted(SWAPS),
        default="standard",
        help="; ".join(f"{k}: {v}" for k, v in SWAPS.items()),
    )
    args = p.parse_args(argv)
    try:
        pw, ph = (int(v) for v in args.portrait_size.lower().split("x"))
    except ValueError:
        p.error(f"--portrait-size must look like 1080x1920, got {args.portrait_size!r}")
    if args.videos < 0 or args.frames < 1 or args.parts < 1 or args.width < 16 or args.height < 16:
        p.error("need --videos >= 0, --frames >= 1, --parts >= 1 and a frame of at least 16x16")
    cfg = SampleConfig(
        videos=args.videos,
        seed=args.seed,
        width=args.width,
        height=args.height,
        fps=args.fps,
        frames=args.frames,
        parts=args.parts,
        specials=not args.no_specials,
        portrait_size=(pw, ph),
        portrait_frames=args.portrait_frames,
        swap=args.swap,
    )
    clips = generate(args.out, cfg)
    n_fake = sum(c.label == "FAKE" for c in clips)
    print(f"wrote {len(clips)} clips ({len(clips) - n_fake} REAL, {n_fake} FAKE) under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
