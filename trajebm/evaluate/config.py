"""The evaluation settings, shared by ``evaluate``, ``compare`` and the demo."""

from __future__ import annotations

from dataclasses import dataclass

from trajebm.engine.errors import UsageError


@dataclass
class EvalConfig:
    """Evaluation settings: horizon, samples per test context, physics subsampling."""

    horizon: int = 96
    """Predicted steps per rollout (at most what the test trajectories hold after k states)."""
    samples: int = 4
    """Samples per test context (a deterministic model gets one)."""
    langevin_steps: int | None = None
    """Sampler steps per predicted state: an EBM's Langevin steps, a flow's ODE steps
    (default: as trained)."""
    max_episodes: int | None = None
    """Use at most N test episodes."""
    physics_episodes: int = 32
    """Test starts whose rollouts get the physics check."""
    physics_every: int = 2
    """Check every n-th predicted step."""
    seed: int = 0
    """Seed of the rollouts' sampling."""
    device: str = "cpu"
    """cpu | cuda"""
    plots: bool = True
    """Draw the FD and coordinate plots."""
    render: bool = True
    """Render the frame strip (and a video when OpenGL allows)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.horizon <= 0 or self.samples <= 0:
            raise UsageError("horizon and samples must be positive")
        if self.physics_every <= 0 or self.physics_episodes <= 0:
            raise UsageError("physics_episodes and physics_every must be positive")
