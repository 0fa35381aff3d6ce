"""Class names and colours: a small table (label id, name, colour) whose choices colour the
labels and prediction layers and name the class under the mouse in napari's status bar."""

from __future__ import annotations

from magicgui.widgets import Container, PushButton
from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QColorDialog, QHeaderView, QSizePolicy, QTableWidget, QTableWidgetItem

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#edc948", "#76b7b2", "#ff9da7", "#9c755f", "#bab0ac")
"""Tableau 10: distinct, colour-blind-friendlier than napari's random label colours."""

COLOR_ROLE = Qt.ItemDataRole.UserRole
SHOWN_ROWS = 8
"""The class table grows up to this many rows before it scrolls (the face sample has six classes)."""
Classes = dict[int, tuple[str, str]]
"""Label id -> (name, '#rrggbb')."""


def default_classes(count: int = 2) -> Classes:
    return {i: (f"class {i}", PALETTE[(i - 1) % len(PALETTE)]) for i in range(1, count + 1)}


def class_context(context, classes: Classes):
    """The head's context (:class:`~napari_mdm.head.HeadContext`) with these names and colours."""
    from dataclasses import replace

    return replace(
        context,
        class_names={i: name for i, (name, _) in classes.items()},
        class_colors={i: color for i, (_, color) in classes.items()},
    )


def classes_from_context(context) -> Classes:
    """The names and colours a head was saved with (a default colour where none was saved)."""
    return {
        i: (name, context.class_colors.get(i, PALETTE[(i - 1) % len(PALETTE)]))
        for i, name in context.class_names.items()
    }


def apply_classes(layer, classes: Classes) -> None:
    """Colour a labels layer by class (ids outside the table keep napari's colours) and name
    each class in the layer's features, so the status bar shows it under the mouse."""
    import pandas as pd
    from napari.utils.colormaps import DirectLabelColormap

    colors = dict(layer.colormap.color_dict) if isinstance(layer.colormap, DirectLabelColormap) else {}
    colors.update({None: colors.get(None, "gray"), 0: "transparent"})
    colors.update({i: color for i, (_, color) in classes.items()})
    layer.colormap = DirectLabelColormap(color_dict=colors)
    ids = sorted(classes)
    layer.features = pd.DataFrame({"index": [0, *ids], "class": ["unlabelled", *(classes[i][0] for i in ids)]})


def take_offered_classes(layer) -> Classes:
    """The classes a labels layer was opened with (the face sample's), taken once: they are
    removed from the layer, so later edits in the class table are never undone by them."""
    from .._sample_data import CLASSES_KEY

    offered = layer.metadata.get(CLASSES_KEY)
    if not offered:
        return {}
    layer.metadata = {k: v for k, v in layer.metadata.items() if k != CLASSES_KEY}
    return {int(i): (str(name), str(color)) for i, (name, color) in offered.items()}


class _RowsTable(QTableWidget):
    """A table as tall as its rows (up to :data:`SHOWN_ROWS`): every class shows without scrolling.
    Measured when laid out, once napari's style has set the header's height."""

    def _rows_height(self) -> int:
        rows = min(max(self.rowCount(), 2), SHOWN_ROWS)
        height = self.horizontalHeader().sizeHint().height() + rows * self.verticalHeader().defaultSectionSize()
        return height + 2 * self.frameWidth()

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        return QSize(super().sizeHint().width(), self._rows_height())

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt's name): the width stays Qt's, so the dock stays narrow
        return QSize(super().minimumSizeHint().width(), self._rows_height())


class ClassTable(Container):
    """Rows of (id, name, colour); double-click a colour to change it, '+ class' adds a row."""

    def __init__(self, session) -> None:
        self.session = session
        self.table = _RowsTable(0, 3)
        self.table.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.table.setHorizontalHeaderLabels(["id", "name", "colour"])
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.table.setToolTip(
            "Your classes: the label value you paint with, a name and a colour. "
            "Double-click a name to rename it, a colour to change it."
        )
        self.add_class = PushButton(text="+ class", tooltip="Add a class (paint it with the next label value)")
        super().__init__(widgets=[self.add_class], labels=False)
        self.native.layout().insertWidget(0, self.table)
        self.table.itemChanged.connect(self._edited)
        self.table.cellDoubleClicked.connect(self._pick_color)
        self.add_class.changed.connect(self._add_row)
        session.classes_changed.connect(self.show_classes)
        self.show_classes(session.classes)

    def show_classes(self, classes: Classes) -> None:
        self.table.blockSignals(True)
        self.table.setRowCount(len(classes))
        for row, (i, (name, color)) in enumerate(sorted(classes.items())):
            ident = QTableWidgetItem(str(i))
            ident.setFlags(ident.flags() & ~Qt.ItemFlag.ItemIsEditable)
            swatch = QTableWidgetItem("")
            swatch.setFlags(swatch.flags() & ~Qt.ItemFlag.ItemIsEditable)
            swatch.setBackground(QColor(color))
            swatch.setData(COLOR_ROLE, color)
            for column, item in enumerate((ident, QTableWidgetItem(name), swatch)):
                self.table.setItem(row, column, item)
        self.table.blockSignals(False)
        self.table.updateGeometry()

    def classes(self) -> Classes:
        rows = range(self.table.rowCount())
        return {
            int(self.table.item(r, 0).text()): (
                self.table.item(r, 1).text().strip() or f"class {r + 1}",
                self.table.item(r, 2).data(COLOR_ROLE),
            )
            for r in rows
        }

    def _edited(self, *_) -> None:
        self.session.set_classes(self.classes())

    def _add_row(self) -> None:
        classes = self.classes()
        new = max(classes, default=0) + 1
        self.session.set_classes({**classes, new: default_classes(new)[new]})

    def _pick_color(self, row: int, column: int) -> None:
        if column != 2:
            return
        color = QColorDialog.getColor(QColor(self.table.item(row, 2).data(COLOR_ROLE)), self.native, "Class colour")
        if color.isValid():
            self.set_color(row, color.name())

    def set_color(self, row: int, color: str) -> None:
        classes = self.classes()
        i = int(self.table.item(row, 0).text())
        self.session.set_classes({**classes, i: (classes[i][0], color)})
