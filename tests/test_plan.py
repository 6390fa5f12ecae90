"""Planning (issue 21): task checks, every planner on a linear system with a known optimum, the
oracle on the hand, replayable episodes, `trajebm plan` and its comparison, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from trajebm.cli import main
from trajebm.engine.errors import UsageError
from trajebm.modelio import load_model, save_model
from trajebm.models import EBMConfig, FCConfig, FeedForward, TrajectoryModel
from trajebm.plan import PlanConfig, run_plan
from trajebm.plan.dynamics import LearnedDynamics
from trajebm.plan.job import open_simulator
from trajebm.plan.langevin import LangevinPlanner
from trajebm.plan.matrix import PlanCompareConfig, compare_plans
from trajebm.plan.planners import ACTION_DIM, CEM, MPPI, Replanning, Shooting, Situation
from trajebm.plan.tasks import POSITION, QUATERNION, TASKS, axis_angle, quat_mul, rotation_angle

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
MODELS = LEGACY / "models"
ENV = "trajebm/ShadowHandBlock-v0"
D = 31


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as the console scripts use: spinning threads stall on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def simulator():
    sim = open_simulator(ENV, 1)
    yield sim
    sim.close()


def states_at(z: list[float], xy: tuple[float, float] = (0.0, 0.0),
              quat: np.ndarray | None = None) -> np.ndarray:
    """A hand-made trajectory (T+1, D): the object at heights ``z``, at ``xy``, oriented
    ``quat`` (identity by default)."""
    s = np.zeros((len(z), D))
    s[:, POSITION.start : POSITION.start + 2] = xy
    s[:, POSITION.stop - 1] = z
    s[:, QUATERNION] = [1.0, 0.0, 0.0, 0.0] if quat is None else quat
    return s


def test_lift_and_move_checks_on_hand_made_states():
    lift = TASKS["lift"]
    goal = lift.goals(states_at([0.1]), np.random.default_rng(0))
    assert goal[0, 0] == pytest.approx(0.12)
    runs = np.stack([states_at([0.1, 0.11, 0.124]),    # 4 mm short of 2 cm: success
                     states_at([0.1, 0.11, 0.114]),    # 6 mm short: fails
                     states_at([0.1, 0.065, 0.12])])   # on the goal, but dropped on the way
    goals = np.repeat(goal, 3, 0)
    assert lift.dropped(runs).tolist() == [False, False, True]
    assert lift.success(runs, goals).tolist() == [True, False, False]
    assert lift.final_error(runs, goals) == pytest.approx([0.004, 0.006, 0.0], abs=1e-9)

    move = TASKS["move"]
    start = states_at([0.1], xy=(0.01, -0.02))
    goal = move.goals(np.repeat(start, 4, 0), np.random.default_rng(1))
    assert np.linalg.norm(goal - [0.01, -0.02], axis=1) == pytest.approx([0.015] * 4)
    target = (goal[0, 0], goal[0, 1])
    near = states_at([0.1, 0.1], xy=(target[0] + 0.004, target[1]))
    far = states_at([0.1, 0.1], xy=(target[0], target[1] - 0.006))
    fell = states_at([0.1, 0.05], xy=target)
    assert move.success(np.stack([near, far, fell]), goal[:1].repeat(3, 0)).tolist() == [
        True, False, False]


@pytest.mark.parametrize("name", ["rotate", "pose"])
def test_rotation_checks_on_hand_made_states(name):
    task = TASKS[name]
    q0 = axis_angle(np.array([0.0, 1.0, 0.0]), np.array(0.2))
    start = np.repeat(states_at([0.1], quat=q0), 50, 0)
    goals = task.goals(start, np.random.default_rng(2))
    angles = rotation_angle(start[:, QUATERNION], goals)
    low, high = (0.3, 0.8) if name == "rotate" else (0.3, 0.6)
    assert np.all((angles >= low - 1e-9) & (angles <= high + 1e-9))
    if name == "rotate":  # about the world's vertical axis: q_goal q0^-1 has no x, y part
        q0_inv = q0 * [1.0, -1.0, -1.0, -1.0]
        assert np.abs(quat_mul(goals, q0_inv)[:, 1:3]).max() < 1e-9
    goal = goals[:1]

    def off(angle: float) -> np.ndarray:
        return quat_mul(axis_angle(np.array([1.0, 0.0, 0.0]), np.array(angle)), goal[0])

    runs = np.stack([states_at([0.1, 0.1], quat=off(0.08)),   # 0.08 rad off: success
                     states_at([0.1, 0.1], quat=-off(0.08)),  # the same orientation
                     states_at([0.1, 0.1], quat=off(0.12)),   # 0.12 rad off: fails
                     states_at([0.1, 0.0], quat=goal[0])])    # on target, dropped
    assert task.final_error(runs, goal.repeat(4, 0)) == pytest.approx([0.08, 0.08, 0.12, 0.0],
                                                                      abs=1e-6)
    assert task.success(runs, goal.repeat(4, 0)).tolist() == [True, True, False, False]


def test_costs_are_differentiable_in_tolerances_and_punish_drops():
    task = TASKS["lift"]
    states = torch.as_tensor(np.stack([states_at([0.11, 0.12]), states_at([0.05, 0.05])]),
                             dtype=torch.float32).requires_grad_(True)
    goal = torch.tensor([[0.12], [0.12]])
    cost = task.cost(states, goal, torch.tensor([0.1, 0.1]))
    assert cost[0].item() == pytest.approx(1.0, abs=1e-3)  # mean error 5 mm = one tolerance
    assert cost[1].item() > 100.0                           # below the drop height
    cost.sum().backward()
    assert torch.isfinite(states.grad).all() and states.grad[0, 0, 26] < 0


# A linear system with a known optimum: the object moves GAIN metres per step along x, y, z
# under action entries 0, 1, 2; the other 17 action entries do nothing. Models see it in z units
# of STD metres.
STD, GAIN = 0.01, 0.005
B = np.zeros((D, ACTION_DIM))
B[24, 0] = B[25, 1] = B[26, 2] = GAIN
B_Z = torch.as_tensor(B / STD, dtype=torch.float32)


class LinearRegression(FeedForward):
    """The system exactly, as a feed-forward model (for mppi, cem, shooting)."""

    def __init__(self) -> None:
        super().__init__(FCConfig(context=1, hidden=1, layers=1), np.zeros(D), np.full(D, STD))

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return self.last_state(cond) + cond[:, D:] @ B_Z.T


class LinearEnergy(TrajectoryModel):
    """A quadratic energy around the system's next state (for langevin)."""

    energy_based = True

    def __init__(self) -> None:
        super().__init__(EBMConfig(context=1, hidden=1, layers=1), np.zeros(D), np.full(D, STD))

    def mean(self, cond: torch.Tensor) -> torch.Tensor:
        return self.last_state(cond) + cond[:, D:] @ B_Z.T

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return 2.0 * (x - self.mean(cond)).pow(2).sum(1)

    def propose(self, cond: torch.Tensor, **_) -> torch.Tensor:
        return self.mean(cond).detach()


