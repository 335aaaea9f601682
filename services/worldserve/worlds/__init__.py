"""Procedural worlds the default models are trained on (numpy only, no game engine).

``platformer`` is a small side-scrolling world: a level wider than the view, a player moved by
the model's named keys, coloured objects a caption describes, and events switchable mid-play::

    from worldserve.worlds import Game, WorldSpec, parse_caption, generate_trajectory

    game = Game(parse_caption("a red door on the left, a blue box on the right, grass, night"), seed=1)
    frame0 = game.reset()                      # (64, 64, 3) uint8
    frame1 = game.step(["right", "jump"])      # one frame per action
    game.set_event("it starts to rain")        # in force from the next step on

``checks`` reads frames the way the game draws them (player position, caption objects in place,
rain streaks, stars), on the game's frames and on frames a model made::

    from worldserve.worlds import find_player, player_position
    assert find_player(frame1) == player_position(game)   # (centre x, feet y) on screen
"""

from .checks import (
    check_objects,
    find_player,
    objects_in_place,
    objects_shown,
    player_position,
    rain_streaks,
    stars,
)
from .platformer import (
    COLORS,
    EVENTS,
    GROUNDS,
    KINDS,
    Game,
    ObjectSpec,
    Trajectory,
    WorldSpec,
    caption_of,
    check_palette,
    generate_trajectory,
    parse_caption,
    random_spec,
)

__all__ = [
    "COLORS",
    "EVENTS",
    "GROUNDS",
    "KINDS",
    "Game",
    "ObjectSpec",
    "Trajectory",
    "WorldSpec",
    "caption_of",
    "check_objects",
    "check_palette",
    "find_player",
    "generate_trajectory",
    "objects_in_place",
    "objects_shown",
    "parse_caption",
    "player_position",
    "rain_streaks",
    "random_spec",
    "stars",
]
