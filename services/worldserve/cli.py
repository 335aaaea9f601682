"""`worldserve up | down | status | play | eval | add-key | quota`: run a local cluster and play a world.

State lives in ``$WORLDSERVE_HOME`` (default ``~/.worldserve``): the embedded Redis's data and
pid, the hashed API key file, and the development key (mode 0600).
"""

from __future__ import annotations

import io
import json
import os
import signal
import time
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from worldserve.cli_cluster import (
    _alive,
    _check_health,
    _ensure_dev_key,
    _port_free,
    _ray,
    _read_state,
    _running,
    _write_state,
    dev_key,
    home,
    ray_temp_dir,
    start_ray_head,
    stop_ray_cluster,
)
from worldserve.cli_errors import DEBUG_ENV, CliError, console, explain, friendly

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])

GRPC_PORT = 9000


def _target(kwargs: dict) -> str:
    """The endpoint a command talks to: --target, else the one `up` wrote, else the default."""
    return kwargs.get("target") or _read_state().get("endpoint", f"127.0.0.1:{GRPC_PORT}")


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="on a failure, show the traceback (not only one line)"),
) -> None:
    """Every command answers a failure with one line saying what to do, and a non-zero exit."""
    if debug:
        os.environ[DEBUG_ENV] = "1"


@app.command()
@friendly()
def up(
    config: Path = typer.Option(None, help="serve config (default: deploy/serve/worldserve.yaml)"),
    num_cpus: int = typer.Option(0, help="logical CPUs of the local Ray node (0: max(4, cores), room to autoscale)"),
    timeout_s: float = typer.Option(600, help="how long to wait for the services to be healthy"),
    text: bool = typer.Option(
        True, "--text/--no-text", help="serve the text app (free-text prompts and events, a language model on vLLM)"
    ),
) -> None:
    """Start Redis (embedded unless REDIS_URL), Ray and Serve; wait until healthy; print endpoint and key."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # read when ray is imported: set it first
    import ray  # the serve extra: a missing one is said before anything starts

    from worldserve import deploy as dep
    from worldserve.common.redis_server import EmbeddedRedis

    state = _read_state()
    address = state.get("ray_address")
    ray_alive = bool(address) and _ray("status", f"--address={address}").returncode == 0
    if not ray_alive:  # a Ray of our own starts: Serve's ports must be free
        ports = dep.load_config(config, text=text)
        for what, port in (("gRPC", ports["grpc_options"]["port"]), ("HTTP", ports["http_options"]["port"])):
            if not _port_free(int(port)):
                raise CliError(
                    f"port {port} (Serve's {what} proxy) is in use by another program: stop it, or pass "
                    f"--config with another {what.lower()}_options.port"
                )
    redis_url = os.environ.get("REDIS_URL", "")
    if not redis_url:
        if state.get("redis_pid") and _alive(state["redis_pid"]):
            redis_url = state["redis_url"]
        else:
            srv = EmbeddedRedis(home() / "redis", port=6390 if _port_free(6390) else None).start(detach=True)
            redis_url = srv.url
            state.update(redis_pid=srv.proc.pid, redis_url=redis_url)
            console.print(
                f"[green]embedded Redis[/] at {redis_url} (AOF everysec, noeviction), data in {home() / 'redis'}"
            )
    key, keys_file = _ensure_dev_key()
    _write_state(state)

    env = dict(os.environ, REDIS_URL=redis_url, WORLDSERVE_API_KEYS_FILE=str(keys_file))
    archive_url = os.environ.get("WORLDSERVE_ARCHIVE_URL") or f"file://{home() / 'archive'}"
    cfg = dep.load_config(
        config,
        app_args={"redis_url": redis_url, "api_keys_file": str(keys_file), "archive_url": archive_url},
        text=text,
    )
    if not ray_alive:
        if address:
            console.print(f"the Ray cluster of an earlier `up` ({address}) is gone: starting a new one")
        console.print("starting Ray ...")
        temp_dir = ray_temp_dir()
        address = start_ray_head(temp_dir, num_cpus or max(4, os.cpu_count() or 1), env)
        state.update(ray_address=address, ray_temp_dir=str(temp_dir))
        _write_state(state)

    os.environ.update(REDIS_URL=redis_url, WORLDSERVE_API_KEYS_FILE=str(keys_file), RAY_ADDRESS=address)
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    dep.deploy(cfg)
    apps = dep.app_names(cfg)
    with console.status(f"deploying {', '.join(apps)} ...") as st:
        dep.wait_healthy(timeout_s, apps=apps, progress=lambda s: st.update(f"deploying: {s}"))
    endpoint = f"127.0.0.1:{cfg['grpc_options']['port']}"
    _check_health(endpoint, key)
    web = f"http://127.0.0.1:{cfg['http_options']['port']}/"
    state.update(endpoint=endpoint, web=web)
    _write_state(state)
    console.print(f"[green]worldserve is up[/]: gRPC endpoint [bold]{endpoint}[/]")
    console.print(f"development API key (tenant 'dev'): [bold]{key}[/]")
    grpc_apps = "|".join(a for a in apps if a != "web")
    console.print(f"  send metadata  authorization: Bearer <key>   and   application: {grpc_apps}")
    console.print(f"play in a browser: [bold]{web}[/] (paste the key into the page)")
    print(json.dumps({"endpoint": endpoint, "api_key": key, "web": web}))


@app.command()
@friendly()
def down() -> None:
    """Stop what `up` started: its Ray cluster (Serve in it) and its embedded Redis (the data stays
    in $WORLDSERVE_HOME/redis). Other Ray clusters and Redis servers on the machine are left alone."""
    state = _read_state()
    address, temp_dir = state.get("ray_address"), state.get("ray_temp_dir")
    if address and temp_dir:
        n = stop_ray_cluster(temp_dir, address)
        console.print(f"Ray at {address} stopped ({n} processes)" if n else f"no Ray at {address}")
    else:
        console.print("no Ray cluster started by `worldserve up`")
    pid = state.get("redis_pid")
    if pid and _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10  # it saves its data first; `up` right after needs the port
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        console.print("embedded Redis stopped")
    for k in ("redis_pid", "ray_started", "ray_address", "ray_temp_dir", "endpoint"):
        state.pop(k, None)
    _write_state(state)


@app.command()
@friendly(_target)
def status(target: str = typer.Option(None, help="gRPC endpoint (default: from `up`)")) -> None:
    """Health of each service and Serve's view of the applications."""
    from worldserve.client import WorldClient

    state = _read_state()
    target = target or state.get("endpoint", f"127.0.0.1:{GRPC_PORT}")
    ok, web_ok = True, False
    lines: list[str] = []
    unreachable = 0
    with WorldClient(target, dev_key(), timeout_s=10) as c:
        for appname in ("image", "sessions", "dynamics"):
            try:
                s = c.health(appname)
            except Exception as e:
                why = e.code().name if hasattr(e, "code") else type(e).__name__
                s, ok = f"DOWN ({why})", False
                unreachable += why == "UNAVAILABLE"
            lines.append(f"{appname:9s} {s}")
        web = state.get("web")
        if web:
            try:
                import urllib.request

                with urllib.request.urlopen(web + "healthz", timeout=10) as r:
                    s = "SERVING" if r.status == 200 else f"DOWN (HTTP {r.status})"
                    web_ok = r.status == 200
            except Exception as e:
                s, ok = f"DOWN ({type(e).__name__})", False
            lines.append(f"web       {s}  {web}")
        if unreachable == 3 and not web_ok:  # nothing answers: not a service down, no cluster at all
            raise CliError(f"no worldserve at {target}: run `worldserve up` (or pass --target)")
        for line in lines:
            console.print(line)
        if ok:
            try:
                models = c.list_models()
            except Exception as e:  # health answers without a key; the models need one the cluster accepts
                console.print(f"models    unknown ({e.code().name if hasattr(e, 'code') else type(e).__name__})")
                console.print(f"[red]error:[/] {escape(explain(e, target=target))}", soft_wrap=True, highlight=False)
                ok = False
            else:
                for m in models.models:
                    rt = m.runtime
                    console.print(
                        f"model     {m.name}{' (default)' if m.is_default else ''}: tier {m.tier or '-'}, "
                        f"{m.frame_width}x{m.frame_height}, {m.sample_steps} sampler steps, {rt.device} {rt.dtype}, "
                        f"attention {rt.attention_backend} ({rt.decode_kernel})"
                    )
    raise typer.Exit(0 if ok else 1)