PLANNERS = {
    "mppi": lambda task: MPPI(LearnedDynamics(LinearRegression()), task, horizon=5,
                              candidates=200),
    "cem": lambda task: CEM(LearnedDynamics(LinearRegression()), task, horizon=5,
                            population=100, iterations=3),
    "shooting": lambda task: Shooting(LearnedDynamics(LinearRegression()), task, horizon=5,
                                      iterations=10, restarts=2),
    "langevin": lambda task: LangevinPlanner(LearnedDynamics(LinearEnergy()), task, horizon=5,
                                             chains=8, steps=30),
}


@pytest.mark.parametrize("task_name", ["lift", "move"])
@pytest.mark.parametrize("planner_name", list(PLANNERS))
def test_every_planner_reaches_the_goal_of_a_linear_system(planner_name, task_name):
    torch.manual_seed(0)
    task, n, steps = TASKS[task_name], 3, 10
    planner = PLANNERS[planner_name](task)
    start = np.repeat(states_at([0.1]), n, 0)
    goal = task.goals(start, np.random.default_rng(0))
    history, previous = start[:, None], np.zeros((n, ACTION_DIM))
    planner.reset(n)
    for t in range(steps):
        now = Situation(history, goal, start[:, POSITION.stop - 1], t, previous)
        previous = np.clip(planner.act(now), -1.0, 1.0)
        history = np.concatenate([history, (history[:, -1] + previous @ B.T)[:, None]], 1)
        assert planner.prediction.shape == (n, planner.horizon, D)
    error = task.final_error(history, goal)
    assert np.all(error < task.tolerance), error  # from 15-20 mm to within 5 mm
    assert task.success(history, goal).all()


