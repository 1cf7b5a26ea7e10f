"""A light table for rows that all change every second: one Rich line per row, rendered only when it changed.

Textual's ``DataTable`` renders every cell through Rich's layout and drops its whole cache on any cell
update; with 64 nodes updating every second that alone took half a core. ``Grid`` keeps a fixed
header, a cursor (up/down/page/home/end, enter selects) and one cached ``Strip`` per row, rebuilt
when that row's cells change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget

Cell = Text | str
#: No column is drawn wider than this (the last one may be: it has the rest of the line).
MAX_COLUMN = 40
HEADER_STYLE = Style(bold=True, underline=True)
CURSOR_STYLE = Style(reverse=True)


def _text(cell: Cell) -> Text:
    return cell if isinstance(cell, Text) else Text(cell)


class Grid(Widget, can_focus=True):
    """Rows of cells under a fixed header; ``set_rows(keys, rows)`` replaces what is shown."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "move(-1)", show=False), Binding("down", "move(1)", show=False),
        Binding("pageup", "page(-1)", show=False), Binding("pagedown", "page(1)", show=False),
        Binding("home", "move(-1000000)", show=False), Binding("end", "move(1000000)", show=False),
        Binding("enter", "select", show=False),
    ]

    class Selected(Message):
        """Enter on a row."""

        def __init__(self, grid: Grid, key: str) -> None:
            super().__init__()
            self.grid = grid
            self.key = key

    def __init__(self, columns: Sequence[str], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.columns = list(columns)
        self.keys: list[str] = []
        self._rows: dict[str, tuple[Cell, ...]] = {}
        self._widths = [len(c) for c in self.columns]
        self._strips: dict[str, Strip] = {}
        self.cursor = 0
        self._offset = 0

    # -- content

    def set_rows(self, keys: Sequence[str], rows: Sequence[Sequence[Cell]]) -> None:
        selected = self.keys[self.cursor] if 0 <= self.cursor < len(self.keys) else None
        resized = len(keys) != len(self.keys)
        widths = [len(c) for c in self.columns]
        new_rows: dict[str, tuple[Cell, ...]] = {}
        for key, row in zip(keys, rows, strict=True):
            cells = tuple(row)
            new_rows[key] = cells
            for i, cell in enumerate(cells):
                widths[i] = max(widths[i], min(MAX_COLUMN if i < len(cells) - 1 else 200, _text(cell).cell_len))
        if widths != self._widths:
            self._strips.clear()
        else:
            self._strips = {k: s for k, s in self._strips.items() if self._rows.get(k) == new_rows.get(k)}
        self._widths, self._rows, self.keys = widths, new_rows, list(keys)
        self.cursor = self.keys.index(selected) if selected in new_rows else min(self.cursor, max(0, len(keys) - 1))
        self._scroll_to_cursor()
        self.refresh(layout=resized)  # a new row count changes the height under ``height: auto``

    def row(self, key: str) -> list[str]:
        """The plain text of a row's cells."""
        return [_text(cell).plain for cell in self._rows[key]]

    @property
    def row_count(self) -> int:
        return len(self.keys)

    @property
    def selected_key(self) -> str | None:
        return self.keys[self.cursor] if 0 <= self.cursor < len(self.keys) else None

    # -- drawing

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self.keys) + 1  # with ``height: auto``: the header and every row

    def _line(self, cells: Sequence[Cell], style: Style | None = None) -> Text:
        line = Text(" ", style=style or "")
        for i, (cell, width) in enumerate(zip(cells, self._widths, strict=False)):
            text = _text(cell).copy()
            text.truncate(width, overflow="ellipsis", pad=True)
            line.append_text(text)
            if i < len(self._widths) - 1:
                line.append("  ")
        if style is not None:
            line.stylize(style)
        return line

    def _strip(self, text: Text) -> Strip:
        segments = list(text.render(self.app.console))
        return Strip(Segment.apply_style(segments, self.rich_style)).crop_extend(0, self.size.width, self.rich_style)

    def render_line(self, y: int) -> Strip:
        if y == 0:
            return self._strip(self._line(self.columns, HEADER_STYLE))
        index = self._offset + y - 1
        if index >= len(self.keys):
            return Strip.blank(self.size.width, self.rich_style)
        key = self.keys[index]
        if index == self.cursor and self.has_focus:
            return self._strip(self._line(self._rows[key], CURSOR_STYLE))
        if key not in self._strips:
            self._strips[key] = self._strip(self._line(self._rows[key]))
        return self._strip_for_width(key)

    def _strip_for_width(self, key: str) -> Strip:
        strip = self._strips[key]
        if strip.cell_length != self.size.width:
            strip = strip.crop_extend(0, self.size.width, self.rich_style)
            self._strips[key] = strip
        return strip

    def on_resize(self) -> None:
        self._strips.clear()
        self._scroll_to_cursor()

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    # -- cursor

    @property
    def _visible_rows(self) -> int:
        return max(1, self.size.height - 1)

    def _scroll_to_cursor(self) -> None:
        if self.cursor < self._offset:
            self._offset = self.cursor
        elif self.cursor >= self._offset + self._visible_rows:
            self._offset = self.cursor - self._visible_rows + 1
        self._offset = max(0, min(self._offset, max(0, len(self.keys) - self._visible_rows)))

    def action_move(self, delta: int) -> None:
        if self.keys:
            self.cursor = max(0, min(len(self.keys) - 1, self.cursor + delta))
            self._scroll_to_cursor()
            self.refresh()

    def action_page(self, direction: int) -> None:
        self.action_move(direction * self._visible_rows)

    def action_select(self) -> None:
        if self.selected_key is not None:
            self.post_message(self.Selected(self, self.selected_key))