@app.command()
@friendly(_target)
def play(
    prompt: str = typer.Option(
        "a red door on the left, a blue box on the right, grass, day",
        help="world prompt: a caption 'a {red|blue|yellow|purple|pink|cyan} {door|box} on the {left|right}, ..., "
        "{grass|sand|snow}, {day|night}[, rain]', or free text ('a snowy night with a pink door to my right') "
        "read by the text app; the understood caption is printed",
    ),
    actions: str = typer.Option(
        "right,right,right,up,right,right,jump,right,left,left,up,right,right,right,right,right",
        help="comma-separated actions; '+' joins keys held together, 'noop' for none",
    ),
    seed: int = typer.Option(0),
    model: str = typer.Option("", help="served model to play (`worldserve status` lists them; '' = the default)"),
    event: str = typer.Option(
        "night falls",
        help="world event switched on mid-play ('' for none): one of the model's events "
        "('it starts to rain', 'night falls', ...) or free text ('make it rain')",
    ),
    event_step: int = typer.Option(10, help="the step at which the event switches on"),
    out: Path = typer.Option(Path("demo.gif"), help="animated GIF to write"),
    target: str = typer.Option(None, help="gRPC endpoint (default: from `up`)"),
    scale: int = typer.Option(4, help="upscale factor of the GIF"),
    fps: int = typer.Option(8),
) -> None:
    """Create a world from a prompt, step it through the actions (a progress bar), write a GIF."""
    from PIL import Image

    from worldserve.client import WorldClient, to_actions

    target = target or _read_state().get("endpoint", f"127.0.0.1:{GRPC_PORT}")
    acts = to_actions(a.strip() for a in actions.split(",") if a.strip())
    if event and 1 <= event_step <= len(acts):
        acts[event_step - 1].event = event
    frames = []
    with WorldClient(target, dev_key()) as c:
        s = c.create_session(prompt=prompt, seed=seed, include_first_frame=True, model=model)
        if s.HasField("understood"):
            u = s.understood
            console.print(f"understood ({u.source}): {u.caption}")
        frames.append(Image.open(io.BytesIO(s.first_frame.data)).convert("RGB"))
        with Progress(
            TextColumn("[bold]stepping[/] " + s.session_id),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("steps", total=len(acts))
            applied = []
            for i, r in enumerate(c.play(s.session_id, acts)):
                frames.append(Image.open(io.BytesIO(r.frame.data)).convert("RGB"))
                if acts[i].HasField("event"):
                    applied.append((r.step, acts[i].event, r.event))
                bar.advance(task)
    for step, sent, got in applied:
        console.print(f"event at step {step}: {sent!r}" + (f" -> {got!r}" if got != sent else ""))
    w, h = frames[0].size
    frames = [f.resize((w * scale, h * scale), Image.NEAREST) for f in frames]
    frames[0].save(out, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    console.print(f"wrote {out} ({len(frames)} frames) from session {s.session_id} (model {s.model})")


def _keys_file() -> Path:
    return Path(os.environ.get("WORLDSERVE_API_KEYS_FILE", home() / "api_keys.json"))


def _parse_quotas(items: list[str]) -> dict:
    """``["steps_per_s=20", "max_sessions=10"]`` -> typed quota overrides."""
    import dataclasses

    from worldserve.common.quotas import Quotas

    types = {f.name: f.type for f in dataclasses.fields(Quotas)}
    out: dict = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in types:
            raise typer.BadParameter(f"{item!r}: expected NAME=VALUE with NAME one of {sorted(types)}")
        try:
            out[name] = float(value) if types[name] in (float, "float") else int(value)
        except ValueError:
            raise typer.BadParameter(f"{item!r}: {value!r} is not a number") from None
    return out


@app.command("add-key")
@friendly()
def add_key_cmd(
    tenant: str,
    quota: list[str] = typer.Option(
        [], "--quota", help="a quota override NAME=VALUE (repeatable), e.g. steps_per_s=20"
    ),
) -> None:
    """Create an API key for a tenant; its hash goes to the key file, the key is printed once."""
    from worldserve.common.auth import add_key, new_key

    keys_file = _keys_file()
    key = new_key()
    try:
        add_key(keys_file, tenant, key, _parse_quotas(quota))
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    console.print(f"key for tenant {tenant!r} added to {keys_file} (replicas pick it up on its first use)")
    print(key)


@app.command("quota")
@friendly()
def quota_cmd(
    tenant: str,
    set_: list[str] = typer.Argument(None, metavar="[NAME=VALUE]...", help="overrides to set, e.g. max_sessions=50"),
) -> None:
    """Show a tenant's quotas (the defaults with its overrides), or set overrides beside its key."""
    import dataclasses

    from worldserve.common.auth import KeyRing, set_quotas
    from worldserve.common.quotas import Quotas

    keys_file = _keys_file()
    if set_:
        try:
            set_quotas(keys_file, tenant, _parse_quotas(set_))
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
        console.print(f"quotas of {tenant!r} set in {keys_file} (replicas pick them up within seconds)")
    ring = KeyRing.load(keys_file, env={})
    own = ring.quotas.get(tenant, {})
    q = Quotas.parse(own)
    console.print(f"tenant {tenant!r} (defaults: the code's; a serve config's `quotas` may change them)")
    for f in dataclasses.fields(Quotas):
        mark = "  (set)" if f.name in own else ""
        console.print(f"{f.name:>20} = {getattr(q, f.name)}{mark}")


@app.command("eval")
@friendly(_target)
def eval_cmd(
    worlds: int = typer.Option(8, help="worlds to generate and play"),
    steps: int = typer.Option(32, help="policy steps per world"),
    policy: str = typer.Option("random", help="'random', 'scripted', or a module:function called fn(obs, info, space)"),
    prompts: Path = typer.Option(
        None,
        help="prompt set: a text file, one prompt a line (cycled over the worlds); default: one different "
        "caption per world, captions the platformer's models understand",
    ),
    prompt: list[str] = typer.Option(
        None, "--prompt", help="a prompt, as text (repeat for several; cycled over the worlds); instead of --prompts"
    ),
    k: int = typer.Option(8, help="steps each way of the turn-around and controllability checks"),
    model: str = typer.Option("", help="served model ('' = the default)"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("out/eval"), help="folder for report.json, the plots and the dataset"),
    dataset: str = typer.Option("worldserve/eval-v0", help="Minari dataset id ('' for none)"),
    discrete: bool = typer.Option(False, help="Discrete actions over key combinations instead of Dict"),
    target: str = typer.Option(None, help="gRPC endpoint (default: from `up`)"),
) -> None:
    """Run a policy on N generated worlds; check turn-around, controllability and latency; write a
    JSON report with plots and the trajectories as a Minari dataset.

    The figures (PSNR in dB; for a platformer model the game's own figures are printed beside the
    model's, from the same caption, seed and actions): turn around = the view after k steps right and
    k left against the start (higher: the world remembers); after walking away = the view after the k
    steps right against the start (lower: the view moved); controllability = the ends of k steps left
    and k steps right from one step (lower: the world obeys its controls). Worlds whose first frame
    and actions repeat an earlier world's are reported as duplicates and not counted twice."""
    from worldserve.client import WorldClient
    from worldserve.gym import harness

    prompt_set = None
    if prompts is not None and prompt:
        raise CliError("give prompts either as a file (--prompts) or as text (--prompt), not both")
    if prompts is not None:
        if not prompts.is_file():
            raise CliError(
                f"--prompts {str(prompts)!r} is not a file (one prompt a line); for a prompt as text use --prompt"
            )
        prompt_set = tuple(p.strip() for p in prompts.read_text().splitlines() if p.strip())
    elif prompt:
        prompt_set = tuple(p.strip() for p in prompt if p.strip())
    target = target or _read_state().get("endpoint", f"127.0.0.1:{GRPC_PORT}")
    with WorldClient(target, dev_key(), timeout_s=120) as c:
        c.list_models()  # nothing answering fails here, in one line, before any progress bar
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,  # gone when done: the report follows (or, when every world failed, one line)
        ) as bar:
            tasks = {
                "create": bar.add_task("create worlds", total=worlds),
                "play": bar.add_task("play", total=steps),
                "checks": bar.add_task("consistency checks", total=4 * k),
            }
            try:
                report = harness.run(
                    c,
                    policy=policy,
                    worlds=worlds,
                    steps=steps,
                    k=k,
                    prompts=prompt_set,
                    model=model,
                    seed=seed,
                    out=out,
                    dataset_id=dataset or None,
                    discrete=discrete,
                    progress=lambda what, n: bar.advance(tasks[what], n),
                )
            except ValueError as e:
                raise CliError(str(e)) from None
    errors = [r["error"] for r in report["world_records"] if r["error"]]
    if errors and len(errors) == worlds:
        raise CliError(f"every world failed; the first: {errors[0]}")
    lat = report["latency_ms"]

    game = report.get("game")

    def db(name: str) -> str:
        s = report[name]
        got = "n/a" if s["mean"] is None else f"{s['mean']:.1f} dB"
        if game and game[name]["mean"] is not None:
            got += f" (the game: {game[name]['mean']:.1f} dB)"
        return got

    n = report["distinct_worlds"]
    dup = f", {worlds - report['failed_worlds'] - n} duplicates not counted" if report["duplicate_worlds"] else ""
    console.print(
        f"{worlds} worlds of {report['model']!r}, policy {policy!r}: {report['failed_worlds']} failed, {n} distinct{dup}"
    )
    console.print(f"  turn around (back vs start, higher = remembers): {db('turn_around_psnr_db')}")
    console.print(f"  after walking away (moved vs start, lower = the view moved): {db('moved_psnr_db')}")
    console.print(f"  controllability (left vs right branch, lower = obeys): {db('control_psnr_db')}")
    console.print(
        f"  StepBatch latency p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms; "
        f"{report['steps_per_s']:.1f} policy steps/s"
    )
    for r in report["world_records"]:
        if r["error"]:
            console.print(f"  world {r['index']}: [red]{escape(r['error'])}[/]")
        elif r["understood"]:
            console.print(f"  world {r['index']}: {r['prompt']!r} understood as {r['understood']!r}")
    if report.get("dataset"):
        console.print(
            f"  Minari dataset {report['dataset']['id']!r} ({report['dataset']['episodes']} episodes) in "
            f"{report['dataset']['path']}"
        )
    console.print(f"wrote {out / 'report.json'}, " + ", ".join(report["plots"]))


if __name__ == "__main__":
    app()
