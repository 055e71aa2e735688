"""`WidgetView`: the one pattern every interactive view in `adlearn.widgets` follows.

A widget here is three separate things:

1. a **pure compute function** (``pca_explore``, ``kde_explore``, ...) that takes arrays and
   parameter values and returns a ``dict`` of plain numbers / NumPy arrays — tested on its own;
2. a **draw function** that turns that ``dict`` into a `matplotlib.figure.Figure`;
3. a thin **view**: ipywidgets controls whose ``observe`` callbacks call 1 then 2 and show the new
   figure in an ``Output`` widget.

Keeping 1 and 2 free of ipywidgets means the same numbers and pictures are available without a
browser (tests, the book's static figures). `WidgetView` is a plain object, not a widget: it holds
the container (``.widget``), the controls (``.controls``, a dict by name), the ``Output``
(``.output``) and the latest ``.last_result`` / ``.figure``, and Jupyter displays it as the
container. Set a control's ``.value`` and the view recomputes synchronously — that is how the tests
drive it headlessly.

ipywidgets, IPython and matplotlib are imported inside functions only, so ``import adlearn.widgets``
stays light and works where they are not installed.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only; the real imports are lazy
    from matplotlib.figure import Figure

__all__ = ["WidgetView"]

# Resolution of the PNG shown in the Output widget: sharp enough on screen, small in the notebook.
VIEW_DPI = 90


def _new_figure(width: float, height: float) -> Figure:
    """A headless figure (no pyplot: no window, no global state, shown once in a notebook)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _figure_png(figure: Figure, dpi: int = VIEW_DPI) -> bytes:
    """Render ``figure`` to PNG bytes (works with any matplotlib backend, or none)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _in_notebook() -> bool:
    """True inside an IPython kernel or shell (where displaying makes sense)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


class WidgetView:
    """Controls + an ``Output`` that shows ``draw(compute(**values))`` after every change.

    Args:
        controls: ``{name: ipywidgets control}``; every control's ``value`` is passed by ``name``.
        compute: ``compute(**values) -> dict`` — the widget's pure compute step.
        draw: ``draw(result) -> Figure`` — the picture of one result.
        title: optional line of text above the controls.

    Attributes:
        controls, output, widget (the ``VBox`` Jupyter shows), last_result, figure, n_updates.
    """

    def __init__(
        self,
        controls: Mapping[str, Any],
        compute: Callable[..., dict],
        draw: Callable[[dict], Figure],
        title: str | None = None,
    ) -> None:
        import ipywidgets as widgets

        self.controls = dict(controls)
        self.output = widgets.Output()
        self._compute = compute
        self._draw = draw
        self.last_result: dict | None = None
        self.figure: Figure | None = None
        self.n_updates = 0

        rows = [widgets.HTML(f"<b>{title}</b>")] if title else []
        rows += [widgets.HBox(list(self.controls.values())), self.output]
        self.widget = widgets.VBox(rows)
        for control in self.controls.values():
            control.observe(self.update, names="value")
        self.update()

    def values(self) -> dict[str, Any]:
        """The current value of every control, by name."""
        return {name: control.value for name, control in self.controls.items()}

    def update(self, change=None) -> dict:
        """Recompute and redraw (called by every control change); returns the new result."""
        self.last_result = self._compute(**self.values())
        self.figure = self._draw(self.last_result)
        self.n_updates += 1
        if _in_notebook():
            self._show(self.figure)
        return self.last_result

    def _show(self, figure: Figure) -> None:
        from IPython.display import Image, clear_output, display

        # A PNG rather than the Figure itself: it shows whether or not the kernel has matplotlib's
        # inline formatter registered, and clear_output(wait=True) avoids flicker while dragging.
        with self.output:
            clear_output(wait=True)
            display(Image(data=_figure_png(figure)))

    # Jupyter displays the object as its container widget.
    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        names = ", ".join(f"{name}={value!r}" for name, value in self.values().items())
        return f"WidgetView({names})"