class Counting(MPPI):
    """MPPI on the linear system that counts its replans."""

    def __init__(self, task) -> None:
        super().__init__(LearnedDynamics(LinearRegression()), task, horizon=4, candidates=100)
        self.replans = 0

    def act(self, now: Situation) -> np.ndarray:
        self.replans += 1
        return super().act(now)


def test_replanning_every_k_steps_executes_the_plan_in_between():
    torch.manual_seed(0)
    task, n, every = TASKS["lift"], 2, 3
    inner = Counting(task)
    planner = Replanning(inner, every)
    start = np.repeat(states_at([0.1]), n, 0)
    goal = task.goals(start, np.random.default_rng(0))
    history, previous, executed = start[:, None], np.zeros((n, ACTION_DIM)), []
    planner.reset(n)
    for t in range(9):
        now = Situation(history, goal, start[:, POSITION.stop - 1], t, previous)
        if t % every:
            expected = inner.mean[:, 0].clamp(-1, 1).numpy()
        previous = planner.act(now)
        if t % every:
            np.testing.assert_allclose(previous, expected)  # the plan's next action
        executed.append(previous)
        history = np.concatenate([history, (history[:, -1] + previous @ B.T)[:, None]], 1)
        assert planner.prediction.shape == (n, inner.horizon, D)
    assert inner.replans == 3  # steps 0, 3, 6
    assert task.final_error(history, goal).max() < task.final_error(start[:, None], goal).min()
    with pytest.raises(ValueError, match="every <= horizon"):
        Replanning(Counting(task), 5)


def test_the_oracle_solves_lift(simulator):
    cfg = PlanConfig(task="lift", planner="oracle", episodes=1, length=8, horizon=5, budget=32,
                     seed=3, progress=False)
    episodes = run_plan(None, cfg, simulator)
    assert episodes.success.all(), episodes.final_error
    assert episodes.final_error[0] < TASKS["lift"].tolerance
    assert episodes.extra["planner"] == "oracle"


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """`trajebm plan` with a tiny fc model (its default planner: mppi) on lift."""
    out = tmp_path_factory.mktemp("plan") / "run"
    status = main(["plan", "--task", "lift", "--model", str(MODELS / "fc.pt"), "--episodes",
                   "2", "--length", "4", "--horizon", "3", "--budget", "8", "--seed", "4",
                   "--no-video", "--quiet", "--out", str(out)])
    assert status == 0
    return out


def test_plan_writes_episodes_and_summary(planned):
    with np.load(planned / "episodes.npz") as f:
        arrays = dict(f)
    e, t = 2, 4
    shapes = {"reset_seed": (e,), "goal": (e, 1), "actions": (e, t, ACTION_DIM),
              "states": (e, t + 1, D), "predicted_final": (e, D), "success": (e,),
              "final_error": (e,)}
    for key, shape in shapes.items():
        assert arrays[key].shape == shape, key
    assert np.abs(arrays["actions"]).max() <= 1.0 and np.isfinite(arrays["predicted_final"]).all()
    summary = json.loads((planned / "summary.json").read_text())
    assert {"success_rate", "final_error", "ms_per_step", "self_deception"} <= set(summary)
    assert summary["planner"] == "mppi" and summary["task"] == "lift"
    assert summary["success_rate"] == arrays["success"].mean()
    assert (planned / "run.json").exists()


def test_a_recorded_episode_replays_to_the_same_states(planned):
    with np.load(planned / "episodes.npz") as f:
        seeds, actions, states = f["reset_seed"], f["actions"], f["states"]
    env = gym.make(ENV).unwrapped
    for seed, acts, recorded in zip(seeds, actions, states, strict=True):
        replay = [env.reset(seed=int(seed))[0]]
        replay += [env.step(a)[0] for a in acts]
        np.testing.assert_allclose(np.array(replay), recorded, rtol=0, atol=1e-9)
    env.close()


def test_plan_refuses_an_out_that_holds_a_run(planned, capsys):
    status = main(["plan", "--task", "lift", "--planner", "random", "--out", str(planned)])
    err = capsys.readouterr().err
    assert status == 2 and "already holds" in err and len(err.strip().splitlines()) == 1


