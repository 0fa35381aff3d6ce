"""What the dock widgets of one viewer share: the backbone, the trained head and cached features.

The Backbone widget sets the backbone, the Few-shot widget trains the head, and the
Reconstruction and Segment and export widgets use both; each listens to the signals here.
"""

from __future__ import annotations

import os
import uuid
import weakref
from dataclasses import replace
from pathlib import Path

from magicgui.widgets import Label
from psygnal import Signal

from .workers import notify_error, notify_info, wrap_to_width

FEATURE_CACHE_BYTES = 2 << 30
FEATURE_CACHE_ENV = "NAPARI_MDM_FEATURE_CACHE"


class Session:
    """Per-viewer state; heavy modules (torch, the core) are imported on first use."""

    backbone_changed = Signal(object)
    head_changed = Signal(object)
    classes_changed = Signal(object)
    preference_changed = Signal(object)
    """(name, note) of the backbone the open images ask for, or None (see :func:`prefer_backbone_for`)."""

    def __init__(self) -> None:
        from .classes import default_classes

        self.backbone = None
        self.head = None
        self.classes = default_classes()
        """Label id -> (name, colour) of the user's classes (see :mod:`.classes`)."""
        self.preferred_backbone: str | None = None
        """The backbone the open images ask for (see :func:`prefer_backbone_for`); None: the default."""
        self.preference_note: str | None = None
        """Why that backbone: the line the widgets show until one is loaded."""
        self._features = None

    @property
    def features(self):
        """The :class:`napari_mdm.features.FeatureCache` (keyed by image, backbone and settings);
        with ``NAPARI_MDM_FEATURE_CACHE=/a/folder`` features are also kept there as zarr."""
        if self._features is None:
            from ..features import FeatureCache

            self._features = FeatureCache(
                max_bytes=FEATURE_CACHE_BYTES, directory=os.environ.get(FEATURE_CACHE_ENV) or None
            )
        return self._features

    def set_backbone(self, backbone) -> None:
        """Use ``backbone`` from now on; one that was never saved gets a unique digest so that
        cached features of another unsaved backbone are never reused for it."""
        if backbone.digest == "unsaved":
            backbone = replace(backbone, digest=f"unsaved-{uuid.uuid4().hex[:12]}")
        self.backbone = backbone
        self.backbone_changed.emit(backbone)

    def backbone_or_default(self):
        """The backbone in use; without one, the one the open images ask for, else the default
        (the one the Backbone widget preselects), is loaded and announced, so painting and training need no detour. None, after
        a message, only when even that fails."""
        if self.backbone is None:
            from ..checkpoint import default_backbone_name, load_backbone
            from ..devices import resolve_device
            from ..jobs import UserError

            name = self.preferred_backbone or default_backbone_name()
            try:
                self.set_backbone(load_backbone(name, device=resolve_device("auto")))
            except UserError as err:
                notify_error(
                    f"the default backbone {name!r} could not be loaded ({err.in_plugin}): load one in the 'Backbone' widget"
                )
                return None
            which = f"using the default backbone {name!r}" if self.preference_note is None else self.preference_note
            notify_info(f"{which}; loaded now (choose another in the 'Backbone' widget)")
        return self.backbone

    def set_head(self, head) -> None:
        """Use ``head`` from now on; the class names and colours it was saved with come back too."""
        from .classes import classes_from_context

        self.head = head
        if head is not None and head.context.class_names:
            self.set_classes({**self.classes, **classes_from_context(head.context)})
        self.head_changed.emit(head)

    def set_classes(self, classes: dict) -> None:
        self.classes = dict(classes)
        self.classes_changed.emit(self.classes)


def prefer_backbone_for(session: Session, layers) -> tuple[str, str] | None:
    """(name, note) of the built-in backbone for the kind of image the layers hold (the face
    sample asks for 'faces'), remembered as the session's preferred backbone; None (and the
    default preferred) when no layer says its kind, or they disagree."""
    from .._sample_data import KIND_KEY
    from ..checkpoint import backbone_for

    kinds = {layer.metadata.get(KIND_KEY) for layer in layers} - {None}
    found = backbone_for(kinds.pop()) if len(kinds) == 1 else None
    preferred, note = found if found else (None, None)
    if (preferred, note) != (session.preferred_backbone, session.preference_note):
        session.preferred_backbone, session.preference_note = preferred, note
        session.preference_changed.emit(found)
    return found


def describe(backbone, note: str | None = None) -> str:
    """One line about a backbone: name, size, corruption and the device it runs on; without one,
    what loads when first needed (``note``: the one the open images ask for, and why)."""
    if backbone is None:
        if note:
            return f"no backbone loaded yet. {note[0].upper()}{note[1:]}; it loads when first needed"
        return "no backbone chosen: the default loads when first needed (or pick one in 'Backbone')"
    params = sum(p.numel() for p in backbone.model.parameters()) / 1e6
    name = "trained here, not saved yet" if backbone.name == "unsaved" else Path(backbone.name).name
    return f"backbone {name}: {params:.1f}M params, {backbone.corruption.mode}, on {backbone.device}"


class BackboneLabel(Label):
    """A line that always says which backbone the session uses and on which device."""

    def __init__(self, session: Session) -> None:
        self.session = session
        super().__init__(value=describe(session.backbone, session.preference_note))
        self.native.setWordWrap(True)
        wrap_to_width(self.native)
        session.backbone_changed.connect(self.show_backbone)  # psygnal holds bound methods weakly
        session.preference_changed.connect(self.show_backbone)

    def show_backbone(self, *_) -> None:
        self.value = describe(self.session.backbone, self.session.preference_note)


_SESSIONS: dict[int, Session] = {}


def unwrap(viewer):
    """The viewer itself: napari hands plugins a proxy (a new one per widget) that wraps it."""
    return getattr(viewer, "__wrapped__", viewer)


def session_for(viewer) -> Session:
    """The session of ``viewer``, created on first use and dropped with the viewer."""
    from .._reader import prefer_this_reader

    viewer = unwrap(viewer)
    key = id(viewer)
    if key not in _SESSIONS:
        prefer_this_reader()  # from now on napari opens the masks we export as labels, without asking
        _SESSIONS[key] = Session()
        weakref.finalize(viewer, _SESSIONS.pop, key, None)
    return _SESSIONS[key]
