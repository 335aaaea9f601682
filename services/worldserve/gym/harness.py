"""`worldserve eval`: run a policy on N generated worlds, check the worlds' consistency, report.

For each of N worlds (prompts cycled from a prompt set) the harness creates a session, runs the
policy for ``steps`` steps (all worlds stepped together: one StepBatch per step), records the
trajectory, then probes the world the way an agent can (on forks, so the trajectory stays as
played):

- **turn around** (Genie 2's check): walk ``k`` steps right, then ``k`` left; a world that
  remembers shows the starting view again (PSNR of the last frame against the first, in dB;
  beside it, how far the view moved after the walk right, so a world that never moves cannot pass
  for one that remembers);
- **controllability**: two forks from the same step, ``k`` steps of opposite actions; a world that
  obeys its controls ends in different frames (PSNR between the two ends: lower is more
  controllable);
- **latency**: the wall time of every StepBatch (each of its steps waited that long).

Worlds are distinct or said not to be: the default prompt set holds as many different captions as
there are worlds, and a world whose first frame and actions repeat an earlier one's is reported as
a duplicate and left out of the aggregates (``distinct_worlds``). Where a ground truth exists -- the
model is one of the platformer's (its keys and frame size) and the prompt is a caption, or free text
the text app read as one (``understood``) -- the same
actions and checks run on the procedural game itself (``worldserve.worlds.platformer.Game`` with
the world's caption and seed), and the report gives the game's figures beside the model's, so a
reader knows what "good" is.

It writes ``report.json`` (per world and aggregated), ``latency.png`` and ``consistency.png``, and
the trajectories as a Minari dataset (Farama's offline-RL format; ``minari.load_dataset`` reads
it back). A policy is ``random``, ``scripted`` or a user's ``module:function`` called as
``fn(obs, info, action_space) -> action``; a policy that raises fails its world only (recorded in
the report, left out of the dataset) and the others go on.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from worldserve.client import WorldClient, new_request_id
from worldserve.common.caption import caption_of, parse_caption
from worldserve.gym.env import RAW, _frame, _World, grpc_error
from worldserve.v1 import common_pb2, dynamics_pb2

Policy = Callable[[np.ndarray, dict, Any], Any]

DEFAULT_PROMPTS = (
    "a red door on the left, a blue box on the right, grass, day",
    "a cyan box on the left, snow, night",
    "a yellow box on the right, sand, day",
    "a purple box on the left, a red door on the right, rain",
)
CHECKS = ("turn_around_psnr_db", "moved_psnr_db", "control_psnr_db")
"""The consistency figures, each for the model and (where it exists) the game."""
FIGURES_HELP = (
    "turn around: PSNR of the view after k steps right and k left against the start (higher: the "
    "world remembers); after walking away: PSNR of the view after the k steps right against the start "
    "(lower: the view moved, so a still world cannot pass for one that remembers); controllability: "
    "PSNR between the ends of k steps left and k steps right from the same step (lower: the world obeys "
    "its controls). The game's figures are the same checks on the procedural platformer itself."
)
SCRIPT = ("right", "right", "right", "jump", "right", "right", "left", "left", "up", "right")
"""The scripted policy's key cycle (one key a step)."""


# -- policies -------------------------------------------------------------------------------------
def _keys_action(world: _World, held: Sequence[str]) -> Any:
    """A space element holding ``held`` (keys the model lacks are left out)."""
    bits = [1 if k in held else 0 for k in world.keys]
    if world.discrete:
        return sum(b << i for i, b in enumerate(bits))
    return {"keys": np.array(bits, np.int8), "mouse": np.zeros(len(world.mouse_axes), np.float32)}


def load_policy(spec: str, world: _World, seed: int) -> Policy:
    """``random``, ``scripted`` or ``module:function``."""
    if spec == "random":
        rng = np.random.default_rng(seed)
        space = world.act_space
        space.seed(int(rng.integers(2**31)))
        return lambda obs, info, action_space: space.sample()
    if spec == "scripted":
        return lambda obs, info, action_space: _keys_action(world, [SCRIPT[info["t"] % len(SCRIPT)]])
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"policy {spec!r}: expected 'random', 'scripted' or 'module:function'")
    fn = getattr(importlib.import_module(module), name, None)
    if not callable(fn):
        raise ValueError(f"policy {spec!r}: {module}.{name} is not a callable")
    return fn


