"""Launcher screens: the synthetic benchmark's second style, built so a micro agent can learn it on CPU.

Each screen is a 168×168 app launcher: a grid of 6×6 cells of 28×28 px over a tinted wallpaper, with a
few coloured app icons, one per cell. Two kinds of step:

* ``icon`` — "Click the red icon": the icon is on the current screen (grounding).
* ``recalled_icon`` — "Click where the red icon was": the icon is only on an earlier screen that is
  still in the history window (``memory_window`` past screenshots); the current screen does not show
  that colour. Evicting old-screenshot tokens from the KV cache costs exactly these steps.

Layout choices, and why (Qwen2.5-VL's vision tower has no absolute position embedding and the language
model sees positions only as M-RoPE phases, which a small model binds to content poorly):

* One icon = one cell = one language-model image token (patch 14 × spatial merge 2 = 28 px), so an
  element never straddles tokens and the click target is that token's cell.
* The wallpaper's tint is flat per cell and encodes the cell's column in red and its row in green, so a
  token's own pixels say where it is; the icon covers only the middle of its cell, the rim shows the
  tint. Finding the named icon is then a content match (colour word -> icon colour) and reading its
  place is a copy, both of which attention learns quickly.
* Icon colours are unique within any ``memory_window + 1`` consecutive screens, so every instruction
  names exactly one icon in the visible history.

Episodes are written in the synthetic benchmark's on-disk format (``synthetic.json`` + PNGs), so the
same loader and scorer (click inside the icon's box) evaluate them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image, ImageDraw

# Bump when what the generator draws changes: cached datasets are keyed by it, so none goes stale.
LAUNCHER_VERSION = 2
SCREEN_SIZE = 168
CELL = 28
GRID = SCREEN_SIZE // CELL  # 6 x 6 cells
ICON_MARGIN = 8  # icon square = cell minus this on every side (12 x 12 px: a wide rim shows the tint)
ICONS_PER_SCREEN = 3
MEMORY_WINDOW = 4  # past screenshots a recalled icon may come from (image_slots 5 = 4 past + current)
RECALL_PROBABILITY = 0.4

# Well-separated saturated colours (none close to the pastel wallpaper tints), by name.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 45), "green": (30, 160, 60), "yellow": (255, 225, 25), "blue": (0, 90, 220),
    "orange": (245, 120, 20), "purple": (130, 30, 180), "cyan": (40, 230, 240), "magenta": (240, 40, 220),
    "lime": (170, 255, 40), "pink": (255, 150, 190), "teal": (0, 128, 128), "brown": (140, 80, 20),
    "navy": (10, 10, 110), "black": (0, 0, 0), "white": (255, 255, 255), "maroon": (120, 0, 20),
}
_GOALS = ("Open the apps one after another", "Tidy up the home screen", "Check each app once",
          "Find the app you used before", "Launch the apps from the list")


def wallpaper_tint(row: int, col: int) -> tuple[int, int, int]:
    """The flat tint of cell (row, col): red encodes the column, green the row, blue is constant."""
    return (90 + 30 * col, 90 + 30 * row, 150)


@dataclass(frozen=True)
class LauncherIcon:
    colour: str
    row: int
    col: int

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        x, y = self.col * CELL, self.row * CELL
        return (x + ICON_MARGIN, y + ICON_MARGIN, x + CELL - ICON_MARGIN, y + CELL - ICON_MARGIN)

    @property
    def center(self) -> tuple[int, int]:
        return (self.col * CELL + CELL // 2, self.row * CELL + CELL // 2)


@dataclass(frozen=True)
class LauncherStep:
    """One generated step: the screen, its icons, the target and how the instruction names it."""

    image: Image.Image
    icons: tuple[LauncherIcon, ...]
    target: LauncherIcon
    kind: str  # "icon" (on the current screen) or "recalled_icon" (only on an earlier screen)
    steps_back: int = 0  # which screen shows the target: 0 the current one, k the one k steps earlier

    @property
    def instruction(self) -> str:
        if self.kind == "icon":
            return f"Click the {self.target.colour} icon"
        return f"Click where the {self.target.colour} icon was"

    @property
    def history_text(self) -> str:
        return f"Clicked the {self.target.colour} icon"

    @property
    def answer(self) -> str:
        """The UI-TARS action a perfect agent emits (point in the screenshot's pixels, no resize here)."""
        x, y = self.target.center
        return f"Action: click(start_box='({x},{y})')"


def render_launcher(icons: tuple[LauncherIcon, ...]) -> Image.Image:
    """Draw the wallpaper and the icons (flat colours, no anti-aliasing: PNG round trips are exact)."""
    img = Image.new("RGB", (SCREEN_SIZE, SCREEN_SIZE))
    draw = ImageDraw.Draw(img)
    for row in range(GRID):
        for col in range(GRID):
            x, y = col * CELL, row * CELL
            draw.rectangle((x, y, x + CELL - 1, y + CELL - 1), fill=wallpaper_tint(row, col))
    for icon in icons:
        x1, y1, x2, y2 = icon.bbox
        draw.rounded_rectangle((x1, y1, x2 - 1, y2 - 1), radius=4, fill=COLOURS[icon.colour],
                               outline=(40, 40, 40), width=1)
    return img


def launcher_episode(rng: random.Random, num_steps: int, *, memory_window: int = MEMORY_WINDOW,
                     icons_per_screen: int = ICONS_PER_SCREEN, recall_probability: float = RECALL_PROBABILITY,
                     recall_back: tuple[float, ...] | None = None) -> Iterator[LauncherStep]:
    """The steps of one episode, drawn from ``rng`` (deterministic for its state).

    ``recall_back`` (training only) draws a recalled target's distance by weight (``recall_back[k - 1]``
    for k screenshots back, among the distances that have a recallable icon; none with weight > 0: a
    current-screen step); None draws among all recallable icons, the benchmark's own rule."""
    if (memory_window + 1) * icons_per_screen > len(COLOURS):
        raise ValueError(f"{icons_per_screen} icons on {memory_window + 1} screens need more than "
                         f"{len(COLOURS)} distinct colours")
    screens: list[tuple[LauncherIcon, ...]] = []
    targets: list[LauncherIcon] = []
    names = list(COLOURS)
    for _ in range(num_steps):
        recent = [icon.colour for screen in screens[-memory_window:] for icon in screen]
        colours = rng.sample([c for c in names if c not in recent], icons_per_screen)
        cells = rng.sample(range(GRID * GRID), icons_per_screen)
        icons = tuple(LauncherIcon(c, cell // GRID, cell % GRID) for c, cell in zip(colours, cells))
        # A recalled target: an icon of a visible earlier screen that was not that step's target.
        recallable = [icon for screen in screens[-memory_window:] for icon in screen if icon not in targets]
        target = None
        if recallable and rng.random() < recall_probability:
            target = rng.choice(recallable) if recall_back is None else _recall_by_distance(
                rng, screens, targets, memory_window, recall_back)
        if target is not None:
            kind = "recalled_icon"
            steps_back = next(k for k in range(1, len(screens) + 1) if target in screens[-k])
        else:
            target, kind, steps_back = rng.choice(icons), "icon", 0
        screens.append(icons)
        targets.append(target)
        yield LauncherStep(render_launcher(icons), icons, target, kind, steps_back)


def _recall_by_distance(rng: random.Random, screens: list, targets: list, memory_window: int,
                        weights: tuple[float, ...]) -> LauncherIcon | None:
    """A recallable icon whose distance (screenshots back) is drawn by ``weights``; None when no distance
    with a positive weight has one."""
    back = {k: [i for i in screens[-k] if i not in targets] for k in range(1, min(memory_window, len(screens)) + 1)}
    choices = [k for k, found in back.items() if found and k <= len(weights) and weights[k - 1] > 0]
    if not choices:
        return None
    k = rng.choices(choices, weights=[weights[k - 1] for k in choices])[0]
    return rng.choice(back[k])


def launcher_goal(rng: random.Random) -> str:
    return rng.choice(_GOALS)


__all__ = ["CELL", "COLOURS", "GRID", "MEMORY_WINDOW", "SCREEN_SIZE", "LauncherIcon", "LauncherStep",
           "launcher_episode", "launcher_goal", "render_launcher", "wallpaper_tint"]