def test_compare_with_two_seeds_writes_its_table_and_figure(tmp_path, capsys):
    for seed, name in enumerate(["fc.pt", "fc-paper.pt"]):  # a {seed} pattern of fc runs
        (tmp_path / f"fc-s{seed}").mkdir()
        shutil.copy(MODELS / name, tmp_path / f"fc-s{seed}" / "model.pt")
    pattern, out = str(tmp_path / "fc-s{seed}"), tmp_path / "cmp"
    args = ["plan", "--compare", "--models", pattern, "random", "--tasks", "lift", "--seeds",
            "2", "--episodes", "2", "--length", "3", "--horizon", "3", "--budget", "8",
            "--budgets", "4", "8", "--resamples", "50", "--quiet", "--out", str(out)]
    assert main(args) == 0
    assert "| random | random |" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["rows"]["lift"]
    fc = rows[f"{pattern} (mppi)"]
    assert set(rows) == {f"{pattern} (mppi)", "random"}
    assert len(fc["success"]["per_seed"]) == 2
    assert fc["success"]["low"] <= fc["success"]["value"] <= fc["success"]["high"]
    assert fc["self_deception"] is not None and rows["random"]["self_deception"] is None
    assert [p["budget"] for p in fc["budget_curve"]] == [4, 8] and not rows["random"][
        "budget_curve"]
    poi = summary["probability_of_improvement"]["lift"]
    assert poi["random"][f"{pattern} (mppi)"]["value"] + poi[f"{pattern} (mppi)"]["random"][
        "value"] == pytest.approx(1.0)
    cell = out / "fc-sseed" / "mppi" / "lift"
    assert sorted(p.name for p in cell.iterdir()) == ["budget4", "seed0", "seed1"]
    assert "| random | random |" in (out / "summary.md").read_text()
    assert (out / "success_budget.png").stat().st_size > 0

    # resuming: refused without --resume; a lost cell is planned again, identically
    assert main(args) == 2 and "--resume" in capsys.readouterr().err
    with np.load(cell / "seed1" / "episodes.npz") as f:
        before = dict(f)
    (cell / "seed1" / "summary.json").unlink()
    assert main([*args, "--resume"]) == 0
    with np.load(cell / "seed1" / "episodes.npz") as f:
        for key, value in before.items():
            np.testing.assert_array_equal(f[key], value)
    with pytest.raises(UsageError, match="episodes=2"):
        compare_plans([pattern], out, PlanCompareConfig(tasks=("lift",), seeds=2, episodes=3),
                      resume=True)


@pytest.fixture(scope="module")
def other_layout(tmp_path_factory):
    """A model whose states are laid out differently from the env's."""
    model = load_model(MODELS / "fc.pt")
    names = list(model.state_names)
    model.meta["state_names"] = names[1:] + names[:1]
    return save_model(model, tmp_path_factory.mktemp("layout") / "model.pt")