# -- records --------------------------------------------------------------------------------------
@dataclass
class WorldRecord:
    index: int
    prompt: str
    session_id: str = ""
    understood: str = ""  # a free-text prompt: the caption the text app read it as
    seed: int = 0
    steps: int = 0
    ret: float = 0.0
    error: str = ""
    turn_around_psnr_db: float | None = None
    moved_psnr_db: float | None = None
    control_psnr_db: float | None = None
    duplicate_of: int | None = None  # an earlier world with the same first frame and actions
    game: dict[str, float] | None = None  # the same checks on the procedural game (ground truth)
    keys: list[list[str]] = field(default_factory=list, repr=False)
    observations: list[np.ndarray] = field(default_factory=list, repr=False)
    actions: list[Any] = field(default_factory=list, repr=False)
    rewards: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        d = asdict(self)
        for k in ("observations", "actions", "rewards", "keys"):
            d.pop(k)
        d["return"] = d.pop("ret")
        return d


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


# -- the harness ----------------------------------------------------------------------------------
class Harness:
    def __init__(
        self,
        client: WorldClient,
        *,
        model: str = "",
        discrete: bool = False,
        progress: Callable[[str, int], Any] | None = None,
    ):
        self.world = _World(None, None, model, DEFAULT_PROMPTS[0], discrete, 10**9, None, 60.0, client)
        self.client = client
        self.latencies_s: list[float] = []
        self._progress = progress or (lambda what, n: None)

    def _batch(self, items: list[tuple[str, list[str], dict]]) -> list[np.ndarray | BaseException]:
        """One StepBatch of (session, keys, mouse); the frame of each, or its error."""
        reqs = [
            dynamics_pb2.StepRequest(
                session_id=sid,
                format=RAW,
                request_id=new_request_id(),
                action=common_pb2.Action(keys=keys, mouse=mouse),
            )
            for sid, keys, mouse in items
        ]
        t0 = time.perf_counter()
        res = self.client.step_batch(reqs)
        self.latencies_s.append(time.perf_counter() - t0)
        out: list[np.ndarray | BaseException] = []
        for (sid, _, _), r in zip(items, res.results):
            out.append(grpc_error(r.error, sid) if r.HasField("error") else _frame(r.ok.frame, self.world.shape))
        return out

    def play(self, records: list[WorldRecord], policy: Policy, steps: int) -> None:
        """Run ``policy`` on every world for ``steps`` steps (one StepBatch a step)."""
        for t in range(steps):
            items, who = [], []
            for rec in records:
                if rec.error:
                    continue
                info = {"t": t, "world": rec.index, "session_id": rec.session_id, "prompt": rec.prompt}
                try:
                    a = policy(rec.observations[-1], info, self.world.act_space)
                    keys, mouse = self.world.to_action(a)
                except Exception as e:
                    rec.error = f"policy raised at step {t}: {type(e).__name__}: {e}"[:400]
                    continue
                items.append((rec.session_id, keys, mouse))
                who.append((rec, a, keys))
            if items:
                for (rec, a, keys), got in zip(who, self._batch(items)):
                    if isinstance(got, BaseException):
                        rec.error = f"step {t}: {got.details()}"[:400]
                        continue
                    rec.observations.append(got)
                    rec.actions.append(a)
                    rec.keys.append(list(keys))
                    rec.rewards.append(0.0)
                    rec.steps += 1
            self._progress("play", 1)

    def _walk(self, sids: list[str], plan: Sequence[str]) -> list[list[np.ndarray | None]]:
        """Step every session through ``plan`` (a key a step); the frames per session (None
        after an error)."""
        frames: list[list[np.ndarray | None]] = [[] for _ in sids]
        dead = [False] * len(sids)
        for key in plan:
            live = [i for i in range(len(sids)) if not dead[i]]
            if not live:
                break
            got = self._batch([(sids[i], [key] if key in self.world.keys else [], {}) for i in live])
            for i, g in zip(live, got):
                if isinstance(g, BaseException):
                    dead[i] = True
                    frames[i].append(None)
                else:
                    frames[i].append(g)
            self._progress("checks", 1)
        return frames

    def check(self, records: list[WorldRecord], k: int) -> None:
        """Turn around and controllability, on forks from each world's last step."""
        ok = [r for r in records if not r.error]
        if not ok:
            return
        forks: list[list[str]] = []
        try:
            for _ in range(3):  # turn around, control: left, control: right
                forks.append([self.client.fork_session(r.session_id).session_id for r in ok])
            turn = self._walk(forks[0], ["right"] * k + ["left"] * k)
            left = self._walk(forks[1], ["left"] * k)
            right = self._walk(forks[2], ["right"] * k)
            for j, rec in enumerate(ok):
                start = rec.observations[-1]
                if len(turn[j]) == 2 * k and all(f is not None for f in turn[j]):
                    rec.turn_around_psnr_db = psnr(turn[j][-1], start)
                    rec.moved_psnr_db = psnr(turn[j][k - 1], start)
                if left[j] and right[j] and left[j][-1] is not None and right[j][-1] is not None:
                    rec.control_psnr_db = psnr(left[j][-1], right[j][-1])
        finally:
            for group in forks:
                for sid in group:
                    try:
                        self.client.delete_session(sid)
                    except grpc.RpcError:
                        pass


