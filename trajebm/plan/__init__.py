"""Planning with trajectory models: goal-directed hand control, judged in MuJoCo.

Tasks (:mod:`.tasks`: rotate, pose, move, lift) give a differentiable cost on predicted states
and a success check on true ones; planners (:mod:`.planners`, :mod:`.langevin`: MPPI, CEM,
gradient shooting, the energy's own joint Langevin, random, and the simulator oracle) choose
actions through any trajectory model (:mod:`.dynamics`); :mod:`.episodes` executes them in
MuJoCo; :mod:`.job` is `trajebm plan`, :mod:`.matrix` its comparison across models, planners
and seeds, :mod:`.online` the PETS/PDDM loop of planning, collecting and retraining.
"""

from trajebm.plan.episodes import Episodes, goal_generator, reset_seeds, run_episodes
from trajebm.plan.job import BEST_PLANNER, PLANNERS, PlanConfig, make_planner, plan, run_plan
from trajebm.plan.tasks import TASKS, Task

__all__ = ["BEST_PLANNER", "PLANNERS", "TASKS", "Episodes", "PlanConfig", "Task",
           "goal_generator", "make_planner", "plan", "reset_seeds", "run_episodes", "run_plan"]