BAD = {
    "unknown task": (["--model", "fc.pt", "--task", "spin"], "unknown task"),
    "unknown planner": (["--model", "fc.pt", "--planner", "magic"], "unknown planner"),
    "another layout": (["--model", "LAYOUT", "--task", "lift"], "not the env's"),
    "unconditional": (["--model", "ebm-uncond.pt"], "unconditional"),
    "no energy": (["--model", "fc.pt", "--planner", "langevin"], "needs an energy"),
    "no model": (["--planner", "mppi"], "give --model"),
    "horizon 0": (["--model", "fc.pt", "--horizon", "0"], "horizon must be positive"),
    "episodes 0": (["--model", "fc.pt", "--episodes", "0"], "episodes must be positive"),
    "budget -1": (["--model", "fc.pt", "--budget", "-1"], "budget must be positive"),
    "replan every 0": (["--model", "fc.pt", "--replan-every", "0"],
                       "replan_every must be positive"),
    "replan past the horizon": (["--model", "fc.pt", "--horizon", "3", "--replan-every", "4"],
                                "every <= horizon"),
    "not a hand env": (["--model", "fc.pt", "--env", "CartPole-v1"], "unknown env"),
    "models without --compare": (["--models", "fc.pt"], "--models belongs to --compare"),
    "compare unknown task": (["--compare", "--models", "fc.pt", "--tasks", "spin"],
                             "unknown task"),
    "compare another layout": (["--compare", "--models", "LAYOUT"], "not the env's"),
    "compare unconditional": (["--compare", "--models", "ebm-uncond.pt"], "unconditional"),
    "compare no planner fits": (["--compare", "--models", "fc.pt", "--planners", "langevin"],
                                "none of the planners"),
    "compare budgets 0": (["--compare", "--models", "random", "--budgets", "0"],
                          "budgets must be positive"),
    "compare one-run option": (["--compare", "--models", "random", "--task", "lift"],
                               "--task belongs to a single planning run"),
    "compare missing seed": (["--compare", "--models", "nowhere-s{seed}"], "no such model"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(case, tmp_path, other_layout, capsys):
    args, message = BAD[case]
    fixture = {"fc.pt": MODELS / "fc.pt", "ebm-uncond.pt": MODELS / "ebm-uncond.pt",
               "LAYOUT": other_layout}
    args = [str(fixture.get(a, a)) for a in args]
    out = tmp_path / "out"
    assert main(["plan", *args, "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trajebm: error:") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


# ---------------------------------------------------------------- the online loop

def test_a_grown_dataset_holds_the_old_episodes_and_the_new(tmp_path):
    from trajebm.data import TrajectoryDataset
    from trajebm.data.extend import extend_dataset

    source = tmp_path / "hand"
    shutil.copytree(LEGACY / "hand", source)
    before = (source / "data" / "main_data.hdf5").read_bytes()
    old = TrajectoryDataset(source)
    rng = np.random.default_rng(0)
    states, actions = rng.normal(size=(3, 7, 31)), rng.uniform(-1, 1, (3, 6, 20))
    grown = extend_dataset(source, states, actions, tmp_path / "grown", seeds=[1, 2, 3],
                           origin={"what": "test"})
    ds = TrajectoryDataset(grown)
    assert ds.arrays.num_episodes == old.arrays.num_episodes + 3
    assert list(ds.arrays.lengths[-3:]) == [6, 6, 6]
    np.testing.assert_allclose(ds._states(ds.arrays.state_start[-4:-1][:, None] + np.arange(7),
                                          False), states)
    assert ds.info.document["trajebm"]["extended"][0]["origin"] == {"what": "test"}
    assert (source / "data" / "main_data.hdf5").read_bytes() == before
    with pytest.raises(UsageError, match="exists"):
        extend_dataset(source, states, actions, tmp_path / "grown")
    with pytest.raises(UsageError, match="new actions"):
        extend_dataset(source, states, actions[:, :3], tmp_path / "other")


def test_the_online_loop_resumes_to_what_an_unbroken_loop_gives(tmp_path):
    data = tmp_path / "hand"
    shutil.copytree(LEGACY / "hand", data)
    model = str(LEGACY / "models" / "fc.pt")
    args = ["plan", "--model", model, "--data", str(data), "--task", "lift", "--planner",
            "mppi", "--budget", "8", "--length", "4", "--episodes", "2",
            "--collect-episodes", "2", "--steps", "3", "--quiet"]
    assert main([*args, "--iterations", "2", "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--iterations", "1", "--out", str(tmp_path / "b")]) == 0
    shutil.copytree(tmp_path / "a" / "iter2" / "data", tmp_path / "b" / "iter2" / "data")  # killed
    assert main([*args, "--iterations", "2", "--out", str(tmp_path / "b")]) == 0
    for part in ("data/data/main_data.hdf5", "model/model.pt"):
        a, b = (tmp_path / run / "iter2" / part for run in ("a", "b"))
        if part.endswith(".pt"):
            for x, y in zip(torch.load(a, weights_only=True)["state_dict"].values(),
                            torch.load(b, weights_only=True)["state_dict"].values(), strict=True):
                assert torch.equal(x, y)
        else:
            assert a.read_bytes() == b.read_bytes()
    report = json.loads((tmp_path / "a" / "online.json").read_text())
    assert [r["iteration"] for r in report["iterations"]] == [0, 1, 2]
    assert (tmp_path / "a" / "online.png").exists()
    assert main([*args, "--iterations", "2", "--steps", "4", "--out", str(tmp_path / "a")]) == 2