def default_prompts(n: int, seed: int = 0) -> tuple[str, ...]:
    """``n`` different captions the platformer's models understand: the four classic ones, then
    captions drawn from the grammar (seeded)."""
    from worldserve.worlds.platformer import random_spec

    out = list(dict.fromkeys(DEFAULT_PROMPTS))[:n]
    rng = np.random.default_rng([seed, 2024])
    while len(out) < n:
        c = caption_of(random_spec(rng))
        if c not in out:
            out.append(c)
    return tuple(out)


def mark_duplicates(records: list[WorldRecord]) -> int:
    """Mark each world whose first frame and actions repeat an earlier world's (what a policy sees
    is the same: not an independent sample); returns the number of distinct worlds."""
    seen: dict[str, int] = {}
    for rec in records:
        if rec.error or not rec.observations:
            continue
        h = hashlib.sha256(np.ascontiguousarray(rec.observations[0]).tobytes())
        h.update(json.dumps(rec.keys).encode())
        key = h.hexdigest()
        if key in seen:
            rec.duplicate_of = seen[key]
        else:
            seen[key] = rec.index
    return len(seen)


def is_platformer(keys: Sequence[str], shape: tuple[int, ...]) -> bool:
    """Whether a model plays the procedural platformer (its keys and frame size): then the game is
    the ground truth its figures are compared with."""
    from worldserve.worlds import platformer

    return tuple(keys) == platformer.KEYS and tuple(shape) == (platformer.VIEW, platformer.VIEW, 3)


def game_checks(prompt: str, seed: int, keys: Sequence[Sequence[str]], k: int) -> dict[str, float] | None:
    """The harness's checks on the game itself: the world of ``prompt`` (a caption) and ``seed``,
    after the same keys; None when the prompt is not a caption."""
    import copy

    from worldserve.worlds.platformer import Game

    try:
        spec = parse_caption(prompt)
    except ValueError:
        return None
    game = Game(spec, seed)
    start = game.reset()
    for held in keys:
        start = game.step(list(held))
    turn, left, right = (copy.deepcopy(game) for _ in range(3))
    walk = [turn.step(["right"]) for _ in range(k)]
    back = [turn.step(["left"]) for _ in range(k)]
    end_left = [left.step(["left"]) for _ in range(k)][-1]
    end_right = [right.step(["right"]) for _ in range(k)][-1]
    return {
        "turn_around_psnr_db": psnr(back[-1], start),
        "moved_psnr_db": psnr(walk[-1], start),
        "control_psnr_db": psnr(end_left, end_right),
    }


def _stats(xs: Sequence[float | None]) -> dict[str, float | None]:
    v = [x for x in xs if x is not None]
    return {
        "mean": float(np.mean(v)) if v else None,
        "min": float(np.min(v)) if v else None,
        "max": float(np.max(v)) if v else None,
        "n": len(v),
    }


