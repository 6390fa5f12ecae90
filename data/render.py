"""Render stored (or predicted) state sequences offscreen to mp4/gif videos or a png strip."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from trajebm.data.cache import episode_arrays
from trajebm.engine.errors import UsageError

VIDEO_SUFFIXES = (".mp4", ".gif")
STRIP_FRAMES = 8


def render_frames(env_id: str, states: np.ndarray, width: int = 256, height: int = 256,
                  include_velocities: bool = False) -> np.ndarray:
    """RGB frames (N, H, W, 3) of the hand set to each of ``states`` (N, D) in turn."""
    import gymnasium as gym

    import trajebm.envs  # noqa: F401  (registers the envs, selects EGL)

    env = gym.make(env_id, include_velocities=include_velocities, render_mode="rgb_array",
                   width=width, height=height).unwrapped
    try:
        env.reset(seed=0)
        if states.shape[1:] != env.observation_space.shape:
            raise UsageError(f"states have shape {states.shape[1:]}, env expects "
                             f"{env.observation_space.shape}")
        frames = []
        for state in states:
            env.set_state_vector(state)
            frames.append(env.render())
    finally:
        env.close()
    return np.stack(frames)


def render_panels(env_id: str, panels: dict[str, np.ndarray], path: str | os.PathLike,
                  size: int = 160, fps: int = 25, include_velocities: bool = False
                  ) -> str | None:
    """An MP4 of state sequences side by side (each (T, D), the same T), every panel labelled
    with its name and the step.

    Returns None on success, else why the video was skipped (no OpenGL or no ffmpeg).
    """
    import imageio.v2 as imageio
    from PIL import Image, ImageDraw

    try:
        frames = np.concatenate([render_frames(env_id, states, size, size, include_velocities)
                                 for states in panels.values()], axis=2)
        for t, frame in enumerate(frames):
            image = Image.fromarray(frame)
            draw = ImageDraw.Draw(image)
            for i, name in enumerate(panels):
                draw.text((i * size + 4, 4), f"{name}  t={t + 1}", fill=(255, 255, 255))
            frames[t] = np.asarray(image)
        imageio.mimsave(path, list(frames), fps=max(1, fps), macro_block_size=1)
    except Exception as err:  # noqa: BLE001 - rendering is optional and backend-dependent
        return f"video skipped: {type(err).__name__}: {err}"
    return None


def render_episode(path: str | os.PathLike, episode: int, out: str | os.PathLike,
                   width: int = 256, height: int = 256, every: int = 1) -> Path:
    """Render episode ``episode`` of a dataset to ``out`` (.mp4/.gif video, .png frame strip)."""
    import imageio.v2 as imageio

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (*VIDEO_SUFFIXES, ".png"):
        raise UsageError(f"output must end in .mp4, .gif or .png, got {out.name!r}")
    if every <= 0 or width <= 0 or height <= 0:
        raise UsageError("--every, --width and --height must be positive")
    info, arrays = episode_arrays(path, progress=False)
    if not 0 <= episode < arrays.num_episodes:
        raise UsageError(f"episode {episode} out of range; the dataset has "
                         f"{arrays.num_episodes}")
    if info.dt is None:
        raise UsageError(f"{path} holds {info.env_id} data, which has no simulator to render")
    states = arrays.states[arrays.state_start[episode] : arrays.state_start[episode + 1]]
    chosen = states[::every].astype(np.float64)
    if suffix == ".png":
        chosen = states[np.linspace(0, len(states) - 1, STRIP_FRAMES).astype(int)].astype(float)
    frames = render_frames(info.env_id, chosen, width, height, info.include_velocities)
    out.parent.mkdir(parents=True, exist_ok=True)
    fps = max(1, round(1.0 / (info.dt * every)))
    if suffix == ".png":
        imageio.imwrite(out, np.concatenate(list(frames), axis=1))
    elif suffix == ".gif":
        imageio.mimsave(out, list(frames), duration=1000.0 / fps, loop=0)
    else:
        imageio.mimsave(out, list(frames), fps=fps, macro_block_size=1)
    return out