def _pct(xs: Sequence[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if len(xs) else None


def run(
    client: WorldClient,
    *,
    policy: str = "random",
    worlds: int = 8,
    steps: int = 32,
    k: int = 8,
    prompts: Sequence[str] | None = None,
    model: str = "",
    seed: int = 0,
    out: str | os.PathLike = "out/eval",
    dataset_id: str | None = "worldserve/eval-v0",
    discrete: bool = False,
    keep_sessions: bool = False,
    progress: Callable[[str, int], Any] | None = None,
) -> dict:
    """Everything ``worldserve eval`` does; returns the report (also written to ``out``).
    ``prompts``: None for :func:`default_prompts` (one caption per world)."""
    if worlds < 1 or steps < 1 or k < 1:
        raise ValueError("worlds, steps and k must be at least 1")
    if prompts is None:
        prompts = default_prompts(worlds, seed)
    if not prompts:
        raise ValueError("the prompt set is empty")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    h = Harness(client, model=model, discrete=discrete, progress=progress)
    pol = load_policy(policy, h.world, seed)
    rng = np.random.default_rng(seed)
    records = [WorldRecord(i, prompts[i % len(prompts)], seed=int(rng.integers(2**31))) for i in range(worlds)]
    t0 = time.perf_counter()
    try:
        for rec in records:
            try:
                rec.session_id, first = h.world.new_session(rec.seed, {"prompt": rec.prompt})
                rec.understood = h.world.understood.get(rec.session_id, "")
                rec.observations.append(first)
            except grpc.RpcError as e:
                rec.error = f"create: {e.code().name}: {e.details()}"[:400]
            if progress:
                progress("create", 1)
        h.play(records, pol, steps)
        h.check(records, k)
    finally:
        if not keep_sessions:
            h.world.close()
    wall = time.perf_counter() - t0
    lat = h.latencies_s
    distinct = mark_duplicates(records)
    counted = [r for r in records if not r.error and r.duplicate_of is None]
    game_ok = is_platformer(h.world.keys, h.world.shape)
    if game_ok:
        for r in counted:
            r.game = game_checks(r.understood or r.prompt, r.seed, r.keys, k)
    report = {
        "policy": policy,
        "model": h.world.model_name,
        "worlds": worlds,
        "steps": steps,
        "k": k,
        "seed": seed,
        "wall_s": wall,
        "failed_worlds": sum(bool(r.error) for r in records),
        "distinct_worlds": distinct,
        "duplicate_worlds": [r.index for r in records if r.duplicate_of is not None],
        **{c: _stats([getattr(r, c) for r in counted]) for c in CHECKS},
        "game": ({c: _stats([r.game[c] if r.game else None for r in counted]) for c in CHECKS} if game_ok else None),
        "figures": FIGURES_HELP,
        "latency_ms": {
            "p50": _ms(_pct(lat, 50)),
            "p95": _ms(_pct(lat, 95)),
            "p99": _ms(_pct(lat, 99)),
            "batches": len(lat),
        },
        "steps_per_s": sum(r.steps for r in records) / wall if wall else None,
        "world_records": [r.summary() for r in records],
    }
    if dataset_id:
        report["dataset"] = write_minari(records, h.world, dataset_id, out / "minari", policy)
    report["plots"] = plot(records, lat, out)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _ms(s: float | None) -> float | None:
    return None if s is None else 1000.0 * s


def write_minari(records: list[WorldRecord], world: _World, dataset_id: str, root: Path, policy: str) -> dict:
    """The played trajectories (worlds that failed are left out) as a Minari dataset under
    ``root``; returns where it is and how to load it."""
    import minari
    from minari.data_collector import EpisodeBuffer

    root.mkdir(parents=True, exist_ok=True)
    os.environ["MINARI_DATASETS_PATH"] = str(root.resolve())  # minari reads the path from here
    episodes = []
    for ep_id, rec in enumerate(r for r in records if not r.error and r.steps):
        n = rec.steps
        if world.discrete:
            actions: Any = np.asarray(rec.actions, np.int64)
        else:
            actions = {
                "keys": np.stack([np.asarray(a["keys"], np.int8) for a in rec.actions]),
                "mouse": np.stack([np.asarray(a["mouse"], np.float32) for a in rec.actions]),
            }
        episodes.append(
            EpisodeBuffer(
                id=ep_id,
                seed=rec.seed,
                observations=np.stack(rec.observations),
                actions=actions,
                rewards=np.asarray(rec.rewards, np.float64),
                terminations=np.zeros(n, bool),
                truncations=np.eye(1, n, n - 1, dtype=bool)[0],
                infos={},
            )
        )
    if not episodes:
        return {"id": dataset_id, "path": str(root), "episodes": 0}
    try:
        minari.delete_dataset(dataset_id)  # a rerun replaces its dataset
    except (FileNotFoundError, ValueError):
        pass
    minari.create_dataset_from_buffers(
        dataset_id=dataset_id,
        buffer=episodes,
        observation_space=world.obs_space,
        action_space=world.act_space,
        algorithm_name=f"worldserve eval --policy {policy}",
        author="worldserve eval",
        description=f"{len(episodes)} episodes of the {world.model_name!r} world model played by the {policy!r} policy",
        data_format="hdf5",
    )
    return {
        "id": dataset_id,
        "path": str(root),
        "episodes": len(episodes),
        "load": f"MINARI_DATASETS_PATH={root} python -c \"import minari; minari.load_dataset('{dataset_id}')\"",
    }


def plot(records: list[WorldRecord], latencies_s: list[float], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    ms = [1000 * x for x in latencies_s]
    a.plot(ms, lw=1)
    a.set(title="StepBatch latency", xlabel="batch", ylabel="ms")
    b.hist(ms, bins=min(30, max(5, len(ms) // 3)))
    b.set(title="distribution", xlabel="ms", ylabel="batches")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=100)
    plt.close(fig)
    paths.append(str(out / "latency.png"))

    fig, ax = plt.subplots(figsize=(10, 3.5))
    idx = np.arange(len(records))
    w = 0.27
    for off, attr, label in (
        (-w, "turn_around_psnr_db", "turn around: back vs start (higher: remembers)"),
        (0, "moved_psnr_db", "after walking right vs start (lower: moved)"),
        (w, "control_psnr_db", "left vs right branch (lower: controllable)"),
    ):
        ax.bar(idx + off, [getattr(r, attr) or 0.0 for r in records], w, label=label)
    ax.set(title="consistency per world", xlabel="world", ylabel="PSNR dB", xticks=idx)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "consistency.png", dpi=100)
    plt.close(fig)
    paths.append(str(out / "consistency.png"))
    return paths
